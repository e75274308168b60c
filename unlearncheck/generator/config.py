"""The settings of probe generation: the generator LLM's endpoint and how it is asked, and how
multi-hop chains are elicited from a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["GeneratorConfig"]


@dataclass(frozen=True)
class GeneratorConfig:
    """How probes are generated.

    Attributes:
        base_url: Base URL of the generator LLM's OpenAI-compatible API (chat completions), for
            paraphrases and aliases; None when no generator LLM is configured. Its API key is
            read from ``$OPENAI_API_KEY``.
        model: The generator LLM's model name at ``base_url``.
        temperature: Sampling temperature of the generator LLM (0: greedy).
        seed: Seed sent with every generator LLM request.
        n: Paraphrases (aliases) asked for in one request.
        max_tokens: Longest reply of the generator LLM, in tokens.
        depth: Hops of the longest elicited chain (2: "In which country was X born?").
        wordings: Wordings of each question an elicited fact is asked in.
        agree: Wordings that must give the same answer for the model to count as knowing it.
        max_answer_tokens: Longest answer read from the questioned model, in tokens.
        timeout: Seconds one generator LLM request may take.
        retries: Tries after the first for a generator LLM request that meets a transient
            fault (timeout, HTTP 408/409/429/5xx, a reply that cannot be read).
        backoff: Seconds before the first retry; each further retry waits twice as long.
    """

    base_url: str | None = None
    model: str | None = None
    temperature: float = 0.0
    seed: int = 0
    n: int = 5
    max_tokens: int = 512
    depth: int = 2
    wordings: int = 3
    agree: int = 2
    max_answer_tokens: int = 8
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 0.5

    def __post_init__(self) -> None:
        """Refuse settings that cannot work.

        Raises:
            ValueError: Naming the setting and its value.
        """
        if (self.base_url is None) != (self.model is None):
            raise ValueError("a generator LLM needs both a base URL and a model name")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"generator base URL must start with http(s)://, got {self.base_url!r}"
            )
        if self.depth < 2:
            raise ValueError(f"depth must be at least 2 (hops of a chain), got {self.depth}")
        if not 1 <= self.agree <= self.wordings:
            raise ValueError(
                f"agree must be between 1 and wordings ({self.wordings}), got {self.agree}"
            )
        for name in ("n", "max_tokens", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def llm_settings(self) -> dict[str, Any]:
        """What decides a generator LLM reply besides the request: part of its cache key."""
        keys = ("base_url", "model", "temperature", "seed", "max_tokens")
        return {key: value for key, value in asdict(self).items() if key in keys}
