"""Decode speed of prepared caches in one process, alternating them on the same prompt (same-run ratios).

Usage: python scripts/compare-decode.py CACHE_DIR [CACHE_DIR ...] [--rounds N] [--tokens N]
Prints each round, the best decode tok/s per cache, and the time of one call of each output layer.
"""

from __future__ import annotations

import argparse
import time

import torch

from custos.engine.local import TransformersEngine
from custos.engine.types import ChatTurn, SamplingParams

PROMPT = "Hello, my parcel has not arrived yet. The tracking page has not changed since Monday. What can I do?"


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caches", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    engines = {c: TransformersEngine.from_cache(c, verify=False) for c in args.caches}
    turns = [ChatTurn("user", PROMPT)]
    params = SamplingParams(max_new_tokens=args.tokens)
    best: dict[str, float] = {}
    for rnd in range(args.rounds):
        for name, engine in engines.items():
            r = engine.generate(turns, params)
            rate = r.completion_tokens / r.decode_seconds if r.decode_seconds else 0.0
            best[name] = max(best.get(name, 0.0), rate)
            print(f"{rnd} {engine.info.precision}: decode {rate:.1f} tok/s, {r.completion_tokens} tokens")
    for name, engine in engines.items():
        print(f"{engine.info.precision}: best decode {best[name]:.1f} tok/s ({name})")
    with torch.inference_mode():
        for engine in engines.values():
            hidden = torch.randn(1, engine.model.config.hidden_size, dtype=torch.bfloat16)
            head = engine.model.get_output_embeddings()
            head(hidden.to(engine.model.dtype))
            started = time.perf_counter()
            for _ in range(5):
                head(hidden.to(engine.model.dtype))
            print(f"{engine.info.precision}: output layer {(time.perf_counter() - started) / 5 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
