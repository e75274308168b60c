"""Distribution-level equivalence: ``assert_equivalent``, a claim judged by FADE.

FADE (`unlearncheck.metrics.fade`) compares what two models *generate*, not what they answer to
one probe; ``assert_equivalent`` asserts that an unlearned model generates like a reference
retrained without the forget set, FADE above a noise floor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from unlearncheck.attacks.base import ClaimModels
from unlearncheck.backends.capabilities import capabilities_of
from unlearncheck.cache_check import CacheLedger
from unlearncheck.facts import Fact
from unlearncheck.loading import ModelLike
from unlearncheck.metrics.fade import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_N,
    EVIDENCE,
    FadeResult,
    SamplePool,
    SamplingModel,
)
from unlearncheck.pipeline import finish, load_models, open_log
from unlearncheck.probes import Templates, question_of
from unlearncheck.runlog import RunLog
from unlearncheck.untrusted import shown
from unlearncheck.verdict import TERMINAL_CHARS, ForgettingAssertionError, Verdict

__all__ = [
    "DEFAULT_TOLERANCE",
    "FLOOR_SEED_OFFSET",
    "EquivalenceAssertionError",
    "EquivalenceVerdict",
    "as_prompts",
    "assert_equivalent",
]

DEFAULT_TOLERANCE = 0.1
#: The noise floor's second reference sample set is drawn with ``seed + FLOOR_SEED_OFFSET``.
FLOOR_SEED_OFFSET = 1


def as_prompts(
    items: str | Fact | Iterable[str | Fact], templates: Templates | None = None
) -> list[str]:
    """Prompts from strings (kept as they are) and facts (their question in the prompt format).

    A fact is asked as `question_of` words it, wrapped by `Templates.format_question` (e.g.
    ``Question: Where was X born?\\nAnswer:``), as the claims ask the base question.

    Raises:
        ValueError: A fact has neither a question nor a question template for its relation.
    """
    templates = templates or Templates.load()
    listed = [items] if isinstance(items, str | Fact) else list(items)
    prompts = []
    for item in listed:
        if isinstance(item, Fact):
            question = question_of(item, templates)
            if question is None:
                raise ValueError(f"fact {item.id!r} has no question and no question template")
            item = templates.format_question(question)
        prompts.append(item)
    return prompts


@dataclass
class EquivalenceVerdict(Verdict):
    """The verdict of ``assert_equivalent``: a `Verdict` without facts, with its FADE numbers.

    Attributes:
        result: FADE(model, reference).
        floor: The noise floor: FADE of the reference against itself (two sample sets).
        original_result: FADE(original, reference) (None without an original).
        tolerance: How far above the floor FADE(model, reference) may be.
        reasons: Why it failed (empty on PASS).
    """

    result: FadeResult
    floor: FadeResult
    original_result: FadeResult | None
    tolerance: float
    reasons: list[str]

    def summary(self) -> str:
        """One line: status and the FADE numbers."""
        claim = shown(self.claim, limit=TERMINAL_CHARS)
        line = (
            f"{claim}: {self.status}: FADE(model, reference) {self.result.fade:.3f} "
            f"(α {self.result.alpha:.3f}, β {self.result.beta:.3f}), noise floor "
            f"{self.floor.fade:.3f}, tolerance {self.tolerance}"
        )
        if self.original_result is not None:
            line += f", FADE(original, reference) {self.original_result.fade:.3f}"
        return f"{line}; {self.result.n} samples × {self.result.prompts} prompts per model"

    def explain(self, limit: int = EVIDENCE) -> str:
        """The summary, why it failed, and the samples with the largest likelihood ratios."""
        lines = [self.summary()]
        lines += [f"  {reason}" for reason in self.reasons]
        lines.append("  samples with the largest |r|, r = log p_reference − log p_model:")
        lines += [f"    {sample.describe()}" for sample in self.result.evidence[:limit]]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the `Verdict` fields plus ``equivalence``."""
        return {
            **super().to_dict(),
            "equivalence": {
                "fade": self.result.to_dict(),
                "floor": self.floor.to_dict(),
                "original": None
                if self.original_result is None
                else self.original_result.to_dict(),
                "tolerance": self.tolerance,
                "reasons": self.reasons,
            },
        }


class EquivalenceAssertionError(ForgettingAssertionError):
    """``assert_equivalent`` failed; ``verdict`` is the `EquivalenceVerdict`."""

    def __init__(self, verdict: EquivalenceVerdict) -> None:
        super().__init__(verdict)
        self.verdict: EquivalenceVerdict = verdict


def assert_equivalent(
    model: ModelLike,
    reference: ModelLike,
    prompts_or_facts: str | Fact | Iterable[str | Fact],
    *,
    original: ModelLike | None = None,
    n: int = DEFAULT_N,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    tolerance: float = DEFAULT_TOLERANCE,
    length_normalized: bool = False,
    seed: int = 0,
    templates: Templates | None = None,
    runlog: RunLog | str | Path | None = None,
    raise_on_fail: bool = True,
    claim: str | None = None,
    device: str | None = None,
) -> EquivalenceVerdict:
    """Assert that ``model`` generates like ``reference`` on the prompts (by FADE).

    Computes FADE(model, reference), the noise floor FADE(reference, reference) from two
    independent reference sample sets (seeds ``seed`` and ``seed + FLOOR_SEED_OFFSET``) and, when
    ``original`` is given, FADE(original, reference), all at temperature 1 and top-p 1. Samples
    are drawn and scored once and shared: the reference's samples at ``seed`` serve every FADE.
    With exact likelihoods a model compared with itself has r = 0 on every sample, so the floor
    is 0 whatever the samples; it is computed and reported as the claim's definition asks.

    FAIL when FADE(model, reference) exceeds the floor by more than ``tolerance``, or when an
    original is given and FADE(model, reference) ≥ FADE(original, reference) (unlearning did not
    bring the model closer to the reference); else PASS.

    Args:
        model: The unlearned model (loaded `HFModel` or spec).
        reference: The model retrained without the forget set; same tokenizer as ``model``.
        prompts_or_facts: Prompts, facts (asked their question, see `as_prompts`), or a mix.
        original: The model before unlearning.
        n: Samples per prompt from each model.
        max_new_tokens: Maximum sample length in tokens.
        tolerance: Allowed FADE above the noise floor.
        length_normalized: Compare per-token mean log-probabilities.
        seed: Sampling seed.
        templates: Prompt format and question templates for facts (default: the shipped ones).
        runlog: Run log (object or path) the models and the verdict are appended to.
        raise_on_fail: Raise on FAIL (default) or return the verdict.
        claim: A name for the claim in logs and reports.
        device: Device for models given as specs.

    Returns:
        The verdict (PASS, or FAIL when not raising). It is also published on
        `unlearncheck.events`.

    Raises:
        EquivalenceAssertionError: The claim failed (with ``raise_on_fail``).
        ValueError: No prompts, ``n`` < 1, or models with different vocabularies.
    """
    __tracebackhide__ = True  # pytest shows the test's line, not this frame
    prompts = as_prompts(prompts_or_facts, templates)
    models = load_models(model, reference, original, device)
    pool = SamplePool(
        prompts,
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        length_normalized=length_normalized,
    )
    result, floor, original_result = _fades(pool, _samplers(models), seed)
    reasons = _failures(result, floor, original_result, tolerance)
    config: dict[str, Any] = {
        **models.identities(),
        "kind": "equivalent",
        "n": n,
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "length_normalized": length_normalized,
        "tolerance": tolerance,
        "seed": seed,
        # FADE samples and scores every model afresh: nothing is read from the score cache.
        "score_cache": CacheLedger().summary(),
    }
    verdict = EquivalenceVerdict(
        claim or f"equivalent: {len(prompts)} prompts",
        "FAIL" if reasons else "PASS",
        [],
        config,
        result=result,
        floor=floor,
        original_result=original_result,
        tolerance=tolerance,
        reasons=reasons,
    )
    log = open_log(runlog)
    models.record(log)
    finish(verdict, log, raise_on_fail=raise_on_fail, error=EquivalenceAssertionError)
    return verdict


def _samplers(models: ClaimModels) -> tuple[SamplingModel, SamplingModel, SamplingModel | None]:
    """The model, the reference and the original as samplers (FADE samples from each).

    Raises:
        ValueError: A model that does not generate.
    """
    for role, m in models.given():
        if "generation" not in capabilities_of(m):
            raise ValueError(f"assert_equivalent samples from every model; the {role} cannot")
    return cast(
        "tuple[SamplingModel, SamplingModel, SamplingModel | None]",
        (models.model, models.reference, models.original),
    )


def _fades(
    pool: SamplePool, samplers: tuple[SamplingModel, SamplingModel, SamplingModel | None], seed: int
) -> tuple[FadeResult, FadeResult, FadeResult | None]:
    """FADE(model, reference), the noise floor FADE(reference, reference′) and, with an
    original, FADE(original, reference); the reference's samples at ``seed`` serve all three."""
    model, ref, original = samplers
    result = pool.fade(model, ref, model_seed=seed, reference_seed=seed)
    floor = pool.fade(ref, ref, model_seed=seed, reference_seed=seed + FLOOR_SEED_OFFSET)
    on_original = (
        pool.fade(original, ref, model_seed=seed, reference_seed=seed)
        if original is not None
        else None
    )
    return result, floor, on_original


def _failures(
    result: FadeResult, floor: FadeResult, original: FadeResult | None, tolerance: float
) -> list[str]:
    """Why the model does not generate like the reference (empty: it does)."""
    reasons = []
    if result.fade - floor.fade > tolerance:
        reasons.append(
            f"FADE(model, reference) {result.fade:.3f} is {result.fade - floor.fade:.3f} above "
            f"the noise floor {floor.fade:.3f} (tolerance {tolerance})"
        )
    if original is not None and result.fade >= original.fade:
        reasons.append(
            f"FADE(model, reference) {result.fade:.3f} ≥ FADE(original, reference) "
            f"{original.fade:.3f}: the model is no closer to the reference than the original"
        )
    return reasons
