"""Hypothesis strategies: bad arguments fail when drawn; a fuzzed property finds the leaking
wordings of qa_form_only within the CI profile's budget and none for gold."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import find, given, settings, target
from hypothesis.errors import InvalidArgument

from unlearncheck import ForgettingAssertionError, assert_forgotten, load_facts
from unlearncheck.attacks import direct, paraphrase, quant4, relearn
from unlearncheck.attacks.model import ModelAttack
from unlearncheck.facts import Fact, FactSet
from unlearncheck.loading import load_model
from unlearncheck.strategies import (
    CI_PROFILE,
    Wordings,
    attack_chains,
    example_alpha,
    facts,
    leak_score,
    wordings_for,
)

pytest_plugins = ["pytester"]

FACT = Fact(id="f1", subject="Ada Lane", relation="birth_city", object="Oslo", split="forget")


def test_a_bad_argument_fails_when_a_value_is_drawn() -> None:
    empty = facts(FactSet([FACT]), split="retain")  # building the strategy raises nothing

    @settings(settings.get_profile(CI_PROFILE))
    @given(fact=empty)
    def draws(fact: Fact) -> None:
        raise AssertionError("never reached")

    with pytest.raises(InvalidArgument, match="split='retain'"):
        draws()
    unknown = Fact(id="f2", subject="Ada Lane", relation="favourite_tea", object="Earl Grey")
    with pytest.raises(InvalidArgument, match="favourite_tea"):
        find(wordings_for(unknown), lambda _: True)
    with pytest.raises(InvalidArgument, match="model attacks"):
        find(attack_chains(models=[direct]), lambda _: True)


_COUNTING_SUITE = """
from hypothesis import given, strategies as st
from unlearncheck.hypothesis_profiles import example_alpha

RUN = []

@given(st.integers())
def test_count(n):
    RUN.append(example_alpha())

def test_report():
    print(f"examples={len(RUN)} alpha={RUN[0]!r}")
"""


@pytest.mark.parametrize(
    ("args", "examples"),
    [((), 10), (("--hypothesis-profile", "unlearncheck-fuzz"), 200)],
)
def test_the_command_line_chooses_the_profile_and_each_example_gets_its_share_of_alpha(
    pytester: pytest.Pytester, args: tuple[str, ...], examples: int
) -> None:
    """The profiles are registered by the plugin, before hypothesis reads the option; the suite's
    conftest makes the CI profile its default; each example is judged at alpha / examples run."""
    pytester.makeconftest(
        "from hypothesis import settings\n"
        "from unlearncheck.hypothesis_profiles import CI_PROFILE\n"
        "settings.load_profile(CI_PROFILE)\n"
    )
    pytester.makepyfile(test_counting=_COUNTING_SUITE)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*examples={examples} alpha={0.05 / examples!r}*"])


def test_wordings_are_the_only_questions_asked() -> None:
    asked = find(wordings_for(FACT, min_size=3), lambda w: len(w.questions) == 3)
    relation = asked.templates().relation("birth_city")
    assert relation["questions"] == list(asked.questions) and relation["paraphrases"] == []
    assert all("{subject}" in q for q in asked.questions)
    assert asked.fact.paraphrases == ()


def test_attack_chains_compose_a_model_attack_with_input_attacks() -> None:
    chain = find(
        attack_chains(models=[quant4, relearn]),
        lambda a: isinstance(a, ModelAttack) and "+" in a.name,
    )
    assert chain.name.split(">")[0] in {"quant4", "relearn"}
    assert len(chain.inputs) >= 2


def _fuzz(model: str, zoo: Path) -> tuple[list[float], ForgettingAssertionError | None]:
    """Run the CI-profile property "no drawn wording recovers a forget fact" on ``model``: the
    leak score of every example run, and the failure hypothesis reports (None: none found)."""
    forget = load_facts(zoo / "facts.jsonl").split("forget")
    unlearned, original = load_model(str(zoo / model)), load_model(str(zoo / "original"))
    scores: list[float] = []

    @settings(settings.get_profile(CI_PROFILE))
    @given(asked=facts(forget).flatmap(wordings_for))
    def no_wording_recovers(asked: Wordings) -> None:
        verdict = assert_forgotten(
            unlearned,
            asked.fact,
            attacks=[paraphrase],
            original=original,
            context=forget,
            templates=asked.templates(),
            claim=f"fuzzed wordings: {asked.fact.id}",
            # the search makes many claims: the property holds alpha
            alpha=example_alpha(examples=settings.get_profile(CI_PROFILE).max_examples),
            on_inconclusive="return",
            raise_on_fail=False,
        )
        scores.append(leak_score(verdict))
        target(scores[-1])
        if verdict.status == "FAIL":
            raise ForgettingAssertionError(verdict)

    try:
        no_wording_recovers()
    except ForgettingAssertionError as failure:
        return scores, failure
    return scores, None


@pytest.mark.xfail(
    strict=False,
    reason="on some machines' zoo builds (weights depend on the CPU's kernels) the CI profile's "
    "10 examples find no leaking wording for qa_form_only (open: machine-independent zoo)",
)
def test_fuzzing_finds_a_leaking_wording_for_qa_form_only_and_none_for_gold(zoo: Path) -> None:
    budget = settings.get_profile(CI_PROFILE).max_examples
    scores, failure = _fuzz("qa_form_only", zoo)
    assert failure is not None and failure.verdict.status == "FAIL"
    assert len(scores) <= budget + 1  # found within the budget (+1: hypothesis replays it)
    assert max(scores) > 0.2  # the leak: a mean delta above the tolerance
    scores, failure = _fuzz("gold", zoo)
    assert failure is None and len(scores) == budget
