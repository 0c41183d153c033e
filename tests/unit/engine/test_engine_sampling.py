"""Token choice: greedy argmax, temperature and top-p, and the log-probs reported."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from custos.engine.sampling import _top_p_filter, choose_token, make_generator
from custos.engine.types import SamplingParams

LOGITS = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(1.0, {0, 1, 2, 3}), (0.97, {0, 1, 2, 3}), (0.9, {0, 1, 2}), (0.75, {0, 1}), (0.45, {0}), (1e-6, {0})],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p: float, kept: set[int]) -> None:
    filtered = _top_p_filter(torch.softmax(LOGITS, dim=-1), top_p)
    assert {i for i, p in enumerate(filtered.tolist()) if p > 0} == kept


@pytest.mark.parametrize(("top_p", "allowed"), [(0.8, {0, 1}), (0.5, {0}), (1.0, {0, 1, 2, 3})])
def test_sampling_draws_only_kept_tokens(top_p: float, allowed: set[int]) -> None:
    params = SamplingParams(temperature=1.0, top_p=top_p, seed=0)
    generator = make_generator(params, torch.device("cpu"))
    drawn = Counter(choose_token(LOGITS, params, generator)[0] for _ in range(400))
    assert set(drawn) == allowed


def test_greedy_takes_argmax_and_reports_its_logprob() -> None:
    token, logprob = choose_token(LOGITS, SamplingParams(), None)
    assert token == 0
    assert logprob == pytest.approx(math.log(0.5), rel=1e-5)


def test_logprob_is_from_the_unmodified_distribution() -> None:
    params = SamplingParams(temperature=0.1, top_p=0.5, seed=1)
    token, logprob = choose_token(LOGITS, params, make_generator(params, torch.device("cpu")))
    assert token == 0 and logprob == pytest.approx(math.log(0.5), rel=1e-5)


def test_low_temperature_concentrates_high_temperature_spreads() -> None:
    def share_of_top(temperature: float) -> float:
        params = SamplingParams(temperature=temperature, seed=3)
        gen = make_generator(params, torch.device("cpu"))
        return sum(choose_token(LOGITS, params, gen)[0] == 0 for _ in range(500)) / 500

    assert share_of_top(0.05) > 0.99
    assert 0.2 < share_of_top(5.0) < 0.4


def test_generator_only_for_sampling_and_seeded() -> None:
    assert make_generator(SamplingParams(), torch.device("cpu")) is None
    a = make_generator(SamplingParams(temperature=1.0, seed=9), torch.device("cpu"))
    b = make_generator(SamplingParams(temperature=1.0, seed=9), torch.device("cpu"))
    assert a is not None and b is not None
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    unseeded = [make_generator(SamplingParams(temperature=1.0), torch.device("cpu")) for _ in range(2)]
    assert not torch.equal(torch.rand(4, generator=unseeded[0]), torch.rand(4, generator=unseeded[1]))
