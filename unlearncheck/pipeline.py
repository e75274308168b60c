"""The claim pipeline that `assert_forgotten`, `assert_retained` and `assert_equivalent` share.

A claim is prepared once (its facts, the probe context with its calibration peers, the loaded
models, the run log and the scoring session), runs its attacks through the one `Attack` protocol,
corrects the p-values of every (fact, attack) test together (Benjamini–Hochberg), shows the
model's greedy output beside each recovered probe, and ends the same way: every case and the
verdict written to the run log, the verdict published, and an error raised when it failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from unlearncheck import events
from unlearncheck.attacks.base import (
    Attack,
    AttackResult,
    ClaimModels,
    ClaimScorer,
    OptionalAttack,
    not_run,
)
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.attacks.input import direct, paraphrase
from unlearncheck.backends.capabilities import capabilities_of, missing_capabilities
from unlearncheck.backends.openai_api import EndpointError
from unlearncheck.calibration import calibration_peers, context_facts, strata
from unlearncheck.facts import Fact, FactFormatError, FactSet
from unlearncheck.judge import benjamini_hochberg
from unlearncheck.lengths import PromptTooLongError, check_claim_lengths
from unlearncheck.loading import ModelLike, load_model
from unlearncheck.probes import Templates, question_of, statement_of
from unlearncheck.runlog import RunLog
from unlearncheck.scoring import Readout, Scorer, generate
from unlearncheck.specs import check_seed
from unlearncheck.verdict import (
    AttackOutcome,
    FactVerdict,
    ForgettingAssertionError,
    InconclusiveError,
    Status,
    Verdict,
)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_TOLERANCE",
    "Claim",
    "ClaimOptions",
    "Settings",
    "finish",
    "forget_power_runs",
    "load_models",
    "open_log",
    "set_case_log",
]

DEFAULT_TOLERANCE = 0.2
DEFAULT_ALPHA = 0.05
#: Tokens of the greedy output shown beside a recovered probe.
OUTPUT_TOKENS = 8

_case_log: RunLog | None = None

#: Power runs kept in a process (least recently used dropped first): claims on the same original,
#: facts and attack (the rows of a validity matrix, a suite's tests) share one. The outcomes are
#: kept uncorrected and copied for each claim, which corrects its own copy.
MAX_POWER_RUNS = 64
_POWER: OrderedDict[tuple[Any, ...], tuple[Attack, dict[str, AttackOutcome]]] = OrderedDict()


def forget_power_runs() -> None:
    """Drop the power runs kept in this process (their scores were found untrustworthy)."""
    _POWER.clear()


def set_case_log(path: str | Path | None) -> None:
    """The run log of claims given no ``runlog`` (the pytest plugin's per-process case log)."""
    global _case_log
    if _case_log is not None:
        _case_log.close()
    _case_log = RunLog(path) if path is not None else None


def open_log(runlog: RunLog | str | Path | None) -> RunLog | None:
    """The run log a claim writes to: the one given (object or path), else the case log."""
    return RunLog(runlog) if isinstance(runlog, str | Path) else runlog or _case_log


class ClaimOptions(TypedDict, total=False):
    """The keyword options every claim about facts takes (`Settings` documents each)."""

    readout: Readout
    context: FactSet | None
    templates: Templates | None
    alpha: float
    tolerance: float
    seed: int
    runlog: RunLog | str | Path | None
    on_inconclusive: Literal["raise", "return"]
    raise_on_fail: bool
    claim: str | None
    device: str | None


@dataclass(frozen=True)
class Settings:
    """A claim's settings, checked.

    Attributes:
        readout: How an option's likelihood enters p̂: ``token_mean`` (mean log-probability per
            token, the default) or ``sum`` (total log-probability).
        context: The facts the probes may use (graph, controls); default: the set the facts
            came from.
        templates: The template library (default: the shipped one).
        alpha: Level of the claim: a model that forgot every fact fails it with probability at
            most ``alpha``, and of the (fact, attack) pairs it reports recovered, the expected
            share of false alarms is at most ``alpha``.
        tolerance: How much higher than its baseline a fact's mean p̂ must be to count as
            recovered (and a probe's, to be listed as leaking).
        seed: Seed of every random choice.
        runlog: Run log (object or path) the cases and the verdict are appended to.
        on_inconclusive: ``raise`` (default) raises `InconclusiveError`; ``return`` returns.
        raise_on_fail: Raise `ForgettingAssertionError` on FAIL (default) or return the verdict.
        claim: A name for the claim in logs and reports.
        device: Device for models given as specs.
    """

    readout: Readout = "token_mean"
    context: FactSet | None = None
    templates: Templates | None = None
    alpha: float = DEFAULT_ALPHA
    tolerance: float = DEFAULT_TOLERANCE
    seed: int = 0
    runlog: RunLog | str | Path | None = None
    on_inconclusive: Literal["raise", "return"] = "raise"
    raise_on_fail: bool = True
    claim: str | None = None
    device: str | None = None

    @classmethod
    def of(cls, caller: str, options: Mapping[str, Any]) -> Settings:
        """The settings ``options`` give ``caller`` (defaults for the rest).

        Raises:
            TypeError: An option ``caller`` does not take.
            ValueError: A setting out of range (a tolerance of 1 or more could never fail, a
                seed torch cannot take).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        for name in options:
            if name not in known:
                raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
        settings = cls(**options)
        check_seed(settings.seed)
        if not 0 < settings.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {settings.alpha!r}")
        if not 0 <= settings.tolerance < 1:
            raise ValueError(
                f"tolerance must be at least 0 and below 1 (no fact could ever be recovered), "
                f"got {settings.tolerance!r}"
            )
        if settings.on_inconclusive not in ("raise", "return"):
            raise ValueError(
                f"on_inconclusive must be 'raise' or 'return', got {settings.on_inconclusive!r}"
            )
        return settings


def load_models(
    model: ModelLike,
    reference: ModelLike | None,
    original: ModelLike | None,
    device: str | None,
) -> ClaimModels:
    """The claim's models by role, loaded from their specs (once a process)."""
    return ClaimModels(
        load_model(model, device=device),
        load_model(reference, device=device) if reference is not None else None,
        load_model(original, device=device) if original is not None else None,
    )


def prompt_format(models: ClaimModels) -> str:
    """The prompt format the claim's models share (``plain`` for a model without one, such as an
    endpoint): probes are worded for it (`Templates.for_format`).

    Raises:
        ValueError: If the models read prompts in different formats (their scores would not be
            comparable).
    """
    formats = {role: getattr(model, "prompt_format", "plain") for role, model in models.given()}
    if len(set(formats.values())) > 1:
        named = ", ".join(f"{role}: {fmt}" for role, fmt in formats.items())
        raise ValueError(
            f"the claim's models read prompts in different formats ({named}); load them with "
            "the same prompt_format"
        )
    return next(iter(formats.values()))


def _as_factset(facts: Fact | Iterable[Fact]) -> FactSet:
    if isinstance(facts, Fact):
        return FactSet([facts])
    if isinstance(facts, str | Path):
        raise TypeError(
            f"facts is the path {str(facts)!r}, not facts: pass load_facts({str(facts)!r})"
        )
    listed = list(facts)
    for position, fact in enumerate(listed):
        if not isinstance(fact, Fact):
            raise TypeError(f"facts[{position}] is {fact!r}, not a Fact")
    return facts if isinstance(facts, FactSet) else FactSet(listed)


def _check_askable(facts: FactSet, templates: Templates) -> None:
    """Refuse a fact that no probe can ask: no question or statement of its own or its relation's.

    Raises:
        FactFormatError: Naming the first such fact and its relation.
    """
    for fact in facts:
        if question_of(fact, templates) is None and statement_of(fact, templates) is None:
            raise FactFormatError(
                f"fact {fact.id!r}: relation {fact.relation!r} has no question or statement "
                "template and the fact has neither a question nor a statement, so no probe can "
                "ask it; add them to the fact or to a templates file (Templates.load)",
                field="relation",
            )


@dataclass
class Claim:
    """A prepared claim about facts: what its attacks run on, and how it ends.

    Attributes:
        kind: ``forgotten`` or ``retained``.
        facts: The facts the claim decides.
        context: The probe context; its ``claim`` also holds the calibration peers.
        models: The loaded models by role.
        settings: The claim's settings.
        log: The run log, or None.
        scorer: The scoring session of the claim's attacks.
        optional: Names of the attacks the user marked `optional` (their "not run" does not
            keep a fact from passing).
    """

    kind: str
    facts: FactSet
    context: ProbeContext
    models: ClaimModels
    settings: Settings
    log: RunLog | None
    scorer: ClaimScorer
    optional: set[str] = dataclasses.field(default_factory=set)

    @classmethod
    def prepare(
        cls,
        kind: str,
        facts: Fact | Iterable[Fact],
        models: tuple[ModelLike, ModelLike | None, ModelLike | None],
        settings: Settings,
        *,
        calibrate: bool,
        attacks: int = 0,
    ) -> Claim:
        """Check the facts, build the probe context (with calibration peers when
        ``calibrate``), load the models (model, reference, original) and open the run log.

        The context draws controls enough for the least p-value to reach the level a verdict
        needs, where it has subjects enough to draw from: without an original, the claim's
        ``attacks`` tests per fact are corrected together (`_benjamini_hochberg`), and one test
        alone must reach alpha / (facts × attacks); with one, an attack vouches for a fact once
        it recovers it from the original, which needs alpha at least (a claim judged at a small
        alpha, as each example of a hypothesis search is, needs many controls).

        Raises:
            ValueError: No facts.
            FactFormatError: A fact no probe can ask.
            PromptTooLongError: A fact whose question does not fit a model's context.
        """
        readout = Scorer(settings.readout)  # refuses an unknown readout before anything loads
        claim_facts = _as_factset(facts)
        if not claim_facts:
            raise ValueError(f"assert_{kind} needs at least one fact")
        known = context_facts(claim_facts, settings.context)
        peers = calibration_peers(claim_facts, known, settings.seed) if calibrate else FactSet()
        library = settings.templates or Templates.load()
        _check_askable(claim_facts, library)  # before any model loads
        loaded = load_models(*models, settings.device)
        templates = library.for_format(prompt_format(loaded))
        tests = len(claim_facts) * attacks if models[2] is None else 1
        ctx = ProbeContext(
            known,
            FactSet([*claim_facts, *peers]),
            templates,
            settings.seed,
            min_chance=math.ceil(tests / settings.alpha),
        )
        check_claim_lengths(
            [m for _, m in loaded.given()], {f.id: direct(f, ctx) for f in ctx.claim}
        )
        log = open_log(settings.runlog)
        scorer = ClaimScorer(readout, settings.tolerance, settings.alpha, strata(ctx), log)
        loaded.record(log)
        return cls(kind, claim_facts, ctx, loaded, settings, log, scorer)

    def run(self, attack: Attack) -> AttackResult:
        """Run ``attack`` on the claim's facts.

        Nothing requested is skipped silently: an attack that did not run for a fact (the model
        lacks a capability it needs, no probe of it applies to the fact, its endpoint failed after
        the retries) is a blocking "not run" that keeps the fact from passing, unless the attack
        was marked `optional`. (An attack whose probes the original answers none of did run: it
        has no power on the fact, which blocks nothing but earns no PASS.)
        """
        result = _run(attack, self.facts, self.context, self.models, self.scorer)
        if isinstance(attack, OptionalAttack):
            self.optional.add(attack.name)
            for outcome in result.outcomes.values():
                outcome.blocking = False
        return result

    def power(self, attack: Attack) -> AttackResult | None:
        """``attack`` run on the original as if it were the model under test (against the
        reference when one is given, else chance; the original also in its own role, so the
        attack leaves out the same probes as in the claim's run): on which facts the attack has
        the power to find what is there. None without an original."""
        original = self.models.original
        if original is None:
            return None
        reference = self.models.reference
        ctx, scorer = self.context, self.scorer
        key = (
            id(attack),
            original.content_hash,
            reference.content_hash if reference is not None else None,
            _digest([f.to_dict() for f in ctx.facts], ctx.templates.data, ctx.templates.chat),
            ctx.seed,
            tuple(f.id for f in self.facts),
            tuple(f.id for f in ctx.claim),
            scorer.readout.readout,
            scorer.tolerance,
            scorer.alpha,
        )
        if key not in _POWER:
            on_original = ClaimModels(original, reference, original)
            alone = dataclasses.replace(scorer, log=None)
            result = _run(attack, self.facts, ctx, on_original, alone)
            # The attack the key names by id is held with the result, so its id is not reused.
            _POWER[key] = (
                attack,
                {fid: dataclasses.replace(o, cases=[]) for fid, o in result.outcomes.items()},
            )
            while len(_POWER) > MAX_POWER_RUNS:
                _POWER.popitem(last=False)
        _POWER.move_to_end(key)
        outcomes = _POWER[key][1]
        return AttackResult(
            {fid: dataclasses.replace(o, extra=dict(o.extra)) for fid, o in outcomes.items()}
        )

    def judge_base(self, name: str, role: str, facts: FactSet) -> dict[str, AttackOutcome]:
        """The base forms and paraphrases of ``facts`` judged on the model of ``role`` alone,
        against chance (whether it knows them); an endpoint fault makes them blocking "not run"."""
        model = getattr(self.models, role)
        base = {f.id: direct(f, self.context) + paraphrase(f, self.context) for f in facts}
        alone = dataclasses.replace(self.scorer, log=None)
        try:
            return alone.judge(name, base, ClaimModels(model)).outcomes
        except EndpointError as error:
            return not_run(name, facts, str(error), blocking=True)

    def accuracy(self, role: str) -> dict[str, float] | None:
        """Each claim fact's accuracy on the model of ``role``: the share of its base forms and
        paraphrases whose answer has the highest p̂ of its options (the answer a greedy
        multiple-choice reader gives). None when the endpoint fails."""
        model = getattr(self.models, role)
        probes = {f.id: direct(f, self.context) + paraphrase(f, self.context) for f in self.facts}
        try:
            return self.scorer.accuracy(model, probes)
        except EndpointError:
            return None

    def correct(
        self,
        results: Mapping[str, AttackResult],
        power: Mapping[str, AttackResult | None] | None = None,
    ) -> None:
        """Decide the claim's tests: Benjamini–Hochberg over every (fact, attack) test of the
        claim's facts; the same over the power tests on the original, whose decisions become each
        outcome's `power`; then the greedy outputs of the recovered outcomes' strongest probes."""
        self._benjamini_hochberg(results, check_pools=self.models.original is None)
        measured = {name: r for name, r in (power or {}).items() if r is not None}
        self._benjamini_hochberg(measured, check_pools=False)
        for name, on_original in measured.items():
            for fact in self.facts:
                _set_power(results[name].outcomes[fact.id], on_original.outcomes[fact.id])
        for result in results.values():
            _show_outputs(result, [result.outcomes[f.id] for f in self.facts])

    def _benjamini_hochberg(
        self, results: Mapping[str, AttackResult], *, check_pools: bool
    ) -> None:
        """Correct the tests of ``results`` together (m tests at level alpha).

        With ``check_pools`` (no original, so no measured power), a test that did not survive and
        whose chance pool is too small to reach its corrected level alone (its least p-value,
        1/(1 + pool), above alpha/m) is "not run": it could not have found the fact had it leaked
        alone, so it vouches for nothing. With an original, each attack's power on the original
        is measured instead (`power`).
        """
        tested = [
            (name, result.outcomes[f.id])
            for name, result in results.items()
            for f in self.facts
            if result.outcomes[f.id].p_value is not None
        ]
        alpha = self.settings.alpha
        kept = benjamini_hochberg([o.p_value or 1.0 for _, o in tested], alpha)
        level = alpha / max(len(tested), 1)
        for (name, outcome), survives in zip(tested, kept, strict=True):
            outcome.significant = survives and outcome.significant  # decided: effect > tolerance
            outcome.outcome = "recovered" if outcome.significant else "not recovered"
            if check_pools and not outcome.significant and (1 + outcome.null_n) * level < 1:
                outcome.outcome = "not run"
                outcome.blocking = name not in self.optional
                outcome.reason = (
                    f"{outcome.null_n} control statistics cannot reach the corrected level "
                    f"alpha/m = {level:.2g} (the least p-value is 1/{outcome.null_n + 1}): "
                    "add control subjects or facts of this relation"
                )

    def config(self, **extra: Any) -> dict[str, Any]:
        """The verdict's configuration record: model identities, settings and ``extra``."""
        s = self.settings
        return {
            **self.models.identities(),
            **extra,
            "alpha": s.alpha,
            "tolerance": s.tolerance,
            "readout": s.readout,
            "seed": s.seed,
            "kind": self.kind,
        }

    def finish(
        self, status: Status, verdicts: list[FactVerdict], config: dict[str, Any]
    ) -> Verdict:
        """The verdict, logged and published; raised as the settings say."""
        __tracebackhide__ = True  # pytest shows the test's line, not this frame
        facts = self.facts
        name = self.settings.claim or (
            f"{self.kind}: {facts[0].id}" if len(facts) == 1 else f"{self.kind}: {len(facts)} facts"
        )
        verdict = Verdict(name, status, verdicts, config)
        s = self.settings
        return finish(
            verdict, self.log, raise_on_fail=s.raise_on_fail, on_inconclusive=s.on_inconclusive
        )


def _digest(*parts: Any) -> str:
    """A digest of JSON-ready ``parts`` (what a power run was computed on)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _run(
    attack: Attack, facts: FactSet, context: ProbeContext, models: ClaimModels, scorer: ClaimScorer
) -> AttackResult:
    """``attack`` run on ``models``: "not run" for every fact when the model lacks a capability
    the attack needs or its endpoint fails after the retries."""
    missing = missing_capabilities(models.model, attack.needs)
    if missing:
        reason = f"needs {', '.join(missing)}, which {models.model.spec} does not offer"
        return AttackResult(not_run(attack.name, context.claim, reason, blocking=True))
    try:
        return attack.run(facts, context, models, scorer)
    except EndpointError as error:
        return AttackResult(not_run(attack.name, context.claim, str(error), blocking=True))
    except PromptTooLongError as error:
        raise PromptTooLongError(f"attack {attack.name!r}: {error}") from None


def _set_power(outcome: AttackOutcome, on_original: AttackOutcome) -> None:
    """Record on ``outcome`` whether its attack recovered the fact from the original."""
    measured = on_original.outcome != "not run" or on_original.p_value is not None
    # An attack whose probes the original answers none of is not run there, without power.
    outcome.power = on_original.significant if measured else on_original.power
    scalars = {k: v for k, v in on_original.extra.items() if isinstance(v, int | float | str)}
    outcome.extra["on_original"] = {
        "outcome": on_original.outcome,
        "effect": on_original.effect,
        "p_value": on_original.p_value,
        "reason": on_original.reason,
        **scalars,  # e.g. the relearned original's retain accuracy
    }


def _show_outputs(result: AttackResult, outcomes: list[AttackOutcome]) -> None:
    """Greedy outputs of the result's model for the strongest evidence of recovered outcomes."""
    targets = [o for o in outcomes if o.significant and o.evidence and not o.evidence[0].output]
    model = result.shown_by
    if not targets or model is None or "generation" not in capabilities_of(model):
        return
    prompts = [o.evidence[0].probe.prompt for o in targets]
    try:
        texts = generate(model, prompts, max_new_tokens=OUTPUT_TOKENS)  # type: ignore[arg-type]
    except EndpointError as error:
        for outcome in targets:
            outcome.extra["output_not_generated"] = str(error)
        return
    for outcome, samples in zip(targets, texts, strict=True):
        outcome.evidence[0] = dataclasses.replace(outcome.evidence[0], output=samples[0])


def finish(
    verdict: Verdict,
    log: RunLog | None,
    *,
    raise_on_fail: bool,
    on_inconclusive: Literal["raise", "return"] = "return",
    error: type[ForgettingAssertionError] = ForgettingAssertionError,
) -> Verdict:
    """End a claim: its cases and verdict in the run log, the verdict published, and ``error``
    raised on FAIL (with ``raise_on_fail``) or `InconclusiveError` on INCONCLUSIVE (with
    ``on_inconclusive="raise"``)."""
    __tracebackhide__ = True  # pytest shows the test's line, not this frame
    if log is not None:
        for fact in verdict.facts:
            for outcome in fact.attacks:
                for result in outcome.cases or outcome.evidence:
                    log.write(
                        "case",
                        {
                            "claim": verdict.claim,
                            "fact_id": fact.fact_id,
                            "attack": outcome.attack,
                            **result.to_dict(),
                        },
                    )
        log.write("verdict", verdict.to_dict())
    events.publish(verdict)
    if verdict.status == "FAIL" and raise_on_fail:
        raise error(verdict)
    if verdict.status == "INCONCLUSIVE" and on_inconclusive == "raise":
        raise InconclusiveError(verdict)
    return verdict
