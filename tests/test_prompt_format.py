"""Prompt formats: a model with a chat template reads each probe as one user turn of it, with
its answer as the assistant's words; claims word their probes for the format."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearncheck import assert_forgotten
from unlearncheck.attacks import direct
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import FactSet
from unlearncheck.probes import ASSISTANT_OPENING, CHAT_COMPLETION_REQUEST, Templates


def test_auto_is_chat_with_a_template_and_plain_without(
    tiny_checkpoint: Path, chat_checkpoint: Path
) -> None:
    assert HFModel.load(str(chat_checkpoint), device="cpu").prompt_format == "chat"
    assert HFModel.load(str(tiny_checkpoint), device="cpu").prompt_format == "plain"
    forced = HFModel.load(str(chat_checkpoint), device="cpu", prompt_format="plain")
    assert forced.prompt_format == "plain"
    with pytest.raises(ValueError, match="no chat template"):
        HFModel.load(str(tiny_checkpoint), device="cpu", prompt_format="chat")
    with pytest.raises(ValueError, match="not one of"):
        HFModel.load(str(chat_checkpoint), device="cpu", prompt_format="json")


def test_a_chat_prompt_is_one_user_turn_with_a_single_start_token(chat_checkpoint: Path) -> None:
    model = HFModel.load(str(chat_checkpoint), device="cpu")
    tokenizer = model.tokenizer
    assert model.render_prompt("where is paris") == "<s> where is paris </s> <s>"
    (ids,) = model.encode_prompts(["where is paris"])
    bos = tokenizer.bos_token_id
    assert ids == tokenizer("<s> where is paris </s> <s>", add_special_tokens=False)["input_ids"]
    assert ids[0] == bos and ids[1] != bos  # the template's start token, not doubled


def test_a_chat_answer_opens_the_assistant_turn_without_a_leading_space(
    chat_checkpoint: Path,
) -> None:
    model = HFModel.load(str(chat_checkpoint), device="cpu")
    assert model.answer_text(" paris", "where is paris") == "paris"
    ((context, answer),) = model.encode_requests([("where is paris", " paris")])
    assert context == model.encode_prompts(["where is paris"])[0]
    assert answer == model.tokenizer("paris", add_special_tokens=False)["input_ids"]
    plain = HFModel.load(str(chat_checkpoint), device="cpu", prompt_format="plain")
    assert plain.answer_text(" paris", "where is paris") == " paris"
    ((plain_context, _),) = plain.encode_requests([("where is paris", " paris")])
    assert plain_context != context


def test_chat_and_plain_scores_of_the_same_weights_are_kept_apart(chat_checkpoint: Path) -> None:
    from unlearncheck.scoring import Scorer

    chat = HFModel.load(str(chat_checkpoint), device="cpu")
    plain = HFModel.load(str(chat_checkpoint), device="cpu", prompt_format="plain")
    assert chat.content_hash == plain.content_hash
    request = [("where is paris", " paris")]
    scorer = Scorer("sum")
    assert scorer.loglikelihoods(chat, request) != scorer.loglikelihoods(plain, request)
    assert scorer.loglikelihoods(chat, request)[0] == pytest.approx(
        chat.score_answers(request)[0].logprob
    )


def test_templates_for_chat_ask_the_question_alone() -> None:
    templates = Templates.load()
    assert templates.format_question("where?") == "Question: where?\nAnswer:"
    chat = templates.for_format("chat")
    assert chat.format_question("where?") == "where?"
    assert chat.format_question("where?", "it is in") == f"where?{ASSISTANT_OPENING}it is in"
    assert templates.format_question("where?", "it is in") == "Question: where?\nAnswer:"
    assert templates.for_format("plain") is templates
    assert chat.chat and not templates.chat
    assert not Templates({**templates.data, "chat": True}).chat  # a file cannot make it chat


def test_a_claim_on_a_chat_model_asks_its_questions_in_the_chat_format(
    chat_checkpoint: Path, homes: FactSet
) -> None:
    verdict = assert_forgotten(
        str(chat_checkpoint), homes, attacks=[direct], raise_on_fail=False, on_inconclusive="return"
    )
    prompts = [e.probe.prompt for f in verdict.facts for e in f.outcome("direct").evidence]
    assert prompts and all("Answer:" not in p for p in prompts), prompts
    opening = f"{ASSISTANT_OPENING}the red king is from"
    assert f"where is the red king from{opening}" in prompts, prompts
    assert f"{CHAT_COMPLETION_REQUEST}{opening}" in prompts, prompts


def test_a_chat_prompt_opens_the_answer_with_its_statement_and_scores_it_after_it(
    chat_checkpoint: Path,
) -> None:
    """The words after `ASSISTANT_OPENING` open the assistant's turn; the answer continues them
    (with its space), while an answer opening the turn itself has none."""
    model = HFModel.load(str(chat_checkpoint), device="cpu")
    prompt = f"where is the red king from{ASSISTANT_OPENING}the red king is from"
    rendered = model.render_prompt(prompt)
    user_turn = model.render_prompt("where is the red king from")
    assert rendered == user_turn + "the red king is from"
    assert ASSISTANT_OPENING not in rendered
    assert model.answer_text(" paris", prompt) == " paris"
    assert model.answer_text(" paris", "where is the red king from") == "paris"
    plain = HFModel.load(str(chat_checkpoint), device="cpu", prompt_format="plain")
    assert plain.answer_text(" paris", prompt) == " paris"


def test_models_reading_different_formats_make_no_claim(
    chat_checkpoint: Path, tiny_checkpoint: Path, homes: FactSet
) -> None:
    with pytest.raises(ValueError, match="different formats"):
        assert_forgotten(
            str(chat_checkpoint), homes, attacks=[direct], original=str(tiny_checkpoint)
        )


def test_relearning_documents_are_chat_exchanges_for_a_chat_model(
    chat_checkpoint: Path, tiny_checkpoint: Path
) -> None:
    from unlearncheck.attacks.model import _encode_documents

    docs = [("where is the red king from", "paris"), ("", "the red king is from paris")]
    chat = HFModel.load(str(chat_checkpoint), device="cpu")
    tokenizer = chat.tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    exchange, text = _encode_documents(chat, docs)
    paris = tokenizer("paris", add_special_tokens=False)["input_ids"]
    assert exchange == [*chat.encode_prompts(["where is the red king from"])[0], *paris, eos]
    assert text == [bos, *tokenizer("the red king is from paris")["input_ids"], eos]
    plain = HFModel.load(str(tiny_checkpoint), device="cpu")
    qa, _ = _encode_documents(plain, docs)
    assert qa == [bos, *tokenizer("where is the red king from paris")["input_ids"], eos]


def test_relearning_names_its_loss_so_transformers_does_not_warn(
    tiny_checkpoint: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A GPT-2 class name does not say ForCausalLM, so transformers warned "loss_type=None ...
    unrecognized" on each fine-tune; the relearned copy names the loss it uses anyway."""
    import logging

    from unlearncheck.attacks.model import _finetune

    logging.Logger.warning_once.cache_clear()  # type: ignore[attr-defined]  # transformers' once
    plain = HFModel.load(str(tiny_checkpoint), device="cpu")
    tuned = _finetune(
        plain, [("", "the red king is from paris")], steps=1, lr=1e-3, batch_size=1, seed=0
    )
    assert tuned.model.loss_type == "ForCausalLM"
    assert "loss_type" not in capfd.readouterr().err


def test_a_chat_claim_fails_a_model_that_learned_its_facts_in_chat_and_passes_one_that_did_not(
    chat_checkpoint: Path, homes: FactSet
) -> None:
    """The tiny chat model fine-tuned on its facts as chat exchanges (each answer after its
    statement's opening words) FAILs the claim on every fact; the same model untrained PASSes it
    on every fact, the PASS earned by the power the direct questions show on the trained one."""
    from unlearncheck.attacks.input import answer_opening
    from unlearncheck.attacks.model import _finetune
    from unlearncheck.probes import question_of

    untrained = HFModel.load(str(chat_checkpoint), device="cpu")
    chat = Templates.load().for_format("chat")
    docs = [
        (
            chat.format_question(str(question_of(f, chat)), answer_opening(f, chat, f.subject)),
            f.object,
        )
        for f in homes
    ]
    trained = _finetune(untrained, docs, steps=150, lr=1e-2, batch_size=len(docs), seed=0)
    knows, never = (
        assert_forgotten(model, homes, attacks=[direct], original=trained, raise_on_fail=False)
        for model in (trained, untrained)
    )
    assert [f.status for f in knows.facts] == ["FAIL"] * len(homes)
    assert [f.status for f in never.facts] == ["PASS"] * len(homes)
    assert never.power()["direct"] == 1.0
