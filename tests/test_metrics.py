"""Benchmark metrics: hand-computed cases, the model-facing helpers, and a run on the zoo."""

from __future__ import annotations

import itertools
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from unlearncheck import metrics
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import Fact, FactSet, load_facts, load_tofu
from unlearncheck.probes import Templates

# --- Pure functions -------------------------------------------------------------------------


def test_rouge_l_by_hand() -> None:
    # Words: [paris, france] vs [it, is, paris, in, france]; LCS = [paris, france] = 2.
    score = metrics.rouge_l("Paris, France!", "It is Paris in France")
    assert score.recall == pytest.approx(2 / 5)
    assert score.precision == pytest.approx(1.0)
    assert score.f1 == pytest.approx(2 * 0.4 * 1.0 / 1.4)
    # [the cat sat on the mat] vs [the cat is on the mat]: LCS = the cat on the mat = 5 of 6.
    score = metrics.rouge_l("The cat sat on the mat.", "the cat is on the mat")
    assert (score.recall, score.precision, score.f1) == pytest.approx((5 / 6, 5 / 6, 5 / 6))
    # A subsequence, not a set: order matters.
    assert metrics.rouge_l("b a", "a b").recall == pytest.approx(1 / 2)
    assert metrics.rouge_l("x y", "a b") == metrics.RougeScore(0.0, 0.0, 0.0)
    assert metrics.rouge_l("", "a b") == metrics.RougeScore(0.0, 0.0, 0.0)


def test_truth_ratio_on_given_numbers() -> None:
    # p(paraphrased) = e^-1 per token; perturbed e^-2 and e^-3: geometric mean e^-2.5.
    assert metrics.truth_ratio(-1.0, [-2.0, -3.0]) == pytest.approx(math.exp(-1.5))
    assert metrics.truth_ratio(-2.0, [-2.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="perturbed"):
        metrics.truth_ratio(-1.0, [])


def test_truth_ratio_statistics() -> None:
    ratios = [0.5, 2.0, 1.0]
    # min(R, 1/R) = 0.5, 0.5, 1; max(0, 1 - R) = 0.5, 0, 0.
    assert metrics.truth_ratio_forget_score(ratios) == pytest.approx(2 / 3)
    assert metrics.truth_ratio_retain_score(ratios) == pytest.approx(1 / 6)


def test_forget_quality_ks_p_value() -> None:
    sample = [0.1, 0.4, 0.2, 0.9, 0.3]
    assert metrics.forget_quality(sample, sample) == 1.0
    disjoint = metrics.forget_quality(list(range(10)), list(range(100, 110)))
    # Exact two-sided KS p-value for D = 1 with n = m = 10: 2 / C(20, 10).
    assert disjoint == pytest.approx(2 / math.comb(20, 10))
    assert disjoint < 1e-4
    # Rank-based: R and 1/R give the same p-value.
    a, b = np.array([0.2, 0.5, 0.9, 1.3]), np.array([0.4, 0.6, 2.0, 3.0])
    assert metrics.forget_quality(a, b) == pytest.approx(metrics.forget_quality(1 / a, 1 / b))


def test_extraction_strength_and_exact_memorization() -> None:
    assert metrics.extraction_strength([True, True, True, True]) == 1.0
    assert metrics.extraction_strength([False, True, True, True]) == 0.75  # k* = 1
    assert metrics.extraction_strength([True, False, True, True]) == 0.5  # k* = 2
    assert metrics.extraction_strength([True, True, True, False]) == 0.0  # k* = 4
    assert metrics.extraction_strength([False, False, False, False]) == 0.0
    assert metrics.exact_memorization([True, False, True, True]) == 0.75
    assert metrics.exact_memorization(np.array([False, False])) == 0.0
    with pytest.raises(ValueError):
        metrics.extraction_strength([])


def test_auc_with_ties_matches_a_pairwise_count() -> None:
    # Pairs: 3>2, 3>1, 2=2 (half), 2>1, 2=2 (half), 2>1 -> 5 of 6.
    assert metrics.auc([3, 2, 2], [2, 1]) == pytest.approx(5 / 6)
    rng = np.random.default_rng(0)
    members, nonmembers = rng.integers(0, 6, 40), rng.integers(0, 5, 30)
    wins = sum(
        1.0 if m > n else 0.5 if m == n else 0.0 for m, n in itertools.product(members, nonmembers)
    )
    assert metrics.auc(members, nonmembers) == pytest.approx(wins / (40 * 30))
    assert metrics.auc([1.0, 1.0], [1.0]) == 0.5
    assert metrics.auc([5.0], [1.0, 2.0]) == 1.0


def test_privleak_arithmetic() -> None:
    assert metrics.privleak(0.3, 0.5) == pytest.approx(-40.0)
    assert metrics.privleak(0.55, 0.5) == pytest.approx(10.0)
    assert metrics.privleak(0.5, 0.5) == 0.0
    with pytest.raises(ValueError):
        metrics.privleak(0.5, 0.0)


def test_model_utility_is_a_harmonic_mean() -> None:
    assert metrics.model_utility([0.5, 0.25, 1.0]) == pytest.approx(3 / (2 + 4 + 1))
    assert metrics.model_utility([0.7]) == pytest.approx(0.7)
    assert metrics.model_utility([0.9, 0.0, 0.8]) == 0.0
    with pytest.raises(ValueError):
        metrics.model_utility([0.5, -0.1])


def test_loss_zlib_and_min_k() -> None:
    assert metrics.loss_score([-1.0, -2.0, -3.0]) == pytest.approx(2.0)
    text = "the cat sat on the mat " * 20
    compressed = len(zlib.compress(text.encode("utf-8")))
    assert compressed < len(text)
    assert metrics.zlib_score(text, 2.0) == pytest.approx(2.0 / compressed)
    logprobs = [-1.0, -5.0, -2.0, -4.0, -3.0]
    assert metrics.min_k_percent(logprobs, k=0.4) == pytest.approx(-4.5)  # lowest 2 of 5
    assert metrics.min_k_percent(logprobs, k=0.1) == pytest.approx(-5.0)  # at least one
    assert metrics.min_k_percent(logprobs, k=1.0) == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="k must be"):
        metrics.min_k_percent(logprobs, k=0.0)


# A peak of 0.6 on one token, the rest of the mass spread uniformly over the other tokens. For a
# distribution with two probability levels (a with mass q, b with mass 1 - q) the mean of log p
# is q log a + (1 - q) log b, the standard deviation sqrt(q (1 - q)) |log a - log b|, so z is
# sqrt((1 - q) / q) for the peak token and -sqrt(q / (1 - q)) for any other.
PEAK = 0.6


def peak_moments(vocab_size: int) -> tuple[float, float]:
    """Mean and standard deviation of log p under the uniform-plus-peak distribution."""
    tail = (1 - PEAK) / (vocab_size - 1)
    mu = PEAK * math.log(PEAK) + (1 - PEAK) * math.log(tail)
    sigma = math.sqrt(PEAK * (1 - PEAK)) * math.log(PEAK / tail)
    return mu, sigma


def test_min_k_plus_plus_on_a_known_distribution() -> None:
    mu, sigma = peak_moments(vocab_size=5)
    peak_z, tail_z = math.sqrt(0.4 / 0.6), -math.sqrt(0.6 / 0.4)
    tokens = [math.log(PEAK), math.log(0.1), math.log(PEAK), math.log(PEAK), math.log(0.1)]
    mus, sigmas = [mu] * 5, [sigma] * 5
    assert metrics.min_k_plus_plus(tokens, mus, sigmas, k=0.4) == pytest.approx(tail_z)
    assert metrics.min_k_plus_plus(tokens, mus, sigmas, k=1.0) == pytest.approx(
        (3 * peak_z + 2 * tail_z) / 5
    )
    # A uniform distribution has sigma = 0: every token is average, z = 0.
    assert metrics.min_k_plus_plus([math.log(0.25)], [math.log(0.25)], [0.0]) == 0.0
    with pytest.raises(ValueError, match="same length"):
        metrics.min_k_plus_plus(tokens, mus[:4], sigmas)


def test_mia_auc_is_oriented_as_muse_reports_it() -> None:
    memorized = [metrics.MIAScores(loss=0.1, zlib=0.01, min_k=-0.2, min_k_plus_plus=1.0)] * 3
    unseen = [metrics.MIAScores(loss=3.0, zlib=0.3, min_k=-6.0, min_k_plus_plus=-2.0)] * 2
    assert metrics.mia_auc(memorized, unseen) == dict.fromkeys(metrics.MIA_DIRECTION, 0.0)
    assert metrics.mia_auc(unseen, memorized) == dict.fromkeys(metrics.MIA_DIRECTION, 1.0)
    assert metrics.mia_auc(unseen, unseen) == dict.fromkeys(metrics.MIA_DIRECTION, 0.5)


# --- Model-facing helpers on a hand-built distribution ----------------------------------------


@pytest.fixture(scope="module")
def peaked(tiny_checkpoint: Path) -> HFModel:
    """The tiny GPT-2 rewired so every position predicts the uniform-plus-peak distribution.

    A final layer norm with zero weight outputs its bias whatever the input; with bias e_0 the
    logits are column 0 of the (tied) embedding matrix, set to log p.
    """
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    vocab = model.config.vocab_size
    logp = torch.full((vocab,), math.log((1 - PEAK) / (vocab - 1)))
    logp[tokenizer.convert_tokens_to_ids("paris")] = math.log(PEAK)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight[:, 0] = logp
    return HFModel.from_pretrained_objects(model, tokenizer, spec="peaked")


def test_token_stats_on_a_known_distribution(peaked: HFModel) -> None:
    vocab = peaked.model.config.vocab_size
    mu, sigma = peak_moments(vocab)
    tail = (1 - PEAK) / (vocab - 1)
    [stats] = metrics.token_stats(peaked, [("the capital of france is", " paris the paris")])
    expected = [math.log(PEAK), math.log(tail), math.log(PEAK)]
    np.testing.assert_allclose(stats.logprobs, expected, atol=1e-5)
    assert stats.argmax_matches.tolist() == [True, False, True]
    np.testing.assert_allclose(stats.mu, [mu] * 3, atol=1e-5)
    np.testing.assert_allclose(stats.sigma, [sigma] * 3, atol=1e-5)
    assert metrics.extraction_strength(stats.argmax_matches) == pytest.approx(1 / 3)
    assert metrics.min_k_plus_plus(stats.logprobs, stats.mu, stats.sigma, k=0.4) == (
        pytest.approx(-math.sqrt(PEAK / (1 - PEAK)), abs=1e-4)
    )
    [scores] = metrics.mia_scores(peaked, ["paris the paris"])
    assert scores.loss == pytest.approx(-sum(expected) / 3, abs=1e-5)
    assert scores.zlib == pytest.approx(scores.loss / len(zlib.compress(b"paris the paris")))
    assert scores.min_k == pytest.approx(math.log(tail), abs=1e-5)


def test_truth_ratios_pair_answers_as_tofu_does(peaked: HFModel, tmp_path: Path) -> None:
    rows = [
        {
            "question": "where is paris",
            "answer": "in france",
            "paraphrased_answer": "paris",
            "perturbed_answer": ["in spain", "rome"],
        },
        {"question": "who is the king", "answer": "he", "paraphrased_question": "who is king"},
    ]
    path = tmp_path / "tofu.json"
    path.write_text(json.dumps(rows))
    tofu = load_tofu(path)
    templates = Templates.load()
    # With a paraphrased answer, TOFU's setup: that answer after the original question.
    assert metrics.truth_ratio_request(tofu[0], templates) == (
        templates.format_question("where is paris"),
        "paris",
    )
    ratios = metrics.truth_ratios(peaked, tofu)
    assert list(ratios) == ["tofu/0"]  # the second row has no perturbed answers
    prompt = templates.format_question("where is paris")
    para, *perturbed = peaked.score_answers(
        [(prompt, " paris"), (prompt, " in spain"), (prompt, " rome")]
    )
    expected = metrics.truth_ratio(para.mean_logprob, [s.mean_logprob for s in perturbed])
    assert ratios["tofu/0"] == pytest.approx(expected)
    # Every token of "paris" is the peak and "rome" a tail token; "in spain" two tail tokens.
    assert ratios["tofu/0"] == pytest.approx(
        (1 - PEAK) / (peaked.model.config.vocab_size - 1) / PEAK
    )


def test_truth_ratio_request_forms() -> None:
    templates = Templates.load()
    statement = Fact(
        "a/city",
        "Ann",
        "birth_city",
        "Rome",
        question="Where was Ann born?",
        paraphrases=("The home town of Ann is Rome .",),
    )
    question = Fact(
        "a/job", "Ann", "job", "baker", question="What does Ann do?", paraphrases=("Ann's job?",)
    )
    bare = Fact("a/x", "Ann", "x", "y", question="Q?")
    assert metrics.truth_ratio_request(statement, templates) == ("The home town of Ann is", "Rome")
    assert metrics.truth_ratio_request(question, templates) == (
        templates.format_question("Ann's job?"),
        "baker",
    )
    assert metrics.truth_ratio_request(bare, templates) == (templates.format_question("Q?"), "y")
    assert metrics.truth_ratio_request(Fact("a/z", "Ann", "none", "y"), templates) is None


# --- The zoo ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def original(zoo: Path) -> HFModel:
    return HFModel.load(str(zoo / "original"), device="cpu")


@pytest.fixture(scope="module")
def forget_facts(zoo: Path) -> FactSet:
    return load_facts(zoo / "facts.jsonl").split("forget")


def test_token_stats_agree_with_score_answers(original: HFModel, forget_facts: FactSet) -> None:
    templates = Templates.load()
    pairs = [(templates.format_question(f.question or ""), f" {f.object}") for f in forget_facts]
    pairs += [("", f.statement or "") for f in forget_facts[:10]]
    stats = metrics.token_stats(original, pairs, batch_size=7)
    scores = original.score_answers(pairs)
    assert any(score.n_tokens > 1 for score in scores)
    for stat, score in zip(stats, scores, strict=True):
        assert stat.logprobs.size == score.n_tokens
        assert stat.logprobs.sum() == pytest.approx(score.logprob, abs=1e-4)
        assert bool(stat.argmax_matches.all()) == score.greedy_match


def test_token_stats_mu_sigma_match_an_independent_log_softmax(original: HFModel) -> None:
    prompt, text = "Question: Where was Brira Titres born?\nAnswer:", " Ivesham ."
    [stats] = metrics.token_stats(original, [(prompt, text)])
    tokenizer = original.tokenizer
    context = [tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False).input_ids]
    ids = [tokenizer.bos_token_id, *tokenizer(prompt + text, add_special_tokens=False).input_ids]
    with torch.inference_mode():
        logits = original.model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)[len(context) - 1 : len(ids) - 1]
    targets = torch.tensor(ids[len(context) :])
    p = logp.exp()
    mu = (p * logp).sum(dim=-1)
    sigma = ((p * logp**2).sum(dim=-1) - mu**2).sqrt()
    np.testing.assert_allclose(
        stats.logprobs, logp.gather(1, targets[:, None]).squeeze(1), atol=1e-4
    )
    np.testing.assert_allclose(stats.mu, mu, atol=1e-4)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-3, atol=1e-4)
    assert stats.argmax_matches.tolist() == (logp.argmax(dim=-1) == targets).tolist()


def test_zoo_forget_quality_and_privleak(
    zoo: Path, original: HFModel, forget_facts: FactSet
) -> None:
    gold = HFModel.load(str(zoo / "gold"), device="cpu")
    retain = load_facts(zoo / "facts.jsonl").split("retain")
    gold_ratios = list(metrics.truth_ratios(gold, forget_facts).values())
    original_ratios = list(metrics.truth_ratios(original, forget_facts).values())
    assert len(gold_ratios) == len(original_ratios) == len(forget_facts)
    assert metrics.forget_quality(gold_ratios, gold_ratios) == 1.0
    assert metrics.forget_quality(original_ratios, gold_ratios) < 0.05
    # The original prefers the true answers; the gold model (never trained on them) does not.
    assert metrics.truth_ratio_forget_score(original_ratios) < 0.05
    assert metrics.truth_ratio_forget_score(gold_ratios) > 0.2

    def aucs(model: HFModel) -> dict[str, float]:
        forget = metrics.mia_scores(model, [f.statement or "" for f in forget_facts])
        holdout = metrics.mia_scores(model, [f.statement or "" for f in retain[:200]])
        return metrics.mia_auc(forget, holdout)

    gold_auc, original_auc = aucs(gold), aucs(original)
    # Gold never saw the forget statements: they look far less like members than retain ones.
    assert gold_auc["loss"] > 0.9
    for name in ("loss", "min_k_plus_plus"):
        assert metrics.privleak(gold_auc[name], gold_auc[name]) == 0.0
        assert metrics.privleak(original_auc[name], gold_auc[name]) < -20


def test_sampling_reads_leaks_by_rouge_l_when_asked() -> None:
    """ROUGE-L as a readout: a sample stating part of a long answer counts past the threshold."""
    from unlearncheck.attacks.sampling_readout import SamplingAttack

    sample, answer = "I think at Vellmar City, yes", "Vellmar City Hall"
    assert not SamplingAttack().states(sample, answer)  # whole-word match only
    assert SamplingAttack(rouge_threshold=0.6).states(sample, answer)  # recall 2/3
    assert not SamplingAttack(rouge_threshold=0.7).states(sample, answer)
    assert SamplingAttack(rouge_threshold=0.7).states("Vellmar City Hall.", answer)
