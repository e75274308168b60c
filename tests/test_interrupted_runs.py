"""Interrupted runs: a run killed at any moment loses no verdict and resumes from its score cache,
a crashed pytest-xdist worker is reported, and no secret of the environment reaches an artifact.

Every suite here runs as a real ``python -m pytest`` process on the organism (npo_gd against the
original), with its own score cache, report and run log in a temporary directory.
"""

from __future__ import annotations

import html
import http.server
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from unlearncheck import cli
from unlearncheck.outputs import session_file
from unlearncheck.runlog import case_logs, read_run, read_runlog
from unlearncheck.serve import serve

SEED = 20261201
#: Kills at seeded-random moments; one more comes while the session merges its case logs.
RANDOM_KILLS = 5
#: Secrets in the environment of every run; none may reach an artifact.
SECRETS = {
    "OPENAI_API_KEY": "sk-unlearncheck-SECRET-5d0c3b9e71a4f286",
    "HF_TOKEN": "hf_SECRETq8Zt4mWv2LkR9xNcJ",
}
#: Seconds one suite may run before the test gives up on it.
RUN_TIMEOUT = 300
POLL_SECONDS = 0.05
#: How often the end of a session is looked for (it merges its case logs in milliseconds).
FINISH_POLL_SECONDS = 0.002

#: Each group of three people (birth cities) is one claim, calibrated on its own people only, so
#: the claims share no scores and the work is spread over the run.
CLAIMS_SUITE = """
import pytest
from unlearncheck import assert_forgotten, assert_retained
from unlearncheck.attacks import direct, paraphrase
from unlearncheck.facts import FactSet


def people(facts, split, group):
    same = facts.split(split).filter(lambda fact: fact.relation == "birth_city")
    return FactSet(same[3 * group : 3 * group + 3])


@pytest.mark.parametrize("group", range(3))
def test_forgotten(group, unlearned, original, facts):
    forget = people(facts, "forget", group)
    assert_forgotten(
        unlearned, forget, attacks=[direct, paraphrase], original=original, context=forget,
        claim=f"group {group} forgotten", on_inconclusive="return",
    )


def test_retained(unlearned, original, facts):
    retain = people(facts, "retain", 0)
    assert_retained(
        unlearned, retain, original=original, context=retain, claim="group 0 retained",
        on_inconclusive="return",
    )
"""
#: Counts the requests each process asks a local model to score, in ``scored.txt``.
COUNTING_CONFTEST = """
from pathlib import Path

from unlearncheck.backends.hf import HFModel

_score_answers = HFModel.score_answers


def _counted(self, requests, **options):
    with open(Path(__file__).parent / "scored.txt", "a") as counts:
        counts.write(f"{len(requests)}\\n")
    return _score_answers(self, requests, **options)


HFModel.score_answers = _counted
"""
#: Two claims, and a test that kills its own xdist worker after its claim.
CRASHING_SUITE = """
import os
import signal

import pytest
from unlearncheck import assert_forgotten
from unlearncheck.attacks import direct
from unlearncheck.facts import FactSet


def claim(unlearned, original, facts, group):
    same = facts.split("forget").filter(lambda fact: fact.relation == "birth_city")
    forget = FactSet(same[3 * group : 3 * group + 3])
    assert_forgotten(
        unlearned, forget, attacks=[direct], original=original, context=forget,
        claim=f"group {group}", on_inconclusive="return", raise_on_fail=False,
    )


@pytest.mark.parametrize("group", range(2))
def test_claim(group, unlearned, original, facts):
    claim(unlearned, original, facts, group)


def test_killed_after_its_claim(unlearned, original, facts, request):
    claim(unlearned, original, facts, 2)
    with open(request.config.rootpath / "killed.txt", "a") as killed:
        killed.write(request.node.nodeid + "\\n")
    os.kill(os.getpid(), signal.SIGKILL)
"""
#: Claims on endpoints: the served one (with the key), one refusing connections and one failing
#: with HTTP 500 that quotes the request's Authorization header (retried without waiting long).
ENDPOINT_SUITE = """
import pytest
from unlearncheck import assert_forgotten
from unlearncheck.attacks import direct
from unlearncheck.backends.openai_api import OpenAIModel
from unlearncheck.facts import FactSet

FAILING = {failing!r}


def people(facts):
    same = facts.split("forget").filter(lambda fact: fact.relation == "birth_city")
    return FactSet(same[:3])


def test_served_endpoint(unlearned, original, facts):
    forget = people(facts)
    assert_forgotten(
        unlearned, forget, attacks=[direct], original=original, context=forget,
        claim="served endpoint",
    )


@pytest.mark.parametrize("endpoint", sorted(FAILING))
def test_failing_endpoint(endpoint, original, facts):
    forget = people(facts)
    assert_forgotten(
        OpenAIModel("original", FAILING[endpoint], backoff=0.01), forget, attacks=[direct],
        original=original, context=forget, claim=f"{{endpoint}} endpoint",
    )
"""


@dataclass
class Outcome:
    """How a pytest process ended: its exit status and standard output (also kept as a file)."""

    returncode: int
    stdout: str


class Suite:
    """A claims suite in a directory, run as ``python -m pytest`` with outputs in ``out``."""

    def __init__(self, directory: Path, zoo: Path, out: str) -> None:
        self.directory = directory
        self.out = directory / out
        self.log = self.out / "run.jsonl"
        self.report = self.out / "report.html"
        self.cache = self.out / "scores.sqlite"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
            "UNLEARNCHECK_CACHE": str(zoo.parent.parent),
            # One torch thread a run: on two busy cores, threads waiting for each other made a
            # forward pass of the organism 50 times slower.
            "OMP_NUM_THREADS": "1",
            **SECRETS,
        }

    def command(self, *options: str) -> list[str]:
        return [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly"),
            *("-p", "no:hypothesispytest"),  # unused here; a second less to start
            *("-q", "-rA", "-l", "--tb=long", "--log-level=DEBUG", "-o", "junit_logging=all"),
            f"--junitxml={self.out / 'junit.xml'}",
            "--uc-original=organism:original",
            f"--uc-cache={self.cache}",
            f"--uc-report={self.report}",
            f"--uc-json={self.log}",
            *options,
        ]

    def start(self, *options: str, name: str) -> subprocess.Popen[bytes]:
        """Start the suite; its stdout and stderr go to ``name.stdout`` / ``name.stderr``."""
        self.out.mkdir(exist_ok=True)
        with (
            open(self.out / f"{name}.stdout", "wb") as stdout,
            open(self.out / f"{name}.stderr", "wb") as stderr,
        ):
            return subprocess.Popen(
                self.command(*options),
                cwd=self.directory,
                env=self.env,
                stdout=stdout,
                stderr=stderr,
            )

    def run(self, *options: str, name: str) -> Outcome:
        """Run the suite to its end."""
        process = self.start(*options, name=name)
        returncode = process.wait(timeout=RUN_TIMEOUT)
        return Outcome(returncode, (self.out / f"{name}.stdout").read_text("utf-8"))

    def scored(self) -> int:
        """Requests the local models were asked to score so far, by every run of the suite."""
        counts = self.directory / "scored.txt"
        return sum(int(n) for n in counts.read_text().split()) if counts.exists() else 0

    def session_log(self, session: str | None) -> Path:
        """The run log of one session (``--uc-json`` links to the latest session's)."""
        return session_file(self.log, str(session))

    def sessions(self) -> set[str]:
        """The sessions whose case logs are in the output directory (``.run.<session>.jsonl.
        <session>.<process>.cases``)."""
        return {path.name.split(".")[-3] for path in self.out.glob(".*.cases")}

    def cached(self) -> int:
        """Scores committed to the suite's cache file."""
        if not self.cache.exists():
            return 0
        with sqlite3.connect(self.cache) as db:
            return int(db.execute("SELECT COUNT(*) FROM loglikelihoods").fetchone()[0])


def complete_records(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Every complete line of a run log, parsed (each must be a JSON record), and whether its
    last line is cut short."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    records = [json.loads(line) for line in lines[:-1] if line.strip()]
    return records, lines[-1] != b""


def session_of(records: list[dict[str, Any]]) -> str | None:
    """The pytest session named in a run log's header."""
    return next((str(r.get("session")) for r in records if r["kind"] == "run"), None)


def judged(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each verdict of a run log as compared between runs: the claim's status and, per fact,
    its status and every attack's outcome and leaking probes."""
    return {
        r["claim"]: (
            r["status"],
            [
                (
                    f["fact_id"],
                    f["status"],
                    [(a["attack"], a["outcome"], a.get("leaks")) for a in f["attacks"]],
                )
                for f in r["facts"]
            ],
        )
        for r in records
        if r["kind"] == "verdict"
    }


def rechecked(records: list[dict[str, Any]]) -> int:
    """Cached scores the verdicts of a run log re-scored (`unlearncheck.cache_check`)."""
    return sum(
        r["config"].get("score_cache", {}).get("rechecked", 0)
        for r in records
        if r["kind"] == "verdict"
    )


def report_command(
    runlog: Path, out: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Exit status and stderr of ``unlearncheck report RUNLOG -o OUT``, and the page written."""
    capsys.readouterr()
    status = cli.main(["report", str(runlog), "-o", str(out)])
    stderr = capsys.readouterr().err
    return status, stderr, out.read_text("utf-8") if status == 0 else ""


def secrets_found(directory: Path) -> tuple[int, list[str]]:
    """How many files under ``directory`` were searched, and which hold a secret's value."""
    files = [path for path in directory.rglob("*") if path.is_file()]
    leaks = [
        f"{path.relative_to(directory)}: {name}"
        for path in files
        for name, value in SECRETS.items()
        if value.encode() in path.read_bytes()
    ]
    return len(files), leaks


@pytest.fixture
def claims_suite(tmp_path: Path) -> Path:
    """The claims suite, counting the requests it scores."""
    (tmp_path / "test_claims.py").write_text(CLAIMS_SUITE)
    (tmp_path / "conftest.py").write_text(COUNTING_CONFTEST)
    return tmp_path


def new_session(suite: Suite, known: set[str], process: subprocess.Popen[bytes]) -> str | None:
    """The session of the first case log that is not in ``known`` (None: the run ended first)."""
    while process.poll() is None:
        fresh = suite.sessions() - known
        if fresh:
            return fresh.pop()
        time.sleep(POLL_SECONDS)
    return None


def case_lines(suite: Suite, session: str | None) -> int:
    """Complete lines in the case logs of ``session``: how far its claims have got."""
    logs = case_logs(suite.session_log(session)).get(str(session), [])
    return sum(path.read_bytes().count(b"\n") for path in logs if path.exists())


@dataclass(frozen=True)
class Progress:
    """How far a run's claims have got: case lines written, scores cached, seconds taken."""

    lines: int
    scores: int
    seconds: float = 0.0

    @classmethod
    def of(cls, suite: Suite, session: str | None, seconds: float = 0.0) -> Progress:
        return cls(case_lines(suite, session), suite.cached(), seconds)

    def reached(self, target: Progress) -> bool:
        return self.lines >= target.lines and self.scores >= target.scores

    def __str__(self) -> str:
        return f"{self.seconds:.1f} s: {self.lines} case lines, {self.scores} scores"


def merging(suite: Suite, session: str | None) -> bool:
    """Whether the session has begun to merge its case logs into its run log."""
    log = suite.session_log(session)
    if not log.exists():
        return False
    text = log.read_bytes()
    return f'"session": "{session}"'.encode() in text and b'\n{"kind": "case"' in text


def verdicts_so_far(suite: Suite, session: str | None) -> set[str]:
    """Claims with a verdict in the run log of ``session`` (empty before that log exists)."""
    log = suite.session_log(session)
    if not log.exists():
        return set()
    records, _ = complete_records(log)
    return set(judged(records)) if session_of(records) == session else set()


def test_a_run_killed_at_random_moments_loses_no_verdict_and_resumes(
    claims_suite: Path, zoo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = "--uc-model=organism:npo_gd"
    started = time.monotonic()
    claims = {"group 0 forgotten", "group 1 forgotten", "group 2 forgotten", "group 0 retained"}
    uninterrupted = Suite(claims_suite, zoo, "uninterrupted")
    process = uninterrupted.start(model, name="run")
    session = new_session(uninterrupted, set(), process)
    first_case = time.monotonic()
    progress: list[Progress] = []  # of the claims: from the first case to the last verdict
    while process.poll() is None and verdicts_so_far(uninterrupted, session) != claims:
        progress.append(Progress.of(uninterrupted, session, time.monotonic() - first_case))
        time.sleep(POLL_SECONDS)
    assert process.wait(timeout=RUN_TIMEOUT) == pytest.ExitCode.TESTS_FAILED
    expected = judged(list(read_runlog(uninterrupted.log)))
    assert set(expected) == claims
    assert {status for status, _ in expected.values()} >= {"PASS", "FAIL"}
    total = uninterrupted.scored()
    assert total == uninterrupted.cached() > 0
    all_cases = sum(r["kind"] == "case" for r in read_runlog(uninterrupted.log))

    # One cache, killed again and again at seeded points p_1 < ... < p_N of the uninterrupted
    # run's claims (p_k drawn in the k-th of N equal slices of their time): run k is killed as
    # soon as it has got as far as the uninterrupted run had at p_k (as many case lines written
    # and scores cached, or merging them already), which load on the machine does not shift.
    # Then one run is killed as it merges its case logs, and the next is left to finish.
    rng = random.Random(SEED)
    points = [(k + rng.random()) / RANDOM_KILLS for k in range(RANDOM_KILLS)]
    targets = [next(s for s in progress if s.seconds >= p * progress[-1].seconds) for p in points]
    plan = [*(f"at p={p:.3f} ({t})" for p, t in zip(points, targets, strict=True)), "merging"]
    suite = Suite(claims_suite, zoo, "killed")
    kills: list[str] = []  # one line per kill point, each recovered without loss
    for number in range(len(plan) + 1):
        cached, scored, known = suite.cached(), suite.scored(), suite.sessions()
        process = suite.start(model, name=f"run{number}")
        session = new_session(suite, known, process)
        seen: set[str] = set()
        if number < len(targets):
            target = targets[number]
            while process.poll() is None and not (
                Progress.of(suite, session).reached(target) or merging(suite, session)
            ):
                seen = verdicts_so_far(suite, session) or seen
                time.sleep(POLL_SECONDS)
        elif number == len(targets):
            while process.poll() is None and not merging(suite, session):
                time.sleep(FINISH_POLL_SECONDS)
            seen = set(expected)  # every test has reported: every verdict is in the log
        if number == len(plan) or process.poll() is not None:
            break  # the run after the last kill (or one that ended before its kill): below
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert suite.cached() - cached <= suite.scored() - scored  # each stored score was asked

        log = suite.session_log(session)
        records, cut = complete_records(log) if log.exists() else ([], False)
        ours = session_of(records) == session
        kept = judged(records) if ours else {}
        leftovers = case_logs(log).get(str(session), [])
        cases = [r for path in leftovers for r in complete_records(path)[0] if r["kind"] == "case"]
        assert seen <= set(kept), f"kill {number}: verdicts lost: {seen - set(kept)}"
        assert kept == {claim: expected[claim] for claim in kept}
        if kept == expected:  # every claim ran: no case result is lost or counted twice, and
            assert sum(r["kind"] == "case" for r in read_run(log)) == all_cases
            # only what was not cached is scored, and the cached scores the checks re-scored
            assert suite.scored() - scored == total - cached + rechecked(records)
        status, stderr, page = report_command(log, suite.out / f"kill{number}.html", capsys)
        assert status == 0, stderr
        for claim in kept:
            assert html.escape(claim) in page
        if leftovers and (ours or not records):
            assert "reading them too: " + ", ".join(p.name for p in leftovers) in stderr
            for claim in {str(case["claim"]) for case in cases} - set(kept):
                assert f"<li>{html.escape(claim)}: " in page, claim  # interrupted
        if cut and ours:
            assert "the last line is cut short" in stderr
        kills.append(
            f"{plan[number]}: {len(kept)} verdicts in the log, {len(cases)} case records left "
            f"({sum(r['kind'] == 'case' for r in records)} merged), scores cached "
            f"{suite.cached()} of {total}, last line {'cut short' if cut and ours else 'whole'}"
        )

    assert process.wait(timeout=RUN_TIMEOUT) == pytest.ExitCode.TESTS_FAILED
    records, cut = complete_records(suite.log)
    assert judged(records) == expected and not cut
    # only what the kills left unscored, and the cached scores the checks re-scored
    assert suite.scored() - scored - rechecked(records) == total - cached < total
    assert suite.cached() == total
    assert not case_logs(suite.log) and suite.report.exists()

    # A last line cut short is skipped, and said so.
    cut_copy = suite.out / "cut.jsonl"
    text = suite.log.read_bytes()
    cut_copy.write_bytes(text[: len(text) - len(text.rsplit(b"\n", 2)[-2]) // 2 - 1])
    status, stderr, page = report_command(cut_copy, suite.out / "cut.html", capsys)
    assert status == 0 and "the last line is cut short" in stderr
    records, cut = complete_records(cut_copy)
    assert cut and all(html.escape(claim) in page for claim in judged(records))

    searched, leaks = secrets_found(claims_suite)
    assert not leaks
    with capsys.disabled():
        print(f"\nuninterrupted: claims {progress[-1]} after {first_case - started:.1f} s")
        print(f"kill points tried {len(kills)} of {len(plan)}, each recovered without loss:")
        print("\n".join(f"  {kill}" for kill in kills))
        print(f"the run after the last kill scored {total - cached} of {total}")
        print(f"files searched for secrets {searched}, clean {searched}")
    assert len(kills) == len(plan)


def test_a_test_that_kills_its_xdist_worker_is_reported_as_not_completed(
    tmp_path: Path, zoo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "test_crashing.py").write_text(CRASHING_SUITE)
    suite = Suite(tmp_path, zoo, "out")
    outcome = suite.run("--uc-model=organism:npo_gd", "-n", "2", name="run")
    assert outcome.returncode == pytest.ExitCode.TESTS_FAILED, outcome.stdout
    killed = (tmp_path / "killed.txt").read_text().split()  # written by each test before its kill
    assert killed == ["test_crashing.py::test_killed_after_its_claim"]
    for test in killed:
        assert f"crashed while running '{test}'" in outcome.stdout
        assert f"did not complete: {test} (worker 'gw" in outcome.stdout
    assert "1 failed, 2 passed" in outcome.stdout

    records = list(read_runlog(suite.log))
    reported = [r["test"] for r in records if r["kind"] == "not_completed"]
    assert reported == killed
    assert sorted(judged(records)) == ["group 0", "group 1"]
    assert any(r["kind"] == "case" and r["claim"] == "group 2" for r in records)  # merged
    assert not case_logs(suite.log)
    page = suite.report.read_text("utf-8")
    not_completed = page[page.index('id="not-completed"') :].split("</div>")[0]
    for test in killed:
        assert f"<code>{test}</code>: worker" in not_completed
    assert "The run was interrupted" in page and "<li>group 2: " in page

    searched, leaks = secrets_found(tmp_path)
    assert not leaks
    with capsys.disabled():
        print(
            f"\nxdist worker kills {len(killed)}, reported {len(reported)}; "
            f"files searched for secrets {searched}, clean {searched}"
        )


class EchoingEndpoint(http.server.BaseHTTPRequestHandler):
    """Fails every request with HTTP 500, quoting the request's Authorization header."""

    def do_POST(self) -> None:
        body = json.dumps(
            {"error": {"message": f"upstream failed for {self.headers.get('Authorization')}"}}
        ).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent."""


def closed_port() -> int:
    """A loopback port nothing listens on (once the socket is closed)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return int(unused.getsockname()[1])


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch in this process on one thread, as in the runs (see `Suite`), while it serves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_no_secret_of_the_environment_reaches_an_artifact(
    tmp_path: Path, zoo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    echoing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoingEndpoint)
    threading.Thread(target=echoing.serve_forever, daemon=True).start()
    try:
        with serve(
            str(zoo / "original"), name="original", api_key=SECRETS["OPENAI_API_KEY"]
        ) as served:
            failing = {
                "closed": f"http://127.0.0.1:{closed_port()}/v1",
                "echoing": f"http://127.0.0.1:{echoing.server_address[1]}/v1",
            }
            (tmp_path / "test_endpoints.py").write_text(ENDPOINT_SUITE.format(failing=failing))
            suite = Suite(tmp_path, zoo, "out")
            outcome = suite.run(
                f"--uc-model=openai:original@{served.url}",
                f"--uc-facts={zoo / 'facts.jsonl'}",
                name="run",
            )
    finally:
        echoing.shutdown()
        echoing.server_close()
    assert outcome.returncode == pytest.ExitCode.TESTS_FAILED, outcome.stdout
    verdicts = {r["claim"]: r for r in read_runlog(suite.log) if r["kind"] == "verdict"}
    assert verdicts["served endpoint"]["status"] == "FAIL"  # the key was sent and accepted
    for claim in ("closed endpoint", "echoing endpoint"):
        assert verdicts[claim]["status"] == "INCONCLUSIVE"
        reason = verdicts[claim]["facts"][0]["attacks"][0]["reason"]
        assert reason.startswith("endpoint error after 3 retries")
    assert "[API key]" in verdicts["echoing endpoint"]["facts"][0]["attacks"][0]["reason"]
    written = ("report.html", "run.jsonl", "junit.xml", "scores.sqlite", "run.stdout")
    assert all((suite.out / name).stat().st_size > 0 for name in written)
    searched, leaks = secrets_found(tmp_path)
    assert not leaks
    with capsys.disabled():
        print(f"\nendpoint runs: files searched for secrets {searched}, clean {searched}")
