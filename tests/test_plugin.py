"""The pytest plugin: options, fixtures, evidence in the run log and report, xdist, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from unlearncheck.integrity import sha256_file
from unlearncheck.organism import zoo_dir
from unlearncheck.pytest_plugin import worker_gpu
from unlearncheck.runlog import read_runlog

pytest_plugins = ["pytester"]

#: A small claims suite: the fixtures, and two claims of six forget facts (birth cities, which
#: npo_gd leaks clearly). They are judged against the gold (retrained) reference, so gold passes
#: them whatever the chance calibration.
SUITE = """
import pytest
from unlearncheck import assert_forgotten
from unlearncheck.attacks import direct, paraphrase
from unlearncheck.facts import FactSet


def test_fixtures(unlearned, original, reference, facts, uc_options):
    assert unlearned.spec == uc_options.model
    assert original is not None and original.spec == "organism:original"
    assert reference is not None and reference.spec == "organism:gold"
    assert isinstance(facts, FactSet) and len(facts.split("forget")) > 0


@pytest.mark.parametrize("start", [0, 6])
def test_forgotten(start, unlearned, original, reference, facts):
    forget = facts.split("forget").filter(lambda f: f.relation == "birth_city")[start : start + 6]
    assert_forgotten(
        unlearned, forget, attacks=[direct, paraphrase], original=original, reference=reference,
        on_inconclusive="return",
    )
"""
#: Prints the resolved options to options.json.
DUMP = """
import dataclasses, json

def test_dump(uc_options, pytestconfig):
    out = pytestconfig.rootpath / "options.json"
    out.write_text(json.dumps(dataclasses.asdict(uc_options), default=str))
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, zoo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pytester dir with the small suite; subprocesses read the same (cached) zoo."""
    monkeypatch.setenv("UNLEARNCHECK_CACHE", str(zoo.parent.parent))
    pytester.makepyfile(test_small_claims=SUITE)
    return pytester.path


def _run(pytester: pytest.Pytester, model: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--uc-model=organism:{model}",
        "--uc-original=organism:original",
        "--uc-reference=organism:gold",
        *args,
        timeout=600,
    )


def _verdicts(path: Path) -> list[dict[str, Any]]:
    return [r for r in read_runlog(path) if r["kind"] == "verdict"]


def test_plugin_is_registered_and_imports_no_torch() -> None:
    # As pluggy looks them up: every distribution (a stale egg-info may shadow entry_points()).
    points = [p for d in metadata.distributions() for p in d.entry_points if p.group == "pytest11"]
    assert any(p.value == "unlearncheck.pytest_plugin" for p in points)
    code = (
        "import sys, unlearncheck.pytest_plugin; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_the_options_and_ini_keys(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*(unlearncheck):", "*--uc-model=UC_MODEL*"])
    for name in ("original", "reference", "facts", "device", "batch-size", "seed", "report"):
        result.stdout.fnmatch_lines([f"*--uc-{name}=*", f"*uc_{name.replace('-', '_')} (string)*"])


def test_cli_wins_over_ini_which_wins_over_conftest_defaults(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nuc_model = organism:gold\nuc_seed = 3\nuc_batch_size = 16\n"
        "uc_report = out/r.html\nuc_facts = data/facts.jsonl\n"
    )
    pytester.makeconftest(
        "from unlearncheck.pytest_plugin import set_defaults\n"
        "def pytest_configure(config):\n"
        "    set_defaults(config, model='organism:npo_gd', original='organism:original')\n"
    )
    pytester.makepyfile(test_dump=DUMP)
    facts = pytester.path / "data" / "facts.jsonl"  # read at session start
    facts.parent.mkdir()
    facts.write_text('{"id": "a", "subject": "A", "relation": "r", "object": "B"}\n')
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    options = json.loads((pytester.path / "options.json").read_text())
    assert options["model"] == "organism:gold"  # ini over the conftest default
    assert options["original"] == "organism:original"  # the conftest default
    assert options["reference"] is None and options["device"] is None
    assert (options["seed"], options["batch_size"]) == (3, 16)
    assert options["report"] == str(pytester.path / "out" / "r.html")
    assert options["json"] == str(pytester.path / "out" / "r.jsonl")  # next to the report
    assert options["facts"] == str(pytester.path / "data" / "facts.jsonl")

    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--uc-model=organism:qa_form_only", "--uc-json=log.jsonl"
    )
    result.assert_outcomes(passed=1)
    options = json.loads((pytester.path / "options.json").read_text())
    assert options["model"] == "organism:qa_form_only"
    assert options["json"] == str(pytester.path / "log.jsonl")


def test_bad_integer_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_dump=DUMP)
    result = pytester.runpytest_subprocess("--uc-batch-size=many")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--uc-batch-size: not an integer*"])


def test_a_suite_without_claims_writes_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "= unlearncheck =" not in result.stdout.str()
    assert not (pytester.path / "reports").exists()


def test_gold_passes_with_report_run_log_and_junit(pytester: pytest.Pytester, suite: Path) -> None:
    result = _run(pytester, "gold", "--junitxml=junit.xml")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*= unlearncheck =*",
            "claims: 2 passed, 0 failed, 0 inconclusive, in 2 tests: 2 passed (*",
            "*paraphrase*judged*recovered*not run*",
            f"HTML report: {suite / 'reports' / 'unlearncheck.'}*.html (latest: "
            f"{suite / 'reports' / 'unlearncheck.html'})",
            "check its evidence: unlearncheck verify *.html",
        ]
    )
    assert (suite / "reports" / "unlearncheck.html").stat().st_size > 0
    records = list(read_runlog(suite / "reports" / "unlearncheck.jsonl"))
    assert records[0]["kind"] == "run"
    models = {(r["role"], r["spec"]) for r in records if r["kind"] == "model"}
    assert models == {
        ("model", "organism:gold"),
        ("reference", "organism:gold"),
        ("original", "organism:original"),
    }
    assert all(r["content_hash"] for r in records if r["kind"] == "model")
    verdicts = _verdicts(suite / "reports" / "unlearncheck.jsonl")
    assert [(v["test"], v["status"], v["outcome"]) for v in verdicts] == [
        (f"test_small_claims.py::test_forgotten[{start}]", "PASS", "passed") for start in (0, 6)
    ]
    assert all(v["duration"] > 0 and len(v["facts"]) == 6 for v in verdicts)
    assert 'name="unlearncheck_verdict"' in (suite / "junit.xml").read_text()


def test_quant_fragile_fails_and_xdist_gives_the_same_verdicts(
    pytester: pytest.Pytester, suite: Path
) -> None:
    log = suite / "reports" / "unlearncheck.jsonl"
    earlier = log.with_name("unlearncheck.20261201T000000Z-1-abcd.jsonl")  # an earlier session's
    earlier.parent.mkdir()
    earlier.write_text('{"kind": "verdict", "claim": "from an earlier session"}\n')
    log.symlink_to(earlier.name)
    serial = _run(pytester, "quant_fragile")
    assert earlier.read_text().endswith('"from an earlier session"}\n')  # left as it was
    assert log.resolve() != earlier.resolve()  # the link now names this session's log
    assert serial.ret == pytest.ExitCode.TESTS_FAILED
    serial.stdout.fnmatch_lines(["*ForgettingAssertionError*", "claims: 0 passed, 2 failed*"])
    statuses = {(v["test"], v["status"], v["outcome"]) for v in _verdicts(log)}
    assert {s[1:] for s in statuses} == {("FAIL", "failed")} and len(statuses) == 2
    fact_statuses = _fact_statuses(log)
    assert {"PASS", "FAIL"} <= {status for *_, status in fact_statuses}

    parallel = _run(pytester, "quant_fragile", "-n", "2")
    assert parallel.ret == pytest.ExitCode.TESTS_FAILED
    parallel.stdout.fnmatch_lines(["claims: 0 passed, 2 failed*"])
    records = list(read_runlog(log))
    assert [r["kind"] for r in records].count("run") == 1  # one log, by the controller
    facts = zoo_dir(0) / "facts.jsonl"  # the workers loaded it; the controller records its hash
    header = next(r for r in records if r["kind"] == "run")
    assert header["facts"] == {"path": str(facts.resolve()), "sha256": sha256_file(facts)}
    cases = [r for r in records if r["kind"] == "case"]  # every probe, from both workers
    assert {c["fact_id"] for c in cases} == {f for v in _verdicts(log) for f in _fact_ids(v)}
    assert len(cases) >= 2 * 12 and not list(log.parent.glob(".*.cases"))
    assert {(v["test"], v["status"], v["outcome"]) for v in _verdicts(log)} == statuses
    assert _fact_statuses(log) == fact_statuses  # fact by fact, as in one process
    assert (suite / "reports" / "unlearncheck.html").exists()


REPLAY = """
from unlearncheck import assert_forgotten
from unlearncheck.attacks import direct


def test_replayed(unlearned, facts):
    forget = facts.split("forget")[:2]
    for _ in range(2):  # as hypothesis replays the example that failed
        assert_forgotten(unlearned, forget, attacks=[direct], claim="replayed",
                         on_inconclusive="return")
    assert_forgotten(unlearned, forget, attacks=[direct], claim="other", on_inconclusive="return")
    assert_forgotten(unlearned, forget, attacks=[direct], claim="other", seed=1,
                     on_inconclusive="return")  # same name, another claim: both count
"""


def test_a_claim_replayed_within_a_test_is_reported_once(
    pytester: pytest.Pytester, zoo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNLEARNCHECK_CACHE", str(zoo.parent.parent))
    pytester.makepyfile(test_replay=REPLAY)
    result = _run(pytester, "gold")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    verdicts = _verdicts(pytester.path / "reports" / "unlearncheck.jsonl")
    assert sorted(v["claim"] for v in verdicts) == ["other", "other", "replayed"]


def _fact_statuses(path: Path) -> set[tuple[str, str, str]]:
    """(test, fact id, status) of every fact of every verdict in the run log."""
    return {(v["test"], f["fact_id"], f["status"]) for v in _verdicts(path) for f in v["facts"]}


def _fact_ids(verdict: dict[str, Any]) -> list[str]:
    return [f["fact_id"] for f in verdict["facts"]]


def _record(test: str, seconds: float, outcomes: dict[str, str]) -> dict[str, Any]:
    return {
        "test": test,
        "duration": seconds,
        "status": "FAIL",
        "config": {"kind": "forgotten", "attacks": list(outcomes)},
        "facts": [{"attacks": [{"attack": a, "outcome": o} for a, o in outcomes.items()]}],
    }


def test_attack_summary_times_only_tests_of_one_attack() -> None:
    from unlearncheck.pytest_plugin.reporting import _attack_lines

    lines = _attack_lines(
        [
            _record("t::quant", 2.0, {"quant4": "recovered"}),
            _record("t::quant", 2.0, {"quant4": "not recovered"}),  # same test, same attack
            _record("t::mixed", 3.0, {"direct": "not recovered", "paraphrase": "not run"}),
        ]
    )
    quant4, direct, paraphrase = (
        next(ln for ln in lines if name in ln) for name in ("quant4", "direct", "paraphrase")
    )
    assert "2 judged" in quant4 and "1 recovered" in quant4 and quant4.endswith("2.0s")
    assert "1 judged" in direct and direct.endswith("—")
    assert "1 not run" in paraphrase and paraphrase.endswith("—")


def test_verdicts_go_to_pytest_html_extras_when_it_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from unlearncheck.pytest_plugin.evidence import _html_extras

    def extra(content: object, name: str) -> dict[str, object]:
        return {"content": content, "name": name}

    fake = SimpleNamespace(extras=SimpleNamespace(json=extra))
    monkeypatch.setitem(sys.modules, "pytest_html", fake)
    report = SimpleNamespace(extras=[{"name": "earlier"}])
    _html_extras(report, ['{"claim": "c", "status": "FAIL"}'])  # type: ignore[arg-type]
    assert report.extras == [
        {"name": "earlier"},
        {"content": {"claim": "c", "status": "FAIL"}, "name": "unlearncheck verdict"},
    ]


def test_worker_gpu_is_round_robin_over_the_visible_gpus() -> None:
    assert [worker_gpu(f"gw{n}", ["3", "5"]) for n in range(4)] == ["3", "5", "3", "5"]
    assert worker_gpu("gw1", ["0"]) is None  # one GPU: every worker shares it
    assert worker_gpu("master", ["0", "1"]) is None


def test_each_xdist_worker_sees_only_its_gpu(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # what the user left visible
    pytester.makepyfile(
        test_gpus="""
        import os
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_gpu(i, worker_id):
            with open(f"gpu-{worker_id}.txt", "w") as seen:
                seen.write(os.environ["CUDA_VISIBLE_DEVICES"])
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", timeout=300)
    result.assert_outcomes(passed=4)
    seen = {p.name: p.read_text() for p in pytester.path.glob("gpu-*.txt")}
    assert seen == {"gpu-gw0.txt": "3", "gpu-gw1.txt": "5"}
