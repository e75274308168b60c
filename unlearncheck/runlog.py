"""The run log: one JSONL file, the single source of truth of a run.

The first record holds the configuration, package versions, git revision and model hashes; then
one record per case result (a probe scored) and per verdict. Every record is flushed as it is
written, so an interrupted run keeps everything it computed.

Records hold untrusted text (model output, prompts, entity names). A record is one line of UTF-8
JSON whatever its text holds: JSON escapes line breaks and control characters, and `RunLog.write`
writes lone surrogates (which UTF-8 cannot encode) and the characters that some line readers take
for line breaks (U+0085, U+2028, U+2029) as ``\\u`` escapes too. Reading gives the text back as it
was written, except that a high surrogate followed by a low one reads back as the one character
the pair encodes, as in any JSON reader.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import platform
import re
import subprocess
from collections import Counter
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from unlearncheck.integrity import machine

__all__ = [
    "RunLog",
    "RunLogError",
    "case_log_path",
    "case_logs",
    "is_torn",
    "leftover_case_logs",
    "read_run",
    "read_runlog",
    "redact",
]


_PACKAGES = (
    "unlearncheck",
    "torch",
    "transformers",
    "bitsandbytes",
    "sentence-transformers",
    "openai",
)
_SECRET_MARKERS = ("key", "token", "secret", "password", "authorization")
#: Characters `RunLog.write` writes as JSON ``\u`` escapes although JSON allows them raw: lone
#: surrogates (not encodable in UTF-8) and separators that ``str.splitlines`` splits lines at.
_ESCAPED_IN_LOG = re.compile("[\ud800-\udfff\x85\u2028\u2029]")


def _package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a verdict depends on."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_revision(cwd: Path | None = None) -> str | None:
    """The git commit of the working directory (with ``-dirty`` when modified), if any."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


def redact(value: Any) -> Any:
    """``value`` with every mapping entry whose key names a secret replaced by ``"***"``."""
    if isinstance(value, dict):
        return {
            k: "***" if any(m in str(k).lower() for m in _SECRET_MARKERS) and v else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


class RunLog:
    """Appends JSON records to a file, flushing each; writes the header record once."""

    def __init__(self, path: str | Path, header: Mapping[str, Any] | None = None) -> None:
        """A run log at ``path``; ``header`` adds entries to its first record (when this
        object starts the file)."""
        self.path = Path(path)
        self._header = dict(header or {})
        self._file: TextIO | None = None
        self._models: set[str] = set()

    def _handle(self) -> TextIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            if new:
                self.write(
                    "run",
                    {
                        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                        "versions": _package_versions(),
                        "python": platform.python_version(),
                        "git": _git_revision(),
                        "hardware": machine(),
                        "pid": os.getpid(),
                        **self._header,
                    },
                )
        return self._file

    def start(self) -> None:
        """Create the file with its header record now (else done by the first `write`)."""
        self._handle()

    def write(self, kind: str, record: dict[str, Any]) -> None:
        """Append one record of ``kind`` (secrets redacted) and flush it to the OS, so a killed
        process loses nothing written (the file is synced to disk on `close`)."""
        handle = self._handle()
        line = json.dumps({"kind": kind, **redact(record)}, ensure_ascii=False, default=str)
        line = _ESCAPED_IN_LOG.sub(lambda char: f"\\u{ord(char.group()):04x}", line)
        handle.write(line + "\n")
        handle.flush()

    def model(self, role: str, spec: str, content_hash: str) -> None:
        """Record a model's identity once per run log."""
        key = f"{role}|{spec}|{content_hash}"
        if key not in self._models:
            self._models.add(key)
            self.write("model", {"role": role, "spec": spec, "content_hash": content_hash})

    def close(self) -> None:
        """Close the file (records are already on disk)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


class RunLogError(ValueError):
    """A run log line that is not a UTF-8 JSON record; the message names the file and line."""


def read_runlog(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a run log; a truncated last line (an interrupted write) is skipped.

    Raises:
        RunLogError: A line other than a truncated last one is not UTF-8 or not a JSON record
            (``path:line: ...``).
    """
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    last = len(lines) - 1  # the text after the last line break: empty unless cut short
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        cut_short = number - 1 == last
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            if cut_short:
                return
            raise RunLogError(
                f"{path}:{number}: not UTF-8 (byte 0x{raw[err.start]:02x} at column "
                f"{err.start + 1}); a run log is UTF-8 JSON, one record a line"
            ) from None
        except json.JSONDecodeError as err:
            if cut_short:
                return
            raise RunLogError(f"{path}:{number}: invalid run log record: {err.msg}") from None
        if not isinstance(record, dict):
            raise RunLogError(f"{path}:{number}: a run log record is a JSON object")
        yield record


def is_torn(path: str | Path) -> bool:
    """Whether the last line of a run log is cut short (its writer was killed while writing it;
    `read_runlog` skips it)."""
    with open(path, "rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def case_log_path(run_log: Path, session: str, process: str) -> Path:
    """Where one process of a pytest session appends the case records of its claims, next to the
    session's run log; the session merges them into ``run_log`` when it ends."""
    return run_log.with_name(f".{run_log.name}.{session}.{process}.cases")


def _followed(path: Path) -> Path:
    """``path``, or the file it links to (a stable name linked to a session's run log)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def case_logs(run_log: Path) -> dict[str, list[Path]]:
    """The case logs (`case_log_path`) next to ``run_log`` (the file it links to, for a link),
    by the session that wrote them."""
    run_log = _followed(run_log)
    prefix, suffix = f".{run_log.name}.", ".cases"
    by_session: dict[str, list[Path]] = {}
    for path in sorted(run_log.parent.glob(glob.escape(prefix) + "*" + suffix)):
        session, _, _ = path.name[len(prefix) : -len(suffix)].rpartition(".")
        by_session.setdefault(session, []).append(path)
    return by_session


def _header(run_log: Path) -> dict[str, Any] | None:
    """The first record of ``run_log`` (None: no run log, or its first line is not whole)."""
    if not run_log.exists():
        return None
    with open(run_log, "rb") as handle:
        first = handle.readline()
    try:
        header = json.loads(first.decode("utf-8")) if first.endswith(b"\n") else None
    except ValueError:  # not UTF-8, or not JSON
        return None
    return header if isinstance(header, dict) else None


def leftover_case_logs(run_log: Path) -> list[Path]:
    """Case logs that a killed session left unmerged: those of the session that wrote
    ``run_log`` or, when there is no run log with a whole header (the session was killed
    before its first verdict was written), those of the session that wrote last."""
    run_log = _followed(run_log)
    by_session = case_logs(run_log)
    header = _header(run_log)
    if header is not None:
        return by_session.get(str(header["session"]), []) if "session" in header else []
    if not by_session:
        return []
    return max(by_session.values(), key=lambda paths: max(p.stat().st_mtime_ns for p in paths))


def read_run(run_log: Path) -> Iterator[dict[str, Any]]:
    """The records of a run: those of its run log (when there is one), then the case records of
    its `leftover_case_logs` that the run log does not hold yet (a session killed while merging
    them has copied some)."""
    merged: Counter[str] = Counter()
    if run_log.exists():
        for record in read_runlog(run_log):
            if record.get("kind") == "case":
                merged[json.dumps(record, sort_keys=True)] += 1
            yield record
    for path in leftover_case_logs(run_log):
        for record in read_runlog(path):
            if record.get("kind") != "case":
                continue
            key = json.dumps(record, sort_keys=True)
            if merged[key]:
                merged[key] -= 1
            else:
                yield record
