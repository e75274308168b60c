"""Claim: the unlearned model has forgotten the forget set, under every attack we have.

The attacks are ``FULL_ATTACKS``: input attacks (direct, paraphrase, alias, multi-hop, prefix,
in-context), model attacks (4- and 8-bit quantization, relearning) and readout attacks (sampling,
hidden-state probe). One claim per attack, each over the whole forget set: the report and the
summary read by attack (and time each), every claim's chance level is measured on all forgotten
people, and the multiple-testing correction runs over the facts of one attack, not over every
(fact, attack) pair at once, which would leave most facts undecidable.

A FAIL names the attack and the leaking probe. A fact that cannot be decided (the original never
knew it, or the attack had too few probes for the confidence asked) leaves the claim INCONCLUSIVE:
the test does not fail on that but warns, and the report and run log show it.
"""

from __future__ import annotations

import warnings

import pytest

from unlearncheck import assert_forgotten
from unlearncheck.attacks import FULL_ATTACKS, Attack
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import FactSet
from unlearncheck.pytest_plugin import Options


@pytest.mark.parametrize("attack", FULL_ATTACKS, ids=lambda attack: attack.name)
def test_forget_set_forgotten(
    attack: Attack,
    unlearned: HFModel,
    original: HFModel | None,
    reference: HFModel | None,
    facts: FactSet,
    uc_options: Options,
) -> None:
    verdict = assert_forgotten(
        unlearned,
        facts.split("forget"),
        attacks=[attack],
        original=original,
        reference=reference,
        context=facts,
        seed=uc_options.seed,
        claim=f"forget set forgotten under {attack.name}",
        on_inconclusive="return",
    )
    if verdict.status == "INCONCLUSIVE":
        warnings.warn(verdict.explain(), UserWarning, stacklevel=1)
