"""A content-keyed, on-disk cache of answer log-likelihoods and generations (SQLite).

A row is keyed by the model's identity (device and the content hash of its weights and tokenizer)
with a digest of the scoring code (``backends/hf.py``, so that an upgrade never reuses scores
computed another way), the prompt and the continuation. It holds the total log-probability and the
token count: what ``ScoringModel.score_answers`` returns, before any readout. Rows are committed in
small chunks as they are computed, so a re-run of an unchanged suite computes nothing and a run
killed halfway resumes where it stopped. SQLite's write-ahead log lets pytest-xdist workers share
one file.

A file that SQLite cannot read (corrupt pages, not a database) raises `ScoreCacheError`, naming
the file and what to do; `unlearncheck.scoring` then warns and goes on without it. Whether the
scores in a readable file are the model's is checked by `unlearncheck.cache_check`.

Generations are kept per call: the model's key, a digest of the prompts and the generation
options (seed included), and the continuations. Only reproducible calls are stored (greedy, or
sampled with a seed; see `unlearncheck.scoring.generate`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

__all__ = ["ScoreCache", "ScoreCacheError"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


#: Digest of the code that computes the scores and generations; part of every key.
_SCORING_CODE = hashlib.sha256(
    (Path(__file__).parent / "backends" / "hf.py").read_bytes()
).hexdigest()[:16]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS loglikelihoods (
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    continuation TEXT NOT NULL,
    logprob REAL NOT NULL,
    n_tokens INTEGER NOT NULL,
    PRIMARY KEY (model, prompt, continuation)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS generations (
    model TEXT NOT NULL,
    call TEXT NOT NULL,
    continuations TEXT NOT NULL,
    PRIMARY KEY (model, call)
) WITHOUT ROWID;
"""
#: Requests looked up per SQL statement (below SQLite's default limit of host parameters).
_LOOKUP_CHUNK = 300


class ScoreCacheError(ValueError):
    """The score cache file cannot be created or read; the message names it and what to do."""


def _guarded(
    method: Callable[Concatenate[ScoreCache, _P], _T],
) -> Callable[Concatenate[ScoreCache, _P], _T]:
    """``method`` with SQLite's errors (a corrupt page, a locked file) as `ScoreCacheError`."""

    @wraps(method)
    def guarded(self: ScoreCache, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as error:
            raise ScoreCacheError(self.unusable(error)) from error

    return guarded


class ScoreCache:
    """Log-likelihoods of (model key, prompt, continuation) kept in the SQLite file ``path``.

    Raises:
        ScoreCacheError: When the file or its folder cannot be created, or SQLite cannot read it
            (on opening, or later from any method).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ScoreCacheError(
                f"{path}: cannot create the score cache's folder ({error.strerror}: "
                f"{error.filename}); give a writable path with --uc-cache (or off)"
            ) from error
        try:
            self._db = sqlite3.connect(path, timeout=60.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise ScoreCacheError(self.unusable(error)) from error

    def unusable(self, error: Exception) -> str:
        """Why the file cannot serve as a cache, and what to do."""
        return (
            f"{self.path}: not a usable unlearncheck score cache ({error}); delete the file "
            "(it is rebuilt as scores are computed) or point --uc-cache elsewhere"
        )

    @_guarded
    def get(
        self, model: str, requests: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[float, int]]:
        """The cached (logprob, n_tokens) of those ``requests`` that are in the cache."""
        found: dict[tuple[str, str], tuple[float, int]] = {}
        wanted = set(requests)
        prompts = sorted({prompt for prompt, _ in wanted})
        for start in range(0, len(prompts), _LOOKUP_CHUNK):
            chunk = prompts[start : start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT prompt, continuation, logprob, n_tokens FROM loglikelihoods "
                f"WHERE model = ? AND prompt IN ({marks})",
                [f"{_SCORING_CODE}|{model}", *chunk],
            )
            for prompt, continuation, logprob, n_tokens in rows:
                if (prompt, continuation) in wanted:
                    found[(prompt, continuation)] = (float(logprob), int(n_tokens))
        return found

    @_guarded
    def put(self, model: str, rows: Iterable[tuple[str, str, float, int]]) -> None:
        """Store (prompt, continuation, logprob, n_tokens) rows of ``model`` in one transaction."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO loglikelihoods VALUES (?, ?, ?, ?, ?)",
                [(f"{_SCORING_CODE}|{model}", p, c, lp, n) for p, c, lp, n in rows],
            )

    @_guarded
    def get_generation(self, model: str, call: str) -> list[list[str]] | None:
        """The continuations of a generation ``call`` (a digest) of ``model``, if cached."""
        row = self._db.execute(
            "SELECT continuations FROM generations WHERE model = ? AND call = ?",
            (f"{_SCORING_CODE}|{model}", call),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    @_guarded
    def put_generation(self, model: str, call: str, continuations: list[list[str]]) -> None:
        """Store the continuations of a generation ``call`` of ``model``."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO generations VALUES (?, ?, ?)",
                (f"{_SCORING_CODE}|{model}", call, json.dumps(continuations)),
            )

    @_guarded
    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM loglikelihoods").fetchone()[0])

    @_guarded
    def clear(self) -> None:
        """Delete every score and generation (a cache found to disagree with its model)."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM loglikelihoods")
            self._db.execute("DELETE FROM generations")

    def close(self) -> None:
        """Close the database (rows already put are on disk)."""
        self._db.close()
