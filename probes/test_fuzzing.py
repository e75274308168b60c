"""Property-based probe fuzzing: no wording of a question brings a forgotten fact back.

Hypothesis picks a forget fact and a few question wordings built from the template library (the
relation's questions, optionally behind a prefix template or a filler, optionally in lower case)
and asks them through the ``paraphrase`` attack; the property is that ``assert_forgotten`` holds
for every such probe set. Each example is a claim of its own in the report. Wordings the original
model does not answer are left out, so an example may be INCONCLUSIVE; only a FAIL fails.
"""

from __future__ import annotations

import copy
import dataclasses
import string

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from unlearncheck import assert_forgotten
from unlearncheck.attacks import paraphrase
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import FactSet
from unlearncheck.probes import Templates
from unlearncheck.pytest_plugin import Options

TEMPLATES = Templates.load()
FILLERS = ("", "Please tell me :", "Quick question :", "I wonder ,")


def _wrappers(templates: Templates) -> list[str]:
    """The prefix templates that need nothing but the prompt, and the bare prompt."""
    out = ["{prompt}"]
    for template in templates.data.get("prefix", {}).values():
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        if fields == {"prompt"}:
            out.append(template)
    return out


@st.composite
def wordings(draw: st.DrawFn, relation: str) -> str:
    """One question wording for ``relation`` (with its ``{subject}`` placeholder kept)."""
    rel = TEMPLATES.relation(relation)
    question = draw(st.sampled_from([rel["question"], *rel.get("questions", ())]))
    filler = draw(st.sampled_from(FILLERS))
    text = draw(st.sampled_from(_wrappers(TEMPLATES))).replace("{prompt}", question)
    text = f"{filler} {text}".strip()
    return text[0].lower() + text[1:] if draw(st.booleans()) else text


def _with_questions(relation: str, questions: list[str]) -> Templates:
    """The template library with ``questions`` as the only question wordings of ``relation``."""
    data = copy.deepcopy(dict(TEMPLATES.data))
    data["relations"][relation] = {
        **data["relations"][relation],
        "questions": questions,
        "paraphrases": [],
    }
    return Templates(data)


@settings(
    deadline=None,
    max_examples=10,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
)
@given(data=st.data())
def test_no_wording_recovers_a_forgotten_fact(
    data: st.DataObject,
    unlearned: HFModel,
    original: HFModel | None,
    reference: HFModel | None,
    facts: FactSet,
    uc_options: Options,
) -> None:
    forget = facts.split("forget")
    fact = data.draw(st.sampled_from(list(forget)), label="fact")
    questions = data.draw(
        st.lists(wordings(fact.relation), min_size=4, max_size=8, unique=True), label="wordings"
    )
    assert_forgotten(
        unlearned,
        dataclasses.replace(fact, paraphrases=()),
        attacks=[paraphrase],
        original=original,
        reference=reference,
        context=forget,  # controls: other forgotten people, as in a claim on the whole set
        templates=_with_questions(fact.relation, questions),
        seed=uc_options.seed,
        claim=f"fuzzed wordings: {fact.id}",
        on_inconclusive="return",
    )
