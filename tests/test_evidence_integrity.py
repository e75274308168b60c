"""Evidence integrity: output paths that never replace what a run did not write, sessions that
keep their own files, and reports whose evidence ``unlearncheck verify`` recomputes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from unlearncheck import assert_forgotten, cli
from unlearncheck.attacks import direct
from unlearncheck.facts import FactSet
from unlearncheck.integrity import gpu_names, machine
from unlearncheck.outputs import OutputPathError, check_latest_name, point_latest
from unlearncheck.report import render_report
from unlearncheck.runlog import RunLog, read_runlog

CHECKOUT = Path(__file__).resolve().parent.parent
MODEL_HASH = "ab" * 32
KEY = "0123456789abcdef" * 4


def write_log(path: Path, facts: Path | None = None) -> Path:
    """A run log of one passing claim, its header naming ``facts`` (and the cpu device)."""
    header: dict[str, Any] = {"device": "cpu", "session": "s"}
    if facts is not None:
        header["facts"] = {
            "path": str(facts),
            "sha256": hashlib.sha256(facts.read_bytes()).hexdigest(),
        }
    log = RunLog(path, header=header)
    log.model("model", "organism:npo", MODEL_HASH)
    config = {"kind": "forgotten", "attacks": ["direct"], "model": "organism:npo"}
    log.write("verdict", {"claim": "c", "status": "PASS", "facts": [], "config": config})
    log.close()
    return path


def verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit status and output (stdout and stderr) of ``unlearncheck verify ARGV``."""
    capsys.readouterr()
    status = cli.main(["verify", *argv])
    out = capsys.readouterr()
    return status, out.out + out.err


def flip_byte(path: Path, text: bytes) -> None:
    """Change one byte of ``path``: the first byte of ``text`` in it."""
    data = bytearray(path.read_bytes())
    at = data.index(text)
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_catches_a_one_byte_edit_of_the_run_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "run.jsonl")
    report = render_report(log, tmp_path / "run.html")
    status, out = verify(capsys, str(report))
    assert status == 0 and out.rstrip().endswith("evidence intact"), out
    assert verify(capsys, str(log))[0] == 0  # the run log finds its evidence file too

    flip_byte(log, b"PASS")  # the verdict now reads "QASS"
    status, out = verify(capsys, str(report))
    assert status == 1, out
    assert f"DIFFERS run log {log}: DIFFERS: SHA-256" in out and "evidence NOT intact" in out
    assert f"ok      report {report}" in out  # only the run log differs


def test_verify_catches_an_edited_report_and_an_edited_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = render_report(write_log(tmp_path / "run.jsonl"), tmp_path / "run.html")
    evidence = tmp_path / "run.evidence.json"
    saved = report.read_bytes(), evidence.read_bytes()
    flip_byte(report, b"PASS")
    status, out = verify(capsys, str(report))
    assert status == 1 and f"report {report}: DIFFERS" in out

    report.write_bytes(saved[0])
    recorded = json.loads(saved[1])
    recorded["identity"]["models"][0]["content_hash"] = "cd" * 32  # claims another model
    evidence.write_text(json.dumps(recorded))
    status, out = verify(capsys, str(report))
    assert status == 1 and "identity: DIFFERS from the run log in models" in out


def test_the_report_and_its_evidence_carry_hashes_versions_device_and_hardware(
    tmp_path: Path,
) -> None:
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"id": "a", "subject": "A", "relation": "r", "object": "B"}\n')
    log = write_log(tmp_path / "run.jsonl", facts)
    page = render_report(log, tmp_path / "run.html").read_text("utf-8")
    evidence = json.loads((tmp_path / "run.evidence.json").read_text())
    log_hash = hashlib.sha256(log.read_bytes()).hexdigest()
    facts_hash = hashlib.sha256(facts.read_bytes()).hexdigest()
    hardware = machine()
    for text in (log_hash, facts_hash, MODEL_HASH, "unsigned", hardware["cpu"]):
        assert text in page
    assert f"({hardware['cpu_count']} CPUs)" in page and "<th>device</th><td>cpu</td>" in page
    for package in ("unlearncheck", "torch", "transformers"):
        assert f"<code>{package} " in page
    assert evidence["runlog"] == {
        "file": "run.jsonl",
        "sha256": log_hash,
        "bytes": log.stat().st_size,
    }
    identity = evidence["identity"]
    assert identity["facts"] == {"path": str(facts), "sha256": facts_hash}
    assert identity["models"] == [
        {"role": "model", "spec": "organism:npo", "content_hash": MODEL_HASH}
    ]
    assert identity["hardware"] == hardware and identity["device"] == "cpu"
    assert {"unlearncheck", "torch", "transformers"} <= set(identity["versions"])


def test_gpu_names_come_from_the_nvidia_driver(tmp_path: Path) -> None:
    for bus, model in (("0000:41:00.0", "NVIDIA H100 80GB HBM3"), ("0000:01:00.0", "NVIDIA A10")):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(f"Model: \t\t {model}\nIRQ:   42\n")
    assert gpu_names(tmp_path) == ["NVIDIA A10", "NVIDIA H100 80GB HBM3"]
    import torch

    if not torch.cuda.is_initialized():  # else torch names the GPUs it started
        assert gpu_names(tmp_path / "none") == []


def test_a_signed_evidence_file_is_checked_with_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, other, short = tmp_path / "key", tmp_path / "other", tmp_path / "short"
    key.write_text(KEY + "\n")
    other.write_text(KEY[::-1])
    short.write_text("tooshort")
    log = write_log(tmp_path / "run.jsonl")
    assert cli.main(["report", str(log), "--sign-key", str(key)]) == 0
    report = tmp_path / "run.html"  # the default: next to the run log
    assert "signed (HMAC-SHA256, key id " in report.read_text("utf-8")
    assert verify(capsys, str(report), "--key", str(key))[0] == 0
    status, out = verify(capsys, str(report))
    assert status == 0 and "not checked: pass the key with --key" in out
    assert verify(capsys, str(report), "--key", str(other))[0] == 1
    status, out = verify(capsys, str(report), "--key", str(short))
    assert status == 2 and f"unlearncheck verify: --key: {short}: a signing key needs" in out

    # Whoever edits the run log and rewrites its hash in the evidence file, without the key:
    flip_byte(log, b"PASS")
    evidence_file = tmp_path / "run.evidence.json"
    evidence = json.loads(evidence_file.read_text())
    evidence["runlog"]["sha256"] = hashlib.sha256(log.read_bytes()).hexdigest()
    evidence_file.write_text(json.dumps(evidence))
    assert verify(capsys, str(report))[0] == 0  # the hashes agree: only the key tells
    status, out = verify(capsys, str(report), "--key", str(key))
    assert status == 1 and "DIFFERS: the evidence file was changed" in out


def test_verify_finds_the_evidence_of_a_run_log_rendered_under_another_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "run.jsonl")
    assert cli.main(["report", str(log), "-o", str(tmp_path / "other.html")]) == 0
    status, out = verify(capsys, str(log))
    assert status == 0 and f"evidence file {tmp_path / 'other.evidence.json'}" in out


def test_verify_without_an_evidence_file_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = verify(capsys, str(tmp_path / "run.html"))
    assert status == 2 and f"{tmp_path / 'run.evidence.json'}: no evidence file" in out


def test_report_replaces_only_an_earlier_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "run.jsonl")
    notes = tmp_path / "notes.html"
    notes.write_text("my notes")
    assert cli.main(["report", str(log), "-o", str(notes)]) == 2
    assert "was not written by unlearncheck; it is never replaced" in capsys.readouterr().err
    assert notes.read_text() == "my notes"
    out = tmp_path / "out.html"
    assert cli.main(["report", str(log), "-o", str(out)]) == 0
    assert cli.main(["report", str(log), "-o", str(out)]) == 0  # an earlier report: re-rendered
    assert cli.main(["report", str(log), "-o", str(tmp_path)]) == 2
    assert not list(tmp_path.glob(".*partial"))


def test_metrics_and_generate_outputs_are_replaced_only_when_unlearncheck_wrote_them(
    tmp_path: Path,
) -> None:
    """`unlearncheck metrics --json` and `generate --out` replace a file of their own kind only:
    scorecards as `write_scorecards` writes them, facts every one of which was elicited."""
    from unlearncheck.facts import Fact, FactSet
    from unlearncheck.generator.export import is_generated_facts_file
    from unlearncheck.scorecard import Scorecard, is_scorecards_file, write_scorecards

    cards = tmp_path / "metrics.json"
    write_scorecards([Scorecard("m", "r", 1.0, 0.5, 0.1, 0.0, 0.0, 0.2, 0.9)], cards)
    elicited = tmp_path / "elicited.jsonl"
    FactSet([Fact("a/r", "A", "r", "B", metadata={"elicited_from": "m"})]).to_jsonl(elicited)
    mine = tmp_path / "mine.jsonl"
    FactSet([Fact("a/r", "A", "r", "B")]).to_jsonl(mine)
    (tmp_path / "other.json").write_text('{"model": "m"}')
    assert is_scorecards_file(cards) and is_generated_facts_file(elicited)
    assert not is_scorecards_file(tmp_path / "other.json") and not is_scorecards_file(elicited)
    assert not is_generated_facts_file(mine) and not is_generated_facts_file(cards)
    (tmp_path / "empty.json").write_text("[]")  # a file the user made: nothing says it is ours
    (tmp_path / "empty.jsonl").write_text("")
    assert not is_scorecards_file(tmp_path / "empty.json")
    assert not is_generated_facts_file(tmp_path / "empty.jsonl")


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    (tmp_path / "run.html").mkdir()
    with pytest.raises(OSError):
        render_report([], tmp_path / "run.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.html"]


def test_only_a_latest_link_is_replaced(tmp_path: Path) -> None:
    link = tmp_path / "r.html"
    first = tmp_path / "r.20261207T000000Z-1-abcd.html"
    second = tmp_path / "r.20261207T000001Z-2-0123.html"
    point_latest(link, first)
    point_latest(link, second)
    assert os.readlink(link) == second.name
    foreign = tmp_path / "elsewhere.html"
    os.unlink(link)
    os.symlink(foreign.name, link)
    with pytest.raises(OutputPathError, match="symbolic link unlearncheck did not make"):
        check_latest_name(link, {})
    os.unlink(link)
    link.write_text("a file")
    with pytest.raises(OutputPathError, match="never replaced"):
        point_latest(link, first)
    assert link.read_text() == "a file" and not list(tmp_path.glob(".*.link"))


def test_a_claim_under_the_plugin(tiny_checkpoint: Path, homes: FactSet) -> None:
    """A claim whose verdict the plugin writes (run by the next test in a session of its own)."""
    verdict = assert_forgotten(str(tiny_checkpoint), homes, [direct], on_inconclusive="return")
    assert [fact.fact_id for fact in verdict.facts] == [fact.id for fact in homes]


def _summary_paths(stdout: str) -> tuple[Path, Path]:
    """The run log and the report a session's summary names."""
    runlog = re.search(r"^run log: (\S+)", stdout, re.MULTILINE)
    report = re.search(r"^HTML report: (\S+)", stdout, re.MULTILINE)
    assert runlog and report, stdout
    return Path(runlog.group(1)), Path(report.group(1))


def test_the_projects_own_tests_write_nothing_into_the_checkout() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "UNLEARNCHECK_T"))}
    test = "tests/test_evidence_integrity.py::test_a_claim_under_the_plugin"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--uc-cache=off", test],
        cwd=CHECKOUT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    runlog, report = _summary_paths(result.stdout)
    for path in (runlog, report):
        assert path.exists() and CHECKOUT not in path.resolve().parents
    session = runlog.name.split(".")[1]
    assert not [p for p in (CHECKOUT / "reports").iterdir() if session in p.name]


#: A claims suite whose second test, when ``$HOLD`` names a file, writes ``$HOLD.waiting`` and
#: waits until ``$HOLD`` exists: its session stays open, its run log and case log half written.
HELD_SUITE = """
import os
import time
from pathlib import Path

from unlearncheck import assert_forgotten
from unlearncheck.attacks import direct


def test_claim(unlearned, facts):
    claim = os.environ["CLAIM"]
    assert_forgotten(unlearned, facts, [direct], claim=claim, on_inconclusive="return")


def test_held():
    if not os.environ.get("HOLD"):
        return
    hold = Path(os.environ["HOLD"])
    hold.with_suffix(".waiting").write_text("")
    deadline = time.monotonic() + 300
    while not hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def _session(
    directory: Path, claim: str, *options: str, hold: Path | None = None
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(CLAIM=claim, HOLD=str(hold or ""), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--uc-cache=off"),
            *(f"--uc-model={directory / 'model'}", f"--uc-facts={directory / 'facts.jsonl'}"),
            *options,
        ],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while not path.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_two_sessions_in_one_directory_keep_their_own_files(
    tmp_path: Path, tiny_checkpoint: Path, homes: FactSet, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "model").symlink_to(tiny_checkpoint)
    homes.to_jsonl(tmp_path / "facts.jsonl")
    (tmp_path / "test_held.py").write_text(HELD_SUITE)
    reports = tmp_path / "reports"
    first = _session(tmp_path, "first", hold=tmp_path / "release")
    _wait_for(tmp_path / "release.waiting", first)  # its claim is judged; it is still running
    (first_log,) = reports.glob("unlearncheck.*.jsonl")
    first_cases = list(reports.glob(".*.cases"))
    assert first_cases and all(first_log.name in p.name for p in first_cases)
    written = first_log.read_bytes()

    (tmp_path / "key").write_text(KEY)
    second = _session(tmp_path, "second", f"--uc-sign-key={tmp_path / 'key'}")  # signs
    second_out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, second_out
    assert first_log.read_bytes() == written and all(p.exists() for p in first_cases)
    (tmp_path / "release").write_text("")
    first_out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, first_out

    logs = {}
    for out, claim in ((first_out, "first"), (second_out, "second")):
        runlog, report = _summary_paths(out)
        records = list(read_runlog(runlog))
        assert [r["claim"] for r in records if r["kind"] == "verdict"] == [claim]
        assert sum(r["kind"] == "case" for r in records) >= len(homes)  # its own cases, merged
        assert report.exists() and verify(capsys, str(report))[0] == 0
        signed = verify(capsys, str(report), "--key", str(tmp_path / "key"))[0] == 0
        assert signed == (claim == "second")
        logs[claim] = runlog
    assert logs["first"] != logs["second"] and not list(reports.glob(".*.cases"))
    assert os.readlink(reports / "unlearncheck.html") == _summary_paths(first_out)[1].name
    assert os.readlink(reports / "unlearncheck.jsonl") == logs["second"].name  # opened last
