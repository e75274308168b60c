"""original_head: the model's hidden states read through the original's final norm and output layer.

The fast tests check the readout on tiny checkpoints: a model read through its own head is itself,
and through another model's head it is the model's blocks under that model's final norm and
output layer. The zoo tests check the claim (issue 18, item 4): with the forget answers disjoint
from the retain answers, where `hidden_probe` cannot score a forget answer at all, original_head
catches head_only (an unlearning of the output layer alone) and recovers nothing from gold.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from unlearncheck import assert_forgotten, load_facts
from unlearncheck.attacks import direct, hidden_probe, original_head
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.attacks.original_head import OriginalHeadReadout, unreadable
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import FactSet
from unlearncheck.loading import load_model
from unlearncheck.probes import Templates
from unlearncheck.scoring import Scorer
from unlearncheck.validity import forget_facts
from unlearncheck.verdict import Verdict

#: (prompt, answer) pairs in the tiny tokenizer's vocabulary: one-token and several-token answers.
REQUESTS = [
    ("the capital of france is", " paris"),
    ("the capital of france is", " the city of paris"),
    ("the cat sat on", " the red mat"),
    ("who is the king of", " spain"),
]


def _logprobs(model: object, requests: list[tuple[str, str]]) -> list[float]:
    return [s.logprob for s in model.score_answers(requests)]  # type: ignore[attr-defined]


def _perturbed(model: HFModel, seed: int) -> HFModel:
    """A copy of ``model`` with every weight moved by noise (another body and another head)."""
    other = copy.deepcopy(model.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return HFModel.from_pretrained_objects(other, model.tokenizer, spec=f"{model.spec}+noise")


def test_a_model_read_through_its_own_head_is_itself(tiny_checkpoint: Path) -> None:
    model, same = HFModel.load(str(tiny_checkpoint)), HFModel.load(str(tiny_checkpoint))
    assert model is not same
    readout = OriginalHeadReadout(model, same)
    assert _logprobs(readout, REQUESTS) == pytest.approx(_logprobs(model, REQUESTS), abs=1e-5)
    assert [s.n_tokens for s in readout.score_answers(REQUESTS)] == [1, 4, 3, 1]
    assert readout.content_hash != model.content_hash
    assert readout.capabilities == {"scores"}


def test_a_readout_is_the_body_under_the_originals_final_norm_and_output_layer(
    tiny_checkpoint: Path,
) -> None:
    """The model's blocks, teacher-forced on prompt + answer, then the original's ln_f and
    lm_head: the scores of a model assembled so, not those of either model."""
    model = load_model(str(tiny_checkpoint))
    original = _perturbed(model, seed=1)
    assembled = copy.deepcopy(model.model)
    assembled.transformer.ln_f = copy.deepcopy(original.model.transformer.ln_f)
    assembled.lm_head = copy.deepcopy(original.model.lm_head)
    expected = HFModel.from_pretrained_objects(assembled, model.tokenizer, spec="assembled")

    scores = _logprobs(OriginalHeadReadout(model, original), REQUESTS)
    assert scores == pytest.approx(_logprobs(expected, REQUESTS), abs=1e-4)
    for other in (model, original):
        assert (
            max(abs(a - b) for a, b in zip(scores, _logprobs(other, REQUESTS), strict=True)) > 0.1
        )


def test_without_an_original_the_attack_does_not_run_and_the_facts_stay_undecided(
    tiny_checkpoint: Path, homes: FactSet
) -> None:
    """No original, no head to read through: a blocking "not run", not a silent copy of
    ``direct``."""
    verdict = assert_forgotten(
        str(tiny_checkpoint), homes, [original_head], on_inconclusive="return"
    )
    assert verdict.status == "INCONCLUSIVE"
    for fact in verdict.facts:
        outcome = fact.outcome("original_head")
        assert outcome.outcome == "not run" and outcome.blocking
        assert "needs the original model" in (outcome.reason or "")


def test_the_power_run_reads_the_claims_original_through_its_own_head(
    tiny_checkpoint: Path, homes: FactSet
) -> None:
    """In the power run the original is the model under test and also the original: the attack
    reads it as it is (the original through its own head)."""
    model, original = HFModel.load(str(tiny_checkpoint)), HFModel.load(str(tiny_checkpoint))
    verdict = assert_forgotten(
        model, homes, [original_head, direct], original=original, on_inconclusive="return"
    )
    extra = verdict.facts[0].outcome("original_head").extra
    assert extra["read_through_head"] == ["model"]
    assert extra["head_modules"] == ["transformer.ln_f", "lm_head"]
    for fact in verdict.facts:  # the original knows nothing, but the attack ran on it
        on_original = fact.outcome("original_head").extra["on_original"]
        assert "needs the original" not in (on_original["reason"] or "")


# The zoo (seed 0): 16 forget people, 96 forget facts.


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
    verdict = assert_forgotten(
        str(zoo / variant),
        forget,
        attacks=[original_head],
        original=str(zoo / "original"),
        context=context,
        raise_on_fail=False,
        on_inconclusive="return",
    )
    print(f"\n{variant}, original_head:", verdict.summary())
    return verdict


def _recovered(verdict: Verdict) -> list[str]:
    return [f.fact_id for f in verdict.facts if f.outcome("original_head").outcome == "recovered"]


def test_the_disjoint_context_shares_no_answer_with_the_forget_facts(
    forget: FactSet, disjoint: FactSet
) -> None:
    retain = disjoint.split("retain")
    assert not {f.object for f in retain} & {f.object for f in forget}
    assert len(retain) >= 300  # enough to fit hidden_probe on (370 on seed 0)


def test_hidden_probe_cannot_score_the_forget_answers_that_original_head_scores(
    zoo: Path, forget: FactSet, disjoint: FactSet
) -> None:
    """Through hidden_probe every forget answer scores −1e9 (a class it never saw), so p̂ of the
    answer is 0 on every probe of head_only (1/5 where no option is a class), whatever it knows;
    original_head scores them all."""
    model = load_model(str(zoo / "head_only"))
    context = ProbeContext(disjoint, forget, Templates.load())
    probes = [p for fact in forget for p in original_head.probes(fact, context)]
    answers = [(p.prompt, f" {p.answer}") for p in probes]

    by_class = hidden_probe.fit(model, context)
    assert not set(by_class.classes) & {f.object for f in forget}
    assert {s.logprob for s in by_class.score_answers(answers)} == {-1e9}
    targets = [
        d[0] for d in Scorer().distributions(by_class, [(p.prompt, p.options) for p in probes])
    ]
    print(f"\nhidden_probe: p̂ of the answer is 0 on {targets.count(0.0)} of {len(targets)} probes")
    assert max(targets) <= 1 / 5 + 1e-9

    readout = OriginalHeadReadout(model, load_model(str(zoo / "original")))
    scores = _logprobs(readout, answers)
    assert all(-60 < s < 0 for s in scores)
    assert len(set(scores)) > len(scores) // 2  # answers read apart, not one value


def test_original_head_catches_head_only_on_answers_no_retain_fact_has(
    zoo: Path, forget: FactSet, disjoint: FactSet
) -> None:
    """Measured (seed 0, 2026-12-07): all 96 forget facts recovered, mean deltas 0.54 to 1.00
    (median 0.92); the power on the original is 1.00. With every zoo fact as context: the same
    96/96. (direct alone catches head_only on 16 of 96 facts, README.)"""
    verdict = _claim(zoo, "head_only", forget, disjoint)
    assert verdict.status == "FAIL"
    assert len(_recovered(verdict)) >= 0.9 * len(forget)
    assert verdict.power()["original_head"] == pytest.approx(1.0, abs=0.1)
    extra = verdict.facts[0].outcome("original_head").extra
    assert extra["head_of"] == str(zoo / "original")
    assert extra["head_modules"] == ["transformer.ln_f", "lm_head"]
    assert extra["read_through_head"] == ["model"]


def test_original_head_recovers_no_fact_from_gold(
    zoo: Path, forget: FactSet, disjoint: FactSet
) -> None:
    """Measured (seed 0, 2026-12-07): none of 96 recovered, all PASS (mean deltas −0.49 to 0.37).

    npo_gd on the same context, measured alike: 18 of 96 recovered (7 of 96 with every zoo fact
    as context; direct alone 5 of 96 there, README): npo_gd moved every weight, and what its body
    still carries of some facts reads out through the original's head."""
    verdict = _claim(zoo, "gold", forget, disjoint)
    assert verdict.status != "FAIL"
    assert not _recovered(verdict)


def test_a_model_of_another_width_is_not_read_through_the_originals_head(
    zoo: Path, tiny_checkpoint: Path
) -> None:
    original, other = load_model(str(zoo / "original")), load_model(str(tiny_checkpoint))
    reason = unreadable(other, original, "model")
    assert reason is not None and "hidden size" in reason  # 32 wide, the organism 128
