"""The hidden_truth attack: an answer-agnostic true/false probe on hidden states.

`hidden_probe` fits a softmax over the retain facts' answer values, so a forget answer that no
retain fact has gets no score. `hidden_truth` fits true vs. false statements (prompt + option) and
scores every option. On seed 0's zoo it does not catch head_only: the organism's hidden state at
the option's token (or at a final " .") carries no truth signal that a linear probe finds, beyond
which answer values the fitting facts have (measured 2026-12-07, 2 CPU threads):

- forget answers disjoint from the retain answers (370 retain facts left): the original's probe
  ranks the answer first on 36% of held-out retain probes (chance 20%, AUC 0.65), no more than a
  probe of the option's embedding alone (41%); on the forget probes it is below chance, as their
  answers are only ever distractors in fitting. Through it the original answers none of the 96
  forget facts (|mean δ| ≤ 0.03, tolerance 0.2), so every fact of head_only, gold and npo_gd is
  INCONCLUSIVE (hidden_truth not run);
- every zoo fact as context: held-out AUC 0.52, answer first 21%: chance.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from unlearncheck import assert_forgotten, load_facts
from unlearncheck.attacks import hidden_probe, hidden_truth
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.facts import FactSet
from unlearncheck.loading import load_model
from unlearncheck.probes import Templates
from unlearncheck.scoring import Scorer
from unlearncheck.validity import forget_facts
from unlearncheck.verdict import Verdict

truth_module = sys.modules["unlearncheck.attacks.hidden_truth"]


@pytest.fixture(scope="module")
def forget(zoo: Path) -> FactSet:
    """Every forget fact of the zoo (16 people, 96 facts)."""
    return forget_facts(zoo)


@pytest.fixture(scope="module")
def disjoint(zoo: Path, forget: FactSet) -> FactSet:
    """The zoo's facts less the retain facts whose answer is some forget fact's answer."""
    answers = {f.object for f in forget}
    return load_facts(zoo / "facts.jsonl").filter(
        lambda f: not (f.split == "retain" and f.object in answers)
    )


def _claim(zoo: Path, variant: str, forget: FactSet, context: FactSet) -> Verdict:
    return assert_forgotten(
        str(zoo / variant),
        forget,
        attacks=[hidden_truth],
        original=str(zoo / "original"),
        context=context,
        raise_on_fail=False,
        on_inconclusive="return",
    )


def test_the_disjoint_context_shares_no_answer_with_the_forget_facts(
    forget: FactSet, disjoint: FactSet
) -> None:
    retain = disjoint.split("retain")
    assert not {f.object for f in retain} & {f.object for f in forget}
    assert len(retain) >= 300  # enough to fit on (370 on seed 0)


def test_hidden_probe_cannot_score_the_forget_answers_that_hidden_truth_scores(
    zoo: Path, forget: FactSet, disjoint: FactSet
) -> None:
    """Through hidden_probe every forget answer scores −1e9 (a class it never saw), so p̂ of the
    answer is 0 on every probe of head_only (1/5 where no option is a class), whatever it knows;
    hidden_truth scores them all."""
    model = load_model(str(zoo / "head_only"))
    context = ProbeContext(disjoint, forget, Templates.load())
    probes = [p for fact in forget for p in hidden_truth.probes(fact, context)]
    answers = [(p.prompt, f" {p.answer}") for p in probes]

    by_class = hidden_probe.fit(model, context)
    assert not set(by_class.classes) & {f.object for f in forget}
    assert {s.logprob for s in by_class.score_answers(answers)} == {-1e9}
    targets = [
        d[0] for d in Scorer().distributions(by_class, [(p.prompt, p.options) for p in probes])
    ]
    print(f"\nhidden_probe: p̂ of the answer is 0 on {targets.count(0.0)} of {len(targets)} probes")
    assert max(targets) <= 1 / 5 + 1e-9

    by_truth = hidden_truth.fit(model, context)
    scores = [s.logprob for s in by_truth.score_answers(answers)]
    assert all(-30 < s < 0 for s in scores)
    assert len(set(scores)) > len(scores) // 2  # statements read apart, not one value


@pytest.fixture(scope="module")
def head_only_verdict(zoo: Path, forget: FactSet, disjoint: FactSet) -> Verdict:
    verdict = _claim(zoo, "head_only", forget, disjoint)
    print("\nhead_only, hidden_truth:", verdict.summary())
    print(verdict.facts[0].outcome("hidden_truth").extra["model_probe"])
    return verdict


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the organism's hidden states carry no linearly readable truth of a statement: "
    "through hidden_truth the original answers none of the 96 forget facts (|mean delta| <= 0.03), "
    "so head_only is INCONCLUSIVE on all of them (measured 2026-12-07, seed 0)",
)
def test_hidden_truth_catches_head_only_on_answers_no_retain_fact_has(
    head_only_verdict: Verdict, forget: FactSet
) -> None:
    recovered = [
        f for f in head_only_verdict.facts if f.outcome("hidden_truth").outcome == "recovered"
    ]
    assert head_only_verdict.status == "FAIL"
    assert len(recovered) >= 0.5 * len(forget)


def test_each_models_probe_is_reported_with_the_outcome(head_only_verdict: Verdict) -> None:
    extra = head_only_verdict.facts[0].outcome("hidden_truth").extra
    for role in ("model", "original"):
        report = extra[f"{role}_probe"]
        assert report["heldout_auc"].keys() == report["heldout_answer_first"].keys() == {1, 2}
        assert report["layer"] in report["heldout_auc"]
        assert report["fit_statements"] == 5 * report["fit_prompts"]  # an answer, 4 distractors
    assert extra["model_probe"] == extra["original_probe"]  # head_only: the original's states


def test_gold_is_recovered_on_no_fact(zoo: Path, forget: FactSet, disjoint: FactSet) -> None:
    verdict = _claim(zoo, "gold", forget, disjoint)
    print("\ngold, hidden_truth:", verdict.summary())
    assert verdict.status != "FAIL"
    assert not [f for f in verdict.facts if f.outcome("hidden_truth").outcome == "recovered"]


def test_a_truth_readout_is_log_sigmoid_of_the_probe_on_the_statement(
    tiny_checkpoint: Path,
) -> None:
    model = load_model(str(tiny_checkpoint))
    d = model.model.config.n_embd
    weight = torch.linspace(-1, 1, d)
    readout = truth_module.TruthProbeReadout(
        model, 2, weight, 0.5, torch.zeros(d), torch.ones(d), {}
    )
    scores = readout.score_answers([("the capital of france is", " paris"), ("the cat", "sat")])
    state = model.hidden_states(["the capital of france is paris", "the cat sat"], layers=[2])
    expected = torch.nn.functional.logsigmoid(torch.from_numpy(state[:, 0]) @ weight + 0.5)
    assert [s.logprob for s in scores] == pytest.approx(expected.tolist(), abs=1e-5)
    assert all(s.n_tokens == 1 and math.isfinite(s.logprob) for s in scores)
    assert readout.content_hash != model.content_hash
