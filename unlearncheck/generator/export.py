"""Export of what the generator made, as a facts file (`unlearncheck.facts`) for review and reuse.

Every elicited triple becomes a fact (with the generator LLM's paraphrases of its question and
aliases of its subject, when one is configured) and every chain a fact whose relation is its
relations joined by ``>`` ("birth_city>country"), whose question is its first wording and whose
paraphrases are the others. Loaded back with `load_facts`, the template attacks ask them:
``paraphrase`` asks the paraphrases, ``alias`` the aliases, ``direct`` the chain questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearncheck.attacks.context import ProbeContext
from unlearncheck.backends.capabilities import GeneratingModel
from unlearncheck.facts import Fact, FactFormatError, FactSet, load_facts
from unlearncheck.generator.attacks import ProbeGenerator, elicited_distractors
from unlearncheck.generator.elicit import Chain, ElicitedGraph, Schema, Triple
from unlearncheck.probes import Templates

__all__ = ["Generated", "generate_facts", "is_generated_facts_file"]


@dataclass(frozen=True)
class Generated:
    """What one generation found.

    Attributes:
        graph: The triples elicited from the original.
        chains: The chains from the subjects.
        answered: Per chain, whether the original answers its questions consistently.
        facts: The triples and chains as facts.
    """

    graph: ElicitedGraph
    chains: tuple[Chain, ...]
    answered: tuple[bool, ...]
    facts: FactSet


def generate_facts(
    generator: ProbeGenerator,
    original: GeneratingModel,
    subjects: Sequence[str],
    known: FactSet,
    templates: Templates | None = None,
    seed: int = 0,
) -> Generated:
    """Elicit from ``original`` what it knows about ``subjects`` and the chains from them.

    Args:
        generator: The generator (its LLM, when configured, adds paraphrases and aliases).
        original: The questioned model.
        subjects: The entities to start from.
        known: The facts whose schema says which relations are asked of what (`Schema`) and
            whose objects are distractors.
        templates: The template library (default: the shipped one).
        seed: Seed of the distractor samples.

    Raises:
        EndpointError: An endpoint gave no usable answer after its retries.
    """
    templates = templates or Templates.load()
    schema = Schema.from_facts(known, templates, generator.config.wordings)
    seeds = {
        s: {r for f in known.about(s) for r in schema.of_subjects.get(f.relation, ())}
        for s in subjects
    }
    elicitor = generator.elicitor(original)
    graph = elicitor.graph(seeds, schema, templates)
    chains = tuple(c for s in subjects for c in graph.chains(templates, s))
    answered = tuple(elicitor.answered(chains, templates))
    ctx = ProbeContext(known, known, templates, seed)
    facts = [
        _triple_fact(generator, ctx, graph, t, original.spec)
        for t in sorted(graph.triples.values(), key=lambda t: (t.subject, t.relation))
    ]
    facts += [
        _chain_fact(ctx, graph, c, knows, original.spec)
        for c, knows in zip(chains, answered, strict=True)
    ]
    return Generated(graph, chains, answered, FactSet(facts))


def _slug(name: str) -> str:
    return "-".join(name.lower().split())


def _triple_fact(
    generator: ProbeGenerator, ctx: ProbeContext, graph: ElicitedGraph, triple: Triple, source: str
) -> Fact:
    fid = f"elicited/{_slug(triple.subject)}/{triple.relation}"
    paraphrases: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    if generator.config.base_url is not None:
        paraphrases = generator.llm.paraphrases(
            triple.questions[0], triple.subject, triple.object
        ).kept
        aliases = generator.llm.aliases(triple.subject, triple.object).kept
    metadata: dict[str, Any] = {
        "elicited_from": source,
        "support": f"{triple.support}/{triple.asked}",
        "questions": list(triple.questions),
    }
    return Fact(
        id=fid,
        subject=triple.subject,
        relation=triple.relation,
        object=triple.object,
        question=triple.questions[0],
        paraphrases=paraphrases,
        aliases=aliases,
        distractors=elicited_distractors(ctx, graph, triple.relation, triple.object, fid),
        metadata=metadata,
    )


def _chain_fact(
    ctx: ProbeContext, graph: ElicitedGraph, chain: Chain, answered: bool, source: str
) -> Fact:
    relation = ">".join(chain.relations)
    fid = f"elicited/{_slug(chain.subject)}/{relation}"
    (_, question), *others = chain.questions
    return Fact(
        id=fid,
        subject=chain.subject,
        relation=relation,
        object=chain.answer,
        question=question,
        paraphrases=tuple(q for _, q in others),
        distractors=elicited_distractors(ctx, graph, chain.relations[-1], chain.answer, fid),
        metadata={
            "elicited_from": source,
            "path": [chain.subject, *(t.object for t in chain.path)],
            "answered_by_original": answered,
        },
    )


def is_generated_facts_file(path: Path) -> bool:
    """Whether ``path`` is a facts file `unlearncheck generate` wrote (every record elicited,
    ``metadata.elicited_from``): the only file ``unlearncheck generate --out`` replaces."""
    try:
        facts = load_facts(path)
    except (OSError, FactFormatError):
        return False
    return bool(facts) and all("elicited_from" in fact.metadata for fact in facts)
