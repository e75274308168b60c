"""A model behind an OpenAI-compatible completions API (vLLM, TGI, ``unlearncheck serve``, ...).

A black box: answers are scored from the server's echoed prompt log-probabilities (``echo`` with
``max_tokens: 0``, as lm-evaluation-harness asks a completions server), and generated through it.
Attacks that need the weights (quantization, relearning, hidden-state probes) cannot run on it and
report "not run". The spec is ``openai:<model name>@<base URL>``; the API key is read from
``$OPENAI_API_KEY`` and is never part of the spec, a log or an error message.

Endpoint faults are retried with exponential backoff (or after the server's ``Retry-After``):
connection errors, timeouts, HTTP 408/409/429/5xx, and responses that cannot be read (not JSON,
no choices, no log-probabilities). Other HTTP errors (400, 401, 404, ...) are not retried. When
the retries are spent, the request raises `EndpointError`, which claims report as "not run".
`OpenAIModel.chat` asks the chat completions API the same way (the generator LLM's requests).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import openai

from unlearncheck.backends.capabilities import Capability
from unlearncheck.backends.scoring import AnswerScore, chunks
from unlearncheck.specs import ENDPOINT_PREFIX, ModelSpecError

__all__ = [
    "API_KEY_ENV",
    "MAX_BACKOFF",
    "MAX_FAULT_CHARS",
    "MAX_RETRY_AFTER",
    "PREFIX",
    "RETRIED_STATUSES",
    "EndpointError",
    "MalformedResponseError",
    "OpenAIModel",
    "is_openai_spec",
]

logger = logging.getLogger(__name__)

PREFIX = ENDPOINT_PREFIX
#: Environment variable the API key is read from.
API_KEY_ENV = "OPENAI_API_KEY"
#: Longest ``Retry-After`` honoured, in seconds; a longer one falls back to the backoff.
MAX_RETRY_AFTER = 60.0
#: Longest wait between two tries, in seconds.
MAX_BACKOFF = 30.0
#: HTTP statuses retried besides 5xx: request timeout, conflict, rate limit.
RETRIED_STATUSES = frozenset({408, 409, 429})
#: Longest fault description kept in an error message, in characters.
MAX_FAULT_CHARS = 200

_T = TypeVar("_T")


class EndpointError(RuntimeError):
    """The endpoint gave no usable answer: a fault that is not retried, or one that lasted
    through every retry. The message names the fault and never holds the API key."""


class MalformedResponseError(Exception):
    """A response that arrived but cannot be read: not JSON, no choices, no log-probabilities."""


def is_openai_spec(spec: str) -> bool:
    """Whether a spec names an OpenAI-compatible endpoint."""
    return spec.startswith(PREFIX)


class OpenAIModel:
    """A model served over an OpenAI-compatible completions API.

    Attributes:
        spec: ``openai:<name>@<base_url>``.
        name: The model name the server knows.
        base_url: The API's base URL (e.g. ``http://127.0.0.1:8000/v1``).
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        """Connect (lazily) to ``base_url``; the key comes from ``$OPENAI_API_KEY``.

        Args:
            name: The model name the server knows.
            base_url: The API's base URL.
            timeout: Seconds a request may take (connecting, or waiting for the answer).
            retries: Tries after the first for a request that meets a transient fault.
            backoff: Seconds before the first retry; each further retry waits twice as long
                (at most `MAX_BACKOFF`), unless the server asks for a ``Retry-After``.
        """
        self.name = name
        self.base_url = base_url
        self.spec = f"{PREFIX}{name}@{base_url}"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._secret = os.environ.get(API_KEY_ENV)
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=self._secret or "not-needed",
            timeout=timeout,
            max_retries=0,  # `_complete` retries every fault, unreadable responses too
        )

    @classmethod
    def from_spec(cls, spec: str) -> OpenAIModel:
        """Parse ``openai:<name>@<base_url>``.

        Raises:
            ModelSpecError: If the name or the URL is missing.
        """
        name, at, base_url = spec[len(PREFIX) :].partition("@")
        if not name or not at or not base_url.startswith(("http://", "https://")):
            raise ModelSpecError(
                f"model spec {spec!r}: expected openai:<model name>@<http(s) base URL>"
            )
        return cls(name, base_url)

    def __repr__(self) -> str:
        return f"OpenAIModel({self.spec!r})"

    #: A black box: scores and generation, no weights or hidden states (`capabilities`).
    capabilities: frozenset[Capability] = frozenset({"scores", "generation"})

    #: Scores of an endpoint are never kept on disk: its weights can change behind the same name.
    cacheable = False

    @property
    def content_hash(self) -> str:
        """SHA-256 of the spec: an endpoint's weights are not visible, only its name."""
        return hashlib.sha256(self.spec.encode()).hexdigest()

    def score_answers(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int = 32
    ) -> list[AnswerScore]:
        """Score each (prompt, answer) from the echoed log-probabilities of ``prompt + answer``.

        The answer's tokens are those the server places at or after the end of the prompt's
        text; ``greedy_match`` is whether each was the server's top choice.

        Raises:
            EndpointError: If a batch got no usable answer (e.g. no log-probabilities) after
                the retries.
        """
        out: list[AnswerScore] = []
        for batch in chunks(list(requests), batch_size):
            out += self._complete(
                partial(_answer_scores, batch),
                prompt=[prompt + answer for prompt, answer in batch],
                echo=True,
                max_tokens=0,
                logprobs=1,
                temperature=0,
            )
        return out

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 8,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        num_samples: int = 1,
        seed: int | None = None,
        batch_size: int = 32,
    ) -> list[list[str]]:
        """Per prompt, ``num_samples`` continuations (greedy at temperature 0 unless sampling).

        Raises:
            EndpointError: If a batch got no usable answer after the retries.
        """
        results: list[list[str]] = []
        for batch in chunks(list(prompts), batch_size):
            results += self._complete(
                partial(_texts, len(batch), num_samples),
                prompt=list(batch),
                max_tokens=max_new_tokens,
                temperature=temperature if do_sample else 0.0,
                top_p=top_p if do_sample else 1.0,
                n=num_samples,
                seed=seed,
            )
        return results

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        read: Callable[[str], _T],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> _T:
        """``read`` of the reply to the chat ``messages`` (one choice).

        ``read`` may raise ``ValueError`` (``json.JSONDecodeError`` too), ``TypeError`` or
        ``LookupError`` on a reply it cannot use: that is a malformed response, asked again.

        Raises:
            EndpointError: If no usable reply came after the retries.
        """
        return self._complete(
            partial(_reply, read),
            chat=True,
            messages=[dict(message) for message in messages],
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
        )

    def _complete(self, read: Callable[[Any], _T], *, chat: bool = False, **params: Any) -> _T:
        """``read`` of the completions (``chat``: chat completions) response to ``params``,
        asked again after each transient fault, with backoff.

        Raises:
            EndpointError: On a fault that is not transient, or when the retries are spent.
        """
        create = self._client.chat.completions.create if chat else self._client.completions.create
        attempt = 0
        while True:
            try:
                return _read(read, create(model=self.name, **params))
            except (openai.APIError, json.JSONDecodeError, MalformedResponseError) as error:
                fault = self._describe(error)
                if not _is_transient(error):
                    raise EndpointError(f"endpoint error: {fault}") from None
                if attempt == self.retries:
                    raise EndpointError(
                        f"endpoint error after {attempt} retries: {fault}"
                    ) from None
                delay = _retry_after(error)
                if delay is None:
                    delay = min(self.backoff * 2**attempt, MAX_BACKOFF)
                attempt += 1
                logger.warning(
                    "%s: %s; retry %d of %d in %.3g s",
                    self.spec,
                    fault,
                    attempt,
                    self.retries,
                    delay,
                )
                time.sleep(delay)

    def _describe(self, error: Exception) -> str:
        """A one-line account of a fault, without the API key."""
        if isinstance(error, openai.APITimeoutError):
            text = f"no answer within {self.timeout:g} s"
        elif isinstance(error, openai.APIConnectionError):
            text = f"cannot connect to {self.base_url} ({error.__cause__ or error})"
        elif isinstance(error, openai.APIStatusError):
            text = f"HTTP {error.status_code} ({error.message})"
        else:
            text = f"malformed response ({error})"
        if self._secret:
            text = text.replace(self._secret, "[API key]")
        return text if len(text) <= MAX_FAULT_CHARS else text[: MAX_FAULT_CHARS - 1] + "…"


def _read(read: Callable[[Any], _T], response: Any) -> _T:
    """``read(response)``, where any error means that the response is malformed."""
    try:
        return read(response)
    except (TypeError, ValueError, LookupError, AttributeError) as error:
        raise MalformedResponseError(f"{type(error).__name__}: {error}") from error


def _is_transient(error: Exception) -> bool:
    """Whether trying again may help: connection errors, timeouts, 408/409/429/5xx, garbage."""
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRIED_STATUSES or error.status_code >= 500
    return True


def _retry_after(error: Exception) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms`` or ``retry-after`` in seconds), when
    it asked for at most `MAX_RETRY_AFTER`."""
    if not isinstance(error, openai.APIStatusError):
        return None
    for header, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            seconds = float(error.response.headers.get(header, "")) * scale
        except ValueError:
            continue
        if 0 <= seconds <= MAX_RETRY_AFTER:
            return seconds
    return None


def _choices(response: Any, expected: int) -> list[Any]:
    """The response's ``expected`` choices in index order.

    Raises:
        MalformedResponseError: If the response is no completion or has other choices.
    """
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list):
        raise MalformedResponseError(f"no choices in the {type(response).__name__} returned")
    indices = [getattr(c, "index", None) for c in choices]
    if len(choices) != expected or set(indices) != set(range(expected)):
        raise MalformedResponseError(
            f"expected choices 0 to {expected - 1}, got {len(choices)} with indices "
            f"{sorted(map(str, indices))[:8]}"
        )
    return sorted(choices, key=lambda c: c.index)


def _reply(read: Callable[[str], _T], response: Any) -> _T:
    """``read`` of the message text of a chat response's one choice."""
    (choice,) = _choices(response, 1)
    text = choice.message.content
    if not isinstance(text, str):
        raise MalformedResponseError("the chat reply has no text")
    return read(text)


def _texts(prompts: int, per_prompt: int, response: Any) -> list[list[str]]:
    """The generated texts of each prompt, from a response with ``per_prompt`` choices each."""
    texts: list[list[str]] = [[] for _ in range(prompts)]
    for choice in _choices(response, prompts * per_prompt):
        if not isinstance(choice.text, str):
            raise MalformedResponseError(f"choice {choice.index} has no text")
        texts[choice.index // per_prompt].append(choice.text)
    return texts


def _answer_scores(batch: Sequence[tuple[str, str]], response: Any) -> list[AnswerScore]:
    """The score of each (prompt, answer) of ``batch`` from the response's echoed choices."""
    choices = _choices(response, len(batch))
    return [
        _answer_score(prompt, answer, choice.logprobs)
        for (prompt, answer), choice in zip(batch, choices, strict=True)
    ]


def _answer_score(prompt: str, answer: str, logprobs: Any) -> AnswerScore:
    """The answer's log-probability from the echoed log-probabilities of ``prompt + answer``.

    Raises:
        MalformedResponseError: If they are missing, uneven, or cover no answer token.
    """
    tokens: Any = getattr(logprobs, "tokens", None)
    token_logprobs: Any = getattr(logprobs, "token_logprobs", None)
    text_offset: Any = getattr(logprobs, "text_offset", None)
    top_logprobs: Any = getattr(logprobs, "top_logprobs", None) or [None] * len(tokens or [])
    columns = (tokens, token_logprobs, text_offset, top_logprobs)
    if not tokens or not all(isinstance(c, list) and len(c) == len(tokens) for c in columns):
        raise MalformedResponseError(
            "no log-probabilities for each echoed token (the server must support echo)"
        )
    total, n, greedy = 0.0, 0, True
    for token, logprob, offset, top in zip(*columns, strict=True):
        if offset < len(prompt) or logprob is None:
            continue
        if offset >= len(prompt) + len(answer):
            break  # an end-of-sequence token the server appends
        total += logprob
        n += 1
        greedy = greedy and bool(top) and max(top, key=top.get) == token
    if n == 0:
        raise MalformedResponseError(f"answer {answer!r} got no tokens after prompt {prompt!r}")
    return AnswerScore(total, n, greedy)
