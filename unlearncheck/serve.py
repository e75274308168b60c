"""An OpenAI-compatible HTTP server over a Hugging Face checkpoint, built on ``http.server``.

`serve` starts one in a daemon thread (tests, notebooks); `run_forever` serves in the foreground
(the command line). Endpoints:

* ``GET /v1/models`` and ``GET /v1/models/{id}``: the one model served.
* ``POST /v1/completions``: prompts as strings or token ids, ``max_tokens``, ``temperature``
  (0 = greedy), ``top_p``, ``n``, ``seed``, ``stop``, ``logprobs`` (the top-k alternatives of
  each token, legacy format) and ``echo`` (with ``max_tokens: 0`` and ``logprobs`` this scores
  the prompt, which is how lm-evaluation-harness gets loglikelihoods).
* ``POST /v1/chat/completions``: messages rendered by the tokenizer's chat template, or as
  ``role: content`` lines ending in ``assistant:`` when it has none; ``logprobs`` and
  ``top_logprobs`` in the chat format.

The model reads a prompt's tokens (encoded without special tokens) after the tokenizer's BOS
token, when it has one and the prompt does not already start with it, as `HFModel` does. That
BOS is never echoed: it is what the first echoed token is conditioned on, so the first token's
logprob is null only for tokenizers without a BOS token. Logprobs are those of the model's raw
next-token distribution (before temperature and top-p); text offsets index the choice's text.
A choice that ends with the end-of-sequence token lists it (as e.g. ``</s>``) in its logprobs and
usage but not in its text, as OpenAI and vLLM do; lm-evaluation-harness's ``[ctxlen:-1]``
slicing of echoed logprobs relies on it.
Requests are served one at a time: every model and tokenizer call holds one process-wide lock.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import torch
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from unlearncheck.backends.hf import HFModel

logger = logging.getLogger(__name__)

#: Largest request body accepted, in bytes (larger ones get 413).
MAX_BODY_BYTES = 1 << 20
#: Most choices per prompt (``n``).
MAX_N = 128
#: Most alternatives per token (``logprobs`` / ``top_logprobs``).
MAX_TOP_LOGPROBS = 20
#: Most stop sequences per request.
MAX_STOP = 4
#: ``max_tokens`` when a completions request gives none (OpenAI's default).
DEFAULT_MAX_TOKENS = 16
#: ``max_tokens`` when a chat request gives none (capped by the model's context).
DEFAULT_CHAT_MAX_TOKENS = 256

_MAX_TOKENS_LIMIT = 1 << 20
_SEED_RANGE = (-(1 << 63), (1 << 64) - 1)
_DECODE_WINDOW = 6  # tokens of left context when decoding one token's text
_GENERATE_BATCH = 16  # prompts per generate call
_FLOOR_LOGPROB = -9999.0  # stands in for -inf, which JSON cannot carry
_LOCK = threading.Lock()  # one model call at a time, across all servers of the process

Body = dict[str, Any]


class APIError(Exception):
    """A refused request, answered as an OpenAI JSON error.

    Attributes:
        status: The HTTP status.
        message: What is wrong, for the client.
        param: The request field at fault, if any.
        code: A machine-readable code, if any.
        headers: Extra response headers.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> Body:
        """The ``{"error": {...}}`` response body."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return {"error": error}


def _invalid(param: str, expected: str) -> APIError:
    return APIError(400, f"'{param}' must be {expected}", param=param, code="invalid_value")


# --- request fields (JSON null counts as absent) ------------------------------------------


def _opt_int(body: Body, key: str, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _invalid(key, f"an integer from {lo} to {hi}")
    return value


def _int(body: Body, key: str, default: int, lo: int, hi: int) -> int:
    value = _opt_int(body, key, lo, hi)
    return default if value is None else value


def _number(body: Body, key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _invalid(key, f"a number from {lo:g} to {hi:g}")
    return float(value)


def _flag(body: Body, key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(key, "a boolean")
    return value


def _stops(body: Body) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not (
        isinstance(stops, list)
        and len(stops) <= MAX_STOP
        and all(isinstance(stop, str) and stop for stop in stops)
    ):
        raise _invalid("stop", f"a non-empty string or a list of at most {MAX_STOP} of them")
    return tuple(stops)


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _prompt_inputs(body: Body) -> list[str | list[int]]:
    value: Any = body.get("prompt")
    prompts = [value] if isinstance(value, str) or _is_token_ids(value) else value
    if (
        isinstance(prompts, list)
        and prompts
        and all(isinstance(p, str) or _is_token_ids(p) for p in prompts)
    ):
        return prompts
    raise _invalid("prompt", "a string, a list of token ids, or a non-empty list of either")


def _messages(body: Body) -> list[dict[str, str]]:
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise _invalid("messages", "a non-empty list of messages")
    return [_message(item) for item in value]


def _message(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not isinstance(value.get("role"), str):
        raise _invalid("messages", "a list of objects with a string 'role'")
    content = value.get("content")
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        content = "\n".join(part["text"] for part in content)
    if not isinstance(content, str):
        raise _invalid("messages", "a list of messages whose content is text")
    return {"role": value["role"], "content": content}


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt text a chat is continued from.

    Args:
        tokenizer: The model's tokenizer.
        messages: ``{"role", "content"}`` mappings, oldest first.

    Returns:
        The messages rendered by the tokenizer's chat template with the generation prompt, or,
        when it has no template, ``role: content`` lines followed by an ``assistant:`` line.

    Raises:
        jinja2.TemplateError: If the chat template rejects the messages.
    """
    if tokenizer.chat_template:
        rendered = tokenizer.apply_chat_template(
            [dict(message) for message in messages], tokenize=False, add_generation_prompt=True
        )
        return str(rendered)
    lines = [f"{message['role']}: {message['content']}" for message in messages]
    return "\n".join([*lines, "assistant:"])


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """How to continue the prompts of one request.

    Attributes:
        max_tokens: Most tokens to generate per choice.
        temperature: Sampling temperature; 0 decodes greedily.
        top_p: Nucleus sampling mass.
        n: Choices per prompt.
        seed: Seed making sampling reproducible, or None.
        stop: Strings that end a choice's text (the first one found is cut with what follows).
    """

    max_tokens: int
    temperature: float
    top_p: float
    n: int
    seed: int | None
    stop: tuple[str, ...]


@dataclass(frozen=True)
class Prompt:
    """A tokenized prompt.

    Attributes:
        ids: Its tokens, as echoed.
        prefix: What the model reads before them: the BOS token, or nothing.
        text: Its text as sent; None for token-id prompts.
        starts: Each token's character offset in ``text``, when the tokenizer reports offsets.
    """

    ids: list[int]
    prefix: list[int]
    text: str | None
    starts: list[int] | None

    @property
    def model_ids(self) -> list[int]:
        """What the model reads: prefix and tokens."""
        return self.prefix + self.ids


@dataclass(frozen=True)
class Choice:
    """One generated continuation of a prompt.

    Attributes:
        prompt: The prompt continued.
        tokens: The generated tokens kept: up to and with the end-of-sequence token, or those
            starting before the stop string.
        text: Their text, without the end-of-sequence token.
        finish_reason: ``"stop"`` (end of sequence or stop string) or ``"length"``.
    """

    prompt: Prompt
    tokens: list[int]
    text: str
    finish_reason: str


@dataclass(frozen=True)
class TokenLogprob:
    """A token's text and logprob, with its most likely alternatives.

    Attributes:
        token: The text the token adds.
        logprob: log p(token | everything before it); None for a first token with no context.
        top: The ``k`` most likely tokens at its position as (text, logprob), most likely first;
            None where ``logprob`` is None.
    """

    token: str
    logprob: float | None
    top: list[tuple[str, float]] | None


class Engine:
    """Tokenizes, generates and scores for the server; callers hold the process lock.

    Attributes:
        model: The served model.
        max_positions: The model's context length, when its config gives one.
    """

    def __init__(self, model: HFModel) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        config = model.model.config
        self.max_positions: int | None = getattr(config, "max_position_embeddings", None)
        embeddings = cast(torch.nn.Embedding, model.model.get_input_embeddings())
        self._vocab_size = int(embeddings.num_embeddings)
        self._eos = _eos_ids(model)
        self._special = frozenset(self.tokenizer.all_special_ids)

    def encode(self, prompt: str | list[int]) -> Prompt:
        """Tokenize a text prompt (without special tokens) or check a token-id prompt.

        Raises:
            APIError: If a token id is out of range or the model would read no token.
        """
        if isinstance(prompt, str):
            text: str | None = prompt
            ids, starts = self._tokenize(prompt)
        else:
            if not all(0 <= token < self._vocab_size for token in prompt):
                raise _invalid("prompt", f"token ids from 0 to {self._vocab_size - 1}")
            ids, text, starts = list(prompt), None, None
        bos = self.tokenizer.bos_token_id
        prefix = [bos] if bos is not None and ids[:1] != [bos] else []
        if not prefix and not ids:
            raise _invalid("prompt", "text with at least one token")
        return Prompt(ids, prefix, text, starts)

    def _tokenize(self, text: str) -> tuple[list[int], list[int] | None]:
        """A text's tokens, and their character offsets when the tokenizer reports them."""
        if not self.tokenizer.is_fast:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]), None
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [start for start, _ in encoded["offset_mapping"]]

    def budget(self, prompts: Sequence[Prompt], requested: int | None, default: int) -> int:
        """The tokens to generate per choice: ``requested``, or ``default`` capped by context.

        Raises:
            APIError: If a prompt, plus the requested tokens, exceeds the model's context.
        """
        if self.max_positions is None:
            return default if requested is None else requested
        longest = max(len(prompt.model_ids) for prompt in prompts)
        room = self.max_positions - longest
        if room < 0:
            raise APIError(
                400,
                f"a prompt has {longest} tokens, over this model's context of {self.max_positions}",
                param="prompt",
                code="context_length_exceeded",
            )
        if requested is not None and requested > room:
            raise APIError(
                400,
                f"this model's context of {self.max_positions} tokens leaves {room} after the "
                f"longest prompt, fewer than the {requested} requested",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return min(default, room) if requested is None else requested

    def run(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[Choice]:
        """``sampling.n`` choices per prompt, prompt by prompt."""
        generated = self._generate([prompt.model_ids for prompt in prompts], sampling)
        return [
            self._choice(prompt, tokens, ended, sampling.stop)
            for prompt, group in zip(prompts, generated, strict=True)
            for tokens, ended in group
        ]

    def logprobs(self, choice: Choice, *, echo: bool, k: int) -> list[TokenLogprob]:
        """Logprobs of a choice's generated tokens, preceded by its prompt's when ``echo``."""
        prompt = choice.prompt
        start = len(prompt.prefix) if echo else len(prompt.model_ids)
        return self._score(prompt.model_ids + choice.tokens, start, k)

    def echo(self, prompt: Prompt) -> tuple[str, list[int]]:
        """A prompt's echoed text and each of its tokens' offsets in it.

        The text as sent when the tokenizer reports offsets, else the tokens' decoded text.
        """
        if prompt.text is not None and prompt.starts is not None:
            return prompt.text, prompt.starts
        pieces = self.pieces(prompt.prefix, prompt.ids)
        return "".join(pieces), _starts(pieces)

    def pieces(self, context: Sequence[int], tokens: Sequence[int]) -> list[str]:
        """The text each token adds after ``context`` and the tokens before it."""
        seq = [*context, *tokens]
        return [self._after(seq, len(context) + i, [token])[0] for i, token in enumerate(tokens)]

    def _generate(
        self, contexts: list[list[int]], sampling: Sampling
    ) -> list[list[tuple[list[int], bool]]]:
        """Per context, ``n`` (new tokens, whether they end with end of sequence) pairs."""
        n = sampling.n
        if sampling.max_tokens == 0:
            return [[([], False)] * n for _ in contexts]
        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "do_sample": sampling.temperature > 0,
            "num_return_sequences": n,
            "pad_token_id": self.model._pad_id,
        }
        if sampling.temperature > 0:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        device = self.model.device
        rows: list[tuple[list[int], bool]] = []
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda, enabled=sampling.seed is not None):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            for at in range(0, len(contexts), _GENERATE_BATCH):
                ids, mask = self.model._pad(contexts[at : at + _GENERATE_BATCH], left=True)
                with torch.inference_mode():
                    out = self.model.model.generate(input_ids=ids, attention_mask=mask, **options)
                rows.extend(self._until_eos(row) for row in out[:, ids.shape[1] :].tolist())
        return [rows[at : at + n] for at in range(0, len(rows), n)]

    def _until_eos(self, tokens: list[int]) -> tuple[list[int], bool]:
        """The tokens up to and with the first end-of-sequence token, and whether there is one."""
        for i, token in enumerate(tokens):
            if token in self._eos:
                return tokens[: i + 1], True
        return tokens, False

    def _choice(
        self, prompt: Prompt, tokens: list[int], ended: bool, stops: Sequence[str]
    ) -> Choice:
        """A choice, cut at the first stop string (with the tokens that start after it)."""
        text = self._text_after(prompt.model_ids, tokens[:-1] if ended else tokens)
        cuts = [at for stop in stops if (at := text.find(stop)) >= 0]
        if not cuts:
            return Choice(prompt, tokens, text, "stop" if ended else "length")
        cut = min(cuts)
        kept = sum(start < cut for start in _starts(self.pieces(prompt.model_ids, tokens)))
        return Choice(prompt, tokens[:kept], text[:cut], "stop")

    def _score(self, seq: list[int], start: int, k: int) -> list[TokenLogprob]:
        """Logprobs of ``seq[start:]``, each given the tokens before it, with top-k alternatives."""
        entries = [TokenLogprob(self._after(seq, 0, seq[:1])[0], None, None)] if start == 0 else []
        first = max(start, 1)
        if first >= len(seq):
            return entries
        with torch.inference_mode():
            ids = torch.tensor([seq], device=self.model.device)
            logits = self.model.model(input_ids=ids).logits[0, first - 1 : len(seq) - 1]
            logprobs = logits.float().log_softmax(dim=-1)
            logprobs = torch.nan_to_num(logprobs, nan=_FLOOR_LOGPROB, neginf=_FLOOR_LOGPROB)
            targets = torch.tensor(seq[first:], device=logprobs.device)
            chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
            top_values, top_ids = (part.tolist() for part in logprobs.topk(k, dim=-1))
        for row, position in enumerate(range(first, len(seq))):
            texts = self._after(seq, position, [seq[position], *top_ids[row]])
            top = list(zip(texts[1:], top_values[row], strict=True))
            entries.append(TokenLogprob(texts[0], chosen[row], top))
        return entries

    def _after(self, seq: Sequence[int], position: int, candidates: Sequence[int]) -> list[str]:
        """The text each candidate token would add at ``position`` of ``seq``.

        A special token (end of sequence, ...) is shown as itself, e.g. ``</s>``.
        """
        window = list(seq[max(0, position - _DECODE_WINDOW) : position])
        head = self._decode(window)
        texts = []
        for token in candidates:
            if token in self._special:
                texts.append(str(self.tokenizer.convert_ids_to_tokens(token)))
                continue
            whole = self._decode([*window, token])
            texts.append(whole[len(head) :] if whole.startswith(head) else self._decode([token]))
        return texts

    def _text_after(self, context: Sequence[int], tokens: Sequence[int]) -> str:
        """The text ``tokens`` add after ``context`` (whole characters even if tokens split one)."""
        if not tokens:
            return ""
        window = list(context[-_DECODE_WINDOW:])
        head, whole = self._decode(window), self._decode([*window, *tokens])
        return whole[len(head) :] if whole.startswith(head) else self._decode(tokens)

    def _decode(self, ids: Sequence[int]) -> str:
        return str(
            self.tokenizer.decode(
                list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        )


def _eos_ids(model: HFModel) -> frozenset[int]:
    """The tokens that end generation: the generation config's and the tokenizer's EOS."""
    config = getattr(model.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids = {eos} if isinstance(eos, int) else set(eos or ())
    if model.tokenizer.eos_token_id is not None:
        ids.add(model.tokenizer.eos_token_id)
    return frozenset(ids)


def _starts(pieces: Sequence[str]) -> list[int]:
    """Offsets of consecutive pieces of text in their concatenation."""
    starts, at = [], 0
    for piece in pieces:
        starts.append(at)
        at += len(piece)
    return starts


# --- the API ------------------------------------------------------------------------------


class App:
    """The OpenAI-compatible API over one model, independent of HTTP.

    Attributes:
        name: The model id clients must send.
        engine: The model's engine.
    """

    def __init__(self, model: HFModel, name: str, api_key: str | None) -> None:
        self.name = name
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
        prompts = [self.engine.encode(value) for value in _prompt_inputs(body)]
        k = _opt_int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
        echo = _flag(body, "echo")
        requested = _opt_int(body, "max_tokens", 0, _MAX_TOKENS_LIMIT)
        sampling = _sampling(body, self.engine.budget(prompts, requested, DEFAULT_MAX_TOKENS))
        choices = self.engine.run(prompts, sampling)
        rows = [self._completion_choice(i, c, echo, k) for i, c in enumerate(choices)]
        return self._response("cmpl", "text_completion", rows, prompts, choices)

    def chat_completions(self, body: Body) -> Body:
        """Answer a ``/v1/chat/completions`` request (see the module docs)."""
        self._check(body)
        messages = _messages(body)
        want_logprobs = _flag(body, "logprobs")
        k = _opt_int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
        if k is not None and not want_logprobs:
            raise _invalid("top_logprobs", "left out unless 'logprobs' is true")
        try:
            prompt = self.engine.encode(chat_prompt(self.engine.tokenizer, messages))
        except TemplateError as err:
            raise APIError(
                400, f"the chat template rejects the messages: {err}", param="messages"
            ) from err
        requested = _opt_int(body, "max_completion_tokens", 0, _MAX_TOKENS_LIMIT)
        if requested is None:
            requested = _opt_int(body, "max_tokens", 0, _MAX_TOKENS_LIMIT)
        budget = self.engine.budget([prompt], requested, DEFAULT_CHAT_MAX_TOKENS)
        choices = self.engine.run([prompt], _sampling(body, budget))
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
            raise _invalid("model", "a string")
        if model != self.name:
            raise APIError(
                400,
                f"model {model!r} is not served here; this server serves {self.name!r}",
                param="model",
                code="model_not_found",
            )
        if _flag(body, "stream"):
            raise APIError(400, "streaming is not supported", param="stream")

    def _model_object(self) -> Body:
        return {"id": self.name, "object": "model", "created": self._created, "owned_by": "local"}

    def _completion_choice(self, index: int, choice: Choice, echo: bool, k: int | None) -> Body:
        echoed, starts = self.engine.echo(choice.prompt) if echo else ("", [])
        logprobs = None
        if k is not None:
            entries = self.engine.logprobs(choice, echo=echo, k=k)
            pieces = [entry.token for entry in entries[len(starts) :]]
            offsets = starts + [len(echoed) + at for at in _starts(pieces)]
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


def _sampling(body: Body, max_tokens: int) -> Sampling:
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise _invalid("top_p", "above 0")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=top_p,
        n=_int(body, "n", 1, 1, MAX_N),
        seed=_opt_int(body, "seed", *_SEED_RANGE),
        stop=_stops(body),
    )


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


# --- HTTP -----------------------------------------------------------------------------------


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
            body = self._read_body() if method == "POST" else {}
            with _LOCK:
                payload = action(body)
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
        length = self.headers.get("Content-Length")
        if length is None:
            raise APIError(411, "a Content-Length header is required")
        if not length.strip().isdigit():
            raise APIError(400, "the Content-Length header must be a byte count")
        if int(length) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(self.rfile.read(int(length)))
        except (ValueError, RecursionError) as err:
            raise APIError(400, f"the body is not valid JSON: {err}", code="invalid_json") from err
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        return body

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
    ) -> None:
        self.name = name or model.spec
        self._httpd = _HTTPServer((host, port), App(model, self.name, api_key))
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
) -> ModelServer:
    """Start an OpenAI-compatible server over a model in a daemon thread.

    Args:
        spec_or_model: A model spec (see `unlearncheck.specs.resolve_spec`) or a loaded model.
        host: Address to bind; loopback by default.
        port: Port to bind; 0 picks a free one (see `ModelServer.url`).
        name: The model id to serve under; defaults to the model's spec.
        api_key: When given, every request needs ``Authorization: Bearer <api_key>``.

    Returns:
        The running server; use it as a context manager, or call `ModelServer.stop`.
    """
    model = HFModel.load(spec_or_model) if isinstance(spec_or_model, str) else spec_or_model
    return ModelServer(model, host, port, name=name, api_key=api_key).start()


def run_forever(
    spec: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    name: str | None = None,
    api_key: str | None = None,
) -> int:
    """Serve a model in the foreground until Ctrl-C (for the command line).

    Prints the base URL (never the key) and logs one line per request.

    Args:
        spec: The model spec to load.
        host: Address to bind; loopback by default.
        port: Port to bind.
        name: The model id to serve under; defaults to ``spec``.
        api_key: When given, every request needs ``Authorization: Bearer <api_key>``.

    Returns:
        0, the exit status.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = ModelServer(HFModel.load(spec), host, port, name=name, api_key=api_key)
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
