"""The validity matrix: how often each attack fails each zoo variant on its forget facts.

The zoo has known ground truth (the gold model never saw the forget people; each unlearned variant
hides them in a known way), so the matrix shows whether a claim's verdict is right: gold must
pass, the original must fail, and each variant must be caught by the attack that targets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from unlearncheck.attacks.base import Attack
from unlearncheck.claims import assert_forgotten
from unlearncheck.facts import Fact, FactSet, load_facts
from unlearncheck.loading import ModelLike
from unlearncheck.verdict import Verdict

__all__ = [
    "Cell",
    "Matrix",
    "forget_facts",
    "format_matrix",
    "null_verdicts",
    "single_fact_failures",
    "validity_matrix",
]


@dataclass(frozen=True)
class Cell:
    """One (variant, attack) cell: facts failed out of the facts the attack applies to, and the
    attack's power (share of the facts it recovers from the original; None: not measured)."""

    failed: int
    applicable: int
    failed_ids: frozenset[str]
    power: float | None = None

    @property
    def rate(self) -> float:
        """Share of applicable facts failed (0 when none applies)."""
        return self.failed / self.applicable if self.applicable else 0.0


Matrix = dict[str, dict[str, Cell]]


def forget_facts(zoo: Path, n_people: int | None = None) -> FactSet:
    """The zoo's forget facts (split ``forget``), of the first ``n_people`` forget people."""
    forget = load_facts(zoo / "facts.jsonl").split("forget")
    if n_people is None:
        return forget
    people = set(forget.subjects()[:n_people])
    return forget.filter(lambda f: f.subject in people)


def validity_matrix(
    zoo: Path,
    variants: Sequence[str],
    attacks: Sequence[Attack],
    facts: FactSet,
    *,
    reference: str | None = None,
) -> Matrix:
    """Run one claim per (variant, attack) over ``facts`` and count the facts FAILED.

    Args:
        zoo: Directory of the zoo (one checkpoint a variant, ``facts.jsonl``).
        variants: Rows.
        attacks: Columns; each is a claim of its own (corrected over the facts).
        facts: The forget facts to claim.
        reference: Reference model spec for every claim (default: compare with chance).
    """
    context = load_facts(zoo / "facts.jsonl")
    matrix: Matrix = {}
    for variant in variants:
        row: dict[str, Cell] = {}
        for attack in attacks:
            verdict = _verdict(
                str(zoo / variant), facts, [attack], str(zoo / "original"), context, reference
            )
            outcomes = [f.outcome(attack.name) for f in verdict.facts]
            applicable = [o for o in outcomes if o.outcome != "not run" or o.p_value is not None]
            failed = frozenset(f.fact_id for f in verdict.facts if f.status == "FAIL")
            power = verdict.power().get(attack.name)
            row[attack.name] = Cell(len(failed), len(applicable), failed, power)
        matrix[variant] = row
    return matrix


def null_verdicts(zoo: Path, attacks: Sequence[Attack]) -> dict[str, dict[str, int]]:
    """Verdict counts of one claim over the zoo's ``null`` facts (made-up entities no model can
    know) on its ``original`` model: without ``original=`` (nothing is recovered: PASS, power not
    measured) and with it (the original does not know them: INCONCLUSIVE). Never FAIL."""
    context = load_facts(zoo / "facts.jsonl")
    null = context.split("null")
    model = str(zoo / "original")
    out: dict[str, dict[str, int]] = {}
    for name, original in (("without original", None), ("with original", model)):
        verdict = _verdict(model, null, attacks, original, context)
        counts = {"PASS": 0, "FAIL": 0, "INCONCLUSIVE": 0}
        for fact in verdict.facts:
            counts[fact.status] += 1
        out[name] = counts
    return out


def single_fact_failures(
    model: ModelLike,
    facts: FactSet,
    attacks: Sequence[Attack],
    *,
    original: ModelLike | None,
    context: FactSet,
) -> list[str]:
    """Ids of the facts whose one-fact claim (``assert_forgotten(model, fact, ...)``, each
    calibrated on peers from ``context``) FAILED under ``attacks``: on a model that knows none of
    them, each is a false alarm, which the claim's alpha bounds."""
    verdicts = (_verdict(model, fact, attacks, original, context) for fact in facts)
    return [fact.id for fact, v in zip(facts, verdicts, strict=True) if v.status == "FAIL"]


def _verdict(
    model: ModelLike,
    facts: Fact | FactSet,
    attacks: Sequence[Attack],
    original: ModelLike | None,
    context: FactSet,
    reference: ModelLike | None = None,
) -> Verdict:
    """The verdict of one forgetting claim, returned whatever it is (never raised)."""
    return assert_forgotten(
        model,
        facts,
        attacks=list(attacks),
        original=original,
        reference=reference,
        context=context,
        raise_on_fail=False,
        on_inconclusive="return",
    )


def format_matrix(matrix: Matrix) -> str:
    """Fixed-width text: one row a variant, ``rate (failed/applicable)`` a cell, and a last row
    with each attack's power on the original (the same for every variant: it is the original's),
    taken from the first row; a cell a row did not run is ``—``."""
    first = next(iter(matrix.values()))
    attacks = list(dict.fromkeys(a for row in matrix.values() for a in row))
    lines = ["variant".ljust(18) + "".join(a.rjust(16) for a in attacks)]
    for variant, row in matrix.items():
        cells = "".join(
            (f"{row[a].rate:.2f} ({row[a].failed}/{row[a].applicable})" if a in row else "—").rjust(
                16
            )
            for a in attacks
        )
        lines.append(variant.ljust(18) + cells)
    power = [first[a].power if a in first else None for a in attacks]
    lines.append(
        "power (original)".ljust(18)
        + "".join(("—" if p is None else f"{p:.2f}").rjust(16) for p in power)
    )
    return "\n".join(lines)
