"""Membership inference (the MUSE attack set) and MUSE's PrivLeak.

Scores keep their papers' orientation (LOSS and zlib: lower means member; Min-K% and Min-K%++:
higher means member); `mia_auc` orients them. `token_stats` and `mia_scores` compute the
per-token numbers with an `HFModel`, tokenized as `HFModel.score_answers` does.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import rankdata

from unlearncheck.metrics._common import Floats, k_count, nonempty, to_numpy

if TYPE_CHECKING:
    import torch

    from unlearncheck.backends.hf import HFModel

__all__ = [
    "MIA_DIRECTION",
    "MIAScores",
    "TokenStats",
    "auc",
    "loss_score",
    "mia_auc",
    "mia_scores",
    "min_k_percent",
    "min_k_plus_plus",
    "privleak",
    "token_stats",
    "zlib_score",
]


def loss_score(token_logprobs: Floats) -> float:
    """The LOSS attack score: mean negative log-likelihood per token; lower means member
    (Yeom et al., 2018, "Privacy Risk in Machine Learning")."""
    return float(-np.mean(nonempty(token_logprobs, "token log-probabilities")))


def zlib_score(text: str, loss: float) -> float:
    """The zlib attack score: loss / zlib-compressed length of the text in bytes; lower means
    member (Carlini et al., 2021, "Extracting Training Data from Large Language Models").

    The text is UTF-8 encoded and compressed with ``zlib.compress`` at its default level, as in
    the Min-K% and MUSE code.
    """
    return loss / len(zlib.compress(text.encode("utf-8")))


def min_k_percent(token_logprobs: Floats, k: float = 0.4) -> float:
    """Min-K% Prob: the mean of the lowest k share of token log-probs; higher means member
    (Shi et al., 2024, "Detecting Pretraining Data from Large Language Models").

    The lowest max(1, floor(k · n)) of the n tokens are averaged.
    """
    values = nonempty(token_logprobs, "token log-probabilities")
    return float(np.mean(np.sort(values)[: k_count(values.size, k)]))


def min_k_plus_plus(
    token_logprobs: Floats,
    mu: Floats,
    sigma: Floats,
    k: float = 0.4,
) -> float:
    """Min-K%++: the mean of the lowest k share of z_t = (log p_t − μ_t) / σ_t; higher means
    member (Zhang et al., 2025, "Min-K%++: Improved Baseline for Detecting Pre-Training Data").

    μ_t and σ_t are the mean and standard deviation of log p(v) for v drawn from the model's
    full next-token distribution at position t (`token_stats` computes them). Where σ_t = 0 all
    tokens the model can emit are equally likely, and z_t is taken as 0.

    Raises:
        ValueError: If the three sequences differ in length or are empty.
    """
    logprobs = nonempty(token_logprobs, "token log-probabilities")
    mean, std = np.asarray(mu, dtype=float), np.asarray(sigma, dtype=float)
    if not logprobs.shape == mean.shape == std.shape:
        raise ValueError("token_logprobs, mu and sigma must have the same length")
    z = np.divide(logprobs - mean, std, out=np.zeros_like(logprobs), where=std > 0)
    return float(np.mean(np.sort(z)[: k_count(z.size, k)]))


def auc(scores_members: Floats, scores_nonmembers: Floats) -> float:
    """ROC AUC of scores where higher means member: P(member score > non-member score), ties
    counted half; the Mann–Whitney U statistic over n_members · n_nonmembers (Mann & Whitney,
    1947; Hanley & McNeil, 1982).

    Raises:
        ValueError: If either group is empty.
    """
    members = nonempty(scores_members, "member scores")
    nonmembers = nonempty(scores_nonmembers, "non-member scores")
    ranks = rankdata(np.concatenate([members, nonmembers]))
    u = ranks[: members.size].sum() - members.size * (members.size + 1) / 2
    return float(u / (members.size * nonmembers.size))


def privleak(auc_model: float, auc_reference: float) -> float:
    """MUSE's PrivLeak = (AUC_u − AUC_r) / AUC_r × 100 (Shi et al., 2025, "MUSE").

    The AUCs are forget-vs-holdout AUCs as MUSE reports them (see `mia_auc`): about 0.5 on a
    model that never saw the forget set, near 0 on one that memorized it. So PrivLeak is about 0
    for good unlearning, strongly negative when the forget set is still memorized and positive
    when the unlearned model treats the forget set as more foreign than a retrained one does.

    Raises:
        ValueError: If ``auc_reference`` is 0.
    """
    if auc_reference == 0:
        raise ValueError("privleak is undefined for a reference AUC of 0")
    return (auc_model - auc_reference) / auc_reference * 100


@dataclass(frozen=True)
class TokenStats:
    """Per-token teacher-forced statistics of a text after a prompt.

    Attributes:
        logprobs: log p(token | prompt, earlier tokens), one per text token.
        argmax_matches: Whether the argmax of the next-token distribution is the token.
        mu: Mean of log p(v) over the next-token distribution: Σ_v p(v) log p(v).
        sigma: Standard deviation of log p(v) over it: sqrt(Σ_v p(v) (log p(v) − μ)²).
    """

    logprobs: np.ndarray
    argmax_matches: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per token."""
        return loss_score(self.logprobs)


def token_stats(
    model: HFModel, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16
) -> list[TokenStats]:
    """Per-token log-probs, argmax matches and next-token μ, σ of each text after its prompt.

    Tokenized as `HFModel.score_answers` does (so ``logprobs.sum()`` equals its ``logprob``):
    texts usually need a leading space, and an empty prompt means the tokenizer's BOS token.

    Args:
        model: The model.
        pairs: (prompt, text) pairs.
        batch_size: Sequences per forward pass.

    Returns:
        One `TokenStats` per pair, in input order.

    Raises:
        ValueError: If a text has no tokens or a prompt encodes to no tokens (an empty prompt
            with a tokenizer that has no BOS token).
    """
    import torch

    encoded = model.encode_requests(pairs)
    out: list[TokenStats | None] = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: -sum(map(len, encoded[i])))

    def read(batch: list[int]) -> None:
        ids, mask = model.pad([encoded[i][0] + encoded[i][1][:-1] for i in batch], left=False)
        with torch.inference_mode():
            logits = model.model(input_ids=ids, attention_mask=mask).logits
        for row, i in enumerate(batch):
            context, text = encoded[i]
            span = slice(len(context) - 1, len(context) - 1 + len(text))
            out[i] = _token_stats(logits[row, span], text)

    model.in_batches(order, batch_size, read)
    return [stats for stats in out if stats is not None]


def _token_stats(logits: torch.Tensor, text: list[int]) -> TokenStats:
    """`TokenStats` of ``text`` from the logits predicting each of its tokens."""
    import torch

    logp = logits.float().log_softmax(dim=-1)
    target = torch.tensor(text, device=logp.device)
    p = logp.exp()
    reachable = p > 0
    mu = (p * logp.where(reachable, 0.0)).sum(dim=-1)
    centered = (logp - mu[:, None]).where(reachable, 0.0)
    sigma = (p * centered.square()).sum(dim=-1).sqrt()
    return TokenStats(
        logprobs=to_numpy(logp.gather(1, target[:, None]).squeeze(1)),
        argmax_matches=(logp.argmax(dim=-1) == target).cpu().numpy(),
        mu=to_numpy(mu),
        sigma=to_numpy(sigma),
    )


@dataclass(frozen=True)
class MIAScores:
    """Membership-inference scores of one text, each in its paper's orientation.

    Attributes:
        loss: `loss_score` (lower means member).
        zlib: `zlib_score` (lower means member).
        min_k: `min_k_percent` (higher means member).
        min_k_plus_plus: `min_k_plus_plus` (higher means member).
    """

    loss: float
    zlib: float
    min_k: float
    min_k_plus_plus: float


#: +1 where a higher score means member, −1 where a lower one does.
MIA_DIRECTION: Mapping[str, int] = {"loss": -1, "zlib": -1, "min_k": 1, "min_k_plus_plus": 1}


def mia_scores(
    model: HFModel, texts: Sequence[str], *, k: float = 0.4, batch_size: int = 16
) -> list[MIAScores]:
    """LOSS, zlib, Min-K% and Min-K%++ scores of each text (the MUSE attack set; Shi et al.,
    2025), from one batched pass of `token_stats`.

    Each text is scored after the tokenizer's BOS token, so the tokenizer must have one.

    Args:
        model: The model.
        texts: Texts to score.
        k: Share of tokens Min-K% and Min-K%++ average.
        batch_size: Sequences per forward pass.
    """
    all_stats = token_stats(model, [("", text) for text in texts], batch_size=batch_size)
    return [
        MIAScores(
            loss=stats.loss,
            zlib=zlib_score(text, stats.loss),
            min_k=min_k_percent(stats.logprobs, k),
            min_k_plus_plus=min_k_plus_plus(stats.logprobs, stats.mu, stats.sigma, k),
        )
        for text, stats in zip(texts, all_stats, strict=True)
    ]


def mia_auc(forget: Sequence[MIAScores], holdout: Sequence[MIAScores]) -> dict[str, float]:
    """Per attack, the forget-vs-holdout AUC as MUSE reports it (Shi et al., 2025, "MUSE").

    MUSE takes the holdout texts as the positive class, so its AUC is 1 − the usual detection
    AUC of forget texts as members: about 0.5 when the model treats both sets alike, near 0 when
    it memorized the forget set. This is the input `privleak` expects.

    Returns:
        AUC per `MIAScores` field name.
    """
    aucs = {}
    for name, sign in MIA_DIRECTION.items():
        members = [sign * getattr(scores, name) for scores in forget]
        nonmembers = [sign * getattr(scores, name) for scores in holdout]
        aucs[name] = 1.0 - auc(members, nonmembers)
    return aucs
