"""FADE: distribution-level distance between what two models generate.

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from unlearncheck.backends.capabilities import GeneratingModel
from unlearncheck.backends.hf import HFModel
from unlearncheck.backends.scoring import AnswerScore
from unlearncheck.untrusted import quoted
from unlearncheck.verdict import TERMINAL_CHARS

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_N",
    "EVIDENCE",
    "FadeResult",
    "FadeSample",
    "SamplePool",
    "SamplingModel",
    "f1",
    "fade",
]

DEFAULT_N = 16
DEFAULT_MAX_NEW_TOKENS = 16
#: Samples kept as evidence: the distinct ones with the largest |r|.
EVIDENCE = 5


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


class SamplePool:
    """Samples and their log-probabilities on fixed prompts, each drawn and scored once.

    Shared by `fade` and `unlearncheck.equivalence`. Samples are keyed by (generating model,
    seed), scores by (scoring model, generating model, seed), both by object identity: a model
    scored against itself reuses one pass, so its r is exactly 0.

    Args:
        prompts: The prompts sampled from (at least one).
        n: Samples per prompt (at least 1).
        max_new_tokens: Maximum sample length in tokens.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        length_normalized: Score a sample by its mean per-token log-probability instead of its
            total.

    Raises:
        ValueError: If there is no prompt or ``n`` is below 1.
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
    pool = SamplePool(
        prompts,
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        length_normalized=length_normalized,
    )
    return pool.fade(model, reference, model_seed=seed, reference_seed=seed)
