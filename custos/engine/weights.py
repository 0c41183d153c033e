"""Loading a prepared cache quickly: one read per file both checks its digest and yields the tensors.

``from_pretrained`` re-reads what the digest check has just read, builds the model with random
initialisation and goes through several conversion layers; here the safetensors file is read once into
private memory (so later writes to the cache cannot change the running model), hashed while it is read,
and its tensors become views of that one buffer. The model is built from its config without initialising
weights and the tensors are assigned in place. The tokenizer is read straight from ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from custos.engine.manifest import PREPARE_HINT, Manifest, check_cache_digest, check_file, check_file_set
from custos.engine.types import ModelCacheError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

_CHUNK = 16 << 20
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
WEIGHTS_NAME = "model.safetensors"
ALIGN_TENSOR = "!align"
"""A padding tensor in int8 caches that puts the int8 weights on 16-byte boundaries (see ``cache``)."""
_DATA_ALIGNMENT = 64


def read_file(path: Path, *, size: int | None = None, sha256: str | None = None) -> torch.Tensor:
    """The bytes of ``path`` in a private uint8 tensor, checked against ``size`` and ``sha256`` if given."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ModelCacheError(f"model cache file {path} was altered (size mismatch); {PREPARE_HINT}")
    # Place a safetensors file's data section at a 64-byte boundary (its header length is in 8 bytes).
    with path.open("rb") as f:
        header = f.read(8)
    data_start = 8 + int.from_bytes(header, "little") if len(header) == 8 else 0
    storage = torch.empty(actual + _DATA_ALIGNMENT, dtype=torch.uint8)
    shift = (-(storage.data_ptr() + data_start)) % _DATA_ALIGNMENT
    buffer = storage[shift : shift + actual]
    view = buffer.numpy().data
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        done = 0
        while done < actual:
            n = f.readinto(view[done : done + _CHUNK])
            if not n:
                raise ModelCacheError(f"model cache file {path} was truncated while reading; {PREPARE_HINT}")
            if sha256 is not None:
                digest.update(view[done : done + n])
            done += n
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ModelCacheError(f"model cache file {path} was altered (digest mismatch); {PREPARE_HINT}")
    return buffer


def safetensors_views(buffer: torch.Tensor, *, name: str = WEIGHTS_NAME) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file held in ``buffer``, as views of it where alignment allows."""
    raw = buffer.numpy()
    try:
        header_len = int.from_bytes(raw[:8].tobytes(), "little")
        header = json.loads(raw[8 : 8 + header_len].tobytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelCacheError(f"{name} is not a safetensors file ({exc}); {PREPARE_HINT}") from exc
    base = 8 + header_len
    tensors: dict[str, torch.Tensor] = {}
    for key, entry in header.items():
        if key in ("__metadata__", ALIGN_TENSOR):
            continue
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ModelCacheError(f"{name}: tensor {key} has unsupported dtype {entry['dtype']}")
        start, end = (base + int(o) for o in entry["data_offsets"])
        chunk = buffer[start:end]
        itemsize = torch.empty((), dtype=dtype).element_size()
        if chunk.data_ptr() % max(itemsize, 16 if dtype == torch.int8 else 1):
            # A view must start at a multiple of the element size, int8 kernel weights at 16 bytes.
            chunk = chunk.clone()
        tensors[key] = chunk.view(dtype).reshape(entry["shape"])
    return tensors


def read_cache(cache_dir: Path, manifest: Manifest, *, verify: bool) -> dict[str, torch.Tensor]:
    """The cache's weights (with ``verify``, after checking every file and the listing against the manifest).

    Every file other than the weights is only hashed; the weights file is hashed while it is read.
    """
    cache_dir = Path(cache_dir)
    expected = {f.name: f for f in manifest.files}
    if verify:
        check_file_set(cache_dir, manifest)
        check_cache_digest(cache_dir, manifest)
        for name, entry in expected.items():
            if name != WEIGHTS_NAME:
                check_file(cache_dir / name, entry)
    listed = expected.get(WEIGHTS_NAME)
    if listed is None:
        raise ModelCacheError(f"model cache {cache_dir} has no {WEIGHTS_NAME}; {PREPARE_HINT}")
    buffer = read_file(
        cache_dir / WEIGHTS_NAME,
        size=listed.size if verify else None,
        sha256=listed.sha256 if verify else None,
    )
    return safetensors_views(buffer)


def build_model(
    cache_dir: Path,
    tensors: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype,
    int8: bool = False,
    int4: bool = False,
) -> PreTrainedModel:
    """The model of ``cache_dir/config.json`` with ``tensors`` assigned (no random initialisation).

    ``int8`` first swaps the linear and embedding layers for the int8 forms the tensors were saved in;
    ``int4`` swaps each layer for the form its tensor names show (int4, int8 or kept), then packs the int4
    weights for the kernel.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(cache_dir, local_files_only=True, trust_remote_code=False)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    finally:
        torch.set_default_dtype(previous)
    if int8:
        from custos.engine.quant import int8_structure

        int8_structure(model, dtype=dtype)
    quantized_table = int8
    if int4:
        from custos.engine.int4 import EMBEDDING, apply_layout, layout_from_tensors

        layout = layout_from_tensors(list(tensors))
        apply_layout(model, layout, dtype=dtype, empty=True)
        quantized_table = EMBEDDING in layout
    result = model.load_state_dict(tensors, strict=False, assign=True)
    tied = getattr(config, "tie_word_embeddings", False) or getattr(
        config.get_text_config(), "tie_word_embeddings", False
    )
    missing = [k for k in result.missing_keys if not (tied and not quantized_table and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        first = (missing or result.unexpected_keys)[0]
        raise ModelCacheError(
            f"model cache {cache_dir} does not fit its config (tensor {first}); {PREPARE_HINT}"
        )
    if tied and not quantized_table:
        model.lm_head.weight = model.get_input_embeddings().weight
    if int4:
        from custos.engine.int4 import prepack

        prepack(model)
    if (Path(cache_dir) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(cache_dir, local_files_only=True)
    model.eval()
    return model


_TOKENIZER_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "mask_token",
    "additional_special_tokens",
    "extra_special_tokens",
    "model_max_length",
    "padding_side",
    "add_bos_token",
    "add_eos_token",
)


def load_tokenizer(cache_dir: Path) -> PreTrainedTokenizerFast:
    """The cache's fast tokenizer, read from ``tokenizer.json`` with the saved special tokens and template."""
    from transformers import PreTrainedTokenizerFast

    cache_dir = Path(cache_dir)
    config_path = cache_dir / "tokenizer_config.json"
    config: dict[str, Any] = json.loads(config_path.read_text("utf-8")) if config_path.is_file() else {}
    kwargs = {key: config[key] for key in _TOKENIZER_KEYS if key in config}
    # tokenizer_file, not a tokenizer_object: transformers deep-copies an object (twice the load time).
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(cache_dir / "tokenizer.json"), **kwargs)
    template = config.get("chat_template")
    template_file = cache_dir / "chat_template.jinja"
    if template_file.is_file():
        template = template_file.read_text("utf-8")
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer
