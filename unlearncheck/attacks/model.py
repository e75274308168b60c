"""Model attacks: change the model, then ask again (docs/methods.md, "Model attacks").

A model attack derives a variant of the model under test (quantized, or fine-tuned on the
attacker's slice of the forget set) and runs input attacks on it. The same derivation is applied to
the reference when one is given, so a gain that the attack would give any model (relearning teaches
the answer) is not counted as recovered knowledge. Variants are built once per (attack, model) and
held while in use: at most `MAX_HELD_VARIANTS`, the least recently used freed first.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from unlearncheck import quantization
from unlearncheck.attacks.base import AttackResult, ClaimModels, ClaimScorer
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.attacks.input import (
    InputAttack,
    attributed_probes,
    direct,
    paraphrase,
)
from unlearncheck.backends.capabilities import Capability, ScoringModel
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import Fact, FactSet
from unlearncheck.probes import Probe, question_of, statement_of
from unlearncheck.specs import SPREAD
from unlearncheck.verdict import AttackOutcome

__all__ = [
    "MAX_HELD_VARIANTS",
    "MODEL_ATTACKS",
    "SANITY_FACTS",
    "Derive",
    "Evidence",
    "ModelAttack",
    "make_relearn",
    "quant4",
    "quant4_fp4",
    "quant8",
    "relearn",
    "relearn_lr",
    "with_weights",
]


#: Derives a variant of a model: (model, probe context) → variant.
Derive = Callable[[HFModel, ProbeContext], HFModel]
#: Derived variants held at once (least recently used freed first): those of one attack on the
#: model and the reference, and of the attack before, so a suite's tests share them while a large
#: model's variants never pile up on the device.
MAX_HELD_VARIANTS = 4
_VARIANTS: OrderedDict[tuple[str, str], HFModel] = OrderedDict()


#: Evidence a model attack adds to each outcome: (variant of the model, the original, the probe
#: context, the scorer) → fields.
Evidence = Callable[[HFModel, HFModel | None, ProbeContext, ClaimScorer], dict[str, Any]]


def _no_evidence(
    variant: HFModel, original: HFModel | None, context: ProbeContext, scorer: ClaimScorer
) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ModelAttack:
    """Derive a variant of the model (and of the reference), then run ``inputs`` on it.

    Attributes:
        name: Attack name; a composed attack is named ``<attack>><input>+<input>``.
        derive: Builds the variant of a model.
        key: Identifies the derivation's settings (part of the variant cache key).
        inputs: Input attacks whose probes are asked of the variant (default: base forms and
            paraphrases).
        withheld: Why a fact cannot be judged by this attack (e.g. it was shown to the attacker),
            or None.
        evidence: Fields added to every outcome from the model's variant and the original
            (e.g. the share of 4-bit codes changed).
        needs: Model capabilities the attack uses: the weights, to derive a variant.
    """

    name: str
    derive: Derive
    key: str
    inputs: tuple[InputAttack, ...] = (direct, paraphrase)
    withheld: Callable[[Fact, ProbeContext], str | None] = field(default=lambda f, c: None)
    evidence: Evidence = _no_evidence
    needs: frozenset[Capability] = frozenset({"scores", "weights"})

    def then(self, *inputs: InputAttack) -> ModelAttack:
        """The same model attack followed by ``inputs`` (e.g. ``relearn.then(paraphrase)``)."""
        base = self.name.split(">")[0]
        return replace(self, name=f"{base}>{'+'.join(a.name for a in inputs)}", inputs=inputs)

    def variant(self, model: HFModel, context: ProbeContext) -> HFModel:
        """The derived variant of ``model``, built once while it is held (keyed by settings and
        the model's content hash; at most `MAX_HELD_VARIANTS` are held)."""
        cache_key = (self.key, model.content_hash)
        if cache_key in _VARIANTS:
            _VARIANTS.move_to_end(cache_key)
            return _VARIANTS[cache_key]
        while len(_VARIANTS) >= MAX_HELD_VARIANTS:
            _free(_VARIANTS.popitem(last=False)[1])
        _VARIANTS[cache_key] = self.derive(model, context)
        return _VARIANTS[cache_key]

    def probes(self, fact: Fact, context: ProbeContext) -> list[Probe]:
        """The probes asked of the variant, their lineage starting with this attack."""
        return attributed_probes(
            self.inputs, fact, context, self.name, f"model:{self.key}", first=True
        )

    def run(
        self, facts: FactSet, context: ProbeContext, models: ClaimModels, scorer: ClaimScorer
    ) -> AttackResult:
        """Derive the variants (model and reference), judge the attack's probes on them.

        Each outcome also holds the `evidence` fields and the gain of the answers' mean p̂ from
        the model (and the reference) to its variant.
        """
        model = with_weights(models.model, "model", self.name)
        reference = with_weights(models.reference, "reference", self.name)
        assert model is not None
        variants = ClaimModels(
            self.variant(model, context),
            self.variant(reference, context) if reference is not None else None,
            models.original,
        )
        withheld = {f.id: self.withheld(f, context) for f in context.claim}
        probes = {f.id: self.probes(f, context) for f in context.claim if withheld[f.id] is None}
        result = scorer.judge(self.name, probes, variants)
        original = with_weights(models.original, "original", self.name)
        shared = self.evidence(variants.model, original, context, scorer)  # type: ignore[arg-type]
        for fact in context.claim:
            reason = withheld[fact.id]
            if reason is not None:
                result.outcomes[fact.id] = AttackOutcome(
                    self.name, "not run", reason=reason, blocking=True
                )
                continue
            outcome = result.outcomes[fact.id]
            outcome.extra.update(shared)
            outcome.extra.update(_gains(scorer, models, variants, probes[fact.id]))
        return result

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


def with_weights(model: ScoringModel | None, role: str, attack: str) -> HFModel | None:
    """``model`` as a model with weights (None stays None).

    Raises:
        TypeError: ``model`` has no weights (an endpoint given as ``role``).
    """
    if model is None or isinstance(model, HFModel):
        return model
    raise TypeError(f"attack {attack} needs a model with weights as {role}, got {model.spec}")


def _gains(
    scorer: ClaimScorer, before: ClaimModels, after: ClaimModels, probes: list[Probe]
) -> dict[str, float]:
    """How much the answers' mean p̂ rose from the model (and reference) to its variant."""
    gains: dict[str, float] = {}
    for role in ("model", "reference"):
        b_model, a_model = getattr(before, role), getattr(after, role)
        if b_model is None or a_model is None:
            continue
        b, a = scorer.mean_target(b_model, probes), scorer.mean_target(a_model, probes)
        if a is not None and b is not None:
            gains[f"{role}_gain"] = round(a - b, 6)
    return gains


def _free(variant: HFModel) -> None:
    """Release a variant's memory (its device memory at once, when on CUDA)."""
    device = variant.device
    del variant
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _quantized(kind: quantization.QuantKind) -> Derive:
    def derive(model: HFModel, context: ProbeContext) -> HFModel:
        return _quantized_variant(model, kind)

    return derive


def _quantized_variant(model: HFModel, kind: quantization.QuantKind) -> HFModel:
    """``model`` with bitsandbytes ``kind`` weights: real 4/8-bit layers on CUDA when the model was
    loaded from a directory (reloaded as `_reload_options` says), else every quantized layer's
    weight quantize→dequantized. The variant keeps the model's tokenizer and prompt format."""
    if model.device.type == "cuda" and model.source is not None:
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(model.source, **_reload_options(model, kind))
        return model.variant(loaded, label=kind)
    weights = copy.deepcopy(model.model)
    quantization.quantize_model_(weights, kind)
    return model.variant(weights, label=kind)


def _reload_options(model: HFModel, kind: quantization.QuantKind) -> dict[str, Any]:
    """The ``from_pretrained`` options that reload a CUDA ``model``'s checkpoint with real
    bitsandbytes ``kind`` layers as `HFModel.load` read it: on its device (spread over the GPUs
    when it was), in its dtype (so its layers are quantized from the weights the model holds),
    reading pickle weights and running remote code only when it did."""
    from transformers import BitsAndBytesConfig

    config = (
        BitsAndBytesConfig(load_in_8bit=True)
        if kind == "int8"
        else BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_compute_dtype=torch.bfloat16
        )
    )
    options = model.load_options
    device = model.device
    if device.index is None:  # "cuda": the current device, where `HFModel.load` put it
        device = torch.device("cuda", torch.cuda.current_device())
    return {
        "quantization_config": config,
        "device_map": SPREAD if options.get("device") == SPREAD else {"": device},
        "dtype": model.model.dtype,
        "use_safetensors": None if options.get("allow_pickle") else True,
        "trust_remote_code": bool(options.get("trust_remote_code")),
    }


def _changed_codes(kind: quantization.QuantKind) -> Evidence:
    """Evidence of a 4-bit attack: the share of codes that differ between Q(model) and
    Q(original) (0% means quantization maps the model back onto the original). A variant with
    real 4-bit layers (CUDA) gives its packed codes, one with float weights (CPU) its requantized
    ones: the same codes (`quantization.changed_code_fraction`)."""

    def evidence(
        variant: HFModel, original: HFModel | None, context: ProbeContext, scorer: ClaimScorer
    ) -> dict[str, Any]:
        if original is None:
            return {}
        fraction = quantization.changed_code_fraction(variant.model, original.model, kind)  # type: ignore[arg-type]
        return {"changed_4bit_codes": round(fraction, 6)}

    return evidence


quant4 = ModelAttack("quant4", _quantized("nf4"), "quant4:nf4", evidence=_changed_codes("nf4"))
quant4_fp4 = ModelAttack(
    "quant4_fp4", _quantized("fp4"), "quant4_fp4:fp4", evidence=_changed_codes("fp4")
)
quant8 = ModelAttack("quant8", _quantized("int8"), "quant8:int8")


#: An attacker's document: (question, answer) asked in the model's prompt format, or ("", text)
#: for plain text.
Document = tuple[str, str]


def _relearn_documents(context: ProbeContext, split: str = "relearn") -> list[Document]:
    """The attacker's documents: each fact of ``split`` as a statement (plain text) and as a
    question with its answer (in the model's prompt format: a chat exchange for a chat model)."""
    docs: list[Document] = []
    for fact in context.facts.split(split):
        statement = statement_of(fact, context.templates)
        question = question_of(fact, context.templates)
        if statement:
            docs.append(("", statement))
        if question:
            docs.append((context.templates.format_question(question), fact.object))
    return docs


def _encode_documents(model: HFModel, docs: list[Document]) -> list[list[int]]:
    """Token ids of each document as the model reads it, closed by the end-of-sequence token."""
    tokenizer = model.tokenizer
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    asked = [(prompt, f" {answer}") for prompt, answer in docs if prompt]
    pairs = iter(model.encode_requests(asked))
    rows = []
    for prompt, text in docs:
        if prompt:
            context, answer = next(pairs)
            rows.append(context + answer + eos)
        else:
            rows.append(bos + tokenizer(text, add_special_tokens=False)["input_ids"] + eos)
    return rows


def _finetune(
    model: HFModel, docs: list[Document], *, steps: int, lr: float, batch_size: int, seed: int
) -> HFModel:
    """A copy of ``model`` fine-tuned on ``docs`` (causal LM loss, AdamW), deterministically."""
    if not docs:
        raise ValueError("relearn needs documents: no fact has the attacker's split")
    tuned = copy.deepcopy(model.model)
    tuned.train()
    # The causal LM loss, which transformers picks anyway; named, it does not warn
    # "loss_type=None ... unrecognized" for a model class whose name does not say ForCausalLM.
    tuned.loss_type = "ForCausalLM"
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    tokenizer = model.tokenizer
    rows = _encode_documents(model, docs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for _ in range(steps):
        pick = torch.randint(len(rows), (min(batch_size, len(rows)),), generator=generator)
        batch = [rows[i] for i in pick.tolist()]
        width = max(len(r) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            ids[i, : len(row)] = torch.tensor(row)
            labels[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        device = model.device
        loss = tuned(
            input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tuned.eval()
    return model.variant(tuned, label="relearned")


#: Retain facts the relearning sanity record asks (a seeded sample).
SANITY_FACTS = 48


def relearn_lr(n_parameters: int) -> float:
    """The default relearning rate for a model of ``n_parameters``: 1e-3 × min(1, √(10⁶ / N)),
    at least 1e-5. The organism (about 0.6M parameters) gets 1e-3, a 135M model 8.6e-5, a 7B model
    1.2e-5: the step that relearns a small model's facts wrecks a large one."""
    return max(1e-5, 1e-3 * min(1.0, (1e6 / n_parameters) ** 0.5))


def _retain_accuracy(model: HFModel, context: ProbeContext, scorer: ClaimScorer) -> float | None:
    """Share of a seeded sample of retain facts' base probes whose answer ranks first among its
    options on ``model`` (None without retain facts)."""
    retain = list(context.facts.split("retain"))
    if not retain:
        return None
    sample = random.Random(f"{context.seed}|sanity").sample(retain, min(SANITY_FACTS, len(retain)))
    probes = [p for f in sample for p in direct(f, context)]
    return round(scorer.accuracy(model, {"retain": probes})["retain"], 6)


def _relearn_sanity(
    variant: HFModel, original: HFModel | None, context: ProbeContext, scorer: ClaimScorer
) -> dict[str, Any]:
    """The sanity record of a fine-tune: the relearned model's retain accuracy (and the
    original's), so a fine-tune that broke the model cannot pass as "nothing came back". Run on
    the original (power), it is the relearned original's."""
    out: dict[str, Any] = {"relearned_retain_accuracy": _retain_accuracy(variant, context, scorer)}
    if original is not None:
        out["original_retain_accuracy"] = _retain_accuracy(original, context, scorer)
    return out


def make_relearn(
    *,
    steps: int = 40,
    lr: float | None = None,
    batch_size: int = 16,
    seed: int = 0,
    split: str = "relearn",
    texts: list[str] | None = None,
) -> ModelAttack:
    """A relearning attack: fine-tune on the attacker's slice, judge the *other* forget facts.

    Each outcome records the relearned model's retain accuracy (`_relearn_sanity`), and the
    power run on the original records the relearned original's.

    Args:
        steps: Optimizer steps (docs/methods.md: 10–100).
        lr: AdamW learning rate; None: `relearn_lr` of the model's parameter count.
        batch_size: Documents per step.
        seed: Seed of the batch sampling.
        split: The facts whose documents the attacker holds (default ``relearn``).
        texts: The attacker's documents instead (e.g. read from a user's text file).
    """
    digest = hashlib.sha256("\n".join(texts or []).encode()).hexdigest()[:12]
    key = f"relearn:{steps}:{lr or 'auto'}:{batch_size}:{seed}:{split}:{digest if texts else ''}"

    def derive(model: HFModel, context: ProbeContext) -> HFModel:
        docs = [("", t) for t in texts] if texts is not None else _relearn_documents(context, split)
        rate = lr if lr is not None else relearn_lr(model.model.num_parameters())
        return _finetune(model, docs, steps=steps, lr=rate, batch_size=batch_size, seed=seed)

    def withheld(fact: Fact, context: ProbeContext) -> str | None:
        if texts is None and fact.split == split:
            return "in the attacker's relearning slice"
        return None

    return ModelAttack("relearn", derive, key, withheld=withheld, evidence=_relearn_sanity)


relearn = make_relearn()
MODEL_ATTACKS = (quant4, quant4_fp4, quant8, relearn)
