"""Alias probes name the subject once, also when the alias contains the subject's name."""

from __future__ import annotations

from unlearncheck.attacks import ProbeContext, alias
from unlearncheck.facts import Fact, FactSet
from unlearncheck.probes import Templates


def _context(*facts: Fact) -> ProbeContext:
    known = FactSet(list(facts))
    return ProbeContext(known, known, Templates.load())


def test_an_alias_containing_the_name_is_not_substituted_twice() -> None:
    fact = Fact(
        id="varo-melin/birth_city",
        subject="Varo Melin",
        relation="birth_city",
        object="Ivesham",
        aliases=("the poet Varo Melin",),
        distractors=("Doveport", "Lisbrook", "Corvo", "Ostwick"),
    )
    prompts = [p.prompt for p in alias(fact, _context(fact))]
    assert prompts
    assert all(p.count("Varo Melin") == 1 and p.count("the poet") == 1 for p in prompts), prompts
    assert any("the poet Varo Melin" in p and "?" in p for p in prompts)


def test_a_fact_with_only_its_own_question_is_asked_of_its_alias() -> None:
    fact = Fact(
        id="china/anthem",
        subject="China",
        relation="national_anthem",
        object="March of the Volunteers",
        question="What is the national anthem of China?",
        aliases=("the People's Republic of China",),
        distractors=("La Marseillaise", "God Save the King"),
    )
    prompts = [p.prompt for p in alias(fact, _context(fact))]
    assert any("the national anthem of the People's Republic of China?" in p for p in prompts)
    assert all("Republic of the People's" not in p for p in prompts)
