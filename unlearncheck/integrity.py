"""Evidence integrity: file hashes, the machine a run ran on, and the evidence file of a report.

Next to every report, unlearncheck writes an evidence file (``<report stem>.evidence.json``):
the SHA-256 of the report and of every run-log file it was rendered from, and the run's identity
as its run log records it (the facts file's SHA-256, every model's content hash, package
versions, python, git revision, device and hardware). With a key (``--uc-sign-key``,
``unlearncheck report --sign-key``) the evidence file also carries an HMAC-SHA256 of its content
(Python's ``hmac`` module; the key is a file of at least 32 bytes, never written anywhere).
`unlearncheck.verify` recomputes all of it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "EVIDENCE_FORMAT",
    "MIN_KEY_BYTES",
    "NVIDIA_GPUS",
    "KeyFileError",
    "evidence_path",
    "file_digest",
    "gpu_names",
    "is_evidence_file",
    "key_id",
    "load_key",
    "machine",
    "run_identity",
    "sha256_file",
    "signature",
    "write_evidence",
]

#: The ``format`` entry of an evidence file.
EVIDENCE_FORMAT = "unlearncheck-evidence/1"
#: The least number of bytes a signing key file holds.
MIN_KEY_BYTES = 32
#: The header entries of a run log that make up the run's identity in its evidence.
_IDENTITY_KEYS = ("session", "versions", "python", "git", "facts", "device", "hardware")


class KeyFileError(ValueError):
    """A signing key file that cannot be used; the message names the file."""


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path, base: Path) -> dict[str, Any]:
    """``file`` (relative to ``base`` when inside it), ``sha256`` and ``bytes`` of a file."""
    path = Path(os.path.realpath(path))
    try:
        name = str(path.relative_to(Path(os.path.realpath(base))))
    except ValueError:
        name = str(path)
    return {"file": name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text("utf-8", errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() in ("model name", "Model", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


#: Where the NVIDIA driver describes each GPU (``<bus id>/information``, a ``Model:`` line).
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def gpu_names(driver: Path = NVIDIA_GPUS) -> list[str]:
    """The NVIDIA GPUs of the machine (from the driver's files under ``driver``, which start no
    CUDA; else from torch when it has already started CUDA in this process)."""
    names = []
    for info in sorted(driver.glob("*/information")):
        for line in info.read_text("utf-8", errors="replace").splitlines():
            if line.startswith("Model:"):
                names.append(line.partition(":")[2].strip())
    torch = sys.modules.get("torch")
    if not names and torch is not None and torch.cuda.is_initialized():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return names


def machine() -> dict[str, Any]:
    """The hardware of this machine: CPU model, logical CPU count, platform and GPU names."""
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "gpus": gpu_names(),
    }


def run_identity(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What a run log says about its run: the header's identity entries (`_IDENTITY_KEYS`) and
    every model record (role, spec, content hash), in order, without repeats."""
    identity: dict[str, Any] = {key: None for key in _IDENTITY_KEYS}
    models: list[dict[str, Any]] = []
    header_seen = False
    for record in records:
        if record.get("kind") == "run" and not header_seen:
            header_seen = True
            identity.update({key: record.get(key) for key in _IDENTITY_KEYS})
        elif record.get("kind") == "model":
            model = {key: record.get(key) for key in ("role", "spec", "content_hash")}
            if model not in models:
                models.append(model)
    return {**identity, "models": models}


def load_key(path: Path) -> bytes:
    """The signing key in a key file: its bytes, without surrounding whitespace.

    Raises:
        KeyFileError: The file cannot be read, or holds fewer than `MIN_KEY_BYTES` bytes.
    """
    try:
        key = Path(path).read_bytes().strip()
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read the key file: {error.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(
            f"{path}: a signing key needs at least {MIN_KEY_BYTES} bytes, this file holds "
            f'{len(key)} (make one with: python -c "import secrets; '
            f'print(secrets.token_hex(32))" > {path})'
        )
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (HMAC-SHA256 of a fixed text; reveals nothing of the key)."""
    return hmac.new(key, b"unlearncheck key id", hashlib.sha256).hexdigest()[:16]


def _canonical(evidence: Mapping[str, Any]) -> bytes:
    """The bytes an evidence file's signature covers: its entries but ``signature``, as JSON
    with sorted keys and no spaces."""
    content = {k: v for k, v in evidence.items() if k != "signature"}
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")


def signature(evidence: Mapping[str, Any], key: bytes) -> str:
    """The HMAC-SHA256 (hex) of an evidence file's content under ``key``."""
    return hmac.new(key, _canonical(evidence), hashlib.sha256).hexdigest()


def evidence_path(report: Path) -> Path:
    """The evidence file of a report or run log: same directory and stem, ``.evidence.json``."""
    return report.with_suffix(".evidence.json")


def is_evidence_file(path: Path) -> bool:
    """Whether ``path`` is an evidence file unlearncheck wrote (its ``format`` entry)."""
    try:
        return json.loads(path.read_text("utf-8")).get("format") == EVIDENCE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def write_evidence(
    report: Path, runlog: Path | None, case_logs: Sequence[Path] = (), key: bytes | None = None
) -> Path:
    """Write the evidence file of ``report``, rendered from ``runlog`` and the ``case_logs`` a
    killed session left (read with it): their digests and the run's identity as the run log
    records it, signed with ``key`` when one is given.

    Returns:
        The path of the evidence file.
    """
    from unlearncheck.outputs import write_whole
    from unlearncheck.runlog import read_runlog

    report = Path(os.path.realpath(report))
    base = report.parent
    present = runlog is not None and runlog.exists()
    evidence: dict[str, Any] = {
        "format": EVIDENCE_FORMAT,
        "report": file_digest(report, base),
        "runlog": file_digest(runlog, base) if present and runlog else None,
        "case_logs": [file_digest(path, base) for path in case_logs if path.exists()],
        "identity": run_identity(read_runlog(runlog) if present and runlog else []),
    }
    if key is not None:
        evidence["signature"] = {
            "algorithm": "hmac-sha256",
            "key_id": key_id(key),
            "value": signature(evidence, key),
        }
    path = evidence_path(report)
    # ASCII JSON: the identity holds untrusted text (model specs), lone surrogates included.
    write_whole(path, json.dumps(evidence, indent=2) + "\n")
    return path
