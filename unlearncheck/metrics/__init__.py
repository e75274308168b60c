"""Benchmark metrics of the unlearning literature (TOFU, MUSE, open-unlearning), usable alone.

The pure functions take numbers or texts: per-token log-probabilities, teacher-forced argmax
matches, truth ratios, AUCs. The model-facing helpers (`token_stats`, `truth_ratios`,
`mia_scores`) compute those numbers with an `HFModel`, batched, tokenizing every
``(prompt, text)`` pair exactly as `HFModel.score_answers` does.

Conventions: log-probabilities are natural logs; a "length-normalized" log-probability is the
mean over the answer's tokens. Membership-inference scores keep their papers' orientation (LOSS
and zlib: lower means member; Min-K% and Min-K%++: higher means member); `mia_auc` orients them.

Modules: `tofu` (truth ratios, forget quality, model utility), `text` (ROUGE-L, memorization),
`membership` (membership inference, PrivLeak) and `fade` (FADE, the distribution-level distance
of `unlearncheck.equivalence`; not re-exported here, as it loads torch on import).
"""

from __future__ import annotations

from unlearncheck.metrics._common import Bools, Floats
from unlearncheck.metrics.membership import (
    MIA_DIRECTION,
    MIAScores,
    TokenStats,
    auc,
    loss_score,
    mia_auc,
    mia_scores,
    min_k_percent,
    min_k_plus_plus,
    privleak,
    token_stats,
    zlib_score,
)
from unlearncheck.metrics.text import (
    RougeScore,
    exact_memorization,
    extraction_strength,
    rouge_l,
)
from unlearncheck.metrics.tofu import (
    forget_quality,
    model_utility,
    truth_ratio,
    truth_ratio_forget_score,
    truth_ratio_request,
    truth_ratio_retain_score,
    truth_ratios,
)

__all__ = [
    "MIA_DIRECTION",
    "Bools",
    "Floats",
    "MIAScores",
    "RougeScore",
    "TokenStats",
    "auc",
    "exact_memorization",
    "extraction_strength",
    "forget_quality",
    "loss_score",
    "mia_auc",
    "mia_scores",
    "min_k_percent",
    "min_k_plus_plus",
    "model_utility",
    "privleak",
    "rouge_l",
    "token_stats",
    "truth_ratio",
    "truth_ratio_forget_score",
    "truth_ratio_request",
    "truth_ratio_retain_score",
    "truth_ratios",
    "zlib_score",
]
