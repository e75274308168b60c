"""The engine of `unlearncheck.serve`: tokenizes, generates and scores with an `HFModel`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch

from unlearncheck.backends.hf import HFModel
from unlearncheck.serve.requests import APIError, Sampling, invalid

__all__ = ["Cancelled", "Choice", "Engine", "Prompt", "TokenLogprob", "text_starts"]

_DECODE_WINDOW = 6  # tokens of left context when decoding one token's text
_GENERATE_BATCH = 16  # prompts per generate call
_FLOOR_LOGPROB = -9999.0  # stands in for -inf, which JSON cannot carry


class Cancelled(Exception):
    """The request's client left, so its work was stopped (see `Engine.cancelled_when`)."""


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

    @contextmanager
    def cancelled_when(self, gone: Callable[[], bool]) -> Iterator[None]:
        """Within the block, every forward pass of the model (each generated token, each scored
        sequence) first asks ``gone()`` and raises `Cancelled` when it is true."""

        def check(module: torch.nn.Module, args: Any) -> None:
            if gone():
                raise Cancelled("the client disconnected")

        handle = self.model.model.register_forward_pre_hook(check)
        try:
            yield
        finally:
            handle.remove()

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
                raise invalid("prompt", f"token ids from 0 to {self._vocab_size - 1}")
            ids, text, starts = list(prompt), None, None
        bos = self.tokenizer.bos_token_id
        prefix = [bos] if bos is not None and ids[:1] != [bos] else []
        if not prefix and not ids:
            raise invalid("prompt", "text with at least one token")
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
        return "".join(pieces), text_starts(pieces)

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
        sample = sampling.temperature > 0
        per_context = n if sample else 1  # greedy choices are all the same: decoded once
        generated = self.model.generate_tokens(
            contexts,
            max_new_tokens=sampling.max_tokens,
            do_sample=sample,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            num_samples=per_context,
            seed=sampling.seed,
            batch_size=_GENERATE_BATCH,
        )
        rows = [self._until_eos(row) for row in generated]
        if not sample:
            return [[row] * n for row in rows]
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
        kept = sum(start < cut for start in text_starts(self.pieces(prompt.model_ids, tokens)))
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


def text_starts(pieces: Sequence[str]) -> list[int]:
    """Offsets of consecutive pieces of text in their concatenation."""
    starts, at = [], 0
    for piece in pieces:
        starts.append(at)
        at += len(piece)
    return starts
