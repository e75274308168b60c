"""An attack written outside the package runs through the one `Attack` protocol.

`PrimedQuestion` is what a user would put in their own test file: a name, the capabilities it
needs, and a ``run`` that builds probes and hands them to the claim's scorer. Nothing in
``unlearncheck`` knows it; ``assert_forgotten`` runs it like a built-in attack, it catches the
organism's quant_fragile variant and passes gold, and a model that lacks a capability it needs
leaves it "not run".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from unlearncheck import assert_forgotten
from unlearncheck.attacks import (
    AttackResult,
    ClaimModels,
    ClaimScorer,
    ProbeContext,
    direct,
    quant4,
)
from unlearncheck.backends.capabilities import Capability
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import Fact, FactSet, load_facts
from unlearncheck.loading import load_model
from unlearncheck.probes import statement_of


class PrimedQuestion:
    """Ask each fact's base forms after a true statement about another subject (a primer)."""

    name = "primed_question"
    needs: frozenset[Capability] = frozenset({"scores"})

    def run(
        self, facts: FactSet, context: ProbeContext, models: ClaimModels, scorer: ClaimScorer
    ) -> AttackResult:
        probes = {f.id: self._probes(f, context) for f in context.claim}
        return scorer.judge(self.name, probes, models)

    def _probes(self, fact: Fact, context: ProbeContext) -> list:
        primer = next(
            (
                text
                for other in context.facts.split("retain")
                if other.subject != fact.subject
                and (text := statement_of(other, context.templates)) is not None
            ),
            "",
        )
        return [
            replace(p, attack=self.name, prompt=f"{primer} . {p.prompt}".strip(" ."))
            for p in direct(fact, context)
        ]


class ScoresOnly:
    """A model that offers answer scores and nothing else (as a scoring-only API would)."""

    capabilities: frozenset[Capability] = frozenset({"scores"})

    def __init__(self, model: HFModel) -> None:
        self._model = model
        self.spec = f"scores-only:{model.spec}"

    @property
    def content_hash(self) -> str:
        return self._model.content_hash

    def score_answers(self, requests: Sequence[tuple[str, str]], *, batch_size: int = 64) -> list:
        return self._model.score_answers(requests, batch_size=batch_size)


@pytest.fixture(scope="module")
def zoo_forget(zoo: Path) -> FactSet:
    return load_facts(zoo / "facts.jsonl")


@pytest.mark.parametrize(
    ("variant", "expected"), [("quant_fragile", "FAIL"), ("gold", "INCONCLUSIVE")]
)
def test_an_attack_defined_in_a_test_file_catches_quant_fragile_and_passes_gold_where_it_has_power(
    zoo: Path, zoo_forget: FactSet, variant: str, expected: str, tmp_path: Path
) -> None:
    forget = FactSet(list(zoo_forget.split("forget"))[:24])
    verdict = assert_forgotten(
        str(zoo / variant),
        forget,
        attacks=[PrimedQuestion()],
        original=str(zoo / "original"),
        context=zoo_forget,
        runlog=tmp_path / "run.jsonl",
        raise_on_fail=False,
        on_inconclusive="return",
    )
    assert verdict.status == expected
    outcomes = [fact.outcome("primed_question") for fact in verdict.facts]
    recovered = [o for o in outcomes if o.outcome == "recovered"]
    if expected == "FAIL":
        assert len(recovered) >= len(outcomes) // 2
        assert recovered[0].evidence[0].probe.prompt.count(" . ") == 1  # primed
        assert recovered[0].evidence[0].output  # the pipeline showed the model's output
    else:  # gold: nothing recovered; a fact passes only where the attack finds it on the original
        assert not recovered
        powerless = [f for f in verdict.facts if not f.outcome("primed_question").power]
        assert all(f.status == "INCONCLUSIVE" for f in powerless)
        assert "no attack with power" in powerless[0].reason
        assert [f.status for f in verdict.facts].count("PASS") >= len(outcomes) // 2


def test_an_attack_needing_what_the_model_lacks_is_not_run(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    fact = Fact(
        id="red-king/home",
        subject="red king",
        relation="home",
        object="paris",
        question="where is the red king from",
        distractors=("berlin", "rome", "madrid", "seine"),
    )
    model = ScoresOnly(load_model(str(tiny_checkpoint)))
    verdict = assert_forgotten(
        model,
        fact,
        attacks=[direct, quant4],
        runlog=tmp_path / "run.jsonl",
        raise_on_fail=False,
        on_inconclusive="return",
    )
    outcome = verdict.facts[0].outcome("quant4")
    assert outcome.outcome == "not run"
    assert outcome.reason == f"needs weights, which {model.spec} does not offer"
    assert not verdict.facts[0].outcome("direct").reason.startswith("needs")  # it was scored


def test_an_object_without_run_is_refused_naming_the_protocol(tiny_checkpoint: Path) -> None:
    class NameOnly:
        name = "name_only"

    with pytest.raises(TypeError, match=r"attacks\[0\] is .*name, needs and run"):
        assert_forgotten(str(tiny_checkpoint), [], attacks=[NameOnly()])  # type: ignore[list-item]
