"""Building a cached folder once across processes, with trainer processes that die with it.

`built_once` builds a folder (a zoo) into a staging folder beside it under a per-target lock, and
removes the staging folders that killed builds of the same target left: a builder holds the lock
while its staging folder exists, so once the lock is taken no live builder owns one.

`run_tied` runs a Python module in a child interpreter that ends when this process does, however
it ends (SIGKILL included): the child is started through ``python -m
unlearncheck.organism.building PARENT MODULE ARGS...``, which ties itself to ``PARENT``
(`tie_to_parent`) before running ``MODULE`` as ``__main__``. A killed build thus leaves no trainer
running, and the next build starts the only ones.

This module is not part of the zoo's recipe hash: how a zoo is built does not change its content.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["PARENT_POLL_SECONDS", "built_once", "run_tied", "staging_prefix", "tie_to_parent"]

#: How often a tied child checks that its parent is alive (where no death signal is available).
PARENT_POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def staging_prefix(target: Path) -> str:
    """The name prefix of ``target``'s staging folders (beside it)."""
    return f".building-{target.name}-"


def built_once(target: Path, build: Callable[[Path], None]) -> Path:
    """``target``, built by ``build`` into a staging folder beside it unless it already holds a
    ``zoo.json``; a lock makes processes that ask at once wait for one build, a failed build
    leaves nothing behind, and staging folders of killed builds of ``target`` are removed."""
    if (target / "zoo.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "zoo.json").exists():
            for stale in target.parent.glob(f"{staging_prefix(target)}*"):
                shutil.rmtree(stale, ignore_errors=True)  # its builder died holding the lock
            staging = Path(tempfile.mkdtemp(prefix=staging_prefix(target), dir=target.parent))
            try:
                build(staging)
                if target.exists():
                    shutil.rmtree(target)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def run_tied(module: str, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """``python -m module args...`` in a child that dies with this process; its output captured.

    The child shares this process's group (Ctrl-C reaches it) and is tied to this process's pid
    (`tie_to_parent`), so a SIGKILL of the builder ends it too.
    """
    command = [sys.executable, "-m", __name__, str(os.getpid()), module, *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def tie_to_parent(parent: int) -> None:
    """End this process when process ``parent`` is gone.

    On Linux the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); a
    daemon thread also polls ``os.getppid()`` every `PARENT_POLL_SECONDS` (other systems, and a
    parent that died before the ``prctl``).
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


def _main(argv: list[str]) -> None:
    """``PARENT MODULE ARGS...``: tie to ``PARENT``, then run ``MODULE`` as ``__main__``."""
    parent, module, *args = argv
    tie_to_parent(int(parent))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
