"""assert_forgotten / assert_retained on the zoo: caught where it leaks, passed where not."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from unlearncheck import (
    ForgettingAssertionError,
    assert_forgotten,
    assert_retained,
    load_facts,
    scoring,
)
from unlearncheck.attacks import direct, paraphrase
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import FactSet
from unlearncheck.loading import load_model


@pytest.fixture(scope="module")
def forget(zoo: Path) -> FactSet:
    return load_facts(zoo / "facts.jsonl").split("forget")[:18]


def test_original_fails_and_names_the_leaking_probe(zoo: Path, forget: FactSet) -> None:
    with pytest.raises(ForgettingAssertionError) as info:
        assert_forgotten(
            str(zoo / "original"),
            forget,
            attacks=[direct, paraphrase],
            original=str(zoo / "original"),
        )
    verdict = info.value.verdict
    assert len(verdict.failed) >= 0.9 * len(forget)  # the 95% bar is on the 48-fact matrix
    assert "attack direct" in str(info.value) or "attack paraphrase" in str(info.value)
    assert "prompt:" in str(info.value) and "output:" in str(info.value)


def test_gold_is_never_failed(zoo: Path, forget: FactSet, tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    verdict = assert_forgotten(
        str(zoo / "gold"),
        forget,
        attacks=[direct, paraphrase],
        original=str(zoo / "original"),
        runlog=log,
        on_inconclusive="return",
    )
    assert not verdict.failed
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["kind"] == "run" and records[0]["versions"]["torch"]
    assert {r["kind"] for r in records} >= {"run", "model", "verdict"}
    with_reference = assert_forgotten(
        str(zoo / "gold"),
        forget,
        attacks=[paraphrase],
        reference=str(zoo / "gold"),
        on_inconclusive="return",
    )
    assert not with_reference.failed


def test_qa_form_only_is_caught_by_paraphrase_not_by_direct_questions(
    zoo: Path, forget: FactSet
) -> None:
    verdict = assert_forgotten(
        str(zoo / "qa_form_only"),
        forget,
        attacks=[paraphrase],
        original=str(zoo / "original"),
        raise_on_fail=False,
        on_inconclusive="return",
    )
    caught = sum(f.outcome("paraphrase").significant for f in verdict.facts)
    assert caught >= 0.5 * len(forget)


def test_retained_passes_for_gold_and_fails_after_utility_collapse(zoo: Path) -> None:
    retain = load_facts(zoo / "facts.jsonl").split("retain")[:18]
    original = str(zoo / "original")
    assert assert_retained(str(zoo / "gold"), retain, original=original).status == "PASS"
    broken = HFModel.load(str(zoo / "original"), device="cpu")
    with torch.no_grad():
        for p in broken.model.transformer.h.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    broken = HFModel.from_pretrained_objects(broken.model, broken.tokenizer, spec="collapsed")
    with pytest.raises(ForgettingAssertionError):
        assert_retained(broken, retain, original=original)


@pytest.mark.parametrize("variant", ["original", "gold"])
def test_the_sum_readout_gives_the_same_verdicts(zoo: Path, forget: FactSet, variant: str) -> None:
    verdicts = {
        readout: assert_forgotten(
            str(zoo / variant),
            forget,
            attacks=[direct],
            original=str(zoo / "original"),
            readout=readout,
            raise_on_fail=False,
        )
        for readout in ("token_mean", "sum")
    }
    assert verdicts["sum"].config["readout"] == "sum"
    assert verdicts["sum"].status == verdicts["token_mean"].status
    assert verdicts["sum"].status == ("FAIL" if variant == "original" else "PASS")


def test_verdicts_do_not_depend_on_the_batch_size(
    zoo: Path,
    forget: FactSet,
    scores_in_memory_only: None,
    memory_for_rows: Callable[[HFModel, int], list[int]],
) -> None:
    """qa_form_only leaks some facts and hides others: every fact's status is the same whether
    probes are scored one at a time, 8 or 64 to a forward pass, or ``auto`` on a device with room
    for 40 sequences (512 halves to 32 there)."""
    model, original = (load_model(str(zoo / name)) for name in ("qa_form_only", "original"))
    statuses = {}
    try:
        for size in (1, 8, 64, "auto"):
            scoring.forget_scores()  # score everything again at this batch size
            if size == "auto":
                ran = [memory_for_rows(m, 40) for m in (model, original)]
            scoring.set_batch_size(size)  # type: ignore[arg-type]
            verdict = assert_forgotten(
                model,
                forget,
                attacks=[direct, paraphrase],
                original=original,
                raise_on_fail=False,
            )
            statuses[size] = {v.fact_id: v.status for v in verdict.facts}
    finally:
        scoring.set_batch_size(64)
    assert model.batch_limit == original.batch_limit == 32
    assert max(max(rows) for rows in ran) == 32
    assert statuses[1] == statuses[8] == statuses[64] == statuses["auto"]
    assert {"PASS", "FAIL"} <= set(statuses[1].values())
