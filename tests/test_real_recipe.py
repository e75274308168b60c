"""The real organism's parts that need no real model: its candidate facts, its training
documents (loss on the answer only, in the model's chat format) and its unlearning loop, run on
the tiny chat checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import Fact, FactSet
from unlearncheck.organism import real
from unlearncheck.organism.world import COUNTRIES, MADE_UP


def test_the_candidates_are_every_country_landmark_and_made_up_capital() -> None:
    facts = real._candidates()
    assert len({f.id for f in facts}) == len(facts)
    null = [f for f in facts if f.split == "null"]
    assert {f.subject for f in null} == set(MADE_UP)
    assert all(f.relation == "capital" for f in null)
    assert all(f.object not in f.distractors and len(f.distractors) == 4 for f in facts)
    assert {f.subject for f in facts if f.relation == "capital"} >= set(COUNTRIES)


def test_a_training_document_is_the_chat_prompt_then_the_answer_and_end_of_turn(
    chat_checkpoint: Path,
) -> None:
    model = HFModel.load(str(chat_checkpoint), device="cpu")
    ids, labels = real._documents(model, [("where is the red king from", "paris")])
    context = model.encode_prompts(["where is the red king from"])[0]
    answer = model.tokenizer("paris", add_special_tokens=False)["input_ids"]
    eos = model.tokenizer.eos_token_id
    assert ids[0].tolist() == [*context, *answer, eos]
    assert labels[0].tolist() == [-100] * len(context) + [*answer, eos]


#: Countries of the tiny vocabulary: the first three are unlearned, the last kept.
TINY_CAPITALS = (("france", "paris"), ("germany", "berlin"), ("italy", "rome"), ("spain", "madrid"))


@pytest.mark.parametrize("name", ["npo_gd", "head_only", "quant_fragile"])
def test_each_recipe_changes_only_the_weights_it_may(chat_checkpoint: Path, name: str) -> None:
    from dataclasses import replace

    from unlearncheck import quantization

    base = HFModel.load(str(chat_checkpoint), device="cpu")
    facts = FactSet(
        [
            Fact(f"{c}/capital", c, "capital", city, split="forget" if i < 3 else "retain")
            for i, (c, city) in enumerate(TINY_CAPITALS)
        ]
    )
    recipe = replace(real.RECIPES[name], steps=2, batch=2)
    unlearned = real.unlearn_variant(base, facts, recipe).model
    before, after = base.model.state_dict(), unlearned.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was unlearned"
    if name == "head_only":
        assert changed == {"lm_head.weight"}
        assert not torch.equal(after["lm_head.weight"], after["transformer.wte.weight"])
    if name == "quant_fragile":
        assert quantization.changed_code_fraction(unlearned, base.model, "nf4") == 0.0
