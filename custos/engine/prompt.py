"""Prompt formats: how a conversation becomes the token sequence a model continues.

Formats live in a registry by name. Each has an id, a version and a SHA-256 of its definition, which go
into the model cache's manifest and every audit record, so an answer can be traced to the exact prompt
wording that produced it.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from custos.engine.types import ChatTurn, EngineError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

AUTO = "auto"
PLAIN_CUSTOMER_SERVICE = "plain-customer-service"
CHAT_TEMPLATE = "chat-template"


class PromptFormatError(EngineError):
    """A prompt format is unknown, does not fit the model, or cannot render the conversation."""


class PromptFormat(ABC):
    """Turns conversation turns into a prompt and knows where the model's answer ends.

    ``stop`` lists strings that mark the end of the answer in this format (for example the start of the
    next customer turn); the engine cuts the answer there and reports finish reason ``stop``.
    """

    id: str
    version: int
    stop: tuple[str, ...]

    @property
    @abstractmethod
    def sha256(self) -> str:
        """SHA-256 of this format's full definition (template text, examples, markers)."""

    @abstractmethod
    def render(self, turns: Sequence[ChatTurn]) -> str:
        """The prompt as text, ending where the model's answer starts."""

    @abstractmethod
    def encode(self, turns: Sequence[ChatTurn], tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """The prompt as token ids; control tokens inside message text are encoded as plain text."""


def _canonical_sha256(value: object) -> str:
    data = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PlainPromptFormat(PromptFormat):
    """A transcript-style prompt for base models: instructions, few-shot conversations, then the live one.

    The model continues after the final ``Agent:`` label; it signals the end of its answer by starting
    another labelled line or a new conversation, which ``stop`` catches.
    """

    id: str
    version: int
    instructions: str
    examples: tuple[tuple[ChatTurn, ...], ...]
    labels: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({"user": "Customer", "assistant": "Agent", "system": "Note"})
    )
    separator: str = "### Conversation"
    stop: tuple[str, ...] = ()

    @property
    def sha256(self) -> str:
        """SHA-256 of the canonical JSON of every field that shapes the prompt."""
        return _canonical_sha256(
            {
                "id": self.id,
                "version": self.version,
                "instructions": self.instructions,
                "examples": [[[t.role, t.content] for t in ex] for ex in self.examples],
                "labels": dict(self.labels),
                "separator": self.separator,
                "stop": list(self.stop),
            }
        )

    def _conversation(self, turns: Sequence[ChatTurn]) -> str:
        lines = [self.separator]
        for turn in turns:
            lines.append(f"{self.labels[turn.role]}: {turn.content.strip()}")
        return "\n".join(lines)

    def render(self, turns: Sequence[ChatTurn]) -> str:
        """Instructions, the examples, then ``turns`` and an open ``Agent:`` line (no trailing space)."""
        blocks = [self.instructions.strip()]
        blocks.extend(self._conversation(example) for example in self.examples)
        blocks.append(self._conversation(turns) + f"\n{self.labels['assistant']}:")
        return "\n\n".join(blocks)

    def encode(self, turns: Sequence[ChatTurn], tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Tokenize the rendered text with the tokenizer's usual special tokens (e.g. BOS).

        ``split_special_tokens`` makes a literal ``<eos>`` typed by a customer plain text, not a control
        token.
        """
        encoded = tokenizer(self.render(turns), add_special_tokens=True, split_special_tokens=True)
        return list(encoded["input_ids"])


PLAIN_CUSTOMER_SERVICE_FORMAT = PlainPromptFormat(
    id=PLAIN_CUSTOMER_SERVICE,
    version=1,
    instructions=(
        "Below are conversations between customers and a customer-service agent. The agent answers "
        "politely and concisely, in one to three sentences. Placeholders in angle brackets, such as "
        "<PERSON_1> or <ORDER_ID_1>, stand for personal data; the agent repeats them exactly as written."
    ),
    # Chosen by comparing variants on the bundled 270M base model: it copies from the examples, so only
    # one example uses placeholders (an echo), and the topics are varied; with placeholders in several
    # examples it invented placeholders the customer never gave.
    examples=(
        (
            ChatTurn("user", "Hello, this is <PERSON_1>. Where is my order <ORDER_ID_1>?"),
            ChatTurn(
                "assistant",
                "Hello <PERSON_1>, thank you for waiting. Order <ORDER_ID_1> has shipped and should "
                "arrive within three working days.",
            ),
        ),
        (
            ChatTurn("user", "Can I pay by bank transfer?"),
            ChatTurn(
                "assistant",
                'Yes. Choose "Bank transfer" at checkout and we will ship your order as soon as the '
                "payment arrives.",
            ),
        ),
        (
            ChatTurn("user", "The zipper on my new bag broke after two days."),
            ChatTurn(
                "assistant",
                "I am sorry to hear that. Please send us a photo of the zipper and we will replace the "
                "bag free of charge.",
            ),
        ),
        (
            ChatTurn("user", "Do you have this coat in size M?"),
            ChatTurn(
                "assistant",
                "Size M is sold out at the moment. We expect new stock next week; you can sign up for "
                "an email alert on the product page.",
            ),
        ),
        (
            ChatTurn("user", "How do I unsubscribe from the newsletter?"),
            ChatTurn(
                "assistant",
                'Click "Unsubscribe" at the bottom of any newsletter, or switch it off under Settings '
                "in your account.",
            ),
        ),
    ),
    stop=("\nCustomer:", "\nAgent:", "\nNote:", "\n###"),
)


def _chat_template_text(tokenizer: PreTrainedTokenizerBase) -> str | None:
    template: Any = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):
        template = template.get("default")
    return template if isinstance(template, str) and template.strip() else None


class ChatTemplatePromptFormat(PromptFormat):
    """The model's own chat template (instruction-tuned models); the model ends its turn with EOS."""

    version = 1
    stop: tuple[str, ...] = ()

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        template = _chat_template_text(tokenizer)
        if template is None:
            raise PromptFormatError(
                f"the {CHAT_TEMPLATE!r} prompt format needs a tokenizer with a chat template"
            )
        self.id = CHAT_TEMPLATE
        self._tokenizer = tokenizer
        self._template = template

    @property
    def sha256(self) -> str:
        """SHA-256 of the chat template's text."""
        return hashlib.sha256(self._template.encode("utf-8")).hexdigest()

    @staticmethod
    def _messages(turns: Sequence[ChatTurn]) -> list[dict[str, str]]:
        return [{"role": t.role, "content": t.content} for t in turns]

    def render(self, turns: Sequence[ChatTurn]) -> str:
        """The template applied with a generation prompt."""
        try:
            text = self._tokenizer.apply_chat_template(
                self._messages(turns),
                chat_template=self._template,
                add_generation_prompt=True,
                tokenize=False,
            )
        except Exception as exc:  # jinja raises for e.g. roles the template does not accept
            raise PromptFormatError(f"the chat template cannot render this conversation: {exc}") from exc
        assert isinstance(text, str)
        return text

    def encode(self, turns: Sequence[ChatTurn], tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Token ids with control tokens only where the template wrote them, never from message text."""
        try:
            ids = tokenizer.apply_chat_template(
                self._messages(turns),
                chat_template=self._template,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
                sanitize_control_tokens=True,
            )
        except Exception as exc:
            raise PromptFormatError(f"the chat template cannot render this conversation: {exc}") from exc
        if not isinstance(ids, list):
            raise PromptFormatError(f"apply_chat_template returned {type(ids).__name__}, not a list of ids")
        tokens: list[int] = []
        for i in ids:
            if not isinstance(i, int):
                raise PromptFormatError(f"apply_chat_template returned a {type(i).__name__} among the ids")
            tokens.append(i)
        return tokens


PromptFormatFactory = Callable[["PreTrainedTokenizerBase"], PromptFormat]

STATIC_PROMPT_FORMATS: Mapping[str, PromptFormat] = MappingProxyType(
    {PLAIN_CUSTOMER_SERVICE: PLAIN_CUSTOMER_SERVICE_FORMAT}
)
"""Formats fully defined here, independent of the model's tokenizer."""


def _fixed(fmt: PromptFormat) -> PromptFormatFactory:
    def factory(_tokenizer: PreTrainedTokenizerBase) -> PromptFormat:
        return fmt

    return factory


PROMPT_FORMATS: Mapping[str, PromptFormatFactory] = MappingProxyType(
    {
        **{name: _fixed(fmt) for name, fmt in STATIC_PROMPT_FORMATS.items()},
        CHAT_TEMPLATE: ChatTemplatePromptFormat,
    }
)
"""Every prompt format by id; ``auto`` is resolved by :func:`select_prompt_format`."""


def get_prompt_format(name: str, tokenizer: PreTrainedTokenizerBase) -> PromptFormat:
    """The registered format ``name`` bound to ``tokenizer``; unknown names raise PromptFormatError."""
    try:
        factory = PROMPT_FORMATS[name]
    except KeyError:
        known = ", ".join(sorted([AUTO, *PROMPT_FORMATS]))
        raise PromptFormatError(f"unknown prompt format {name!r}; known formats: {known}") from None
    return factory(tokenizer)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer carries a usable chat template."""
    return _chat_template_text(tokenizer) is not None


def select_prompt_format(tokenizer: PreTrainedTokenizerBase, requested: str = AUTO) -> PromptFormat:
    """``auto``: the model's chat template when it has one, otherwise the plain customer-service format."""
    if requested == AUTO:
        requested = CHAT_TEMPLATE if has_chat_template(tokenizer) else PLAIN_CUSTOMER_SERVICE
    return get_prompt_format(requested, tokenizer)
