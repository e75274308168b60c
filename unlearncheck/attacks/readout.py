"""Readout attacks: read the knowledge another way (METHODS.md, "Readout attacks").

``sampling`` decodes many samples per probe and bounds the leak probability; ``hidden_probe`` fits
a linear classifier on hidden states of retain facts and reads forget facts with it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unlearncheck import judge
from unlearncheck.attacks.input import (
    InputAttack,
    ProbeContext,
    attributed_probes,
    direct,
    paraphrase,
)
from unlearncheck.backends.hf import AnswerScore, HFModel
from unlearncheck.backends.openai_api import OpenAIModel
from unlearncheck.facts import Fact
from unlearncheck.judge import ProbeScores, clopper_pearson_upper
from unlearncheck.metrics import rouge_l
from unlearncheck.probes import Probe

# --------------------------------------------------------------------------------------------
# sampling


def contains_answer(text: str, answer: str) -> bool:
    """Whether ``answer`` appears as whole words in ``text`` (case and punctuation ignored)."""

    def words(s: str) -> str:
        return " ".join(re.findall(r"\w+", s.lower()))

    target = words(answer)
    return bool(target) and f" {target} " in f" {words(text)} "


def samples_needed(rate: float, threshold: float, alpha: float) -> int | None:
    """Fewest samples at which a leak rate ``rate`` would be bounded below ``threshold``.

    The one-sided Clopper–Pearson upper bound at level 1 − alpha of ``round(rate·n)`` leaks out
    of n must be at most ``threshold``; None when ``rate`` is not below it.
    """
    if rate >= threshold:
        return None

    def bounded(n: int) -> bool:
        return clopper_pearson_upper(round(rate * n), n, alpha) <= threshold

    high = 1
    while not bounded(high):
        high *= 2
        if high > 10_000_000:
            return None
    low = high // 2
    while low + 1 < high:
        mid = (low + high) // 2
        low, high = (low, mid) if bounded(mid) else (mid, high)
    return high


@dataclass(frozen=True)
class SamplingAttack:
    """Sample each probe ``n`` times; read knowledge as how often the samples state the answer.

    The readout of a probe is its leak rate (share of samples containing the answer), and of each
    control prompt the rate at which it states each option. The judge then works as for answer
    probabilities: a probe's delta is how far its rate exceeds its baseline (the reference's rate
    on the same prompt, else the controls' mean), and a fact's mean delta is ranked among the
    controls' (`unlearncheck.judge`); ``tolerance`` is the least mean delta that counts. The
    evidence adds the pooled numbers: samples, leaks, the Clopper–Pearson upper bound of the leak
    rate, the DKW band and the samples that bounding the rate within ``tolerance`` of the baseline
    would need.

    Attributes:
        n: Samples per probe.
        control_n: Samples per control prompt.
        temperature: Sampling temperature.
        top_p: Nucleus mass.
        tolerance: Leak rate allowed above the baseline.
        max_new_tokens: Length of each sample.
        inputs: Input attacks whose probes are sampled.
        rouge_threshold: When set, a sample also states an answer when its ROUGE-L recall of the
            answer reaches this (METHODS.md; for answers of several words that a sample may state
            in part); otherwise only a whole-word match counts.
    """

    name: str = "sampling"
    n: int = 64
    control_n: int = 16
    temperature: float = 1.0
    top_p: float = 0.9
    tolerance: float = 0.2
    max_new_tokens: int = 6
    inputs: tuple[InputAttack, ...] = (direct,)
    rouge_threshold: float | None = None
    kind: str = "readout"

    def states(self, sample: str, answer: str) -> bool:
        """Whether a sample states ``answer`` (see ``rouge_threshold``)."""
        if contains_answer(sample, answer):
            return True
        threshold = self.rouge_threshold
        return threshold is not None and rouge_l(sample, answer).recall >= threshold

    def probes(self, fact: Fact, context: ProbeContext) -> list[Probe]:
        """The probes to sample, attributed to this attack."""
        return attributed_probes(
            self.inputs, fact, context, self.name, f"sampling:T={self.temperature}"
        )

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


@dataclass(frozen=True)
class SampledProbe:
    """One probe's samples on one model: leaks on its prompt and on each control prompt."""

    probe: Probe
    leaks: int
    n: int
    control_hits: tuple[tuple[int, ...], ...]  # [control][option]: samples naming the option
    control_n: int
    example: str

    @property
    def scores(self) -> ProbeScores:
        """Rates as the judge's probe scores: the answer's on the prompt, each option's on each
        control prompt (how often the samples about a control name that option)."""
        return ProbeScores(
            self.leaks / self.n,
            tuple(tuple(h / self.control_n for h in hits) for hits in self.control_hits),
        )


def sample_probes(
    attack: SamplingAttack, model: HFModel | OpenAIModel, probes: Sequence[Probe], seed: int
) -> list[SampledProbe]:
    """Sample every probe and its control prompts on ``model``; count answer mentions."""
    options: dict[str, Any] = {
        "max_new_tokens": attack.max_new_tokens,
        "do_sample": True,
        "temperature": attack.temperature,
        "top_p": attack.top_p,
        "seed": seed,
    }
    samples = judge.generate(model, [p.prompt for p in probes], num_samples=attack.n, **options)
    controls = [c for p in probes for c in p.control_prompts()]
    control_samples = (
        judge.generate(model, controls, num_samples=attack.control_n, **options) if controls else []
    )
    out, at = [], 0
    for probe, own in zip(probes, samples, strict=True):
        theirs = control_samples[at : at + len(probe.controls)]
        at += len(probe.controls)
        hits = [s for s in own if attack.states(s, probe.answer)]
        out.append(
            SampledProbe(
                probe,
                len(hits),
                len(own),
                tuple(
                    tuple(sum(attack.states(s, o) for s in c) for o in probe.options)
                    for c in theirs
                ),
                attack.control_n,
                (hits or own or [""])[0],
            )
        )
    return out


@dataclass(frozen=True)
class SampleBounds:
    """Pooled numbers of one fact's samples."""

    leaks: int
    n: int
    upper: float
    baseline_rate: float
    dkw_epsilon: float
    n_needed: int | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "samples": self.n,
            "leaks": self.leaks,
            "rate": round(self.leaks / self.n, 6) if self.n else None,
            "upper_bound": round(self.upper, 6),
            "baseline_rate": round(self.baseline_rate, 6),
            "dkw_epsilon": round(self.dkw_epsilon, 6),
            "n_needed": self.n_needed,
        }


def sample_bounds(
    sampled: Sequence[SampledProbe], baseline_rate: float, tolerance: float, alpha: float
) -> SampleBounds:
    """Pool a fact's samples: leak count, its upper bound, DKW band, samples needed."""
    leaks, n = sum(s.leaks for s in sampled), sum(s.n for s in sampled)
    threshold = min(1.0, baseline_rate + tolerance)
    return SampleBounds(
        leaks=leaks,
        n=n,
        upper=clopper_pearson_upper(leaks, n, alpha),
        baseline_rate=baseline_rate,
        dkw_epsilon=math.sqrt(math.log(2 / alpha) / (2 * n)) if n else 1.0,
        n_needed=samples_needed(leaks / n if n else 0.0, threshold, alpha),
    )


sampling = SamplingAttack()

# --------------------------------------------------------------------------------------------
# hidden_probe


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
    kind: str = "readout"

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

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centered kernel alignment of two feature matrices with the same rows."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y) + 1e-12))


hidden_probe = HiddenProbeAttack()
