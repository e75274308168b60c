"""What every backend's scoring shares: the `AnswerScore` it returns and its batches (`chunks`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["AnswerScore", "chunks"]


@dataclass(frozen=True)
class AnswerScore:
    """How likely a model finds an answer given a prompt (teacher-forced).

    Attributes:
        logprob: Sum of log p(answer token | prompt, earlier answer tokens).
        n_tokens: Number of answer tokens.
        greedy_match: Whether the argmax prediction equals every answer token.
    """

    logprob: float
    n_tokens: int
    greedy_match: bool

    @property
    def mean_logprob(self) -> float:
        """Per-token mean log-probability of the answer."""
        return self.logprob / self.n_tokens


def chunks(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of at most ``size`` items (the batches of every backend)."""
    return (items[start : start + size] for start in range(0, len(items), size))
