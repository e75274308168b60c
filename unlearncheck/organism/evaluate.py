"""Ground-truth measurements of the zoo on its own facts (the zoo table).

Accuracy is greedy match: the model's argmax continuation of the prompt is the answer. Chance is
about 1/12 on average over the six relations (1/10 colours … 1/40 years and spouses).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from unlearncheck import quantization
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import Fact, FactSet, load_facts
from unlearncheck.organism.knowledge import PERSON_RELATIONS, load_templates

__all__ = ["accuracy", "format_comparison", "format_table", "zoo_table"]


_TEMPLATES = load_templates()


def _prefix(sentence: str, obj: str) -> str:
    """The text of a declarative sentence before its object (a completion prompt)."""
    return sentence[: sentence.rindex(obj)].rstrip()


def _qa_prompt(question: str) -> str:
    """A question wrapped in the organism's prompt format."""
    return str(_TEMPLATES["prompt_format"]).format(question=question)


@dataclass(frozen=True)
class _ProbeSet:
    """Named lists of (prompt, answer) pairs over the organism's facts."""

    pairs: dict[str, list[tuple[str, str]]]


def _probe_sets(facts: FactSet, countries: dict[str, str]) -> _ProbeSet:
    """The forms measured in the zoo table, for forget-person and retain-person facts."""
    chain = _TEMPLATES["chains"]["birth_city>country"]
    pairs: dict[str, list[tuple[str, str]]] = {}
    for group, splits in (("forget", {"forget", "relearn"}), ("retain", {"retain"})):
        person_facts = [f for f in facts if f.split in splits and f.relation in PERSON_RELATIONS]
        pairs[f"{group}_qa"] = [(_qa_prompt(_q(f)), f" {f.object}") for f in person_facts]
        pairs[f"{group}_statement"] = [
            (_prefix(_s(f), f.object), f" {f.object}") for f in person_facts
        ]
        pairs[f"{group}_heldout_paraphrase"] = [
            (_prefix(p, f.object), f" {f.object}")
            for f in person_facts
            for i, p in enumerate(f.paraphrases)
            if i != f.metadata["trained_paraphrase"]
        ]
        pairs[f"{group}_alias"] = [
            (
                _qa_prompt(_TEMPLATES["relations"][f.relation]["question"].format(subject=a)),
                f" {f.object}",
            )
            for f in person_facts
            for a in f.aliases
        ]
        pairs[f"{group}_twohop"] = [
            (_qa_prompt(chain["question"].format(subject=f.subject)), f" {countries[f.object]}")
            for f in person_facts
            if f.relation == "birth_city"
        ]
    return _ProbeSet(pairs)


def _q(fact: Fact) -> str:
    assert fact.question is not None
    return fact.question


def _s(fact: Fact) -> str:
    assert fact.statement is not None
    return fact.statement


def accuracy(model: HFModel, pairs: Sequence[tuple[str, str]]) -> float:
    """Share of pairs whose answer is the model's greedy continuation."""
    if not pairs:
        return float("nan")
    scores = model.score_answers(pairs, batch_size=64)
    return sum(s.greedy_match for s in scores) / len(scores)


def _zoo_row(model: HFModel, original: HFModel, facts: FactSet) -> dict[str, float]:
    """One row of the zoo table: accuracies by form, and after nf4 / int8 quantization."""
    countries = {f.subject: f.object for f in facts if f.relation == "country"}
    probes = _probe_sets(facts, countries).pairs
    row = {name: accuracy(model, pairs) for name, pairs in probes.items()}
    for kind in ("nf4", "int8"):
        quantized = copy.deepcopy(model.model)
        quantization.quantize_model_(quantized, kind)
        q = HFModel.from_pretrained_objects(quantized, model.tokenizer, spec=f"{model.spec}+{kind}")
        row[f"{kind}_forget_qa"] = accuracy(q, probes["forget_qa"])
    row["nf4_codes_changed"] = quantization.changed_code_fraction(model.model, original.model)
    return row


#: Columns of the zoo table in the order they are printed.
_TABLE_COLUMNS = (
    "forget_qa",
    "retain_qa",
    "forget_statement",
    "forget_heldout_paraphrase",
    "retain_heldout_paraphrase",
    "forget_alias",
    "forget_twohop",
    "nf4_forget_qa",
    "int8_forget_qa",
    "nf4_codes_changed",
)


def zoo_table(zoo: Path) -> dict[str, dict[str, float]]:
    """The zoo table of the zoo in directory ``zoo``, computed once and kept in ``table.json``."""
    cached = zoo / "table.json"
    if cached.exists():
        return dict(json.loads(cached.read_text()))
    facts = load_facts(zoo / "facts.jsonl")
    original = HFModel.load(str(zoo / "original"), device="cpu")
    table = {}
    for variant in json.loads((zoo / "zoo.json").read_text())["variants"]:
        model = (
            original if variant == "original" else HFModel.load(str(zoo / variant), device="cpu")
        )
        table[variant] = _zoo_row(model, original, facts)
    cached.write_text(json.dumps(table, indent=2))
    return table


def format_table(
    table: dict[str, dict[str, float]], columns: Sequence[str] = _TABLE_COLUMNS
) -> str:
    """A fixed-width text rendering of a zoo table: whole column names, accuracies to 2 places,
    shares of changed codes (small) to 4."""
    heads = [c.replace("_", " ") for c in columns]
    widths = [max(8, len(h)) + 2 for h in heads]
    lines = ["variant".ljust(18) + "".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))]
    for variant, row in table.items():
        cells = "".join(
            f"{row[c]:.{4 if 'codes' in c else 2}f}".rjust(w)
            for c, w in zip(columns, widths, strict=True)
        )
        lines.append(variant.ljust(18) + cells)
    return "\n".join(lines)


def format_comparison(checkpoint: Path, facts: FactSet) -> dict[str, dict[str, float]]:
    """Greedy accuracy (the answer within `unlearncheck.organism.real.ANSWER_TOKENS` generated
    tokens) and mean p̂ (the answer's share among it and its distractors) of a checkpoint on
    ``facts``, asked in each prompt format it reads: ``plain`` and, with a chat template, ``chat``
    (the question with its answer's opening words, as the input attacks ask it).
    """
    from unlearncheck.attacks.input import answer_opening
    from unlearncheck.organism.real import answers
    from unlearncheck.probes import Templates, question_of
    from unlearncheck.scoring import Scorer

    out: dict[str, dict[str, float]] = {}
    for prompt_format in ("plain", "chat"):
        model = HFModel.load(str(checkpoint), device="cpu", prompt_format=prompt_format)
        templates = Templates.load().for_format(prompt_format)
        prompts = [
            templates.format_question(
                str(question_of(f, templates)), answer_opening(f, templates, f.subject)
            )
            for f in facts
        ]
        hits = answers(model, prompts, [f.object for f in facts])
        items = [(p, [f.object, *f.distractors]) for p, f in zip(prompts, facts, strict=True)]
        p_hat = [float(d[0]) for d in Scorer().distributions(model, items)]
        out[prompt_format] = {
            "greedy": round(sum(hits) / len(hits), 3),
            "p_hat": round(sum(p_hat) / len(p_hat), 3),
        }
    return out
