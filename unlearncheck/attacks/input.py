"""Input attacks: each derives new probes for a fact (METHODS.md, "Input attacks").

Every probe carries controls: the same prompt about other subjects for which the answer is not the
truth. They calibrate what the model would say without knowing the fact (its prior over the
options), so a model that always favours one option is not mistaken for one that knows.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, partial

from unlearncheck.facts import Fact, FactSet
from unlearncheck.probes import (
    Probe,
    Templates,
    completion_prefix,
    dedupe,
    question_of,
    statement_of,
)

N_CONTROLS = 4
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

    def controls(
        self,
        key: str,
        subject: str,
        options: Sequence[str],
        truth: Callable[[str], str | None],
        relation: str,
    ) -> tuple[str, ...]:
        """Up to N_CONTROLS other subjects of ``relation`` for which ``options[0]`` is wrong.

        Subjects whose truth is one of the distractors come first: on their prompts the options
        hold their own answer, so a model that knows them puts little mass on ``options[0]``
        and a model that does not shows its prior. Subjects whose truth is none of the options
        fill the remaining places. Within each kind, subjects of the claim come first (for a
        forget claim: other forgotten subjects), then the rest of the facts.
        """
        chosen: list[str] = []
        distractors = set(options[1:])
        for wanted in (lambda v: v in distractors, lambda v: v not in options):
            for pool in (self._claim_subjects, self._subjects):
                candidates = [s for s in pool.get(relation, ()) if s != subject]
                self.rng("controls", key, str(len(chosen))).shuffle(candidates)
                for candidate in candidates:
                    value = truth(candidate)
                    if candidate not in chosen and value is not None and wanted(value):
                        chosen.append(candidate)
                    if len(chosen) == N_CONTROLS:
                        return tuple(chosen)
        return tuple(chosen)

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
    """An attack that derives probes from a fact."""

    name: str
    derive: Derive
    kind: str = "input"

    def __call__(self, fact: Fact, context: ProbeContext) -> list[Probe]:
        """The probes of this attack for ``fact`` (deduplicated)."""
        return dedupe(self.derive(fact, context))

    def __repr__(self) -> str:
        return f"<attack {self.name}>"


def _probe(
    fact: Fact, ctx: ProbeContext, attack: str, form: str, prompt: str, subject: str | None = None
) -> Probe:
    """A probe asking ``prompt`` for the fact's object, with controls of the fact's relation."""
    distractors = ctx.distractors(fact)
    options = (fact.object, *distractors)
    anchor = subject or fact.subject
    controls = ctx.controls(
        fact.id, fact.subject, options, lambda s: ctx.object_of(s, fact.relation), fact.relation
    )
    if anchor != fact.subject:  # an alias is in the prompt: swap in the controls' aliases
        controls = tuple(_alias_or_name(ctx, c) for c in controls)
    return Probe(
        fact_id=fact.id,
        attack=attack,
        form=form,
        prompt=prompt,
        answer=fact.object,
        distractors=distractors,
        anchor=anchor,
        controls=controls,
        lineage=(f"fact:{fact.id}", f"{attack}:{form}"),
    )


def _alias_or_name(ctx: ProbeContext, subject: str) -> str:
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
    t = ctx.templates
    probes = []
    for hop in ctx.facts.next_hops(fact):
        chain = t.chain(fact.relation, hop.relation)
        questions = [("chain.question", chain.get("question"))] + [
            (f"chain.questions[{i}]", q) for i, q in enumerate(chain.get("questions", ()))
        ]
        noun = t.noun(fact.relation, fact.subject)
        second = t.relation(hop.relation).get("question")
        if noun and second:
            questions.append(("composed", second.format(subject=noun)))
        distractors = ctx.distractors(hop)
        options = (hop.object, *distractors)

        def truth(subject: str, rel: str = fact.relation, nxt: str = hop.relation) -> str | None:
            middle = ctx.object_of(subject, rel)
            return ctx.object_of(middle, nxt) if middle else None

        controls = ctx.controls(f"{fact.id}>{hop.id}", fact.subject, options, truth, fact.relation)
        for form, q in questions:
            if not q:
                continue
            probes.append(
                Probe(
                    fact_id=fact.id,
                    attack="multihop",
                    form=f"{hop.relation}:{form}",
                    prompt=t.format_question(q.format(subject=fact.subject)),
                    answer=hop.object,
                    distractors=distractors,
                    anchor=fact.subject,
                    controls=controls,
                    lineage=(f"fact:{fact.id}", f"hop:{hop.id}", f"multihop:{form}"),
                )
            )
    for incoming in ctx.facts.filter(lambda f: f.object == fact.subject):
        noun = t.noun(incoming.relation, incoming.subject)
        question = t.relation(fact.relation).get("question")
        if not (noun and question):
            continue
        base = _probe(
            fact,
            ctx,
            "multihop",
            f"via:{incoming.id}",
            t.format_question(question.format(subject=noun)),
        )
        controls = ctx.controls(
            f"{incoming.id}>{fact.id}",
            incoming.subject,
            base.options,
            partial(_object_chain, ctx, first=incoming.relation, second=fact.relation),
            incoming.relation,
        )
        probes.append(
            Probe(
                fact_id=fact.id,
                attack="multihop",
                form=f"via:{incoming.relation}",
                prompt=base.prompt,
                answer=base.answer,
                distractors=base.distractors,
                anchor=incoming.subject,
                controls=controls,
                lineage=(f"fact:{fact.id}", f"hop:{incoming.id}", "multihop:backward"),
            )
        )
    return probes


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
            controls=tuple(controls[:N_CONTROLS]),
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
