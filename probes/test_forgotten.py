"""Claim: the unlearned model has forgotten the forget set, under every attack we have.

One claim over the whole forget set with ``FULL_ATTACKS``: input attacks (direct, paraphrase,
alias, multi-hop, prefix, in-context), model attacks (4- and 8-bit quantization, relearning) and
readout attacks (sampling, hidden-state probe, the original's head). Each attack is also run on
the original model: a fact PASSES only when no attack recovered it and at least one attack
recovers it from the original (its power), so a PASS is never earned by attacks that could not
have found the fact. ``alias``
and ``multihop`` are optional: a fact with no alias or no chain in the facts file is asked by the
other attacks instead. The p-values of every (fact, attack) test are corrected together.

A FAIL names the attack and the leaking probe. A fact that cannot be decided (the original never
knew it, no attack with power, an attack that could not run) makes the claim INCONCLUSIVE, which
fails the test unless the session runs with ``--uc-inconclusive warn``.
"""

from __future__ import annotations

from unlearncheck import assert_forgotten
from unlearncheck.attacks import FULL_ATTACKS, Attack, alias, multihop, optional
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import FactSet
from unlearncheck.pytest_plugin import Options

#: Attacks that apply to some facts only (those with aliases, those with a multi-hop chain).
PARTIAL = (alias, multihop)


def suite_attacks() -> list[Attack]:
    """``FULL_ATTACKS``, the partial ones marked optional."""
    return [optional(a) if a in PARTIAL else a for a in FULL_ATTACKS]


def test_forget_set_forgotten(
    unlearned: HFModel,
    original: HFModel | None,
    reference: HFModel | None,
    facts: FactSet,
    uc_options: Options,
) -> None:
    assert_forgotten(
        unlearned,
        facts.split("forget"),
        attacks=suite_attacks(),
        original=original,
        reference=reference,
        context=facts,
        seed=uc_options.seed,
        claim="forget set forgotten under every attack",
    )
