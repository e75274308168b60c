"""A model behind an OpenAI-compatible completions API (vLLM, TGI, ``unlearncheck serve``, ...).

A black box: answers are scored from the server's echoed prompt log-probabilities (``echo`` with
``max_tokens: 0``, as lm-evaluation-harness asks a completions server), and generated through it.
Attacks that need the weights (quantization, relearning, hidden-state probes) cannot run on it and
report "not run". The spec is ``openai:<model name>@<base URL>``; the API key is read from
``$OPENAI_API_KEY`` and is never part of the spec, a log or an error message.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

from unlearncheck.backends.hf import AnswerScore, chunks
from unlearncheck.specs import ModelSpecError

PREFIX = "openai:"
#: Environment variable the API key is read from.
API_KEY_ENV = "OPENAI_API_KEY"


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

    def __init__(self, name: str, base_url: str, *, timeout: float = 60.0, retries: int = 3):
        """Connect (lazily) to ``base_url``; the key comes from ``$OPENAI_API_KEY``."""
        from openai import OpenAI

        self.name = name
        self.base_url = base_url
        self.spec = f"{PREFIX}{name}@{base_url}"
        key = os.environ.get(API_KEY_ENV) or "not-needed"
        self._client = OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=retries)

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
            ValueError: If the server returns no log-probabilities or no answer token.
        """
        out: list[AnswerScore] = []
        for batch in chunks(list(requests), batch_size):
            response = self._client.completions.create(
                model=self.name,
                prompt=[prompt + answer for prompt, answer in batch],
                echo=True,
                max_tokens=0,
                logprobs=1,
                temperature=0,
            )
            choices = sorted(response.choices, key=lambda c: c.index)
            for (prompt, answer), choice in zip(batch, choices, strict=True):
                out.append(_answer_score(prompt, answer, choice.logprobs))
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
        """Per prompt, ``num_samples`` continuations (greedy at temperature 0 unless sampling)."""
        results: list[list[str]] = []
        for batch in chunks(list(prompts), batch_size):
            response = self._client.completions.create(
                model=self.name,
                prompt=list(batch),
                max_tokens=max_new_tokens,
                temperature=temperature if do_sample else 0.0,
                top_p=top_p if do_sample else 1.0,
                n=num_samples,
                seed=seed,
            )
            texts: list[list[str]] = [[] for _ in batch]
            for choice in sorted(response.choices, key=lambda c: c.index):
                texts[choice.index // num_samples].append(choice.text)
            results.extend(texts)
        return results


def _answer_score(prompt: str, answer: str, logprobs: Any) -> AnswerScore:
    if logprobs is None or not logprobs.tokens:
        raise ValueError("the server returned no log-probabilities (it must support echo)")
    total, n, greedy = 0.0, 0, True
    for token, logprob, offset, top in zip(
        logprobs.tokens,
        logprobs.token_logprobs,
        logprobs.text_offset,
        logprobs.top_logprobs or [None] * len(logprobs.tokens),
        strict=True,
    ):
        if offset < len(prompt) or logprob is None:
            continue
        if offset >= len(prompt) + len(answer):
            break  # an end-of-sequence token the server appends
        total += logprob
        n += 1
        greedy = greedy and bool(top) and max(top, key=top.get) == token
    if n == 0:
        raise ValueError(f"answer {answer!r} got no tokens after prompt {prompt!r}")
    return AnswerScore(total, n, greedy)
