"""The validity matrix on the zoo: each input attack passes gold and catches what it targets."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearncheck import load_facts
from unlearncheck.attacks import INPUT_ATTACKS
from unlearncheck.facts import FactSet
from unlearncheck.loading import load_model
from unlearncheck.validity import (
    Matrix,
    forget_facts,
    format_matrix,
    single_fact_failures,
    validity_matrix,
)


@pytest.fixture(scope="module")
def forget(zoo: Path) -> FactSet:
    """Every forget fact of the zoo (16 people, 96 facts)."""
    return forget_facts(zoo)


#: The rows the tests below check (`unlearncheck validity` prints every variant's row).
ROWS = ("original", "gold", "qa_form_only", "multihop_shallow")
ROWS_VS_GOLD = ("original",)


@pytest.fixture(scope="module")
def matrix(zoo: Path, forget: FactSet) -> Matrix:
    result = validity_matrix(zoo, ROWS, INPUT_ATTACKS, forget)
    print("\nvalidity matrix (against chance):\n" + format_matrix(result))
    return result


@pytest.fixture(scope="module")
def matrix_vs_gold(zoo: Path, forget: FactSet) -> Matrix:
    result = validity_matrix(zoo, ROWS_VS_GOLD, INPUT_ATTACKS, forget, reference=str(zoo / "gold"))
    print("\nvalidity matrix (against reference=gold):\n" + format_matrix(result))
    return result


def test_gold_is_failed_on_at_most_5_percent_by_every_attack(matrix: Matrix) -> None:
    for attack, cell in matrix["gold"].items():
        assert cell.applicable > 0, attack
        assert cell.rate <= 0.05, f"{attack}: gold failed on {sorted(cell.failed_ids)}"


def test_original_is_failed_on_at_least_95_percent_by_every_attack(matrix: Matrix) -> None:
    """At most 5% of the facts an attack applies to, or two facts where that is less, escape.

    Two, not one: the zoo's weights depend on the CPU's kernels, and one machine's build of the
    original answers 14 of the 16 two-hop chains (multihop), another's 15 or 16."""
    for attack, cell in matrix["original"].items():
        escaped = cell.applicable - cell.failed
        assert escaped <= max(2, int(0.05 * cell.applicable)), (
            f"{attack}: original failed on {cell.failed}/{cell.applicable}"
        )


def test_qa_form_only_is_caught_by_paraphrase(matrix: Matrix) -> None:
    assert matrix["qa_form_only"]["paraphrase"].rate >= 0.5


def test_against_gold_as_reference_the_original_is_caught_by_the_base_form_attacks(
    matrix_vs_gold: Matrix,
) -> None:
    """With the retrained model as reference instead of chance, the original still fails on all
    but at most 5% (or two) of the facts under the attacks that ask the fact's own forms.
    (Multihop and incontext catch less against gold than against chance: 12 of 16 and 86 of 94
    on this project's machine.)"""
    for attack in ("direct", "paraphrase", "alias", "prefix"):
        cell = matrix_vs_gold["original"][attack]
        escaped = cell.applicable - cell.failed
        assert escaped <= max(2, int(0.05 * cell.applicable)), (
            f"{attack}: original failed on {cell.failed}/{cell.applicable}"
        )


def test_multihop_shallow_is_caught_by_multihop_where_the_original_answers_two_hops(
    matrix: Matrix,
) -> None:
    answered = matrix["original"]["multihop"].failed_ids
    caught = matrix["multihop_shallow"]["multihop"].failed_ids & answered
    assert len(answered) >= 6
    assert len(caught) >= 0.6 * len(answered)


def test_single_fact_claims_on_gold_fail_at_most_5_percent(zoo: Path, forget: FactSet) -> None:
    """A claim of one fact borrows its chance level from the other forget facts (calibration
    peers), so the model that never saw the forget people passes almost every such claim."""
    gold = load_model(str(zoo / "gold"))
    original = load_model(str(zoo / "original"))
    context = load_facts(zoo / "facts.jsonl")
    failed = single_fact_failures(gold, forget, INPUT_ATTACKS, original=original, context=context)
    print(f"\ngold: {len(failed)} of {len(forget)} single-fact claims FAILED: {failed}")
    assert len(failed) <= 0.05 * len(forget)


def test_single_fact_claims_on_the_original_fail(zoo: Path, forget: FactSet) -> None:
    original = load_model(str(zoo / "original"))
    context = load_facts(zoo / "facts.jsonl")
    claimed = forget[::8]
    failed = single_fact_failures(original, claimed, INPUT_ATTACKS, original=None, context=context)
    assert failed == [fact.id for fact in claimed]
