"""The ``unlearncheck`` command: re-rendering a report from a run log, refusing bad options."""

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


def test_validity_names_an_unknown_attack_before_loading_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validity", "--zoo", "organism-real", "--attacks", "direct,quant5"]) == 2
    err = capsys.readouterr().err
    assert "--attacks: unknown attack 'quant5'" in err and "quant4" in err


def test_validity_refuses_a_reference_for_the_real_organism(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validity", "--zoo", "organism-real", "--reference", "gold"]) == 2
    assert "no retrained reference" in capsys.readouterr().err
