"""Probes: one prompt that asks for a fact, with its answer, the options it competes with and the
control subjects that calibrate it; and the template library that verbalizes facts.

Templates are data (``unlearncheck/data/templates.json``); a user extends them with their own JSON
files (same shape, merged over the defaults) through `Templates.load`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from unlearncheck.facts import Fact


@dataclass(frozen=True)
class Probe:
    """One prompt asking for ``answer``, to be scored against ``distractors``.

    Attributes:
        fact_id: The fact the probe asks about (the forgotten fact it targets).
        attack: The attack that produced it (``direct`` for the base forms).
        form: Which form or template, e.g. ``question``, ``statement``, ``questions[2]``.
        prompt: The text given to the model.
        answer: The expected continuation (without leading space).
        distractors: Wrong answers of the same kind; chance is 1 / (len + 1).
        anchor: The entity string in ``prompt`` that controls are swapped in for.
        controls: Entities of the same kind swapped in for the anchor: what the model says about
            them is the chance level the probe is judged against.
        control_answers: Each control's own answers to the prompt, where the facts know them (an
            option that is a control's own answer says nothing about chance on that control).
        lineage: How the probe was made, from the fact to this prompt.
    """

    fact_id: str
    attack: str
    form: str
    prompt: str
    answer: str
    distractors: tuple[str, ...]
    anchor: str
    controls: tuple[str, ...]
    control_answers: tuple[tuple[str, ...], ...] = field(default=())
    lineage: tuple[str, ...] = field(default=())

    @property
    def options(self) -> tuple[str, ...]:
        """The answer followed by the distractors."""
        return (self.answer, *self.distractors)

    def control_prompts(self) -> list[str]:
        """The prompt with the anchor replaced by each control entity."""
        return [self.prompt.replace(self.anchor, c) for c in self.controls]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the probe."""
        return {
            "fact_id": self.fact_id,
            "attack": self.attack,
            "form": self.form,
            "prompt": self.prompt,
            "answer": self.answer,
            "distractors": list(self.distractors),
            "anchor": self.anchor,
            "controls": list(self.controls),
            "control_answers": [list(a) for a in self.control_answers],
            "lineage": list(self.lineage),
        }


class TemplateError(ValueError):
    """A template file is malformed; the message names the file and the key."""


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class Templates:
    """The template library: prompt formats, per-relation forms, chain and prefix templates."""

    data: Mapping[str, Any]

    @classmethod
    def load(cls, *paths: str | Path) -> Templates:
        """The shipped templates, with each JSON file in ``paths`` merged over them in order."""
        text = resources.files("unlearncheck").joinpath("data/templates.json").read_text("utf-8")
        data: dict[str, Any] = json.loads(text)
        for path in paths:
            try:
                extra = json.loads(Path(path).read_text("utf-8"))
            except json.JSONDecodeError as err:
                raise TemplateError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
            if not isinstance(extra, dict):
                raise TemplateError(f"{path}: the top level must be a JSON object")
            data = _merge(data, extra)
        return cls(data)

    def format_question(self, question: str) -> str:
        """A question wrapped in the prompt format (e.g. ``Question: … Answer:``)."""
        return str(self.data["prompt_format"]).format(question=question)

    def relation(self, relation: str) -> Mapping[str, Any]:
        """The templates of ``relation`` (empty when the library has none)."""
        value = self.data.get("relations", {}).get(relation, {})
        return value if isinstance(value, Mapping) else {}

    def chain(self, first: str, second: str) -> Mapping[str, Any]:
        """Templates of the two-hop chain ``first`` then ``second`` (empty when none)."""
        value = self.data.get("chains", {}).get(f"{first}>{second}", {})
        return value if isinstance(value, Mapping) else {}

    def noun(self, relation: str, subject: str) -> str | None:
        """A noun phrase for "the <relation> of <subject>", when the library has one."""
        noun = self.relation(relation).get("noun")
        return str(noun).format(subject=subject) if noun else None


def completion_prefix(sentence: str, answer: str) -> str | None:
    """The text of ``sentence`` before the last occurrence of ``answer`` (None if absent/first)."""
    at = sentence.rfind(answer)
    if at <= 0:
        return None
    return sentence[:at].rstrip()


def question_of(fact: Fact, templates: Templates) -> str | None:
    """The fact's own question, else its relation's template question."""
    if fact.question:
        return fact.question
    template = templates.relation(fact.relation).get("question")
    return str(template).format(subject=fact.subject) if template else None


def statement_of(fact: Fact, templates: Templates) -> str | None:
    """The fact's own statement, else its relation's template statement."""
    if fact.statement:
        return fact.statement
    template = templates.relation(fact.relation).get("statement")
    return str(template).format(subject=fact.subject, object=fact.object) if template else None


def dedupe(probes: Sequence[Probe]) -> list[Probe]:
    """Probes with distinct prompts (first kept)."""
    seen: set[str] = set()
    out = []
    for probe in probes:
        if probe.prompt not in seen:
            seen.add(probe.prompt)
            out.append(probe)
    return out
