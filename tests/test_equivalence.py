"""FADE and assert_equivalent: the formula by hand on a stub, then the zoo's variants vs gold."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unlearncheck import events, load_facts
from unlearncheck.backends.hf import HFModel
from unlearncheck.backends.scoring import AnswerScore
from unlearncheck.equivalence import (
    EquivalenceAssertionError,
    EquivalenceVerdict,
    as_prompts,
    assert_equivalent,
)
from unlearncheck.facts import Fact
from unlearncheck.loading import load_model
from unlearncheck.metrics.fade import f1, fade
from unlearncheck.organism import VARIANTS
from unlearncheck.report import render_report
from unlearncheck.runlog import read_runlog
from unlearncheck.verdict import Verdict

# 24 forget questions × 8 samples × 16 tokens: every FADE below takes about a second on one core.
PROMPTS, N, MAX_NEW_TOKENS = 24, 8, 16


class StubModel:
    """Fixed samples per prompt; scores looked up in a table of (log-prob, token count)."""

    def __init__(
        self,
        samples: dict[str, list[str]],
        table: dict[tuple[str, str], tuple[float, int]],
        eos: str | None = "</s>",
    ) -> None:
        self.samples = samples
        self.table = table
        self.tokenizer = SimpleNamespace(eos_token=eos)
        self.generate_calls: list[dict[str, object]] = []
        self.scored: list[tuple[str, str]] = []

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 8,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        num_samples: int = 1,
        seed: int | None = None,
        batch_size: int = 32,
    ) -> list[list[str]]:
        self.generate_calls.append(
            {"do_sample": do_sample, "num_samples": num_samples, "seed": seed, "top_p": top_p}
        )
        return [self.samples[p][:num_samples] for p in prompts]

    def score_answers(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int = 32
    ) -> list[AnswerScore]:
        self.scored += requests
        return [AnswerScore(*self.table[request], greedy_match=False) for request in requests]


def stubs(eos: str | None = "</s>") -> tuple[StubModel, StubModel]:
    """θu samples "a", "b"; θr samples "a", "c" (prompt "p").

    log p_u: a −1 (1 token), b −2 (2 tokens), c −3 (3 tokens), "" (as </s>) −0.1
    log p_r: a −1,           b −4,            c −2,             "" (as </s>) −5
    """
    model = StubModel(
        {"p": ["a", "b"], "q": ["", "a"]},
        {("p", "a"): (-1.0, 1), ("p", "b"): (-2.0, 2), ("p", "c"): (-3.0, 3)}
        | {("q", "a"): (-1.0, 1), ("q", "</s>"): (-0.1, 1)},
        eos,
    )
    reference = StubModel(
        {"p": ["a", "c"], "q": ["a", "a"]},
        {("p", "a"): (-1.0, 1), ("p", "b"): (-4.0, 2), ("p", "c"): (-2.0, 3)}
        | {("q", "a"): (-1.0, 1), ("q", "</s>"): (-5.0, 1)},
        eos,
    )
    return model, reference


def test_fade_matches_the_formula_by_hand() -> None:
    model, reference = stubs()
    result = fade(model, reference, ["p"], n=2, seed=7)
    # r = log p_r − log p_u: a 0, b −4 − (−2) = −2, c −2 − (−3) = +1.
    # α = mean over θu's samples (a, b) of min(1, e^r) = (1 + e^−2) / 2 = 0.567668
    # β = mean over θr's samples (a, c) of min(1, e^−r) = (1 + e^−1) / 2 = 0.683940
    # F1 = 2αβ / (α + β) = 0.776501 / 1.251607 = 0.620403; FADE = 1 − F1 = 0.379597
    assert result.alpha == pytest.approx(0.567668, abs=1e-6)
    assert result.beta == pytest.approx(0.683940, abs=1e-6)
    assert result.fade == pytest.approx(0.379597, abs=1e-6)
    assert result.alpha == pytest.approx((1 + math.exp(-2)) / 2)
    assert (result.n, result.prompts, result.empty_model, result.empty_reference) == (2, 1, 0, 0)
    # Evidence: distinct samples by |r|, largest first (b, c, then a once per source).
    assert [(s.source, s.text, s.r) for s in result.evidence] == [
        ("model", "b", -2.0),
        ("reference", "c", 1.0),
        ("model", "a", 0.0),
        ("reference", "a", 0.0),
    ]
    assert result.evidence[0].logp_model == -2.0 and result.evidence[0].logp_reference == -4.0
    for stub in (model, reference):
        assert stub.generate_calls == [
            {"do_sample": True, "num_samples": 2, "seed": 7, "top_p": 1.0}
        ]


def test_length_normalized_fade_divides_by_the_token_count() -> None:
    model, reference = stubs()
    result = fade(model, reference, ["p"], n=2, length_normalized=True)
    # r per token: a 0, b −4/2 − (−2/2) = −1, c −2/3 − (−3/3) = +1/3.
    alpha, beta = (1 + math.exp(-1)) / 2, (1 + math.exp(-1 / 3)) / 2
    assert (result.alpha, result.beta) == pytest.approx((alpha, beta))
    assert result.fade == pytest.approx(1 - 2 * alpha * beta / (alpha + beta))
    assert result.length_normalized


def test_an_empty_sample_is_scored_as_stopping_at_once() -> None:
    model, reference = stubs()
    result = fade(model, reference, ["q"], n=2)
    # θu's "" is scored as </s>: r = −5 − (−0.1) = −4.9; its "a" has r 0; θr's two "a" have r 0.
    assert result.alpha == pytest.approx((math.exp(-4.9) + 1) / 2)
    assert result.beta == 1.0
    assert result.empty_model == 1 and result.empty_reference == 0
    assert ("q", "</s>") in model.scored and ("q", "") not in model.scored
    assert result.evidence[0].text == "" and result.evidence[0].r == pytest.approx(-4.9)
    # Without an end-of-sequence token the empty prefix has probability 1 under both: r = 0.
    model, reference = stubs(eos=None)
    assert fade(model, reference, ["q"], n=2).fade == 0.0
    assert all(text for _, text in model.scored)


def test_f1_and_bad_arguments() -> None:
    assert f1(0.0, 0.0) == 0.0 and f1(1.0, 1.0) == 1.0 and f1(0.5, 1.0) == pytest.approx(2 / 3)
    model, reference = stubs()
    with pytest.raises(ValueError, match="at least one prompt"):
        fade(model, reference, [], n=2)
    with pytest.raises(ValueError, match="n must be"):
        fade(model, reference, ["p"], n=0)


def test_as_prompts_asks_a_fact_its_question_in_the_prompt_format() -> None:
    fact = Fact("x/birth_city", "Varo Melin", "birth_city", "Fennick", question="Where?")
    assert as_prompts(fact) == ["Question: Where?\nAnswer:"]
    assert as_prompts(["Once upon a time", fact]) == ["Once upon a time", as_prompts(fact)[0]]
    assert as_prompts("a prompt") == ["a prompt"]
    templated = Fact("y/birth_city", "Pago Pusul", "birth_city", "Fennick")
    assert "Pago Pusul" in as_prompts([templated])[0]
    with pytest.raises(ValueError, match="no question"):
        as_prompts([Fact("z/r", "S", "no_such_relation", "O")])


# --- On the zoo ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two OpenMP threads stall on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts(zoo: Path) -> list[str]:
    return as_prompts(load_facts(zoo / "facts.jsonl").split("forget")[:PROMPTS])


def model(zoo: Path, variant: str) -> HFModel:
    return load_model(str(zoo / variant))


def test_fade_of_a_model_with_itself_is_exactly_zero(zoo: Path, prompts: list[str]) -> None:
    gold = model(zoo, "gold")
    result = fade(gold, gold, prompts, n=N, max_new_tokens=MAX_NEW_TOKENS, seed=3)
    assert (result.alpha, result.beta, result.fade) == (1.0, 1.0, 0.0)
    assert all(s.r == 0.0 for s in result.evidence)
    again = fade(gold, gold, prompts, n=N, max_new_tokens=MAX_NEW_TOKENS, seed=3)
    assert again == result  # seeded: the same samples, the same numbers


def test_models_of_different_vocabularies_are_refused(
    zoo: Path, tiny_checkpoint: Path, prompts: list[str]
) -> None:
    other = load_model(str(tiny_checkpoint))  # a tiny GPT-2 with its own word-level vocabulary
    with pytest.raises(ValueError, match="different vocabularies"):
        fade(model(zoo, "gold"), other, prompts[:1], n=1)


def test_original_fails_against_gold(zoo: Path, prompts: list[str]) -> None:
    with pytest.raises(EquivalenceAssertionError) as info:
        assert_equivalent(
            str(zoo / "original"), str(zoo / "gold"), prompts, n=N, max_new_tokens=MAX_NEW_TOKENS
        )
    verdict = info.value.verdict
    assert verdict.status == "FAIL" and verdict.original_result is None
    assert verdict.floor.fade == 0.0  # the reference against its second sample set
    assert verdict.result.fade > verdict.floor.fade + 0.5  # far above the floor
    message = str(info.value)
    assert f"FADE(model, reference) {verdict.result.fade:.3f}" in message
    assert "above the noise floor 0.000 (tolerance 0.1)" in message
    assert "samples with the largest |r|" in message
    assert verdict.result.evidence[0].describe() in message
    assert abs(verdict.result.evidence[0].r) > 10  # a sample one model finds e^10 times likelier


def test_gold_passes_against_gold_logged_published_and_rendered(zoo: Path, tmp_path: Path) -> None:
    facts = load_facts(zoo / "facts.jsonl").split("forget")[:PROMPTS]
    heard: list[Verdict] = []
    events.subscribe(heard.append)
    try:
        verdict = assert_equivalent(
            str(zoo / "gold"),
            str(zoo / "gold"),
            facts,
            original=str(zoo / "original"),
            n=N,
            max_new_tokens=MAX_NEW_TOKENS,
            runlog=tmp_path / "run.jsonl",
            claim="gold ≡ gold",
        )
    finally:
        events.unsubscribe(heard.append)
    assert verdict.status == "PASS" and not verdict.reasons
    assert verdict.result.fade == 0.0 and verdict.floor.fade == 0.0
    assert verdict.original_result is not None and verdict.original_result.fade > 0.5
    assert heard == [verdict]
    records = list(read_runlog(tmp_path / "run.jsonl"))
    assert [r["kind"] for r in records] == ["run", "model", "model", "model", "verdict"]
    logged = records[-1]
    assert logged["status"] == "PASS" and logged["config"]["kind"] == "equivalent"
    assert logged["config"]["score_cache"]["from_cache"] == 0  # FADE reads no cached score
    assert logged["equivalence"]["original"]["fade"] == pytest.approx(
        verdict.original_result.fade, abs=1e-6
    )
    json.dumps(verdict.to_dict())
    html = render_report(tmp_path / "run.jsonl", tmp_path / "report.html").read_text()
    assert "gold ≡ gold" in html
    assert "FADE(model, reference)" in html and "noise floor" in html
    assert "FADE(original, reference)" in html


def test_fail_when_no_closer_than_the_original(zoo: Path, prompts: list[str]) -> None:
    verdict = assert_equivalent(
        str(zoo / "original"),
        str(zoo / "gold"),
        prompts,
        original=str(zoo / "original"),
        n=N,
        max_new_tokens=MAX_NEW_TOKENS,
        tolerance=1.0,  # only the comparison with the original can fail it
        raise_on_fail=False,
    )
    assert isinstance(verdict, EquivalenceVerdict) and verdict.status == "FAIL"
    assert verdict.original_result is not None
    assert verdict.result.fade == verdict.original_result.fade  # same model, same samples
    assert verdict.reasons == [
        f"FADE(model, reference) {verdict.result.fade:.3f} ≥ FADE(original, reference) "
        f"{verdict.original_result.fade:.3f}: the model is no closer to the reference than the "
        "original"
    ]


def test_fade_of_every_variant_against_gold(zoo: Path, prompts: list[str]) -> None:
    """The table of the report: FADE(variant, gold), with the floor and FADE(original, gold)."""
    gold = model(zoo, "gold")
    floor = assert_equivalent(gold, gold, prompts, n=N, max_new_tokens=MAX_NEW_TOKENS).floor
    results = {
        v: fade(model(zoo, v), gold, prompts, n=N, max_new_tokens=MAX_NEW_TOKENS) for v in VARIANTS
    }
    print(
        f"\nFADE vs gold ({len(prompts)} forget questions × {N} samples, {MAX_NEW_TOKENS} tokens)"
    )
    print(f"{'variant':18} {'FADE':>6} {'α':>6} {'β':>6} {'empty':>6}")
    for variant, result in results.items():
        print(
            f"{variant:18} {result.fade:6.3f} {result.alpha:6.3f} {result.beta:6.3f} "
            f"{result.empty_model:6d}"
        )
    print(f"{'noise floor':18} {floor.fade:6.3f}")
    assert floor.fade == 0.0 and results["gold"].fade == 0.0
    assert all(0.0 <= r.fade <= 1.0 for r in results.values())
    assert results["original"].fade > floor.fade + 0.1
