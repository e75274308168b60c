"""Tests for the Hugging Face backend and model spec resolution."""

from __future__ import annotations

import json
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from unlearncheck.backends import hf_loading
from unlearncheck.backends.hf import HFModel
from unlearncheck.specs import ModelSpecError, resolve_spec

REQUESTS = [
    ("the capital of france is", " paris"),
    ("who", " is the king of spain"),
    ("the cat sat on the", " mat"),
    ("it", " ran"),
    ("where is the river seine and where is the river rhine", " in germany"),
]
PROMPTS = ["the cat", "where is the capital city of italy", "a", "he ran fast and she ran slow"]


@pytest.fixture(scope="module")
def model(tiny_checkpoint: Path) -> HFModel:
    return HFModel.load(str(tiny_checkpoint), device="cpu")


def test_load_defaults(model: HFModel, tiny_checkpoint: Path) -> None:
    assert model.spec == str(tiny_checkpoint)
    assert model.device == torch.device("cpu")
    assert model.model.dtype == torch.float32
    assert not model.model.training


def test_save_load_round_trip(model: HFModel, tmp_path: Path) -> None:
    model.model.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    reloaded = HFModel.load(str(tmp_path), device="cpu")
    assert reloaded.content_hash == model.content_hash
    ids = torch.tensor([[2, 4, 10, 20, 30]])
    with torch.inference_mode():
        assert torch.equal(reloaded.model(ids).logits, model.model(ids).logits)


def test_content_hash_changes_with_one_weight(model: HFModel, tiny_checkpoint: Path) -> None:
    changed = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        changed.transformer.h[1].mlp.c_fc.weight[3, 5] += 1e-3
    wrapped = HFModel.from_pretrained_objects(changed, model.tokenizer, spec="changed")
    assert len(wrapped.content_hash) == 64
    assert wrapped.content_hash != model.content_hash


def test_score_answers_batched_matches_unbatched(model: HFModel) -> None:
    batched = model.score_answers(REQUESTS)
    single = [model.score_answers([request])[0] for request in REQUESTS]
    assert [s.n_tokens for s in batched] == [1, 5, 1, 1, 2]
    for got, want in zip(batched, single, strict=True):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert got.greedy_match == want.greedy_match


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_score_answers_batch_size_invariant(model: HFModel, batch_size: int) -> None:
    reference = model.score_answers(REQUESTS, batch_size=2)
    scores = model.score_answers(REQUESTS, batch_size=batch_size)
    assert [s.logprob for s in scores] == pytest.approx([s.logprob for s in reference], abs=1e-4)


def test_score_answers_matches_manual_logprobs(model: HFModel) -> None:
    (score,) = model.score_answers([("the cat sat on the", " big mat")])
    ids = [
        model.tokenizer.bos_token_id,
        *model.tokenizer.convert_tokens_to_ids(["the", "cat", "sat", "on", "the", "big", "mat"]),
    ]
    with torch.inference_mode():
        logprobs = model.model(torch.tensor([ids])).logits[0].log_softmax(-1)
    expected = logprobs[5, ids[6]] + logprobs[6, ids[7]]
    assert score.n_tokens == 2
    assert score.logprob == pytest.approx(expected.item(), abs=1e-5)
    assert score.mean_logprob == pytest.approx(score.logprob / 2)
    greedy = bool(logprobs[5].argmax() == ids[6] and logprobs[6].argmax() == ids[7])
    assert score.greedy_match == greedy


def test_one_token_answers_share_one_pass_and_match_teacher_forcing(model: HFModel) -> None:
    prompts = ["the cat sat on the", "the dog ran"]
    requests = [(p, f" {o}") for p in prompts for o in ("mat", "red", "blue")]
    mixed = [*requests, ("the cat sat on the", " big mat")]
    scores = model.score_answers(mixed)
    for (prompt, answer), score in zip(requests, scores, strict=False):
        ids = [model.tokenizer.bos_token_id, *model.tokenizer(prompt)["input_ids"]]
        target = model.tokenizer.convert_tokens_to_ids(answer.strip())
        with torch.inference_mode():
            logprobs = model.model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
        assert score.n_tokens == 1
        assert score.logprob == pytest.approx(logprobs[target].item(), abs=1e-5)
        assert score.greedy_match == bool(logprobs.argmax() == target)
    assert scores[-1].n_tokens == 2


def test_greedy_match_for_argmax_answer(model: HFModel) -> None:
    prompt = "the capital of france is"
    (continuation,) = model.generate([prompt], max_new_tokens=2)[0]
    score = model.score_answers([(prompt, " " + continuation)])[0]
    assert score.n_tokens == 2
    assert score.greedy_match


def test_answer_tokenized_alone_when_prompt_tokens_merge(model: HFModel) -> None:
    # "the ca" + "t" re-tokenizes the prompt's last word, so the answer is tokenized alone.
    (score,) = model.score_answers([("the ca", "t")])
    (expected,) = model.score_answers([("the ca", " <unk>")])
    assert score.n_tokens == 1
    assert score.logprob == pytest.approx(expected.logprob, abs=1e-5)


def test_empty_answer_rejected(model: HFModel) -> None:
    with pytest.raises(ValueError, match="must both have tokens"):
        model.score_answers([("the cat", "")])


def test_greedy_generation_batched_matches_unbatched(model: HFModel) -> None:
    batched = model.generate(PROMPTS, max_new_tokens=6)
    single = [model.generate([prompt], max_new_tokens=6)[0] for prompt in PROMPTS]
    assert batched == single
    assert model.generate(PROMPTS, max_new_tokens=6, batch_size=3) == batched
    assert all(len(outputs) == 1 for outputs in batched)


def test_seeded_sampling_reproducible(model: HFModel) -> None:
    def sample(seed: int) -> list[list[str]]:
        return model.generate(
            PROMPTS, do_sample=True, temperature=1.5, top_p=0.95, num_samples=3, seed=seed
        )

    first = sample(seed=7)
    assert sample(seed=7) == first
    assert sample(seed=8) != first
    assert [len(outputs) for outputs in first] == [3] * len(PROMPTS)


def test_hidden_states_shape_and_last_token(model: HFModel) -> None:
    states = model.hidden_states(PROMPTS)
    assert states.shape == (len(PROMPTS), 3, 32)
    picked = model.hidden_states(PROMPTS, layers=[0, -1], batch_size=3)
    assert picked.shape == (len(PROMPTS), 2, 32)
    assert picked[:, 0] == pytest.approx(states[:, 0], abs=1e-5)
    assert picked[:, 1] == pytest.approx(states[:, 2], abs=1e-5)
    single = model.hidden_states(PROMPTS[1:2])
    assert single[0] == pytest.approx(states[1], abs=1e-5)


def test_spec_missing_directory(tmp_path: Path) -> None:
    spec = str(tmp_path / "no-such-model")
    with pytest.raises(ModelSpecError, match="no-such-model"):
        HFModel.load(spec)


def test_spec_unknown_hub_id_is_not_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = "unlearncheck-test/definitely-not-cached"
    with pytest.raises(ModelSpecError, match=spec) as info:
        resolve_spec(spec)
    assert isinstance(info.value, ValueError)
    assert "local cache" in str(info.value)


def test_spec_organism(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []

    def checkpoint_path(variant: str, *, seed: int = 0) -> Path:
        calls.append((variant, seed))
        return tiny_checkpoint if variant == "built" else tiny_checkpoint / "missing"

    fake = types.ModuleType("unlearncheck.organism")
    fake.checkpoint_path = checkpoint_path  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "unlearncheck.organism", fake)
    assert resolve_spec("organism:built") == tiny_checkpoint
    assert resolve_spec("organism:built@seed=3") == tiny_checkpoint
    assert calls == [("built", 0), ("built", 3)]
    with pytest.raises(ModelSpecError, match="organism:absent"):
        resolve_spec("organism:absent")
    for bad in ("organism:built@seed=x", "organism:built@lr=3", "organism:@seed=1"):
        with pytest.raises(ModelSpecError, match="malformed"):
            resolve_spec(bad)


def test_trust_remote_code_defaults_false(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []

    class Spy:
        def __init__(self, real: type) -> None:
            self.real = real

        def from_pretrained(self, path: Path, **kwargs: object) -> object:
            seen.append(kwargs["trust_remote_code"])
            return self.real.from_pretrained(path, **kwargs)

    monkeypatch.setattr(hf_loading, "AutoModelForCausalLM", Spy(AutoModelForCausalLM))
    monkeypatch.setattr(hf_loading, "AutoTokenizer", Spy(AutoTokenizer))
    HFModel.load(str(tiny_checkpoint), device="cpu")
    assert seen == [False, False]


def test_checkpoint_with_remote_code_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "remote"
    shutil.copytree(tiny_checkpoint, checkpoint)
    sentinel = tmp_path / "remote_code_ran"
    (checkpoint / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(sentinel)!r}).touch()\n"
    )
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "unlearncheck-evil"
    config["auto_map"] = {
        "AutoConfig": "modeling_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
    }
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        HFModel.load(str(checkpoint), device="cpu")
    assert not sentinel.exists()


def test_unknown_dtype(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="unknown dtype"):
        HFModel.load(str(tiny_checkpoint), device="cpu", dtype="int3")


def test_out_of_memory_halves_the_batch_and_keeps_every_result(
    model: HFModel, memory_for_rows: Callable[[HFModel, int], list[int]]
) -> None:
    scores = model.score_answers(REQUESTS, batch_size=2)
    texts = model.generate(PROMPTS, max_new_tokens=4, batch_size=2)
    states = model.hidden_states(PROMPTS, layers=[-1], batch_size=2)
    ran = memory_for_rows(model, 2)
    limited_scores = model.score_answers(REQUESTS, batch_size=32)
    assert model.batch_limit == 2  # 32 halved until a batch fits; kept for later calls
    assert model.generate(PROMPTS, max_new_tokens=4, batch_size=32) == texts
    assert model.hidden_states(PROMPTS, layers=[-1], batch_size=32) == pytest.approx(
        states, abs=1e-5
    )
    assert max(ran) == 2
    assert [s.logprob for s in limited_scores] == pytest.approx(
        [s.logprob for s in scores], abs=1e-4
    )


def test_out_of_memory_on_one_sequence_is_raised(
    model: HFModel, memory_for_rows: Callable[[HFModel, int], list[int]]
) -> None:
    memory_for_rows(model, 0)
    with pytest.raises(torch.OutOfMemoryError, match="room for 0"):
        model.score_answers(REQUESTS, batch_size=4)


def test_device_auto_places_the_model_with_accelerate_and_scores_the_same(
    model: HFModel, tiny_checkpoint: Path
) -> None:
    """``auto`` (transformers' ``device_map="auto"``) on a machine without GPUs: all on the CPU."""
    spread = HFModel.load(str(tiny_checkpoint), device="auto")
    assert spread.device == torch.device("cpu")
    assert [s.logprob for s in spread.score_answers(REQUESTS)] == pytest.approx(
        [s.logprob for s in model.score_answers(REQUESTS)], abs=1e-5
    )
