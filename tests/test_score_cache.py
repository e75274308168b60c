"""The on-disk score cache: a re-run computes nothing, a killed run resumes, endpoints stay out."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from unlearncheck import scoring
from unlearncheck.backends.hf import HFModel
from unlearncheck.backends.scoring import AnswerScore
from unlearncheck.cache_check import SPOT_CHECKS
from unlearncheck.score_cache import ScoreCache

WORDS = (
    *("the", "capital", "of", "france", "is", "paris", "germany"),
    *("berlin", "italy", "rome", "spain", "madrid", "city"),
)


def _requests(n: int) -> list[tuple[str, str]]:
    """``n`` distinct (prompt, continuation) pairs over the tiny checkpoint's vocabulary."""
    pairs = itertools.product(itertools.permutations(WORDS, 3), WORDS)
    return [(" ".join(prompt), f" {answer}") for prompt, answer in itertools.islice(pairs, n)]


class CountingModel:
    """Wraps an `HFModel` and counts the requests it is asked to score."""

    def __init__(self, model: HFModel) -> None:
        self.inner = model
        self.spec = model.spec
        self.device = model.device
        self.scored = 0

    @property
    def content_hash(self) -> str:
        return self.inner.content_hash

    def score_answers(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int = 64
    ) -> list[AnswerScore]:
        self.scored += len(requests)
        return self.inner.score_answers(requests, batch_size=batch_size)


@pytest.fixture
def fresh_judge_cache(tmp_path: Path, scores_in_memory_only: None) -> Iterator[Path]:
    """An empty in-process cache and a disk cache in ``tmp_path`` (the session's comes back)."""
    path = tmp_path / "scores.sqlite"
    scoring.use_score_cache(path)
    yield path
    scoring.forget_scores()


def test_cache_round_trip_and_bad_file(tmp_path: Path) -> None:
    cache = ScoreCache(tmp_path / "s.sqlite")
    cache.put("m", [("p", " a", -1.5, 2), ("p", " b", -0.25, 1)])
    assert cache.get("m", [("p", " a"), ("p", " b"), ("p", " c")]) == {
        ("p", " a"): (-1.5, 2),
        ("p", " b"): (-0.25, 1),
    }
    assert cache.get("other", [("p", " a")]) == {}
    assert len(cache) == 2
    cache.close()
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match=r"bad\.sqlite"):
        ScoreCache(bad)


def test_a_rerun_computes_nothing(tiny_checkpoint: Path, fresh_judge_cache: Path) -> None:
    requests = _requests(300)
    first = CountingModel(HFModel.load(str(tiny_checkpoint), device="cpu"))
    scores = scoring.Scorer(batch_size=16).loglikelihoods(first, requests)
    assert first.scored == 300
    scoring.forget_scores()  # a new process: only the disk remains
    again = CountingModel(HFModel.load(str(tiny_checkpoint), device="cpu"))
    assert scoring.Scorer(batch_size=16).loglikelihoods(again, requests) == scores
    assert again.scored == SPOT_CHECKS  # only the spot check of the cached scores
    summed = scoring.Scorer(readout="sum", batch_size=16).loglikelihoods(again, requests)
    assert again.scored == SPOT_CHECKS and len(summed) == len(scores)


def test_endpoint_scores_are_not_kept_on_disk(
    tiny_checkpoint: Path, fresh_judge_cache: Path
) -> None:
    model = CountingModel(HFModel.load(str(tiny_checkpoint), device="cpu"))
    model.cacheable = False  # type: ignore[attr-defined]
    scoring.Scorer(batch_size=16).loglikelihoods(model, _requests(20))
    assert len(ScoreCache(fresh_judge_cache)) == 0


_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from unlearncheck import scoring
    from unlearncheck.backends.hf import HFModel
    sys.path.insert(0, sys.argv[3])
    from test_score_cache import _requests

    class Slow:
        def __init__(self, model):
            self.inner, self.spec, self.device = model, model.spec, model.device
            self.content_hash = model.content_hash
        def score_answers(self, requests, *, batch_size):
            time.sleep(0.2)
            return self.inner.score_answers(requests, batch_size=batch_size)

    scoring.use_score_cache(Path(sys.argv[2]))
    model = Slow(HFModel.load(sys.argv[1], device="cpu"))
    scoring.Scorer(batch_size=8).loglikelihoods(model, _requests(2000))
    """
)


def test_a_killed_run_resumes_without_losing_a_committed_score(
    tiny_checkpoint: Path, fresh_judge_cache: Path
) -> None:
    scoring.use_score_cache(None)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WORKER,
            str(tiny_checkpoint),
            str(fresh_judge_cache),
            str(Path(__file__).parent),
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    deadline = time.monotonic() + 120
    stored = 0
    while stored < 200 and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.2)
        if fresh_judge_cache.exists():
            stored = len(ScoreCache(fresh_judge_cache))
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    stored = len(ScoreCache(fresh_judge_cache))
    assert 0 < stored < 2000, "the worker should have been killed halfway"

    scoring.use_score_cache(fresh_judge_cache)
    model = CountingModel(HFModel.load(str(tiny_checkpoint), device="cpu"))
    resumed = scoring.Scorer(batch_size=8).loglikelihoods(model, _requests(2000))
    assert model.scored == 2000 - stored + SPOT_CHECKS
    scoring.use_score_cache(None)
    scoring.forget_scores()
    fresh = scoring.Scorer(batch_size=8).loglikelihoods(
        HFModel.load(str(tiny_checkpoint), device="cpu"), _requests(2000)
    )
    assert resumed == pytest.approx(fresh, abs=1e-4)


class CountingGenerator(CountingModel):
    """A `CountingModel` that also counts the prompts it is asked to continue."""

    def __init__(self, model: HFModel) -> None:
        super().__init__(model)
        self.continued = 0

    def generate(self, prompts: Sequence[str], **options: Any) -> list[list[str]]:
        self.continued += len(prompts)
        return self.inner.generate(prompts, **options)


def test_seeded_and_greedy_generations_are_cached_unseeded_samples_are_not(
    tiny_checkpoint: Path, fresh_judge_cache: Path
) -> None:
    prompts = [prompt for prompt, _ in _requests(12)]
    sampled = {"do_sample": True, "temperature": 1.5, "num_samples": 3, "max_new_tokens": 4}
    first = CountingGenerator(HFModel.load(str(tiny_checkpoint), device="cpu"))
    seeded = scoring.generate(first, prompts, seed=7, **sampled)
    greedy = scoring.generate(first, prompts, max_new_tokens=4)
    assert first.continued == 24
    scoring.use_score_cache(fresh_judge_cache)  # as a new process would open it
    again = CountingGenerator(HFModel.load(str(tiny_checkpoint), device="cpu"))
    assert scoring.generate(again, prompts, seed=7, **sampled) == seeded
    assert scoring.generate(again, prompts, max_new_tokens=4) == greedy
    assert again.continued == 0
    other_seed = scoring.generate(again, prompts, seed=8, **sampled)
    assert again.continued == 12 and other_seed != seeded
    unseeded = [scoring.generate(again, prompts, **sampled) for _ in range(2)]
    assert again.continued == 36 and unseeded[0] != unseeded[1]
