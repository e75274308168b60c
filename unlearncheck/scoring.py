"""Scoring: probes' answer probabilities read from models, with the batch size and the caches.

Readout: the normalized answer probability p̂ = p(answer) / Σ p(option) over the answer and its
distractors, with p = exp(mean log-probability of the option's tokens | prompt) (``token_mean``)
or exp(total log-probability) (``sum``). Every log-likelihood is kept in memory and, with
`use_score_cache`, in a SQLite file; reproducible generations (greedy, or sampled with a seed)
are cached there too. Scores read from that file are re-checked against the model
(`unlearncheck.cache_check`): a seeded sample of every read, and, through `cache_ledger` and
`confirm_cached`, every one a PASS rests on; a disagreement discards the file's contents with a
`ScoreCacheWarning`. A file SQLite cannot read is left aside with the same warning.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from unlearncheck.backends.capabilities import GeneratingModel, ScoringModel
from unlearncheck.cache_check import (
    CacheChecker,
    CachedGeneration,
    CacheLedger,
    GenerationMismatch,
    Mismatch,
    ScoreCacheWarning,
)
from unlearncheck.lengths import too_long
from unlearncheck.probes import Probe
from unlearncheck.score_cache import ScoreCache, ScoreCacheError

__all__ = [
    "AUTO_BATCH_SIZE",
    "GENERATION_BATCH_SIZE",
    "ProbeScores",
    "Readout",
    "Scorer",
    "cache_ledger",
    "confirm_cached",
    "forget_scores",
    "generate",
    "score_cache_path",
    "score_probes",
    "scored_requests",
    "set_batch_size",
    "use_score_cache",
]

#: How an option's log-likelihood is read: ``token_mean`` (mean log-probability per token, the
#: default: options of different lengths compete fairly) or ``sum`` (total log-probability, as
#: lm-evaluation-harness's ``acc``).
Readout = Literal["token_mean", "sum"]
_READOUTS: tuple[Readout, ...] = ("token_mean", "sum")

_batch_size = 64
#: The batch size ``auto``: where scoring starts; a model halves it on out-of-memory until a batch
#: fits and keeps what fitted (`unlearncheck.backends.hf.HFModel.batch_limit`).
AUTO_BATCH_SIZE = 512
#: Prompts per `generate` call of a model.
GENERATION_BATCH_SIZE = 32


def set_batch_size(size: int | Literal["auto"]) -> None:
    """Sequences per forward pass of every `Scorer` made without its own batch size (``auto``:
    `AUTO_BATCH_SIZE`, halved where it does not fit)."""
    global _batch_size
    if size == "auto":
        size = AUTO_BATCH_SIZE
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    _batch_size = size


#: Answer log-likelihoods computed so far: model key → (prompt, option) → (sum, tokens).
_LOGLIKELIHOODS: dict[str, dict[tuple[str, str], tuple[float, int]]] = {}
_score_cache: ScoreCache | None = None
#: Which scores in memory came from the disk cache, and which of those are re-checked.
_CHECK = CacheChecker()
_T = TypeVar("_T")
#: Batches scored between two commits to the on-disk cache (what an interruption can lose).
_BATCHES_PER_COMMIT = 4


def use_score_cache(path: Path | None) -> None:
    """Keep every log-likelihood in the SQLite cache at ``path`` too (None: memory only)."""
    global _score_cache
    if _score_cache is not None:
        _score_cache.close()
    _score_cache = ScoreCache(path) if path is not None else None


def forget_scores() -> None:
    """Drop the scores kept in this process (those in the on-disk cache stay)."""
    _LOGLIKELIHOODS.clear()
    _CHECK.forget()


@contextmanager
def cache_ledger() -> Iterator[CacheLedger]:
    """Count, while the block runs (one claim), the scores read from the disk cache and those
    re-checked (`CacheLedger`)."""
    previous, _CHECK.ledger = _CHECK.ledger, CacheLedger()
    try:
        yield _CHECK.ledger
    finally:
        _CHECK.ledger = previous


def confirm_cached() -> None:
    """Re-score every cached score used in the open `cache_ledger` that no check confirmed yet;
    on a disagreement, discard the cache (`CacheLedger.discarded` says why)."""
    mismatch = _CHECK.confirm(lambda key: _LOGLIKELIHOODS.get(key, {}), _batch_size)
    if mismatch is not None:
        _discard(mismatch)


def _disk(action: Callable[[ScoreCache], _T], default: _T) -> _T:
    """``action`` on the disk cache; ``default`` when there is none or it cannot be read (then
    it is left aside for the rest of the process, with a warning)."""
    global _score_cache
    if _score_cache is None:
        return default
    try:
        return action(_score_cache)
    except ScoreCacheError as error:
        warnings.warn(ScoreCacheWarning(f"{error}; going on without it"), stacklevel=3)
        _score_cache.close()
        _score_cache = None
        return default


def _discard(mismatch: Mismatch | GenerationMismatch) -> None:
    """Empty the disk cache whose scores disagree with the model, and drop every score read
    from it from memory, with a warning."""
    where = _score_cache.path if _score_cache is not None else "the score cache"
    message = f"{where}: {mismatch.describe()}; the cache was discarded and scored afresh"
    warnings.warn(ScoreCacheWarning(message), stacklevel=3)
    _disk(lambda cache: cache.clear(), None)
    for key, requests in _CHECK.from_disk().items():
        scores = _LOGLIKELIHOODS.get(key, {})
        for request in requests:
            scores.pop(request, None)
    _CHECK.forget()
    if _CHECK.ledger is not None:
        _CHECK.ledger.discarded = message
        _CHECK.ledger.used.clear()


def _read_disk(
    model: ScoringModel, key: str, missing: list[tuple[str, str]], batch_size: int
) -> dict[tuple[str, str], tuple[float, int]]:
    """The disk cache's scores of ``missing``, spot-checked ({} when it is off, unreadable, or
    discarded by the check)."""
    none: dict[tuple[str, str], tuple[float, int]] = {}
    hits = _disk(lambda cache: cache.get(key, missing), none)
    if not hits:
        return hits
    _CHECK.loaded(key, hits)
    mismatch = _CHECK.spot_check(model, key, hits, batch_size)
    if mismatch is None:
        return hits
    _discard(mismatch)
    return {}


def scored_requests(model: ScoringModel) -> list[tuple[str, str]]:
    """Every (prompt, continuation) scored on ``model`` in this process, sorted."""
    return sorted(_LOGLIKELIHOODS.get(_model_key(model), {}))


def score_cache_path() -> Path | None:
    """The file of the score cache in use (None: memory only)."""
    return _score_cache.path if _score_cache is not None else None


def _model_key(model: ScoringModel) -> str:
    """What identifies a model's scores: its device, content hash (weights, dtypes, quantization
    state and tokenizer) and, for a chat-format model, its format (the same prompt reads
    differently through the chat template)."""
    key = f"{getattr(model, 'device', '')}|{model.content_hash}"
    return f"{key}|chat" if getattr(model, "prompt_format", "plain") == "chat" else key


def generate(
    model: GeneratingModel,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int | None = None,
) -> list[list[str]]:
    """``model.generate`` with these arguments, read from the score cache when the same call was
    made on the same model before.

    Only reproducible calls are cached: greedy ones, and sampled ones with a seed (a sample
    without a seed is drawn afresh every time). The batch size is part of the call, since the
    samples of a seeded call depend on how prompts are batched (`GENERATION_BATCH_SIZE`).
    """

    def run() -> list[list[str]]:
        return model.generate(
            prompts,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            num_samples=num_samples,
            seed=seed,
            batch_size=GENERATION_BATCH_SIZE,
        )

    if not getattr(model, "cacheable", True) or (do_sample and seed is None):
        return run()
    options = [max_new_tokens, do_sample, temperature, top_p, num_samples, seed]
    call = json.dumps([list(prompts), options, GENERATION_BATCH_SIZE])
    digest, key = hashlib.sha256(call.encode()).hexdigest(), _model_key(model)
    cached = _disk(lambda cache: cache.get_generation(key, digest), None)
    if cached is None:
        cached = run()
        _disk(lambda cache: cache.put_generation(key, digest, cached), None)
    else:
        _CHECK.generation_used(
            f"{key}|{digest}", CachedGeneration(model.spec, tuple(prompts), cached, run)
        )
    return cached


class Scorer:
    """Batched option probabilities, each (model, prompt, option) scored once per process and,
    with `use_score_cache`, once per cache file."""

    def __init__(self, readout: Readout = "token_mean", batch_size: int | None = None) -> None:
        if readout not in _READOUTS:
            raise ValueError(f"unknown readout {readout!r}; expected one of {list(_READOUTS)}")
        self.readout = readout
        self.batch_size = batch_size or _batch_size

    def loglikelihoods(
        self, model: ScoringModel, requests: Sequence[tuple[str, str]]
    ) -> list[float]:
        """The readout's log-likelihood of each (prompt, continuation), computing only what is
        missing: the mean per token (``token_mean``) or the sum (``sum``)."""
        key = _model_key(model)
        known = _LOGLIKELIHOODS.setdefault(key, {})
        missing = sorted({r for r in requests if r not in known})
        cacheable = getattr(model, "cacheable", True)
        if missing and cacheable:
            known.update(_read_disk(model, key, missing, self.batch_size))
            missing = sorted({r for r in requests if r not in known})  # and what a discard dropped
        _CHECK.used(model, key, requests)
        step = self.batch_size * _BATCHES_PER_COMMIT
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            try:
                scores = model.score_answers(chunk, batch_size=self.batch_size)
            except IndexError as error:  # learned positions run out: name the long prompt
                raise too_long(model, chunk, error) from error
            for request, score in zip(chunk, scores, strict=True):
                known[request] = (score.logprob, score.n_tokens)
            if cacheable:
                rows = [(*r, *known[r]) for r in chunk]
                _disk(lambda cache: cache.put(key, rows), None)  # noqa: B023 (called at once)
        sums = [known[r] for r in requests]
        if self.readout == "sum":
            return [total for total, _ in sums]
        return [total / n for total, n in sums]

    def distributions(
        self, model: ScoringModel, items: Sequence[tuple[str, Sequence[str]]]
    ) -> list[np.ndarray]:
        """p̂ of every option (normalized over the options) for each (prompt, options)."""
        requests = [(prompt, f" {o}") for prompt, options in items for o in options]
        logp = np.array(self.loglikelihoods(model, requests))
        sizes = np.array([len(options) for _, options in items], dtype=int)
        starts = np.cumsum(sizes) - sizes
        out: list[np.ndarray] = [logp[:0]] * len(items)
        for size in np.unique(sizes):  # items of one option count as the rows of one array
            rows = np.flatnonzero(sizes == size)
            block = logp[starts[rows, None] + np.arange(size)]
            p = np.exp(block - block.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            for row, dist in zip(rows, p, strict=True):
                out[row] = dist
        return out


@dataclass(frozen=True)
class ProbeScores:
    """p̂ of a probe's answer on its prompt, and of every option on each control prompt.

    Attributes:
        target: p̂ of the answer on the probe's prompt.
        controls: ``controls[j][o]``: p̂ of option ``o`` (0 is the answer) on control prompt ``j``.
    """

    target: float
    controls: tuple[tuple[float, ...], ...]


def score_probes(scorer: Scorer, model: ScoringModel, probes: Sequence[Probe]) -> list[ProbeScores]:
    """Score every probe and its controls on ``model`` in one batched pass."""
    items: list[tuple[str, Sequence[str]]] = []
    for probe in probes:
        items.append((probe.prompt, probe.options))
        items += [(c, probe.options) for c in probe.control_prompts()]
    flat = scorer.distributions(model, items)
    out, at = [], 0
    for probe in probes:
        k = len(probe.controls)
        controls = tuple(tuple(float(x) for x in d) for d in flat[at + 1 : at + 1 + k])
        out.append(ProbeScores(float(flat[at][0]), controls))
        at += 1 + k
    return out
