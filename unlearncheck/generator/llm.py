"""The generator LLM: paraphrases of a question and aliases of a subject, asked of an instruction-
following chat model behind an OpenAI-compatible API, parsed and screened.

The model is asked for a JSON list of strings. A reply that is no such list is a malformed
response, retried like any transient fault (`OpenAIModel.chat`); when the retries are spent the
request raises `EndpointError`, which claims report as "not run". Parsed replies are cached
(`GeneratorCache`), so a re-run asks nothing. Screening drops what would make a bad probe: a
paraphrase that leaks the answer or drops the subject, an alias that leaks the answer or is the
name itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from unlearncheck.backends.openai_api import OpenAIModel
from unlearncheck.generator.cache import GeneratorCache, cache_key
from unlearncheck.generator.config import GeneratorConfig

__all__ = ["GeneratorLLM", "Screened", "parse_text_list"]


_SYSTEM = "You write test questions. Reply with a JSON list of strings and nothing else."
_PARAPHRASE_REQUEST = (
    "Write {n} different questions that each ask for exactly the same fact as this question. "
    'Every question must contain the name "{subject}" exactly as written and must not give '
    "the answer.\nQuestion: {question}"
)
_ALIAS_REQUEST = (
    'List up to {n} other names by which "{subject}" is referred to: nicknames, short forms, '
    "initials or titles."
)
#: Longest paraphrase kept, in characters.
_MAX_PARAPHRASE_CHARS = 300
#: Longest alias kept, in words.
_MAX_ALIAS_WORDS = 8


@dataclass(frozen=True)
class Screened:
    """Generated texts after screening.

    Attributes:
        kept: The texts that make probes, in the order generated.
        rejected: (text, why) of each text dropped.
    """

    kept: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]


class GeneratorLLM:
    """Paraphrases and aliases from the configured generator LLM, cached by request."""

    def __init__(self, config: GeneratorConfig, cache: GeneratorCache) -> None:
        """A client of ``config.base_url`` (the key comes from ``$OPENAI_API_KEY``).

        Raises:
            ValueError: ``config`` names no generator LLM.
        """
        if config.base_url is None or config.model is None:
            raise ValueError(
                "no generator LLM configured: give its base URL and model name "
                "(--uc-generator-url and --uc-generator-model)"
            )
        self.config = config
        self.cache = cache
        self.client = OpenAIModel(
            config.model,
            config.base_url,
            timeout=config.timeout,
            retries=config.retries,
            backoff=config.backoff,
        )

    @property
    def name(self) -> str:
        """``<model>@<base URL>``: where the texts come from (for probe lineage)."""
        return f"{self.client.name}@{self.client.base_url}"

    def paraphrases(self, question: str, subject: str, answer: str) -> Screened:
        """Other wordings of ``question`` about ``subject``, without those that leak ``answer``
        or drop ``subject``.

        Raises:
            EndpointError: The generator LLM gave no usable reply after the retries.
        """
        request = _PARAPHRASE_REQUEST.format(n=self.config.n, subject=subject, question=question)
        return _screen(
            self._texts(request),
            question,
            lambda text: _paraphrase_fault(text, subject, answer),
            "repeats the question or another paraphrase",
        )

    def aliases(self, subject: str, answer: str) -> Screened:
        """Other names of ``subject``, without those that leak ``answer`` (the alias stands in
        the prompt of a question whose answer that is) or are ``subject`` itself.

        Raises:
            EndpointError: The generator LLM gave no usable reply after the retries.
        """
        return _screen(
            self._texts(_ALIAS_REQUEST.format(n=self.config.n, subject=subject)),
            subject,
            lambda text: _alias_fault(text, answer),
            "is the name itself or repeats another alias",
        )

    def _texts(self, request: str) -> list[str]:
        """The JSON list of strings the generator LLM replies to ``request`` (cached)."""
        messages = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": request}]
        key = cache_key(kind="chat", messages=messages, **self.config.llm_settings())
        cached = self.cache.get(key)
        if cached is not None:
            return list(cached)
        texts = self.client.chat(
            messages,
            parse_text_list,
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            seed=self.config.seed,
        )
        self.cache.put(key, texts)
        return texts


def parse_text_list(reply: str) -> list[str]:
    """The JSON list of strings in ``reply`` (inside a code fence or prose, if need be),
    each stripped.

    Raises:
        ValueError: ``reply`` holds no JSON list of strings.
    """
    start, end = reply.find("["), reply.rfind("]")
    if start < 0 or end < start:
        raise ValueError(f"no JSON list in the reply {reply[:80]!r}")
    value = json.loads(reply[start : end + 1])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"the reply is not a JSON list of strings: {reply[:80]!r}")
    return [item.strip() for item in value]


def _screen(
    texts: list[str], original: str, fault: Callable[[str], str | None], repeated: str
) -> Screened:
    """``texts`` kept unless ``fault`` names why not, or they repeat ``original`` or a text kept
    before them (``repeated`` is then the reason)."""
    kept: list[str] = []
    rejected: list[tuple[str, str]] = []
    seen = {_normal(original)}
    for text in texts:
        why = fault(text)
        if why is None and _normal(text) in seen:
            why = repeated
        if why is None:
            kept.append(text)
            seen.add(_normal(text))
        else:
            rejected.append((text, why))
    return Screened(tuple(kept), tuple(rejected))


def _paraphrase_fault(text: str, subject: str, answer: str) -> str | None:
    """Why ``text`` makes no paraphrase probe (None: it does)."""
    if not text or "\n" in text or len(text) > _MAX_PARAPHRASE_CHARS:
        return f"empty, on several lines or over {_MAX_PARAPHRASE_CHARS} characters"
    if subject not in text:
        return "drops the subject"
    if _mentions(text, answer):
        return "leaks the answer"
    return None


def _alias_fault(text: str, answer: str) -> str | None:
    """Why ``text`` makes no alias (None: it does)."""
    if not text or "\n" in text or len(text.split()) > _MAX_ALIAS_WORDS:
        return f"empty, on several lines or over {_MAX_ALIAS_WORDS} words"
    if _mentions(text, answer):
        return "leaks the answer"
    return None


def _mentions(text: str, answer: str) -> bool:
    """Whether ``answer`` stands in ``text`` as a word or phrase (case ignored)."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text, re.IGNORECASE) is not None


def _normal(text: str) -> str:
    return " ".join(text.casefold().split())
