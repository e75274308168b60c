"""The attack protocol: every attack, of any kind, is one object the claim pipeline runs alike.

An attack has a ``name``, the model capabilities it ``needs`` (`unlearncheck.backends.capabilities`)
and one method, ``run(facts, context, models, scorer)``, that returns an outcome with evidence for
each fact (`AttackResult`). The pipeline never asks what kind an attack is: it checks the
capabilities, runs it, corrects the p-values of all attacks together and writes the evidence.
A user's own attack written in a test file works the same way::

    class Shouted:
        name = "shouted"
        needs = frozenset({"scores"})

        def run(self, facts, context, models, scorer):
            probes = {f.id: [replace(p, prompt=p.prompt.upper()) for p in direct(f, context)]
                      for f in context.claim}
            return scorer.judge(self.name, probes, models)

``facts`` are the facts the claim decides; ``context.claim`` also holds the calibration peers
(other forget facts whose probes, asked of control subjects, set the chance level), so an attack
judged against chance probes every fact of ``context.claim``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from unlearncheck.attacks.context import ProbeContext
from unlearncheck.backends.capabilities import Capability, ScoringModel
from unlearncheck.facts import Fact, FactSet
from unlearncheck.judge import assess_probes, chance_pools, decide
from unlearncheck.probes import Probe
from unlearncheck.runlog import RunLog
from unlearncheck.scoring import ProbeScores, Scorer, score_probes
from unlearncheck.verdict import AttackOutcome

__all__ = [
    "Attack",
    "AttackResult",
    "ClaimModels",
    "ClaimScorer",
    "OptionalAttack",
    "not_run",
    "optional",
]

ROLES = ("model", "reference", "original")


@dataclass
class ClaimModels:
    """The models of a claim by role: the model under test, the reference and the original.

    Attributes:
        model: The unlearned model (or a variant of it an attack derived).
        reference: A model retrained without the forget set, or None.
        original: The model before unlearning, or None.
    """

    model: ScoringModel
    reference: ScoringModel | None = None
    original: ScoringModel | None = None

    def given(self) -> Iterator[tuple[str, ScoringModel]]:
        """(role, model) of each role that has a model, in `ROLES` order."""
        for role in ROLES:
            model: ScoringModel | None = getattr(self, role)
            if model is not None:
                yield role, model

    def record(self, log: RunLog | None) -> None:
        """Record the identity of each model in the run log (once per model and role)."""
        if log is not None:
            for role, m in self.given():
                log.model(role, m.spec, m.content_hash)

    def identities(self) -> dict[str, str | None]:
        """Spec and content hash of each role (None for a role not given)."""
        out: dict[str, str | None] = {}
        for role in ROLES:
            m: ScoringModel | None = getattr(self, role)
            out[role] = m.spec if m is not None else None
            out[f"{role}_hash"] = m.content_hash if m is not None else None
        return out


@dataclass
class AttackResult:
    """What an attack found: an outcome per fact, and where to read greedy outputs from.

    Attributes:
        outcomes: Fact id → the attack's outcome (facts of ``context.claim`` may be included;
            the pipeline keeps the claim's).
        shown_by: The model whose greedy continuation of a recovered probe is shown beside it
            (for a model attack, the derived variant); None: no output is generated.
    """

    outcomes: dict[str, AttackOutcome]
    shown_by: ScoringModel | None = None


@runtime_checkable
class Attack(Protocol):
    """An attack: a name, the capabilities it needs, and a run over a claim's facts."""

    @property
    def name(self) -> str:
        """The attack's name, unique within a claim."""
        ...

    @property
    def needs(self) -> frozenset[Capability]:
        """The model capabilities the attack uses (a model lacking one: "not run")."""
        ...

    def run(
        self, facts: FactSet, context: ProbeContext, models: ClaimModels, scorer: ClaimScorer
    ) -> AttackResult:
        """The outcome of the attack on each fact of ``facts`` (see the module docstring)."""
        ...


@dataclass(frozen=True)
class OptionalAttack:
    """An attack whose "not run" (no probe applies to a fact, a capability the model lacks) does
    not keep a fact from passing; what it recovers still fails the fact. Made by `optional`."""

    attack: Attack

    @property
    def name(self) -> str:
        """The wrapped attack's name."""
        return self.attack.name

    @property
    def needs(self) -> frozenset[Capability]:
        """The wrapped attack's needs."""
        return self.attack.needs

    def run(
        self, facts: FactSet, context: ProbeContext, models: ClaimModels, scorer: ClaimScorer
    ) -> AttackResult:
        """The wrapped attack's run."""
        return self.attack.run(facts, context, models, scorer)

    def __repr__(self) -> str:
        return f"optional({self.attack!r})"


def optional(attack: Attack) -> OptionalAttack:
    """``attack``, marked optional: by default every requested attack that did not run for a fact
    (needs weights on an endpoint, no probe applies, an endpoint error) makes the fact
    INCONCLUSIVE; an optional one is allowed not to run (``attacks=[direct, optional(alias)]``:
    facts without aliases can still pass)."""
    if not isinstance(attack, Attack):
        raise TypeError(f"optional() takes an attack, got {attack!r}")
    return OptionalAttack(attack)


def not_run(
    attack: str, facts: Iterable[Fact], reason: str, *, blocking: bool
) -> dict[str, AttackOutcome]:
    """A "not run" outcome of ``attack`` for each fact, with why (`AttackOutcome.blocking`)."""
    return {f.id: AttackOutcome(attack, "not run", reason=reason, blocking=blocking) for f in facts}


@dataclass
class ClaimScorer:
    """Scores probes for a claim and judges them: one batched pass per model, sliced by fact.

    Attributes:
        readout: How options' log-likelihoods are read (`unlearncheck.scoring.Scorer`).
        tolerance: The least mean delta of a fact that counts as recovered.
        alpha: The claim's level (the p-values are corrected together by the pipeline).
        strata: Fact id → its chance stratum (its relation): chance is pooled per stratum.
        log: The run log the models scored with are recorded in, or None.
    """

    readout: Scorer
    tolerance: float
    alpha: float
    strata: Mapping[str, str]
    log: RunLog | None = None

    def score_by_fact(
        self, model: ScoringModel, probes_by_fact: Mapping[str, list[Probe]]
    ) -> dict[str, list[ProbeScores]]:
        """Every probe scored on ``model`` in one batched pass, given back fact by fact."""
        flat = [p for probes in probes_by_fact.values() for p in probes]
        scores = score_probes(self.readout, model, flat)
        out, at = {}, 0
        for fact_id, probes in probes_by_fact.items():
            out[fact_id] = scores[at : at + len(probes)]
            at += len(probes)
        return out

    def accuracy(
        self, model: ScoringModel, probes_by_fact: Mapping[str, list[Probe]]
    ) -> dict[str, float]:
        """Each fact's accuracy on ``model``: the share of its probes whose answer has the
        highest p̂ of its options (the answer a greedy multiple-choice reader gives; 0 without
        probes), read in one batched pass."""
        items = [(p.prompt, p.options) for probes in probes_by_fact.values() for p in probes]
        distributions = self.readout.distributions(model, items)
        out, at = {}, 0
        for fact_id, probes in probes_by_fact.items():
            tops = [int(np.argmax(d)) == 0 for d in distributions[at : at + len(probes)]]
            out[fact_id] = sum(tops) / len(tops) if tops else 0.0
            at += len(probes)
        return out

    def mean_target(self, model: ScoringModel, probes: list[Probe]) -> float | None:
        """Mean p̂ of the answers of ``probes`` on ``model`` (None without probes)."""
        if not probes:
            return None
        scores = score_probes(self.readout, model, probes)
        return sum(s.target for s in scores) / len(scores)

    def judge(
        self, attack: str, probes_by_fact: Mapping[str, list[Probe]], models: ClaimModels
    ) -> AttackResult:
        """Judge one attack's probes for every fact against the reference, else chance.

        Each model scores the probes in one batched pass; a fact's probes with their scores on
        the model, the reference and the original are assessed together (`assess_probes`), and
        each fact is decided against the chance pool of its stratum (`decide`).
        """
        models.record(self.log)
        on = {role: self.score_by_fact(m, probes_by_fact) for role, m in models.given()}
        groups = {
            fact_id: assess_probes(
                probes,
                on["model"][fact_id],
                on["reference"][fact_id] if "reference" in on else None,
                on["original"][fact_id] if "original" in on else None,
                tolerance=self.tolerance,
            )
            for fact_id, probes in probes_by_fact.items()
        }
        pools = chance_pools(groups, self.strata)
        outcomes = {
            fid: decide(attack, g, pools[fid], self.alpha, self.tolerance)
            for fid, g in groups.items()
        }
        return AttackResult(outcomes, shown_by=models.model)
