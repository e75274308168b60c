"""`unlearncheck serve` under abuse: a per-request work cap, work stopped when the client leaves,
``/v1/models`` never behind a running request, and every malformed header or field a 4xx."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from unlearncheck.backends.hf import HFModel
from unlearncheck.serve import DEFAULT_MAX_WORK, ModelServer, serve
from unlearncheck.serve import server as server_module

PROMPT = "the capital of france is"


@pytest.fixture(scope="module")
def hf(tiny_checkpoint: Path) -> HFModel:
    return HFModel.load(str(tiny_checkpoint), device="cpu")


@pytest.fixture(scope="module")
def server(hf: HFModel) -> Iterator[ModelServer]:
    with serve(hf, name="tiny") as running:
        yield running


def _send(server: ModelServer, head: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a request written byte for byte (headers as Latin-1)."""
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def _post(server: ModelServer, body: dict[str, Any], timeout: float = 30) -> tuple[int, Any]:
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        connection.request("POST", "/v1/completions", body=json.dumps(body))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_request_over_the_work_cap_is_413_with_the_numbers(server: ModelServer) -> None:
    """30 prompts × n 128 × 30 tokens held the process lock 54 s before the cap."""
    body = {"model": "tiny", "prompt": [PROMPT] * 30, "n": 128, "max_tokens": 30}
    status, payload = _post(server, body)
    assert status == 413
    message = payload["error"]["message"]
    assert "30 prompt(s) × n 128 × 30 tokens = 115,200" in message
    assert f"{DEFAULT_MAX_WORK:,}" in message and "--max-work" in message


def test_the_work_cap_is_configurable(hf: HFModel) -> None:
    with serve(hf, name="tiny", max_work=10) as small:
        assert _post(small, {"model": "tiny", "prompt": PROMPT, "max_tokens": 10})[0] == 200
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 6, "n": 2}
        assert _post(small, body)[0] == 413
    with pytest.raises(ValueError, match="max_work must be at least 1"):
        ModelServer(hf, max_work=0)
    refused = subprocess.run(
        [sys.executable, "-m", "unlearncheck.cli", "serve", "x", "--max-work", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2 and "--max-work: must be at least 1" in refused.stderr


def test_models_answers_while_a_request_holds_the_model(server: ModelServer) -> None:
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    with server_module._LOCK:  # as a long generation holds it
        connection.request("GET", "/v1/models")
        assert connection.getresponse().status == 200
    connection.close()


def test_work_stops_when_the_client_leaves(server: ModelServer, hf: HFModel) -> None:
    passes: list[float] = []

    def slow(module: object, args: object) -> None:
        passes.append(time.monotonic())
        time.sleep(0.2)

    handle = hf.model.register_forward_pre_hook(slow)
    try:
        parts = urlsplit(server.url)
        body = json.dumps({"model": "tiny", "prompt": PROMPT, "max_tokens": 50}).encode()
        with socket.create_connection((parts.hostname or "", parts.port or 0)) as sock:
            head = f"POST /v1/completions HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body)
            time.sleep(1.0)
        left = time.monotonic()
        assert server_module._LOCK.acquire(timeout=3), "the request still holds the model"
        server_module._LOCK.release()
    finally:
        handle.remove()
    assert 0 < len(passes) < 20 and passes[-1] < left + 1  # 50 passes (10 s) when it ran on


@pytest.mark.parametrize(
    "header",
    [
        "Content-Length: \u00b2",  # int() reads a superscript two
        "Content-Length: " + "9" * 5000,  # int() refuses over 4,300 digits
        "Content-Length: -1",
        "Content-Length: 2\r\nContent-Length: 3",
        "Content-Length: 40",  # the body ends first
    ],
)
def test_malformed_headers_are_4xx(server: ModelServer, header: str) -> None:
    status, payload = _send(server, f"POST /v1/completions HTTP/1.1\r\n{header}\r\n", b"{}")
    assert 400 <= status < 500 and payload["error"]["message"]


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 1e-300},
        {"temperature": 5e-324, "n": 3, "seed": 1},
        {"top_p": 1e-300},
        {"seed": -(2**63)},
        {"seed": 2**64 - 1},
        {"max_tokens": 0, "echo": True, "logprobs": 20},
        {"prompt": [[3]]},
        {"stop": ["\u0000"]},
        {"prompt": "\u00b2 \ud7ff"},
    ],
)
def test_odd_fields_are_answered_or_4xx(server: ModelServer, fields: dict[str, Any]) -> None:
    status, payload = _post(server, {"model": "tiny", "prompt": PROMPT, **fields})
    assert status == 200 or 400 <= status < 500, payload


def test_a_tiny_temperature_decodes_greedily(server: ModelServer) -> None:
    answers = [
        _post(server, {"model": "tiny", "prompt": PROMPT, "temperature": t, "max_tokens": 5})
        for t in (0, 1e-300)
    ]
    assert answers[0][0] == answers[1][0] == 200
    assert answers[0][1]["choices"][0]["text"] == answers[1][1]["choices"][0]["text"]
