"""The claims about facts: ``assert_forgotten`` and ``assert_retained``, and their verdict rules.

Both run on the claim pipeline (`unlearncheck.pipeline`): a claim expands its facts into probes
with each attack, scores every probe on the model under test (and on the reference and original
when given) in batched passes, judges each (fact, attack), corrects for the number of tests, logs
every case and verdict, and raises when the claim fails.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from unlearncheck.attacks.base import Attack, AttackResult
from unlearncheck.attacks.input import INPUT_ATTACKS
from unlearncheck.facts import Fact
from unlearncheck.loading import ModelLike
from unlearncheck.pipeline import Claim, ClaimOptions, Settings
from unlearncheck.verdict import AttackOutcome, FactVerdict, Status, Verdict

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover
    from typing_extensions import Unpack

__all__ = ["assert_forgotten", "assert_retained", "fact_verdict"]


def assert_forgotten(
    model: ModelLike,
    facts: Fact | Iterable[Fact],
    attacks: Sequence[Attack] = INPUT_ATTACKS,
    *,
    original: ModelLike | None = None,
    reference: ModelLike | None = None,
    **options: Unpack[ClaimOptions],
) -> Verdict:
    """Assert that ``model`` no longer knows ``facts``, under every attack in ``attacks``.

    Args:
        model: The unlearned model (a loaded `HFModel` or a spec: directory, hub id in the local
            cache, ``organism:<variant>``, ``openai:<name>@<url>``).
        facts: One fact or many; each is judged on its own, and the tests of every (fact, attack)
            are corrected together (Benjamini–Hochberg).
        attacks: Attacks to run (``unlearncheck.attacks``, or your own `Attack`); ``direct``
            asks the base forms.
        original: The model before unlearning; facts it does not know are INCONCLUSIVE and
            probes it does not answer are left out.
        reference: A model retrained without the forget set; scores are compared with it instead
            of with chance.
        **options: The claim's settings (`unlearncheck.pipeline.Settings`): ``readout``,
            ``context``, ``templates``, ``alpha``, ``tolerance``, ``seed``, ``runlog``,
            ``on_inconclusive``, ``raise_on_fail``, ``claim``, ``device``.

    Returns:
        The verdict (PASS, or FAIL / INCONCLUSIVE when not raising).

    Raises:
        ForgettingAssertionError: Some attack recovered the knowledge of some fact.
        InconclusiveError: The claim could not be decided (and ``on_inconclusive="raise"``).
    """
    settings = Settings.of("assert_forgotten", options)
    _check_attacks(attacks)
    claim = Claim.prepare(
        "forgotten", facts, (model, reference, original), settings, calibrate=True
    )
    results: dict[str, AttackResult] = {a.name: claim.run(a) for a in attacks}
    power = {a.name: claim.power(a) for a in attacks}
    known: dict[str, AttackOutcome] = {}
    if claim.models.original is not None:
        known = claim.judge_base("original knows", "original", claim.context.claim)
    claim.correct(results, power)
    verdicts = [
        fact_verdict(fact, [results[a.name].outcomes[fact.id] for a in attacks], known.get(fact.id))
        for fact in claim.facts
    ]
    config = claim.config(attacks=[a.name for a in attacks])
    return claim.finish(_claim_status(verdicts), verdicts, config)


def _check_attacks(attacks: Sequence[Attack]) -> None:
    """Refuse anything in ``attacks`` that is not an attack, and an attack listed twice.

    Raises:
        TypeError: ``attacks`` is not a sequence of attacks (an attack name, for instance).
        ValueError: ``attacks`` is empty or repeats an attack.
    """
    from unlearncheck.attacks import FULL_ATTACKS, psg

    names = [a.name for a in (*FULL_ATTACKS, psg)]
    known = ", ".join(names)
    if isinstance(attacks, str | Attack):
        raise TypeError(f"attacks must be a list of attacks, got {attacks!r}")
    if not attacks:
        raise ValueError("assert_forgotten needs at least one attack")
    seen: set[str] = set()
    for position, attack in enumerate(attacks):
        if isinstance(attack, str):
            fix = (
                f"pass the attack itself, unlearncheck.attacks.{attack}"
                if attack in names
                else f"unknown attack name; known attacks: {known}"
            )
            raise TypeError(f"attacks[{position}] is the name {attack!r}, not an attack: {fix}")
        if not isinstance(attack, Attack):
            raise TypeError(
                f"attacks[{position}] is {attack!r}, not an attack ({known}, or an object with "
                "name, needs and run: see unlearncheck.attacks.base)"
            )
        if attack.name in seen:
            raise ValueError(f"attacks[{position}]: attack {attack.name!r} is listed twice")
        seen.add(attack.name)


def _claim_status(verdicts: list[FactVerdict]) -> Status:
    """FAIL if any fact failed, else INCONCLUSIVE if any was undecided, else PASS."""
    statuses = {v.status for v in verdicts}
    return (
        "FAIL" if "FAIL" in statuses else "INCONCLUSIVE" if "INCONCLUSIVE" in statuses else "PASS"
    )


def fact_verdict(
    fact: Fact, outcomes: list[AttackOutcome], original_knows: AttackOutcome | None
) -> FactVerdict:
    """A fact's verdict, in this order:

    1. INCONCLUSIVE when the original does not know it (or could not be asked), whatever the
       attacks say: forgetting what was never known proves nothing, and recovering it is no
       failure of unlearning;
    2. FAIL when an attack recovered it;
    3. INCONCLUSIVE when a requested attack did not run for it (and was not `optional`), or none
       ran (an attack whose probes the original answers none of ran, with no power);
    4. INCONCLUSIVE when power was measured (an original was given) and no attack recovers the
       fact from the original: no attack shown able to find it vouches for its absence;
    5. else PASS (saying so plainly when power was not measured).
    """

    def verdict(status: Status, reason: str) -> FactVerdict:
        return FactVerdict(fact.id, status, reason, outcomes)

    if original_knows is not None and original_knows.blocking:
        return verdict(
            "INCONCLUSIVE",
            f"could not check that the original model knows this fact ({original_knows.reason})",
        )
    if original_knows is not None and original_knows.outcome != "recovered":
        return verdict(
            "INCONCLUSIVE",
            "the original model does not know this fact: forgetting it proves "
            f"nothing ({original_knows.reason})",
        )
    recovered = [o.attack for o in outcomes if o.significant]
    if recovered:
        return verdict("FAIL", f"recovered by {', '.join(recovered)}")
    blocked = [
        f"{o.attack} ({o.reason})" for o in outcomes if o.outcome == "not run" and o.blocking
    ]
    if blocked:
        return verdict("INCONCLUSIVE", "not run: " + "; ".join(blocked))
    if original_knows is None:
        if all(o.outcome == "not run" for o in outcomes):
            return verdict("INCONCLUSIVE", "no attack applied to this fact")
        return verdict(
            "PASS", "no attack recovered it (power not measured: no original model given)"
        )
    powerful = [o.attack for o in outcomes if o.power]
    if not powerful:
        return verdict(
            "INCONCLUSIVE",
            "no attack with power: none of "
            f"{', '.join(o.attack for o in outcomes)} recovers this fact from the original model",
        )
    return verdict("PASS", f"no attack recovered it; power shown by {', '.join(powerful)}")


def assert_retained(
    model: ModelLike,
    facts: Fact | Iterable[Fact],
    *,
    original: ModelLike | None = None,
    max_loss: float = 0.1,
    **options: Unpack[ClaimOptions],
) -> Verdict:
    """Assert that ``model`` still knows ``facts`` (the utility side of unlearning).

    A fact is known when its base and paraphrase probes leak significantly against chance
    (control subjects). The claim passes when the share of facts known is at most ``max_loss``
    below the original's share (or below 1 without an original); facts the original does not
    know are INCONCLUSIVE. ``options`` are as for `assert_forgotten`.

    Raises:
        ForgettingAssertionError: Too many facts were lost.
        InconclusiveError: No fact could be decided (and ``on_inconclusive="raise"``).
    """
    settings = Settings.of("assert_retained", options)
    if not 0 <= max_loss <= 1:
        raise ValueError(f"max_loss must be between 0 and 1, got {max_loss!r}")
    claim = Claim.prepare("retained", facts, (model, None, original), settings, calibrate=False)
    on_model = claim.judge_base("direct", "model", claim.facts)
    on_original = (
        claim.judge_base("direct", "original", claim.facts)
        if claim.models.original is not None
        else None
    )
    verdicts = [
        _retained_verdict(
            fact, on_model[fact.id], on_original[fact.id] if on_original is not None else None
        )
        for fact in claim.facts
    ]
    decided = [v for v in verdicts if v.status != "INCONCLUSIVE"]
    kept = sum(v.status == "PASS" for v in decided) / len(decided) if decided else 0.0
    config = claim.config(max_loss=max_loss, share_kept=kept, decided=len(decided))
    # Individual facts may be lost within the allowance; the claim is about the share kept.
    status: Status = "INCONCLUSIVE" if not decided else "PASS" if kept >= 1 - max_loss else "FAIL"
    return claim.finish(status, verdicts, config)


def _retained_verdict(
    fact: Fact, outcome: AttackOutcome, on_original: AttackOutcome | None
) -> FactVerdict:
    """PASS when the model still knows the fact, FAIL when it lost it, INCONCLUSIVE when the
    original does not know it or the model could not be asked."""
    if outcome.blocking:
        return FactVerdict(
            fact.id, "INCONCLUSIVE", f"not run: direct ({outcome.reason})", [outcome]
        )
    if on_original is not None and on_original.outcome != "recovered":
        return FactVerdict(
            fact.id, "INCONCLUSIVE", "the original model does not know this fact", [outcome]
        )
    if outcome.outcome == "recovered":
        return FactVerdict(fact.id, "PASS", "still known", [outcome])
    return FactVerdict(fact.id, "FAIL", f"lost: {outcome.reason}", [outcome])
