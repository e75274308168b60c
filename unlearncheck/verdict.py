"""Verdicts and their evidence: per probe, per attack, per fact and per claim."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from unlearncheck.probes import Probe
from unlearncheck.untrusted import quoted, shown

__all__ = [
    "TERMINAL_CHARS",
    "AttackOutcome",
    "FactVerdict",
    "ForgettingAssertionError",
    "InconclusiveError",
    "Outcome",
    "ProbeResult",
    "Status",
    "Verdict",
]


Status = Literal["PASS", "FAIL", "INCONCLUSIVE"]
Outcome = Literal["recovered", "not recovered", "not run"]
TERMINAL_CHARS = 1000
"""Characters of one untrusted string (a prompt, an output, a name) shown in a message."""


@dataclass(frozen=True)
class ProbeResult:
    """One probe scored on the model under test.

    Attributes:
        probe: The probe.
        score: Normalized answer probability p̂ = p(answer) / Σ p(options) on the model.
        baseline: What the score is compared with: the reference's p̂ on the same prompt, or the
            mean p̂ of the answer on the control prompts (the model's prior), for chance.
        delta: ``score - baseline``.
        leak: ``delta`` exceeds the tolerance.
        original_delta: The same delta on the original model (None without one).
        output: Greedy output of the model (filled in for the strongest evidence only).
    """

    probe: Probe
    score: float
    baseline: float
    delta: float
    leak: bool
    original_delta: float | None = None
    output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "probe": self.probe.to_dict(),
            "score": round(self.score, 6),
            "baseline": round(self.baseline, 6),
            "delta": round(self.delta, 6),
            "leak": self.leak,
            "original_delta": None
            if self.original_delta is None
            else round(self.original_delta, 6),
            "output": self.output,
        }


@dataclass
class AttackOutcome:
    """What one attack found for one fact.

    Attributes:
        attack: Attack name (a chain such as ``quant4>paraphrase`` for composed attacks).
        outcome: ``recovered``, ``not recovered`` or ``not run``.
        reason: Why it did not run, or a one-line summary.
        blocking: For ``not run``: whether it keeps the fact from passing (True when the attack
            applied but could not give the confidence asked; False when nothing applied, e.g. a
            fact without aliases).
        n: Probes that counted (known to the original when one is given).
        leaks: Probes whose delta exceeded the tolerance.
        effect: The fact's statistic: the mean delta of its probes (for ``psg``: the gap of
            normalized forgetting between the forget item and its surrogates).
        null_n: How many chance statistics (control subject × option, pooled over the claim's
            facts) the effect was ranked among.
        p_value: Share of chance statistics at least as large as the effect (permutation p;
            None for ``psg``, which has no chance level).
        significant: Recovered: kept by the Benjamini–Hochberg correction over every (fact,
            attack) of the claim, with an effect above the tolerance (for ``psg``: the fact's
            and the claim's forgetting gaps reach the attack's threshold).
        evidence: The strongest probe results (largest delta first).
        excluded: Probes left out because the original does not know them.
        extra: Attack-specific evidence (e.g. quantization codes changed, relearning gains).
        power: Whether the same attack recovers the fact from the original model (run as if it
            were the model under test, corrected like the claim's own tests): an attack that
            cannot find the fact where it is known cannot vouch for its absence. None: not
            measured (no original given, or the attack could not run on the original).
        cases: Every probe result judged (written to the run log as cases; not in `to_dict`).
    """

    attack: str
    outcome: Outcome
    reason: str = ""
    blocking: bool = False
    n: int = 0
    leaks: int = 0
    effect: float | None = None
    null_n: int = 0
    p_value: float | None = None
    significant: bool = False
    evidence: list[ProbeResult] = field(default_factory=list)
    excluded: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    power: bool | None = None
    cases: list[ProbeResult] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (without ``cases``)."""
        return {
            "attack": self.attack,
            "outcome": self.outcome,
            "reason": self.reason,
            "blocking": self.blocking,
            "n": self.n,
            "leaks": self.leaks,
            "effect": self.effect,
            "null_n": self.null_n,
            "p_value": self.p_value,
            "significant": self.significant,
            "excluded": self.excluded,
            "evidence": [e.to_dict() for e in self.evidence],
            "extra": self.extra,
            "power": self.power,
        }


@dataclass
class FactVerdict:
    """The verdict on one fact, with every attack's outcome."""

    fact_id: str
    status: Status
    reason: str
    attacks: list[AttackOutcome]

    def outcome(self, attack: str) -> AttackOutcome:
        """The outcome of ``attack`` for this fact."""
        for a in self.attacks:
            if a.attack == attack:
                return a
        raise KeyError(f"attack {attack!r} was not run on {self.fact_id}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "fact_id": self.fact_id,
            "status": self.status,
            "reason": self.reason,
            "attacks": [a.to_dict() for a in self.attacks],
        }


@dataclass
class Verdict:
    """The verdict on a claim (one or many facts)."""

    claim: str
    status: Status
    facts: list[FactVerdict]
    config: dict[str, Any]

    @property
    def failed(self) -> list[FactVerdict]:
        """Facts whose knowledge was recovered."""
        return [f for f in self.facts if f.status == "FAIL"]

    def power(self) -> dict[str, float | None]:
        """Each attack's power: the share of the claim's facts it recovers from the original
        (among the facts where it was measured; None: measured on none)."""
        measured: dict[str, list[bool]] = {}
        for fact in self.facts:
            for outcome in fact.attacks:
                shares = measured.setdefault(outcome.attack, [])
                if outcome.power is not None:
                    shares.append(outcome.power)
        return {a: sum(m) / len(m) if m else None for a, m in measured.items()}

    def fact(self, fact_id: str) -> FactVerdict:
        """The verdict on one fact."""
        for f in self.facts:
            if f.fact_id == fact_id:
                return f
        raise KeyError(fact_id)

    def summary(self) -> str:
        """One line: status and counts (untrusted text shown through `shown`)."""
        counts = {
            s: sum(f.status == s for f in self.facts) for s in ("PASS", "FAIL", "INCONCLUSIVE")
        }
        claim = shown(self.claim, limit=TERMINAL_CHARS)
        kind = self.config.get("kind")
        extra = (
            self._power_text()
            if kind == "forgotten"
            else self._accuracy_text()
            if kind == "retained"
            else ""
        )
        return (
            f"{claim}: {self.status} ({counts['PASS']} passed, {counts['FAIL']} failed, "
            f"{counts['INCONCLUSIVE']} inconclusive of {len(self.facts)} facts{extra})"
        )

    def _power_text(self) -> str:
        """ "; power on the original: <attack> <share>, …" (or that it was not measured)."""
        shares = [
            f"{shown(attack, limit=TERMINAL_CHARS)} {share:.0%}"
            for attack, share in self.power().items()
            if share is not None
        ]
        if shares:
            return f"; power on the original: {', '.join(shares)}"
        return "; power not measured (no original model)"

    def _accuracy_text(self) -> str:
        """ "; accuracy <model> (original <original>): drop <d>, allowed <max>" (or nothing)."""
        c = self.config
        if "accuracy_drop" not in c:
            return ""
        return (
            f"; accuracy {c['accuracy']:.2f} (original {c['original_accuracy']:.2f}): drop "
            f"{c['accuracy_drop']:.2f}, allowed {c.get('max_drop')}"
        )

    def explain(self, limit: int = 3) -> str:
        """A readable account of the failures (or inconclusive facts): attack, probe, output.

        Untrusted text is shown through `shown` (names, reasons) or `quoted` (prompt, answer,
        output), so the message cannot act on a terminal.
        """
        lines = [self.summary()]
        listed = [f for f in self.facts if f.status == self.status and f.status != "PASS"]
        for fact in listed[:limit]:
            fact_id, reason = (shown(t, limit=TERMINAL_CHARS) for t in (fact.fact_id, fact.reason))
            lines.append(f"  {fact_id}: {fact.status}: {reason}")
            for outcome in fact.attacks:
                if not outcome.significant or not outcome.evidence:
                    continue
                best = outcome.evidence[0]
                vs = "reference" if self.config.get("reference") else "chance (control subjects)"
                attack = shown(outcome.attack, limit=TERMINAL_CHARS)
                if outcome.p_value is None:  # decided without a chance level (psg)
                    reason = shown(outcome.reason, limit=TERMINAL_CHARS)
                    lines.append(f"    attack {attack}: {reason}")
                else:
                    lines.append(
                        f"    attack {attack}: mean delta {outcome.effect:+.2f} over "
                        f"{outcome.n} probes, {outcome.leaks} above the tolerance "
                        f"(p={outcome.p_value:.2g} among {outcome.null_n} control statistics)"
                    )
                prompt, answer = (
                    quoted(t, limit=TERMINAL_CHARS) for t in (best.probe.prompt, best.probe.answer)
                )
                output = (
                    "None" if best.output is None else quoted(best.output, limit=TERMINAL_CHARS)
                )
                lines.append(f"      prompt: {prompt}")
                lines.append(f"      answer: {answer}  output: {output}")
                lines.append(
                    f"      score {best.score:.2f} vs {vs} {best.baseline:.2f} "
                    f"(tolerance {self.config.get('tolerance')})"
                )
        if len(listed) > limit:
            lines.append(f"  … and {len(listed) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "claim": self.claim,
            "status": self.status,
            "config": self.config,
            "facts": [f.to_dict() for f in self.facts],
        }


class ForgettingAssertionError(AssertionError):
    """A claim failed: knowledge that should be gone (or kept) was found (or lost)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.explain())
        self.verdict = verdict


class InconclusiveError(AssertionError):
    """A claim could not be decided (the original never knew the fact, too few probes, …)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.explain())
        self.verdict = verdict
