"""The controller's side of a session: the case logs of each process, the run log (verdicts,
cases, tests that did not complete), the HTML report rendered from it and the terminal summary.

The controller (or the only process, without xdist) reads the verdicts from each test's teardown
report (`unlearncheck.pytest_plugin.evidence`), appends them to the run log, merges the case logs
the processes wrote at the end of the session, renders the HTML report and its evidence file from
the run log and prints a summary. A session in which no claim ran writes nothing and prints
nothing.

Every file a session writes has its session id in its name (`unlearncheck.outputs`): the run log
``<--uc-json stem>.<session>.jsonl``, the report ``<--uc-report stem>.<session>.html`` with its
``.evidence.json``, the case logs next to the run log; ``--uc-json`` and ``--uc-report``
themselves are links to the latest session's files. Sessions in one directory never touch each
other's files, and the output paths are checked before any model loads (`check_outputs`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from unlearncheck.outputs import (
    OutputPathError,
    check_latest_name,
    new_session_id,
    point_latest,
    same_file,
    session_file,
)
from unlearncheck.pytest_plugin.evidence import facts_file_of, verdicts_of
from unlearncheck.pytest_plugin.inconclusive import is_inconclusive
from unlearncheck.pytest_plugin.options import FACTS_FILE, get_options
from unlearncheck.untrusted import shown

if TYPE_CHECKING:
    from unlearncheck.runlog import RunLog

__all__ = [
    "CRASHED_PHASE",
    "SESSION_ENV",
    "SUMMARY_CHARS",
    "Collector",
    "check_outputs",
    "start_case_log",
    "start_session",
]

#: Characters of one untrusted string (an attack name, an error message) in the terminal summary.
SUMMARY_CHARS = 200
#: Characters of an INCONCLUSIVE test's explanation printed in the summary.
EXPLANATION_CHARS = 20_000
#: Names the session's case logs; set by the controller, inherited by xdist workers.
SESSION_ENV = "UNLEARNCHECK_SESSION"
#: The phase pytest-xdist gives the report of a test whose worker died while running it.
CRASHED_PHASE = "???"
#: The key this session's evidence file is signed with (None: unsigned; `check_outputs`).
_KEY = pytest.StashKey["bytes | None"]()


def start_session(config: pytest.Config) -> None:
    """In the controller (or the only process): name the session, register the `Collector`."""
    os.environ[SESSION_ENV] = new_session_id()
    config.pluginmanager.register(Collector(config), "unlearncheck-collector")


def check_outputs(config: pytest.Config) -> None:
    """Refuse output paths that would replace an input or a file unlearncheck did not write
    (`unlearncheck.outputs.check_latest_name`) and a key file that cannot sign; keep the key.

    Raises:
        pytest.UsageError: Naming the option and the path.
    """
    from unlearncheck.integrity import KeyFileError, load_key

    options = get_options(config)
    inputs = {"the facts file (--uc-facts)": options.facts} if options.facts else {}
    if options.sign_key is not None:
        inputs["the signing key (--uc-sign-key)"] = options.sign_key
    if same_file(options.report, options.json):
        raise pytest.UsageError(
            f"--uc-report and --uc-json both name {options.json}: the report would replace the "
            "run log; give them different paths"
        )
    for name in ("report", "json"):
        try:
            check_latest_name(getattr(options, name), inputs)
        except OutputPathError as error:
            raise pytest.UsageError(f"--uc-{name}: {error}") from None
    try:
        config.stash[_KEY] = load_key(options.sign_key) if options.sign_key else None
    except KeyFileError as error:
        raise pytest.UsageError(f"--uc-sign-key: {error}") from None


def _session() -> str:
    """This session's id (set by the controller, inherited by xdist workers)."""
    return os.environ.get(SESSION_ENV, "")


def _run_header(config: pytest.Config) -> dict[str, Any]:
    """What the run log's header records beyond `unlearncheck.runlog.RunLog`'s own: the
    session, the facts file and its SHA-256, and the device the models load on.

    The facts file is the one ``--uc-facts`` names, or the one the claims' process loaded
    (`suite_facts`; under xdist a worker's, carried on its test reports)."""
    from unlearncheck.integrity import sha256_file
    from unlearncheck.specs import resolve_device

    options = get_options(config)
    path = options.facts or config.stash.get(FACTS_FILE, None)
    facts = None
    if path is not None and path.is_file():  # gone since it was loaded: not recorded
        facts = {"path": str(path.resolve()), "sha256": sha256_file(path)}
    try:
        device = str(resolve_device(options.device))
    except ValueError:  # refused at session start; a machine that changed since
        device = "unknown"
    if options.device and options.device != device:
        device = f"{options.device} ({device})"
    return {"session": _session(), "facts": facts, "device": device}


def _set_case_log(path: Path | None) -> None:
    from unlearncheck.pipeline import set_case_log

    set_case_log(path)


def start_case_log(config: pytest.Config) -> None:
    """Have the claims of this process append their case records to its case log (merged into
    the run log by the controller at the end of the session)."""
    if SESSION_ENV not in os.environ:
        return
    from unlearncheck.runlog import case_log_path

    process = getattr(config, "workerinput", {}).get("workerid", "main")
    runlog = session_file(get_options(config).json, _session())
    _set_case_log(case_log_path(runlog, _session(), process))


@dataclass
class _Test:
    outcome: str = "passed"
    duration: float = 0.0
    #: An INCONCLUSIVE claim ended the test (pytest counts it "inconclusive").
    inconclusive: bool = False


class Collector:
    """In the controller: verdicts from test reports to the run log, report and summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tests: dict[str, _Test] = {}
        self.seconds: dict[str, float] = {}
        self.records: list[dict[str, Any]] = []
        #: Tests whose process died before they finished: ``not_completed`` records.
        self.not_completed: list[dict[str, str]] = []
        self.log: RunLog | None = None
        self.html: Path | None = None
        self.html_error: str | None = None
        #: Latest links that could not be pointed at this session's files (why).
        self.link_errors: list[str] = []
        #: pytest's count of each test that ran a claim: passed, failed, inconclusive, ...
        self.test_counts: Counter[str] = Counter()
        #: Failed tests that an INCONCLUSIVE claim ended: their explanations, for the summary.
        self.inconclusive_failures: list[pytest.TestReport] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Track the test's outcome; write its verdicts when its last phase is reported, or that
        it did not complete when its worker crashed."""
        if report.when == CRASHED_PHASE:
            self.tests.pop(report.nodeid, None)
            self.not_completed.append({"test": report.nodeid, "reason": str(report.longrepr)})
            if self.log is not None:  # else written when the log starts (if a claim ran)
                self.log.write("not_completed", self.not_completed[-1])
            return
        test = self.tests.setdefault(report.nodeid, _Test())
        if report.when == "call":
            test.duration = report.duration
            test.inconclusive = is_inconclusive(report)
            if test.inconclusive and report.failed:
                self.inconclusive_failures.append(report)
        if report.outcome != "passed" and test.outcome != "failed":
            test.outcome = report.outcome
        if report.when != "teardown":
            return
        del self.tests[report.nodeid]
        facts = facts_file_of(report)
        if facts is not None and self.config.stash.get(FACTS_FILE, None) is None:
            self.config.stash[FACTS_FILE] = facts  # a worker's: recorded in the run log's header
        # A claim run again within one test with the same configuration (hypothesis replays the
        # example that failed) counts once, with its last verdict; what the run read from the
        # score cache (``score_cache``) is not configuration.
        last = {
            (str(v.get("claim")), json.dumps(_settings(v), sort_keys=True, default=str)): v
            for v in verdicts_of(report)
        }
        for verdict in last.values():
            self.write(verdict, report.nodeid, test)
            self.seconds[report.nodeid] = test.duration
        if last:
            self.test_counts["inconclusive" if test.inconclusive else test.outcome] += 1

    def _open_log(self) -> RunLog:
        """The session's own run log, started on first use, and the ``--uc-json`` link pointed
        at it. Other sessions' files are left as they are."""
        if self.log is None:
            from unlearncheck.runlog import RunLog

            options = get_options(self.config)
            path = session_file(options.json, _session())
            self.log = RunLog(path, header=_run_header(self.config))
            self.log.start()
            self._link(options.json, path)
            for record in self.not_completed:
                self.log.write("not_completed", record)
        return self.log

    def _link(self, link: Path, target: Path) -> None:
        """Point a latest link at this session's file; say so in the summary when it cannot."""
        try:
            point_latest(link, target)
        except (OutputPathError, OSError) as error:
            self.link_errors.append(shown(f"{link} not linked: {error}", limit=SUMMARY_CHARS))

    def write(self, verdict: dict[str, Any], nodeid: str, test: _Test) -> None:
        """Append the verdict (and its models) to the run log."""
        log = self._open_log()
        config = verdict.get("config", {})
        for role in ("model", "reference", "original"):
            if config.get(role):
                log.model(role, config[role], config.get(f"{role}_hash") or "")
        record = {**verdict, "test": nodeid, "outcome": test.outcome, "duration": test.duration}
        log.write("verdict", record)
        self.records.append(record)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        """Close the run log and render the HTML report from it."""
        self._merge_cases()
        if self.log is None:
            return
        self.log.close()
        link = get_options(self.config).report
        out = session_file(link, _session())
        try:
            from unlearncheck.report import render_report

            key = self.config.stash.get(_KEY, None)
            self.html = Path(render_report(self.log.path, out, key=key))
        except Exception as err:  # a broken renderer must not hide the verdicts
            self.html_error = shown(f"{type(err).__name__}: {err}", limit=SUMMARY_CHARS)
            out.unlink(missing_ok=True)
            return
        self._link(link, out)

    def _merge_cases(self) -> None:
        """Append every process's case records to the run log (also those of a crashed worker
        or of claims that never reached a verdict) and remove their files."""
        from unlearncheck.runlog import case_logs, read_runlog

        _set_case_log(None)
        path = session_file(get_options(self.config).json, _session())
        for shard in case_logs(path).get(_session(), []):
            for record in read_runlog(shard):
                if record.pop("kind", None) == "case":
                    self._open_log().write("case", record)
            shard.unlink()

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """The unlearncheck section: claims, attacks, where the report is (when claims ran)."""
        lines = self.summary()
        if lines:
            terminalreporter.section("unlearncheck")
            for report in self.inconclusive_failures:
                title = report.head_line or report.nodeid
                terminalreporter.write_sep("_", f"INCONCLUSIVE: {title}")
                text = report.longreprtext  # holds model output: shown inert
                terminalreporter.write_line(shown(text, limit=EXPLANATION_CHARS, keep="\n\t"))
            for line in lines:
                terminalreporter.write_line(line)

    def summary(self) -> list[str]:
        """Lines of the terminal summary (empty when no claim ran)."""
        if self.log is None:
            return []
        claims = Counter(r["status"] for r in self.records)
        tests = ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.test_counts.items()))
        lines = [
            f"claims: {claims['PASS']} passed, {claims['FAIL']} failed, "
            f"{claims['INCONCLUSIVE']} inconclusive, in {len(self.seconds)} tests: {tests} "
            f"({sum(self.seconds.values()):.1f}s in their calls)"
        ]
        lines += _attack_lines(self.records)
        for record in self.not_completed:
            reason = shown(record["reason"], limit=SUMMARY_CHARS)
            test = shown(record["test"], limit=SUMMARY_CHARS)
            lines.append(f"did not complete: {test} ({reason})")
        options = get_options(self.config)
        lines.append(f"run log: {self.log.path} (latest: {options.json})")
        if self.html is not None:
            lines.append(f"HTML report: {self.html} (latest: {options.report})")
            lines.append(f"check its evidence: unlearncheck verify {self.html}")
        else:
            lines.append(f"HTML report not written: {self.html_error}")
        lines += self.link_errors
        return lines


def _attack_seconds(records: list[dict[str, Any]]) -> dict[str, float]:
    """Call time of the tests whose claims all ran one and the same attack, by that attack.

    Claims do not time their attacks; a test that runs only one attack times it (its model
    variant is built on first use and shared with later claims in the same process).
    """
    single: dict[str, set[str]] = {}  # test -> the attack of its one-attack claims
    mixed: set[str] = set()  # tests with a claim of several attacks (or none)
    seconds: dict[str, float] = {}
    for record in records:
        test, attacks = record["test"], record.get("config", {}).get("attacks") or []
        seconds[test] = record["duration"]
        if len(attacks) == 1:
            single.setdefault(test, set()).add(attacks[0])
        else:
            mixed.add(test)
    out: dict[str, float] = {}
    for test, names in single.items():
        if test not in mixed and len(names) == 1:
            (name,) = names
            out[name] = out.get(name, 0.0) + seconds[test]
    return out


def _attack_lines(records: list[dict[str, Any]]) -> list[str]:
    """Per attack of the forgetting claims: facts judged, recovered (failed), not run, power on
    the original (share of the facts where it was measured that the attack recovers from the
    original; — where it was not measured), time.

    Attack names (user code names its attacks) are shown through `shown`.
    """
    judged: Counter[str] = Counter()
    recovered: Counter[str] = Counter()
    not_run: Counter[str] = Counter()
    measured: Counter[str] = Counter()
    powerful: Counter[str] = Counter()
    forgetting = [r for r in records if r.get("config", {}).get("kind") == "forgotten"]
    for record in forgetting:
        for fact in record.get("facts", []):
            for outcome in fact.get("attacks", []):
                name = outcome["attack"]
                if outcome.get("power") is not None:
                    measured[name] += 1
                    powerful[name] += bool(outcome["power"])
                if outcome["outcome"] == "not run":
                    not_run[name] += 1
                else:
                    judged[name] += 1
                    recovered[name] += outcome["outcome"] == "recovered"
    names = sorted(judged | not_run, key=lambda a: -recovered[a])
    if not names:
        return []
    seconds = _attack_seconds(forgetting)
    labels = {name: shown(name, limit=SUMMARY_CHARS) for name in names}
    width = max(len(label) for label in labels.values())
    lines = [
        "attacks (facts of forgetting claims; power: share recovered from the original; "
        "time: tests that ran only that attack):"
    ]
    for name in names:
        time = f"{seconds[name]:7.1f}s" if name in seconds else "       —"
        power = f"{powerful[name] / measured[name]:5.0%}" if measured[name] else "    —"
        lines.append(
            f"  {labels[name]:<{width}}  {judged[name]:>4} judged, {recovered[name]:>4} recovered "
            f"(FAIL), {not_run[name]:>4} not run, power {power}  {time}"
        )
    return lines


def _settings(verdict: dict[str, Any]) -> dict[str, Any]:
    """A verdict record's configuration without the run's score cache record."""
    return {k: v for k, v in (verdict.get("config") or {}).items() if k != "score_cache"}
