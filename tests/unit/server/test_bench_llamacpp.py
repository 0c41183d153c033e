"""llama.cpp beside Custos in ``custos bench serve``: its rows, ratios, and the line when it is absent."""

from __future__ import annotations

import importlib.util
import itertools
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from custos.bench import serve as bench
from custos.bench.serve import (
    LLAMACPP_INSTALL_HINT,
    BenchReport,
    LevelResult,
    format_report,
    llamacpp_generate,
    measure_llamacpp,
)

STOP = 99


class FakeLlama:
    """Answers every prompt with ``answer``; notes resets, prompts and sampling arguments."""

    def __init__(self, answer: Sequence[int]) -> None:
        self.answer = list(answer)
        self.resets = 0
        self.prompts: list[list[int]] = []
        self.kwargs: list[dict[str, Any]] = []

    def reset(self) -> None:
        self.resets += 1

    def generate(self, tokens: Sequence[int], **kwargs: Any) -> Iterator[int]:
        self.prompts.append(list(tokens))
        self.kwargs.append(kwargs)
        yield from self.answer

    def token_eos(self) -> int:
        return STOP


@pytest.fixture
def ticking_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """``perf_counter`` advances one second per call, so every time in a row is exact."""
    ticks = itertools.count()
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))


@pytest.mark.usefixtures("ticking_clock")
def test_llamacpp_generate_times_each_sequence_and_stops_at_a_stop_token() -> None:
    llm = FakeLlama([5, 6, 7, STOP, 8, 9])
    prompts = [[1, 2], [3], [4, 4, 4]]
    row = llamacpp_generate(llm, prompts, 2, requests_per_stream=2, max_new_tokens=64, stop_ids={STOP})
    assert row.path == "llama.cpp" and row.streams == 2
    # Four sequences in turn, each from an empty cache, over the prompts in the raw rows' order.
    assert llm.resets == 4
    assert llm.prompts == [[1, 2], [3], [4, 4, 4], [1, 2]]
    assert all(k["temp"] == 0.0 and k["top_k"] == 1 for k in llm.kwargs)
    # The stop token counts, as in the raw rows; nothing after it is generated.
    assert row.tokens == 4 * 4
    # Ticks per sequence: start 0, tokens at 1, 2, 3, 4, end 5 -> TTFT 1 s, ITL (4 - 1) / 3 = 1 s.
    assert row.ttft == [1.0] * 4
    assert row.itl == [1.0] * 4
    assert row.seconds == 4 * 5.0
    assert row.tokens_per_second == pytest.approx(16 / 20)


def test_llamacpp_generate_stops_at_max_new_tokens() -> None:
    llm = FakeLlama(range(1000))
    row = llamacpp_generate(llm, [[1]], 1, requests_per_stream=1, max_new_tokens=7, stop_ids={STOP})
    assert row.tokens == 7 and len(row.ttft) == 1 and len(row.itl) == 1


def test_llamacpp_generate_forced_bans_the_stop_tokens_and_runs_to_max_new_tokens() -> None:
    import numpy as np

    llm = FakeLlama([5, STOP, 6, 7, 8, 9, 10, 11])
    row = llamacpp_generate(
        llm, [[1]], 1, requests_per_stream=1, max_new_tokens=6, stop_ids={STOP}, forced=True
    )
    assert row.tokens == 6
    (processor,) = llm.kwargs[0]["logits_processor"]
    scores = processor(np.array([1]), np.zeros(128, dtype=np.float32))
    assert scores[STOP] == -np.inf and np.isfinite(np.delete(scores, STOP)).all()
    llamacpp_generate(llm, [[1]], 1, requests_per_stream=1, max_new_tokens=6, stop_ids={STOP})
    assert "logits_processor" not in llm.kwargs[1]


def _row(path: str, streams: int, tokens: int, seconds: float) -> LevelResult:
    return LevelResult(path=path, streams=streams, tokens=tokens, seconds=seconds, ttft=[0.05], itl=[0.01])


def _report(llamacpp: list[LevelResult], note: str) -> BenchReport:
    return BenchReport(
        server=[_row("custos", 1, 640, 10.0), _row("custos", 4, 2560, 20.0)],
        raw=[_row("raw generate", 1, 640, 16.0), _row("raw generate", 4, 2560, 40.0)],
        max_new_tokens=64,
        precision="int8",
        threads=2,
        peak_rss_bytes=900 * 2**20,
        weight_bytes=300_000_000,
        bandwidth_gbps=30.0,
        llamacpp=llamacpp,
        llamacpp_note=note,
    )


def test_format_report_prints_llamacpp_rows_and_ratios() -> None:
    text = format_report(
        _report(
            [_row("llama.cpp", 1, 640, 8.0), _row("llama.cpp", 4, 2560, 32.0)],
            "llama-cpp-python on model.gguf, 2 threads",
        )
    )
    lines = text.splitlines()
    # custos 64 tok/s and 128 tok/s; llama.cpp 80 tok/s at both levels; raw 40 and 64 tok/s.
    assert any(
        line.split()[:4] == ["llama.cpp", "1", "80.0", "50.0"] and line.endswith("2.00x") for line in lines
    )
    assert any(line.split()[:3] == ["llama.cpp", "4", "80.0"] and line.endswith("1.25x") for line in lines)
    assert "custos / llama.cpp at 1 stream: 0.80x (64.0 vs 80.0 tok/s)" in lines
    assert "custos / llama.cpp at 4 streams: 1.60x (128.0 vs 80.0 tok/s)" in lines
    assert "one sequence at a time" in text and "llama-cpp-python on model.gguf, 2 threads" in text
    stretch = next(line for line in lines if line.startswith("single stream vs llama.cpp (stretch)"))
    assert stretch.split()[-3:] == ["0.80x", "NOT", "met"]
    assert "not measured (" not in text.split("GPU goals")[0]
    assert "single stream vs roofline:" in text


def test_format_report_says_how_to_install_llamacpp_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "llamacpp_available", lambda: False)
    rows, note = measure_llamacpp(
        "bundled",
        Path("unused"),
        [[1]],
        threads=2,
        levels=(1,),
        requests_per_stream=1,
        max_new_tokens=8,
        stop_ids={STOP},
    )
    assert rows == []
    text = format_report(_report(rows, note))
    assert f"llama.cpp: not measured (llama-cpp-python is not installed; {LLAMACPP_INSTALL_HINT})" in text
    assert "make install-llamacpp" in text and ".[llamacpp]" in text
    assert not any(line.startswith("llama.cpp ") for line in text.splitlines())
    stretch = next(line for line in text.splitlines() if line.startswith("single stream vs llama.cpp"))
    assert stretch.endswith("not measured")


@pytest.mark.usefixtures("ticking_clock")
def test_measure_llamacpp_loads_a_gguf_source_with_the_bench_threads(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    loaded: list[tuple[Path, int, int]] = []
    llm = FakeLlama([5, STOP])

    def load(path: Path, *, threads: int, n_ctx: int) -> FakeLlama:
        loaded.append((path, threads, n_ctx))
        return llm

    rows, note = measure_llamacpp(
        str(gguf),
        tmp_path,
        [[1, 2, 3], [4]],
        threads=3,
        levels=(1, 2),
        requests_per_stream=1,
        max_new_tokens=16,
        stop_ids={STOP},
        load=load,
    )
    assert loaded == [(gguf, 3, 3 + 16 + 16)]
    assert [(r.streams, r.tokens) for r in rows] == [(1, 2), (2, 4)]
    assert "model.gguf" in note and "3 threads" in note


def test_measure_llamacpp_skips_a_non_gguf_source(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")

    def load(path: Path, *, threads: int, n_ctx: int) -> FakeLlama:
        raise AssertionError("nothing to load")

    rows, note = measure_llamacpp(
        str(tmp_path),
        tmp_path,
        [[1]],
        threads=2,
        levels=(1,),
        requests_per_stream=1,
        max_new_tokens=8,
        stop_ids={STOP},
        load=load,
    )
    assert rows == [] and note == "the model source is not a GGUF file"


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_llamacpp_on_the_bundled_gguf(tmp_path: Path) -> None:
    gguf = bench.source_gguf("bundled", tmp_path)
    assert gguf is not None
    llm: Any = bench.load_llamacpp(gguf, threads=2, n_ctx=128)
    prompt = llm.tokenize(
        b"<start_of_turn>user\nWhat is a parcel?<end_of_turn>\n<start_of_turn>model\n", special=True
    )
    row = llamacpp_generate(
        llm, [prompt], 1, requests_per_stream=1, max_new_tokens=8, stop_ids={llm.token_eos()}
    )
    assert 0 < row.tokens <= 8
    assert row.seconds > 0 and row.ttft and row.ttft[0] > 0


def test_format_report_prints_engine_itl_and_the_prompt_cache_ttft_ratio() -> None:
    report = _report([], "not installed")
    report.server[0].engine_itl, report.server[1].engine_itl = 0.0412, 0.09
    report.server[0].ttft = [0.1]
    report.no_prompt_cache = [
        LevelResult(path="custos nocache", streams=1, tokens=640, seconds=12.0, ttft=[0.8], itl=[0.01])
    ]
    report.server[0].engine_ttft, report.no_prompt_cache[0].engine_ttft = 0.05, 0.5
    report.forced = True
    text = format_report(report)
    assert "64 new tokens (forced: end-of-sequence held off on every path)" in text
    assert "custos engine inter-token latency (server histogram mean" in text
    assert "1: 41.2 ms, 4: 90.0 ms" in text
    assert "TTFT p50 at 1 stream, prompt cache on / off: 100.0 / 800.0 ms = 0.12x (goal <= 0.2x;" in text
    assert re.search(r"^custos nocache\s+1\s+53\.3\s+800\.0", text, re.MULTILINE)
    assert "engine TTFT at 1 stream, prompt cache on / off: 50.0 / 500.0 ms = 0.10x" in text
