"""Property-based probe fuzzing: no wording of a question brings a forgotten fact back.

Hypothesis draws a forget fact and a few question wordings of its relation
(`unlearncheck.strategies.wordings_for`: the relation's questions behind fillers and prefix
templates, in lower case or not) and asks them through the ``paraphrase`` attack; the property is
that ``assert_forgotten`` holds for every such probe set. `leak_score` steers the search towards
wordings that come closest to a leak. Each example is a claim of its own in the report, judged at
`example_alpha` so that the whole search keeps the suite's false-alarm rate. Wordings the original
model does not answer are left out, so an example may be INCONCLUSIVE; only a FAIL fails. The
``unlearncheck-ci`` profile (this suite's default, `conftest.py`) runs the same 10 examples every
time; ``--hypothesis-profile unlearncheck-fuzz`` searches 200 at alpha / 200 each.
"""

from __future__ import annotations

from hypothesis import given, target
from hypothesis import strategies as st

from unlearncheck import assert_forgotten
from unlearncheck.attacks import paraphrase
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import FactSet
from unlearncheck.pytest_plugin import Options
from unlearncheck.strategies import (
    Wordings,
    example_alpha,
    leak_score,
    wordings_for,
)
from unlearncheck.strategies import facts as facts_of


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
    asked: Wordings = data.draw(facts_of(forget).flatmap(wordings_for), label="wordings")
    verdict = assert_forgotten(
        unlearned,
        asked.fact,
        attacks=[paraphrase],
        original=original,
        reference=reference,
        context=forget,  # controls: other forgotten people, as in a claim on the whole set
        templates=asked.templates(),
        seed=uc_options.seed,
        alpha=example_alpha(),
        claim=f"fuzzed wordings: {asked.fact.id}",
        on_inconclusive="return",
    )
    target(leak_score(verdict))
