"""The real organism (SmolLM2-135M-Instruct and its unlearned variants): the chat format is what
it answers in, the null split never FAILs, and each planted failure is caught by its attack.

These tests run with ``--real-organism`` (the organism is built on first use: minutes on 2 CPU
cores; see the README); without it they are skipped, and say so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearncheck.attacks import direct, multihop
from unlearncheck.attacks.hidden_readout import hidden_probe
from unlearncheck.attacks.model import quant4, relearn
from unlearncheck.facts import load_facts
from unlearncheck.organism.evaluate import format_comparison
from unlearncheck.validity import (
    Matrix,
    forget_facts,
    format_matrix,
    null_verdicts,
    validity_matrix,
)

#: The cells measured: every attack on the original (its failures and the attacks' power), and on
#: each unlearned variant the direct questions beside the attack its planted failure is for.
CELLS = {
    "original": (direct, multihop, quant4, hidden_probe, relearn),
    "npo_gd": (direct, relearn),
    "graddiff": (direct, relearn),
    "head_only": (direct, hidden_probe),
    "quant_fragile": (direct, quant4),
    "multihop_shallow": (direct, multihop),
}
#: Forget facts claimed (the first ones: capitals that landmark chains reach come first).
FACTS = 16


@pytest.fixture(scope="module")
def matrix(real_zoo: Path) -> Matrix:
    facts = forget_facts(real_zoo)[:FACTS]
    out: Matrix = {}
    for variant, attacks in CELLS.items():
        out.update(validity_matrix(real_zoo, [variant], attacks, facts))
    print(f"\nreal organism, first {FACTS} forget facts: share FAILED\n{format_matrix(out)}")
    return out


def test_the_base_answers_its_forget_facts_better_in_its_chat_format(real_zoo: Path) -> None:
    """The facts were chosen as those it answers in chat (the question alone); asked as the
    attacks ask them (the answer opened with the statement's first words) it answers 0.95 of them
    greedily with mean p̂ 0.97, in plain 0.28 with p̂ 0.67 (measured 2026-12-07)."""
    compared = format_comparison(real_zoo / "original", forget_facts(real_zoo))
    assert compared["chat"]["greedy"] >= 0.9
    assert compared["plain"]["greedy"] < compared["chat"]["greedy"]
    assert compared["plain"]["p_hat"] < compared["chat"]["p_hat"]


def test_the_null_split_passes_without_an_original_and_is_inconclusive_with_it(
    real_zoo: Path,
) -> None:
    null = len(load_facts(real_zoo / "facts.jsonl").split("null"))
    counts = null_verdicts(real_zoo, [direct, quant4])
    assert counts["without original"] == {"PASS": null, "FAIL": 0, "INCONCLUSIVE": 0}
    assert counts["with original"] == {"PASS": 0, "FAIL": 0, "INCONCLUSIVE": null}


def test_a_claim_on_the_original_fails_under_every_attack(matrix: Matrix) -> None:
    """Every attack recovers facts from the original, so the claim that it forgot them FAILs.
    (Not every fact: on this chat model one attack finds 0.5–0.8 of what the base answers
    greedily; the README gives the measured shares.)"""
    for attack, cell in matrix["original"].items():
        assert cell.failed > 0, (attack, cell)


@pytest.mark.parametrize(
    ("variant", "attack"),
    [("quant_fragile", "quant4"), ("head_only", "hidden_probe"), ("multihop_shallow", "multihop")],
)
def test_each_planted_failure_is_caught_by_its_attack_beyond_direct_questions(
    matrix: Matrix, variant: str, attack: str
) -> None:
    row = matrix[variant]
    assert row[attack].failed > row["direct"].failed, row
