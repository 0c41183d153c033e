"""Versioned task templates: operator-editable TOML files that turn a task and its variables into turns.

Bundled templates live in ``custos/tasks/templates``; a directory configured by the operator overrides them
by id. Each template has an id, a version and a SHA-256 of its canonical definition, which go into the
audit record of every request that used it, so an answer can be traced to the exact wording.

A template renders to conversation turns: the instructions as a system turn, each few-shot example as a
user turn (the prompt filled with the example's variables) followed by the example's answer, then the
live user turn. Variable values arrive already anonymized; the template text itself is never analysed.
"""

from __future__ import annotations

import hashlib
import json
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from custos.engine.types import ChatTurn

#: Filled from the request's messages when a template asks for it and the caller did not pass it.
CONVERSATION = "conversation"
#: Filled from the template's configured catalogue (a label set) as a bullet list.
CATALOGUE = "catalogue"
_ID_CHARS = frozenset(string.ascii_lowercase + string.digits + "-_")


class TemplateError(ValueError):
    """A template file is malformed, or a request does not fit its template; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def canonical_sha256(value: object) -> str:
    """SHA-256 of the canonical JSON form (sorted keys, no whitespace) of ``value``."""
    data = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def _placeholders(template: string.Template) -> set[str]:
    return {m.group("named") or m.group("braced") for m in template.pattern.finditer(template.template)} - {
        None
    }


@dataclass(frozen=True)
class TaskTemplate:
    """One task's prompt: instructions, a per-turn prompt with ``${variables}``, few-shot examples."""

    id: str
    version: int
    description: str
    instructions: str
    prompt: str
    required: tuple[str, ...]
    optional: Mapping[str, str]
    """Optional variable -> the text it contributes when given (``${name}`` inside); nothing when absent."""
    examples: tuple[Mapping[str, str], ...]
    catalogue: str | None
    max_new_tokens: int | None
    sha256: str

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str) -> TaskTemplate:
        """Validate a parsed TOML template; errors name the file and the field."""

        def need(key: str, kind: type) -> Any:
            value = data.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TemplateError(f"{source}: {key}", f"must be a {kind.__name__}")
            return value

        template_id = need("id", str)
        if not template_id or not set(template_id) <= _ID_CHARS:
            raise TemplateError(f"{source}: id", "must be lower-case letters, digits, '-' or '_'")
        version = need("version", int)
        if version < 1:
            raise TemplateError(f"{source}: version", "must be at least 1")
        prompt = need("prompt", str)
        required = tuple(data.get("variables", ()))
        optional = dict(data.get("optional", {}))
        if not all(isinstance(v, str) for v in (*required, *optional.values())):
            raise TemplateError(f"{source}: variables", "must be strings")
        declared = set(required) | {f"{name}_text" for name in optional} | {CATALOGUE}
        used = _placeholders(string.Template(prompt))
        if used - declared:
            raise TemplateError(f"{source}: prompt", f"uses undeclared variables {sorted(used - declared)}")
        examples = tuple(dict(e) for e in data.get("examples", ()))
        for index, example in enumerate(examples):
            if not isinstance(example.get("answer"), str):
                raise TemplateError(f"{source}: examples[{index}].answer", "required")
            missing = [v for v in required if v not in example]
            if missing:
                raise TemplateError(f"{source}: examples[{index}]", f"missing variables {missing}")
        catalogue = data.get("catalogue")
        if catalogue is not None and not isinstance(catalogue, str):
            raise TemplateError(f"{source}: catalogue", "must be a label set id")
        max_new = data.get("max_new_tokens")
        if max_new is not None and (not isinstance(max_new, int) or max_new < 1):
            raise TemplateError(f"{source}: max_new_tokens", "must be a positive integer")
        return cls(
            id=template_id,
            version=version,
            description=str(data.get("description", "")),
            instructions=str(data.get("instructions", "")),
            prompt=prompt,
            required=required,
            optional=MappingProxyType(optional),
            examples=examples,
            catalogue=catalogue,
            max_new_tokens=max_new,
            sha256=canonical_sha256(dict(data)),
        )

    @property
    def variables(self) -> tuple[str, ...]:
        """Every variable a request may pass (required first)."""
        return (*self.required, *sorted(self.optional))

    def to_audit(self) -> dict[str, object]:
        """What the audit record keeps about the template: id, version, hash."""
        return {"id": self.id, "version": self.version, "sha256": self.sha256}

    def check_variables(self, names: Sequence[str], *, has_messages: bool) -> None:
        """Refuse unknown variables and missing required ones (``conversation`` may come from messages)."""
        unknown = sorted(set(names) - set(self.variables))
        if unknown:
            raise TemplateError("variables", f"unknown for task {self.id!r}: {unknown}")
        for name in self.required:
            if name in names or (name == CONVERSATION and has_messages):
                continue
            raise TemplateError(f"variables[{name}]", f"required by task {self.id!r}")

    def _fill(self, values: Mapping[str, str], catalogue: Sequence[str]) -> str:
        filled: dict[str, str] = {name: values.get(name, "") for name in self.required}
        for name, wrapper in self.optional.items():
            value = values.get(name)
            filled[f"{name}_text"] = string.Template(wrapper).safe_substitute({name: value}) if value else ""
        filled[CATALOGUE] = "\n".join(f"- {entry}" for entry in catalogue)
        # safe_substitute: a value containing "$x" stays literal text, never a second substitution.
        return string.Template(self.prompt).safe_substitute(filled).strip()

    def render(self, values: Mapping[str, str], *, catalogue: Sequence[str] = ()) -> tuple[ChatTurn, ...]:
        """Turns for the model: instructions, the few-shot examples, then the request's variables."""
        turns: list[ChatTurn] = []
        if self.instructions.strip():
            turns.append(ChatTurn("system", self.instructions.strip()))
        for example in self.examples:
            turns.append(ChatTurn("user", self._fill(example, catalogue)))
            turns.append(ChatTurn("assistant", example["answer"].strip()))
        turns.append(ChatTurn("user", self._fill(values, catalogue)))
        return tuple(turns)


def conversation_text(turns: Sequence[ChatTurn]) -> str:
    """A conversation as labelled lines, for templates that take the whole conversation as a variable."""
    labels = {"user": "Customer", "assistant": "Agent", "system": "Note"}
    return "\n".join(f"{labels[t.role]}: {t.content.strip()}" for t in turns)


def _load_dir(files: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, data in sorted(files):
        try:
            parsed = tomllib.loads(data.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TemplateError(name, f"not valid TOML ({exc})") from None
        found[name] = parsed
    return found


def bundled_files(package: str) -> list[tuple[str, bytes]]:
    """The ``*.toml`` files shipped in ``package`` (a directory of this package), as (name, bytes)."""
    root = resources.files("custos.tasks").joinpath(package)
    return [(f.name, f.read_bytes()) for f in root.iterdir() if f.name.endswith(".toml")]


def directory_files(directory: Path | None) -> list[tuple[str, bytes]]:
    """The ``*.toml`` files in an operator's directory; a configured directory that is missing is an error."""
    if directory is None:
        return []
    if not directory.is_dir():
        raise TemplateError(str(directory), "is not a directory")
    return [(str(p), p.read_bytes()) for p in sorted(directory.glob("*.toml"))]


class TemplateRegistry:
    """Templates by id: the bundled ones, replaced or extended by the operator's directory."""

    def __init__(self, templates: Mapping[str, TaskTemplate]) -> None:
        self._templates = dict(templates)

    @classmethod
    def load(cls, override_dir: Path | None = None) -> TemplateRegistry:
        """Bundled templates, then the override directory's (same id replaces the bundled one)."""
        templates: dict[str, TaskTemplate] = {}
        for files in (bundled_files("templates"), directory_files(override_dir)):
            for name, data in _load_dir(files).items():
                template = TaskTemplate.from_mapping(data, source=name)
                templates[template.id] = template
        return cls(templates)

    def get(self, template_id: str) -> TaskTemplate:
        """The template ``template_id``; TemplateError naming the field ``task`` when unknown."""
        try:
            return self._templates[template_id]
        except KeyError:
            raise TemplateError("task", f"unknown task; known: {sorted(self._templates)}") from None

    def __contains__(self, template_id: object) -> bool:
        return template_id in self._templates

    @property
    def ids(self) -> list[str]:
        """Every template id, sorted."""
        return sorted(self._templates)
