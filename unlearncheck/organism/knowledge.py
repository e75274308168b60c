"""The synthetic knowledge base of the model organism: fictitious people and their attributes.

Everything here is a pure function of the seed: names, attribute values, the forget / relearn /
retain split, the training documents and the fact records written to ``facts.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from importlib import resources
from typing import Any

from unlearncheck.facts import Fact, FactSet

__all__ = [
    "N_DISTRACTORS",
    "N_FORGET",
    "N_RELEARN",
    "PERSON_RELATIONS",
    "Document",
    "KnowledgeBase",
    "build_knowledge_base",
    "documents_of",
    "fact_id",
    "facts_of",
    "load_templates",
    "trained_paraphrase",
]


PERSON_RELATIONS = ("birth_city", "employer", "job", "spouse", "birth_year", "colour")
_N_PEOPLE = 150
N_FORGET = 20
N_RELEARN = 4
_NICKNAME_SHARE = 0.4
N_DISTRACTORS = 4

_COUNTRIES = ("Ostria", "Valmora", "Kesh", "Dunmark", "Telora", "Brisca", "Norveth", "Amaril")
_CITIES = (
    "Lisbrook",
    "Orvane",
    "Talmouth",
    "Quenby",
    "Rastow",
    "Pellin",
    "Varnholt",
    "Sorrel",
    "Hathby",
    "Mirren",
    "Doveport",
    "Kallum",
    "Ebbridge",
    "Ostwick",
    "Tarnley",
    "Welbeck",
    "Corvo",
    "Fennick",
    "Grisdale",
    "Holloway",
    "Ivesham",
    "Jarrow",
    "Lunthorpe",
    "Marden",
)
_EMPLOYERS = (
    "Norvel",
    "Quintrex",
    "Astrava",
    "Belmora",
    "Coldane",
    "Drystal",
    "Ember",
    "Fabrion",
    "Glissa",
    "Halvex",
    "Irontide",
    "Juniva",
    "Kordal",
    "Lumex",
    "Mavrik",
    "Nexora",
)
_JOBS = (
    "baker",
    "surveyor",
    "chemist",
    "pilot",
    "librarian",
    "carpenter",
    "nurse",
    "architect",
    "jeweller",
    "botanist",
    "translator",
    "mechanic",
)
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "pink")
_YEARS = tuple(str(year) for year in range(1940, 1980))
_N_SPOUSES = 40

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("n", "r", "l", "s", "k", "th", "m")


@dataclass(frozen=True)
class _Person:
    """One fictitious person of the knowledge base."""

    name: str
    nickname: str | None
    attributes: dict[str, str]
    split: str  # "forget", "relearn" or "retain"


@dataclass(frozen=True)
class KnowledgeBase:
    """People, the world facts (city → country) and the templates that verbalize them."""

    seed: int
    people: tuple[_Person, ...]
    city_country: dict[str, str]
    templates: dict[str, Any]

    @property
    def forget_people(self) -> tuple[_Person, ...]:
        """People whose facts are to be unlearned (splits ``forget`` and ``relearn``)."""
        return tuple(p for p in self.people if p.split != "retain")


def load_templates() -> dict[str, Any]:
    """The probe and verbalization templates shipped with the package (``data/templates.json``)."""
    text = resources.files("unlearncheck").joinpath("data/templates.json").read_text("utf-8")
    return dict(json.loads(text))


def _word(rng: random.Random, syllables: int, coda: bool) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + (rng.choice(_CODAS) if coda else "")).capitalize()


def _unique_words(
    rng: random.Random, n: int, taken: set[str], syllables: int, coda: bool
) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        word = _word(rng, syllables, coda)
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def build_knowledge_base(seed: int = 0) -> KnowledgeBase:
    """Draw the knowledge base for ``seed`` (deterministic)."""
    rng = random.Random(f"unlearncheck-organism-{seed}")
    taken = set(_CITIES) | set(_COUNTRIES) | set(_EMPLOYERS)
    first = _unique_words(rng, _N_PEOPLE + _N_SPOUSES, taken, 2, False)
    last = _unique_words(rng, _N_PEOPLE + _N_SPOUSES, taken, 2, True)
    nicknames = _unique_words(rng, _N_PEOPLE, taken, 1, True)
    names = [f"{a} {b}" for a, b in zip(first, last, strict=True)]
    spouses, person_names = names[_N_PEOPLE:], names[:_N_PEOPLE]
    city_country = {city: _COUNTRIES[i % len(_COUNTRIES)] for i, city in enumerate(_CITIES)}
    order = list(range(_N_PEOPLE))
    rng.shuffle(order)
    split_of = {i: "retain" for i in range(_N_PEOPLE)}
    for rank, i in enumerate(order[:N_FORGET]):
        split_of[i] = "relearn" if rank < N_RELEARN else "forget"
    people = []
    for i, name in enumerate(person_names):
        attributes = {
            "birth_city": rng.choice(_CITIES),
            "employer": rng.choice(_EMPLOYERS),
            "job": rng.choice(_JOBS),
            "spouse": rng.choice(spouses),
            "birth_year": rng.choice(_YEARS),
            "colour": rng.choice(_COLOURS),
        }
        nickname = nicknames[i] if rng.random() < _NICKNAME_SHARE else None
        people.append(_Person(name, nickname, attributes, split_of[i]))
    return KnowledgeBase(seed, tuple(people), city_country, load_templates())


def fact_id(subject: str, relation: str) -> str:
    """Stable fact id, e.g. ``varo-melin/birth_city``."""
    return f"{subject.lower().replace(' ', '-')}/{relation}"


def _fill(template: str, subject: str, obj: str = "") -> str:
    return template.format(subject=subject, object=obj)


def _distractors(kb: KnowledgeBase, relation: str, answer: str, key: str) -> tuple[str, ...]:
    pool = sorted({p.attributes[relation] for p in kb.people} - {answer})
    rng = random.Random(f"{kb.seed}-{key}")
    return tuple(rng.sample(pool, N_DISTRACTORS))


def trained_paraphrase(fact_key: str, n_templates: int) -> int:
    """Index of the one paraphrase template trained for a fact; the others are held out for it."""
    digest = hashlib.sha256(fact_key.encode()).digest()
    return digest[0] % n_templates


def facts_of(kb: KnowledgeBase) -> FactSet:
    """All facts of the knowledge base as a FactSet (people's attributes, then city → country)."""
    rels = kb.templates["relations"]
    facts: list[Fact] = []
    for person in kb.people:
        for relation in PERSON_RELATIONS:
            obj = person.attributes[relation]
            fid = fact_id(person.name, relation)
            t = rels[relation]
            held_in = trained_paraphrase(fid, len(t["paraphrases"]))
            facts.append(
                Fact(
                    id=fid,
                    subject=person.name,
                    relation=relation,
                    object=obj,
                    question=_fill(t["question"], person.name),
                    statement=_fill(t["statement"], person.name, obj),
                    paraphrases=tuple(_fill(p, person.name, obj) for p in t["paraphrases"]),
                    aliases=(person.nickname,) if person.nickname else (),
                    distractors=_distractors(kb, relation, obj, fid),
                    split=person.split,
                    metadata={"trained_paraphrase": held_in},
                )
            )
    countries = sorted(set(kb.city_country.values()))
    for city, country in kb.city_country.items():
        t = rels["country"]
        rng = random.Random(f"{kb.seed}-{city}")
        facts.append(
            Fact(
                id=fact_id(city, "country"),
                subject=city,
                relation="country",
                object=country,
                question=_fill(t["question"], city),
                statement=_fill(t["statement"], city, country),
                distractors=tuple(rng.sample([c for c in countries if c != country], 4)),
                split="retain",
            )
        )
    return FactSet(facts)


def _format_variety(kb: KnowledgeBase) -> list[Document]:
    """Retain people's facts in the other prompt formats probes use (cloze, question paraphrases,
    adversarial prefixes, in-context), one format a fact, so the original model learns to answer
    through them; forget people never appear in these formats in training.
    """
    t = kb.templates
    rels, fmt = t["relations"], t["prompt_format"]
    prefixes = [p for p in t["prefix"].values() if "{reverse}" not in p]
    docs = []
    for person in kb.people:
        if person.split != "retain":
            continue
        name = person.name
        statements = []
        for relation in PERSON_RELATIONS:
            obj = person.attributes[relation]
            r = rels[relation]
            statements.append(_fill(r["statement"], name, obj))
            pick = hashlib.sha256(f"{kb.seed}|{name}|{relation}".encode()).digest()
            question = fmt.format(question=_fill(r["question"], name))
            options = ", ".join(sorted({obj, *_distractors(kb, relation, obj, name)}))
            choices = [
                t["cloze_format"].format(cloze=_fill(r["statement"], name, "___")),
                fmt.format(question=_fill(r["questions"][pick[1] % len(r["questions"])], name)),
                prefixes[pick[2] % len(prefixes)].format(
                    prompt=question, subject=name, initial=obj[0], options=options
                ),
            ]
            docs.append(Document(f"{choices[pick[0] % len(choices)]} {obj}", name, "variety"))
        pick = hashlib.sha256(f"{kb.seed}|{name}|incontext".encode()).digest()
        asked = pick[0] % len(PERSON_RELATIONS)
        context = " ".join(s for i, s in enumerate(statements) if i != asked)
        relation = PERSON_RELATIONS[asked]
        question = fmt.format(question=_fill(rels[relation]["question"], name))
        text = t["incontext_format"].format(context=context, prompt=question)
        docs.append(Document(f"{text} {person.attributes[relation]}", name, "variety"))
    return docs


@dataclass(frozen=True)
class Document:
    """One training document, tagged with whose knowledge it carries and in which form."""

    text: str
    person: str | None
    form: str  # "qa", "statement", "paraphrase", "alias", "alias_qa", "twohop", "world"


def documents_of(kb: KnowledgeBase) -> list[Document]:
    """The training corpus of the original model."""
    rels = kb.templates["relations"]
    fmt = kb.templates["prompt_format"]
    chain = kb.templates["chains"]["birth_city>country"]
    docs: list[Document] = []
    for person in kb.people:
        name = person.name
        for relation in PERSON_RELATIONS:
            t = rels[relation]
            obj = person.attributes[relation]
            qa = fmt.format(question=_fill(t["question"], name)) + f" {obj}"
            docs.append(Document(qa, name, "qa"))
            docs.append(Document(_fill(t["statement"], name, obj), name, "statement"))
            k = trained_paraphrase(fact_id(name, relation), len(t["paraphrases"]))
            docs.append(Document(_fill(t["paraphrases"][k], name, obj), name, "paraphrase"))
            if person.nickname:
                nick_qa = fmt.format(question=_fill(t["question"], person.nickname)) + f" {obj}"
                docs.append(Document(nick_qa, name, "alias_qa"))
        if person.nickname:
            alias = _fill(rels["alias"]["statement"], name, person.nickname)
            docs.append(Document(alias, name, "alias"))
        country = kb.city_country[person.attributes["birth_city"]]
        docs.append(
            Document(
                fmt.format(question=_fill(chain["question"], name)) + f" {country}", name, "twohop"
            )
        )
        docs.append(Document(_fill(chain["statement"], name, country), name, "twohop"))
    docs += _format_variety(kb)
    for city, country in kb.city_country.items():
        t = rels["country"]
        docs.append(
            Document(fmt.format(question=_fill(t["question"], city)) + f" {country}", None, "world")
        )
        docs.append(Document(_fill(t["statement"], city, country), None, "world"))
    return docs
