"""Probes: one prompt that asks for a fact, with its answer, the options it competes with and the
control subjects that calibrate it; and the template library that verbalizes facts.

Templates are data (``unlearncheck/data/templates.json``); a user extends them with their own JSON
files (same shape, merged over the defaults) through `Templates.load`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from unlearncheck.facts import Fact

__all__ = [
    "ASSISTANT_OPENING",
    "CHAT_COMPLETION_REQUEST",
    "Probe",
    "TemplateError",
    "Templates",
    "completion_prefix",
    "dedupe",
    "question_of",
    "statement_of",
]


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


#: The prompt formats of a chat-format model (`Templates.for_format`), unless a templates file
#: sets ``chat_prompt_format`` / ``chat_cloze_format``: the chat template marks the turns, so a
#: probe is the question alone.
CHAT_FORMATS = {"prompt_format": "{question}", "cloze_format": "Fill in the blank: {cloze}"}

#: In a chat-format prompt, the text after this mark opens the assistant's turn (a prefill the
#: model continues; `unlearncheck.backends.hf.HFModel.render_prompt`): a question about a fact is
#: answered after the opening words of its statement ("The capital of France is"), where the
#: model puts the answer, rather than as the first word of a free reply, where a chat model
#: spends its probability on "The", "Sure" and the like.
ASSISTANT_OPENING = "\u241e"

#: What the user asks in a chat-format prompt whose answer completes a sentence; the sentence's
#: opening words open the assistant's turn.
CHAT_COMPLETION_REQUEST = "Complete the sentence."


#: The template files shipped in ``unlearncheck/data``, merged in this order: the organism's
#: relations and formats, then real-world relations (capital, language, location of a landmark)
#: and their chains.
SHIPPED_TEMPLATES = ("templates.json", "world_templates.json")


class TemplateError(ValueError):
    """A template file is malformed; the message names the file and the key."""


#: The placeholders each template may use, by where it is in the library: the prompt formats, a
#: relation's and a chain's templates (under ``relations.<name>`` and ``chains.<a>><b>``; those
#: in `_TEMPLATE_LISTS` are lists of templates) and the prefix templates.
_FORMAT_FIELDS = {
    "prompt_format": {"question"},
    "cloze_format": {"cloze"},
    "chat_prompt_format": {"question"},
    "chat_cloze_format": {"cloze"},
    "incontext_format": {"context", "prompt"},
}
_SECTION_FIELDS = {
    "relations": {
        "question": {"subject"},
        "questions": {"subject"},
        "statement": {"subject", "object"},
        "paraphrases": {"subject", "object"},
        "noun": {"subject"},
        "reverse": {"object"},
    },
    "chains": {
        "question": {"subject"},
        "questions": {"subject"},
        "statement": {"subject", "object"},
    },
}
_TEMPLATE_LISTS = frozenset({"questions", "paraphrases"})
_PREFIX_FIELDS = frozenset({"prompt", "subject", "initial", "options", "reverse"})


def _check_templates(data: Mapping[str, Any], path: str | Path) -> None:
    """Refuse templates that are not strings (lists of strings where lists are expected), that
    are malformed, or that use a placeholder the probes do not fill."""
    for key, fields in _FORMAT_FIELDS.items():
        _check_template(data.get(key), fields, path, key)
    for section, keys in _SECTION_FIELDS.items():
        for name, entry in _section(data, section, path).items():
            where = f"{section}.{name}"
            if not isinstance(entry, Mapping):
                raise TemplateError(f"{path}: {where}: must be an object, got {_kind(entry)}")
            for key, fields in keys.items():
                value = entry.get(key)
                if key not in _TEMPLATE_LISTS:
                    _check_template(value, fields, path, f"{where}.{key}")
                    continue
                if not isinstance(value, list | None):
                    raise TemplateError(
                        f"{path}: {where}.{key}: must be a list of templates, got {_kind(value)}"
                    )
                for i, template in enumerate(value or ()):
                    _check_template(template, fields, path, f"{where}.{key}[{i}]")
    for name, template in _section(data, "prefix", path).items():
        _check_template(template, _PREFIX_FIELDS, path, f"prefix.{name}")


def _section(data: Mapping[str, Any], name: str, path: str | Path) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise TemplateError(f"{path}: {name}: must be an object, got {_kind(value)}")
    return value


def _check_template(
    template: object, allowed: Collection[str], path: str | Path, where: str
) -> None:
    """Refuse a template (None: absent) that is no string, is malformed or has unknown fields."""
    if template is None:
        return
    if not isinstance(template, str):
        raise TemplateError(f"{path}: {where}: must be a string, got {_kind(template)}")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise TemplateError(f"{path}: {where}: malformed template {template!r}: {err}") from err
    for placeholder in fields:
        if re.split(r"[.\[]", placeholder, maxsplit=1)[0] not in allowed:
            names = ", ".join(f"{{{name}}}" for name in sorted(allowed))
            raise TemplateError(
                f"{path}: {where}: unknown placeholder {{{placeholder}}} in {template!r}; "
                f"allowed: {names}"
            )


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


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
    """The template library: prompt formats, per-relation forms, chain and prefix templates.

    Attributes:
        data: The templates, as the JSON files give them.
        chat: Whether the library asks a chat-format model (`for_format`): questions then carry
            their answer's opening words (`format_question`).
    """

    data: Mapping[str, Any]
    chat: bool = False

    @classmethod
    def load(cls, *paths: str | Path) -> Templates:
        """The shipped templates, with each JSON file in ``paths`` merged over them in order.

        Raises:
            TemplateError: A file is not UTF-8 JSON of an object, or one of its templates is
                not a string (a list of them, for ``questions`` and ``paraphrases``), is
                malformed or uses a placeholder the probes do not fill.
        """
        shipped = resources.files("unlearncheck").joinpath("data")
        data: dict[str, Any] = {}
        for name in SHIPPED_TEMPLATES:
            data = _merge(data, json.loads(shipped.joinpath(name).read_text("utf-8")))
        for path in paths:
            raw = Path(path).read_bytes()
            try:
                extra = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                line = raw.count(b"\n", 0, err.start) + 1
                raise TemplateError(f"{path}:{line}: not UTF-8: {err.reason}") from err
            except json.JSONDecodeError as err:
                raise TemplateError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err
            except (ValueError, RecursionError) as err:  # a huge number, a deep nesting
                raise TemplateError(f"{path}: invalid JSON: {err}") from err
            if not isinstance(extra, dict):
                raise TemplateError(f"{path}: the top level must be a JSON object")
            _check_templates(extra, path)
            data = _merge(data, extra)
        return cls(data)

    def for_format(self, prompt_format: str) -> Templates:
        """The library a model reading prompts in ``prompt_format`` is asked with: for ``chat``
        (the model's chat template wraps each prompt as a user turn), the question and cloze
        formats are ``chat_prompt_format`` and ``chat_cloze_format`` when the library has them,
        else `CHAT_FORMATS` (the question alone, no ``Answer:`` cue); otherwise the library
        itself."""
        if prompt_format != "chat":
            return self
        chat = {key: self.data.get(f"chat_{key}", value) for key, value in CHAT_FORMATS.items()}
        return Templates({**self.data, **chat}, chat=True)

    def format_question(self, question: str, opening: str | None = None) -> str:
        """A question wrapped in the prompt format (e.g. ``Question: … Answer:``); for a chat
        model, followed by the ``opening`` of the assistant's answer when one is given
        (`ASSISTANT_OPENING`)."""
        text = str(self.data["prompt_format"]).format(question=question)
        return f"{text}{ASSISTANT_OPENING}{opening}" if opening and self.chat else text

    def format_completion(self, prefix: str) -> str:
        """A sentence's opening words, for the model to complete: the words themselves, or for a
        chat model, the request to complete a sentence with the words opening its answer."""
        return f"{CHAT_COMPLETION_REQUEST}{ASSISTANT_OPENING}{prefix}" if self.chat else prefix

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
