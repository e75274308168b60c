"""A zoo build's processes and folders: trainers die with a killed builder, and the next build
removes the staging folders killed builds left, never one a live builder owns.

No zoo is trained: the trainer module is replaced by a sleeper, the build by a few file writes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from unlearncheck.organism.building import built_once, staging_prefix

#: A stand-in trainer: ``SEED OUT VARIANT...`` as the jobs module takes; writes its pid to OUT.
SLEEPER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    (Path(sys.argv[2]) / "trainer.pid").write_text(str(os.getpid()))
    time.sleep(120)
    """
)
#: A builder that runs one training job with the sleeper as its module.
BUILDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from unlearncheck.organism import zoo
    zoo._JOB_MODULE = "uc_sleeper"
    zoo._run_job(0, ["original"], Path(sys.argv[1]))
    """
)
#: A builder of ``TARGET`` whose build marks its staging folder, then takes two seconds.
SLOW_BUILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from unlearncheck.organism.building import built_once
    def build(staging):
        (staging / "marker").write_text("built by the first builder")
        time.sleep(2)
        (staging / "zoo.json").write_text("{}")
    built_once(Path(sys.argv[1]), build)
    """
)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie that no one reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _env(*paths: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), *sys.path])}


def _wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def trainer_pids() -> Iterator[list[int]]:
    """Pids of stand-in trainers, killed after the test if still running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_a_killed_builder_leaves_no_trainer_running(
    tmp_path: Path, trainer_pids: list[int]
) -> None:
    (tmp_path / "uc_sleeper.py").write_text(SLEEPER)
    staging = tmp_path / "staging"
    staging.mkdir()
    builder = subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(staging)], env=_env(tmp_path), cwd=tmp_path
    )
    pid_file = staging / "trainer.pid"
    assert _wait_for(pid_file.exists, 60), "the trainer did not start"
    trainer_pids.append(int(pid_file.read_text()))
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    # Before: the trainer went on (re-parented), and a rerun started more beside it.
    assert _wait_for(lambda: not _alive(trainer_pids[0]), 5), "the trainer outlived its builder"


def test_the_next_build_removes_stale_staging_folders_of_its_target(tmp_path: Path) -> None:
    target = tmp_path / "seed0-abc"
    stale = tmp_path / f"{staging_prefix(target)}killed"
    other = tmp_path / f"{staging_prefix(tmp_path / 'seed1-def')}building"
    for folder in (stale, other):
        folder.mkdir()
        (folder / "original").mkdir()
    built_once(target, lambda staging: (staging / "zoo.json").write_text("{}"))
    assert (target / "zoo.json").exists()
    assert not stale.exists()  # before: every killed build left its .building-* folder
    assert other.exists()  # another target's: its builder may be alive (it holds another lock)


def test_a_live_builders_staging_folder_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "seed0-abc"
    first = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILD, str(target)], env=_env(), cwd=tmp_path
    )
    try:
        assert _wait_for(lambda: any(tmp_path.glob(f"{staging_prefix(target)}*/marker")), 60)

        def fail(staging: Path) -> None:
            raise AssertionError("built twice")

        assert built_once(target, fail) == target  # waits for the first build, which won
        assert (target / "marker").exists()
    finally:
        assert first.wait(60) == 0
