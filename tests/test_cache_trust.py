"""The score cache is checked against the model (`unlearncheck.cache_check`).

A cache whose log-likelihoods were edited is discarded with a warning and the claim is scored
afresh, so tampering never turns a FAIL into a PASS; a file with corrupt pages is left aside with
a warning instead of failing every claim with ``sqlite3.DatabaseError``; an honest cache gives the
verdicts it gave before, and each verdict records how many of its scores came from the cache and
how many were re-checked.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_score_cache import CountingModel, _requests

from unlearncheck import assert_forgotten, cache_check, scoring
from unlearncheck.attacks import Attack, direct, sampling
from unlearncheck.backends.hf import HFModel
from unlearncheck.cache_check import ScoreCacheWarning
from unlearncheck.facts import FactSet
from unlearncheck.score_cache import ScoreCache, ScoreCacheError


@pytest.fixture
def disk_cache(tmp_path: Path, scores_in_memory_only: None) -> Iterator[Path]:
    """An empty in-process cache and a disk cache in ``tmp_path`` (memory only afterwards)."""
    path = tmp_path / "scores.sqlite"
    scoring.use_score_cache(path)
    yield path
    scoring.use_score_cache(None)
    scoring.forget_scores()


def _tamper(path: Path) -> int:
    """Make every cached option of a prompt equally likely (a model that knows nothing)."""
    with sqlite3.connect(path) as db:
        return db.execute("UPDATE loglikelihoods SET logprob = -2.0 * n_tokens").rowcount


def _claim(  # type: ignore[no-untyped-def]
    model: Path, facts: FactSet, attacks: list[Attack] | None = None, **options: object
):
    return assert_forgotten(
        str(model),
        facts,
        attacks or [direct],
        raise_on_fail=False,
        on_inconclusive="return",
        **options,
    )


def test_a_tampered_cache_is_discarded_and_the_claim_fails_as_before(
    trained: Path, homes: FactSet, disk_cache: Path
) -> None:
    honest = _claim(trained, homes)
    assert honest.status == "FAIL"
    assert _tamper(disk_cache) > 100  # before the check: PASS on 6 of 6 facts, no warning
    scoring.forget_scores()  # a new process: only the disk remains
    with pytest.warns(ScoreCacheWarning, match=r"scores\.sqlite: .* differ from the model"):
        again = _claim(trained, homes)
    assert [f.status for f in again.facts] == [f.status for f in honest.facts]
    assert "discarded" in again.config["score_cache"]["discarded"]


def test_a_pass_rests_on_no_unchecked_cached_score(
    trained: Path, homes: FactSet, disk_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no spot checks, the check of every score a PASS rests on still finds the edit."""
    monkeypatch.setattr(cache_check, "SPOT_CHECKS", 0)
    honest = _claim(trained, homes)
    _tamper(disk_cache)
    scoring.forget_scores()
    with pytest.warns(ScoreCacheWarning, match="discarded"):
        again = _claim(trained, homes)
    assert again.status == honest.status == "FAIL"


def test_an_honest_cache_gives_the_same_verdicts_and_says_what_it_checked(
    tiny_checkpoint: Path, trained: Path, homes: FactSet, disk_cache: Path
) -> None:
    fails = _claim(trained, homes)
    passes = _claim(tiny_checkpoint, homes, original=str(trained))
    assert fails.config["score_cache"] == {
        "from_cache": 0,
        "rechecked": 0,
        "generations_from_cache": 0,
        "generations_rechecked": 0,
        "discarded": None,
    }
    scoring.forget_scores()
    passes_again = _claim(tiny_checkpoint, homes, original=str(trained))
    fails_again = _claim(trained, homes)
    assert fails_again.to_dict()["facts"] == fails.to_dict()["facts"]
    assert passes_again.to_dict()["facts"] == passes.to_dict()["facts"]
    assert "PASS" in {f.status for f in passes.facts}
    used = fails_again.config["score_cache"]
    assert used["from_cache"] > 100 and used["rechecked"] <= cache_check.SPOT_CHECKS
    checked = passes_again.config["score_cache"]  # a PASS: every cached score it used
    assert checked["rechecked"] == checked["from_cache"] > 100


def _silence(path: Path) -> int:
    """Replace every cached generation by empty continuations (a model that says nothing)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT model, call, continuations FROM generations").fetchall()
        for model, call, texts in rows:
            empty = json.dumps([["" for _ in row] for row in json.loads(texts)])
            db.execute(
                "UPDATE generations SET continuations = ? WHERE model = ? AND call = ?",
                (empty, model, call),
            )
    return len(rows)


def test_a_pass_rests_on_no_unchecked_cached_generation(
    trained: Path, homes: FactSet, disk_cache: Path
) -> None:
    """Samples edited to never say the answer are made again before the claim can PASS."""
    honest = _claim(trained, homes, attacks=[sampling])
    assert "FAIL" in {f.status for f in honest.facts}
    assert _silence(disk_cache) > 0
    scoring.forget_scores()
    with pytest.warns(ScoreCacheWarning, match="cached generation .* differs"):
        again = _claim(trained, homes, attacks=[sampling])
    assert [f.status for f in again.facts] == [f.status for f in honest.facts]
    assert "cached generation" in again.config["score_cache"]["discarded"]


def test_an_honest_cached_generation_is_made_again_once_before_a_pass(
    tiny_checkpoint: Path, trained: Path, homes: FactSet, disk_cache: Path
) -> None:
    first = _claim(tiny_checkpoint, homes, attacks=[sampling], original=str(trained))
    assert "PASS" in {f.status for f in first.facts}
    scoring.forget_scores()
    again = _claim(tiny_checkpoint, homes, attacks=[sampling], original=str(trained))
    assert again.to_dict()["facts"] == first.to_dict()["facts"]
    used = again.config["score_cache"]
    assert used["generations_rechecked"] == used["generations_from_cache"] > 0
    assert used["discarded"] is None


def test_a_discard_drops_the_cached_scores_already_in_memory(
    tiny_checkpoint: Path, disk_cache: Path
) -> None:
    model = HFModel.load(str(tiny_checkpoint), device="cpu")
    first, second = _requests(200)[:100], _requests(200)[100:]
    honest = scoring.Scorer(batch_size=16).loglikelihoods(model, first + second)
    scoring.forget_scores()
    assert scoring.Scorer(batch_size=16).loglikelihoods(model, first) == honest[:100]
    with sqlite3.connect(disk_cache) as db:  # the rows not yet read
        db.executemany(
            "UPDATE loglikelihoods SET logprob = 0 WHERE prompt = ? AND continuation = ?", second
        )
    with pytest.warns(ScoreCacheWarning, match="discarded"):
        again = scoring.Scorer(batch_size=16).loglikelihoods(model, first + second)
    assert again == pytest.approx(honest, abs=1e-4)


def _corrupt(path: Path) -> None:
    """Overwrite the middle pages of a checkpointed SQLite file with noise."""
    data = bytearray(path.read_bytes())
    assert len(data) > 16 * 4096
    data[8 * 4096 : len(data) - 4 * 4096] = bytes(range(256)) * ((len(data) - 12 * 4096) // 256)
    path.write_bytes(bytes(data))


def test_a_corrupt_cache_is_left_aside_with_a_warning(
    tiny_checkpoint: Path, disk_cache: Path
) -> None:
    model = CountingModel(HFModel.load(str(tiny_checkpoint), device="cpu"))
    honest = scoring.Scorer(batch_size=16).loglikelihoods(model, _requests(3000))
    scoring.use_score_cache(None)  # closed: everything in the main file
    _corrupt(disk_cache)
    scoring.use_score_cache(disk_cache)
    scoring.forget_scores()
    with pytest.raises(ScoreCacheError, match=r"scores\.sqlite: not a usable .* delete the file"):
        len(ScoreCache(disk_cache))  # reads every page
    with pytest.warns(ScoreCacheWarning, match=r"scores\.sqlite: not a usable .*going on without"):
        again = scoring.Scorer(batch_size=16).loglikelihoods(model, _requests(3000))
    assert again == pytest.approx(honest, abs=1e-4)
    assert scoring.score_cache_path() is None


def test_a_cache_folder_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ScoreCacheError, match=r"file/sub/scores\.sqlite: cannot create"):
        ScoreCache(blocker / "sub" / "scores.sqlite")
