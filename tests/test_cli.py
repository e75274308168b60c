"""The ``unlearncheck`` command: re-rendering a report from a run log."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearncheck.cli import main
from unlearncheck.runlog import RunLog


def test_report_rerenders_a_run_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = RunLog(tmp_path / "run.jsonl")
    log.model("model", "organism:npo_gd", "ab" * 32)
    log.close()
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(tmp_path / "run.jsonl"), "-o", str(out)]) == 0
    assert "ab" * 32 in out.read_text()
    assert str(out) in capsys.readouterr().out


def test_report_names_a_missing_run_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
