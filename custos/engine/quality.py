"""The quality gate a compute precision passes at ``custos model prepare`` before a cache is written.

The converted model is compared with the same weights in float32 on a bundled customer-service text:
its perplexity may be at most ``max_perplexity_increase`` above the float32 one, and its greedy choice of
the next token (argmax at every position of the text, teacher-forced) must agree with float32's at
least ``min_agreement`` of the time. The result is stored in the manifest; a mode outside the limits
gets no cache.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from custos.engine.types import EngineError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SUPPORT_TEXT = """\
Customer: Hello, I ordered a pair of running shoes last week and the package still has not arrived. \
The tracking page says it left the warehouse on Monday, but nothing has changed since then. Can you help?
Agent: I am sorry to hear that your order is late. I have checked the shipment, and it looks like the \
parcel was delayed at the regional sorting centre because of the holiday weekend. It is now back on its \
way, and the carrier expects to deliver it within two business days.
Customer: Thank you. If it does not arrive by Friday, can I get a refund instead?
Agent: Of course. If the parcel has not reached you by the end of Friday, reply to this message and we \
will either send a replacement by express delivery at no extra cost or refund the full amount to your \
original payment method, whichever you prefer. Refunds usually appear on your statement within five to \
seven working days.
Customer: That sounds fair. One more question: the shoes might be too small. How do returns work?
Agent: You can return unworn items within thirty days of delivery. Sign in to your account, open the \
order, choose the item and select a reason for the return. We will e-mail you a prepaid label; print it, \
attach it to the original box and drop the parcel at any post office. As soon as the warehouse receives \
it, we will confirm by e-mail and either exchange the size or issue a refund.
Customer: Great, thanks for explaining. Is there anything else I should know?
Agent: Please keep the receipt from the post office until the return is confirmed. If you would like a \
different size, mention it in the comment field so we can reserve a pair for you. Is there anything \
else I can help you with today?
Customer: No, that is everything. Have a nice day!
Agent: Thank you for contacting us, and enjoy your new shoes.
"""
"""The bundled text the gate measures on (its SHA-256 goes into the manifest)."""

SUPPORT_TEXT_SHA256 = hashlib.sha256(SUPPORT_TEXT.encode("utf-8")).hexdigest()
MAX_GATE_TOKENS = 1024


class QualityGateError(EngineError):
    """A compute precision failed the quality gate; no cache was written for it."""


@dataclass(frozen=True)
class QualityLimits:
    """Limits a precision must meet against float32."""

    max_perplexity_increase: float = 0.03
    min_agreement: float = 0.90


@dataclass(frozen=True)
class Measurement:
    """One model's perplexity and greedy predictions over the support text."""

    perplexity: float
    predictions: torch.Tensor  # argmax next token at each position
    seconds: float


@dataclass(frozen=True)
class QualityReport:
    """What the gate measured and decided; stored in the manifest as ``quality``."""

    text_sha256: str
    tokens: int
    reference_perplexity: float
    perplexity: float
    perplexity_increase: float
    greedy_agreement: float
    max_perplexity_increase: float
    min_agreement: float
    admitted: bool

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able values."""
        return asdict(self)

    def describe(self) -> str:
        """One line for messages: the numbers beside the limits."""
        return (
            f"perplexity {self.perplexity:.3f} vs float32 {self.reference_perplexity:.3f} "
            f"({self.perplexity_increase:+.1%}, limit +{self.max_perplexity_increase:.0%}), greedy agreement "
            f"{self.greedy_agreement:.1%} (limit {self.min_agreement:.0%})"
        )


def support_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The support text's tokens (with the tokenizer's usual special tokens), at most MAX_GATE_TOKENS."""
    ids = tokenizer(SUPPORT_TEXT, add_special_tokens=True)["input_ids"]
    return list(ids)[:MAX_GATE_TOKENS]


def measure(model: PreTrainedModel, ids: list[int]) -> Measurement:
    """Perplexity of ``ids`` under ``model`` and its argmax prediction at every position, in one pass."""
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False).logits[0, :-1]
        logits = logits.float()
        targets = torch.tensor(ids[1:], dtype=torch.long)
        nll = torch.nn.functional.cross_entropy(logits, targets)
        predictions = logits.argmax(dim=-1)
    return Measurement(
        perplexity=math.exp(float(nll)), predictions=predictions, seconds=time.perf_counter() - started
    )


def judge(
    reference: Measurement, candidate: Measurement, limits: QualityLimits, tokens: int
) -> QualityReport:
    """Compare ``candidate`` with the float32 ``reference`` under ``limits``."""
    increase = candidate.perplexity / reference.perplexity - 1.0
    agreement = int((candidate.predictions == reference.predictions).sum()) / max(
        1, reference.predictions.numel()
    )
    admitted = increase <= limits.max_perplexity_increase and agreement >= limits.min_agreement
    return QualityReport(
        text_sha256=SUPPORT_TEXT_SHA256,
        tokens=tokens,
        reference_perplexity=round(reference.perplexity, 6),
        perplexity=round(candidate.perplexity, 6),
        perplexity_increase=round(increase, 6),
        greedy_agreement=round(agreement, 6),
        max_perplexity_increase=limits.max_perplexity_increase,
        min_agreement=limits.min_agreement,
        admitted=admitted,
    )
