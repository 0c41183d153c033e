"""The analyzer is built offline, with exactly the named entity set, and refuses bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tldextract
from presidio_analyzer import AnalyzerEngine, PatternRecognizer

from custos.privacy.analyzer import DISABLED_ENTITIES, ENABLED_ENTITIES, build_analyzer
from custos.privacy.errors import PrivacyError, UnsupportedEntity
from custos.privacy.pseudonymize import Pseudonymizer
from custos.testing.privacy import BuiltAnalyzer, no_network

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_building_the_analyzer_made_no_network_attempt(built_analyzer: BuiltAnalyzer) -> None:
    assert built_analyzer.network_attempts == []


def test_analysing_text_with_emails_and_urls_makes_no_network_attempt(pseudonymizer: Pseudonymizer) -> None:
    # E-mail validation calls tldextract; a fresh domain makes sure the suffix data is really consulted.
    attempts: list[str] = []
    with no_network(attempts):
        result = pseudonymizer.pseudonymize(
            ["Write to ops@service.example.co.uk or see https://portal.example.net, IP 10.1.2.3."]
        )
    assert attempts == []
    assert "EMAIL_ADDRESS" in result.counts()


def test_network_guard_catches_tldextract_default_fetch() -> None:
    # Control: without the offline setting tldextract does reach for the network (and then quietly falls back
    # to its snapshot), so the two tests above could fail.
    attempts: list[str] = []
    with no_network(attempts):
        online = tldextract.TLDExtract(cache_dir=None)
        assert online("mail.example.co.uk").suffix == "co.uk"
    assert attempts, "the guard saw no network attempt from a default TLDExtract"


def test_build_switches_tldextract_to_the_offline_snapshot(built_analyzer: BuiltAnalyzer) -> None:
    extractor = tldextract.tldextract.TLD_EXTRACTOR
    assert extractor.suffix_list_urls == ()
    assert extractor.extract_str("a.b.example.co.uk").suffix == "co.uk"


def test_importing_the_package_has_no_side_effects() -> None:
    code = textwrap.dedent(
        """
        import sys, tldextract
        before = tldextract.tldextract.TLD_EXTRACTOR
        import custos.privacy.analyzer, custos.privacy.pseudonymize
        import custos.privacy.envelope, custos.privacy.keys, custos.privacy.recognizers
        assert tldextract.tldextract.TLD_EXTRACTOR is before, "tldextract changed at import"
        assert before.suffix_list_urls, "default extractor expected"
        loaded = [m for m in sys.modules if m.startswith("en_core_web")]
        assert not loaded, f"spaCy model imported at import time: {loaded}"
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_analyzer_detects_exactly_the_enabled_entities(analyzer: AnalyzerEngine) -> None:
    assert sorted(analyzer.get_supported_entities(language="en")) == sorted(ENABLED_ENTITIES)


def test_enabled_and_disabled_sets_are_disjoint_and_required_types_are_on() -> None:
    assert not set(ENABLED_ENTITIES) & set(DISABLED_ENTITIES)
    required = {"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS"}
    assert required <= set(ENABLED_ENTITIES)
    assert {"LOCATION"} <= set(ENABLED_ENTITIES)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("See you on Monday at 10am next week.", id="date-time"),
        pytest.param("Our help page is https://www.example.com/help.", id="url"),
        pytest.param("We are American customers and like the European plan.", id="nrp"),
        pytest.param("The number 4010232137 is on the box.", id="uk-nhs-on-10-digits"),
        pytest.param("Acme Corp shipped it with DHL.", id="organization"),
        pytest.param("Order 3 units of item AB12 please.", id="no-labelled-id"),
        pytest.param("Card 4111 1111 1111 1112 was declined.", id="card-failing-luhn"),
        pytest.param("IBAN DE89 3704 0044 0532 0130 01 bounced.", id="iban-failing-checksum"),
    ],
)
def test_noisy_or_invalid_text_is_left_alone(pseudonymizer: Pseudonymizer, text: str) -> None:
    result = pseudonymizer.pseudonymize([text])
    assert result.findings == []
    assert result.texts == [text]


def test_disabled_entity_types_are_never_reported(analyzer: AnalyzerEngine) -> None:
    text = (
        "On 2024-03-01 the Dutch customer visited https://example.com, NHS 4010232137, MAC 00:1B:44:11:3A:B7."
    )
    found = {result.entity_type for result in analyzer.analyze(text, language="en")}
    assert not found & set(DISABLED_ENTITIES)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"entities": ["PERSON", "DATE_TIME"]}, UnsupportedEntity, id="unknown-entity"),
        pytest.param({"entities": []}, UnsupportedEntity, id="empty-entity-set"),
        pytest.param({"spacy_model": "xx_not_installed_model"}, PrivacyError, id="model-not-installed"),
    ],
)
def test_build_refuses_bad_configuration_without_downloading(kwargs: dict[str, object], error: type) -> None:
    attempts: list[str] = []
    with no_network(attempts), pytest.raises(error):
        build_analyzer(**kwargs)  # type: ignore[arg-type]
    assert attempts == []


@pytest.mark.parametrize("language", ["en", "fr"])
def test_only_the_pipes_ner_needs_are_loaded_and_run(analyzer: AnalyzerEngine, language: str) -> None:
    nlp = analyzer.nlp_engine.get_nlp(language)  # type: ignore[attr-defined]
    assert nlp.pipe_names == ["stepped_ner"]  # spaCy's ner, run by SteppedNer
    assert nlp.disabled == ["ner"]
    # The tagger, parser, lemmatizer and their tok2vec are never loaded (NER has its own tok2vec).
    assert nlp.component_names == ["ner", "stepped_ner"]


def test_stepped_ner_finds_what_spacys_greedy_parse_finds(analyzer: AnalyzerEngine) -> None:
    from custos.bench import privacy as benchmark
    from custos.privacy.analyzer import SteppedNer

    nlp = analyzer.nlp_engine.get_nlp("en")  # type: ignore[attr-defined]
    spacy_ner = nlp.get_pipe("ner")
    stepped = nlp.get_pipe("stepped_ner")
    assert isinstance(stepped, SteppedNer) and stepped.parser is spacy_ner
    samples = benchmark.generate_dataset(40, seed=3)
    texts = [s.text for s in samples] + [s.text for s in benchmark.long_messages(samples, count=10)]
    texts += [s.text for s in benchmark.HAND_WRITTEN] + ["", " ", "John"]

    def ents(docs: list[object]) -> list[list[tuple[int, int, str]]]:
        return [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in docs]  # type: ignore[attr-defined]

    expected = ents([spacy_ner(nlp.make_doc(text)) for text in texts])
    assert any(expected)
    assert ents([stepped(nlp.make_doc(text)) for text in texts]) == expected
    for batch_size in (1, 8, 256):
        assert ents(list(stepped.pipe((nlp.make_doc(t) for t in texts), batch_size=batch_size))) == expected
        assert ents(list(spacy_ner.pipe((nlp.make_doc(t) for t in texts), batch_size=batch_size))) == expected


def test_context_words_still_raise_scores_without_the_lemmatizer(analyzer: AnalyzerEngine) -> None:
    with_context = analyzer.analyze("my phone: 212 555 0187", language="en", entities=["PHONE_NUMBER"])
    without = analyzer.analyze("the value 212 555 0187", language="en", entities=["PHONE_NUMBER"])
    assert with_context[0].score > without[0].score


def test_build_analyzer_compiles_every_pattern(analyzer: AnalyzerEngine) -> None:
    """The regexes are compiled while the analyzer is built, not on the first request."""
    patterns = [
        pattern
        for recognizer in analyzer.registry.recognizers
        if isinstance(recognizer, PatternRecognizer)
        for pattern in recognizer.patterns
    ]
    compiled = [pattern.compiled_regex for pattern in patterns]
    assert any(compiled)
    analyzer.analyze(text="Ship it to 12 Baker Street, order 55120.", language="en")
    # Nothing left to compile on a request (Presidio's IBAN recognizer keeps its own compiled regexes).
    assert [pattern.compiled_regex for pattern in patterns] == compiled


def test_context_enhancer_finds_the_token_presidio_would(analyzer: AnalyzerEngine) -> None:
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer

    from custos.privacy.analyzer import END_OFFSETS_KEY, InPlaceContextEnhancer

    text = "Call  me on (212) 555-0187, please.\nMy card: 4111-1111-1111-1111 (expires 03/29)!  "
    artifacts = analyzer.nlp_engine.process_text(text, "en")
    doc = artifacts.tokens
    assert doc.user_data[END_OFFSETS_KEY] == [token.idx + len(token) for token in doc]
    last_end = doc[-1].idx + len(doc[-1])
    for start in range(last_end):
        expected = LemmaContextAwareEnhancer._find_index_of_match_token(
            "x", start, doc, artifacts.tokens_indices
        )
        found = InPlaceContextEnhancer._find_index_of_match_token("x", start, doc, artifacts.tokens_indices)
        assert found == expected, start
    with pytest.raises(ValueError):
        InPlaceContextEnhancer._find_index_of_match_token("x", last_end, doc, artifacts.tokens_indices)
