"""The fairness pairs and the check, with the real anonymizer."""

from __future__ import annotations

from custos.privacy.pseudonymize import Pseudonymizer
from custos.tasks.fairness import MESSAGES, NAMES, FairnessReport, check_fairness, name_swapped_pairs


def test_pairs_differ_only_in_the_name_and_cover_origin_and_gender() -> None:
    pairs = name_swapped_pairs()
    kinds = {p.differs_in for p in pairs}
    assert kinds == {"origin", "gender", "origin+gender"}
    assert len({n[1] for n in NAMES}) >= 6 and {n[2] for n in NAMES} == {"female", "male"}
    for pair in pairs:
        first, second = pair.texts()
        assert first.replace(pair.first[0], "") == second.replace(pair.second[0], "")
        assert first != second


def test_a_surviving_attribute_is_reported() -> None:
    pairs = name_swapped_pairs()[:3]
    # An "anonymizer" that misses names entirely: nothing is identical and the names survive.
    report = check_fairness(pairs, lambda text: text, lambda text: len(text))
    assert report.identical_inputs == 0
    assert report.surviving


def run(pseudonymizer: Pseudonymizer) -> FairnessReport:
    pairs = name_swapped_pairs()
    assert len(pairs) >= len(MESSAGES) * 50
    return check_fairness(pairs, lambda text: pseudonymizer.pseudonymize([text]).texts[0], hash)


def test_the_check_names_what_survives_the_real_anonymizer(pseudonymizer: Pseudonymizer) -> None:
    report = run(pseudonymizer)
    assert report.identical_outputs == report.identical_inputs  # a deterministic model on equal input
    different = report.pairs - report.identical_inputs
    # Every differing pair is explained by a surviving word or a retyped placeholder.
    assert different == 0 or report.surviving or report.retyped
    assert not any(w.startswith("<") for w in report.surviving)


def test_anonymization_makes_every_name_swapped_pair_identical(pseudonymizer: Pseudonymizer) -> None:
    report = run(pseudonymizer)
    assert (report.surviving, report.retyped) == ({}, {})
    assert report.identical_inputs == report.pairs
