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
import json
import os
import platform
import re
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

PACKAGES = (
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


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a verdict depends on."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(cwd: Path | None = None) -> str | None:
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

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
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
                        "versions": package_versions(),
                        "python": platform.python_version(),
                        "git": git_revision(),
                        "pid": os.getpid(),
                    },
                )
        return self._file

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


def read_runlog(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a run log; a truncated last line (an interrupted write) is skipped."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not line.endswith("\n"):
                return
            raise ValueError(f"{path}:{number}: invalid run log record: {err.msg}") from err
