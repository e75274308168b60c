"""Output paths: each pytest session's own files, the stable ``latest`` links that point at them,
and the checks that keep an output from replacing an input or a file unlearncheck did not write.

A session writes its run log and report under names of its own, the configured name with the
session id before the suffix (``reports/unlearncheck.html`` → ``reports/unlearncheck.<id>.html``),
so that two sessions in one directory never touch each other's files. The configured name itself
is a symbolic link that the session points at its file (`point_latest`):
``reports/unlearncheck.html`` always opens the latest report. Only such a link is ever
replaced; any other file at that name (an input, an earlier version's report, a device node, a
directory) is refused by `check_latest_name` before any model loads.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = [
    "SESSION_PATTERN",
    "OutputPathError",
    "check_latest_name",
    "check_output_file",
    "check_replaceable",
    "is_latest_link",
    "new_session_id",
    "point_latest",
    "same_file",
    "session_file",
    "write_whole",
]

#: A session id: UTC start time, process id and four random hex digits (no dots, so that it
#: never splits a file name's suffix).
SESSION_PATTERN = r"\d{8}T\d{6}Z-\d+-[0-9a-f]{4}"


class OutputPathError(ValueError):
    """An output path that would replace an input or a file unlearncheck did not write; the
    message names the path (callers prefix the option)."""


def new_session_id() -> str:
    """A fresh session id (`SESSION_PATTERN`)."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{os.getpid()}-{secrets.token_hex(2)}"


def session_file(path: Path, session: str) -> Path:
    """The file of one session behind the stable name ``path``: the session id before the
    suffix (``run.jsonl`` → ``run.<session>.jsonl``)."""
    return path.with_name(f"{path.stem}.{session}{path.suffix}")


def is_latest_link(path: Path) -> bool:
    """Whether ``path`` is a link `point_latest` made: a symbolic link to a session file of the
    same name in the same directory."""
    if not path.is_symlink():
        return False
    target = os.readlink(path)
    pattern = re.escape(path.stem) + r"\." + SESSION_PATTERN + re.escape(path.suffix)
    return re.fullmatch(pattern, target) is not None


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (the same absolute path, or the same file on disk
    once links are followed)."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISFIFO: "a named pipe",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def _check_inputs(path: Path, inputs: Mapping[str, Path]) -> None:
    """Refuse ``path`` when it names one of the ``inputs`` (what it is → its path)."""
    for what, source in inputs.items():
        if same_file(path, source):
            raise OutputPathError(f"{path} is {what}; an output never replaces an input")


def check_latest_name(path: Path, inputs: Mapping[str, Path]) -> None:
    """Refuse a stable output name unless it is free or a link `point_latest` made.

    Args:
        path: The configured name (``--uc-report``, ``--uc-json``).
        inputs: The session's inputs, by what they are (``"the facts file (--uc-facts)"``).

    Raises:
        OutputPathError: Naming the path and what is there.
    """
    _check_inputs(path, inputs)
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputPathError(f"{path}: {parent} exists and is not a directory")
            break
    if is_latest_link(path):
        return
    if path.is_symlink():
        raise OutputPathError(
            f"{path} is a symbolic link unlearncheck did not make (to {os.readlink(path)}); "
            "it is never replaced: remove it or choose another path"
        )
    if not path.exists():
        return
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise OutputPathError(f"{path} exists and is {_kind(mode)}, not a regular file")
    raise OutputPathError(
        f"{path} exists and is a file unlearncheck did not write as its latest link (each "
        f"session writes {session_file(path, '<session>').name} and links {path.name} to it); "
        "it is never replaced: move it away or choose another path"
    )


def check_output_file(path: Path, inputs: Mapping[str, Path]) -> None:
    """Refuse an output file that names one of the ``inputs`` or exists and is not a regular
    file (a directory, a device node, a named pipe).

    Raises:
        OutputPathError: Naming the path and what is there.
    """
    _check_inputs(path, inputs)
    if path.exists() and not stat.S_ISREG(mode := path.stat().st_mode):
        raise OutputPathError(f"{path} exists and is {_kind(mode)}, not a regular file")


def check_replaceable(
    path: Path, inputs: Mapping[str, Path], written_by_us: Callable[[Path], bool]
) -> None:
    """Refuse an explicit output path unless it is free or a file of the kind it will hold that
    unlearncheck wrote (``written_by_us``: an earlier report re-rendered from its run log).

    Raises:
        OutputPathError: Naming the path and what is there.
    """
    _check_inputs(path, inputs)
    if not path.exists():
        if path.is_symlink():
            raise OutputPathError(f"{path} is a broken symbolic link; it is never replaced")
        return
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise OutputPathError(f"{path} exists and is {_kind(mode)}, not a regular file")
    if not written_by_us(path):
        raise OutputPathError(
            f"{path} exists and was not written by unlearncheck; it is never replaced: "
            "move it away or choose another path"
        )


def write_whole(path: Path, data: str) -> Path:
    """Write ``data`` (UTF-8) to ``path`` whole or not at all: through a temporary file next to
    it, renamed over it, and removed on any error. A link at ``path`` is followed (its target is
    the file written), so a `point_latest` link stays a link.

    Returns:
        The path written.
    """
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        partial.write_text(data, encoding="utf-8")
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def point_latest(link: Path, target: Path) -> None:
    """Point the stable name ``link`` at ``target`` (a session file in the same directory),
    atomically, replacing only a link `point_latest` made (checked again just before).

    Raises:
        OutputPathError: ``link`` became something else since the session started.
    """
    if link.exists() or link.is_symlink():
        check_latest_name(link, {})
    temporary = link.with_name(f".{link.name}.{target.name}.link")
    try:
        temporary.unlink(missing_ok=True)
        os.symlink(target.name, temporary)
        os.replace(temporary, link)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
