"""The HTTP side of `unlearncheck.serve`: handler, `ModelServer`, `serve` and `run_forever`."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import select
import socket
import sys
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

from unlearncheck.backends.hf import HFModel
from unlearncheck.serve.app import App
from unlearncheck.serve.engine import Cancelled
from unlearncheck.serve.requests import DEFAULT_MAX_WORK, APIError, Body

__all__ = ["MAX_BODY_BYTES", "ModelServer", "run_forever", "serve"]

logger = logging.getLogger(__name__)

#: Largest request body accepted, in bytes (larger ones get 413).
MAX_BODY_BYTES = 1 << 20
_LOCK = threading.Lock()  # one model call at a time, across all servers of the process
_BYTE_COUNT = re.compile(r"[0-9]{1,15}")  # ASCII digits only: int() also reads "²" and "٣"


class _Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests with the server's `App`."""

    protocol_version = "HTTP/1.1"
    server_version = "unlearncheck"
    timeout = 60  # seconds an idle keep-alive connection is held

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        app = cast(_HTTPServer, self.server).app
        try:
            if not app.authorized(self.headers.get("Authorization")):
                raise APIError(401, "missing or invalid API key", code="invalid_api_key")
            action = app.route(method, urlsplit(self.path).path)
            if method != "POST":  # /v1/models: no model call, so never behind another request
                payload = action({})
            else:
                body = self._read_body()
                with _LOCK, app.engine.cancelled_when(self._client_gone):
                    payload = action(body)
        except Cancelled:
            logger.info("%s left; its request was cancelled", self.address_string())
            self.close_connection = True
            return
        except APIError as err:
            self._fail(err)
        except Exception as err:
            logger.exception("request %s %s failed", method, urlsplit(self.path).path)
            self._fail(APIError(500, f"internal error: {type(err).__name__}: {err}"))
        else:
            self._reply(200, payload)

    def _read_body(self) -> Body:
        """The request's JSON object.

        Raises:
            APIError: 411 without a length, 413 when too large, 400 for anything but an object.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise APIError(411, "chunked bodies are not supported; send Content-Length")
        lengths = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if not lengths:
            raise APIError(411, "a Content-Length header is required")
        length = lengths.pop()
        if lengths or not _BYTE_COUNT.fullmatch(length):
            raise APIError(400, "the Content-Length header must be one byte count (ASCII digits)")
        if int(length) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        try:
            data = self.rfile.read(int(length))
        except OSError as err:  # the socket timed out before the body was complete
            raise APIError(408, f"the body did not arrive: {err}") from err
        if len(data) < int(length):
            raise APIError(400, f"the body ended after {len(data)} of {length} bytes")
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as err:
            raise APIError(400, f"the body is not valid JSON: {err}", code="invalid_json") from err
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        return body

    def _client_gone(self) -> bool:
        """Whether the client closed its connection (readable with nothing left to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _fail(self, err: APIError) -> None:
        """Answer an error and close the connection (its body may be unread)."""
        self.close_connection = True
        self._reply(err.status, err.body(), err.headers)

    def _reply(self, status: int, payload: Body, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload, allow_nan=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests (bad request line, unknown method, ...) get JSON errors too."""
        self._fail(APIError(code, message or HTTPStatus(code).phrase))

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)


class _HTTPServer(ThreadingHTTPServer):
    """A threading HTTP server carrying the `App` its handlers answer with."""

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        super().__init__(address, _Handler)


class ModelServer:
    """An OpenAI-compatible server over one model, bound to a port on creation.

    Use as a context manager, or call `start` (a daemon thread) and `stop`, or `serve_forever`.

    Attributes:
        name: The model id the server lists and requires.
    """

    def __init__(
        self,
        model: HFModel,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str | None = None,
        api_key: str | None = None,
        max_work: int = DEFAULT_MAX_WORK,
    ) -> None:
        self.name = name or model.spec
        self._httpd = _HTTPServer((host, port), App(model, self.name, api_key, max_work))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the one picked by the system when created with port 0)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The API base URL, e.g. ``http://127.0.0.1:8000/v1``."""
        host = str(self._httpd.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/v1"

    def start(self) -> ModelServer:
        """Serve in a daemon thread (once) and return self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, name=f"serve {self.url}", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted; the socket is closed afterwards."""
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    spec_or_model: str | HFModel,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    name: str | None = None,
    api_key: str | None = None,
    max_work: int = DEFAULT_MAX_WORK,
) -> ModelServer:
    """Start an OpenAI-compatible server over a model in a daemon thread.

    Args:
        spec_or_model: A model spec (see `unlearncheck.specs.resolve_spec`) or a loaded model.
        host: Address to bind; loopback by default.
        port: Port to bind; 0 picks a free one (see `ModelServer.url`).
        name: The model id to serve under; defaults to the model's spec.
        api_key: When given, every request needs ``Authorization: Bearer <api_key>``.
        max_work: The most tokens one request may ask to generate (prompts × n × max_tokens);
            larger requests get 413.

    Returns:
        The running server; use it as a context manager, or call `ModelServer.stop`.
    """
    model = HFModel.load(spec_or_model) if isinstance(spec_or_model, str) else spec_or_model
    server = ModelServer(model, host, port, name=name, api_key=api_key, max_work=max_work)
    return server.start()


def run_forever(
    spec: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    name: str | None = None,
    api_key: str | None = None,
    max_work: int = DEFAULT_MAX_WORK,
) -> int:
    """Serve a model in the foreground until Ctrl-C (for the command line).

    Prints the base URL (never the key) and logs one line per request.

    Args:
        spec: The model spec to load.
        host: Address to bind; loopback by default.
        port: Port to bind.
        name: The model id to serve under; defaults to ``spec``.
        api_key: When given, every request needs ``Authorization: Bearer <api_key>``.
        max_work: The most tokens one request may ask to generate (prompts × n × max_tokens).

    Returns:
        0, the exit status.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    model = HFModel.load(spec)
    server = ModelServer(model, host, port, name=name, api_key=api_key, max_work=max_work)
    guard = "an API key is required" if api_key else "no API key is required"
    print(f"serving {server.name} at {server.url} ({guard}); Ctrl-C stops", flush=True)
    if api_key is None and not _is_loopback(host):
        print(f"warning: {host} is not a loopback address and no API key is set", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
