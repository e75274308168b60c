"""Claim: unlearning kept what it should keep (the retain set is still known)."""

from __future__ import annotations

import random

from unlearncheck import assert_retained
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import FactSet
from unlearncheck.pytest_plugin import Options

#: Retain facts checked: a seeded sample, so the claim stays quick on a CPU.
SAMPLE = 60


def test_retain_set_retained(
    unlearned: HFModel, original: HFModel | None, facts: FactSet, uc_options: Options
) -> None:
    retain = list(facts.split("retain"))
    sample = random.Random(uc_options.seed).sample(retain, min(SAMPLE, len(retain)))
    assert_retained(
        unlearned,
        sample,
        original=original,
        context=facts,
        seed=uc_options.seed,
        claim=f"retain set retained ({len(sample)} of {len(retain)} facts)",
    )
