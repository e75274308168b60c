"""The judge: scores probes and decides, with calibration and significance, what a model knows.

Readout: the normalized answer probability p̂ = p(answer) / Σ p(option) over the answer and its
distractors, with p = exp(mean log-probability of the option's tokens | prompt).

Calibration (ARCHITECTURE.md): a probe *leaks* when p̂ on the model exceeds a baseline by more than
the tolerance τ. The baseline is the reference model's p̂ on the same prompt when a reference is
given, else the mean p̂ of the same answer on control prompts (the prompt about other subjects for
whom the answer is wrong), i.e. chance as the model itself sets it. The chance of a spurious leak is
measured on the controls themselves (their deltas), bounded above by Clopper–Pearson at 1 − α, and
the leaks of one fact's probes are tested against it with a one-sided binomial test. The probes of
one fact are one cluster; the claim's family of (fact, attack) tests is Holm-corrected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import stats

from unlearncheck.probes import Probe
from unlearncheck.verdict import AttackOutcome, ProbeResult

MAX_EVIDENCE = 5


class ScoringModel(Protocol):
    """What the judge needs of a model: an identity and batched answer log-likelihoods."""

    spec: str

    @property
    def content_hash(self) -> str: ...

    def score_answers(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int = ...
    ) -> list: ...


class Scorer:
    """Batched option probabilities with a cache keyed by (model content hash, prompt, option)."""

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._cache: dict[tuple[str, str, str], float] = {}

    def mean_logprobs(
        self, model: ScoringModel, requests: Sequence[tuple[str, str]]
    ) -> list[float]:
        """Mean log-probability of each (prompt, continuation), computing only what is missing."""
        key = model.content_hash
        missing = sorted({r for r in requests if (key, *r) not in self._cache})
        if missing:
            scores = model.score_answers(missing, batch_size=self.batch_size)
            for request, score in zip(missing, scores, strict=True):
                self._cache[(key, *request)] = score.mean_logprob
        return [self._cache[(key, *r)] for r in requests]

    def normalized(
        self, model: ScoringModel, items: Sequence[tuple[str, Sequence[str]]]
    ) -> list[float]:
        """p̂ of the first option for each (prompt, options)."""
        requests = [(prompt, f" {o}") for prompt, options in items for o in options]
        flat = self.mean_logprobs(model, requests)
        out, at = [], 0
        for _, options in items:
            logp = np.array(flat[at : at + len(options)])
            at += len(options)
            p = np.exp(logp - logp.max())
            out.append(float(p[0] / p.sum()))
        return out


@dataclass(frozen=True)
class ProbeScores:
    """p̂ of a probe's answer on its prompt and on each control prompt."""

    target: float
    controls: tuple[float, ...]


def score_probes(scorer: Scorer, model: ScoringModel, probes: Sequence[Probe]) -> list[ProbeScores]:
    """Score every probe and its controls on ``model`` in one batched pass."""
    items: list[tuple[str, Sequence[str]]] = []
    for probe in probes:
        items.append((probe.prompt, probe.options))
        items += [(c, probe.options) for c in probe.control_prompts()]
    flat = scorer.normalized(model, items)
    out, at = [], 0
    for probe in probes:
        k = len(probe.controls)
        out.append(ProbeScores(flat[at], tuple(flat[at + 1 : at + 1 + k])))
        at += 1 + k
    return out


def deltas(scores: ProbeScores, reference: ProbeScores | None) -> tuple[float, float, list[float]]:
    """(baseline, delta of the target, deltas of the controls) of one probe.

    Without a reference each control is compared with the mean of the other controls
    (leave-one-out), which is how far a subject the model does not link to the answer strays.
    """
    c = np.array(scores.controls, dtype=float)
    if reference is not None:
        baseline = reference.target
        control_deltas = list(c - np.array(reference.controls, dtype=float))
    else:
        baseline = float(c.mean()) if len(c) else 0.0
        control_deltas = (
            [float(c[j] - np.delete(c, j).mean()) for j in range(len(c))] if len(c) > 1 else []
        )
    return baseline, scores.target - baseline, control_deltas


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided upper confidence bound (level 1 − alpha) of a binomial proportion."""
    if trials == 0 or successes >= trials:
        return 1.0
    return float(stats.beta.ppf(1 - alpha, successes + 1, trials - successes))


def min_probes(null_rate: float, alpha: float) -> int:
    """Fewest probes that can reach significance at ``alpha`` when every probe leaks."""
    if null_rate >= 1.0:
        return math.inf  # type: ignore[return-value]
    return max(1, math.floor(math.log(alpha) / math.log(null_rate)) + 1)


@dataclass
class FactProbes:
    """One fact's probes of one attack, scored and compared with their baselines."""

    results: list[ProbeResult]
    control_deltas: list[float]
    excluded: int
    total: int


def assess_probes(
    probes: Sequence[Probe],
    model_scores: Sequence[ProbeScores],
    reference_scores: Sequence[ProbeScores] | None,
    original_scores: Sequence[ProbeScores] | None,
    *,
    tolerance: float,
) -> FactProbes:
    """Per-probe deltas and leaks; probes the original does not know are left out."""
    results: list[ProbeResult] = []
    control_deltas: list[float] = []
    excluded = 0
    for i, probe in enumerate(probes):
        ref = reference_scores[i] if reference_scores is not None else None
        baseline, delta, controls = deltas(model_scores[i], ref)
        original_delta = None
        if original_scores is not None:
            _, original_delta, _ = deltas(original_scores[i], None)
            if original_delta <= tolerance:
                excluded += 1
                continue
        control_deltas += controls
        results.append(
            ProbeResult(
                probe, model_scores[i].target, baseline, delta, delta > tolerance, original_delta
            )
        )
    return FactProbes(results, control_deltas, excluded, len(probes))


def null_leak_rate(groups: Sequence[FactProbes], *, tolerance: float, alpha: float) -> float:
    """Chance leak rate of an attack: upper bound over the control prompts of all its facts.

    Controls are pooled across the facts of a claim: each is a prompt about a subject for whom the
    answer is wrong, so how often its delta exceeds the tolerance is how often a probe leaks by
    chance under this attack's prompts on this model.
    """
    pooled = [d for g in groups for d in g.control_deltas]
    return clopper_pearson_upper(sum(d > tolerance for d in pooled), len(pooled), alpha)


def decide(attack: str, group: FactProbes, null_rate: float, alpha: float) -> AttackOutcome:
    """Whether one fact's probes of ``attack`` leak significantly more than chance."""
    if not group.total:
        return AttackOutcome(attack, "not run", reason="no probe applies to this fact")
    if not group.results:
        return AttackOutcome(
            attack,
            "not run",
            excluded=group.excluded,
            reason="the original model answers none of these probes",
        )
    n, leaks = len(group.results), sum(r.leak for r in group.results)
    evidence = sorted(group.results, key=lambda r: -r.delta)[:MAX_EVIDENCE]
    needed = min_probes(null_rate, alpha)
    if n < needed:
        return AttackOutcome(
            attack,
            "not run",
            blocking=True,
            n=n,
            leaks=leaks,
            null_rate=null_rate,
            excluded=group.excluded,
            evidence=evidence,
            reason=f"too few probes for the confidence asked: {n} < {needed} "
            f"(chance leak rate ≤{null_rate:.2f})",
        )
    p_value = float(stats.binom.sf(leaks - 1, n, null_rate)) if leaks else 1.0
    return AttackOutcome(
        attack,
        "recovered" if p_value < alpha else "not recovered",
        n=n,
        leaks=leaks,
        null_rate=null_rate,
        p_value=p_value,
        significant=p_value < alpha,
        evidence=evidence,
        excluded=group.excluded,
        reason=f"{leaks}/{n} probes leak (p={p_value:.2g})",
    )


def holm(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm–Bonferroni: which hypotheses are rejected at family-wise level ``alpha``."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    m = len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] >= alpha / (m - rank):
            break
        rejected[i] = True
    return rejected
