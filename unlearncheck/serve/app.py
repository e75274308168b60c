"""The OpenAI-compatible API of `unlearncheck.serve` over one model, independent of HTTP."""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Callable, Sequence
from urllib.parse import unquote

from jinja2 import TemplateError

from unlearncheck.backends.hf import HFModel
from unlearncheck.serve.engine import Choice, Engine, Prompt, text_starts
from unlearncheck.serve.requests import (
    DEFAULT_CHAT_MAX_TOKENS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_MAX_WORK,
    MAX_TOKENS_LIMIT,
    MAX_TOP_LOGPROBS,
    APIError,
    Body,
    Sampling,
    chat_messages,
    chat_prompt,
    flag,
    invalid,
    optional_int,
    parse_sampling,
    prompt_inputs,
)

__all__ = ["App"]


class App:
    """The OpenAI-compatible API over one model, independent of HTTP.

    Attributes:
        name: The model id clients must send.
        engine: The model's engine.
        max_work: The most tokens one request may ask to generate (prompts × n × max_tokens).
    """

    def __init__(
        self, model: HFModel, name: str, api_key: str | None, max_work: int = DEFAULT_MAX_WORK
    ) -> None:
        if max_work < 1:
            raise ValueError(f"max_work must be at least 1, got {max_work}")
        self.name = name
        self.max_work = max_work
        self.engine = Engine(model)
        self._api_key = None if api_key is None else api_key.encode()
        self._created = int(time.time())

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header passes (any does when there is no key)."""
        if self._api_key is None:
            return True
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._api_key
        )

    def route(self, method: str, path: str) -> Callable[[Body], Body]:
        """The action answering ``method`` on ``path``.

        Raises:
            APIError: 404 for an unknown path, 405 for a method the path does not allow.
        """
        path = path.rstrip("/")
        routes: dict[str, Callable[[Body], Body]]
        if path.startswith("/v1/models/"):
            model_id = unquote(path.removeprefix("/v1/models/"))
            routes = {"GET": lambda _: self.model_info(model_id)}
        else:
            table: dict[str, dict[str, Callable[[Body], Body]]] = {
                "/v1/models": {"GET": lambda _: self.models()},
                "/v1/completions": {"POST": self.completions},
                "/v1/chat/completions": {"POST": self.chat_completions},
            }
            if path not in table:
                raise APIError(404, f"no such endpoint: {path or '/'}", code="not_found")
            routes = table[path]
        if method not in routes:
            allowed = ", ".join(routes)
            raise APIError(
                405,
                f"{path} allows {allowed}, not {method}",
                code="method_not_allowed",
                headers={"Allow": allowed},
            )
        return routes[method]

    def models(self) -> Body:
        """The ``/v1/models`` list."""
        return {"object": "list", "data": [self._model_object()]}

    def model_info(self, model_id: str) -> Body:
        """The ``/v1/models/{id}`` object.

        Raises:
            APIError: 404 when ``model_id`` is not the model served.
        """
        if model_id != self.name:
            raise APIError(404, f"model {model_id!r} is not served here", code="model_not_found")
        return self._model_object()

    def completions(self, body: Body) -> Body:
        """Answer a ``/v1/completions`` request (see the module docs)."""
        self._check(body)
        prompts = [self.engine.encode(value) for value in prompt_inputs(body)]
        k = optional_int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
        echo = flag(body, "echo")
        requested = optional_int(body, "max_tokens", 0, MAX_TOKENS_LIMIT)
        sampling = parse_sampling(body, self.engine.budget(prompts, requested, DEFAULT_MAX_TOKENS))
        choices = self.engine.run(prompts, self._within_cap(len(prompts), sampling))
        rows = [self._completion_choice(i, c, echo, k) for i, c in enumerate(choices)]
        return self._response("cmpl", "text_completion", rows, prompts, choices)

    def chat_completions(self, body: Body) -> Body:
        """Answer a ``/v1/chat/completions`` request (see the module docs)."""
        self._check(body)
        messages = chat_messages(body)
        want_logprobs = flag(body, "logprobs")
        k = optional_int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        if k is not None and not want_logprobs:
            raise invalid("top_logprobs", "left out unless 'logprobs' is true")
        try:
            prompt = self.engine.encode(chat_prompt(self.engine.tokenizer, messages))
        except TemplateError as err:
            raise APIError(
                400, f"the chat template rejects the messages: {err}", param="messages"
            ) from err
        requested = optional_int(body, "max_completion_tokens", 0, MAX_TOKENS_LIMIT)
        if requested is None:
            requested = optional_int(body, "max_tokens", 0, MAX_TOKENS_LIMIT)
        budget = self.engine.budget([prompt], requested, DEFAULT_CHAT_MAX_TOKENS)
        choices = self.engine.run([prompt], self._within_cap(1, parse_sampling(body, budget)))
        rows = [
            {
                "index": i,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": self._chat_logprobs(choice, k or 0) if want_logprobs else None,
                "finish_reason": choice.finish_reason,
            }
            for i, choice in enumerate(choices)
        ]
        return self._response("chatcmpl", "chat.completion", rows, [prompt], choices)

    def _check(self, body: Body) -> None:
        """Refuse another model's requests and streaming ones."""
        model = body.get("model")
        if not isinstance(model, str):
            raise invalid("model", "a string")
        if model != self.name:
            raise APIError(
                400,
                f"model {model!r} is not served here; this server serves {self.name!r}",
                param="model",
                code="model_not_found",
            )
        if flag(body, "stream"):
            raise APIError(400, "streaming is not supported", param="stream")

    def _within_cap(self, prompts: int, sampling: Sampling) -> Sampling:
        """``sampling``, when the request's work is within `max_work`.

        Raises:
            APIError: 413 naming the work asked for and the limit.
        """
        work = prompts * sampling.n * sampling.max_tokens
        if work > self.max_work:
            raise APIError(
                413,
                f"this request asks for {prompts} prompt(s) × n {sampling.n} × "
                f"{sampling.max_tokens} tokens = {work:,} generated tokens, over this server's "
                f"limit of {self.max_work:,} per request (unlearncheck serve --max-work); send "
                "fewer prompts, a smaller n or a smaller max_tokens",
                code="request_too_large",
            )
        return sampling

    def _model_object(self) -> Body:
        return {"id": self.name, "object": "model", "created": self._created, "owned_by": "local"}

    def _completion_choice(self, index: int, choice: Choice, echo: bool, k: int | None) -> Body:
        echoed, starts = self.engine.echo(choice.prompt) if echo else ("", [])
        logprobs = None
        if k is not None:
            entries = self.engine.logprobs(choice, echo=echo, k=k)
            pieces = [entry.token for entry in entries[len(starts) :]]
            offsets = starts + [len(echoed) + at for at in text_starts(pieces)]
            logprobs = {
                "tokens": [entry.token for entry in entries],
                "token_logprobs": [entry.logprob for entry in entries],
                "top_logprobs": [_top_dict(entry.top) for entry in entries],
                "text_offset": offsets,
            }
        return {
            "index": index,
            "text": echoed + choice.text,
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason,
        }

    def _chat_logprobs(self, choice: Choice, k: int) -> Body:
        # Without echo every token has context, so no logprob is None.
        content = [
            {
                **_chat_token(entry.token, entry.logprob or 0.0),
                "top_logprobs": [_chat_token(text, value) for text, value in entry.top or []],
            }
            for entry in self.engine.logprobs(choice, echo=False, k=k)
        ]
        return {"content": content, "refusal": None}

    def _response(
        self,
        prefix: str,
        kind: str,
        rows: list[Body],
        prompts: Sequence[Prompt],
        choices: Sequence[Choice],
    ) -> Body:
        prompt_tokens = sum(len(prompt.model_ids) for prompt in prompts)
        completion_tokens = sum(len(choice.tokens) for choice in choices)
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.name,
            "choices": rows,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _top_dict(top: list[tuple[str, float]] | None) -> dict[str, float] | None:
    """Alternatives as a dict; of tokens with the same text, the most likely is kept."""
    if top is None:
        return None
    out: dict[str, float] = {}
    for text, value in top:
        out.setdefault(text, value)
    return out


def _chat_token(text: str, logprob: float) -> Body:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
