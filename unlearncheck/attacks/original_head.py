"""The original-head attack: read the model's hidden states through the original's output head.

An unlearning that changes only the output layer leaves the body's hidden states as they were, so
what it hid is still there for the head it was hidden from. This attack scores every probe on the
model under test with its final norm and output layer replaced by the original's: the model's own
body runs on the prompt followed by the option (teacher-forced), and its last block's output at
each position is mapped to next-token log-probabilities by the original's final norm and output
layer. Nothing is fitted, so any answer can be scored, one that no retain fact has included
(`hidden_probe` scores only the answer values it was fitted on). The claim's facts are judged
through it (docs/methods.md, "original_head").

torch and the Hugging Face backend are imported on first use, not with this module: the package
imports it eagerly, as its submodule of the same name would shadow a lazily exported
``original_head`` (see ``unlearncheck/attacks/__init__.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from unlearncheck.attacks.base import AttackResult, ClaimModels, ClaimScorer, not_run
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.attacks.input import InputAttack, attributed_probes, direct, paraphrase
from unlearncheck.backends.capabilities import Capability, ScoringModel
from unlearncheck.backends.scoring import AnswerScore
from unlearncheck.facts import Fact, FactSet
from unlearncheck.probes import Probe

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutput

    from unlearncheck.backends.hf import HFModel

__all__ = [
    "HeadSwappedLM",
    "OriginalHeadAttack",
    "OriginalHeadReadout",
    "final_norm",
    "original_head",
]

#: Names of the final norm (between the last block and the output layer) under a model's base
#: model: GPT-2, Falcon (``ln_f``); Llama, Mistral, Qwen (``norm``); GPT-NeoX
#: (``final_layer_norm``); Phi (``final_layernorm``); OPT (``decoder.final_layer_norm``).
FINAL_NORMS = ("ln_f", "norm", "final_layer_norm", "final_layernorm", "decoder.final_layer_norm")


def final_norm(model: PreTrainedModel) -> str | None:
    """The qualified name of ``model``'s final norm (one of `FINAL_NORMS` under its base model),
    or None when it has none of them."""
    names = {name for name, _ in model.named_modules()}
    for name in FINAL_NORMS:
        qualified = f"{model.base_model_prefix}.{name}"
        if qualified in names:
            return qualified
    return None


def output_layer(model: PreTrainedModel) -> str:
    """The qualified name of ``model``'s output layer (its output embeddings)."""
    head = model.get_output_embeddings()
    return next(name for name, module in model.named_modules() if module is head)


class HeadSwappedLM:
    """A causal LM's body with another model's final norm and output layer, called like a causal
    LM (``lm(input_ids=..., attention_mask=...).logits``), so `HFModel` scores through it.

    The body's base model runs as usual; the input of its final norm (the last block's output, at
    every position) is taken by a forward hook and mapped to logits by the head model's final
    norm and output layer. The body's own output layer is not run.

    Attributes:
        body: The model whose blocks compute the hidden states.
        head: The model whose final norm and output layer read them.
        body_norm: Name of the body's final norm (its input is read).
        head_modules: Names of the head model's final norm and output layer.
    """

    def __init__(self, body: PreTrainedModel, head: PreTrainedModel) -> None:
        body_norm, head_norm = final_norm(body), final_norm(head)
        if body_norm is None or head_norm is None:
            raise ValueError(f"no final norm named one of {FINAL_NORMS}")
        self.body, self.head = body, head
        self.body_norm = body_norm
        self.head_modules = (head_norm, output_layer(head))
        self._hooked = body.get_submodule(body_norm)
        self._norm, self._out = head.get_submodule(head_norm), head.get_output_embeddings()

    def eval(self) -> HeadSwappedLM:
        """Itself (both models are in eval mode already, as `HFModel` keeps them)."""
        return self

    def __call__(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> CausalLMOutput:
        """Logits [batch, positions, vocabulary] of the head model's norm and output layer on the
        body's last-block output."""
        from transformers.modeling_outputs import CausalLMOutput

        taken: list[torch.Tensor] = []
        handle = self._hooked.register_forward_hook(lambda _m, args, _out: taken.append(args[0]))
        try:
            self.body.base_model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            )
        finally:
            handle.remove()
        weight = self._out.weight
        states = taken[-1].to(device=weight.device, dtype=weight.dtype)
        return CausalLMOutput(logits=self._out(self._norm(states)).to(input_ids.device))


class OriginalHeadReadout:
    """A model read through the original's final norm and output layer (a `ScoringModel`).

    ``score_answers`` is `HFModel.score_answers` (same encoding, batching and teacher forcing) on
    a `HeadSwappedLM` of the model's body and the original's head: log p(option | prompt) with
    p = softmax(W_o · norm_o(h)), h the model's last-block output.
    """

    #: Scores only: it neither generates nor has weights of its own.
    capabilities: frozenset[Capability] = frozenset({"scores"})

    def __init__(self, model: HFModel, original: HFModel) -> None:
        from unlearncheck.backends.hf import HFModel

        self.lm = HeadSwappedLM(model.model, original.model)
        self.spec = f"{model.spec}|original_head({original.spec})"
        self.device = model.device
        self._scoring = HFModel(
            cast("PreTrainedModel", self.lm),
            model.tokenizer,
            spec=self.spec,
            device=model.device,
            prompt_format=model.prompt_format,
        )
        digest = f"original_head|{model.content_hash}|{original.content_hash}"
        self.content_hash = hashlib.sha256(digest.encode()).hexdigest()

    def score_answers(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int = 32
    ) -> list[AnswerScore]:
        """Log-likelihood of each answer after its prompt, read through the original's head."""
        return self._scoring.score_answers(requests, batch_size=batch_size)


def unreadable(model: ScoringModel, original: HFModel, role: str) -> str | None:
    """Why ``model`` (of ``role``) cannot be read through ``original``'s head, or None."""
    from unlearncheck.backends.hf import HFModel

    if not isinstance(model, HFModel):
        return (
            f"needs the weights and hidden states of the {role}, which {model.spec} does not offer"
        )
    for m in (model, original):
        if final_norm(m.model) is None:
            return (
                f"finds no final norm in {m.spec} ({type(m.model).__name__}; "
                f"known names: {', '.join(FINAL_NORMS)})"
            )
    if model.model.config.hidden_size != original.model.config.hidden_size:
        return f"the {role} {model.spec} and the original differ in hidden size"
    if model.tokenizer.get_vocab() != original.tokenizer.get_vocab():
        return (
            f"the {role} {model.spec} and the original have different vocabularies: the "
            "original's output layer would read other tokens"
        )
    return None


@dataclass(frozen=True)
class OriginalHeadAttack:
    """Read the claim's probes on each model through the original's final norm and output layer.

    The model under test and the reference are read through the original's head; the original,
    read through its own head, is itself. Without an original there is no head to read through
    and the attack does not run (blocking). In the power run the model under test is the original
    (`unlearncheck.pipeline.Claim.power`), read as it is: the attack's power on a fact is the
    original's own knowledge of it.

    Attributes:
        inputs: Input attacks giving the prompts.
        needs: Model capabilities the attack uses: the weights and hidden states of the model.
    """

    name: str = "original_head"
    inputs: tuple[InputAttack, ...] = (direct, paraphrase)
    needs: frozenset[Capability] = frozenset({"scores", "weights", "hidden_states"})

    def probes(self, fact: Fact, context: ProbeContext) -> list[Probe]:
        """The probes read through the original's head, attributed to this attack."""
        return attributed_probes(self.inputs, fact, context, self.name, "original_head")

    def blocked(self, models: ClaimModels, original: ScoringModel | None) -> str | None:
        """Why the attack cannot run on ``models`` with ``original``'s head, or None."""
        from unlearncheck.backends.hf import HFModel

        if original is None:
            return (
                "needs the original model: its final norm and output layer read the model's "
                "hidden states"
            )
        if not isinstance(original, HFModel):
            return f"needs the weights of the original, which {original.spec} does not offer"
        for role, model in models.given():
            reason = None if model is original else unreadable(model, original, role)
            if reason is not None:
                return reason
        return None

    def run(
        self, facts: FactSet, context: ProbeContext, models: ClaimModels, scorer: ClaimScorer
    ) -> AttackResult:
        """Judge the claim's probes on the models read through the original's head.

        Each outcome adds the head read through (``head_of``: the original's spec;
        ``head_modules``: its final norm and output layer), the hidden state read
        (``hidden_state``) and the roles read through it (``read_through_head``; the original
        itself is read as it is).
        """
        original = models.original
        reason = self.blocked(models, original)
        if reason is not None:
            return AttackResult(not_run(self.name, context.claim, reason, blocking=True))
        head = cast("HFModel", original)
        reference = models.reference
        readouts = ClaimModels(
            _read_through(models.model, head),
            None if reference is None else _read_through(reference, head),
            models.original,
        )
        probes = {f.id: self.probes(f, context) for f in context.claim}
        result = scorer.judge(self.name, probes, readouts)
        evidence = _evidence(models, head)
        for outcome in result.outcomes.values():
            outcome.extra.update(evidence)
        return AttackResult(result.outcomes, shown_by=None)

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


def _read_through(model: ScoringModel, original: HFModel) -> ScoringModel:
    """``model`` read through ``original``'s head: the original itself is read as it is.
    ``model`` was checked (`OriginalHeadAttack.blocked`)."""
    return model if model is original else OriginalHeadReadout(cast("HFModel", model), original)


def _evidence(models: ClaimModels, original: HFModel) -> dict[str, Any]:
    """What was read, and through what, for every outcome."""
    body = cast("HFModel", models.model)
    return {
        "head_of": original.spec,
        "head_modules": [final_norm(original.model), output_layer(original.model)],
        "hidden_state": f"input of {final_norm(body.model)} (the last block's output), "
        "teacher-forced on prompt + option",
        "read_through_head": [
            role for role, m in models.given() if role != "original" and m is not original
        ],
    }


original_head = OriginalHeadAttack()
"""The original_head attack: the model's hidden states read through the original's output head."""
