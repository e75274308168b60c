"""Multi-hop chains elicited from what a model knows (the "Unlearning Mirage" recipe).

The original model is questioned about each subject: every relation question is asked in several
wordings (`GeneratorConfig.wordings`) and answered by greedy completion; an answer given in at
least `GeneratorConfig.agree` of them is kept as a triple (subject, relation, answer). Each answer
is an entity in turn, questioned the same way, breadth first, to `GeneratorConfig.depth` hops.
A path of two or more triples from a subject is a chain, asked as one question: the library's
chain templates for its relations (``chains.<a>><b>``) and the composed question "<last
relation's question> of <the noun phrase of the earlier hops>" in each of its wordings.

Which relations are asked of an entity is the schema of the known facts: a subject is asked the
relations that the facts hold for the subjects of its claimed relation, and the answer to relation
``r`` is asked those the facts hold for the objects of ``r`` (a city is asked its country; a
person's employer, of which the facts say nothing, is asked nothing). Answers come from the
questioned model alone, one prompt at a time, and are cached (`GeneratorCache`), so a re-run asks
nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from unlearncheck.backends.capabilities import GeneratingModel
from unlearncheck.facts import FactSet
from unlearncheck.generator.cache import GeneratorCache, cache_key
from unlearncheck.generator.config import GeneratorConfig
from unlearncheck.probes import Templates
from unlearncheck.scoring import GENERATION_BATCH_SIZE

__all__ = ["Chain", "ElicitedGraph", "Elicitor", "Schema", "Triple", "wordings_of"]


def wordings_of(templates: Templates, relation: str) -> tuple[str, ...]:
    """The question templates of ``relation``: its ``question``, then its ``questions``."""
    rel = templates.relation(relation)
    first = rel.get("question")
    return tuple(str(q) for q in ([first] if first else []) + list(rel.get("questions", ())))


@dataclass(frozen=True)
class Schema:
    """Which relations are asked of an entity, by how it was reached.

    Attributes:
        of_subjects: Relation → the relations the facts hold for the subjects of that relation.
        of_objects: Relation → the relations the facts hold for the objects of that relation.
    """

    of_subjects: Mapping[str, tuple[str, ...]]
    of_objects: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_facts(cls, facts: FactSet, templates: Templates, wordings: int) -> Schema:
        """The schema of ``facts``, restricted to relations with ``wordings`` question templates
        (fewer cannot be checked for consistency)."""
        askable = {r for r in facts.relations() if len(wordings_of(templates, r)) >= wordings}
        held: dict[str, set[str]] = {}
        for fact in facts:
            if fact.relation in askable:
                held.setdefault(fact.subject, set()).add(fact.relation)
        of_subjects: dict[str, set[str]] = {}
        of_objects: dict[str, set[str]] = {}
        for fact in facts:
            of_subjects.setdefault(fact.relation, set()).update(held.get(fact.subject, ()))
            of_objects.setdefault(fact.relation, set()).update(held.get(fact.object, ()))
        return cls(
            {r: tuple(sorted(s)) for r, s in of_subjects.items()},
            {r: tuple(sorted(s)) for r, s in of_objects.items()},
        )


@dataclass(frozen=True)
class Triple:
    """One elicited fact: the model's consistent answer to one relation question.

    Attributes:
        subject: The entity asked about.
        relation: The relation asked.
        object: The answer given in at least `GeneratorConfig.agree` wordings.
        support: How many wordings gave it.
        asked: How many wordings were asked.
        questions: The questions asked (without the prompt format).
    """

    subject: str
    relation: str
    object: str
    support: int
    asked: int
    questions: tuple[str, ...]


@dataclass(frozen=True)
class Chain:
    """A path of two or more elicited triples from a subject, and the questions that ask it.

    Attributes:
        path: The triples, each one's object the next one's subject.
        questions: (form, question) of each wording, without the prompt format.
    """

    path: tuple[Triple, ...]
    questions: tuple[tuple[str, str], ...]

    @property
    def subject(self) -> str:
        """The entity the chain starts from."""
        return self.path[0].subject

    @property
    def relations(self) -> tuple[str, ...]:
        """The relations of the hops, in order."""
        return tuple(t.relation for t in self.path)

    @property
    def answer(self) -> str:
        """The entity the chain ends at."""
        return self.path[-1].object

    def describe(self) -> str:
        """``A -r1-> B -r2-> C``."""
        return self.subject + "".join(f" -{t.relation}-> {t.object}" for t in self.path)


def _chain_questions(
    templates: Templates, subject: str, relations: Sequence[str]
) -> tuple[tuple[str, str], ...]:
    """(form, question) of each wording of the chain of ``relations`` from ``subject``: the
    library's chain templates (two hops), then the last relation's questions about the noun
    phrase of the earlier hops ("the birth city of X")."""
    out: list[tuple[str, str]] = []
    if len(relations) == 2:
        chain = templates.chain(*relations)
        first = chain.get("question")
        listed = [("chain.question", first)] if first else []
        listed += [(f"chain.questions[{i}]", q) for i, q in enumerate(chain.get("questions", ()))]
        out += [(form, str(q).format(subject=subject)) for form, q in listed]
    phrase = subject
    for relation in relations[:-1]:
        noun = templates.noun(relation, phrase)
        if noun is None:
            return tuple(out)
        phrase = noun
    out += [
        (f"composed[{i}]", q.format(subject=phrase))
        for i, q in enumerate(wordings_of(templates, relations[-1]))
    ]
    return tuple(out)


@dataclass(frozen=True)
class ElicitedGraph:
    """The triples elicited from a model, keyed by (subject, relation).

    Attributes:
        triples: (subject, relation) → the consistent answer.
        depth: Hops of the longest chain walked.
    """

    triples: Mapping[tuple[str, str], Triple]
    depth: int

    def about(self, subject: str) -> list[Triple]:
        """The triples whose subject is ``subject``, by relation."""
        return sorted(
            (t for (s, _), t in self.triples.items() if s == subject), key=lambda t: t.relation
        )

    def objects_of(self, relation: str) -> set[str]:
        """The answers elicited for ``relation``."""
        return {t.object for (_, r), t in self.triples.items() if r == relation}

    def chains(self, templates: Templates, subject: str, first: str | None = None) -> list[Chain]:
        """The chains of 2 to `depth` hops from ``subject`` that have a question (starting with
        relation ``first`` when given); no entity is visited twice."""
        out = []
        for path in self._paths(subject, (subject,), first):
            if len(path) >= 2:
                questions = _chain_questions(templates, subject, [t.relation for t in path])
                if questions:
                    out.append(Chain(path, questions))
        return out

    def _paths(
        self, at: str, visited: tuple[str, ...], first: str | None
    ) -> Iterator[tuple[Triple, ...]]:
        for triple in self.about(at):
            if (first is not None and triple.relation != first) or triple.object in visited:
                continue
            yield (triple,)
            if len(visited) < self.depth:
                for rest in self._paths(triple.object, (*visited, triple.object), None):
                    yield (triple, *rest)


class Elicitor:
    """Questions a model in several wordings and keeps the answers it gives consistently.

    Attributes:
        model: The questioned model (the original): a local checkpoint or an endpoint.
        config: Depth, wordings, agreement and answer length.
        cache: Where the answers are kept, by the model's identity and the prompt.
    """

    def __init__(
        self, model: GeneratingModel, config: GeneratorConfig, cache: GeneratorCache
    ) -> None:
        self.model = model
        self.config = config
        self.cache = cache
        self._answers: dict[str, str] = {}

    def answers(self, prompts: Sequence[str]) -> list[str]:
        """The model's greedy answer to each prompt (first line, without end punctuation),
        from memory or the cache where asked before; the rest asked in batches.

        Raises:
            EndpointError: An endpoint gave no usable answer after its retries.
        """
        keys = {p: self._key(p) for p in dict.fromkeys(prompts) if p not in self._answers}
        missing = []
        for prompt, key in keys.items():
            cached = self.cache.get(key)
            if cached is None:
                missing.append(prompt)
            else:
                self._answers[prompt] = str(cached)
        if missing:
            texts = self.model.generate(
                missing,
                max_new_tokens=self.config.max_answer_tokens,
                batch_size=GENERATION_BATCH_SIZE,
            )
            for prompt, (text, *_) in zip(missing, texts, strict=True):
                self._answers[prompt] = _answer_text(text)
                self.cache.put(keys[prompt], self._answers[prompt])
        return [self._answers[p] for p in prompts]

    def graph(
        self, seeds: Mapping[str, Iterable[str]], schema: Schema, templates: Templates
    ) -> ElicitedGraph:
        """The triples the model gives consistently, breadth first from ``seeds`` (subject →
        the relations to ask it first) to `GeneratorConfig.depth` hops.

        Raises:
            EndpointError: An endpoint gave no usable answer after its retries.
        """
        triples: dict[tuple[str, str], Triple] = {}
        asked: set[tuple[str, str]] = set()
        frontier = {subject: set(relations) for subject, relations in seeds.items()}
        for hop in range(self.config.depth):
            level = sorted((s, r) for s, rs in frontier.items() for r in rs if (s, r) not in asked)
            asked.update(level)
            questions = {
                (s, r): tuple(
                    q.format(subject=s) for q in wordings_of(templates, r)[: self.config.wordings]
                )
                for s, r in level
            }
            prompts = [templates.format_question(q) for qs in questions.values() for q in qs]
            answers = iter(self.answers(prompts))
            frontier = {}
            for (subject, relation), asked_questions in questions.items():
                given = [next(answers) for _ in asked_questions]
                triple = self._consistent(subject, relation, asked_questions, given)
                if triple is None:
                    continue
                triples[(subject, relation)] = triple
                if hop + 1 < self.config.depth:
                    after = schema.of_objects.get(relation, ())
                    frontier.setdefault(triple.object, set()).update(after)
        return ElicitedGraph(triples, self.config.depth)

    def answered(self, chains: Sequence[Chain], templates: Templates) -> list[bool]:
        """Per chain, whether the model gives its answer in at least `GeneratorConfig.agree`
        of its first `GeneratorConfig.wordings` questions.

        Raises:
            EndpointError: An endpoint gave no usable answer after its retries.
        """
        asked = [
            [templates.format_question(q) for _, q in c.questions[: self.config.wordings]]
            for c in chains
        ]
        answers = iter(self.answers([p for prompts in asked for p in prompts]))
        out = []
        for chain, prompts in zip(chains, asked, strict=True):
            given = [next(answers) for _ in prompts]
            out.append(given.count(chain.answer) >= min(self.config.agree, len(prompts)))
        return out

    def _consistent(
        self, subject: str, relation: str, questions: tuple[str, ...], given: list[str]
    ) -> Triple | None:
        """The triple of the one answer given in at least `GeneratorConfig.agree` wordings."""
        counts = Counter(a for a in given if a and a != subject)
        ranked = counts.most_common(2)
        if not ranked or ranked[0][1] < self.config.agree:
            return None
        if len(ranked) > 1 and ranked[1][1] == ranked[0][1]:
            return None  # two answers equally supported: the model does not know which
        answer, support = ranked[0]
        return Triple(subject, relation, answer, support, len(given), questions)

    def _key(self, prompt: str) -> str:
        model = self.model
        return cache_key(
            kind="answer",
            model=model.spec,
            content=model.content_hash,
            max_answer_tokens=self.config.max_answer_tokens,
            prompt=prompt,
        )


def _answer_text(text: str) -> str:
    """A greedy completion read as an answer: its first line, stripped of spaces and of the
    punctuation that ends a sentence."""
    line = text.strip().split("\n", 1)[0]
    return " ".join(line.split()).rstrip(" .,;:!?")
