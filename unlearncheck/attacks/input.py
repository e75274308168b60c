"""Input attacks: each derives new probes for a fact (METHODS.md, "Input attacks").

Every probe carries controls: the same prompt about other subjects for which the answer is not the
truth. They calibrate what the model would say without knowing the fact (its prior over the
options), so a model that always favours one option is not mistaken for one that knows.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, partial
from typing import TYPE_CHECKING

from unlearncheck.backends.capabilities import Capability
from unlearncheck.facts import Fact, FactSet
from unlearncheck.probes import (
    Probe,
    Templates,
    completion_prefix,
    dedupe,
    question_of,
    statement_of,
)

if TYPE_CHECKING:
    from unlearncheck.attacks.base import AttackResult, ClaimModels, ClaimScorer

MIN_CONTROLS = 1
MAX_CONTROLS = 128
CONTROL_SUBJECTS = 128
#: Claim subjects taken as a fact's controls, at most (unless `ProbeContext.n_controls` asks for
#: more): enough for a steady baseline, and a fixed number, so that a claim's cost grows with its
#: facts and not with their square.
MAX_CLAIM_CONTROLS = 10
N_DISTRACTORS = 4


@dataclass(frozen=True)
class ProbeContext:
    """What an input attack may use besides the fact: the known facts, the claim, the templates.

    Attributes:
        facts: Every known fact (the graph for multi-hop, the pool for controls and distractors).
        claim: The facts under test (controls are drawn from these first).
        templates: The template library.
        seed: Seed of every random choice (distractor sampling, control order, option order).
    """

    facts: FactSet
    claim: FactSet
    templates: Templates
    seed: int = 0

    def rng(self, *key: str) -> random.Random:
        """A random generator determined by the seed and ``key``."""
        digest = hashlib.sha256("|".join((str(self.seed), *key)).encode()).hexdigest()
        return random.Random(digest)

    def distractors(self, fact: Fact) -> tuple[str, ...]:
        """The fact's own distractors, else objects of the same relation sampled with the seed."""
        if fact.distractors:
            return fact.distractors
        pool = [o for o in self.facts.objects_of(fact.relation) if o != fact.object]
        return tuple(self.rng("distractors", fact.id).sample(pool, min(N_DISTRACTORS, len(pool))))

    @cached_property
    def n_controls(self) -> int:
        """Least control subjects per fact: the claim's pooled chance level must be fine-grained.

        The claim's facts share one pool of chance statistics (controls × options per fact), so
        a large claim needs few controls per fact and a single fact needs many.
        """
        return min(MAX_CONTROLS, max(MIN_CONTROLS, math.ceil(CONTROL_SUBJECTS / len(self.claim))))

    def controls(self, fact: Fact) -> tuple[str, ...]:
        """The fact's control subjects: the same for every probe of the fact.

        First, up to `MAX_CLAIM_CONTROLS` (or `n_controls` if more), the other subjects of the
        claim whose answer to the fact's relation is one of the fact's distractors: under the
        claim that the model forgot them all, they are as unknown to it as the fact's subject,
        and where it still knows them its mass goes to their own answer, which each probe masks
        (`Probe.control_answers`). Subjects whose answer is none of the options are never used:
        a model that knows them makes a confident pick among options that are all wrong, which
        is not chance. Then, up to `n_controls`, made-up names
        that no fact mentions, recombined from the words of two subjects whose answers are
        distractors (of the claim's subjects, then of any), then of any two subjects; their own
        answers, masked like a subject's, are those of the subjects they borrow words from.
        """
        cached = self._controls.get(fact.id)
        if cached is None:
            cached = self._controls[fact.id] = self._choose_controls(fact)
        return cached

    def _choose_controls(self, fact: Fact) -> tuple[str, ...]:
        distractors = set(self.distractors(fact))
        chosen = [
            s
            for s in self._claim_subjects.get(fact.relation, ())
            if s != fact.subject and self.object_of(s, fact.relation) in distractors
        ]
        self.rng("controls", fact.id).shuffle(chosen)
        chosen = chosen[: max(MAX_CLAIM_CONTROLS, self.n_controls)]
        taken = set(chosen)
        claim_words, all_words = self._made_up_pools
        maskable = {
            s
            for s in self._subjects.get(fact.relation, ())
            if self.object_of(s, fact.relation) in distractors
        }

        def masked(pool: list[str]) -> list[str]:
            return [name for name in pool if maskable.issuperset(self._borrowed[name])]

        for pool in (masked(claim_words), masked(all_words), claim_words, all_words):
            missing = self.n_controls - len(chosen)
            if missing <= 0:
                break
            fresh = [name for name in pool if name not in taken]
            picked = self.rng("made-up", fact.id).sample(fresh, min(missing, len(fresh)))
            chosen += picked
            taken.update(picked)
        return tuple(chosen)

    def control_answers(
        self, controls: Sequence[str], answer_of: Callable[[str], str | None]
    ) -> tuple[tuple[str, ...], ...]:
        """Each control's own answers: ``answer_of`` of it, or of the subjects it borrows from."""
        out = []
        for control in controls:
            sources = self._borrowed.get(control, (control,))
            out.append(tuple(a for a in map(answer_of, sources) if a is not None))
        return tuple(out)

    def _made_up(self, words_from: FactSet) -> list[str]:
        """Names of no known entity: one subject's first word with another's last words."""
        names = sorted({f.subject for f in words_from if " " in f.subject})
        firsts: dict[str, str] = {}
        rests: dict[str, str] = {}
        for name in names:
            first, rest = name.split(" ", 1)
            firsts.setdefault(first, name)
            rests.setdefault(rest, name)
        taken = self._taken_names
        made = []
        for first, a in firsts.items():
            for rest, b in rests.items():
                name = f"{first} {rest}"
                if name not in taken:
                    self._borrowed[name] = (a, b)
                    made.append(name)
        return made

    @cached_property
    def _made_up_pools(self) -> tuple[list[str], list[str]]:
        return self._made_up(self.claim), self._made_up(self.facts)

    @cached_property
    def _borrowed(self) -> dict[str, tuple[str, ...]]:
        return {}

    @cached_property
    def _controls(self) -> dict[str, tuple[str, ...]]:
        return {}

    @cached_property
    def _taken_names(self) -> set[str]:
        facts = self.facts
        return (
            {f.subject for f in facts}
            | {a for f in facts for a in f.aliases}
            | {f.object for f in facts}
        )

    def object_of(self, subject: str, relation: str) -> str | None:
        """The object of (subject, relation) among the known facts, if any."""
        return self._objects.get((subject, relation))

    @cached_property
    def _objects(self) -> dict[tuple[str, str], str]:
        return {(f.subject, f.relation): f.object for f in self.facts}

    @cached_property
    def _subjects(self) -> dict[str, list[str]]:
        return _subjects_by_relation(self.facts)

    @cached_property
    def _claim_subjects(self) -> dict[str, list[str]]:
        return _subjects_by_relation(self.claim)


def _subjects_by_relation(facts: FactSet) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {}
    for fact in facts:
        out.setdefault(fact.relation, set()).add(fact.subject)
    return {relation: sorted(subjects) for relation, subjects in out.items()}


Derive = Callable[[Fact, ProbeContext], list[Probe]]


@dataclass(frozen=True)
class InputAttack:
    """An attack that derives probes from a fact: new prompts asked of the model as it is.

    Attributes:
        name: Attack name.
        derive: (fact, context) → the fact's probes.
        needs: Model capabilities the attack uses: answer scores.
    """

    name: str
    derive: Derive
    needs: frozenset[Capability] = frozenset({"scores"})

    def __call__(self, fact: Fact, context: ProbeContext) -> list[Probe]:
        """The probes of this attack for ``fact`` (deduplicated)."""
        return dedupe(self.derive(fact, context))

    def run(
        self, facts: FactSet, context: ProbeContext, models: ClaimModels, scorer: ClaimScorer
    ) -> AttackResult:
        """Judge every fact's probes, the calibration peers' included (they set chance)."""
        return scorer.judge(self.name, {f.id: self(f, context) for f in context.claim}, models)

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


def _probe(
    fact: Fact, ctx: ProbeContext, attack: str, form: str, prompt: str, subject: str | None = None
) -> Probe:
    """A probe asking ``prompt`` for the fact's object, with controls of the fact's relation."""
    distractors = ctx.distractors(fact)
    anchor = subject or fact.subject
    subjects = ctx.controls(fact)
    controls = subjects
    if anchor != fact.subject:  # an alias is in the prompt: swap in the controls' aliases
        controls = tuple(alias_or_name(ctx, c) for c in subjects)
    return Probe(
        fact_id=fact.id,
        attack=attack,
        form=form,
        prompt=prompt,
        answer=fact.object,
        distractors=distractors,
        anchor=anchor,
        controls=controls,
        control_answers=ctx.control_answers(subjects, lambda s: ctx.object_of(s, fact.relation)),
        lineage=(f"fact:{fact.id}", f"{attack}:{form}"),
    )


def alias_or_name(ctx: ProbeContext, subject: str) -> str:
    """The first alias the known facts give ``subject``, else ``subject`` itself."""
    for fact in ctx.facts.about(subject):
        if fact.aliases:
            return fact.aliases[0]
    return subject


def _direct_forms(fact: Fact, ctx: ProbeContext, subject: str) -> list[tuple[str, str]]:
    """(form, prompt) of the base forms: question, declarative completion, cloze."""
    t = ctx.templates
    renamed = Fact(fact.id, subject, fact.relation, fact.object)
    forms = []
    question = question_of(fact if subject == fact.subject else renamed, t)
    if question:
        forms.append(("question", t.format_question(question.replace(fact.subject, subject))))
    statement = statement_of(fact, t)
    if statement:
        statement = statement.replace(fact.subject, subject)
        prefix = completion_prefix(statement, fact.object)
        if prefix:
            forms.append(("statement", prefix))
            cloze = statement.replace(fact.object, "___")
            forms.append(("cloze", str(t.data["cloze_format"]).format(cloze=cloze)))
    return forms


def _direct(fact: Fact, ctx: ProbeContext) -> list[Probe]:
    return [
        _probe(fact, ctx, "direct", form, p) for form, p in _direct_forms(fact, ctx, fact.subject)
    ]


def _paraphrase_forms(fact: Fact, ctx: ProbeContext, subject: str) -> list[tuple[str, str]]:
    t = ctx.templates
    rel = t.relation(fact.relation)
    forms = []
    for i, q in enumerate(rel.get("questions", ())):
        forms.append((f"questions[{i}]", t.format_question(q.format(subject=subject))))
    for i, s in enumerate(rel.get("paraphrases", ())):
        prefix = completion_prefix(s.format(subject=subject, object=fact.object), fact.object)
        if prefix:
            forms.append((f"paraphrases[{i}]", prefix))
    for i, text in enumerate(fact.paraphrases):
        text = text.replace(fact.subject, subject)
        prefix = completion_prefix(text, fact.object)
        forms.append((f"fact.paraphrases[{i}]", prefix or t.format_question(text)))
    return forms


def _paraphrase(fact: Fact, ctx: ProbeContext) -> list[Probe]:
    direct = {p for _, p in _direct_forms(fact, ctx, fact.subject)}
    return [
        _probe(fact, ctx, "paraphrase", form, p)
        for form, p in _paraphrase_forms(fact, ctx, fact.subject)
        if p not in direct
    ]


def _alias(fact: Fact, ctx: ProbeContext) -> list[Probe]:
    probes = []
    for alias in fact.aliases:
        forms = _direct_forms(fact, ctx, alias) + _paraphrase_forms(fact, ctx, alias)
        for form, prompt in forms:
            probe = _probe(fact, ctx, "alias", f"{alias}:{form}", prompt, subject=alias)
            probes.append(probe)
    return probes


def _multihop(fact: Fact, ctx: ProbeContext) -> list[Probe]:
    """Chains through the fact: forward (X → object → next) and backward (Y → X → object)."""
    probes = [p for hop in ctx.facts.next_hops(fact) for p in _forward_chains(fact, hop, ctx)]
    for incoming in ctx.facts.filter(lambda f: f.object == fact.subject):
        probe = _backward_chain(fact, incoming, ctx)
        if probe is not None:
            probes.append(probe)
    return probes


def _forward_chains(fact: Fact, hop: Fact, ctx: ProbeContext) -> list[Probe]:
    """Questions for the next hop's object through the fact's subject (X → object → next)."""
    t = ctx.templates
    chain = t.chain(fact.relation, hop.relation)
    questions = [("chain.question", chain.get("question"))] + [
        (f"chain.questions[{i}]", q) for i, q in enumerate(chain.get("questions", ()))
    ]
    noun = t.noun(fact.relation, fact.subject)
    second = t.relation(hop.relation).get("question")
    if noun and second:
        questions.append(("composed", second.format(subject=noun)))
    distractors = ctx.distractors(hop)
    controls = ctx.controls(fact)
    answers = ctx.control_answers(
        controls, partial(_object_chain, ctx, first=fact.relation, second=hop.relation)
    )
    return [
        Probe(
            fact_id=fact.id,
            attack="multihop",
            form=f"{hop.relation}:{form}",
            prompt=t.format_question(q.format(subject=fact.subject)),
            answer=hop.object,
            distractors=distractors,
            anchor=fact.subject,
            controls=controls,
            control_answers=answers,
            lineage=(f"fact:{fact.id}", f"hop:{hop.id}", f"multihop:{form}"),
        )
        for form, q in questions
        if q
    ]


def _backward_chain(fact: Fact, incoming: Fact, ctx: ProbeContext) -> Probe | None:
    """The fact's question asked of the entity it is reached from (Y → X → object)."""
    t = ctx.templates
    noun = t.noun(incoming.relation, incoming.subject)
    question = t.relation(fact.relation).get("question")
    if not (noun and question):
        return None
    prompt = t.format_question(question.format(subject=noun))
    base = _probe(fact, ctx, "multihop", f"via:{incoming.id}", prompt)
    return replace(
        base,
        form=f"via:{incoming.relation}",
        anchor=incoming.subject,
        control_answers=ctx.control_answers(
            base.controls,
            partial(_object_chain, ctx, first=incoming.relation, second=fact.relation),
        ),
        lineage=(f"fact:{fact.id}", f"hop:{incoming.id}", "multihop:backward"),
    )


def _object_chain(ctx: ProbeContext, subject: str, *, first: str, second: str) -> str | None:
    middle = ctx.object_of(subject, first)
    return ctx.object_of(middle, second) if middle else None


def _prefix(fact: Fact, ctx: ProbeContext) -> list[Probe]:
    """RWKU-style adversarial templates around the fact's question."""
    t = ctx.templates
    question = question_of(fact, t)
    if not question:
        return []
    prompt = t.format_question(question)
    options = list((fact.object, *ctx.distractors(fact)))
    ctx.rng("options", fact.id).shuffle(options)
    fill = {
        "prompt": prompt,
        "subject": fact.subject,
        "initial": fact.object[0],
        "options": " , ".join(options),
    }
    probes = []
    for name, template in t.data.get("prefix", {}).items():
        if "{reverse}" in template:
            probes += _reverse(fact, ctx, name)
            continue
        probes.append(_probe(fact, ctx, "prefix", name, template.format(**fill)))
    return probes


def _reverse(fact: Fact, ctx: ProbeContext, form: str) -> list[Probe]:
    """Ask for the subject from the object ("Who was born in X?")."""
    template = ctx.templates.relation(fact.relation).get("reverse")
    if not template:
        return []
    holders = {
        f.subject for f in ctx.facts if f.relation == fact.relation and f.object == fact.object
    }
    pool = sorted({f.subject for f in ctx.facts if f.relation == fact.relation} - holders)
    distractors = tuple(ctx.rng("reverse", fact.id).sample(pool, min(N_DISTRACTORS, len(pool))))
    options = {fact.subject, *distractors}
    others = sorted(set(ctx.facts.objects_of(fact.relation)) - {fact.object})
    controls = [
        o
        for o in others
        if not options
        & {f.subject for f in ctx.facts if f.relation == fact.relation and f.object == o}
    ]
    ctx.rng("reverse-controls", fact.id).shuffle(controls)
    prompt = ctx.templates.format_question(template.format(object=fact.object))
    return [
        Probe(
            fact_id=fact.id,
            attack="prefix",
            form=form,
            prompt=prompt,
            answer=fact.subject,
            distractors=distractors,
            anchor=fact.object,
            controls=tuple(controls[: ctx.n_controls]),
            lineage=(f"fact:{fact.id}", f"prefix:{form}"),
        )
    ]


def _incontext(fact: Fact, ctx: ProbeContext) -> list[Probe]:
    """Other facts about the subject in the prompt (1 to 3 of them), the withheld one asked."""
    t = ctx.templates
    question = question_of(fact, t)
    others = [f for f in ctx.facts.about(fact.subject) if f.id != fact.id]
    statements = [s for s in (statement_of(f, t) for f in others) if s]
    if not question or not statements:
        return []
    ctx.rng("incontext", fact.id).shuffle(statements)
    probes = []
    for n in range(1, min(3, len(statements)) + 1):
        context = " ".join(statements[:n])
        prompt = str(t.data["incontext_format"]).format(
            context=context, prompt=t.format_question(question)
        )
        probes.append(_probe(fact, ctx, "incontext", f"{n}_facts", prompt))
    return probes


direct = InputAttack("direct", _direct)
paraphrase = InputAttack("paraphrase", _paraphrase)
alias = InputAttack("alias", _alias)
multihop = InputAttack("multihop", _multihop)
prefix = InputAttack("prefix", _prefix)
incontext = InputAttack("incontext", _incontext)


def attributed_probes(
    inputs: Sequence[InputAttack],
    fact: Fact,
    context: ProbeContext,
    attack: str,
    step: str,
    *,
    first: bool = False,
) -> list[Probe]:
    """The probes of ``inputs`` for ``fact`` (one per prompt), attributed to ``attack``.

    ``step`` is added to each probe's lineage: first for an attack that changes the model the
    probes are asked of, last for one that changes how they are read.
    """
    out: dict[str, Probe] = {}
    for source in inputs:
        for probe in source(fact, context):
            lineage = (step, *probe.lineage) if first else (*probe.lineage, step)
            out.setdefault(probe.prompt, replace(probe, attack=attack, lineage=lineage))
    return list(out.values())


INPUT_ATTACKS = (direct, paraphrase, alias, multihop, prefix, incontext)
