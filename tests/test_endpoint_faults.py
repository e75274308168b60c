"""Endpoint faults: a misbehaving OpenAI-compatible server, reached with the real ``openai``
client, is retried with backoff; a fault that outlasts the retries leaves the attacks it touched
"not run" (the claim INCONCLUSIVE, never PASS), and the API key appears in no verdict, log or
run log."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

import pytest
import torch

from unlearncheck import assert_forgotten, assert_retained, load_facts, scoring
from unlearncheck.attacks import direct, incontext
from unlearncheck.backends.openai_api import OpenAIModel
from unlearncheck.facts import FactSet
from unlearncheck.organism import zoo_dir
from unlearncheck.serve import ModelServer, serve
from unlearncheck.verdict import Verdict

KEY = "sk-test-SECRET123"
RETRIES = 2
#: Seconds before the first retry (doubled for each next one): short, so that the tests are.
BACKOFF = 0.01
#: Seconds a request may take: ample for a healthy batch on a busy machine.
TIMEOUT = 30.0
#: Seconds a request may take against the slow server, which never answers.
SLOW_TIMEOUT = 0.5
#: Seconds the server asks a rate-limited client to wait.
RETRY_AFTER = 1
ATTACKS = (direct, incontext)
#: The facts probes may draw on: 24 of the forget set keep a claim to a few batches while
#: giving chance enough control statistics to reach the corrected level of its six tests
#: (without an original, a smaller pool is "not run": PASS on ``gold`` needs them).
CONTEXT_FACTS = 24

Fault = Literal[
    "forward", "http500", "http429", "http401", "not_json", "no_choices", "no_logprobs", "slow"
]


class FaultyServer:
    """An OpenAI-compatible server on a free loopback port that misbehaves on purpose.

    Request ``i`` meets ``faults[i]`` and, once those are used up, ``then``; ``forward`` relays
    the request to the healthy ``upstream`` server. The arrival time of every request is kept.
    """

    def __init__(self, upstream: str, faults: Sequence[Fault], then: Fault) -> None:
        self.upstream = urlsplit(upstream)
        self.faults = list(faults)
        self.then = then
        self.arrivals: list[float] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FaultHandler)
        self._httpd.faulty = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def requests(self) -> int:
        return len(self.arrivals)

    def next_fault(self) -> Fault:
        """Count a request and pick its fault."""
        with self._lock:
            self.arrivals.append(time.monotonic())
            return self.faults.pop(0) if self.faults else self.then

    def forward(self, path: str, body: bytes, authorization: str) -> tuple[int, bytes]:
        """Status and body of the upstream server's answer to the request."""
        connection = http.client.HTTPConnection(
            self.upstream.hostname or "", self.upstream.port, timeout=TIMEOUT
        )
        try:
            headers = {"Content-Type": "application/json", "Authorization": authorization}
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def hang(self) -> None:
        """Answer nothing until the server stops."""
        self._closing.wait()

    def stop(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class _FaultHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        faulty = cast(FaultyServer, self.server.faulty)  # type: ignore[attr-defined]
        fault = faulty.next_fault()
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        authorization = self.headers.get("Authorization", "")
        if fault == "slow":
            faulty.hang()
        elif fault in ("forward", "no_logprobs"):
            status, answer = faulty.forward(self.path, body, authorization)
            if fault == "no_logprobs":
                completion = json.loads(answer)
                for choice in completion["choices"]:
                    del choice["logprobs"]
                answer = json.dumps(completion).encode()
            self._reply(status, answer)
        elif fault == "http500":  # a careless proxy that echoes the request's credentials
            self._error(500, f"upstream failed for a request with {authorization}")
        elif fault == "http429":
            self._error(429, "rate limit reached", {"Retry-After": str(RETRY_AFTER)})
        elif fault == "http401":
            self._error(401, "invalid API key")
        elif fault == "not_json":
            self._reply(200, f"<html>502 Bad Gateway ({authorization})</html>".encode())
        elif fault == "no_choices":
            self._reply(200, json.dumps({"id": "cmpl-0", "object": "text_completion"}).encode())

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._reply(status, json.dumps({"error": {"message": message}}).encode(), headers)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read the counts instead."""


@dataclass(frozen=True)
class Healthy:
    """The claim through a server that only relays: its verdict and the requests it took."""

    verdict: Verdict
    requests: int


@pytest.fixture(scope="module")
def upstream(zoo: Path) -> Iterator[ModelServer]:
    """The healthy server: ``gold`` of the zoo (it forgot the forget set), keyed.

    It runs torch on one thread: on a machine whose cores are all busy, two threads of one
    operation wait on each other and a claim took 80-160 s instead of 6 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with serve(str(zoo / "gold"), name="gold", api_key=KEY) as server:
            yield server
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def context() -> FactSet:
    return load_facts(zoo_dir(0) / "facts.jsonl").split("forget")[:CONTEXT_FACTS]


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def start(upstream: ModelServer) -> Iterator[Callable[..., FaultyServer]]:
    """Starts faulty servers in front of the healthy one; stops them after the test."""
    started: list[FaultyServer] = []

    def start(faults: Sequence[Fault] = (), then: Fault = "forward") -> FaultyServer:
        started.append(FaultyServer(upstream.url, faults, then))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def healthy(
    upstream: ModelServer, context: FactSet, tmp_path_factory: pytest.TempPathFactory
) -> Healthy:
    server = FaultyServer(upstream.url, (), "forward")
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setenv("OPENAI_API_KEY", KEY)
            verdict = run_claim(server.url, context, tmp_path_factory.mktemp("healthy"))
        return Healthy(verdict, server.requests)
    finally:
        server.stop()


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The log records of the test from INFO up, the openai client's and httpx's included (their
    DEBUG records, which hold every request's prompts, are read in the tests of few requests)."""
    caplog.set_level(logging.INFO)
    return caplog


def run_claim(
    base_url: str,
    context: FactSet,
    directory: Path,
    *,
    timeout: float = TIMEOUT,
    check: Callable[..., Verdict] = assert_forgotten,
) -> Verdict:
    """The claim (``assert_forgotten`` with `ATTACKS`, or ``assert_retained``) on three facts of
    ``context`` against ``base_url``, logged to ``directory / "run.jsonl"``."""
    scoring.forget_scores()  # scores of an earlier server on the same port must not answer
    model = OpenAIModel("gold", base_url, timeout=timeout, retries=RETRIES, backoff=BACKOFF)
    attacks = {"attacks": ATTACKS} if check is assert_forgotten else {}
    return check(
        model,
        context[:3],
        context=context,
        on_inconclusive="return",
        raise_on_fail=False,
        runlog=directory / "run.jsonl",
        **attacks,
    )


def retries_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.name == "unlearncheck.backends.openai_api" for r in caplog.records)


def written(verdict: Verdict, directory: Path, caplog: pytest.LogCaptureFixture) -> str:
    """Everything written about a claim: verdict, explanation, run log and log records."""
    run_log = directory / "run.jsonl"
    return "\n".join(
        [json.dumps(verdict.to_dict()), verdict.explain(), run_log.read_text(), caplog.text]
    )


def facts_of(verdict: Verdict) -> list[dict[str, object]]:
    return [fact.to_dict() for fact in verdict.facts]


def test_a_relaying_server_passes_the_claim(healthy: Healthy) -> None:
    assert healthy.verdict.status == "PASS" and healthy.requests > 0


@pytest.mark.parametrize(
    "faults",
    [("http429",), ("http500", "http500"), ("not_json", "no_logprobs")],
    ids=["429 then fine", "500 twice then fine", "not JSON, no logprobs, then fine"],
)
def test_transient_faults_are_retried_and_the_verdict_is_unchanged(
    faults: tuple[Fault, ...],
    healthy: Healthy,
    start: Callable[..., FaultyServer],
    context: FactSet,
    logged: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    server = start(faults)
    verdict = run_claim(server.url, context, tmp_path)
    assert server.requests == healthy.requests + len(faults)
    assert retries_logged(logged) == len(faults)
    assert verdict.status == healthy.verdict.status == "PASS"
    assert facts_of(verdict) == facts_of(healthy.verdict)
    if faults == ("http429",):  # the server's Retry-After, not the 10 ms backoff, set the wait
        assert server.arrivals[1] - server.arrivals[0] >= RETRY_AFTER
    assert KEY not in written(verdict, tmp_path, logged)


@pytest.mark.parametrize(
    ("fault", "named", "timeout"),
    [
        ("http500", "HTTP 500", TIMEOUT),
        ("not_json", "malformed response", TIMEOUT),
        ("no_choices", "malformed response (no choices", TIMEOUT),
        ("no_logprobs", "malformed response (no log-probabilities", TIMEOUT),
        ("slow", f"no answer within {SLOW_TIMEOUT:g} s", SLOW_TIMEOUT),
    ],
)
def test_lasting_faults_leave_every_attack_not_run(
    fault: Fault,
    named: str,
    timeout: float,
    start: Callable[..., FaultyServer],
    context: FactSet,
    logged: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    logged.set_level(logging.DEBUG)
    server = start(then=fault)
    verdict = run_claim(server.url, context, tmp_path, timeout=timeout)
    assert server.requests == len(ATTACKS) * (1 + RETRIES)
    assert retries_logged(logged) == len(ATTACKS) * RETRIES
    assert_not_run(verdict, f"endpoint error after {RETRIES} retries: {named}")
    if fault == "http500":  # the server echoed the key; the reason masks it
        assert "[API key]" in verdict.facts[0].attacks[0].reason
    assert KEY not in written(verdict, tmp_path, logged)


def test_a_refused_connection_leaves_every_attack_not_run(
    context: FactSet, logged: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with socket.socket() as unused:  # a port nothing listens on once the socket is closed
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    logged.set_level(logging.DEBUG)
    verdict = run_claim(f"http://127.0.0.1:{port}/v1", context, tmp_path)
    assert retries_logged(logged) == len(ATTACKS) * RETRIES
    assert_not_run(verdict, f"endpoint error after {RETRIES} retries: cannot connect to")
    assert KEY not in written(verdict, tmp_path, logged)


def test_a_rejected_request_is_not_retried(
    start: Callable[..., FaultyServer],
    context: FactSet,
    logged: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    server = start(then="http401")
    verdict = run_claim(server.url, context, tmp_path)
    assert server.requests == len(ATTACKS) and retries_logged(logged) == 0
    assert_not_run(verdict, "endpoint error: HTTP 401")
    assert KEY not in written(verdict, tmp_path, logged)


def test_a_retained_claim_reports_a_failing_endpoint_as_not_run(
    start: Callable[..., FaultyServer],
    context: FactSet,
    logged: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    server = start(then="http500")
    verdict = run_claim(server.url, context, tmp_path, check=assert_retained)
    assert server.requests == 1 + RETRIES
    assert verdict.status == "INCONCLUSIVE"
    for fact in verdict.facts:
        assert fact.status == "INCONCLUSIVE"
        assert fact.reason.startswith(f"not run: direct (endpoint error after {RETRIES} retries")
    assert KEY not in written(verdict, tmp_path, logged)


def assert_not_run(verdict: Verdict, reason: str) -> None:
    """Every attack on every fact did not run, for ``reason``; no fact passed."""
    assert verdict.status == "INCONCLUSIVE"
    for fact in verdict.facts:
        assert fact.status == "INCONCLUSIVE"
        assert fact.reason.startswith(f"not run: {ATTACKS[0].name} ({reason}")
        assert [a.attack for a in fact.attacks] == [a.name for a in ATTACKS]
        for outcome in fact.attacks:
            assert (outcome.outcome, outcome.blocking) == ("not run", True)
            assert outcome.reason.startswith(reason)
