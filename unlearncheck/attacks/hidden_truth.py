"""The hidden-state truth probe attack: read knowledge with an answer-agnostic linear probe.

`hidden_probe` classifies the hidden state at a prompt's last token into the answer values it saw
in fitting, so it cannot score an answer that no fitting fact has (capitals, spouses: any unique
answers). This attack classifies statements instead: the hidden state at the last token of a
prompt followed by one of its options, true (the fact's object) or false (a distractor). Fitted
on retain facts, it scores any option, seen in fitting or not, and the claim's facts are judged
through it (docs/methods.md, "hidden_truth").

torch and the Hugging Face backend are imported on first use, not with this module: the package
imports it eagerly, as its submodule of the same name would shadow a lazily exported
``hidden_truth`` (see ``unlearncheck/attacks/__init__.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from unlearncheck.attacks.base import AttackResult, ClaimModels, ClaimScorer
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.attacks.input import InputAttack, attributed_probes, direct, paraphrase
from unlearncheck.backends.capabilities import Capability, ScoringModel
from unlearncheck.backends.scoring import AnswerScore
from unlearncheck.facts import Fact, FactSet
from unlearncheck.probes import Probe

if TYPE_CHECKING:
    import torch

    from unlearncheck.backends.hf import HFModel

__all__ = ["HiddenTruthAttack", "TruthProbeReadout", "hidden_truth", "statement_text"]

#: Fitted readouts by (attack settings, fitting set and seed, model content hash): fitted once a
#: process.
_READOUTS: dict[tuple[str, str, str], TruthProbeReadout] = {}
#: Texts per forward pass when reading hidden states.
_BATCH = 128


#: (statements, labels, subjects, probe index) of a fitting set (`HiddenTruthAttack.training_set`).
TrainingSet = tuple[list[str], list[float], list[str], list[int]]


def statement_text(prompt: str, option: str) -> str:
    """The prompt followed by the option, as scored: ``option`` keeps its leading space, or
    gets one."""
    return prompt + option if option[:1].isspace() else f"{prompt} {option}"


class TruthProbeReadout:
    """A model read through a true/false linear probe on its hidden states (a `ScoringModel`).

    ``score_answers`` gives, for each (prompt, option), log σ(w·z + b), z the standardized
    hidden state on the probe's layer at the last token of the prompt followed by the option:
    the probe's log-probability that the statement is true.
    """

    def __init__(
        self,
        model: HFModel,
        layer: int,
        weight: torch.Tensor,
        bias: float,
        mean: torch.Tensor,
        std: torch.Tensor,
        fit_report: dict[str, Any],
    ) -> None:
        self.model = model
        self.layer = layer
        self.weight, self.bias, self.mean, self.std = weight, bias, mean, std
        self.fit_report = fit_report
        self.spec = f"{model.spec}|hidden_truth@{layer}"
        digest = hashlib.sha256(f"hidden_truth|{model.content_hash}|{layer}|{bias!r}".encode())
        digest.update(weight.numpy().tobytes())
        self.content_hash = digest.hexdigest()

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """The probe's logit that each text is a true statement: [n_texts]."""
        import torch

        states = self.model.hidden_states(list(texts), layers=[self.layer], batch_size=_BATCH)
        x = (torch.from_numpy(states[:, 0]) - self.mean) / self.std
        return x @ self.weight + self.bias

    def score_answers(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int = 64
    ) -> list[AnswerScore]:
        """log σ(probe logit) of each prompt followed by its option."""
        import torch

        texts = [statement_text(p, o) for p, o in requests]
        unique = sorted(set(texts), key=lambda t: (len(t), t))  # batches of like lengths
        values = torch.nn.functional.logsigmoid(self.logits(unique)).tolist()
        by_text = dict(zip(unique, values, strict=True))
        return [AnswerScore(by_text[t], 1, False) for t in texts]  # one statement: one "token"


def _fit_logistic(
    x: torch.Tensor, y: torch.Tensor, *, steps: int, l2: float, seed: int
) -> tuple[torch.Tensor, float]:
    """Logistic regression by full-batch Adam: (weight [d], bias).

    True and false statements are weighted as they come (one true to a probe's distractors), so
    the logits of false statements sit low, where log σ is near linear: p̂ over a probe's options
    is then near a softmax of their logits, not flattened by σ's ceiling.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(x.shape[1], generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y)
        loss = loss + l2 * weight.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return weight.detach(), float(bias.detach())


def _heldout_scores(
    logits: torch.Tensor, y: torch.Tensor, groups: torch.Tensor
) -> tuple[float, float]:
    """(AUC of true vs false statements, share of probes whose answer has the top logit)."""
    truth = y > 0.5
    true, false = logits[truth], logits[~truth]
    auc = float((true[:, None] > false[None, :]).float().mean())
    top = []
    for group in groups.unique():  # one probe's options
        rows = groups == group
        top.append(bool(truth[rows][logits[rows].argmax()]))
    return auc, sum(top) / len(top)


@dataclass(frozen=True)
class HiddenTruthAttack:
    """Fit a true/false probe on retain statements' hidden states; read the claim's facts with it.

    Each fitting probe gives one statement per option: its prompt followed by the option, true for
    the answer and false for each distractor. The probe is fitted on each candidate layer with
    the retain subjects split 80/20; the layer whose held-out probes most often rank their answer
    first is refitted on all of them and used as the readout. The same is done on the reference
    and the original, each with its own probe.

    Attributes:
        layers: Hidden-state indices to try (None: every block output, not the embeddings).
        inputs: Input attacks giving the prompts (for fitting and for reading).
        split: The facts the probe is fitted on.
        max_prompts: Cap on fitting prompts (sampled with the seed), each giving one statement
            per option.
        steps: Optimizer steps of each fit.
        l2: Weight penalty.
    """

    name: str = "hidden_truth"
    layers: tuple[int, ...] | None = None
    inputs: tuple[InputAttack, ...] = (direct, paraphrase)
    split: str = "retain"
    max_prompts: int = 2000
    steps: int = 300
    l2: float = 1e-3
    needs: frozenset[Capability] = frozenset({"scores", "weights", "hidden_states"})

    @property
    def key(self) -> str:
        """Settings that determine the fitted probe."""
        return f"hidden_truth:{self.layers}:{self.split}:{self.max_prompts}:{self.steps}:{self.l2}"

    def probes(self, fact: Fact, context: ProbeContext) -> list[Probe]:
        """The probes read through the classifier, attributed to this attack."""
        return attributed_probes(self.inputs, fact, context, self.name, "hidden_truth")

    def training_set(self, context: ProbeContext) -> TrainingSet:
        """(statements, labels, subjects, probe index) of the fitting facts' probes: each probe's
        prompt followed by each of its options, labelled 1.0 for the answer, 0.0 otherwise."""
        probes = [
            (probe, fact.subject)
            for fact in context.facts.split(self.split)
            for attack in self.inputs
            for probe in attack(fact, context)
        ]
        if len(probes) > self.max_prompts:
            rng = np.random.default_rng(context.seed)
            keep = sorted(rng.choice(len(probes), self.max_prompts, replace=False))
            probes = [probes[i] for i in keep]
        if not probes:
            raise ValueError(f"hidden_truth needs facts of split {self.split!r} to fit on")
        rows = [
            (statement_text(probe.prompt, f" {option}"), float(k == 0), subject, i)
            for i, (probe, subject) in enumerate(probes)
            for k, option in enumerate(probe.options)
        ]
        texts, labels, subjects, groups = (list(c) for c in zip(*rows, strict=True))
        return texts, labels, subjects, groups

    def fit(
        self, model: HFModel, context: ProbeContext, training: TrainingSet | None = None
    ) -> TruthProbeReadout:
        """The readout of ``model``: a true/false probe on its best layer (fitted on
        ``training``, else on `training_set`)."""
        import torch

        texts, labels, subjects, groups = training or self.training_set(context)
        y, group = torch.tensor(labels), torch.tensor(groups)
        n_layers = int(model.model.config.num_hidden_layers)
        layers = list(self.layers) if self.layers is not None else list(range(1, n_layers + 1))
        states = torch.from_numpy(model.hidden_states(texts, layers=layers, batch_size=_BATCH))
        people = sorted(set(subjects))
        held = set(np.random.default_rng(context.seed).permutation(people)[: len(people) // 5])
        test = torch.tensor([s in held for s in subjects])
        auc: dict[int, float] = {}
        ranking: dict[int, float] = {}
        for i, layer in enumerate(layers):
            x = states[:, i]
            mean, std = x[~test].mean(0), x[~test].std(0) + 1e-6
            w, b = _fit_logistic(
                (x[~test] - mean) / std, y[~test], steps=self.steps, l2=self.l2, seed=context.seed
            )
            logits = ((x[test] - mean) / std) @ w + b
            auc[layer], ranking[layer] = _heldout_scores(logits, y[test], group[test])
        best = max(layers, key=lambda layer: ranking[layer])
        x = states[:, layers.index(best)]
        mean, std = x.mean(0), x.std(0) + 1e-6
        w, b = _fit_logistic((x - mean) / std, y, steps=self.steps, l2=self.l2, seed=context.seed)
        report = {
            "layer": best,
            "heldout_auc": {k: round(v, 4) for k, v in auc.items()},
            "heldout_answer_first": {k: round(v, 4) for k, v in ranking.items()},
            "fit_prompts": int(group.max()) + 1,
            "fit_statements": len(texts),
        }
        return TruthProbeReadout(model, best, w, b, mean, std, report)

    def readout(
        self, model: ScoringModel | None, context: ProbeContext, role: str
    ) -> TruthProbeReadout | None:
        """The fitted readout of ``model`` (fitted once per model and settings; None: no model)."""
        from unlearncheck.attacks.model import with_weights

        hf = with_weights(model, role, self.name)
        if hf is None:
            return None
        training = self.training_set(context)
        fitting = json.dumps([context.seed, training[0], training[1]]).encode()
        key = (self.key, hashlib.sha256(fitting).hexdigest(), hf.content_hash)
        if key not in _READOUTS:
            _READOUTS[key] = self.fit(hf, context, training)
        return _READOUTS[key]

    def run(
        self, facts: FactSet, context: ProbeContext, models: ClaimModels, scorer: ClaimScorer
    ) -> AttackResult:
        """Read the claim's probes through true/false probes fitted on each model's hidden states.

        Each outcome adds every model's fit report (``model_probe``, ``reference_probe``,
        ``original_probe``).
        """
        model = self.readout(models.model, context, "model")
        if model is None:
            raise ValueError("hidden_truth needs the model under test")
        reference = self.readout(models.reference, context, "reference")
        original = self.readout(models.original, context, "original")
        probes = {f.id: self.probes(f, context) for f in context.claim}
        result = scorer.judge(self.name, probes, ClaimModels(model, reference, original))
        roles = {"model": model, "reference": reference, "original": original}
        shared = {f"{role}_probe": r.fit_report for role, r in roles.items() if r is not None}
        for outcome in result.outcomes.values():
            outcome.extra.update(shared)
        return AttackResult(result.outcomes, shown_by=None)

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


hidden_truth = HiddenTruthAttack()
