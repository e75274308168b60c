"""Text overlap and memorization: ROUGE-L, extraction strength, exact memorization."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unlearncheck.metrics._common import Bools, nonempty

__all__ = ["RougeScore", "exact_memorization", "extraction_strength", "rouge_l"]


@dataclass(frozen=True)
class RougeScore:
    """ROUGE-L of a prediction against a reference.

    Attributes:
        recall: LCS length / reference words (TOFU's "ROUGE" is this recall).
        precision: LCS length / prediction words.
        f1: Harmonic mean of recall and precision.
    """

    recall: float
    precision: float
    f1: float


_WORD = re.compile(r"\w+")


def rouge_l(prediction: str, reference: str) -> RougeScore:
    """ROUGE-L from the longest common subsequence of words (Lin, 2004, "ROUGE").

    Both texts are lowercased and split into runs of word characters, so whitespace and
    punctuation only separate words. Unlike the ``rouge_score`` package as TOFU calls it, no
    stemmer is applied.

    Returns:
        Recall, precision and F1; all 0 when either text has no words.
    """
    pred, ref = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not pred or not ref:
        return RougeScore(0.0, 0.0, 0.0)
    lcs = _lcs_length(pred, ref)
    recall, precision = lcs / len(ref), lcs / len(pred)
    f1 = 0.0 if lcs == 0 else 2 * recall * precision / (recall + precision)
    return RougeScore(recall, precision, f1)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, by dynamic programming over one row."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(above, row[j - 1])
            diagonal = above
    return row[-1]


def extraction_strength(argmax_matches: Bools) -> float:
    """Extraction strength ES = 1 − k*/|answer| (Wang et al., 2025, "Towards Effective
    Evaluations and Comparisons for LLM Unlearning Methods").

    k* is the shortest answer prefix after which teacher-forced argmax decoding reproduces every
    remaining answer token. The empty suffix always counts as reproduced, so k* = |answer| and
    ES = 0 when the last token is missed (open-unlearning's loop stops at k = |answer| − 1 and
    gives 1/|answer| there).

    Args:
        argmax_matches: Per answer token, whether the argmax prediction equals the token.

    Raises:
        ValueError: If the answer has no tokens.
    """
    matches = nonempty(argmax_matches, "argmax matches").astype(bool)
    misses = np.flatnonzero(~matches)
    k_star = 0 if misses.size == 0 else int(misses[-1]) + 1
    return 1.0 - k_star / matches.size


def exact_memorization(argmax_matches: Bools) -> float:
    """Exact memorization EM: the share of answer tokens the argmax reproduces under teacher
    forcing (Tirumala et al., 2022, "Memorization Without Overfitting"; used by open-unlearning).

    Raises:
        ValueError: If the answer has no tokens.
    """
    return float(np.mean(nonempty(argmax_matches, "argmax matches").astype(bool)))
