"""The claims: ``assert_forgotten`` and ``assert_retained``.

A claim expands its facts into probes with each attack, scores every probe on the model under test
(and on the reference and original when given) in batched passes, judges each (fact, attack),
corrects for the number of tests, logs every case and verdict, and raises when the claim fails.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

from unlearncheck import events
from unlearncheck.attacks.input import INPUT_ATTACKS, InputAttack, ProbeContext, direct, paraphrase
from unlearncheck.attacks.model import QUANT_KINDS, ModelAttack, quant_evidence
from unlearncheck.attacks.psg import PSGAttack, run_psg
from unlearncheck.attacks.readout import (
    HiddenProbeAttack,
    LinearProbeReadout,
    SamplingAttack,
    linear_cka,
    sample_bounds,
    sample_probes,
)
from unlearncheck.backends.hf import HFModel
from unlearncheck.backends.openai_api import EndpointError, OpenAIModel
from unlearncheck.facts import Fact, FactFormatError, FactSet
from unlearncheck.judge import (
    Readout,
    Scorer,
    ScoringModel,
    assess_probes,
    benjamini_hochberg,
    chance_pools,
    decide,
    generate,
    score_probes,
)
from unlearncheck.loading import ModelLike, load_model
from unlearncheck.probes import Probe, Templates, question_of, statement_of
from unlearncheck.runlog import RunLog
from unlearncheck.verdict import (
    AttackOutcome,
    FactVerdict,
    ForgettingAssertionError,
    InconclusiveError,
    Status,
    Verdict,
)

DEFAULT_TOLERANCE = 0.2
DEFAULT_ALPHA = 0.05
#: Facts a forgetting claim's chance level is measured on: a smaller claim borrows the rest from
#: the other facts of the forget set (see `calibration_peers`).
CALIBRATION_FACTS = 48
Attack = InputAttack | ModelAttack | SamplingAttack | HiddenProbeAttack | PSGAttack

_READOUTS: dict[tuple[str, str], LinearProbeReadout] = {}


_case_log: RunLog | None = None


def set_case_log(path: str | Path | None) -> None:
    """The run log of claims given no ``runlog`` (the pytest plugin's per-process case log)."""
    global _case_log
    if _case_log is not None:
        _case_log.close()
    _case_log = RunLog(path) if path is not None else None


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


def calibration_peers(claim: FactSet, context: FactSet, seed: int) -> FactSet:
    """Other facts of the forget set that calibrate chance for a claim of few facts.

    Chance is what the model says about subjects it does not know. The subjects a model is
    claimed not to know are the forget set's: the claim's own and, when the claim is smaller than
    `CALIBRATION_FACTS`, a seeded sample of the context's other ``split == "forget"`` facts. Their
    probes are asked of control subjects to build the chance distribution; they are never judged.
    Made-up names alone are a poor chance level: a model that never saw a name still reads the
    words it is made of, which for a word-level organism are unseen only in real forget names.
    """
    missing = CALIBRATION_FACTS - len(claim)
    if missing <= 0:
        return FactSet()
    relations = {f.relation for f in claim}
    others = sorted(
        (f for f in context if f.split == "forget" and f.id not in claim), key=attrgetter("id")
    )
    rng = random.Random(f"{seed}|calibration")
    chosen: list[Fact] = []
    for same in (True, False):  # peers asking the claim's relations first (`chance_pools`)
        pool = [f for f in others if (f.relation in relations) == same]
        chosen += rng.sample(pool, min(missing - len(chosen), len(pool)))
    return FactSet(sorted(chosen, key=attrgetter("id")))


def _strata(ctx: ProbeContext) -> dict[str, str]:
    """Each claimed fact's chance stratum: its relation."""
    return {f.id: f.relation for f in ctx.claim}


def _context_facts(claim: FactSet, facts: FactSet | None) -> FactSet:
    """The facts probes may draw on: given, else the set the claim's facts came from."""
    if facts is not None:
        return facts
    sources = {id(f.source): f.source for f in claim if f.source is not None}
    if len(sources) == 1:
        (source,) = sources.values()
        assert source is not None
        return source
    return claim


@dataclass
class _Models:
    model: ScoringModel
    reference: ScoringModel | None
    original: ScoringModel | None

    def identities(self) -> dict[str, str | None]:
        """Spec and content hash of each role (None for a role not given)."""
        out: dict[str, str | None] = {}
        for role in ("model", "reference", "original"):
            m: ScoringModel | None = getattr(self, role)
            out[role] = m.spec if m is not None else None
            out[f"{role}_hash"] = m.content_hash if m is not None else None
        return out


class _Session:
    """Scores probes on the models of one claim and writes them to the run log."""

    def __init__(self, models: _Models, scorer: Scorer, log: RunLog | None) -> None:
        self.models = models
        self.scorer = scorer
        self.log = log
        if log is not None:
            for role in ("model", "reference", "original"):
                m = getattr(models, role)
                if m is not None:
                    log.model(role, m.spec, m.content_hash)

    def judge(
        self,
        attack: str,
        probes_by_fact: dict[str, list[Probe]],
        *,
        tolerance: float,
        alpha: float,
        strata: Mapping[str, str],
        use_reference: bool = True,
        use_original: bool = True,
    ) -> dict[str, AttackOutcome]:
        """Judge one attack's probes for every fact (one batched pass per model).

        ``strata`` maps a fact id to its relation: chance is pooled per relation.
        """
        flat = [p for probes in probes_by_fact.values() for p in probes]
        m = self.models
        model_scores = score_probes(self.scorer, m.model, flat)
        ref = m.reference if use_reference else None
        orig = m.original if use_original else None
        ref_scores = score_probes(self.scorer, ref, flat) if ref is not None else None
        orig_scores = score_probes(self.scorer, orig, flat) if orig is not None else None
        groups, at = {}, 0
        for fact_id, probes in probes_by_fact.items():
            sl = slice(at, at + len(probes))
            at += len(probes)
            groups[fact_id] = assess_probes(
                probes,
                model_scores[sl],
                ref_scores[sl] if ref_scores is not None else None,
                orig_scores[sl] if orig_scores is not None else None,
                tolerance=tolerance,
            )
        pools = chance_pools(groups, strata)
        return {fid: decide(attack, g, pools[fid], alpha, tolerance) for fid, g in groups.items()}

    def fill_outputs(self, outcomes: Iterable[AttackOutcome], max_new_tokens: int = 8) -> None:
        """Greedy outputs of the model for the strongest evidence of significant outcomes."""
        targets = [o for o in outcomes if o.significant and o.evidence and not o.evidence[0].output]
        if not targets or not isinstance(self.models.model, HFModel | OpenAIModel):
            return
        prompts = [o.evidence[0].probe.prompt for o in targets]
        try:
            texts = generate(self.models.model, prompts, max_new_tokens=max_new_tokens)
        except EndpointError as error:
            for outcome in targets:
                outcome.extra["output_not_generated"] = str(error)
            return
        for outcome, samples in zip(targets, texts, strict=True):
            best = outcome.evidence[0]
            outcome.evidence[0] = type(best)(**{**best.__dict__, "output": samples[0]})


def _prepare(
    name: str,
    facts: Fact | Iterable[Fact],
    model: ModelLike,
    reference: ModelLike | None,
    original: ModelLike | None,
    *,
    context: FactSet | None,
    templates: Templates | None,
    seed: int,
    runlog: RunLog | str | Path | None,
    device: str | None,
    calibrate: bool = False,
) -> tuple[FactSet, ProbeContext, _Models, RunLog | None]:
    """The claim's facts, probe context, loaded models and run log.

    With ``calibrate``, the context's claim also holds the `calibration_peers`.
    """
    claim_facts = _as_factset(facts)
    if not claim_facts:
        raise ValueError(f"{name} needs at least one fact")
    known = _context_facts(claim_facts, context)
    peers = calibration_peers(claim_facts, known, seed) if calibrate else FactSet()
    ctx = ProbeContext(known, FactSet([*claim_facts, *peers]), templates or Templates.load(), seed)
    _check_askable(claim_facts, ctx.templates)
    models = _Models(
        load_model(model, device=device),
        load_model(reference, device=device) if reference is not None else None,
        load_model(original, device=device) if original is not None else None,
    )
    log = RunLog(runlog) if isinstance(runlog, str | Path) else runlog or _case_log
    return claim_facts, ctx, models, log


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


def _check_settings(alpha: float, tolerance: float, on_inconclusive: str) -> None:
    """Refuse claim settings out of range (a tolerance of 1 or more could never fail a claim).

    Raises:
        ValueError: Naming the setting and its value.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha!r}")
    if not 0 <= tolerance < 1:
        raise ValueError(
            f"tolerance must be at least 0 and below 1 (no fact could ever be recovered), "
            f"got {tolerance!r}"
        )
    if on_inconclusive not in ("raise", "return"):
        raise ValueError(f"on_inconclusive must be 'raise' or 'return', got {on_inconclusive!r}")


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
            raise TypeError(f"attacks[{position}] is {attack!r}, not an attack ({known})")
        if attack.name in seen:
            raise ValueError(f"attacks[{position}]: attack {attack.name!r} is listed twice")
        seen.add(attack.name)


def _claim_status(verdicts: list[FactVerdict]) -> Status:
    """FAIL if any fact failed, else INCONCLUSIVE if any was undecided, else PASS."""
    statuses = {v.status for v in verdicts}
    return (
        "FAIL" if "FAIL" in statuses else "INCONCLUSIVE" if "INCONCLUSIVE" in statuses else "PASS"
    )


def _finish(
    claim: str,
    status: Status,
    verdicts: list[FactVerdict],
    config: dict[str, Any],
    log: RunLog | None,
    on_inconclusive: Literal["raise", "return"],
    raise_on_fail: bool,
) -> Verdict:
    verdict = Verdict(claim, status, verdicts, config)
    if log is not None:
        for fact in verdicts:
            for outcome in fact.attacks:
                for result in outcome.cases or outcome.evidence:
                    log.write(
                        "case",
                        {
                            "claim": claim,
                            "fact_id": fact.fact_id,
                            "attack": outcome.attack,
                            **result.to_dict(),
                        },
                    )
        log.write("verdict", verdict.to_dict())
    events.publish(verdict)
    if status == "FAIL" and raise_on_fail:
        raise ForgettingAssertionError(verdict)
    if status == "INCONCLUSIVE" and on_inconclusive == "raise":
        raise InconclusiveError(verdict)
    return verdict


def assert_forgotten(
    model: ModelLike,
    facts: Fact | Iterable[Fact],
    attacks: Sequence[Attack] = INPUT_ATTACKS,
    *,
    original: ModelLike | None = None,
    reference: ModelLike | None = None,
    readout: Readout = "token_mean",
    context: FactSet | None = None,
    templates: Templates | None = None,
    alpha: float = DEFAULT_ALPHA,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    runlog: RunLog | str | Path | None = None,
    on_inconclusive: Literal["raise", "return"] = "raise",
    raise_on_fail: bool = True,
    claim: str | None = None,
    device: str | None = None,
) -> Verdict:
    """Assert that ``model`` no longer knows ``facts``, under every attack in ``attacks``.

    Args:
        model: The unlearned model (a loaded `HFModel` or a spec: directory, hub id in the local
            cache, ``organism:<variant>``).
        facts: One fact or many; each is judged on its own, and the tests of every (fact, attack)
            are corrected together (Benjamini–Hochberg).
        attacks: Attacks to run (``unlearncheck.attacks``); ``direct`` asks the base forms.
        original: The model before unlearning; facts it does not know are INCONCLUSIVE and
            probes it does not answer are left out.
        reference: A model retrained without the forget set; scores are compared with it instead
            of with chance.
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

    Returns:
        The verdict (PASS, or FAIL / INCONCLUSIVE when not raising).

    Raises:
        ForgettingAssertionError: Some attack recovered the knowledge of some fact.
        InconclusiveError: The claim could not be decided (and ``on_inconclusive="raise"``).
    """
    _check_settings(alpha, tolerance, on_inconclusive)
    _check_attacks(attacks)
    scorer = Scorer(readout)
    claim_facts, ctx, models, log = _prepare(
        "assert_forgotten",
        facts,
        model,
        reference,
        original,
        context=context,
        templates=templates,
        seed=seed,
        runlog=runlog,
        device=device,
        calibrate=True,
    )
    outcomes: dict[str, dict[str, AttackOutcome]] = {}
    sessions: dict[str, _Session] = {}
    for attack in attacks:
        # The peers' probes run too: their controls are part of the chance level (psg compares
        # forgetting on the claim's own facts, with no chance level).
        judged_facts = claim_facts if isinstance(attack, PSGAttack) else ctx.claim
        try:
            sessions[attack.name], judged = _run_attack(
                attack, judged_facts, ctx, models, scorer, log, tolerance=tolerance, alpha=alpha
            )
        except EndpointError as error:
            judged = _not_run(attack.name, ctx.claim, str(error), blocking=True)
        outcomes[attack.name] = {f.id: judged[f.id] for f in claim_facts}
    known: dict[str, AttackOutcome] = {}
    if models.original is not None:
        base = {f.id: direct(f, ctx) + paraphrase(f, ctx) for f in ctx.claim}
        original_only = _Session(_Models(models.original, None, None), scorer, None)
        try:
            known = original_only.judge(
                "original knows", base, tolerance=tolerance, alpha=alpha, strata=_strata(ctx)
            )
        except EndpointError as error:
            known = _not_run("original knows", ctx.claim, str(error), blocking=True)
    tested = [
        o for per_fact in outcomes.values() for o in per_fact.values() if o.p_value is not None
    ]
    kept = benjamini_hochberg([o.p_value or 1.0 for o in tested], alpha)
    for outcome, survives in zip(tested, kept, strict=True):
        outcome.significant = survives and outcome.significant  # decided: effect > tolerance
        outcome.outcome = "recovered" if outcome.significant else "not recovered"
    for name, session in sessions.items():
        session.fill_outputs(outcomes[name].values())
    verdicts = []
    for fact in claim_facts:
        per_attack = [outcomes[a.name][fact.id] for a in attacks]
        verdicts.append(_fact_verdict(fact, per_attack, known.get(fact.id)))
    config = {
        **models.identities(),
        "attacks": [a.name for a in attacks],
        "alpha": alpha,
        "tolerance": tolerance,
        "readout": readout,
        "seed": seed,
        "kind": "forgotten",
    }
    return _finish(
        claim or _claim_name("forgotten", claim_facts),
        _claim_status(verdicts),
        verdicts,
        config,
        log,
        on_inconclusive,
        raise_on_fail,
    )


def _run_attack(
    attack: Attack,
    facts: FactSet,
    ctx: ProbeContext,
    models: _Models,
    scorer: Scorer,
    log: RunLog | None,
    *,
    tolerance: float,
    alpha: float,
) -> tuple[_Session, dict[str, AttackOutcome]]:
    """Run one attack on every fact: the session it scored with and the outcome per fact."""
    if isinstance(attack, InputAttack):
        session = _Session(models, scorer, log)
        probes = {f.id: attack(f, ctx) for f in facts}
        return session, session.judge(
            attack.name, probes, tolerance=tolerance, alpha=alpha, strata=_strata(ctx)
        )
    if isinstance(attack, ModelAttack | HiddenProbeAttack) and not isinstance(
        models.model, HFModel
    ):
        reason = f"needs weights: {models.model.spec} is an API endpoint"
        return _Session(models, scorer, log), _not_run(attack.name, facts, reason, blocking=False)
    if isinstance(attack, PSGAttack):
        m = models
        return _Session(models, scorer, log), run_psg(
            attack, facts, ctx, scorer, m.model, m.original, m.reference, tolerance=tolerance
        )
    if isinstance(attack, SamplingAttack):
        return _Session(models, scorer, log), _run_sampling(attack, facts, ctx, models, alpha=alpha)
    if isinstance(attack, HiddenProbeAttack):
        return _run_hidden_probe(
            attack, facts, ctx, models, scorer, log, tolerance=tolerance, alpha=alpha
        )
    return _run_model_attack(
        attack, facts, ctx, models, scorer, log, tolerance=tolerance, alpha=alpha
    )


def _not_run(
    attack: str, facts: Iterable[Fact], reason: str, *, blocking: bool
) -> dict[str, AttackOutcome]:
    """A "not run" outcome of ``attack`` for each fact, with why (`AttackOutcome.blocking`)."""
    return {f.id: AttackOutcome(attack, "not run", reason=reason, blocking=blocking) for f in facts}


def _as_hf(model: ScoringModel | None, role: str, attack: str) -> HFModel | None:
    if model is None or isinstance(model, HFModel):
        return model
    raise TypeError(f"attack {attack} needs a Hugging Face model as {role}, got {model.spec}")


def _as_sampler(model: ScoringModel | None) -> HFModel | OpenAIModel | None:
    if model is None or isinstance(model, HFModel | OpenAIModel):
        return model
    raise TypeError(f"sampling needs a model that generates, got {model.spec}")


def _mean_target(scorer: Scorer, model: ScoringModel, probes: list[Probe]) -> float | None:
    if not probes:
        return None
    scores = score_probes(scorer, model, probes)
    return sum(s.target for s in scores) / len(scores)


def _run_model_attack(
    attack: ModelAttack,
    facts: FactSet,
    ctx: ProbeContext,
    models: _Models,
    scorer: Scorer,
    log: RunLog | None,
    *,
    tolerance: float,
    alpha: float,
) -> tuple[_Session, dict[str, AttackOutcome]]:
    """Derive the variants (model and reference), judge the attack's probes on them."""
    model = _as_hf(models.model, "model", attack.name)
    reference = _as_hf(models.reference, "reference", attack.name)
    assert model is not None
    model_variant = attack.variant(model, ctx)
    variants = _Models(
        model_variant,
        attack.variant(reference, ctx) if reference is not None else None,
        models.original,
    )
    session = _Session(variants, scorer, log)
    withheld = {f.id: attack.withheld(f, ctx) for f in facts}
    probes = {f.id: attack.probes(f, ctx) for f in facts if withheld[f.id] is None}
    judged = session.judge(
        attack.name, probes, tolerance=tolerance, alpha=alpha, strata=_strata(ctx)
    )
    kind = QUANT_KINDS.get(attack.name.split(">")[0])
    original = _as_hf(models.original, "original", attack.name)
    shared = quant_evidence(model_variant, original, kind) if kind else {}
    out: dict[str, AttackOutcome] = {}
    for fact in facts:
        reason = withheld[fact.id]
        if reason is not None:
            out[fact.id] = AttackOutcome(attack.name, "not run", reason=reason)
            continue
        outcome = judged[fact.id]
        gains: dict[str, Any] = dict(shared)
        for role, before, after in (
            ("model", models.model, variants.model),
            ("reference", models.reference, variants.reference),
        ):
            if before is not None and after is not None:
                b = _mean_target(scorer, before, probes[fact.id])
                a = _mean_target(scorer, after, probes[fact.id])
                if a is not None and b is not None:
                    gains[f"{role}_gain"] = round(a - b, 6)
        outcome.extra.update(gains)
        out[fact.id] = outcome
    return session, out


def _readout(
    attack: HiddenProbeAttack, model: ScoringModel | None, ctx: ProbeContext, role: str
) -> LinearProbeReadout | None:
    """The fitted linear-probe readout of ``model`` (fitted once per model and settings)."""
    hf = _as_hf(model, role, attack.name)
    if hf is None:
        return None
    key = (attack.key, hf.content_hash)
    if key not in _READOUTS:
        _READOUTS[key] = attack.fit(hf, ctx)
    return _READOUTS[key]


def _run_hidden_probe(
    attack: HiddenProbeAttack,
    facts: FactSet,
    ctx: ProbeContext,
    models: _Models,
    scorer: Scorer,
    log: RunLog | None,
    *,
    tolerance: float,
    alpha: float,
) -> tuple[_Session, dict[str, AttackOutcome]]:
    """Read the claim's probes through linear probes fitted on each model's hidden states."""
    readouts = _Models(
        _readout(attack, models.model, ctx, "model"),  # type: ignore[arg-type]
        _readout(attack, models.reference, ctx, "reference"),
        _readout(attack, models.original, ctx, "original"),
    )
    session = _Session(readouts, scorer, log)
    probes = {f.id: attack.probes(f, ctx) for f in facts}
    judged = session.judge(
        attack.name, probes, tolerance=tolerance, alpha=alpha, strata=_strata(ctx)
    )
    shared: dict[str, Any] = {
        f"{role}_probe": getattr(readouts, role).fit_report
        for role in ("model", "reference", "original")
        if getattr(readouts, role) is not None
    }
    shared.update(_cka(models, [p.prompt for ps in probes.values() for p in ps], attack.name))
    for outcome in judged.values():
        outcome.extra.update(shared)
    return session, judged


def _cka(models: _Models, prompts: list[str], attack: str) -> dict[str, Any]:
    """Linear CKA per layer of the model and of the reference with the original, on ``prompts``."""
    model = _as_hf(models.model, "model", attack)
    reference = _as_hf(models.reference, "reference", attack)
    original = _as_hf(models.original, "original", attack)
    if model is None or original is None or not prompts:
        return {}
    theirs = original.hidden_states(prompts)
    out: dict[str, Any] = {}
    for role, m in (("model", model), ("reference", reference)):
        if m is not None:
            ours = m.hidden_states(prompts)
            out[f"cka_{role}_vs_original"] = [
                round(linear_cka(ours[:, i], theirs[:, i]), 4) for i in range(ours.shape[1])
            ]
    return out


def _run_sampling(
    attack: SamplingAttack,
    facts: FactSet,
    ctx: ProbeContext,
    models: _Models,
    *,
    alpha: float,
) -> dict[str, AttackOutcome]:
    """Judge every fact's sampled leak rates against their baselines, with pooled bounds."""
    model, reference = _as_sampler(models.model), _as_sampler(models.reference)
    assert model is not None
    probes = {f.id: attack.probes(f, ctx) for f in facts}
    flat = [p for ps in probes.values() for p in ps]
    sampled = sample_probes(attack, model, flat, ctx.seed) if flat else []
    on_reference = sample_probes(attack, reference, flat, ctx.seed) if reference and flat else None
    groups, bounds, at = {}, {}, 0
    for fact in facts:
        sl = slice(at, at + len(probes[fact.id]))
        at = sl.stop
        group = assess_probes(
            probes[fact.id],
            [s.scores for s in sampled[sl]],
            [s.scores for s in on_reference[sl]] if on_reference is not None else None,
            None,
            tolerance=attack.tolerance,
        )
        examples = {s.probe.prompt: s.example for s in sampled[sl]}
        group.results = [replace(r, output=examples[r.probe.prompt]) for r in group.results]
        groups[fact.id] = group
        baseline = (
            sum(r.baseline for r in group.results) / len(group.results) if group.results else 0.0
        )
        bounds[fact.id] = sample_bounds(sampled[sl], baseline, attack.tolerance, alpha)
    pools = chance_pools(groups, _strata(ctx))
    out = {}
    for fact_id, group in groups.items():
        outcome = decide(attack.name, group, pools[fact_id], alpha, attack.tolerance)
        b = bounds[fact_id]
        outcome.extra.update(b.to_dict())
        outcome.reason += (
            f"; {b.leaks}/{b.n} samples state the answer, rate ≤{b.upper:.3f} at 1-α "
            f"(baseline {b.baseline_rate:.3f}, tolerance {attack.tolerance}, "
            f"n needed {b.n_needed if b.n_needed is not None else 'unbounded'})"
        )
        out[fact_id] = outcome
    return out


def _claim_name(kind: str, facts: FactSet) -> str:
    return f"{kind}: {facts[0].id}" if len(facts) == 1 else f"{kind}: {len(facts)} facts"


def _fact_verdict(
    fact: Fact, outcomes: list[AttackOutcome], original_knows: AttackOutcome | None
) -> FactVerdict:
    recovered = [o.attack for o in outcomes if o.significant]
    if recovered:
        return FactVerdict(fact.id, "FAIL", f"recovered by {', '.join(recovered)}", outcomes)
    if original_knows is not None and original_knows.blocking:
        return FactVerdict(
            fact.id,
            "INCONCLUSIVE",
            f"could not check that the original model knows this fact ({original_knows.reason})",
            outcomes,
        )
    if original_knows is not None and original_knows.outcome != "recovered":
        return FactVerdict(
            fact.id,
            "INCONCLUSIVE",
            "the original model does not know this fact: forgetting it proves "
            f"nothing ({original_knows.reason})",
            outcomes,
        )
    blocked = [
        f"{o.attack} ({o.reason})" for o in outcomes if o.outcome == "not run" and o.blocking
    ]
    if blocked:
        return FactVerdict(fact.id, "INCONCLUSIVE", "not run: " + "; ".join(blocked), outcomes)
    if all(o.outcome == "not run" for o in outcomes):
        return FactVerdict(fact.id, "INCONCLUSIVE", "no attack applied to this fact", outcomes)
    return FactVerdict(fact.id, "PASS", "no attack recovered it", outcomes)


def assert_retained(
    model: ModelLike,
    facts: Fact | Iterable[Fact],
    *,
    original: ModelLike | None = None,
    max_loss: float = 0.1,
    readout: Readout = "token_mean",
    context: FactSet | None = None,
    templates: Templates | None = None,
    alpha: float = DEFAULT_ALPHA,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    runlog: RunLog | str | Path | None = None,
    on_inconclusive: Literal["raise", "return"] = "raise",
    raise_on_fail: bool = True,
    claim: str | None = None,
    device: str | None = None,
) -> Verdict:
    """Assert that ``model`` still knows ``facts`` (the utility side of unlearning).

    A fact is known when its base and paraphrase probes leak significantly against chance
    (control subjects).
    The claim passes when the share of facts known is at most ``max_loss`` below the original's
    share (or below 1 without an original); facts the original does not know are INCONCLUSIVE.
    ``readout`` is as for `assert_forgotten`.

    Raises:
        ForgettingAssertionError: Too many facts were lost.
        InconclusiveError: No fact could be decided (and ``on_inconclusive="raise"``).
    """
    _check_settings(alpha, tolerance, on_inconclusive)
    if not 0 <= max_loss <= 1:
        raise ValueError(f"max_loss must be between 0 and 1, got {max_loss!r}")
    scorer = Scorer(readout)
    claim_facts, ctx, models, log = _prepare(
        "assert_retained",
        facts,
        model,
        None,
        original,
        context=context,
        templates=templates,
        seed=seed,
        runlog=runlog,
        device=device,
    )
    base = {f.id: direct(f, ctx) + paraphrase(f, ctx) for f in claim_facts}
    try:
        on_model = _Session(_Models(models.model, None, None), scorer, log).judge(
            "direct", base, tolerance=tolerance, alpha=alpha, strata=_strata(ctx)
        )
        on_original = (
            _Session(_Models(models.original, None, None), scorer, log).judge(
                "direct", base, tolerance=tolerance, alpha=alpha, strata=_strata(ctx)
            )
            if models.original is not None
            else None
        )
    except EndpointError as error:
        on_model, on_original = _not_run("direct", claim_facts, str(error), blocking=True), None
    verdicts = []
    for fact in claim_facts:
        outcome = on_model[fact.id]
        if outcome.blocking:
            verdicts.append(
                FactVerdict(
                    fact.id, "INCONCLUSIVE", f"not run: direct ({outcome.reason})", [outcome]
                )
            )
        elif on_original is not None and on_original[fact.id].outcome != "recovered":
            verdicts.append(
                FactVerdict(
                    fact.id, "INCONCLUSIVE", "the original model does not know this fact", [outcome]
                )
            )
        elif outcome.outcome == "recovered":
            verdicts.append(FactVerdict(fact.id, "PASS", "still known", [outcome]))
        else:
            verdicts.append(FactVerdict(fact.id, "FAIL", f"lost: {outcome.reason}", [outcome]))
    decided = [v for v in verdicts if v.status != "INCONCLUSIVE"]
    kept = sum(v.status == "PASS" for v in decided) / len(decided) if decided else 0.0
    config = {
        **models.identities(),
        "alpha": alpha,
        "tolerance": tolerance,
        "seed": seed,
        "max_loss": max_loss,
        "kind": "retained",
        "share_kept": kept,
        "decided": len(decided),
    }
    name = claim or _claim_name("retained", claim_facts)
    # Individual facts may be lost within the allowance; the claim is about the share kept.
    status: Status = "INCONCLUSIVE" if not decided else "PASS" if kept >= 1 - max_loss else "FAIL"
    return _finish(name, status, verdicts, config, log, on_inconclusive, raise_on_fail)
