"""Hugging Face transformers backend: score, sample and probe a causal LM loaded from a spec.

Reading a checkpoint (config, tokenizer, dtype, weights, checks) is in
`unlearncheck.backends.hf_loading`; `HFModel.load` is the entry point.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal, TypeVar, get_args

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearncheck.backends.capabilities import CAPABILITIES, Capability
from unlearncheck.backends.hf_loading import load_checkpoint
from unlearncheck.backends.scoring import AnswerScore, chunks
from unlearncheck.probes import ASSISTANT_OPENING

__all__ = ["PROMPT_FORMATS", "HFModel", "PromptFormat", "is_out_of_memory", "resolve_prompt_format"]

#: How prompts reach the model: ``chat`` renders each prompt as one user turn of the tokenizer's
#: chat template (with the generation prompt) and scores answers as the assistant's words, with
#: no leading space; ``plain`` feeds the prompt text as it is and the answer as its continuation
#: (``" Paris"``); ``auto`` is chat when the tokenizer has a chat template, else plain.
PromptFormat = Literal["auto", "chat", "plain"]
PROMPT_FORMATS: tuple[str, ...] = get_args(PromptFormat)

_log = logging.getLogger(__name__)
_Item = TypeVar("_Item")


def resolve_prompt_format(
    prompt_format: str, tokenizer: PreTrainedTokenizerBase, spec: str
) -> Literal["chat", "plain"]:
    """The format ``prompt_format`` means for ``tokenizer`` (see `PromptFormat`).

    Raises:
        ValueError: If the format is unknown, or ``chat`` is asked of a tokenizer without a chat
            template.
    """
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"prompt format {prompt_format!r} is not one of {', '.join(PROMPT_FORMATS)}"
        )
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if prompt_format == "chat" and not has_template:
        raise ValueError(f"prompt format 'chat': the tokenizer of {spec!r} has no chat template")
    if prompt_format == "auto":
        return "chat" if has_template else "plain"
    return "chat" if prompt_format == "chat" else "plain"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says that the device or the host ran out of memory."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "not enough memory" in text or "can't allocate" in text
    )


class HFModel:
    """A causal LM + tokenizer loaded from a spec; all scoring is batched.

    Every prompt is encoded the same way (`encode_prompts`): in the ``plain`` format its tokens,
    in the ``chat`` format those of the chat template rendering it as a user turn (special tokens
    of the template included), preceded by the tokenizer's BOS token when it has one and the
    text does not already start with it. Batches are padded by hand, so the tokenizer is never
    mutated. A batch that runs out of memory is retried in halves, and no later batch of the
    model is larger (`batch_limit`): the ``auto`` batch size
    (`unlearncheck.scoring.AUTO_BATCH_SIZE`) starts large and finds what fits.

    Attributes:
        spec: The spec the model was loaded from (or a caller-given name).
        model: The causal language model, in eval mode.
        tokenizer: Its tokenizer.
        device: The device inputs are sent to.
        batch_limit: The largest batch that fitted after an out-of-memory error (None: none
            happened).
        prompt_format: ``chat`` or ``plain`` (`PromptFormat`, resolved from ``auto``).
    """

    #: Everything: scores, generation, weights and hidden states (`capabilities`).
    capabilities: frozenset[Capability] = frozenset(CAPABILITIES)

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        spec: str,
        device: torch.device,
        prompt_format: PromptFormat = "auto",
    ) -> None:
        """Wrap a model and tokenizer; prefer `load` or `from_pretrained_objects`.

        Raises:
            ValueError: If the prompt format is unknown or needs a chat template the tokenizer
                lacks, or the tokenizer has neither a pad nor an eos token.
        """
        self.spec = spec
        #: The checkpoint directory the model was loaded from (None for derived models).
        self.source: Path | None = None
        #: The options `load` was given (device, allow_pickle, trust_remote_code), for a reload
        #: of `source` (the quantization attacks' real 4/8-bit layers); empty for derived models.
        self.load_options: dict[str, object] = {}
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.batch_limit: int | None = None
        self.prompt_format = resolve_prompt_format(prompt_format, tokenizer, spec)
        pad_id = tokenizer.pad_token_id
        self._pad_id: int = tokenizer.eos_token_id if pad_id is None else pad_id
        if self._pad_id is None:
            raise ValueError(f"tokenizer of {spec!r} has neither a pad nor an eos token")

    @classmethod
    def load(
        cls,
        spec: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        prompt_format: PromptFormat = "auto",
    ) -> HFModel:
        """Load a model from a spec (see `unlearncheck.specs.resolve_spec`); never downloads.

        Everything is checked before a weight is read: the device, the dtype, the checkpoint
        (`unlearncheck.specs.check_checkpoint`) and that the tokenizer fits the embedding.

        Args:
            spec: Organism spec, checkpoint directory or locally cached hub id.
            device: Torch device; defaults to "cuda" when available, else "cpu". ``auto``
                (`unlearncheck.specs.SPREAD`) spreads a model too large for one GPU over all
                visible GPUs (transformers' ``device_map="auto"``; needs ``accelerate``).
            dtype: "float32", "bfloat16" or "float16"; defaults to bfloat16 on CUDA and
                float32 elsewhere.
            allow_pickle: Load pickle weights (``pytorch_model.bin``) of a checkpoint without
                safetensors; unpickling can execute code, so only for checkpoints you trust.
            trust_remote_code: Allow executing modelling code shipped with the checkpoint.
            prompt_format: How prompts are rendered (`PromptFormat`); ``auto`` uses the
                tokenizer's chat template when it has one.

        Returns:
            The loaded model in eval mode.

        Raises:
            ModelSpecError: If the spec resolves to no local checkpoint, the checkpoint is
                refused, or its config, tokenizer or weights cannot be read, or its tokenizer
                does not fit its embedding.
            ValueError: If the device, the dtype or the prompt format is unknown, or ``chat`` is
                asked of a tokenizer without a chat template.
        """
        model, tokenizer, target, path = load_checkpoint(
            spec,
            device=device,
            dtype=dtype,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
        )
        loaded = cls(model, tokenizer, spec=spec, device=target, prompt_format=prompt_format)
        loaded.source = path
        loaded.load_options = {
            "device": device,
            "allow_pickle": allow_pickle,
            "trust_remote_code": trust_remote_code,
        }
        return loaded

    @classmethod
    def from_pretrained_objects(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        spec: str,
        prompt_format: PromptFormat = "auto",
    ) -> HFModel:
        """Wrap an already-loaded model (e.g. a variant derived by an attack).

        Args:
            model: The causal LM; it is switched to eval mode and used on its current device.
            tokenizer: Its tokenizer.
            spec: A name identifying the model in reports.
            prompt_format: How prompts are rendered (`PromptFormat`); a variant derived from a
                model passes that model's format.

        Returns:
            The wrapped model.
        """
        return cls(model, tokenizer, spec=spec, device=model.device, prompt_format=prompt_format)

    def variant(self, weights: PreTrainedModel, *, label: str) -> HFModel:
        """``weights`` (a copy of this model changed by an attack) with this model's tokenizer and
        prompt format, named ``<spec>|<label>`` in reports."""
        return HFModel.from_pretrained_objects(
            weights, self.tokenizer, spec=f"{self.spec}|{label}", prompt_format=self.prompt_format
        )

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 (hex) of the state dict (sorted names, dtypes, shapes and raw bytes) and of
        the tokenizer (its serialized vocabulary and rules).

        Computed on first access and cached, so mutate weights before wrapping, not after.
        """
        digest = hashlib.sha256()
        state = self.model.state_dict()
        for name in sorted(state):
            tensor = state[name].detach()
            digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        vocabulary = backend.to_str() if backend is not None else str(self.tokenizer.get_vocab())
        digest.update(vocabulary.encode())
        return digest.hexdigest()

    def score_answers(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int = 32
    ) -> list[AnswerScore]:
        """Score answers by teacher forcing, tokenized like lm-evaluation-harness.

        The answer tokens are those of ``prompt + answer`` after the prompt's tokens (or the
        answer tokenized alone when the joint tokenization does not extend the prompt's), so
        answers usually carry a leading space: ``("The capital of France is", " Paris")``.

        Args:
            requests: (prompt, answer) pairs.
            batch_size: Sequences per forward pass.

        Returns:
            One score per request, in input order.

        Raises:
            ValueError: If an answer has no tokens or a prompt encodes to no tokens.
        """
        encoded = self.encode_requests(requests)
        scores: list[AnswerScore | None] = [None] * len(encoded)
        by_context: dict[tuple[int, ...], list[int]] = {}
        for i, (context, answer) in enumerate(encoded):
            if len(answer) == 1:
                by_context.setdefault(tuple(context), []).append(i)
        self._score_single_tokens(encoded, by_context, scores, batch_size)
        longer = [i for i, (_, answer) in enumerate(encoded) if len(answer) > 1]
        order = sorted(longer, key=lambda i: -sum(map(len, encoded[i])))

        def score(batch: list[int]) -> None:
            # The last answer token is never an input: nothing is predicted from it.
            inputs = [encoded[i][0] + encoded[i][1][:-1] for i in batch]
            ids, mask = self.pad(inputs, left=False)
            targets = torch.zeros_like(ids)
            answer_mask = torch.zeros_like(ids, dtype=torch.bool)
            for row, i in enumerate(batch):
                context, answer = encoded[i]
                span = slice(len(context) - 1, len(context) - 1 + len(answer))
                targets[row, span] = torch.tensor(answer, dtype=torch.long)
                answer_mask[row, span] = True
            with torch.inference_mode():
                logprobs = self.model(input_ids=ids, attention_mask=mask).logits.float()
                logprobs = logprobs.log_softmax(dim=-1)
                token_lp = logprobs.gather(2, targets[..., None]).squeeze(-1)
                sums = (token_lp * answer_mask).sum(dim=1).tolist()
                greedy = ((logprobs.argmax(dim=-1) == targets) | ~answer_mask).all(dim=1).tolist()
            for row, i in enumerate(batch):
                scores[i] = AnswerScore(sums[row], len(encoded[i][1]), bool(greedy[row]))

        self.in_batches(order, batch_size, score)
        return [score for score in scores if score is not None]

    def _score_single_tokens(
        self,
        encoded: list[tuple[list[int], list[int]]],
        by_context: dict[tuple[int, ...], list[int]],
        scores: list[AnswerScore | None],
        batch_size: int,
    ) -> None:
        """One-token answers: one forward pass per distinct context serves all its answers."""
        contexts = sorted(by_context, key=len, reverse=True)

        def score(batch: list[tuple[int, ...]]) -> None:
            ids, mask = self.pad([list(c) for c in batch], left=False)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                last = logits[torch.arange(len(batch)), mask.sum(dim=1) - 1].float()
                logprobs = last.log_softmax(dim=-1).cpu()
            best = logprobs.argmax(dim=-1).tolist()
            for row, context in enumerate(batch):
                for i in by_context[context]:
                    token = encoded[i][1][0]
                    scores[i] = AnswerScore(float(logprobs[row, token]), 1, best[row] == token)

        self.in_batches(contexts, batch_size, score)

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
        """Continue prompts, greedily or by temperature / nucleus sampling (no top-k).

        Args:
            prompts: Prompts to continue.
            max_new_tokens: Maximum continuation length in tokens.
            do_sample: Sample instead of greedy decoding.
            temperature: Sampling temperature (ignored when greedy).
            top_p: Nucleus sampling mass (ignored when greedy).
            num_samples: Continuations per prompt.
            seed: Seed making sampling reproducible (for the same arguments); the global torch
                RNG state is left untouched.
            batch_size: Prompts per `generate` call.

        Returns:
            Per prompt, ``num_samples`` decoded continuations without the prompt and special
            tokens.
        """
        rows = self.generate_tokens(
            self.encode_prompts(prompts),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            num_samples=num_samples,
            seed=seed,
            batch_size=batch_size,
        )
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return list(chunks(texts, num_samples))

    def generate_tokens(
        self,
        contexts: Sequence[list[int]],
        *,
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_p: float,
        num_samples: int,
        seed: int | None,
        batch_size: int,
    ) -> list[list[int]]:
        """Continue encoded prompts (as `encode_prompts` gives them), batched by `in_batches`.

        The arguments are those of `generate`; ``contexts`` are left-padded per batch.

        Returns:
            ``num_samples`` rows of new token ids per context, context-major, as the model's
            ``generate`` returns them: a row that stopped before the longest of its batch is
            padded with the pad token (the end-of-sequence token when there is no pad token).
        """
        options: dict[str, object] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "num_return_sequences": num_samples,
            "pad_token_id": self._pad_id,
        }
        if do_sample:
            options.update(temperature=temperature, top_p=top_p, top_k=0)
        cuda = [self.device] if self.device.type == "cuda" else []
        rows: list[list[int]] = []

        def continue_batch(batch: list[list[int]]) -> None:
            ids, mask = self.pad(batch, left=True)
            with torch.inference_mode():
                out = self.model.generate(input_ids=ids, attention_mask=mask, **options)
            rows.extend(out[:, ids.shape[1] :].tolist())

        with torch.random.fork_rng(devices=cuda, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.in_batches(list(contexts), batch_size, continue_batch)
        return rows

    def hidden_states(
        self,
        prompts: Sequence[str],
        *,
        layers: Sequence[int] | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Residual-stream activations at each prompt's last token.

        Args:
            prompts: Prompts to encode.
            layers: Indices into the model's ``hidden_states`` output (0 = embeddings, -1 =
                last layer); None selects all.
            batch_size: Prompts per forward pass.

        Returns:
            float32 array of shape [n_prompts, n_layers, hidden_size].
        """
        rows: list[np.ndarray] = []

        def read(batch: list[str]) -> None:
            encoded = self.encode_prompts(batch)
            ids, mask = self.pad(encoded, left=False)
            with torch.inference_mode():
                states = self.model(
                    input_ids=ids, attention_mask=mask, output_hidden_states=True
                ).hidden_states
            chosen = states if layers is None else [states[layer] for layer in layers]
            last = torch.tensor([len(seq) - 1 for seq in encoded], device=ids.device)
            stacked = torch.stack(chosen, dim=1)[torch.arange(len(batch)), :, last]
            rows.append(stacked.float().cpu().numpy())

        self.in_batches(list(prompts), batch_size, read)
        return np.concatenate(rows) if rows else np.empty((0, 0, 0), dtype=np.float32)

    def in_batches(
        self, items: list[_Item], batch_size: int, run: Callable[[list[_Item]], None]
    ) -> None:
        """Call ``run`` on consecutive batches of ``items``, in order: the one batching path of
        every forward pass of this model (scoring, generation, hidden states, metrics, serving).

        A batch that runs out of memory is retried at half the batch size (halved again until
        the batch is cut), and the model keeps that size as its `batch_limit`; an out-of-memory
        error on a single item is raised. As a failed batch is run again, ``run`` should record
        a batch's results only once they are all computed.
        """
        size = min(batch_size, self.batch_limit or batch_size)
        at = 0
        while at < len(items):
            batch = items[at : at + size]
            try:
                run(batch)
            except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
                if len(batch) == 1 or not is_out_of_memory(error):
                    raise
                size //= 2
                while size >= len(batch):
                    size //= 2
                self.batch_limit = size
                _log.warning(
                    "%s: out of memory at batch size %d; continuing at %d",
                    self.spec,
                    len(batch),
                    size,
                )
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            at += len(batch)

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt as the model reads it (`render_prompt`), preceded by BOS
        when the tokenizer has one and the rendering does not already start with it.

        This is how every prompt of the model is encoded (scoring, generation, hidden states).

        Each distinct prompt is tokenized once, all of them in one batch call.
        """
        return self._encode_texts([self.render_prompt(p) for p in prompts])

    def render_prompt(self, prompt: str) -> str:
        """The text the model reads for ``prompt``: the prompt itself (``plain``), or the chat
        template's rendering of it as one user turn followed by the assistant's generation
        prompt and, when the prompt has an `ASSISTANT_OPENING`, the opening words after it
        (``chat``)."""
        if self.prompt_format == "plain":
            return prompt
        user, _, opening = prompt.partition(ASSISTANT_OPENING)
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return f"{rendered}{opening}"

    def answer_text(self, answer: str, prompt: str) -> str:
        """How an answer continues its rendered prompt: as given in ``plain`` (``" Paris"``) and
        after the assistant's opening words in ``chat`` (`ASSISTANT_OPENING`); without leading
        whitespace where it opens the assistant's turn itself."""
        if self.prompt_format == "plain" or prompt.partition(ASSISTANT_OPENING)[2]:
            return answer
        return answer.lstrip()

    def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of rendered texts (special tokens in the text included), BOS first once."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return []
        ids = self.tokenizer(unique, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        table = {
            text: (seq if bos is None or seq[:1] == [bos] else [bos, *seq])
            for text, seq in zip(unique, ids, strict=True)
        }
        return [table[text] for text in texts]

    def encode_requests(
        self, requests: Sequence[tuple[str, str]]
    ) -> list[tuple[list[int], list[int]]]:
        """Split (prompt, answer) pairs into context ids and answer ids, as `score_answers` does.

        The context is the prompt's `encode_prompts` ids; the answer ids are those of the
        rendered prompt followed by `answer_text` after them, or the answer tokenized alone when
        the joint tokenization does not extend the prompt's.

        Raises:
            ValueError: If a prompt or an answer has no tokens.
        """
        rendered = [(self.render_prompt(p), self.answer_text(a, p)) for p, a in requests]
        contexts = self._encode_texts([prompt for prompt, _ in rendered])
        wholes = self._encode_texts([prompt + answer for prompt, answer in rendered])
        out = []
        for (prompt, answer), context, whole in zip(rendered, contexts, wholes, strict=True):
            if whole[: len(context)] == context and len(whole) > len(context):
                answer_ids = whole[len(context) :]
            else:
                answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            if not context or not answer_ids:
                raise ValueError(f"prompt {prompt!r} and answer {answer!r} must both have tokens")
            out.append((context, answer_ids))
        return out

    def pad(self, seqs: Sequence[list[int]], *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad token id lists into (input_ids, attention_mask) tensors on the model device.

        Args:
            seqs: Token id lists (at least one).
            left: Pad on the left (for generation) instead of the right (for scoring).
        """
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        return ids.to(self.device), mask.to(self.device)
