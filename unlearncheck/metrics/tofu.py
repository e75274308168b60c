"""TOFU's metrics (Maini et al., 2024): truth ratios, forget quality and model utility.

The pure functions take truth ratios or readouts; `truth_ratios` computes the ratios with a
model, scoring answers as `HFModel.score_answers` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import ks_2samp

from unlearncheck.facts import Fact
from unlearncheck.metrics._common import Floats, nonempty
from unlearncheck.probes import Templates, completion_prefix, question_of

if TYPE_CHECKING:
    from unlearncheck.backends.hf import HFModel

__all__ = [
    "forget_quality",
    "model_utility",
    "truth_ratio",
    "truth_ratio_forget_score",
    "truth_ratio_request",
    "truth_ratio_retain_score",
    "truth_ratios",
]


def truth_ratio(paraphrased_logprob: float, perturbed_logprobs: Floats) -> float:
    """TOFU's truth ratio R of one question (Maini et al., 2024, "TOFU", Sec. 2.5.1).

    R = geometric mean over perturbed answers of p(perturbed)^(1/|perturbed|), divided by
    p(paraphrased)^(1/|paraphrased|): each probability is length-normalized, as in TOFU's code.
    R near 1 means the model cannot tell the true answer from wrong ones; R near 0 means it
    prefers the true answer.

    Args:
        paraphrased_logprob: Mean per-token log-probability of the (paraphrased) true answer.
        perturbed_logprobs: Mean per-token log-probability of each perturbed (wrong) answer.

    Returns:
        exp(mean(perturbed_logprobs) - paraphrased_logprob).

    Raises:
        ValueError: If there are no perturbed answers.
    """
    if len(perturbed_logprobs) == 0:
        raise ValueError("the truth ratio needs at least one perturbed answer")
    return float(np.exp(np.mean(perturbed_logprobs) - paraphrased_logprob))


def truth_ratio_forget_score(ratios: Floats) -> float:
    """TOFU's truth-ratio statistic on a forget set: mean of min(R, 1/R) (Maini et al., 2024).

    1 when every answer is as likely as its wrong alternatives, near 0 when the model strongly
    prefers (or strongly rejects) the true answers.
    """
    values = nonempty(ratios, "truth ratios")
    return float(np.mean(np.minimum(values, 1.0 / values)))


def truth_ratio_retain_score(ratios: Floats) -> float:
    """TOFU's truth-ratio statistic on retain / real-world sets: mean of max(0, 1 − R).

    Higher is better: the model prefers the true answers (Maini et al., 2024).
    """
    values = nonempty(ratios, "truth ratios")
    return float(np.mean(np.maximum(0.0, 1.0 - values)))


def forget_quality(truth_ratios_model: Floats, truth_ratios_reference: Floats) -> float:
    """TOFU's forget quality: the two-sample Kolmogorov–Smirnov p-value (Maini et al., 2024).

    Compares the distribution of truth ratios of the unlearned model on the forget set with that
    of the reference (retrained) model on the same set. High (near 1) means indistinguishable;
    TOFU reads p < 0.05 as a detectable difference. The test depends only on ranks, so R and
    1/R give the same p-value.

    Returns:
        ``scipy.stats.ks_2samp(model, reference).pvalue``.
    """
    model = nonempty(truth_ratios_model, "model truth ratios")
    reference = nonempty(truth_ratios_reference, "reference truth ratios")
    return float(ks_2samp(model, reference).pvalue)


def model_utility(values: Floats) -> float:
    """TOFU's model utility: the harmonic mean of the retain readouts (Maini et al., 2024).

    Returns:
        0 if any value is 0, else n / Σ 1/v.

    Raises:
        ValueError: If ``values`` is empty or has a negative value.
    """
    array = nonempty(values, "utility values")
    if np.any(array < 0):
        raise ValueError("utility values must be non-negative")
    if np.any(array == 0):
        return 0.0
    return float(array.size / np.sum(1.0 / array))


def truth_ratio_request(fact: Fact, templates: Templates) -> tuple[str, str] | None:
    """The prompt a fact's truth ratio is scored after, and the true answer scored there.

    A fact imported from TOFU with a ``paraphrased_answer`` (kept in its metadata) is scored as
    TOFU does: that paraphrased answer after the original question. Any other fact pairs its
    answer with its first paraphrase, so the true side is not the trained surface form: a
    paraphrase that contains the answer (a statement) becomes the completion prefix before it,
    and any other paraphrase (a question) is put in the templates' prompt format. A fact without
    paraphrases is asked its question.

    Returns:
        (prompt, true answer), or None when the fact has neither a paraphrase nor a question.
    """
    question = question_of(fact, templates)
    paraphrased = fact.metadata.get("paraphrased_answer")
    if question is not None and isinstance(paraphrased, str) and paraphrased:
        return templates.format_question(question), paraphrased
    if fact.paraphrases:
        text = fact.paraphrases[0]
        prompt = completion_prefix(text, fact.object) or templates.format_question(text)
        return prompt, fact.object
    return None if question is None else (templates.format_question(question), fact.object)


def truth_ratios(
    model: HFModel,
    facts: Sequence[Fact],
    *,
    templates: Templates | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """TOFU truth ratios (see `truth_ratio`) of facts with distractors (Maini et al., 2024).

    The true answer of `truth_ratio_request` and the fact's distractors (TOFU's perturbed
    answers) are all scored after the same prompt, each with a leading space, and compared by
    their length-normalized log-probabilities.

    Args:
        model: The model.
        facts: Facts; those without distractors or without any prompt are skipped.
        templates: Prompt format and relation templates; the shipped ones by default.
        batch_size: Sequences per forward pass.

    Returns:
        Truth ratio per fact id, in the order of ``facts``.
    """
    templates = templates or Templates.load()
    jobs: list[tuple[str, str, list[str]]] = []
    for fact in facts:
        request = truth_ratio_request(fact, templates)
        if request is not None and fact.distractors:
            prompt, true_answer = request
            jobs.append((fact.id, prompt, [true_answer, *fact.distractors]))
    requests = [(prompt, f" {answer}") for _, prompt, answers in jobs for answer in answers]
    scores = iter(model.score_answers(requests, batch_size=batch_size))
    ratios: dict[str, float] = {}
    for fact_id, _, answers in jobs:
        means = [next(scores).mean_logprob for _ in answers]
        ratios[fact_id] = truth_ratio(means[0], means[1:])
    return ratios
