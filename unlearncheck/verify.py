"""``unlearncheck verify``: recompute a report's evidence file and say whether the evidence is
intact.

Checked: the SHA-256 and size of the report and of every run-log file it was rendered from; the
run's identity in the evidence file against what the run log records (facts hash, model content
hashes, versions, device, hardware); the facts file, when it is still where the run read it; and
the HMAC-SHA256 signature, when a key is given. Without a key, anyone who can edit the files can
also rewrite their hashes in the evidence file: only a signature checked with the key shows that
the evidence file itself is the one the run wrote.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearncheck.integrity import (
    EVIDENCE_FORMAT,
    evidence_path,
    file_digest,
    key_id,
    run_identity,
    sha256_file,
    signature,
)

__all__ = ["Finding", "VerifyError", "find_evidence", "intact", "verify"]


class VerifyError(ValueError):
    """No evidence file to check (missing, unreadable, not an evidence file); names the path."""


@dataclass(frozen=True)
class Finding:
    """One thing `verify` checked.

    Attributes:
        ok: True: as recorded; False: differs (the evidence is not intact); None: not checked
            (the message says why).
        message: What was checked and what was found.
    """

    ok: bool | None
    message: str


def intact(findings: list[Finding]) -> bool:
    """Whether nothing differs."""
    return all(finding.ok is not False for finding in findings)


def find_evidence(path: Path) -> Path:
    """The evidence file of a report or a run log (links followed), or the evidence file itself:
    the one of the same stem, else for a run log the one in its directory that names it."""
    path = Path(os.path.realpath(path))
    if path.name.endswith(".evidence.json"):
        return path
    beside = evidence_path(path)
    if beside.exists():
        return beside
    for candidate in sorted(path.parent.glob("*.evidence.json")):
        try:
            runlog = json.loads(candidate.read_text("utf-8")).get("runlog") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(runlog, dict) and runlog.get("file") == path.name:
            return candidate
    return beside


def _load(path: Path) -> dict[str, Any]:
    """The evidence file at ``path``.

    Raises:
        VerifyError: Naming the file and what is wrong with it.
    """
    try:
        evidence = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise VerifyError(
            f"{path}: no evidence file (unlearncheck writes one next to each report it renders)"
        ) from None
    except (OSError, ValueError) as error:
        raise VerifyError(f"{path}: not a readable evidence file: {error}") from None
    if not isinstance(evidence, dict) or evidence.get("format") != EVIDENCE_FORMAT:
        raise VerifyError(f"{path}: not an evidence file (no format {EVIDENCE_FORMAT!r})")
    return evidence


def _check_file(recorded: dict[str, Any], base: Path, what: str) -> Finding:
    """Recompute one file's digest and compare it with the recorded one."""
    path = base / str(recorded.get("file"))
    if not path.exists():
        return Finding(False, f"{what} {path}: missing")
    now = file_digest(path, base)
    if now["sha256"] != recorded.get("sha256") or now["bytes"] != recorded.get("bytes"):
        return Finding(
            False,
            f"{what} {path}: DIFFERS: SHA-256 {now['sha256']} ({now['bytes']} bytes), recorded "
            f"{recorded.get('sha256')} ({recorded.get('bytes')} bytes)",
        )
    return Finding(True, f"{what} {path}: SHA-256 {now['sha256']} as recorded")


def _check_identity(evidence: dict[str, Any], base: Path) -> list[Finding]:
    """The run's identity in the evidence file against what its run log records."""
    from unlearncheck.runlog import read_runlog

    runlog = evidence.get("runlog")
    log = base / str(runlog.get("file")) if isinstance(runlog, dict) else None
    try:
        identity = run_identity(read_runlog(log) if log is not None else [])
    except (OSError, ValueError) as error:
        return [Finding(False, f"run log {log}: cannot be read: {error}")]
    recorded = evidence.get("identity") or {}
    differing = sorted(k for k in {*identity, *recorded} if identity.get(k) != recorded.get(k))
    if differing:
        return [
            Finding(
                False,
                f"identity: DIFFERS from the run log in {key}: recorded "
                f"{json.dumps(recorded.get(key))}, run log {json.dumps(identity.get(key))}",
            )
            for key in differing
        ]
    models = ", ".join(f"{m['role']} {m['content_hash']}" for m in identity["models"]) or "none"
    return [Finding(True, f"identity as the run log records it (models: {models})")]


def _check_facts(evidence: dict[str, Any]) -> Finding:
    """The facts file the run read, if it is still where it was."""
    facts = (evidence.get("identity") or {}).get("facts")
    if not facts:
        return Finding(None, "facts: no facts file recorded")
    path = Path(str(facts.get("path")))
    if not path.exists():
        return Finding(None, f"facts {path}: not on this machine; not checked")
    now = sha256_file(path)
    if now != facts.get("sha256"):
        return Finding(
            False, f"facts {path}: DIFFERS: SHA-256 {now}, recorded {facts.get('sha256')}"
        )
    return Finding(True, f"facts {path}: SHA-256 {now} as recorded")


def _check_signature(evidence: dict[str, Any], key: bytes | None) -> Finding:
    """The evidence file's signature under ``key``."""
    signed = evidence.get("signature")
    if not isinstance(signed, dict):
        if key is None:
            return Finding(None, "unsigned: the evidence file itself is not authenticated")
        return Finding(False, "signature: the evidence file is not signed, but a key was given")
    named = f"HMAC-SHA256, key id {signed.get('key_id')}"
    if key is None:
        return Finding(None, f"signed ({named}); not checked: pass the key with --key")
    if signed.get("key_id") != key_id(key):
        given = key_id(key)
        return Finding(False, f"signature: DIFFERS: signed by {named}, the key given is {given}")
    if signed.get("value") != signature(evidence, key):
        return Finding(False, f"signature ({named}): DIFFERS: the evidence file was changed")
    return Finding(True, f"signature ({named}) matches")


def verify(path: Path, key: bytes | None = None) -> list[Finding]:
    """Check the evidence of a report or run log (``path``) against the files.

    Raises:
        VerifyError: There is no readable evidence file for ``path``.
    """
    evidence_file = find_evidence(path)
    evidence = _load(evidence_file)
    base = evidence_file.parent
    findings = [Finding(None, f"evidence file {evidence_file}")]
    findings.append(_check_file(evidence.get("report") or {}, base, "report"))
    if evidence.get("runlog"):
        findings.append(_check_file(evidence["runlog"], base, "run log"))
    findings += [_check_file(case, base, "case log") for case in evidence.get("case_logs") or []]
    findings += _check_identity(evidence, base)
    findings.append(_check_facts(evidence))
    findings.append(_check_signature(evidence, key))
    return findings
