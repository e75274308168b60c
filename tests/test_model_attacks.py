"""Model and readout attacks on the zoo: each catches the variant it exists for and passes gold."""

from __future__ import annotations

import copy
import weakref
from pathlib import Path

import pytest
import torch

from unlearncheck import assert_forgotten, load_facts
from unlearncheck.attacks import (
    ModelAttack,
    hidden_probe,
    original_head,
    paraphrase,
    quant4,
    quant4_fp4,
    quant8,
    relearn,
    sampling,
)
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.attacks.model import MAX_HELD_VARIANTS, make_relearn, relearn_lr
from unlearncheck.attacks.sampling_readout import contains_answer
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import FactSet
from unlearncheck.loading import load_model
from unlearncheck.probes import Templates
from unlearncheck.validity import Matrix, forget_facts, format_matrix, validity_matrix

MODEL_AND_READOUT = (quant4, quant4_fp4, quant8, relearn, sampling, hidden_probe, original_head)


@pytest.fixture(scope="module")
def forget(zoo: Path) -> FactSet:
    """Every forget fact of the zoo (16 people, 96 facts)."""
    return forget_facts(zoo)


@pytest.fixture(scope="module")
def gold_row(zoo: Path, forget: FactSet) -> Matrix:
    result = validity_matrix(zoo, ["gold"], MODEL_AND_READOUT, forget)
    print("\n" + format_matrix(result))
    return result


@pytest.mark.parametrize("attack", [a.name for a in MODEL_AND_READOUT])
def test_gold_is_failed_on_at_most_5_percent(gold_row: Matrix, attack: str) -> None:
    cell = gold_row["gold"][attack]
    assert cell.applicable >= 80
    assert cell.rate <= 0.05, sorted(cell.failed_ids)


#: The probes of the quantization attacks, asked of the model as it is.
FULL_PRECISION = ModelAttack("full_precision", lambda model, context: model, "identity")


@pytest.fixture(scope="module")
def fragile_row(zoo: Path, forget: FactSet) -> Matrix:
    row = validity_matrix(zoo, ["quant_fragile"], [FULL_PRECISION, quant4, quant8], forget)
    print("\n" + format_matrix(row))
    return row


def test_quant_fragile_is_caught_by_quant4(fragile_row: Matrix) -> None:
    assert fragile_row["quant_fragile"]["quant4"].rate >= 0.8


def test_quant_fragile_is_not_caught_by_quant8_beyond_full_precision(fragile_row: Matrix) -> None:
    cells = fragile_row["quant_fragile"]
    assert cells["quant8"].rate <= cells["full_precision"].rate + 0.05


def test_quant4_evidence_counts_changed_codes(zoo: Path, forget: FactSet) -> None:
    verdict = assert_forgotten(
        str(zoo / "quant_fragile"),
        forget[:6],
        attacks=[quant4.then(paraphrase)],
        original=str(zoo / "original"),
        raise_on_fail=False,
        on_inconclusive="return",
    )
    outcome = verdict.facts[0].outcome("quant4>paraphrase")
    assert outcome.extra["changed_4bit_codes"] == 0.0
    assert outcome.evidence[0].probe.lineage[0] == "model:quant4:nf4"


@pytest.mark.parametrize("variant", ["graddiff", "npo_gd"])
def test_relearn_on_the_attacker_slice_brings_back_held_out_facts(
    zoo: Path, forget: FactSet, variant: str
) -> None:
    verdict = assert_forgotten(
        str(zoo / variant),
        forget,
        attacks=[relearn],
        original=str(zoo / "original"),
        reference=str(zoo / "gold"),
        context=load_facts(zoo / "facts.jsonl"),
        raise_on_fail=False,
        on_inconclusive="return",
    )
    assert all(f.split == "forget" for f in forget)  # held out: not in the relearn slice
    assert len(verdict.failed) >= 0.4 * len(forget)


def test_relearn_teaches_gold_nothing_about_held_out_facts(zoo: Path, forget: FactSet) -> None:
    verdict = assert_forgotten(
        str(zoo / "gold"),
        forget,
        attacks=[relearn],
        original=str(zoo / "original"),
        raise_on_fail=False,
        on_inconclusive="return",
    )
    gains = [f.outcome("relearn").extra["model_gain"] for f in verdict.facts]
    assert sum(gains) / len(gains) <= 0.10
    # The sanity record: the fine-tune left the relearned models working on the retain set
    # (measured 2026-12-07: original 1.00, relearned original 0.82, relearned gold 0.63).
    extra = verdict.facts[0].outcome("relearn").extra
    assert extra["original_retain_accuracy"] >= 0.9
    assert extra["relearned_retain_accuracy"] >= 0.5
    assert extra["on_original"]["relearned_retain_accuracy"] >= 0.7
    assert all(f.outcome("relearn").power for f in verdict.facts if f.status == "PASS")


def test_a_broken_fine_tune_shows_in_the_sanity_record_and_earns_no_pass(
    zoo: Path, forget: FactSet
) -> None:
    """A learning rate that wrecks the model: nothing comes back, but the relearned original's
    retain accuracy says why, and the attack has no power, so no fact passes on it."""
    broken = make_relearn(lr=1.0, steps=10)
    verdict = assert_forgotten(
        str(zoo / "gold"),
        forget[:12],
        attacks=[broken],
        original=str(zoo / "original"),
        context=load_facts(zoo / "facts.jsonl"),
        raise_on_fail=False,
        on_inconclusive="return",
    )
    outcome = verdict.facts[0].outcome("relearn")
    assert outcome.extra["on_original"]["relearned_retain_accuracy"] <= 0.4  # measured 0.23
    assert verdict.status == "INCONCLUSIVE" and not any(f.status == "PASS" for f in verdict.facts)
    assert verdict.power()["relearn"] == 0


def test_the_relearning_rate_scales_with_model_size() -> None:
    assert relearn_lr(585_728) == 1e-3  # the organism
    assert relearn_lr(135_000_000) == pytest.approx(8.6e-5, rel=0.01)
    assert relearn_lr(7_000_000_000) == pytest.approx(1.2e-5, rel=0.01)
    assert relearn_lr(70_000_000_000) == 1e-5


def test_head_only_is_caught_by_hidden_probe(zoo: Path, forget: FactSet) -> None:
    row = validity_matrix(zoo, ["head_only"], [hidden_probe], forget)
    print("\n" + format_matrix(row))
    assert row["head_only"]["hidden_probe"].rate >= 0.5


#: Logit penalty (nats) on the first token of every forget answer in the suppressed variant.
SUPPRESSION = 4.0


def _answer_suppressed(original: HFModel, forget: FactSet) -> HFModel:
    """Unlearning by output suppression: the original with a fixed logit penalty on the forget
    answers. Greedy decoding stops stating many of them; their probability stays non-trivial."""
    model = copy.deepcopy(original.model)
    bias = torch.zeros(model.lm_head.out_features)
    for answer in {f.object for f in forget}:
        bias[original.tokenizer(f" {answer}", add_special_tokens=False)["input_ids"][0]] -= (
            SUPPRESSION
        )
    model.lm_head.bias = torch.nn.Parameter(bias)
    return HFModel(model, original.tokenizer, spec="answer-suppressed", device=original.device)


def test_sampling_flags_leaks_that_greedy_decoding_misses(zoo: Path, forget: FactSet) -> None:
    """Sampling flags facts whose greedy continuations, on the same prompts, never state the
    answer (the answer keeps real probability without being the top choice)."""
    original = load_model(str(zoo / "original"))
    model = _answer_suppressed(original, forget)
    verdict = assert_forgotten(
        model,
        forget,
        attacks=[sampling],
        original=original,
        raise_on_fail=False,
        on_inconclusive="return",
    )
    context = ProbeContext(forget, forget, Templates.load())
    found_by_greedy = set()
    for fact in forget:
        prompts = [p.prompt for p in sampling.probes(fact, context)]
        greedy = model.generate(prompts, max_new_tokens=sampling.max_new_tokens)
        if any(contains_answer(out[0], fact.object) for out in greedy):
            found_by_greedy.add(fact.id)
    flagged = {f.fact_id for f in verdict.failed}
    missed_by_greedy = flagged - found_by_greedy
    print(f"\nsampling flags {len(flagged)}; greedy misses {len(missed_by_greedy)} of them")
    assert len(missed_by_greedy) >= 3
    for fact_id in missed_by_greedy:
        extra = verdict.fact(fact_id).outcome("sampling").extra
        assert 0 < extra["leaks"] / extra["samples"] <= extra["upper_bound"] < 1


def test_variants_are_built_once_while_held_and_freed_after(tiny_checkpoint: Path) -> None:
    """At most MAX_HELD_VARIANTS variants are held; the least recently used is freed first."""
    model = HFModel.load(str(tiny_checkpoint), device="cpu")
    context = ProbeContext(FactSet([]), FactSet([]), Templates.load())
    built: list[str] = []

    def attack(key: str) -> ModelAttack:
        def derive(m: HFModel, _: ProbeContext) -> HFModel:
            built.append(key)
            return HFModel.from_pretrained_objects(copy.deepcopy(m.model), m.tokenizer, spec=key)

        return ModelAttack(key, derive, key)

    attacks = [attack(f"v{i}") for i in range(MAX_HELD_VARIANTS + 1)]
    first = weakref.ref(attacks[0].variant(model, context))
    assert attacks[0].variant(model, context) is first()  # held: not built again
    for other in attacks[1:]:
        other.variant(model, context)
    assert first() is None  # the least recently used was freed
    attacks[0].variant(model, context)
    assert built == ["v0", *(a.key for a in attacks[1:]), "v0"]
