"""The benchmark scorecard on the zoo: the metrics rank variants the way their ground truth does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearncheck.cli import main
from unlearncheck.facts import FactSet, load_facts
from unlearncheck.loading import load_model
from unlearncheck.scorecard import Scorecard, scorecards


@pytest.fixture(scope="module")
def facts(zoo: Path) -> FactSet:
    """All forget facts and every 6th retain fact (utility needs no more)."""
    every = load_facts(zoo / "facts.jsonl")
    retain = every.split("retain")
    return FactSet([*every.split("forget"), *retain[::6]])


@pytest.fixture(scope="module")
def cards(zoo: Path, facts: FactSet) -> dict[str, Scorecard]:
    variants = ["gold", "original", "graddiff", "qa_form_only"]
    models = [load_model(str(zoo / v)) for v in variants]
    result = scorecards(models, load_model(str(zoo / "gold")), facts)
    return dict(zip(variants, result, strict=True))


def test_gold_against_itself_is_perfect(cards: dict[str, Scorecard]) -> None:
    gold = cards["gold"]
    assert gold.forget_quality == pytest.approx(1.0)
    assert gold.privleak_loss == pytest.approx(0.0)
    assert gold.privleak_min_k_plus_plus == pytest.approx(0.0)
    assert gold.fade == pytest.approx(0.0)


def test_the_original_is_told_apart_from_gold(cards: dict[str, Scorecard]) -> None:
    original, gold = cards["original"], cards["gold"]
    assert original.forget_quality < 0.05
    assert original.privleak_loss < -20
    assert original.truth_ratio < gold.truth_ratio
    assert original.forget_rouge > 0.9 > 0.2 > gold.forget_rouge
    assert original.fade > 0.5


def test_metrics_rank_hidden_knowledge_and_lost_utility(cards: dict[str, Scorecard]) -> None:
    """qa_form_only still holds the forget set (statements answer); graddiff lost utility."""
    assert cards["qa_form_only"].privleak_loss < cards["graddiff"].privleak_loss
    assert cards["qa_form_only"].forget_quality < cards["graddiff"].forget_quality
    assert cards["graddiff"].model_utility < cards["gold"].model_utility - 0.1


def test_metrics_command_needs_facts_for_models_outside_the_organism(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["metrics", "--model", str(tmp_path), "--reference", "organism:gold"])
    assert code == 2
    assert "--facts is needed" in capsys.readouterr().err


def test_metrics_command_prints_a_table_and_writes_json(
    zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    every = load_facts(zoo / "facts.jsonl")
    small = FactSet([*every.split("forget")[:24], *every.split("retain")[:24]])
    small.to_jsonl(tmp_path / "facts.jsonl")
    out = tmp_path / "metrics.json"
    args = ["metrics", "--model", str(zoo / "original"), "--reference", str(zoo / "gold")]
    assert main([*args, "--facts", str(tmp_path / "facts.jsonl"), "--json", str(out)]) == 0
    assert "forget quality" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert row["reference"] == str(zoo / "gold") and row["forget_quality"] < 0.05
