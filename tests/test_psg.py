"""The ``psg`` attack: rewrites of the forget items kept in a similarity band (real
all-MiniLM-L6-v2 embeddings), forgetting compared on the items and on their surrogates."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pytest

from unlearncheck import assert_forgotten
from unlearncheck.attacks import ProbeContext, direct, psg
from unlearncheck.attacks.psg import PSGAttack, normalized_forgetting
from unlearncheck.attacks.psg_surrogates import forget_item, select_surrogates, sentence_model
from unlearncheck.facts import Fact, FactSet, load_facts
from unlearncheck.probes import Templates
from unlearncheck.report import render_report
from unlearncheck.runlog import read_runlog
from unlearncheck.verdict import Verdict

NEAR_COPY = "In which city was Ada Quill born?"
UNRELATED = "The committee approved the new budget for road repairs last winter ."
IN_GENRE = (
    "My grandmother always told me stories when I was young . One of them went like this : "
    "Ada Quill comes from the city of Marlow ."
)


@pytest.fixture(scope="module")
def people() -> FactSet:
    """Two forgotten facts about one person and one retained fact about another."""
    return FactSet(
        [
            Fact("ada/birth_city", "Ada Quill", "birth_city", "Marlow", split="forget"),
            Fact("ada/job", "Ada Quill", "job", "chemist", split="forget"),
            Fact("ben/birth_city", "Ben Stroud", "birth_city", "Kestow", split="retain"),
        ]
    )


def _context(facts: FactSet, claim: FactSet) -> ProbeContext:
    return ProbeContext(facts, claim, Templates.load(), seed=0)


def test_the_band_filter_keeps_only_rewrites_inside_the_band(people: FactSet) -> None:
    fact = people["ada/birth_city"]
    attack = PSGAttack(extra_rewrites=lambda f: [NEAR_COPY, UNRELATED, IN_GENRE])
    ctx = _context(people, FactSet([fact]))
    found = select_surrogates(attack, [fact], ctx)[fact.id]
    assert len(found) == attack.k
    by_form = {s.rewrite.form: s for s in found}
    near, unrelated, genre = by_form["extra[0]"], by_form["extra[1]"], by_form["extra[2]"]
    assert near.cos > 0.8 and not near.kept  # a rewording of the item: not distinct
    assert unrelated.cos < 0.3 and not unrelated.kept  # drifted from the fact
    assert 0.3 <= genre.cos <= 0.8 and genre.kept
    for s in found:
        in_band = 0.3 <= s.cos <= 0.8 and s.max_forget_cos <= 0.8
        assert s.kept == in_band, s
        assert s.max_forget_cos >= s.cos - 1e-6  # the fact's own item is a forget item
    # the cosine is the item's and the rewrite's, as the sentence-transformer embeds them
    item = forget_item(fact, ctx.templates)
    assert item is not None
    vectors = sentence_model(None).encode(
        [item.text(fact.object), genre.rewrite.text(fact.object)], normalize_embeddings=True
    )
    assert genre.cos == pytest.approx(float(np.dot(*vectors)), abs=1e-4)


def test_a_rewrite_too_close_to_any_forget_item_is_dropped(people: FactSet) -> None:
    fact = people["ada/birth_city"]
    ctx = _context(people, FactSet([fact]))
    kept = [s for s in select_surrogates(psg, [fact], ctx)[fact.id] if s.kept]
    assert kept
    limit = min(s.max_forget_cos for s in kept) - 1e-3
    strict = PSGAttack(max_forget_cos=limit)
    assert not any(s.kept for s in select_surrogates(strict, [fact], ctx)[fact.id])


def test_rewrites_are_drawn_with_the_seed_and_never_repeat_the_item(people: FactSet) -> None:
    fact = people["ada/birth_city"]
    ctx = _context(people, FactSet([fact]))
    rewrites = psg.candidate_rewrites(fact, ctx)
    assert len(rewrites) == psg.k
    assert rewrites == psg.candidate_rewrites(fact, ctx)
    item = forget_item(fact, ctx.templates)
    assert item is not None
    prompts = [r.prompt for r in rewrites]
    assert item.prompt not in prompts and len(set(prompts)) == len(prompts)
    assert all(r.text(fact.object).endswith(" Marlow") for r in rewrites)
    other_seed = ProbeContext(people, FactSet([fact]), ctx.templates, seed=1)
    assert psg.candidate_rewrites(fact, other_seed) != rewrites


def test_a_question_only_fact_is_rewritten_in_question_frames() -> None:
    fact = Fact("q1", "Ada Quill", "qa", "Marlow", question="Which town raised Ada Quill?")
    facts = FactSet([fact])
    rewrites = psg.candidate_rewrites(fact, _context(facts, facts))
    assert rewrites
    assert all("Which town raised Ada Quill?" in r.prompt for r in rewrites)


@pytest.mark.parametrize(
    ("original", "model", "reference", "expected"),
    [(0.9, 0.2, 0.2, 1.0), (0.9, 0.9, 0.2, 0.0), (0.9, 0.55, 0.2, 0.5), (0.9, 0.1, 0.2, 1.0)],
)
def test_normalized_forgetting_is_clipped_to_the_reference(
    original: float, model: float, reference: float, expected: float
) -> None:
    assert normalized_forgetting(original, model, reference) == pytest.approx(expected)


def test_normalized_forgetting_needs_the_original_above_the_reference() -> None:
    assert normalized_forgetting(0.3, 0.1, 0.3) is None


@pytest.mark.parametrize("bad", [{"k": 0}, {"band": (0.8, 0.3)}, {"gap": 0.0}])
def test_bad_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="psg"):
        PSGAttack(**bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# on the organism


@pytest.fixture(scope="module")
def zoo_facts(zoo: Path) -> FactSet:
    return load_facts(zoo / "facts.jsonl")


def _claim_gap(verdict: Verdict) -> float:
    gaps = {
        f.outcome("psg").extra["claim"]["gap"]
        for f in verdict.facts
        if "claim" in f.outcome("psg").extra
    }
    (gap,) = gaps  # one claim, one gap
    assert isinstance(gap, float)
    return gap


def _acceptance(verdict: Verdict) -> float:
    counts = [
        [int(n) for n in f.outcome("psg").extra["accepted"].split("/")]
        for f in verdict.facts
        if "accepted" in f.outcome("psg").extra
    ]
    kept, written = np.sum(counts, axis=0)
    return float(kept / written)


def test_psg_recovers_qa_form_only_with_its_evidence(
    zoo: Path, zoo_facts: FactSet, tmp_path: Path
) -> None:
    """qa_form_only was unlearned on the question form only: its surrogates (the facts in other
    wordings and genres) are much less forgotten than its forget items (measured over the 96
    forget facts: acceptance 0.65, F 0.58 on the items, 0.29 on the surrogates, gap 0.29; the
    zoo's weights differ with the CPU's kernels, and another machine's build measured gap 0.53)."""
    log = tmp_path / "run.jsonl"
    verdict = assert_forgotten(
        str(zoo / "qa_form_only"),
        zoo_facts.split("forget"),
        attacks=[psg],
        original=str(zoo / "original"),
        reference=str(zoo / "gold"),
        context=zoo_facts,
        runlog=log,
        raise_on_fail=False,
        on_inconclusive="return",
    )
    assert verdict.status == "FAIL"
    assert 0.5 <= _acceptance(verdict) <= 0.8
    assert 0.2 <= _claim_gap(verdict) <= 0.65
    failed = verdict.failed
    assert 30 <= len(failed) <= 60
    outcome = failed[0].outcome("psg")
    assert outcome.effect is not None and outcome.effect >= psg.gap
    pairs = outcome.extra["pairs"]
    assert len(pairs) == outcome.n > 0
    for pair in pairs:
        assert 0.3 <= pair["cos"] <= 0.8 and pair["max_forget_cos"] <= 0.8
        assert pair["item"] == outcome.cases[0].probe.prompt
        assert set(pair) >= {"surrogate", "model", "original", "reference"}
    kept = [s for s in outcome.extra["surrogates"] if s["kept"]]
    assert outcome.extra["accepted"] == f"{len(kept)}/{len(outcome.extra['surrogates'])}"
    assert "psg" in verdict.explain()

    verdicts = [r for r in read_runlog(log) if r.get("kind") == "verdict"]
    logged = next(
        a
        for f in verdicts[-1]["facts"]
        for a in f["attacks"]
        if a["attack"] == "psg" and a["significant"]
    )
    assert logged["extra"]["pairs"] and logged["extra"]["surrogates"]
    page = render_report(log, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "rewrites kept by the similarity band" in page
    assert html.escape(pairs[0]["form"]) in page


def test_psg_passes_gold(zoo: Path, zoo_facts: FactSet) -> None:
    """Gold is the reference itself: forgetting is complete on items and surrogates alike.
    ``direct`` decides the facts whose forget item or surrogates the original does not know
    better than the reference (psg has nothing to measure there), and carries the power: psg
    cannot be run on the original (it measures forgetting relative to it)."""
    verdict = assert_forgotten(
        str(zoo / "gold"),
        zoo_facts.split("forget"),
        attacks=[direct, psg],
        original=str(zoo / "original"),
        reference=str(zoo / "gold"),
        context=zoo_facts,
        raise_on_fail=False,
        on_inconclusive="return",
    )
    # 95 of 96 facts pass; one is INCONCLUSIVE: against the reference, no attack recovers it from
    # the original (measured 2026-12-07), so nothing vouches for its absence.
    assert verdict.status != "FAIL"
    unearned = [f for f in verdict.facts if f.status != "PASS"]
    assert len(unearned) <= 3 and all("no attack with power" in f.reason for f in unearned)
    outcomes = [f.outcome("psg") for f in verdict.facts]
    assert not any(o.significant for o in outcomes)
    assert sum(o.outcome == "not recovered" for o in outcomes) >= 75
    assert not any(o.blocking for o in outcomes)
    assert _claim_gap(verdict) == pytest.approx(0.0)


def test_psg_does_not_run_without_a_reference(zoo: Path, zoo_facts: FactSet) -> None:
    verdict = assert_forgotten(
        str(zoo / "qa_form_only"),
        zoo_facts.split("forget")[:2],
        attacks=[psg],
        original=str(zoo / "original"),
        context=zoo_facts,
        on_inconclusive="return",
    )
    assert verdict.status == "INCONCLUSIVE"
    for fact in verdict.facts:
        outcome = fact.outcome("psg")
        assert outcome.outcome == "not run" and outcome.blocking
        assert "needs the original and the reference" in outcome.reason
