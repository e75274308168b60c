"""What a claim is calibrated on: the facts probes may use, and peers that set chance.

Chance is what a model says about subjects it does not know. A claim of few facts has few
control statistics of its own, so it borrows: `calibration_peers` adds other forget facts, whose
probes are asked of control subjects to build the chance distribution and are never judged.
"""

from __future__ import annotations

import random
from operator import attrgetter

from unlearncheck.attacks.context import ProbeContext
from unlearncheck.facts import Fact, FactSet

__all__ = ["CALIBRATION_FACTS", "calibration_peers", "context_facts", "strata"]

#: Facts a forgetting claim's chance level is measured on: a smaller claim borrows the rest from
#: the other facts of the forget set (see `calibration_peers`).
CALIBRATION_FACTS = 48


def calibration_peers(claim: FactSet, context: FactSet, seed: int) -> FactSet:
    """Other facts of the forget set that calibrate chance for a claim of few facts.

    Chance is what the model says about subjects it does not know. The subjects a model is
    claimed not to know are the forget set's: the claim's own and, when the claim is smaller than
    `CALIBRATION_FACTS`, a seeded sample of the context's other ``split == "forget"`` facts. Their
    probes are asked of control subjects to build the chance distribution; they are never judged.
    Made-up names alone are a poor chance level: a model that never saw a name still reads the
    words it is made of, which for a word-level organism are unseen only in real forget names.
    """
    missing = CALIBRATION_FACTS - len(claim)
    if missing <= 0:
        return FactSet()
    relations = {f.relation for f in claim}
    others = sorted(
        (f for f in context if f.split == "forget" and f.id not in claim), key=attrgetter("id")
    )
    rng = random.Random(f"{seed}|calibration")
    chosen: list[Fact] = []
    for same in (True, False):  # peers asking the claim's relations first (`chance_pools`)
        pool = [f for f in others if (f.relation in relations) == same]
        chosen += rng.sample(pool, min(missing - len(chosen), len(pool)))
    return FactSet(sorted(chosen, key=attrgetter("id")))


def context_facts(claim: FactSet, facts: FactSet | None) -> FactSet:
    """The facts probes may draw on: given, else the set the claim's facts came from."""
    if facts is not None:
        return facts
    sources = {id(f.source): f.source for f in claim if f.source is not None}
    if len(sources) == 1:
        (source,) = sources.values()
        assert source is not None
        return source
    return claim


def strata(context: ProbeContext) -> dict[str, str]:
    """Each fact's chance stratum (its relation), for the claim and its peers."""
    return {f.id: f.relation for f in context.claim}
