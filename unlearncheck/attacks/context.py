"""The probe context: what an attack may use besides the fact it probes.

The known facts (the graph for multi-hop chains, the pool of distractors), the claim's facts
(controls are drawn from these first), the template library and the seed. Every probe carries
controls: the same prompt about other subjects for which the answer is not the truth. They
calibrate what the model would say without knowing the fact (its prior over the options).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar, cast

from unlearncheck.facts import Fact, FactSet
from unlearncheck.probes import Templates

__all__ = ["CONTROL_SUBJECTS", "MAX_CLAIM_CONTROLS", "N_DISTRACTORS", "ProbeContext"]

MIN_CONTROLS = 1
MAX_CONTROLS = 128
CONTROL_SUBJECTS = 128
#: Claim subjects taken as a fact's controls, at most (unless `ProbeContext.n_controls` asks for
#: more): enough for a steady baseline, and a fixed number, so that a claim's cost grows with its
#: facts and not with their square.
MAX_CLAIM_CONTROLS = 10
N_DISTRACTORS = 4

T = TypeVar("T")


@dataclass(frozen=True)
class ProbeContext:
    """What an input attack may use besides the fact: the known facts, the claim, the templates.

    Attributes:
        facts: Every known fact (the graph for multi-hop, the pool for controls and distractors).
        claim: The facts under test (controls are drawn from these first).
        templates: The template library.
        seed: Seed of every random choice (distractor sampling, control order, option order).
        min_chance: The least chance statistics the claim's pool needs for its least p-value
            to reach the level its verdict needs: `n_controls` grows to reach it.
    """

    facts: FactSet
    claim: FactSet
    templates: Templates
    seed: int = 0
    min_chance: int = 0

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
        a large claim needs few controls per fact and a single fact needs many; and the pool
        must hold `min_chance` statistics (a control gives one per option it does not mask: of
        the answer and `N_DISTRACTORS` distractors, a made-up name masks up to two).
        """
        share = math.ceil(CONTROL_SUBJECTS / len(self.claim))
        needed = math.ceil(self.min_chance / (len(self.claim) * (N_DISTRACTORS - 1)))
        return min(MAX_CONTROLS, max(MIN_CONTROLS, share, needed))

    def controls(self, fact: Fact, via: str | None = None) -> tuple[str, ...]:
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

        With ``via`` (a relation whose object is the fact's subject: a chain asked through the
        subject of a ``via`` fact, as "the capital of the country where <landmark> is"), the
        controls stand in that subject's place: subjects of ``via``, and made-up names from their
        words, whose answer through the chain (`chain_object`) is a distractor, then any made-up
        names from their words.
        """
        key = (fact.id, via)
        cached = self._controls.get(key)
        if cached is None:
            cached = self._controls[key] = self._choose_controls(fact, via)
        return cached

    def chain_object(self, subject: str, first: str, second: str) -> str | None:
        """The object of ``second`` of the object of ``first`` of ``subject``, if known."""
        middle = self.object_of(subject, first)
        return self.object_of(middle, second) if middle else None

    def _choose_controls(self, fact: Fact, via: str | None) -> tuple[str, ...]:
        relation = via or fact.relation

        def answer_of(subject: str) -> str | None:
            if via is None:
                return self.object_of(subject, fact.relation)
            return self.chain_object(subject, via, fact.relation)

        distractors = set(self.distractors(fact))
        chosen = [
            s
            for s in self._claim_subjects.get(relation, ())
            if s != fact.subject and answer_of(s) in distractors
        ]
        rng_key = fact.id if via is None else f"{fact.id}|via:{via}"
        self.rng("controls", rng_key).shuffle(chosen)
        chosen = chosen[: max(MAX_CLAIM_CONTROLS, self.n_controls)]
        taken = set(chosen)
        maskable = {s for s in self._subjects.get(relation, ()) if answer_of(s) in distractors}

        def masked(pool: list[str]) -> Callable[[], list[str]]:
            return lambda: [name for name in pool if maskable.issuperset(self._borrowed[name])]

        # Each pool is listed only when the ones before it left controls missing.
        pools: tuple[Callable[[], list[str]], ...]
        if via is None:
            claim_words, all_words = self._made_up_pools
            pools = (masked(claim_words), masked(all_words), lambda: claim_words, lambda: all_words)
        else:
            via_words = self._made_up_of(via)
            pools = (masked(via_words), lambda: via_words)
        for pool_of in pools:
            missing = self.n_controls - len(chosen)
            if missing <= 0:
                break
            fresh = [name for name in pool_of() if name not in taken]
            picked = self.rng("made-up", rng_key).sample(fresh, min(missing, len(fresh)))
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

    def _made_up_of(self, relation: str) -> list[str]:
        """Made-up names from the words of the subjects of ``relation``."""
        return self.memo(
            ("made-up", relation),
            lambda: self._made_up(self.facts.filter(lambda f: f.relation == relation)),
        )

    @cached_property
    def _borrowed(self) -> dict[str, tuple[str, ...]]:
        return {}

    @cached_property
    def _controls(self) -> dict[tuple[str, str | None], tuple[str, ...]]:
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

    def memo(self, key: Hashable, derive: Callable[[], T]) -> T:
        """``derive()``, computed once per context and ``key`` (probes derived for the claim's
        run are asked again by its power run and its base judgements)."""
        if key not in self._memo:
            self._memo[key] = derive()
        return cast(T, self._memo[key])

    @cached_property
    def _memo(self) -> dict[Hashable, object]:
        return {}

    def subjects_of(self, relation: str) -> list[str]:
        """The subjects of ``relation`` among the known facts, sorted."""
        return self._subjects.get(relation, [])

    def holders(self, relation: str, object: str) -> frozenset[str]:
        """The subjects whose ``relation`` is ``object`` among the known facts."""
        return self._holders.get((relation, object), frozenset())

    @cached_property
    def _holders(self) -> dict[tuple[str, str], frozenset[str]]:
        grouped: dict[tuple[str, str], set[str]] = {}
        for fact in self.facts:
            grouped.setdefault((fact.relation, fact.object), set()).add(fact.subject)
        return {key: frozenset(subjects) for key, subjects in grouped.items()}

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
