"""The ``unlearncheck report`` and ``unlearncheck verify`` subcommands.

``report RUNLOG [-o OUT] [--sign-key KEY]`` renders a run log (with the case logs a killed pytest
session left next to it) into an HTML report and its evidence file; ``verify REPORT_OR_RUNLOG
[--key KEY]`` recomputes the evidence (`unlearncheck.verify`) and exits 0 when it is intact, 1
when something differs, 2 when there is nothing to check. Bad input (a run log line that is not a
UTF-8 JSON record, an output that would replace an input or a file unlearncheck did not write, a
key file too short) is reported with the file, line or option, and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    #: What ``add_subparsers`` returns: the subcommands' parsers.
    _Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_report", "add_verify", "report_command", "verify_command"]


def _fail(command: str, message: str) -> int:
    """Print ``unlearncheck COMMAND: MESSAGE`` to stderr; the exit status of bad input."""
    print(f"unlearncheck {command}: {message}", file=sys.stderr)
    return 2


def _output(args: argparse.Namespace) -> Path:
    """``-o``, else the run log's path (links followed) with suffix ``.html``."""
    if args.output is not None:
        return Path(args.output)
    return Path(os.path.realpath(args.runlog)).with_suffix(".html")


def _check_output(out: Path, inputs: dict[str, Path]) -> str | None:
    """Why ``out`` (or its evidence file) must not be written, or None."""
    from unlearncheck.integrity import evidence_path, is_evidence_file
    from unlearncheck.outputs import OutputPathError, check_replaceable
    from unlearncheck.report.render import is_report_file

    try:
        check_replaceable(out, inputs, is_report_file)
        evidence = evidence_path(Path(os.path.realpath(out)))
        check_replaceable(evidence, inputs, is_evidence_file)
    except OutputPathError as error:
        return f"-o/--output: {error}"
    return None


def report_command(args: argparse.Namespace) -> int:
    """Render the run log, with the case logs a killed pytest session left next to it."""
    from unlearncheck.integrity import KeyFileError, load_key
    from unlearncheck.report.render import render_report
    from unlearncheck.runlog import RunLogError, is_torn, leftover_case_logs, read_run

    leftovers = leftover_case_logs(args.runlog)
    if not args.runlog.exists() and not leftovers:
        return _fail("report", f"{args.runlog}: no such run log")
    inputs = {"the run log being read": args.runlog}
    inputs.update({f"a case log being read ({path.name})": path for path in leftovers})
    if args.sign_key is not None:
        inputs["the signing key (--sign-key)"] = args.sign_key
    out = _output(args)
    refused = _check_output(out, inputs)
    if refused:
        return _fail("report", refused)
    try:
        key = load_key(args.sign_key) if args.sign_key is not None else None
    except KeyFileError as error:
        return _fail("report", f"--sign-key: {error}")
    if leftovers:
        print(
            f"unlearncheck report: {args.runlog}: its run was killed before merging its case "
            f"logs; reading them too: {', '.join(path.name for path in leftovers)}",
            file=sys.stderr,
        )
    for path in [args.runlog, *leftovers]:
        if path.exists() and is_torn(path):
            print(
                f"unlearncheck report: {path}: the last line is cut short (its writer was "
                "killed while writing it); skipped",
                file=sys.stderr,
            )
    runlog = args.runlog if args.runlog.exists() else None
    try:
        written = render_report(
            read_run(args.runlog), out, runlog=runlog, case_logs=leftovers, key=key
        )
    except RunLogError as error:
        return _fail("report", str(error))
    print(written)
    return 0


def verify_command(args: argparse.Namespace) -> int:
    """Check a report's evidence; print each finding and whether the evidence is intact."""
    from unlearncheck.integrity import KeyFileError, load_key
    from unlearncheck.verify import VerifyError, intact, verify

    try:
        key = load_key(args.key) if args.key is not None else None
        findings = verify(args.path, key)
    except KeyFileError as error:
        return _fail("verify", f"--key: {error}")
    except VerifyError as error:
        return _fail("verify", str(error))
    labels = {True: "ok     ", False: "DIFFERS", None: "note   "}
    for finding in findings:
        print(f"{labels[finding.ok]} {finding.message}")
    if intact(findings):
        print("evidence intact")
        return 0
    differing = [finding.message for finding in findings if finding.ok is False]
    print(f"evidence NOT intact: {len(differing)} check(s) differ", file=sys.stderr)
    return 1


def add_report(commands: _Commands) -> None:
    """The ``report`` subcommand."""
    report = commands.add_parser(
        "report", help="render the HTML report (and its evidence file) of a run log"
    )
    report.add_argument("runlog", type=Path, help="run log (JSONL) written by a run")
    report.add_argument(
        "-o",
        "--output",
        type=Path,
        help="HTML path (default: the run log's path with suffix .html); an existing file is "
        "replaced only when it is an unlearncheck report",
    )
    report.add_argument(
        "--sign-key",
        type=Path,
        help="file holding a secret key (at least 32 bytes) to sign the evidence file with "
        "(HMAC-SHA256)",
    )
    report.set_defaults(run=report_command)


def add_verify(commands: _Commands) -> None:
    """The ``verify`` subcommand."""
    verify = commands.add_parser(
        "verify",
        help="check that a report's evidence is intact (exit 0), or say what differs (exit 1)",
    )
    verify.add_argument(
        "path", type=Path, help="a report, its run log or its .evidence.json (links followed)"
    )
    verify.add_argument("--key", type=Path, help="the key file the evidence was signed with")
    verify.set_defaults(run=verify_command)
