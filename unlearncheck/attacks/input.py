"""Input attacks: each derives new probes for a fact (docs/methods.md, "Input attacks").

Every probe carries controls: the same prompt about other subjects for which the answer is not the
truth. They calibrate what the model would say without knowing the fact (its prior over the
options), so a model that always favours one option is not mistaken for one that knows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from unlearncheck.attacks.context import N_DISTRACTORS, ProbeContext
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

__all__ = [
    "INPUT_ATTACKS",
    "Derive",
    "InputAttack",
    "alias",
    "alias_or_name",
    "attributed_probes",
    "direct",
    "incontext",
    "multihop",
    "paraphrase",
    "prefix",
]


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
        """The probes of this attack for ``fact`` (deduplicated; derived once per context)."""
        return list(
            context.memo(
                (self.name, self.derive, fact.id), lambda: dedupe(self.derive(fact, context))
            )
        )

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
    forms = []
    question = question_of(fact, t)
    if subject != fact.subject:  # the relation's question about the alias, else the fact's own
        renamed = question_of(Fact(fact.id, subject, fact.relation, fact.object), t)
        question = renamed or (question.replace(fact.subject, subject) if question else None)
    opening = answer_opening(fact, t, subject)
    if question:
        forms.append(("question", t.format_question(question, opening)))
    statement = statement_of(fact, t)
    if statement:
        statement = statement.replace(fact.subject, subject)
        prefix = completion_prefix(statement, fact.object)
        if prefix:
            forms.append(("statement", t.format_completion(prefix)))
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
    opening = answer_opening(fact, t, subject)
    forms = []
    for i, q in enumerate(rel.get("questions", ())):
        forms.append((f"questions[{i}]", t.format_question(q.format(subject=subject), opening)))
    for i, s in enumerate(rel.get("paraphrases", ())):
        prefix = completion_prefix(s.format(subject=subject, object=fact.object), fact.object)
        if prefix:
            forms.append((f"paraphrases[{i}]", t.format_completion(prefix)))
    for i, text in enumerate(fact.paraphrases):
        text = text.replace(fact.subject, subject)
        prefix = completion_prefix(text, fact.object)
        prompt = t.format_completion(prefix) if prefix else t.format_question(text, opening)
        forms.append((f"fact.paraphrases[{i}]", prompt))
    return forms


def answer_opening(fact: Fact, templates: Templates, subject: str) -> str | None:
    """The opening words of the fact's statement about ``subject`` ("The capital of France
    is"): how a chat model's answer to a question about the fact begins (`ASSISTANT_OPENING`)."""
    statement = statement_of(fact, templates)
    if statement is None:
        return None
    return completion_prefix(statement.replace(fact.subject, subject), fact.object)


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
    opening = _chain_opening(chain.get("statement"), fact.subject, hop.object)
    if opening is None and noun:
        opening = _chain_opening(t.relation(hop.relation).get("statement"), noun, hop.object)
    distractors = ctx.distractors(hop)
    controls = ctx.controls(fact)
    answers = ctx.control_answers(
        controls, partial(ctx.chain_object, first=fact.relation, second=hop.relation)
    )
    return [
        Probe(
            fact_id=fact.id,
            attack="multihop",
            form=f"{hop.relation}:{form}",
            prompt=t.format_question(q.format(subject=fact.subject), opening),
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


def _chain_opening(statement: str | None, subject: str, answer: str) -> str | None:
    """The opening words of a chain's statement about ``subject`` (`answer_opening`)."""
    if not statement:
        return None
    return completion_prefix(statement.format(subject=subject, object=answer), answer)


def _backward_chain(fact: Fact, incoming: Fact, ctx: ProbeContext) -> Probe | None:
    """The fact's question asked of the entity it is reached from (Y → X → object); its controls
    stand in Y's place (`ProbeContext.controls` with ``via``)."""
    t = ctx.templates
    noun = t.noun(incoming.relation, incoming.subject)
    question = t.relation(fact.relation).get("question")
    if not (noun and question):
        return None
    opening = _chain_opening(t.relation(fact.relation).get("statement"), noun, fact.object)
    controls = ctx.controls(fact, via=incoming.relation)
    answer_of = partial(ctx.chain_object, first=incoming.relation, second=fact.relation)
    return Probe(
        fact_id=fact.id,
        attack="multihop",
        form=f"via:{incoming.relation}",
        prompt=t.format_question(question.format(subject=noun), opening),
        answer=fact.object,
        distractors=ctx.distractors(fact),
        anchor=incoming.subject,
        controls=controls,
        control_answers=ctx.control_answers(controls, answer_of),
        lineage=(f"fact:{fact.id}", f"hop:{incoming.id}", "multihop:backward"),
    )


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
    holders = ctx.holders(fact.relation, fact.object)
    pool = sorted(set(ctx.subjects_of(fact.relation)) - holders)
    distractors = tuple(ctx.rng("reverse", fact.id).sample(pool, min(N_DISTRACTORS, len(pool))))
    options = {fact.subject, *distractors}
    others = sorted(set(ctx.facts.objects_of(fact.relation)) - {fact.object})
    controls = [o for o in others if not options & ctx.holders(fact.relation, o)]
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
