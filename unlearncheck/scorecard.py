"""The benchmark scorecard: TOFU / MUSE metrics of a model next to a reference, one row a model.

Users compare unlearning methods by numbers from open-unlearning, TOFU and MUSE; the scorecard
computes them with `unlearncheck.metrics`, on a facts file's ``forget`` and ``retain`` splits:

- **forget quality** — KS-test p-value between the model's and the reference's truth ratios on
  the forget facts (TOFU; high means indistinguishable from the reference).
- **truth ratio** — mean of min(R, 1/R) on the forget facts (TOFU's forget-set statistic).
- **forget ROUGE-L** — recall of the greedy answer to each forget question.
- **privleak** — (AUC_model − AUC_reference) / AUC_reference × 100 (MUSE) for the LOSS and
  Min-K%++ attacks. MUSE needs a holdout of texts the model never saw from the same
  distribution; here each forget fact's statement with its answer replaced by a distractor (the
  same sentence, false) is the holdout of the true statement, so a model that never learnt the
  fact scores both alike. Near 0 is good; strongly negative means still memorized.
- **FADE** — 1 − F1 of the likelihood-ratio precision and recall of sampled answers to the forget
  questions (`unlearncheck.metrics.fade.fade`; 0 = indistinguishable from the reference).
- **model utility** — harmonic mean of retain answer probability, retain truth-ratio score
  (mean max(0, 1 − R)) and retain ROUGE-L recall (TOFU).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from unlearncheck import metrics
from unlearncheck.backends.hf import HFModel
from unlearncheck.equivalence import as_prompts
from unlearncheck.facts import Fact, FactSet
from unlearncheck.metrics.fade import fade
from unlearncheck.probes import Templates, question_of, statement_of

__all__ = [
    "ANSWER_TOKENS",
    "FADE_SAMPLES",
    "Scorecard",
    "format_scorecards",
    "is_scorecards_file",
    "scorecards",
    "write_scorecards",
]

#: Greedy answer length for ROUGE-L.
ANSWER_TOKENS = 8
#: Samples per forget question for FADE.
FADE_SAMPLES = 8


@dataclass(frozen=True)
class Scorecard:
    """One model's metrics (see the module docstring); ``reference`` names what it is against."""

    model: str
    reference: str
    forget_quality: float
    truth_ratio: float
    forget_rouge: float
    privleak_loss: float
    privleak_min_k_plus_plus: float
    fade: float
    model_utility: float


@dataclass(frozen=True)
class _Side:
    """What the scorecard needs of one model."""

    truth_ratios: np.ndarray
    forget_rouge: float
    mia_auc: dict[str, float]
    utility: float


def scorecards(models: Sequence[HFModel], reference: HFModel, facts: FactSet) -> list[Scorecard]:
    """A scorecard per model against ``reference`` on ``facts`` (``forget`` and ``retain``)."""
    templates = Templates.load()
    forget, retain = facts.split("forget"), facts.split("retain")
    if not forget or not retain:
        raise ValueError("the scorecard needs facts of both splits 'forget' and 'retain'")
    theirs = _side(reference, forget, retain, templates)
    questions = as_prompts(forget, templates)
    cards = []
    for model in models:
        ours = _side(model, forget, retain, templates)
        cards.append(
            Scorecard(
                model=model.spec,
                reference=reference.spec,
                forget_quality=metrics.forget_quality(ours.truth_ratios, theirs.truth_ratios),
                truth_ratio=metrics.truth_ratio_forget_score(ours.truth_ratios),
                forget_rouge=ours.forget_rouge,
                privleak_loss=metrics.privleak(ours.mia_auc["loss"], theirs.mia_auc["loss"]),
                privleak_min_k_plus_plus=metrics.privleak(
                    ours.mia_auc["min_k_plus_plus"], theirs.mia_auc["min_k_plus_plus"]
                ),
                fade=fade(model, reference, questions, n=FADE_SAMPLES).fade,
                model_utility=ours.utility,
            )
        )
    return cards


def _side(model: HFModel, forget: FactSet, retain: FactSet, templates: Templates) -> _Side:
    forget_ratios = metrics.truth_ratios(model, list(forget), templates=templates)
    retain_ratios = metrics.truth_ratios(model, list(retain), templates=templates)
    true_texts, false_texts = _statement_pairs(forget, templates)
    true_scores = metrics.mia_scores(model, true_texts)
    false_scores = metrics.mia_scores(model, false_texts)
    utility = metrics.model_utility(
        [
            _answer_probability(model, retain, templates),
            metrics.truth_ratio_retain_score(list(retain_ratios.values())),
            _rouge_recall(model, retain, templates),
        ]
    )
    return _Side(
        truth_ratios=np.array(list(forget_ratios.values())),
        forget_rouge=_rouge_recall(model, forget, templates),
        mia_auc=metrics.mia_auc(true_scores, false_scores),
        utility=utility,
    )


def _statement_pairs(facts: FactSet, templates: Templates) -> tuple[list[str], list[str]]:
    """Each fact's true statement and the same statement with its first distractor."""
    true_texts, false_texts = [], []
    for fact in facts:
        statement = statement_of(fact, templates)
        if statement is None or not fact.distractors or fact.object not in statement:
            continue
        true_texts.append(statement)
        false_texts.append(statement.replace(fact.object, fact.distractors[0]))
    if not true_texts:
        raise ValueError("no forget fact has a statement containing its answer and a distractor")
    return true_texts, false_texts


def _questions(facts: FactSet, templates: Templates) -> list[tuple[Fact, str]]:
    out = []
    for fact in facts:
        question = question_of(fact, templates)
        if question is not None:
            out.append((fact, templates.format_question(question)))
    return out


def _answer_probability(model: HFModel, facts: FactSet, templates: Templates) -> float:
    """Mean per-token probability of the answer after its question (TOFU's "probability")."""
    asked = _questions(facts, templates)
    scores = model.score_answers([(prompt, f" {fact.object}") for fact, prompt in asked])
    return float(np.mean([np.exp(s.mean_logprob) for s in scores]))


def _rouge_recall(model: HFModel, facts: FactSet, templates: Templates) -> float:
    """Mean ROUGE-L recall of the greedy answers (first line) against the true answers."""
    asked = _questions(facts, templates)
    outputs = model.generate([prompt for _, prompt in asked], max_new_tokens=ANSWER_TOKENS)
    recalls = [
        metrics.rouge_l(out[0].strip().split("\n")[0], fact.object).recall
        for (fact, _), out in zip(asked, outputs, strict=True)
    ]
    return float(np.mean(recalls))


def format_scorecards(cards: Sequence[Scorecard]) -> str:
    """Fixed-width table, one row a model."""
    columns = [
        ("forget quality", "forget_quality", "{:.2e}"),
        ("truth ratio", "truth_ratio", "{:.3f}"),
        ("forget ROUGE-L", "forget_rouge", "{:.3f}"),
        ("privleak LOSS", "privleak_loss", "{:+.1f}"),
        ("privleak MinK++", "privleak_min_k_plus_plus", "{:+.1f}"),
        ("FADE", "fade", "{:.3f}"),
        ("model utility", "model_utility", "{:.3f}"),
    ]
    width = max(len(c.model) for c in cards) + 2
    lines = ["model".ljust(width) + "".join(name.rjust(17) for name, _, _ in columns)]
    for card in cards:
        cells = "".join(fmt.format(getattr(card, key)).rjust(17) for _, key, fmt in columns)
        lines.append(card.model.ljust(width) + cells)
    return "\n".join(lines)


def is_scorecards_file(path: Path) -> bool:
    """Whether ``path`` holds scorecards as `write_scorecards` writes them (a JSON list of
    scorecard records): the only file ``unlearncheck metrics --json`` replaces."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    names = {f.name for f in fields(Scorecard)}
    return (
        isinstance(data, list)
        and bool(data)
        and all(isinstance(r, dict) and set(r) == names for r in data)
    )


def write_scorecards(cards: Sequence[Scorecard], path: Path) -> None:
    """The scorecards as a JSON list."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(c) for c in cards], indent=2))
