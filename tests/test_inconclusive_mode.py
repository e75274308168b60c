"""``--uc-inconclusive fail|warn``: what an INCONCLUSIVE claim does to its test.

The sessions run in subprocesses (the plugin's session state is per process) on `SUITE`: a real
``assert_forgotten`` of the tiny random model against itself as original, which is INCONCLUSIVE
(an original that knows nothing proves nothing), and a FAIL claim made by hand, its verdict
published on `unlearncheck.events` before it raises, as a claim does. Every plugin session imports
torch (its case log), so a real claim on the tiny model costs about what a hand-made one does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearncheck.facts import FactSet
from unlearncheck.pytest_plugin import get_options, set_defaults
from unlearncheck.runlog import read_runlog

pytest_plugins = ["pytester"]

#: An INCONCLUSIVE claim, a FAIL claim and an INCONCLUSIVE claim the test expects.
SUITE = """
import pytest
from unlearncheck import assert_forgotten, events
from unlearncheck.attacks import direct
from unlearncheck.verdict import (
    AttackOutcome, FactVerdict, ForgettingAssertionError, InconclusiveError, Verdict,
)


def test_inconclusive(unlearned, original, facts):
    assert_forgotten(unlearned, facts, [direct], original=original, claim="never known")


def test_fail():
    outcome = AttackOutcome("direct", "recovered", significant=True)
    fact = FactVerdict("red-king/home", "FAIL", "recovered by direct", [outcome])
    verdict = Verdict("recovered", "FAIL", [fact], {"kind": "forgotten", "attacks": ["direct"]})
    events.publish(verdict)
    raise ForgettingAssertionError(verdict)


def test_expects_inconclusive(unlearned, original, facts):
    with pytest.raises(InconclusiveError):
        assert_forgotten(unlearned, facts, [direct], original=original, claim="expected")
"""
#: The line of `SUITE`'s test file where ``test_inconclusive`` runs its claim.
CLAIM_LINE = 10
#: Writes the resolved ``uc_options.inconclusive`` to inconclusive.txt.
DUMP = """
def test_dump(uc_options, pytestconfig):
    (pytestconfig.rootpath / "inconclusive.txt").write_text(uc_options.inconclusive)
"""
WARNING = "InconclusiveClaimWarning"
#: (test, claim status) of `SUITE`'s verdicts.
INCONCLUSIVE = ("test_claims.py::test_inconclusive", "INCONCLUSIVE")
FAIL = ("test_claims.py::test_fail", "FAIL")
EXPECTED = ("test_claims.py::test_expects_inconclusive", "INCONCLUSIVE")


@pytest.fixture
def suite(
    pytester: pytest.Pytester,
    tiny_checkpoint: Path,
    homes: FactSet,
    monkeypatch: pytest.MonkeyPatch,
) -> list[str]:
    """`SUITE` as test_claims.py with its facts; the arguments of a session on the tiny model."""
    monkeypatch.setenv("UNLEARNCHECK_CACHE", str(pytester.path / "cache"))  # no zoo needed
    lines = "".join(json.dumps(f.to_dict()) + "\n" for f in homes)
    (pytester.path / "facts.jsonl").write_text(lines)
    written = pytester.makepyfile(test_claims=SUITE).read_text().splitlines()
    assert "assert_forgotten" in written[CLAIM_LINE - 1]
    return [
        "-p",
        "no:cacheprovider",
        "--uc-cache=off",
        f"--uc-model={tiny_checkpoint}",
        f"--uc-original={tiny_checkpoint}",
        "--uc-facts=facts.jsonl",
    ]


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*args, timeout=300)


def _verdicts(pytester: pytest.Pytester) -> list[tuple[str, str, str]]:
    """(test, claim status, test outcome) of the run log's verdicts, in the order written."""
    records = read_runlog(pytester.path / "reports" / "unlearncheck.jsonl")
    return [(r["test"], r["status"], r["outcome"]) for r in records if r["kind"] == "verdict"]


def _html_badges(pytester: pytest.Pytester, *counts: str) -> None:
    """The HTML report's badges count the claims by status (``2 INCONCLUSIVE``, …)."""
    html = (pytester.path / "reports" / "unlearncheck.html").read_text()
    for count in counts:
        number, status = count.split()
        assert f'class="badge {status.lower()}">{number} {status}<' in html, count


def test_an_inconclusive_claim_fails_its_test_by_default(
    pytester: pytest.Pytester, suite: list[str]
) -> None:
    result = _run(pytester, *suite)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # an INCONCLUSIVE claim fails the run
    result.assert_outcomes(passed=1, failed=1)
    assert result.parseoutcomes()["inconclusive"] == 1  # pytest's own final line says so
    result.stdout.fnmatch_lines(
        [
            "test_claims.py IF.*",  # pytest's progress line: I for INCONCLUSIVE
            "*_ INCONCLUSIVE: test_inconclusive _*",  # its explanation, in the summary
            "*InconclusiveError: never known: INCONCLUSIVE*",
            "claims: 0 passed, 1 failed, 2 inconclusive, in 3 tests: 1 failed, 1 inconclusive, "
            "1 passed (*",
            "*= 1 failed, 1 passed, 1 inconclusive in *",
        ]
    )
    assert WARNING not in result.stdout.str()
    assert "unlearncheck/claims.py" not in result.stdout.str()  # no library frames shown
    expected = [(*INCONCLUSIVE, "failed"), (*FAIL, "failed"), (*EXPECTED, "passed")]
    assert _verdicts(pytester) == expected


def test_warn_passes_the_test_with_a_warning_and_still_counts_the_claim_inconclusive(
    pytester: pytest.Pytester, suite: list[str]
) -> None:
    result = _run(pytester, *suite, "--uc-inconclusive", "warn")
    result.assert_outcomes(passed=1, failed=1, warnings=1)
    assert result.parseoutcomes()["inconclusive"] == 1
    result.stdout.fnmatch_lines(
        [
            "*ForgettingAssertionError: recovered: FAIL*",  # a FAIL claim still fails
            "*warnings summary*",
            "test_claims.py::test_inconclusive",
            f"*test_claims.py:{CLAIM_LINE}: {WARNING}: never known: INCONCLUSIVE (0 passed, "
            "0 failed, 6 inconclusive of 6 facts*",
            "*red-king/home: INCONCLUSIVE: *original model does not know*",
            "claims: 0 passed, 1 failed, 2 inconclusive, in 3 tests: 1 failed, 1 inconclusive, "
            "1 passed (*",
        ]
    )
    assert "verdict.InconclusiveError:" not in result.stdout.str()  # not raised
    expected = [(*INCONCLUSIVE, "passed"), (*FAIL, "failed"), (*EXPECTED, "passed")]
    assert _verdicts(pytester) == expected
    _html_badges(pytester, "1 FAIL", "2 INCONCLUSIVE", "0 PASS")


def test_warn_from_the_ini_file_works_under_xdist(
    pytester: pytest.Pytester, suite: list[str]
) -> None:
    pytester.makeini("[pytest]\nuc_inconclusive = warn\n")
    result = _run(pytester, *suite, "-n", "1")
    result.assert_outcomes(passed=1, failed=1, warnings=1)
    assert result.parseoutcomes()["inconclusive"] == 1  # carried from the worker
    result.stdout.fnmatch_lines(
        [
            f"*test_claims.py:{CLAIM_LINE}: {WARNING}: never known: INCONCLUSIVE*",
            "claims: 0 passed, 1 failed, 2 inconclusive, in 3 tests: 1 failed, 1 inconclusive, "
            "1 passed (*",
        ]
    )
    expected = [(*INCONCLUSIVE, "passed"), (*FAIL, "failed"), (*EXPECTED, "passed")]
    assert sorted(_verdicts(pytester)) == sorted(expected)
    _html_badges(pytester, "1 FAIL", "2 INCONCLUSIVE", "0 PASS")


def test_the_warning_can_be_made_an_error_again(
    pytester: pytest.Pytester, suite: list[str]
) -> None:
    error = f"-Werror::unlearncheck.pytest_plugin.{WARNING}"
    result = _run(pytester, *suite, "--uc-inconclusive=warn", error, "-k", "test_inconclusive")
    result.assert_outcomes(failed=1, deselected=2)
    result.stdout.fnmatch_lines([f"*{WARNING}: never known: INCONCLUSIVE*"])
    assert _verdicts(pytester) == [(*INCONCLUSIVE, "failed")]


def _resolved(pytester: pytest.Pytester, *args: str, default: str | None = None) -> str:
    """``Options.inconclusive`` of a session with these arguments (and a conftest default),
    parsed in this process without running the session."""
    config = pytester.parseconfig("--uc-cache=off", *args, pytester.path)
    if default is not None:
        set_defaults(config, inconclusive=default)
    return get_options(config).inconclusive


def test_the_command_line_wins_over_ini_which_wins_over_conftest_defaults(
    pytester: pytest.Pytester,
) -> None:
    assert _resolved(pytester) == "fail"  # the default
    assert _resolved(pytester, default="warn") == "warn"
    pytester.makeini("[pytest]\nuc_inconclusive = Fail\n")
    assert _resolved(pytester, default="warn") == "fail"
    assert _resolved(pytester, "--uc-inconclusive", "WARN", default="fail") == "warn"


@pytest.mark.parametrize(
    ("ini", "args", "message"),
    [
        ("", ["--uc-inconclusive=maybe"], "--uc-inconclusive: expected fail or warn, got 'maybe'"),
        (
            "uc_inconclusive = raise",
            [],
            "ini key uc_inconclusive: expected fail or warn, got 'raise'",
        ),
        (
            "",
            ["-n", "1", "--uc-inconclusive", ""],
            "--uc-inconclusive: expected fail or warn, got ''",
        ),
    ],
    ids=["option", "ini", "xdist"],
)
def test_a_bad_value_is_a_usage_error_naming_the_option_and_its_values(
    pytester: pytest.Pytester, ini: str, args: list[str], message: str
) -> None:
    pytester.makepyfile(test_dump=DUMP)
    pytester.makeini(f"[pytest]\n{ini}\n")
    # Refused before the default score cache is looked up: no torch import, under a second.
    result = _run(pytester, "-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert not (pytester.path / "inconclusive.txt").exists()
