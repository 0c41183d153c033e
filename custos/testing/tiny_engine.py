"""A tiny randomly initialised engine for tests: built in memory in milliseconds, no files, no network.

The tokenizer is byte-level BPE without merges (one token per UTF-8 byte, plus Gemma's special tokens),
so any text, placeholders such as ``<PERSON_1>`` included, round-trips through encode/decode, and
multi-byte characters exercise the streaming decoder. The same seed gives the same weights, so greedy
outputs are exactly reproducible.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from custos.engine.local import TransformersEngine
from custos.engine.precision import INT4_PRECISIONS, INT8_PRECISIONS, PRECISIONS, convert_precision
from custos.engine.prompt import PLAIN_CUSTOMER_SERVICE, get_prompt_format
from custos.engine.types import ModelInfo

if TYPE_CHECKING:
    from transformers import Gemma3ForCausalLM, PreTrainedTokenizerFast

TINY_MODEL_NAME = "tiny-random-gemma3"
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
_CHARS = (*(chr(c) for c in range(0x20, 0x7F)), "\n", "\t")
FIRST_BYTE_ID = len(SPECIAL_TOKENS) + len(_CHARS)

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>assistant\n{% endif %}"
)
"""A Gemma-like chat template for tests of the ``chat-template`` prompt format."""


def _vocab() -> dict[str, int]:
    """Special tokens, then printable ASCII plus newline and tab, then the 256 byte-fallback tokens."""
    pieces = [*SPECIAL_TOKENS, *_CHARS, *(f"<0x{b:02X}>" for b in range(256))]
    return {piece: i for i, piece in enumerate(pieces)}


def build_tiny_tokenizer(*, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """Character-level tokenizer over printable ASCII with byte fallback (like Gemma's), adding BOS.

    Any other character is encoded as its UTF-8 bytes, so every string round-trips exactly.
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(
        models.BPE(vocab=_vocab(), merges=[], unk_token=SPECIAL_TOKENS[UNK_ID], byte_fallback=True)
    )
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
    )
    named = dict(zip(("pad_token", "eos_token", "bos_token", "unk_token"), SPECIAL_TOKENS, strict=False))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, additional_special_tokens=list(SPECIAL_TOKENS[4:]), **named
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_config_dict(vocab_size: int) -> dict[str, object]:
    """The tiny model's Gemma 3 configuration (two layers: one sliding-window, one full attention)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "max_position_embeddings": 4096,
        "sliding_window": 16,  # short, so tests cross the window boundary
        "layer_types": ["sliding_attention", "full_attention"],
        "initializer_range": 0.05,  # varied greedy text (larger values make it repeat one character)
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "bos_token_id": BOS_ID,
        "tie_word_embeddings": True,
    }


def build_tiny_model(*, seed: int = 0, vocab_size: int = FIRST_BYTE_ID + 256) -> Gemma3ForCausalLM:
    """A randomly initialised Gemma3ForCausalLM; the same seed gives the same weights.

    Special and byte-fallback tokens get zero embeddings (hence logit 0, below the best character's), so
    greedy decoding writes printable text and runs until a stop condition the test chooses; sampling
    still picks them now and then. The global torch RNG is left untouched.
    """
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(**tiny_config_dict(vocab_size))  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma3ForCausalLM(config)
    with torch.no_grad():
        embeddings: torch.Tensor = model.model.embed_tokens.weight
        embeddings[: len(SPECIAL_TOKENS)] = 0.0
        embeddings[FIRST_BYTE_ID:] = 0.0
    model.eval()
    return model


def _weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_tiny_engine(
    *,
    seed: int = 0,
    prompt_format: str = PLAIN_CUSTOMER_SERVICE,
    precision: str = "fp32",
    chat_template: str | None = None,
    max_context_tokens: int | None = None,
) -> TransformersEngine:
    """A TransformersEngine over the tiny random model, for tests of everything that needs an engine.

    ``chat_template`` gives the tokenizer a template (use :data:`TINY_CHAT_TEMPLATE` with
    ``prompt_format="chat-template"``).
    """
    tokenizer = build_tiny_tokenizer(chat_template=chat_template)
    model = build_tiny_model(seed=seed, vocab_size=len(tokenizer))
    if precision in INT8_PRECISIONS | INT4_PRECISIONS:
        convert_precision(model, precision)
    else:
        model.to(getattr(torch, PRECISIONS[precision]))
    fmt = get_prompt_format(prompt_format, tokenizer)
    source = json.dumps(
        {"name": TINY_MODEL_NAME, "seed": seed, "config": tiny_config_dict(len(tokenizer))}, sort_keys=True
    )
    info = ModelInfo(
        name=TINY_MODEL_NAME,
        source_sha256=hashlib.sha256(source.encode()).hexdigest(),
        cache_digest=_weights_digest(model),
        quantization="none",
        precision=precision,
        device="cpu",
        prompt_format=fmt.id,
        prompt_format_version=fmt.version,
        prompt_format_sha256=fmt.sha256,
    )
    return TransformersEngine(
        model, tokenizer, info=info, prompt_format=fmt, max_context_tokens=max_context_tokens
    )


def save_tiny_model_dir(directory: Path, *, seed: int = 0, chat_template: str | None = None) -> Path:
    """Write the tiny model and tokenizer as a Hugging Face directory (a source for ``prepare_model``)."""
    tokenizer = build_tiny_tokenizer(chat_template=chat_template)
    model = build_tiny_model(seed=seed, vocab_size=len(tokenizer))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
