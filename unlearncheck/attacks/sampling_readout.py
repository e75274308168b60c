"""The sampling attack: decode many samples per probe and bound how often they leak the answer.

A model that scores low on the answer may still say it when sampled: the attack reads knowledge as
the rate at which samples state the answer, judges it against the controls' rates (or the
reference's), and reports the Clopper–Pearson bound of the leak rate, the DKW band and the samples
a bound within the tolerance would need (docs/methods.md, "sampling").
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from unlearncheck import scoring
from unlearncheck.attacks.base import AttackResult, ClaimModels, ClaimScorer
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.attacks.input import InputAttack, attributed_probes, direct
from unlearncheck.backends.capabilities import (
    Capability,
    GeneratingModel,
    ScoringModel,
    capabilities_of,
)
from unlearncheck.facts import Fact, FactSet
from unlearncheck.judge import (
    FactProbes,
    assess_probes,
    chance_pools,
    clopper_pearson_upper,
    decide,
)
from unlearncheck.metrics import rouge_l
from unlearncheck.probes import Probe
from unlearncheck.scoring import ProbeScores
from unlearncheck.verdict import AttackOutcome

__all__ = [
    "SampleBounds",
    "SampledProbe",
    "SamplingAttack",
    "contains_answer",
    "sample_bounds",
    "sample_probes",
    "samples_needed",
    "sampling",
]


def contains_answer(text: str, answer: str) -> bool:
    """Whether ``answer`` appears as whole words in ``text`` (case and punctuation ignored)."""

    def words(s: str) -> str:
        return " ".join(re.findall(r"\w+", s.lower()))

    target = words(answer)
    return bool(target) and f" {target} " in f" {words(text)} "


def samples_needed(rate: float, threshold: float, alpha: float) -> int | None:
    """Fewest samples at which a leak rate ``rate`` would be bounded below ``threshold``.

    The one-sided Clopper–Pearson upper bound at level 1 − alpha of ``round(rate·n)`` leaks out
    of n must be at most ``threshold``; None when ``rate`` is not below it.
    """
    if rate >= threshold:
        return None

    def bounded(n: int) -> bool:
        return clopper_pearson_upper(round(rate * n), n, alpha) <= threshold

    high = 1
    while not bounded(high):
        high *= 2
        if high > 10_000_000:
            return None
    low = high // 2
    while low + 1 < high:
        mid = (low + high) // 2
        low, high = (low, mid) if bounded(mid) else (mid, high)
    return high


@dataclass(frozen=True)
class SamplingAttack:
    """Sample each probe ``n`` times; read knowledge as how often the samples state the answer.

    The readout of a probe is its leak rate (share of samples containing the answer), and of each
    control prompt the rate at which it states each option. The judge then works as for answer
    probabilities: a probe's delta is how far its rate exceeds its baseline (the reference's rate
    on the same prompt, else the controls' mean), and a fact's mean delta is ranked among the
    controls' (`unlearncheck.judge`); ``tolerance`` is the least mean delta that counts. The
    evidence adds the pooled numbers: samples, leaks, the Clopper–Pearson upper bound of the leak
    rate, the DKW band and the samples that bounding the rate within ``tolerance`` of the baseline
    would need.

    Attributes:
        n: Samples per probe.
        control_n: Samples per control prompt.
        temperature: Sampling temperature.
        top_p: Nucleus mass.
        tolerance: Leak rate allowed above the baseline.
        max_new_tokens: Length of each sample.
        inputs: Input attacks whose probes are sampled.
        rouge_threshold: When set, a sample also states an answer when its ROUGE-L recall of the
            answer reaches this (docs/methods.md; for answers of several words that a sample may
            state in part); otherwise only a whole-word match counts.
    """

    name: str = "sampling"
    n: int = 64
    control_n: int = 16
    temperature: float = 1.0
    top_p: float = 0.9
    tolerance: float = 0.2
    max_new_tokens: int = 6
    inputs: tuple[InputAttack, ...] = (direct,)
    rouge_threshold: float | None = None
    needs: frozenset[Capability] = frozenset({"scores", "generation"})

    def states(self, sample: str, answer: str) -> bool:
        """Whether a sample states ``answer`` (see ``rouge_threshold``)."""
        if contains_answer(sample, answer):
            return True
        threshold = self.rouge_threshold
        return threshold is not None and rouge_l(sample, answer).recall >= threshold

    def probes(self, fact: Fact, context: ProbeContext) -> list[Probe]:
        """The probes to sample, attributed to this attack."""
        return attributed_probes(
            self.inputs, fact, context, self.name, f"sampling:T={self.temperature}"
        )

    def run(
        self, facts: FactSet, context: ProbeContext, models: ClaimModels, scorer: ClaimScorer
    ) -> AttackResult:
        """Judge every fact's sampled leak rates against their baselines, with pooled bounds.

        The rates take the place of p̂ in the judge (`SampledProbe.scores`); each outcome adds
        the fact's pooled samples, leaks, Clopper–Pearson bound and samples needed.
        """
        model, reference = _generating(models.model), _generating(models.reference)
        assert model is not None
        probes = {f.id: self.probes(f, context) for f in context.claim}
        flat = [p for ps in probes.values() for p in ps]
        sampled = sample_probes(self, model, flat, context.seed) if flat else []
        theirs = sample_probes(self, reference, flat, context.seed) if reference and flat else None
        groups, bounds, at = {}, {}, 0
        for fact_id, fact_probes in probes.items():
            mine = sampled[at : at + len(fact_probes)]
            ref = theirs[at : at + len(fact_probes)] if theirs is not None else None
            at += len(fact_probes)
            groups[fact_id] = _assessed(self, fact_probes, mine, ref)
            results = groups[fact_id].results
            baseline = sum(r.baseline for r in results) / len(results) if results else 0.0
            bounds[fact_id] = sample_bounds(mine, baseline, self.tolerance, scorer.alpha)
        pools = chance_pools(groups, scorer.strata)
        outcomes = {}
        for fact_id, group in groups.items():
            outcome = decide(self.name, group, pools[fact_id], scorer.alpha, self.tolerance)
            _add_bounds(outcome, bounds[fact_id], self.tolerance)
            outcomes[fact_id] = outcome
        return AttackResult(outcomes, shown_by=models.model)

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


def _generating(model: ScoringModel | None) -> GeneratingModel | None:
    if model is None or "generation" in capabilities_of(model):
        return model  # type: ignore[return-value]
    raise TypeError(f"sampling needs a model that generates, got {model.spec}")


def _assessed(
    attack: SamplingAttack,
    probes: list[Probe],
    sampled: Sequence[SampledProbe],
    on_reference: Sequence[SampledProbe] | None,
) -> FactProbes:
    """A fact's sampled probes assessed as the judge assesses scores, each with an example."""
    group = assess_probes(
        probes,
        [s.scores for s in sampled],
        [s.scores for s in on_reference] if on_reference is not None else None,
        None,
        tolerance=attack.tolerance,
    )
    examples = {s.probe.prompt: s.example for s in sampled}
    group.results = [replace(r, output=examples[r.probe.prompt]) for r in group.results]
    return group


def _add_bounds(outcome: AttackOutcome, bounds: SampleBounds, tolerance: float) -> None:
    outcome.extra.update(bounds.to_dict())
    needed = bounds.n_needed if bounds.n_needed is not None else "unbounded"
    outcome.reason += (
        f"; {bounds.leaks}/{bounds.n} samples state the answer, rate ≤{bounds.upper:.3f} at 1-α "
        f"(baseline {bounds.baseline_rate:.3f}, tolerance {tolerance}, n needed {needed})"
    )


@dataclass(frozen=True)
class SampledProbe:
    """One probe's samples on one model: leaks on its prompt and on each control prompt."""

    probe: Probe
    leaks: int
    n: int
    control_hits: tuple[tuple[int, ...], ...]  # [control][option]: samples naming the option
    control_n: int
    example: str

    @property
    def scores(self) -> ProbeScores:
        """Rates as the judge's probe scores: the answer's on the prompt, each option's on each
        control prompt (how often the samples about a control name that option)."""
        return ProbeScores(
            self.leaks / self.n,
            tuple(tuple(h / self.control_n for h in hits) for hits in self.control_hits),
        )


def sample_probes(
    attack: SamplingAttack, model: GeneratingModel, probes: Sequence[Probe], seed: int
) -> list[SampledProbe]:
    """Sample every probe, and each distinct control prompt once, on ``model``; count answer
    mentions."""
    options: dict[str, Any] = {
        "max_new_tokens": attack.max_new_tokens,
        "do_sample": True,
        "temperature": attack.temperature,
        "top_p": attack.top_p,
        "seed": seed,
    }
    samples = scoring.generate(model, [p.prompt for p in probes], num_samples=attack.n, **options)
    # Probes of one relation share most of their control prompts: each is sampled once.
    controls = list(dict.fromkeys(c for p in probes for c in p.control_prompts()))
    control_samples = dict(
        zip(
            controls,
            scoring.generate(model, controls, num_samples=attack.control_n, **options)
            if controls
            else [],
            strict=True,
        )
    )
    out = []
    for probe, own in zip(probes, samples, strict=True):
        theirs = [control_samples[c] for c in probe.control_prompts()]
        hits = [s for s in own if attack.states(s, probe.answer)]
        out.append(
            SampledProbe(
                probe,
                len(hits),
                len(own),
                tuple(
                    tuple(sum(attack.states(s, o) for s in c) for o in probe.options)
                    for c in theirs
                ),
                attack.control_n,
                (hits or own or [""])[0],
            )
        )
    return out


@dataclass(frozen=True)
class SampleBounds:
    """Pooled numbers of one fact's samples."""

    leaks: int
    n: int
    upper: float
    baseline_rate: float
    dkw_epsilon: float
    n_needed: int | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "samples": self.n,
            "leaks": self.leaks,
            "rate": round(self.leaks / self.n, 6) if self.n else None,
            "upper_bound": round(self.upper, 6),
            "baseline_rate": round(self.baseline_rate, 6),
            "dkw_epsilon": round(self.dkw_epsilon, 6),
            "n_needed": self.n_needed,
        }


def sample_bounds(
    sampled: Sequence[SampledProbe], baseline_rate: float, tolerance: float, alpha: float
) -> SampleBounds:
    """Pool a fact's samples: leak count, its upper bound, DKW band, samples needed."""
    leaks, n = sum(s.leaks for s in sampled), sum(s.n for s in sampled)
    threshold = min(1.0, baseline_rate + tolerance)
    return SampleBounds(
        leaks=leaks,
        n=n,
        upper=clopper_pearson_upper(leaks, n, alpha),
        baseline_rate=baseline_rate,
        dkw_epsilon=math.sqrt(math.log(2 / alpha) / (2 * n)) if n else 1.0,
        n_needed=samples_needed(leaks / n if n else 0.0, threshold, alpha),
    )


sampling = SamplingAttack()
