"""Hypothesis strategies for unlearning claims: facts, question wordings, attack chains.

A property over these says "no X brings the forgotten fact back": hypothesis draws the X, the
claim judges it, and `leak_score` fed to ``hypothesis.target`` steers the search towards wordings
that come closest to a leak::

    @given(asked=facts(forget).flatmap(wordings_for))
    def test_no_wording_leaks(asked, unlearned, original):
        verdict = assert_forgotten(unlearned, asked.fact, attacks=[paraphrase],
                                   templates=asked.templates(), original=original,
                                   alpha=example_alpha(), raise_on_fail=False)
        target(leak_score(verdict))
        assert verdict.status != "FAIL", verdict.explain()

Arguments are checked when a value is drawn, as hypothesis's own strategies do: a bad argument
fails the first example with `hypothesis.errors.InvalidArgument` naming it.

Profiles (`unlearncheck.hypothesis_profiles`, registered when the pytest plugin loads):
`CI_PROFILE` (derandomized, no deadline, no example database, 10 examples, no shrinking: the
same examples every run) and `FUZZ_PROFILE` (a random search of 200 examples that shrinks what it
finds); choose one with ``--hypothesis-profile``. `example_alpha` divides alpha by the running
profile's examples.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from unlearncheck.attacks.input import INPUT_ATTACKS, InputAttack
from unlearncheck.facts import Fact, FactSet
from unlearncheck.hypothesis_profiles import CI_PROFILE, FUZZ_PROFILE, example_alpha
from unlearncheck.probes import Templates
from unlearncheck.verdict import Verdict

__all__ = [
    "CI_PROFILE",
    "FUZZ_PROFILE",
    "Wordings",
    "attack_chains",
    "example_alpha",
    "facts",
    "leak_score",
    "wordings_for",
]


#: Words put before a question, as people type them.
_FILLERS = ("", "Please tell me :", "Quick question :", "I wonder ,", "Be honest :")


def facts(
    source: FactSet, *, split: str | None = None, relations: Sequence[str] | None = None
) -> st.SearchStrategy[Fact]:
    """A fact of ``source``, of ``split`` and of one of ``relations`` when given."""

    @st.composite
    def draw(data: st.DrawFn) -> Fact:
        chosen = [
            f
            for f in source
            if (split is None or f.split == split)
            and (relations is None or f.relation in relations)
        ]
        if not chosen:
            raise InvalidArgument(
                f"facts(): no fact with split={split!r} and relations={relations!r} among the "
                f"{len(source)} facts given"
            )
        return data(st.sampled_from(chosen))

    return draw()


@dataclass(frozen=True)
class Wordings:
    """Question wordings drawn for one fact, asked through the ``paraphrase`` attack.

    Attributes:
        fact: The fact, without paraphrases of its own (only the drawn wordings are asked).
        questions: The wordings, each with the ``{subject}`` placeholder.
        base: The template library the wordings were drawn from.
    """

    fact: Fact
    questions: tuple[str, ...]
    base: Templates

    def templates(self) -> Templates:
        """The library with the drawn wordings as the only questions of the fact's relation."""
        data = copy.deepcopy(dict(self.base.data))
        relation = data.setdefault("relations", {}).setdefault(self.fact.relation, {})
        relation.update(questions=list(self.questions), paraphrases=[])
        return Templates(data, chat=self.base.chat)


def wordings_for(
    fact: Fact,
    *,
    templates: Templates | None = None,
    min_size: int = 2,
    max_size: int = 6,
) -> st.SearchStrategy[Wordings]:
    """Wordings of ``fact``'s question: the relation's question templates, each behind a filler
    and a prefix template that needs only the prompt, in lower case or not."""

    @st.composite
    def draw(data: st.DrawFn) -> Wordings:
        library = templates if templates is not None else Templates.load()
        relation = library.relation(fact.relation)
        questions = [q for q in (relation.get("question"), *relation.get("questions", ())) if q]
        if not questions:
            raise InvalidArgument(
                f"wordings_for(): relation {fact.relation!r} of fact {fact.id!r} has no question "
                "template"
            )
        if not 1 <= min_size <= max_size:
            raise InvalidArgument(
                f"wordings_for(): need 1 <= min_size <= max_size, got {min_size}, {max_size}"
            )
        wrappers = _prompt_only_prefixes(library)

        @st.composite
        def one(inner: st.DrawFn) -> str:
            text = inner(st.sampled_from(wrappers)).replace(
                "{prompt}", inner(st.sampled_from(questions))
            )
            text = f"{inner(st.sampled_from(_FILLERS))} {text}".strip()
            return text[0].lower() + text[1:] if inner(st.booleans()) else text

        drawn = data(st.lists(one(), min_size=min_size, max_size=max_size, unique=True))
        return Wordings(replace(fact, paraphrases=()), tuple(drawn), library)

    return draw()


def _prompt_only_prefixes(templates: Templates) -> list[str]:
    """The bare prompt and every prefix template that needs nothing but the prompt."""
    out = ["{prompt}"]
    for template in templates.data.get("prefix", {}).values():
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        if fields == {"prompt"}:
            out.append(template)
    return out


def attack_chains(
    models: Sequence[object] | None = None,
    inputs: Sequence[InputAttack] = INPUT_ATTACKS,
) -> st.SearchStrategy[object]:
    """An attack: one input attack, or a model attack followed by one to three input attacks
    (``quant4.then(paraphrase, alias)``); ``models`` defaults to every model attack."""

    @st.composite
    def draw(data: st.DrawFn) -> object:
        from unlearncheck.attacks.model import MODEL_ATTACKS, ModelAttack

        chosen = list(MODEL_ATTACKS if models is None else models)
        valid = [m for m in chosen if isinstance(m, ModelAttack)]
        if len(valid) < len(chosen) or not inputs:
            raise InvalidArgument(
                f"attack_chains(): models must be model attacks (got {chosen!r}) and inputs "
                "must not be empty"
            )
        then = data(st.lists(st.sampled_from(list(inputs)), min_size=1, max_size=3, unique=True))
        if not valid or data(st.booleans()):
            return then[0]
        model = data(st.sampled_from(valid))
        return model.then(*then)

    return draw()


def leak_score(verdict: Verdict) -> float:
    """How close a verdict came to a leak: the largest mean delta of any (fact, attack) judged,
    to maximize with ``hypothesis.target`` (0 when nothing was judged)."""
    effects = [o.effect for f in verdict.facts for o in f.attacks if o.effect is not None]
    return max(effects, default=0.0)
