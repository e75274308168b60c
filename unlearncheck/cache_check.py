"""Trust in the on-disk score cache: cached log-likelihoods re-checked against the model.

A score cache is a plain SQLite file that CI restores from other branches and anyone can edit, so
a score read from it is a claim about the model, not a fact. Two checks hold it to the model:

* **Spot checks.** Each time scores are read from the disk cache, a seeded sample of them
  (`SPOT_CHECKS` a read) is scored afresh.
* **Decisive checks.** Before a claim with a PASS ends, every score it read from the disk cache
  that no check has confirmed yet is scored afresh, and every generation call it read from the
  disk cache (greedy, or sampled with a seed) is made again (`CacheChecker.confirm`): a PASS
  never rests on an unchecked cached score or generation. (A tampered cache can also make a
  claim FAIL or INCONCLUSIVE wrongly; the spot checks are what catch that for scores.)

A cached score agrees with a fresh one when both have the same token count and their total
log-probabilities differ by at most `ATOL` + `RTOL` × |fresh| (batching and padding move a
score by far less on CPU); a cached generation agrees when the call made again gives the same
texts (a seeded call is reproducible). One disagreement discards the whole cache
(`unlearncheck.scoring`):
a warning names the file and the score, and the claim is decided again on fresh scores.
Scores that agree keep their cached value, so an honest cache gives the verdicts it gave before.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from unlearncheck.backends.capabilities import ScoringModel

__all__ = [
    "ATOL",
    "RTOL",
    "SPOT_CHECKS",
    "CacheChecker",
    "CacheLedger",
    "CachedGeneration",
    "GenerationMismatch",
    "Mismatch",
    "ScoreCacheWarning",
    "agrees",
]

#: Cached scores re-scored each time scores are read from the disk cache.
SPOT_CHECKS = 8
#: Absolute tolerance (nats) between a cached and a fresh total log-probability.
ATOL = 0.05
#: Relative tolerance between a cached and a fresh total log-probability.
RTOL = 0.01

Request = tuple[str, str]
Score = tuple[float, int]


class ScoreCacheWarning(UserWarning):
    """The score cache was discarded (its scores disagree with the model) or cannot be read."""


def agrees(cached: Score, fresh: Score) -> bool:
    """Whether a cached (logprob, n_tokens) matches a fresh one within `ATOL` and `RTOL`."""
    return cached[1] == fresh[1] and abs(cached[0] - fresh[0]) <= ATOL + RTOL * abs(fresh[0])


@dataclass(frozen=True)
class Mismatch:
    """Cached scores of a model that disagree with the model.

    Attributes:
        spec: The model's spec.
        bad: How many of the re-scored requests disagree.
        checked: How many requests were re-scored.
        request: The first (prompt, continuation) that disagrees.
        cached: Its cached (logprob, n_tokens).
        fresh: Its fresh (logprob, n_tokens).
    """

    spec: str
    bad: int
    checked: int
    request: Request
    cached: Score
    fresh: Score

    def describe(self) -> str:
        """One sentence for the warning."""
        prompt, continuation = self.request
        return (
            f"{self.bad} of {self.checked} cached log-likelihoods of {self.spec} re-scored differ "
            f"from the model (e.g. {continuation!r} after {prompt[-60:]!r}: cached "
            f"{self.cached[0]:.4f} over {self.cached[1]} tokens, model {self.fresh[0]:.4f} over "
            f"{self.fresh[1]})"
        )


@dataclass(frozen=True)
class GenerationMismatch:
    """A cached generation call of a model that, made again, gives other texts.

    Attributes:
        spec: The model's spec.
        prompt: The first prompt whose continuations differ.
        cached: Its cached continuations.
        fresh: Its continuations made again.
    """

    spec: str
    prompt: str
    cached: list[str]
    fresh: list[str]

    def describe(self) -> str:
        """One sentence for the warning."""
        return (
            f"a cached generation of {self.spec} differs from the model's (after "
            f"{self.prompt[-60:]!r}: cached {self.cached[:2]!r}, model {self.fresh[:2]!r})"
        )


@dataclass(frozen=True)
class CachedGeneration:
    """A generation call read from the disk cache, and how to make it again.

    Attributes:
        spec: The model's spec.
        prompts: The call's prompts.
        continuations: The cached continuations, per prompt.
        again: Makes the call on the model.
    """

    spec: str
    prompts: tuple[str, ...]
    continuations: list[list[str]]
    again: Callable[[], list[list[str]]]

    def check(self) -> GenerationMismatch | None:
        """Make the call again; the first prompt whose continuations differ, if any."""
        fresh = self.again()
        for prompt, cached, made in zip(self.prompts, self.continuations, fresh, strict=True):
            if cached != made:
                return GenerationMismatch(self.spec, prompt, cached, made)
        return None


@dataclass
class CacheLedger:
    """What one claim read from the disk cache, and how much of it was re-scored.

    Attributes:
        rechecked: Cached scores re-scored while the claim ran (spot and decisive checks).
        discarded: Why the cache was discarded during the claim, or None.
        used: Model key → (model, the cached requests the claim used).
        generations: Call key → the cached generation calls the claim used.
        generations_rechecked: Cached generation calls made again while the claim ran.
    """

    rechecked: int = 0
    discarded: str | None = None
    used: dict[str, tuple[ScoringModel, set[Request]]] = field(default_factory=dict)
    generations: dict[str, CachedGeneration] = field(default_factory=dict)
    generations_rechecked: int = 0

    @property
    def from_cache(self) -> int:
        """Distinct (model, request) scores the claim used that were read from the disk cache."""
        return sum(len(requests) for _, requests in self.used.values())

    def summary(self) -> dict[str, Any]:
        """The record kept in the verdict's configuration (``score_cache``)."""
        return {
            "from_cache": self.from_cache,
            "rechecked": self.rechecked,
            "generations_from_cache": len(self.generations),
            "generations_rechecked": self.generations_rechecked,
            "discarded": self.discarded,
        }


class CacheChecker:
    """Which scores in memory were read from the disk cache, and which are still unchecked."""

    def __init__(self) -> None:
        self._from_disk: dict[str, set[Request]] = {}
        self._unchecked: dict[str, set[Request]] = {}
        #: Generation calls read from the disk cache and confirmed by making them again.
        self._confirmed_calls: set[str] = set()
        self.ledger: CacheLedger | None = None

    def from_disk(self) -> Mapping[str, set[Request]]:
        """Model key → the requests whose score in memory came from the disk cache."""
        return self._from_disk

    def forget(self) -> None:
        """Forget every provenance (the scores in memory that came from disk were dropped)."""
        self._from_disk.clear()
        self._unchecked.clear()
        self._confirmed_calls.clear()

    def loaded(self, key: str, requests: Iterable[Request]) -> None:
        """Note scores of model ``key`` just read from the disk cache."""
        found = set(requests)
        self._from_disk.setdefault(key, set()).update(found)
        self._unchecked.setdefault(key, set()).update(found)

    def used(self, model: ScoringModel, key: str, requests: Iterable[Request]) -> None:
        """Note, in the open claim's ledger, the cached scores among ``requests``."""
        if self.ledger is None or key not in self._from_disk:
            return
        cached = self._from_disk[key].intersection(requests)
        if cached:
            self.ledger.used.setdefault(key, (model, set()))[1].update(cached)

    def generation_used(self, call: str, generation: CachedGeneration) -> None:
        """Note, in the open claim's ledger, a generation ``call`` (its key) read from the disk
        cache, unless an earlier check confirmed it."""
        if self.ledger is not None and call not in self._confirmed_calls:
            self.ledger.generations[call] = generation

    def spot_check(
        self, model: ScoringModel, key: str, hits: Mapping[Request, Score], batch_size: int
    ) -> Mismatch | None:
        """Re-score a sample of ``hits`` (seeded by their digest); the disagreement, if any."""
        ordered = sorted(hits)
        seed = hashlib.sha256(repr((key, ordered[0], ordered[-1])).encode()).digest()
        sample = random.Random(seed).sample(ordered, min(SPOT_CHECKS, len(ordered)))
        return self._check(model, key, {r: hits[r] for r in sample}, batch_size)

    def confirm(
        self, lookup: Callable[[str], Mapping[Request, Score]], batch_size: int
    ) -> Mismatch | GenerationMismatch | None:
        """Re-score every unchecked cached score the open claim used (``lookup(key)`` gives a
        model's scores in memory) and make its unchecked cached generation calls again; the
        first disagreement, if any."""
        assert self.ledger is not None, "confirm runs inside a claim's ledger"
        for key, (model, used) in self.ledger.used.items():
            todo = used & self._unchecked.get(key, set())
            if todo:
                scores = lookup(key)
                mismatch = self._check(model, key, {r: scores[r] for r in todo}, batch_size)
                if mismatch is not None:
                    return mismatch
        for call, generation in self.ledger.generations.items():
            if call in self._confirmed_calls:
                continue
            self.ledger.generations_rechecked += 1
            different = generation.check()
            if different is not None:
                return different
            self._confirmed_calls.add(call)
        return None

    def _check(
        self, model: ScoringModel, key: str, cached: Mapping[Request, Score], batch_size: int
    ) -> Mismatch | None:
        """Score ``cached``'s requests afresh and compare; they are checked afterwards."""
        requests = sorted(cached)
        fresh = [
            (s.logprob, s.n_tokens) for s in model.score_answers(requests, batch_size=batch_size)
        ]
        self._unchecked.get(key, set()).difference_update(requests)
        if self.ledger is not None:
            self.ledger.rechecked += len(requests)
        bad = [(r, f) for r, f in zip(requests, fresh, strict=True) if not agrees(cached[r], f)]
        if not bad:
            return None
        request, score = bad[0]
        return Mismatch(model.spec, len(bad), len(requests), request, cached[request], score)
