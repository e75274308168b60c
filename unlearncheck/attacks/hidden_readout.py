"""The hidden-state probe attack: read knowledge from hidden states with a linear classifier.

Unlearning that only changes the output layer leaves the answer readable in the hidden states. The
attack fits a linear probe over answer values on retain facts' hidden states, reads the claim's
facts with it, and reports linear CKA between the model's and the original's features
(docs/methods.md, "hidden_probe").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unlearncheck.attacks.base import AttackResult, ClaimModels, ClaimScorer
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.attacks.input import (
    InputAttack,
    attributed_probes,
    direct,
    paraphrase,
)
from unlearncheck.attacks.model import with_weights
from unlearncheck.backends.capabilities import Capability, ScoringModel
from unlearncheck.backends.hf import HFModel
from unlearncheck.backends.scoring import AnswerScore
from unlearncheck.facts import Fact, FactSet
from unlearncheck.probes import Probe

__all__ = ["HiddenProbeAttack", "LinearProbeReadout", "hidden_probe", "linear_cka"]

#: Fitted readouts by (attack settings with a digest of the fitting set, model content hash):
#: fitted once a process for each context.
_READOUTS: dict[tuple[str, str], LinearProbeReadout] = {}


class LinearProbeReadout:
    """A model read through a linear classifier on its hidden states (a `ScoringModel`).

    ``score_answers`` gives, for each (prompt, option), the classifier's log-probability of the
    option from the hidden state at the prompt's last token; options it never saw get −inf.
    """

    def __init__(
        self,
        model: HFModel,
        layer: int,
        classes: list[str],
        weight: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        fit_report: dict[str, Any],
    ) -> None:
        self.model = model
        self.layer = layer
        self.classes = {c: i for i, c in enumerate(classes)}
        self.weight, self.bias, self.mean, self.std = weight, bias, mean, std
        self.fit_report = fit_report
        self.spec = f"{model.spec}|hidden_probe@{layer}"
        digest = hashlib.sha256(
            f"{model.content_hash}|{layer}|{weight.sum().item():.9g}".encode()
        ).hexdigest()
        self.content_hash = digest

    def log_probs(self, prompts: Sequence[str]) -> torch.Tensor:
        """Classifier log-probabilities over the classes: [n_prompts, n_classes]."""
        states = self.model.hidden_states(list(prompts), layers=[self.layer])[:, 0]
        x = (torch.from_numpy(states) - self.mean) / self.std
        return torch.log_softmax(x @ self.weight + self.bias, dim=-1)

    def score_answers(
        self, requests: Sequence[tuple[str, str]], *, batch_size: int = 64
    ) -> list[AnswerScore]:
        """Log-probability of each option's class given the prompt."""
        prompts = sorted({p for p, _ in requests})
        rows = dict(zip(prompts, self.log_probs(prompts), strict=True))
        out = []
        for prompt, option in requests:
            index = self.classes.get(option.strip())
            value = float(rows[prompt][index]) if index is not None else -1e9
            out.append(AnswerScore(value, 1, False))  # one class: one "token"
        return out


def _fit_softmax(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, *, steps: int, l2: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch Adam: (weight [d, C], bias [C])."""
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(x.shape[1], n_classes, generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return weight.detach(), bias.detach()


@dataclass(frozen=True)
class HiddenProbeAttack:
    """Fit a linear probe on retain facts' hidden states; read the claim's facts with it.

    The probe is fitted on each candidate layer with the retain subjects split 80/20; the layer
    with the best held-out accuracy is refitted on all of them and used as the readout. The same
    is done on the reference and the original, each with its own probe.

    Attributes:
        layers: Hidden-state indices to try (None: every block output, not the embeddings).
        inputs: Input attacks giving the prompts (for fitting and for reading).
        split: The facts the probe is fitted on.
        max_prompts: Cap on fitting prompts (sampled with the seed).
        steps: Optimizer steps of each fit.
        l2: Weight penalty.
    """

    name: str = "hidden_probe"
    layers: tuple[int, ...] | None = None
    inputs: tuple[InputAttack, ...] = (direct, paraphrase)
    split: str = "retain"
    max_prompts: int = 4000
    steps: int = 300
    l2: float = 1e-3
    needs: frozenset[Capability] = frozenset({"scores", "weights", "hidden_states"})

    @property
    def key(self) -> str:
        """Settings that determine the fitted probe."""
        return f"hidden_probe:{self.layers}:{self.split}:{self.max_prompts}:{self.steps}:{self.l2}"

    def probes(self, fact: Fact, context: ProbeContext) -> list[Probe]:
        """The probes read through the classifier, attributed to this attack."""
        return attributed_probes(self.inputs, fact, context, self.name, "hidden_probe")

    def training_set(self, context: ProbeContext) -> tuple[list[str], list[str], list[str]]:
        """(prompts, answers, subjects) of the fitting facts' probes."""
        rows = [
            (probe.prompt, fact.object, fact.subject)
            for fact in context.facts.split(self.split)
            for attack in self.inputs
            for probe in attack(fact, context)
        ]
        if len(rows) > self.max_prompts:
            rng = np.random.default_rng(context.seed)
            keep = sorted(rng.choice(len(rows), self.max_prompts, replace=False))
            rows = [rows[i] for i in keep]
        if not rows:
            raise ValueError(f"hidden_probe needs facts of split {self.split!r} to fit on")
        prompts, answers, subjects = (list(c) for c in zip(*rows, strict=True))
        return prompts, answers, subjects

    def fit(self, model: HFModel, context: ProbeContext) -> LinearProbeReadout:
        """The readout of ``model``: a probe on its best layer."""
        prompts, answers, subjects = self.training_set(context)
        classes = sorted(set(answers))
        y = torch.tensor([classes.index(a) for a in answers])
        n_layers = int(model.model.config.num_hidden_layers)
        layers = list(self.layers) if self.layers is not None else list(range(1, n_layers + 1))
        states = torch.from_numpy(model.hidden_states(prompts, layers=layers))
        people = sorted(set(subjects))
        held = set(np.random.default_rng(context.seed).permutation(people)[: len(people) // 5])
        test = torch.tensor([s in held for s in subjects])
        accuracy: dict[int, float] = {}
        for i, layer in enumerate(layers):
            x = states[:, i]
            mean, std = x[~test].mean(0), x[~test].std(0) + 1e-6
            w, b = _fit_softmax(
                (x[~test] - mean) / std,
                y[~test],
                len(classes),
                steps=self.steps,
                l2=self.l2,
                seed=context.seed,
            )
            predicted = (((x[test] - mean) / std) @ w + b).argmax(-1)
            accuracy[layer] = float((predicted == y[test]).float().mean())
        best = max(layers, key=lambda layer: accuracy[layer])
        x = states[:, layers.index(best)]
        mean, std = x.mean(0), x.std(0) + 1e-6
        w, b = _fit_softmax(
            (x - mean) / std, y, len(classes), steps=self.steps, l2=self.l2, seed=context.seed
        )
        report = {"layer": best, "heldout_accuracy": accuracy, "fit_prompts": len(prompts)}
        return LinearProbeReadout(model, best, classes, w, b, mean, std, report)

    def readout(
        self, model: ScoringModel | None, context: ProbeContext, role: str
    ) -> LinearProbeReadout | None:
        """The fitted readout of ``model`` (fitted once per model, settings and fitting set; None:
        no model)."""
        hf = with_weights(model, role, self.name)
        if hf is None:
            return None
        prompts, answers, _ = self.training_set(context)
        fitting = hashlib.sha256("\n".join([*prompts, *answers]).encode()).hexdigest()[:16]
        key = (f"{self.key}:{fitting}:{context.seed}", hf.content_hash)
        if key not in _READOUTS:
            _READOUTS[key] = self.fit(hf, context)
        return _READOUTS[key]

    def run(
        self, facts: FactSet, context: ProbeContext, models: ClaimModels, scorer: ClaimScorer
    ) -> AttackResult:
        """Read the claim's probes through linear probes fitted on each model's hidden states.

        Each outcome adds every model's fit report and the linear CKA per layer of the model and
        of the reference with the original.
        """
        readouts = ClaimModels(
            self.readout(models.model, context, "model"),  # type: ignore[arg-type]
            self.readout(models.reference, context, "reference"),
            self.readout(models.original, context, "original"),
        )
        probes = {f.id: self.probes(f, context) for f in context.claim}
        result = scorer.judge(self.name, probes, readouts)
        shared: dict[str, Any] = {
            f"{role}_probe": readout.fit_report  # type: ignore[attr-defined]
            for role, readout in readouts.given()
        }
        shared.update(_cka(models, [p.prompt for ps in probes.values() for p in ps], self.name))
        for outcome in result.outcomes.values():
            outcome.extra.update(shared)
        return AttackResult(result.outcomes, shown_by=None)

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


def _cka(models: ClaimModels, prompts: list[str], attack: str) -> dict[str, Any]:
    """Linear CKA per layer of the model and of the reference with the original, on ``prompts``."""
    model = with_weights(models.model, "model", attack)
    reference = with_weights(models.reference, "reference", attack)
    original = with_weights(models.original, "original", attack)
    if model is None or original is None or not prompts:
        return {}
    theirs = original.hidden_states(prompts)
    out: dict[str, Any] = {}
    for role, m in (("model", model), ("reference", reference)):
        if m is not None:
            ours = m.hidden_states(prompts)
            out[f"cka_{role}_vs_original"] = [
                round(linear_cka(ours[:, i], theirs[:, i]), 4) for i in range(ours.shape[1])
            ]
    return out


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centered kernel alignment of two feature matrices with the same rows."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y) + 1e-12))


hidden_probe = HiddenProbeAttack()
