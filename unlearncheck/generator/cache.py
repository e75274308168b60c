"""The on-disk cache of generator replies (SQLite): a re-run of the same generation asks nothing.

A reply is keyed by the SHA-256 of the request and of everything that decides its answer: the
endpoint and model (or the questioned model's spec and content hash) and the settings. The API key
is never part of a key or a value. Delete the file to generate afresh.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["CACHE_FILE", "GeneratorCache", "cache_key", "default_cache_path"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    reply TEXT NOT NULL
) WITHOUT ROWID;
"""
#: File name of the cache in the unlearncheck cache directory (next to the score cache).
CACHE_FILE = "generator.sqlite"


def default_cache_path() -> Path:
    """``generator.sqlite`` in the unlearncheck cache directory (``$UNLEARNCHECK_CACHE``)."""
    from unlearncheck.organism.zoo import cache_root

    return cache_root() / CACHE_FILE


def cache_key(**parts: Any) -> str:
    """SHA-256 of ``parts`` as canonical JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class GeneratorCache:
    """Replies by key, in the SQLite file ``path`` (None: in memory only, for this process)."""

    def __init__(self, path: Path | None) -> None:
        """Open (or create) the cache.

        Raises:
            ValueError: ``path`` is not a usable SQLite file.
        """
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                ":memory:" if path is None else path,
                timeout=60.0,
                isolation_level=None,
                check_same_thread=False,
            )
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as error:
            raise ValueError(
                f"{path}: not a usable unlearncheck generator cache: {error}"
            ) from error

    def get(self, key: str) -> Any | None:
        """The reply stored under ``key`` (None when there is none)."""
        row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, reply: Any) -> None:
        """Store ``reply`` (JSON-serializable) under ``key``."""
        self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, json.dumps(reply)))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        """Close the database (replies already put are on disk)."""
        self._db.close()
