"""Distribution-level equivalence: FADE and ``assert_equivalent``.

FADE compares what two models *generate*, not what they answer to one probe: n completions per
prompt are sampled from the model under test θu and from the reference θr, every sample is scored
under both models, and each sample's log likelihood ratio r(x) = log p_r(x) − log p_u(x) says how
much more (or less) likely the reference finds it. Precision α = mean over θu's samples of
min(1, e^r) (θu generates what θr would), recall β = mean over θr's samples of min(1, e^−r) (θu
covers what θr generates); FADE = 1 − F1(α, β), 0 for indistinguishable models and up to 1 for
disjoint ones. With exact likelihoods α and β both estimate Σ_x min(p_u(x), p_r(x)), one minus
the total-variation distance between the two output distributions.

What a sample's probability is: its decoded text teacher-forced after the prompt, as
`HFModel.score_answers` tokenizes it. Where generation stopped is not scored (the scorer has no
end-of-sequence term), so non-empty samples are compared as prefixes. A sample that decodes to
nothing or to whitespace only (the model stopped at once, or emitted only special tokens) is
scored as the tokenizer's end-of-sequence token, i.e. as the event "stops at once"; when the
tokenizer has no end-of-sequence token, it counts as r = 0 (the empty prefix has probability 1
under every model). Sampling should use the models' full distributions (temperature 1, top-p 1)
for r to be the ratio of the distributions that were sampled.

Both models must share one tokenizer: a sample is the same token sequence under both only then.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from unlearncheck import events
from unlearncheck.backends.capabilities import GeneratingModel
from unlearncheck.backends.hf import AnswerScore, HFModel
from unlearncheck.facts import Fact
from unlearncheck.loading import ModelLike, load_model
from unlearncheck.probes import Templates, question_of
from unlearncheck.runlog import RunLog
from unlearncheck.untrusted import quoted, shown
from unlearncheck.verdict import TERMINAL_CHARS, ForgettingAssertionError, Status, Verdict

DEFAULT_N = 16
DEFAULT_MAX_NEW_TOKENS = 16
DEFAULT_TOLERANCE = 0.1
#: Samples kept as evidence: the distinct ones with the largest |r|.
EVIDENCE = 5
#: The noise floor's second reference sample set is drawn with ``seed + FLOOR_SEED_OFFSET``.
FLOOR_SEED_OFFSET = 1


class SamplingModel(GeneratingModel, Protocol):
    """What FADE needs of a model: sampling and teacher-forced scoring (as `HFModel` has)."""

    def score_answers(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int = ...
    ) -> list[AnswerScore]:
        """One teacher-forced score per (prompt, continuation) pair."""
        ...


@dataclass(frozen=True)
class FadeSample:
    """One sampled continuation, scored under both models.

    Attributes:
        prompt: The prompt it continues.
        text: The decoded continuation ("" when the model stopped at once).
        source: The model that generated it: ``model`` (θu) or ``reference`` (θr).
        logp_model: Its log-probability under the model (per token when length-normalized).
        logp_reference: Its log-probability under the reference (likewise).
        r: ``logp_reference - logp_model``.
    """

    prompt: str
    text: str
    source: Literal["model", "reference"]
    logp_model: float
    logp_reference: float
    r: float

    def describe(self) -> str:
        """One line: who generated what after which prompt, and how each model scores it."""
        prompt, text = (quoted(t, limit=TERMINAL_CHARS) for t in (self.prompt, self.text))
        return (
            f"[{self.source}] {prompt} → {text}: log p model "
            f"{self.logp_model:.2f}, reference {self.logp_reference:.2f}, r {self.r:+.2f}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "prompt": self.prompt,
            "text": self.text,
            "source": self.source,
            "logp_model": round(self.logp_model, 6),
            "logp_reference": round(self.logp_reference, 6),
            "r": round(self.r, 6),
        }


@dataclass(frozen=True)
class FadeResult:
    """FADE of a model against a reference on a set of prompts.

    Attributes:
        alpha: Precision: mean over the model's samples of min(1, e^r).
        beta: Recall: mean over the reference's samples of min(1, e^−r).
        fade: 1 − F1(α, β) (1 when α = β = 0).
        n: Samples per prompt from each model.
        prompts: Number of prompts.
        length_normalized: Whether r compares per-token log-probabilities.
        empty_model: The model's samples that decoded to nothing (see the module docstring).
        empty_reference: The reference's samples that did.
        evidence: The distinct samples (source, prompt, text) with the largest |r|, largest
            first.
    """

    alpha: float
    beta: float
    fade: float
    n: int
    prompts: int
    length_normalized: bool
    empty_model: int
    empty_reference: int
    evidence: tuple[FadeSample, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "alpha": round(self.alpha, 6),
            "beta": round(self.beta, 6),
            "fade": round(self.fade, 6),
            "n": self.n,
            "prompts": self.prompts,
            "length_normalized": self.length_normalized,
            "empty_model": self.empty_model,
            "empty_reference": self.empty_reference,
            "evidence": [s.to_dict() for s in self.evidence],
        }


def f1(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall (0 when both are 0)."""
    total = precision + recall
    return 0.0 if total == 0 else 2 * precision * recall / total


class _Pool:
    """Samples and their log-probabilities on fixed prompts, each drawn and scored once.

    Samples are keyed by (generating model, seed), scores by (scoring model, generating model,
    seed), both by object identity: a model scored against itself reuses one pass, so its r is
    exactly 0.
    """

    def __init__(
        self,
        prompts: Sequence[str],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        length_normalized: bool,
    ) -> None:
        if not prompts:
            raise ValueError("FADE needs at least one prompt")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.prompts = list(prompts)
        self.n = n
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.length_normalized = length_normalized
        self._samples: dict[tuple[int, int], list[tuple[str, str]]] = {}
        self._logps: dict[tuple[int, int, int], np.ndarray] = {}

    def samples(self, model: SamplingModel, seed: int) -> list[tuple[str, str]]:
        """(prompt, text) of the model's ``n`` samples per prompt at ``seed``, prompt-major."""
        key = (id(model), seed)
        if key not in self._samples:
            texts = model.generate(
                self.prompts,
                max_new_tokens=self.max_new_tokens,
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                num_samples=self.n,
                seed=seed,
            )
            self._samples[key] = [
                (prompt, text)
                for prompt, row in zip(self.prompts, texts, strict=True)
                for text in row
            ]
        return self._samples[key]

    def logps(self, scorer: SamplingModel, model: SamplingModel, seed: int) -> np.ndarray:
        """Log-probabilities under ``scorer`` of the samples of ``model`` at ``seed``.

        An empty sample is scored as the end-of-sequence token, or left at 0 without one.
        """
        key = (id(scorer), id(model), seed)
        if key not in self._logps:
            pairs = self.samples(model, seed)
            stop = _stop_text(scorer)
            rows, requests = [], []
            for row, (prompt, text) in enumerate(pairs):
                scored_as = text if text.strip() else stop
                if scored_as is not None:
                    rows.append(row)
                    requests.append((prompt, scored_as))
            values = np.zeros(len(pairs))
            for row, score in zip(rows, scorer.score_answers(requests), strict=True):
                values[row] = score.mean_logprob if self.length_normalized else score.logprob
            self._logps[key] = values
        return self._logps[key]

    def scored(
        self,
        source: Literal["model", "reference"],
        model: SamplingModel,
        reference: SamplingModel,
        seed: int,
    ) -> list[FadeSample]:
        """The samples of ``model`` (source ``model``) or ``reference`` at ``seed``, scored."""
        generator = model if source == "model" else reference
        on_model = self.logps(model, generator, seed)
        on_reference = self.logps(reference, generator, seed)
        return [
            FadeSample(prompt, text, source, float(u), float(r), float(r - u))
            for (prompt, text), u, r in zip(
                self.samples(generator, seed), on_model, on_reference, strict=True
            )
        ]

    def fade(
        self,
        model: SamplingModel,
        reference: SamplingModel,
        *,
        model_seed: int,
        reference_seed: int,
    ) -> FadeResult:
        """FADE of ``model``'s samples at ``model_seed`` vs ``reference``'s at its seed."""
        _check_shared_tokenizer(model, reference)
        from_model = self.scored("model", model, reference, model_seed)
        from_reference = self.scored("reference", model, reference, reference_seed)
        # min(1, e^x) as e^min(0, x): no overflow for large ratios.
        alpha = float(np.mean([np.exp(min(s.r, 0.0)) for s in from_model]))
        beta = float(np.mean([np.exp(min(-s.r, 0.0)) for s in from_reference]))
        evidence: dict[tuple[str, str, str], FadeSample] = {}
        for sample in sorted([*from_model, *from_reference], key=lambda s: -abs(s.r)):
            evidence.setdefault((sample.source, sample.prompt, sample.text), sample)
            if len(evidence) == EVIDENCE:
                break
        return FadeResult(
            alpha=alpha,
            beta=beta,
            fade=1.0 - f1(alpha, beta),
            n=self.n,
            prompts=len(self.prompts),
            length_normalized=self.length_normalized,
            empty_model=sum(not s.text.strip() for s in from_model),
            empty_reference=sum(not s.text.strip() for s in from_reference),
            evidence=tuple(evidence.values()),
        )


def _stop_text(model: object) -> str | None:
    """The end-of-sequence token text of the model's tokenizer, when it has one."""
    eos = getattr(getattr(model, "tokenizer", None), "eos_token", None)
    return eos if isinstance(eos, str) and eos else None


def _check_shared_tokenizer(model: SamplingModel, reference: SamplingModel) -> None:
    """Raise ValueError when two loaded HF models have different vocabularies."""
    if (
        isinstance(model, HFModel)
        and isinstance(reference, HFModel)
        and model is not reference
        and model.tokenizer.get_vocab() != reference.tokenizer.get_vocab()
    ):
        raise ValueError(
            f"FADE needs one tokenizer: {model.spec!r} and {reference.spec!r} have different "
            "vocabularies, so a sample is not the same token sequence under both"
        )


def fade(
    model: SamplingModel,
    reference: SamplingModel,
    prompts: Sequence[str],
    *,
    n: int = DEFAULT_N,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    length_normalized: bool = False,
) -> FadeResult:
    """FADE of ``model`` against ``reference`` on ``prompts`` (see the module docstring).

    Args:
        model: The model under test θu (an `HFModel` or anything with its ``generate`` and
            ``score_answers``).
        reference: The reference θr; it must share the model's tokenizer.
        prompts: Prompts to continue.
        n: Samples per prompt from each model.
        max_new_tokens: Maximum sample length in tokens.
        temperature: Sampling temperature (1 samples the model's own distribution).
        top_p: Nucleus sampling mass (1 samples the model's own distribution).
        seed: Sampling seed of both models (same arguments and seed, same samples).
        length_normalized: Compare per-token mean log-probabilities instead of sums.

    Returns:
        α, β, FADE and the samples with the largest likelihood ratios.

    Raises:
        ValueError: No prompts, ``n`` < 1, or two HF models with different vocabularies.
    """
    pool = _Pool(
        prompts,
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        length_normalized=length_normalized,
    )
    return pool.fade(model, reference, model_seed=seed, reference_seed=seed)


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
    prompts = as_prompts(prompts_or_facts, templates)
    roles = {
        "model": load_model(model, device=device),
        "reference": load_model(reference, device=device),
    }
    if original is not None:
        roles["original"] = load_model(original, device=device)
    pool = _Pool(
        prompts,
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        length_normalized=length_normalized,
    )
    ref = roles["reference"]
    result = pool.fade(roles["model"], ref, model_seed=seed, reference_seed=seed)
    floor = pool.fade(ref, ref, model_seed=seed, reference_seed=seed + FLOOR_SEED_OFFSET)
    original_result = (
        pool.fade(roles["original"], ref, model_seed=seed, reference_seed=seed)
        if "original" in roles
        else None
    )
    reasons = []
    if result.fade - floor.fade > tolerance:
        reasons.append(
            f"FADE(model, reference) {result.fade:.3f} is {result.fade - floor.fade:.3f} above "
            f"the noise floor {floor.fade:.3f} (tolerance {tolerance})"
        )
    if original_result is not None and result.fade >= original_result.fade:
        reasons.append(
            f"FADE(model, reference) {result.fade:.3f} ≥ FADE(original, reference) "
            f"{original_result.fade:.3f}: the model is no closer to the reference than the original"
        )
    status: Status = "FAIL" if reasons else "PASS"
    config: dict[str, Any] = {}
    for role in ("model", "reference", "original"):
        loaded = roles.get(role)
        config[role] = loaded.spec if loaded is not None else None
        config[f"{role}_hash"] = loaded.content_hash if loaded is not None else None
    config.update(
        kind="equivalent",
        n=n,
        prompts=len(prompts),
        max_new_tokens=max_new_tokens,
        length_normalized=length_normalized,
        tolerance=tolerance,
        seed=seed,
    )
    verdict = EquivalenceVerdict(
        claim or f"equivalent: {len(prompts)} prompts",
        status,
        [],
        config,
        result=result,
        floor=floor,
        original_result=original_result,
        tolerance=tolerance,
        reasons=reasons,
    )
    log = RunLog(runlog) if isinstance(runlog, str | Path) else runlog
    if log is not None:
        for role, loaded in roles.items():
            log.model(role, loaded.spec, loaded.content_hash)
        log.write("verdict", verdict.to_dict())
    events.publish(verdict)
    if status == "FAIL" and raise_on_fail:
        raise EquivalenceAssertionError(verdict)
    return verdict
