"""The model organism: knowledge base, determinism, nf4 projection, the zoo's ground truth."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from unlearncheck import quantization
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import load_facts
from unlearncheck.organism.evaluate import zoo_table
from unlearncheck.organism.knowledge import (
    N_FORGET,
    N_RELEARN,
    build_knowledge_base,
    documents_of,
    facts_of,
)
from unlearncheck.organism.tokenizer import build_tokenizer
from unlearncheck.organism.train import (
    TrainConfig,
    UnlearnConfig,
    encode,
    final_token_accuracy,
    length_grouped_batches,
    new_model,
    sequence_nll,
    train_lm,
    unlearn,
)
from unlearncheck.organism.zoo import UNLEARN, _balanced_groups


def test_knowledge_base_is_deterministic_and_seeded() -> None:
    assert build_knowledge_base(0) == build_knowledge_base(0)
    assert build_knowledge_base(0).people != build_knowledge_base(1).people


def test_knowledge_base_splits_and_facts() -> None:
    kb = build_knowledge_base(0)
    names = [p.name for p in kb.people]
    assert len(set(names)) == len(names) == 150
    assert len(kb.forget_people) == N_FORGET
    facts = facts_of(kb)
    assert len(facts.split("relearn")) == N_RELEARN * 6
    assert len(facts.split("forget")) == (N_FORGET - N_RELEARN) * 6
    for fact in facts:
        assert fact.object not in fact.distractors
        assert fact.statement is not None and fact.object in fact.statement
    birth = facts.filter(lambda f: f.relation == "birth_city")[0]
    (country,) = facts.next_hops(birth)
    assert country.relation == "country"


def _tiny_setup() -> tuple[torch.nn.Module, torch.Tensor, int]:
    kb = build_knowledge_base(0)
    docs = [d.text for d in documents_of(kb)][:64]
    tokenizer = build_tokenizer(docs)
    config = TrainConfig(n_embd=32, n_head=2, batch_size=16)
    model = new_model(tokenizer, config, seed=0)
    return model, encode(tokenizer, docs, config.n_positions), tokenizer.pad_token_id


def test_training_and_unlearning_are_deterministic() -> None:
    states = []
    for _ in range(2):
        model, ids, pad = _tiny_setup()
        train_lm(model, ids, pad, TrainConfig(n_embd=32, n_head=2, batch_size=16), 0, total_steps=6)
        unlearn(model, ids[:16], ids[16:], pad, UnlearnConfig("npo", lr=1e-3, steps=3), seed=1)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_length_grouped_batches_cover_every_row_once_with_little_padding() -> None:
    lengths = torch.randint(3, 50, (1000,), generator=torch.Generator().manual_seed(0))
    batches = length_grouped_batches(lengths, 32, torch.Generator().manual_seed(1))
    again = length_grouped_batches(lengths, 32, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    assert sorted(torch.cat(batches).tolist()) == list(range(1000))

    def padding(groups: list[torch.Tensor]) -> float:
        width = sum(int(lengths[g].max()) * len(g) for g in groups)
        return 1 - int(lengths.sum()) / width

    random = list(torch.randperm(1000, generator=torch.Generator().manual_seed(1)).split(32))
    assert padding(batches) < 0.1 < 0.4 < padding(random)


def test_sequence_nll_in_length_sorted_parts_equals_one_pass() -> None:
    model, ids, pad = _tiny_setup()
    with torch.no_grad():
        parts = sequence_nll(model, ids, pad)
        one_by_one = torch.cat([sequence_nll(model, ids[i : i + 1], pad) for i in range(len(ids))])
    torch.testing.assert_close(parts, one_by_one, rtol=1e-5, atol=1e-4)


def test_unlearning_stops_once_the_answers_are_forgotten() -> None:
    model, ids, pad = _tiny_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy = final_token_accuracy(model, ids, pad)
    config = UnlearnConfig("npo", lr=1e-2, steps=20, stop_at_accuracy=accuracy)
    unlearn(model, ids[:16], ids[16:], pad, config, seed=1, stop_ids=(ids, ids))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="stop_ids"):
        unlearn(model, ids[:16], ids[16:], pad, config, seed=1)


def test_unlearning_runs_split_into_balanced_groups() -> None:
    groups = _balanced_groups(list(UNLEARN), 2)
    assert sorted(v for g in groups for v in g) == sorted(UNLEARN)
    totals = [sum(UNLEARN[v].steps for v in g) for g in groups]
    assert max(totals) - min(totals) <= max(c.steps for c in UNLEARN.values())
    assert len(_balanced_groups(list(UNLEARN), 16)) == len(UNLEARN)


def test_nf4_projection_keeps_every_code() -> None:
    model, ids, pad = _tiny_setup()
    original = copy.deepcopy(model)
    quantized = {f"{n}.weight" for n, _ in quantization.quantized_layers(model)}
    project = quantization.nf4_cell_projector(model, original, margin=0.05)
    unlearn(
        model,
        ids[:16],
        ids[16:],
        pad,
        UnlearnConfig("graddiff", lr=1e-2, steps=5),
        seed=1,
        lr_scale=lambda name: float(name in quantized),
        project=project,
    )
    assert any(
        not torch.equal(a, b)
        for a, b in zip(model.parameters(), original.parameters(), strict=True)
    )
    assert quantization.changed_code_fraction(model, original) == 0.0
    q_model = quantization.quantize_model_(copy.deepcopy(model), "nf4")
    q_original = quantization.quantize_model_(copy.deepcopy(original), "nf4")
    for (_, a), (_, b) in zip(
        quantization.quantized_layers(q_model),
        quantization.quantized_layers(q_original),
        strict=True,
    ):
        assert torch.equal(a.weight, b.weight)


def test_zoo_checkpoints_load_as_hugging_face_models(zoo: Path) -> None:
    model = HFModel.load(str(zoo / "npo_gd"), device="cpu")
    again = HFModel.load("organism:npo_gd", device="cpu")
    assert model.content_hash == again.content_hash
    assert model.content_hash != HFModel.load("organism:original", device="cpu").content_hash
    facts = load_facts(zoo / "facts.jsonl")
    assert {f.split for f in facts} == {"forget", "relearn", "retain"}


@pytest.fixture(scope="module")
def table(zoo: Path) -> dict[str, dict[str, float]]:
    return zoo_table(zoo)


def test_original_knows_everything(table: dict[str, dict[str, float]]) -> None:
    assert table["original"]["forget_qa"] >= 0.95
    assert table["original"]["retain_qa"] >= 0.95
    assert table["original"]["forget_twohop"] >= 0.9


def test_gold_is_at_chance_on_the_forget_set(table: dict[str, dict[str, float]]) -> None:
    assert table["gold"]["forget_qa"] <= 0.10
    assert table["gold"]["retain_qa"] >= 0.95


@pytest.mark.parametrize(
    "variant", ["graddiff", "npo_gd", "qa_form_only", "quant_fragile", "multihop_shallow"]
)
def test_unlearned_variants_fail_direct_questions(
    table: dict[str, dict[str, float]], variant: str
) -> None:
    assert table[variant]["forget_qa"] <= 0.20


def test_each_variant_hides_what_it_should(table: dict[str, dict[str, float]]) -> None:
    gold = table["gold"]
    qa_only = table["qa_form_only"]
    assert qa_only["forget_heldout_paraphrase"] >= gold["forget_heldout_paraphrase"] + 0.15
    fragile = table["quant_fragile"]
    assert fragile["nf4_forget_qa"] >= 0.9
    assert fragile["nf4_codes_changed"] == 0.0
    assert fragile["int8_forget_qa"] <= fragile["forget_qa"] + 0.05


def test_multihop_shallow_keeps_two_hop_answers(table: dict[str, dict[str, float]]) -> None:
    shallow, gold = table["multihop_shallow"], table["gold"]
    assert shallow["forget_qa"] <= 0.20
    assert shallow["forget_twohop"] >= gold["forget_twohop"] + 0.5
