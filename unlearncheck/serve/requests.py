"""Request parsing for `unlearncheck.serve`: the OpenAI request fields, checked.

JSON null counts as an absent field. Every refusal is an `APIError` naming the field at fault.
A temperature below `GREEDY_BELOW` decodes greedily (as vLLM does): dividing logits by it would
overflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_CHAT_MAX_TOKENS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_WORK",
    "GREEDY_BELOW",
    "MAX_N",
    "MAX_STOP",
    "MAX_TOKENS_LIMIT",
    "MAX_TOP_LOGPROBS",
    "APIError",
    "Body",
    "Sampling",
    "chat_messages",
    "chat_prompt",
    "flag",
    "invalid",
    "optional_int",
    "parse_sampling",
    "prompt_inputs",
]

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
#: Largest ``max_tokens`` accepted.
MAX_TOKENS_LIMIT = 1 << 20
#: Most tokens one request may ask to generate (prompts × n × max_tokens; ``--max-work``): the
#: sampling attack's largest request through an endpoint is 32 × 64 × 6 = 12,288.
DEFAULT_MAX_WORK = 16384
#: Temperatures below this sample greedily.
GREEDY_BELOW = 1e-5
_SEED_RANGE = (-(1 << 63), (1 << 64) - 1)

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


def invalid(param: str, expected: str) -> APIError:
    """The 400 error of a field ``param`` that is not ``expected``."""
    return APIError(400, f"'{param}' must be {expected}", param=param, code="invalid_value")


def optional_int(body: Body, key: str, lo: int, hi: int) -> int | None:
    """The integer field ``key`` (from ``lo`` to ``hi``), or None when absent."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise invalid(key, f"an integer from {lo} to {hi}")
    return value


def _int(body: Body, key: str, default: int, lo: int, hi: int) -> int:
    value = optional_int(body, key, lo, hi)
    return default if value is None else value


def _number(body: Body, key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise invalid(key, f"a number from {lo:g} to {hi:g}")
    return float(value)


def flag(body: Body, key: str) -> bool:
    """The boolean field ``key`` (False when absent)."""
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(key, "a boolean")
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
        raise invalid("stop", f"a non-empty string or a list of at most {MAX_STOP} of them")
    return tuple(stops)


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def prompt_inputs(body: Body) -> list[str | list[int]]:
    """The ``prompt`` field as a list of text or token-id prompts."""
    value: Any = body.get("prompt")
    prompts = [value] if isinstance(value, str) or _is_token_ids(value) else value
    if (
        isinstance(prompts, list)
        and prompts
        and all(isinstance(p, str) or _is_token_ids(p) for p in prompts)
    ):
        return prompts
    raise invalid("prompt", "a string, a list of token ids, or a non-empty list of either")


def chat_messages(body: Body) -> list[dict[str, str]]:
    """The ``messages`` field as ``{"role", "content"}`` dicts with text content."""
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise invalid("messages", "a non-empty list of messages")
    return [_message(item) for item in value]


def _message(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not isinstance(value.get("role"), str):
        raise invalid("messages", "a list of objects with a string 'role'")
    content = value.get("content")
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        content = "\n".join(part["text"] for part in content)
    if not isinstance(content, str):
        raise invalid("messages", "a list of messages whose content is text")
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


def parse_sampling(body: Body, max_tokens: int) -> Sampling:
    """The request's `Sampling`, generating ``max_tokens`` per choice."""
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise invalid("top_p", "above 0")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    return Sampling(
        max_tokens=max_tokens,
        temperature=0.0 if temperature < GREEDY_BELOW else temperature,
        top_p=top_p,
        n=_int(body, "n", 1, 1, MAX_N),
        seed=optional_int(body, "seed", *_SEED_RANGE),
        stop=_stops(body),
    )
