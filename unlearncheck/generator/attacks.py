"""The generator and the input attacks it makes: ``llm_paraphrase`` and ``llm_alias`` (texts from
the generator LLM), ``elicited_multihop`` (chains elicited from the original model), and ``psg``
with the generator LLM's paraphrases among its surrogates.

They are attacks of their own, next to the template attacks ``paraphrase``, ``alias`` and
``multihop``, so a report tells what the generated probes found apart from what the templates
found. A generator or endpoint fault that lasts through the retries raises `EndpointError` while
the attack derives its probes, which the claim reports as "not run (reason)" for that attack.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property, partial

from unlearncheck.attacks.context import N_DISTRACTORS, ProbeContext
from unlearncheck.attacks.input import (
    InputAttack,
    alias,
    alias_or_name,
    attributed_probes,
    direct,
)
from unlearncheck.attacks.psg import PSGAttack, psg
from unlearncheck.backends.capabilities import GeneratingModel
from unlearncheck.facts import Fact
from unlearncheck.generator.cache import GeneratorCache, default_cache_path
from unlearncheck.generator.config import GeneratorConfig
from unlearncheck.generator.elicit import ElicitedGraph, Elicitor, Schema
from unlearncheck.generator.llm import GeneratorLLM
from unlearncheck.probes import Probe, Templates, question_of

__all__ = ["ProbeGenerator", "elicited_distractors"]


class ProbeGenerator:
    """Generates probes: paraphrases and aliases from the generator LLM, multi-hop chains
    elicited from the original model; every reply cached.

    Attributes:
        config: The generator's settings.
        cache: Where replies are kept (default: `default_cache_path`).
    """

    def __init__(
        self, config: GeneratorConfig | None = None, cache: GeneratorCache | None = None
    ) -> None:
        self.config = config or GeneratorConfig()
        self.cache = cache if cache is not None else GeneratorCache(default_cache_path())
        self._elicitors: dict[tuple[str, str], Elicitor] = {}

    @cached_property
    def llm(self) -> GeneratorLLM:
        """The generator LLM.

        Raises:
            ValueError: No generator LLM is configured.
        """
        return GeneratorLLM(self.config, self.cache)

    @cached_property
    def llm_paraphrase(self) -> InputAttack:
        """The attack asking the fact's question in the generator LLM's wordings.

        Raises:
            ValueError: No generator LLM is configured.
        """
        return InputAttack("llm_paraphrase", partial(_llm_paraphrase, self.llm))

    @cached_property
    def llm_alias(self) -> InputAttack:
        """The attack asking the fact's base and template forms about the generator LLM's
        aliases of the subject.

        Raises:
            ValueError: No generator LLM is configured.
        """
        return InputAttack("llm_alias", partial(_llm_alias, self.llm))

    @cached_property
    def psg(self) -> PSGAttack:
        """The ``psg`` attack with the generator LLM's paraphrases of each fact's question among
        its rewrites (before the template ones; all pass the same similarity band).

        Raises:
            ValueError: No generator LLM is configured.
        """
        return replace(psg, extra_rewrites=partial(_llm_rewrites, self.llm, Templates.load()))

    def elicitor(self, original: GeneratingModel) -> Elicitor:
        """The elicitor questioning ``original`` (one per model, sharing what it was told)."""
        key = (original.spec, original.content_hash)
        if key not in self._elicitors:
            self._elicitors[key] = Elicitor(original, self.config, self.cache)
        return self._elicitors[key]

    def elicited_multihop(self, original: GeneratingModel) -> InputAttack:
        """The attack asking chains through the fact elicited from ``original``: from the
        fact's subject, first hop the fact's relation (elicited for every subject of the claim
        on first use)."""
        return InputAttack(
            "elicited_multihop", partial(_elicited_multihop, self.elicitor(original))
        )


def _llm_paraphrase(llm: GeneratorLLM, fact: Fact, ctx: ProbeContext) -> list[Probe]:
    """The fact's question probe, asked in each screened paraphrase of the generator LLM."""
    question = question_of(fact, ctx.templates)
    base = next((p for p in direct(fact, ctx) if p.form == "question"), None)
    if question is None or base is None:
        return []
    screened = llm.paraphrases(question, fact.subject, fact.object)
    return [
        replace(
            base,
            attack="llm_paraphrase",
            form=f"llm[{i}]",
            prompt=ctx.templates.format_question(text),
            lineage=(f"fact:{fact.id}", f"llm_paraphrase[{i}]", f"generator:{llm.name}"),
        )
        for i, text in enumerate(screened.kept)
    ]


def _llm_rewrites(llm: GeneratorLLM, templates: Templates, fact: Fact) -> list[str]:
    """The generator LLM's screened paraphrases of the fact's question (none without one)."""
    question = question_of(fact, templates)
    return (
        [] if question is None else list(llm.paraphrases(question, fact.subject, fact.object).kept)
    )


def _llm_alias(llm: GeneratorLLM, fact: Fact, ctx: ProbeContext) -> list[Probe]:
    """The ``alias`` probes of the fact with the generator LLM's screened aliases."""
    screened = llm.aliases(fact.subject, fact.object)
    if not screened.kept:
        return []
    renamed = replace(fact, aliases=screened.kept)
    return attributed_probes([alias], renamed, ctx, "llm_alias", f"generator:{llm.name}")


def _claim_seeds(ctx: ProbeContext) -> dict[str, set[str]]:
    """Subject → the relations the claim (with its calibration peers) asks of it."""
    seeds: dict[str, set[str]] = {}
    for fact in ctx.claim:
        seeds.setdefault(fact.subject, set()).add(fact.relation)
    return seeds


def _elicited_multihop(elicitor: Elicitor, fact: Fact, ctx: ProbeContext) -> list[Probe]:
    """Every wording of every chain elicited through the fact, about the subject and its
    aliases; the controls' answers are their chains in the known facts."""
    schema = Schema.from_facts(ctx.facts, ctx.templates, elicitor.config.wordings)
    graph = elicitor.graph(_claim_seeds(ctx), schema, ctx.templates)
    controls = ctx.controls(fact)
    probes = []
    for chain in graph.chains(ctx.templates, fact.subject, first=fact.relation):
        distractors = elicited_distractors(
            ctx, graph, chain.relations[-1], chain.answer, f"{fact.id}|{chain.describe()}"
        )
        answers = ctx.control_answers(controls, partial(_walk, ctx, chain.relations))
        origin = f"elicited from {elicitor.model.spec}: {chain.describe()}"
        hops = ">".join(chain.relations)
        for name in (fact.subject, *fact.aliases):
            named = controls
            if name != fact.subject:
                named = tuple(alias_or_name(ctx, c) for c in controls)
            for form, question in chain.questions:
                label = f"{hops}:{form}" if name == fact.subject else f"{name}:{hops}:{form}"
                probes.append(
                    Probe(
                        fact_id=fact.id,
                        attack="elicited_multihop",
                        form=label,
                        prompt=ctx.templates.format_question(question.replace(fact.subject, name)),
                        answer=chain.answer,
                        distractors=distractors,
                        anchor=name,
                        controls=named,
                        control_answers=answers,
                        lineage=(f"fact:{fact.id}", origin, f"elicited_multihop:{label}"),
                    )
                )
    return probes


def elicited_distractors(
    ctx: ProbeContext, graph: ElicitedGraph, relation: str, answer: str, key: str
) -> tuple[str, ...]:
    """Other answers of ``relation``, known or elicited, sampled with the seed and ``key``."""
    pool = sorted((set(ctx.facts.objects_of(relation)) | graph.objects_of(relation)) - {answer})
    rng = ctx.rng("elicited", key)
    return tuple(rng.sample(pool, min(N_DISTRACTORS, len(pool))))


def _walk(ctx: ProbeContext, relations: tuple[str, ...], subject: str) -> str | None:
    """Where the known facts lead from ``subject`` along ``relations`` (None: nowhere)."""
    at: str | None = subject
    for relation in relations:
        at = ctx.object_of(at, relation) if at is not None else None
    return at
