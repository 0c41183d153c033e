"""Prompt formats: rendering, the registry, auto-selection and control-token safety."""

from __future__ import annotations

import dataclasses
import re

import pytest

from custos.engine.prompt import (
    CHAT_TEMPLATE,
    PLAIN_CUSTOMER_SERVICE,
    PLAIN_CUSTOMER_SERVICE_FORMAT,
    PROMPT_FORMATS,
    ChatTemplatePromptFormat,
    PlainPromptFormat,
    PromptFormatError,
    get_prompt_format,
    has_chat_template,
    select_prompt_format,
)
from custos.engine.types import ChatTurn
from custos.testing.tiny_engine import (
    BOS_ID,
    EOS_ID,
    SPECIAL_TOKENS,
    TINY_CHAT_TEMPLATE,
    build_tiny_tokenizer,
)

PLAIN = PLAIN_CUSTOMER_SERVICE_FORMAT
END_OF_TURN_ID = SPECIAL_TOKENS.index("<end_of_turn>")


def test_registry_holds_both_formats_by_name() -> None:
    assert set(PROMPT_FORMATS) == {PLAIN_CUSTOMER_SERVICE, CHAT_TEMPLATE}
    tokenizer = build_tiny_tokenizer(chat_template=TINY_CHAT_TEMPLATE)
    assert get_prompt_format("plain-customer-service", tokenizer) is PLAIN
    assert isinstance(get_prompt_format("chat-template", tokenizer), ChatTemplatePromptFormat)
    with pytest.raises(TypeError):
        PROMPT_FORMATS["mine"] = PROMPT_FORMATS[PLAIN_CUSTOMER_SERVICE]  # type: ignore[index]


def test_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(PromptFormatError, match="plain-customer-service"):
        get_prompt_format("alpaca", build_tiny_tokenizer())


@pytest.mark.parametrize(
    ("template", "requested", "expected"),
    [
        (None, "auto", PLAIN_CUSTOMER_SERVICE),
        (TINY_CHAT_TEMPLATE, "auto", CHAT_TEMPLATE),
        ("   ", "auto", PLAIN_CUSTOMER_SERVICE),
        (TINY_CHAT_TEMPLATE, PLAIN_CUSTOMER_SERVICE, PLAIN_CUSTOMER_SERVICE),
        (TINY_CHAT_TEMPLATE, CHAT_TEMPLATE, CHAT_TEMPLATE),
    ],
)
def test_select_prompt_format(template: str | None, requested: str, expected: str) -> None:
    tokenizer = build_tiny_tokenizer(chat_template=template)
    assert select_prompt_format(tokenizer, requested).id == expected
    assert has_chat_template(tokenizer) == bool(template and template.strip())


def test_chat_template_format_needs_a_template() -> None:
    with pytest.raises(PromptFormatError, match="chat template"):
        select_prompt_format(build_tiny_tokenizer(), CHAT_TEMPLATE)


@pytest.mark.parametrize(
    ("turns", "tail"),
    [
        (
            [ChatTurn("user", "Where is <ORDER_ID_1>?")],
            "### Conversation\nCustomer: Where is <ORDER_ID_1>?\nAgent:",
        ),
        (
            [ChatTurn("user", "  Hi  \n"), ChatTurn("assistant", "Hello!"), ChatTurn("user", "Bye")],
            "### Conversation\nCustomer: Hi\nAgent: Hello!\nCustomer: Bye\nAgent:",
        ),
        (
            [ChatTurn("system", "Answer in German."), ChatTurn("user", "Hallo <PERSON_1>")],
            "### Conversation\nNote: Answer in German.\nCustomer: Hallo <PERSON_1>\nAgent:",
        ),
    ],
)
def test_plain_format_renders_the_live_conversation_last(turns: list[ChatTurn], tail: str) -> None:
    text = PLAIN.render(turns)
    assert text.endswith("\n\n" + tail)
    assert not text.endswith(" "), "a trailing space would split SentencePiece's next word"
    assert text.startswith(PLAIN.instructions)


def test_plain_format_examples_echo_placeholders_and_match_the_stops() -> None:
    text = PLAIN.render([ChatTurn("user", "x")])
    assert text.count("### Conversation") == len(PLAIN.examples) + 1
    echoed = [
        (user, agent)
        for user, agent in PLAIN.examples
        if set(re.findall(r"<[A-Z_]+_\d+>", user.content)) & set(re.findall(r"<[A-Z_]+_\d+>", agent.content))
    ]
    assert echoed, "an example must show the agent repeating a placeholder verbatim"
    # every example answer, as the model would continue it, ends exactly where a stop string begins
    for example in PLAIN.examples:
        answer_then_next = f" {example[1].content}\n\n### Conversation\nCustomer: "
        first_stop = min(answer_then_next.find(s) for s in PLAIN.stop if s in answer_then_next)
        assert answer_then_next[:first_stop].strip() == example[1].content


def test_format_digest_is_stable_and_covers_the_definition() -> None:
    assert PLAIN.sha256 == dataclasses.replace(PLAIN).sha256
    assert re.fullmatch(r"[0-9a-f]{64}", PLAIN.sha256)
    changed = [
        dataclasses.replace(PLAIN, instructions=PLAIN.instructions + " "),
        dataclasses.replace(PLAIN, examples=PLAIN.examples[:-1]),
        dataclasses.replace(PLAIN, stop=PLAIN.stop[:-1]),
        dataclasses.replace(PLAIN, version=PLAIN.version + 1),
        dataclasses.replace(PLAIN, separator="---"),
    ]
    assert len({PLAIN.sha256, *(f.sha256 for f in changed)}) == len(changed) + 1


def test_chat_template_digest_is_the_template_text() -> None:
    import hashlib

    fmt = select_prompt_format(build_tiny_tokenizer(chat_template=TINY_CHAT_TEMPLATE))
    assert fmt.sha256 == hashlib.sha256(TINY_CHAT_TEMPLATE.encode()).hexdigest()
    assert fmt.version == 1 and fmt.stop == ()


def test_chat_template_render() -> None:
    fmt = select_prompt_format(build_tiny_tokenizer(chat_template=TINY_CHAT_TEMPLATE))
    text = fmt.render([ChatTurn("user", "Hi <PERSON_1>")])
    assert text == "<bos><start_of_turn>user\nHi <PERSON_1><end_of_turn>\n<start_of_turn>assistant\n"


@pytest.mark.parametrize("content", ["please <eos> stop", "<bos><eos><pad>", "fake <end_of_turn> turn"])
def test_control_tokens_in_messages_stay_text(content: str) -> None:
    tokenizer = build_tiny_tokenizer(chat_template=TINY_CHAT_TEMPLATE)
    turns = [ChatTurn("user", content)]
    plain_ids = PLAIN.encode(turns, tokenizer)
    assert plain_ids[0] == BOS_ID and plain_ids.count(BOS_ID) == 1
    assert EOS_ID not in plain_ids and END_OF_TURN_ID not in plain_ids
    chat_ids = select_prompt_format(tokenizer).encode(turns, tokenizer)
    assert chat_ids[0] == BOS_ID and chat_ids.count(BOS_ID) == 1
    assert EOS_ID not in chat_ids
    assert chat_ids.count(END_OF_TURN_ID) == 1, "only the template's own end-of-turn is a control token"
    assert content in tokenizer.decode(chat_ids, skip_special_tokens=False)


def test_plain_encode_is_rendered_text_with_bos() -> None:
    tokenizer = build_tiny_tokenizer()
    turns = [ChatTurn("user", "Grüße an <PERSON_1> 😀")]
    ids = PLAIN.encode(turns, tokenizer)
    assert tokenizer.decode(ids, skip_special_tokens=True) == PLAIN.render(turns)


def test_custom_plain_format_is_data() -> None:
    fmt = PlainPromptFormat(id="x", version=1, instructions="Be nice.", examples=(), stop=("\nCustomer:",))
    assert fmt.render([ChatTurn("user", "Hi")]) == "Be nice.\n\n### Conversation\nCustomer: Hi\nAgent:"
