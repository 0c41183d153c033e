"""Decode throughput of the Gemma 3 270M architecture with random weights, for a machine with a GPU.

One prepared call: builds the model from its config (no weights travel; none are downloaded), runs greedy
``generate`` at each batch size in bf16 (int8 weight-only too on CPU), prints a table and writes JSON.
A time budget stops it before the caller's limit (default 270 s of measuring).

    python scripts/gpu-bench.py --out gpu-bench.json                 # CUDA if present, else CPU
    python scripts/gpu-bench.py --tiny --device cpu --out tiny.json  # proves the script on a laptop

Needs torch (2.4 <= version < 3) and transformers (>= 4.50); nothing else of Custos.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

GEMMA3_270M: dict[str, Any] = {
    "vocab_size": 262144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "max_position_embeddings": 32768,
    "sliding_window": 512,
    "layer_types": ["sliding_attention"] * 5 + ["full_attention"]
    + (["sliding_attention"] * 5 + ["full_attention"]) * 2,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
"""The bundled model's text configuration (Gemma 3 270M), as in its GGUF metadata."""

TINY: dict[str, Any] = {
    **GEMMA3_270M,
    "vocab_size": 512,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "layer_types": ["sliding_attention", "full_attention"],
}

TORCH_RANGE = ((2, 4), (3, 0))


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def main() -> int:
    """Measure, print the table, write the JSON; exit 2 on an unsupported torch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    parser.add_argument("--batches", default="1,64,128,256", help="batch sizes, comma-separated")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting new cases after this")
    parser.add_argument("--tiny", action="store_true", help="a two-layer config (to prove the script)")
    parser.add_argument("--out", default="gpu-bench.json")
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    if not TORCH_RANGE[0] <= _version(torch.__version__) < TORCH_RANGE[1]:
        print(f"torch {torch.__version__} is outside the supported range 2.4 <= v < 3", file=sys.stderr)
        return 2
    started = time.monotonic()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = Gemma3TextConfig(**(TINY if args.tiny else GEMMA3_270M))
    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma3ForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config.pad_token_id = 0
    modes = {"bf16": model}
    if device.type == "cpu":
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
        from custos.engine.quant import quantize_int8

        torch.manual_seed(0)
        int8 = Gemma3ForCausalLM(config).eval()
        modes["int8"] = quantize_int8(int8)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows: list[dict[str, Any]] = []
    for mode, m in modes.items():
        for batch in (int(b) for b in args.batches.split(",")):
            if time.monotonic() - started > args.budget_s:
                rows.append({"mode": mode, "batch": batch, "skipped": "time budget"})
                continue
            ids = torch.randint(10, config.vocab_size, (batch, args.prompt_tokens), device=device)
            with torch.inference_mode():
                m.generate(ids, max_new_tokens=2, do_sample=False)  # warm-up
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = m.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 do_sample=False)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
            new = (out.shape[1] - args.prompt_tokens) * batch
            rows.append({
                "mode": mode,
                "batch": batch,
                "new_tokens": new,
                "seconds": round(seconds, 4),
                "tokens_per_s": round(new / seconds, 1),
                "ms_per_step": round(seconds / (out.shape[1] - args.prompt_tokens) * 1000, 2),
            })
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "config": "tiny" if args.tiny else "gemma3-270m",
        "weight_bytes_bf16": weight_bytes,
        "prompt_tokens": args.prompt_tokens,
        "rows": rows,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(f"{'mode':<6}{'batch':>7}{'tok/s':>12}{'ms/step':>10}")
    for row in rows:
        if "skipped" in row:
            print(f"{row['mode']:<6}{row['batch']:>7}{'skipped':>12}")
        else:
            print(f"{row['mode']:<6}{row['batch']:>7}{row['tokens_per_s']:>12,.1f}{row['ms_per_step']:>10.2f}")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
