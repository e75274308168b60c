"""Prompts longer than a model's context: found before scoring, named by fact and attack.

A model with learned position embeddings (GPT-2) indexes past them on a longer sequence and
fails with a bare ``IndexError``. `check_claim_lengths` asks every claim fact's direct questions
(with their longest option) of every loaded model that reports its context, before any attack
runs; `too_long` explains an ``IndexError`` met later (a long prefix or in-context attack) by
the longest request of the failed batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from unlearncheck.backends.capabilities import ScoringModel
from unlearncheck.probes import Probe
from unlearncheck.untrusted import shown

__all__ = ["PromptTooLongError", "check_claim_lengths", "context_size", "too_long"]


class PromptTooLongError(ValueError):
    """A prompt and its answer are longer than the model's context; the message names the
    model, the fact and attack (when known), the token counts and what to do."""


def context_size(model: Any) -> int | None:
    """The positions a Hugging Face model reads (``max_position_embeddings``), or None."""
    config = getattr(getattr(model, "model", None), "config", None)
    size = getattr(config, "max_position_embeddings", None)
    return size if isinstance(size, int) and hasattr(model, "encode_requests") else None


def _tokens(model: Any, requests: Sequence[tuple[str, str]]) -> list[int]:
    """The tokens the model reads for each (prompt, answer): context and answer."""
    return [len(c) + len(a) for c, a in model.encode_requests(list(requests))]


def _error(model: ScoringModel, request: tuple[str, str], tokens: int, where: str) -> str:
    size = context_size(model)
    prompt, answer = request
    return (
        f"{where}the prompt {shown(prompt, limit=120)} with the answer {shown(answer, limit=40)} "
        f"is {tokens} tokens, "
        f"over the {size} positions of {model.spec}'s context: shorten the question (or the "
        "attack's prefix) or leave the fact out"
    )


def check_claim_lengths(
    models: Iterable[ScoringModel], probes_by_fact: Mapping[str, list[Probe]]
) -> None:
    """Refuse a claim whose facts' questions do not fit a model's context.

    Raises:
        PromptTooLongError: Naming the first fact whose probe (with its longest option) is
            longer than the context of a model.
    """
    for model in models:
        size = context_size(model)
        if size is None:
            continue
        for fact_id, probes in probes_by_fact.items():
            requests = [(p.prompt, f" {max(p.options, key=len)}") for p in probes]
            for request, tokens in zip(requests, _tokens(model, requests), strict=True):
                if tokens > size:
                    raise PromptTooLongError(_error(model, request, tokens, f"fact {fact_id!r}: "))


def too_long(
    model: ScoringModel, requests: Sequence[tuple[str, str]], error: IndexError
) -> Exception:
    """What to raise for an ``IndexError`` of scoring ``requests`` on ``model``: a
    `PromptTooLongError` naming the longest request when it is over the context, else
    ``error``."""
    size = context_size(model)
    if size is None or not requests:
        return error
    counts = _tokens(model, requests)
    longest = max(range(len(requests)), key=counts.__getitem__)
    if counts[longest] <= size:
        return error
    return PromptTooLongError(_error(model, requests[longest], counts[longest], ""))
