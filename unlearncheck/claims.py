"""The claims about facts: ``assert_forgotten`` and ``assert_retained``, and their verdict rules.

Both run on the claim pipeline (`unlearncheck.pipeline`): a claim expands its facts into probes
with each attack, scores every probe on the model under test (and on the reference and original
when given) in batched passes, judges each (fact, attack), corrects for the number of tests, logs
every case and verdict, and raises when the claim fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from unlearncheck import scoring
from unlearncheck.attacks.base import Attack, AttackResult
from unlearncheck.attacks.input import INPUT_ATTACKS
from unlearncheck.facts import Fact
from unlearncheck.loading import ModelLike
from unlearncheck.pipeline import Claim, ClaimOptions, Settings, forget_power_runs
from unlearncheck.suggestions import did_you_mean
from unlearncheck.verdict import AttackOutcome, FactVerdict, Status, Verdict

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover
    from typing_extensions import Unpack

__all__ = ["DEFAULT_MAX_DROP", "assert_forgotten", "assert_retained", "fact_verdict"]

#: The largest drop of retain accuracy (a share, 0.1 = 10 points) `assert_retained` allows.
DEFAULT_MAX_DROP = 0.1


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
    __tracebackhide__ = True  # pytest shows the test's line, not this frame
    settings = Settings.of("assert_forgotten", options)
    _check_attacks(attacks)
    return _decided(lambda: _forgotten(settings, model, facts, attacks, original, reference))


#: A decided claim, not yet finished: the claim, its status, its fact verdicts, its config.
_Decision = tuple[Claim, Status, list[FactVerdict], dict[str, Any]]


def _decided(decide: Callable[[], _Decision]) -> Verdict:
    """The verdict of ``decide()``, on scores the score cache cannot have falsified.

    While the claim is decided, scores read from the disk cache are spot-checked; before a claim
    with a PASS ends, every cached score it used is re-scored (`unlearncheck.cache_check`). When
    a check finds the cache disagreeing with a model, the cache is discarded (with a warning) and
    the claim decided again on fresh scores. The verdict's config records ``score_cache``: how
    many of its scores came from the cache, how many were re-checked, and why it was discarded.
    """
    __tracebackhide__ = True  # pytest shows the test's line, not this frame
    discarded = None
    for _ in range(2):
        with scoring.cache_ledger() as ledger:
            claim, status, verdicts, config = decide()
            if ledger.discarded is None and "PASS" in (status, *(v.status for v in verdicts)):
                scoring.confirm_cached()
        discarded = discarded or ledger.discarded
        if ledger.discarded is None:
            break
        forget_power_runs()
    config["score_cache"] = {**ledger.summary(), "discarded": discarded}
    return claim.finish(status, verdicts, config)


def _forgotten(
    settings: Settings,
    model: ModelLike,
    facts: Fact | Iterable[Fact],
    attacks: Sequence[Attack],
    original: ModelLike | None,
    reference: ModelLike | None,
) -> _Decision:
    """`assert_forgotten`'s claim, decided."""
    claim = Claim.prepare(
        "forgotten",
        facts,
        (model, reference, original),
        settings,
        calibrate=True,
        attacks=len(attacks),
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
    return claim, _claim_status(verdicts), verdicts, config


def _check_attacks(attacks: Sequence[Attack]) -> None:
    """Refuse anything in ``attacks`` that is not an attack, and an attack listed twice.

    Raises:
        TypeError: ``attacks`` is not a sequence of attacks (an attack name, for instance).
        ValueError: ``attacks`` is empty or repeats an attack.
    """
    from unlearncheck import attacks as shipped

    exported = (getattr(shipped, name) for name in shipped.__all__)
    names = [a.name for a in exported if isinstance(a, Attack) and not isinstance(a, type)]
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
                else f"unknown attack name{did_you_mean(attack, names)}; known attacks: {known}"
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
    4. INCONCLUSIVE when power was measured (an original was given) and no attack that ran on the
       model recovers the fact from the original: no attack shown able to find it vouches for its
       absence;
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
    # Power counts only where the attack also ran on the model: an optional attack that did not
    # run there vouches for nothing, whatever it finds on the original.
    powerful = [o.attack for o in outcomes if o.power and o.outcome != "not run"]
    if not powerful:
        return verdict(
            "INCONCLUSIVE",
            "no attack with power: none of "
            f"{', '.join(o.attack for o in outcomes)} both ran on the model and recovers this "
            "fact from the original model",
        )
    return verdict("PASS", f"no attack recovered it; power shown by {', '.join(powerful)}")


def assert_retained(
    model: ModelLike,
    facts: Fact | Iterable[Fact],
    *,
    original: ModelLike | None = None,
    max_loss: float = 0.1,
    max_drop: float = DEFAULT_MAX_DROP,
    **options: Unpack[ClaimOptions],
) -> Verdict:
    """Assert that ``model`` still knows ``facts`` (the utility side of unlearning).

    Two checks. Knowledge: a fact is known when its base and paraphrase probes leak significantly
    against chance (control subjects); the share of facts known must be at most ``max_loss`` below
    the original's (or below 1 without an original). Utility, with an original: a fact's accuracy
    is the share of its base and paraphrase probes whose answer has the highest p̂ of its options
    (what a greedy reader of the options answers); the mean accuracy must not drop more than
    ``max_drop`` below the original's (each fact's accuracies and drop are in its outcome's
    ``extra``). Facts the original does not know are INCONCLUSIVE. ``options`` are as for
    `assert_forgotten`.

    Raises:
        ForgettingAssertionError: Too many facts were lost, or the accuracy dropped too far.
        InconclusiveError: No fact could be decided (and ``on_inconclusive="raise"``).
    """
    __tracebackhide__ = True  # pytest shows the test's line, not this frame
    settings = Settings.of("assert_retained", options)
    for name, value in (("max_loss", max_loss), ("max_drop", max_drop)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return _decided(lambda: _retained(settings, model, facts, original, max_loss, max_drop))


def _retained(
    settings: Settings,
    model: ModelLike,
    facts: Fact | Iterable[Fact],
    original: ModelLike | None,
    max_loss: float,
    max_drop: float,
) -> _Decision:
    """`assert_retained`'s claim, decided."""
    claim = Claim.prepare("retained", facts, (model, None, original), settings, calibrate=False)
    on_model = claim.judge_base("direct", "model", claim.facts)
    on_original, drops = None, None
    if claim.models.original is not None:
        on_original = claim.judge_base("direct", "original", claim.facts)
        drops = _accuracy_drops(claim.accuracy("model"), claim.accuracy("original"))
    verdicts = [
        _retained_verdict(
            fact,
            on_model[fact.id],
            on_original[fact.id] if on_original is not None else None,
            drops[fact.id] if drops is not None else None,
        )
        for fact in claim.facts
    ]
    decided = [v for v in verdicts if v.status != "INCONCLUSIVE"]
    kept = sum(v.status == "PASS" for v in decided) / len(decided) if decided else 0.0
    accuracy = _mean_accuracy(drops, decided)
    config = claim.config(
        max_loss=max_loss, share_kept=kept, decided=len(decided), max_drop=max_drop, **accuracy
    )
    # Individual facts may be lost within the allowances; the claim is about the shares kept.
    dropped = accuracy.get("accuracy_drop", 0.0) > max_drop
    status: Status = (
        "INCONCLUSIVE" if not decided else "FAIL" if kept < 1 - max_loss or dropped else "PASS"
    )
    return claim, status, verdicts, config


#: Accuracy on the retain facts, model against original: (model's, original's) per fact.
Accuracies = dict[str, tuple[float, float]]


def _accuracy_drops(
    on_model: dict[str, float] | None, on_original: dict[str, float] | None
) -> Accuracies | None:
    """Each fact's (model, original) accuracy (None when either could not be measured)."""
    if on_model is None or on_original is None:
        return None
    return {fid: (on_model[fid], on_original[fid]) for fid in on_model}


def _mean_accuracy(drops: Accuracies | None, decided: list[FactVerdict]) -> dict[str, float]:
    """Mean accuracy of the model and the original over the decided facts, and the drop."""
    if drops is None or not decided:
        return {}
    pairs = [drops[v.fact_id] for v in decided]
    model = sum(m for m, _ in pairs) / len(pairs)
    original = sum(o for _, o in pairs) / len(pairs)
    return {
        "accuracy": round(model, 6),
        "original_accuracy": round(original, 6),
        "accuracy_drop": round(original - model, 6),
    }


def _retained_verdict(
    fact: Fact,
    outcome: AttackOutcome,
    on_original: AttackOutcome | None,
    accuracy: tuple[float, float] | None,
) -> FactVerdict:
    """PASS when the model still knows the fact (saying so when its accuracy fell); FAIL when it
    lost it; INCONCLUSIVE when the original does not know it or the model could not be asked.
    The accuracies go to the outcome's ``extra``."""
    if accuracy is not None:
        model, original = accuracy
        outcome.extra.update(
            accuracy=round(model, 6),
            original_accuracy=round(original, 6),
            accuracy_drop=round(original - model, 6),
        )
    if outcome.blocking:
        return FactVerdict(
            fact.id, "INCONCLUSIVE", f"not run: direct ({outcome.reason})", [outcome]
        )
    if on_original is not None and on_original.outcome != "recovered":
        return FactVerdict(
            fact.id, "INCONCLUSIVE", "the original model does not know this fact", [outcome]
        )
    if outcome.outcome != "recovered":
        return FactVerdict(fact.id, "FAIL", f"lost: {outcome.reason}", [outcome])
    if accuracy is not None and accuracy[0] < accuracy[1]:
        return FactVerdict(
            fact.id,
            "PASS",
            f"still known; accuracy {accuracy[1]:.2f} on the original, {accuracy[0]:.2f} now",
            [outcome],
        )
    return FactVerdict(fact.id, "PASS", "still known", [outcome])
