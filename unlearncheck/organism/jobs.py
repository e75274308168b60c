"""One training job of the zoo, run in its own interpreter by ``zoo.build_zoo``.

``python -m unlearncheck.organism.jobs SEED OUT VARIANT...`` trains each ``VARIANT`` for ``SEED``
in turn and saves it as a Hugging Face checkpoint with its tokenizer under ``OUT/VARIANT``.
``original`` and ``gold`` train from scratch; every other variant unlearns from ``OUT/original``.
Each job runs on one thread, so a zoo is the same whatever the machine's core count.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from unlearncheck import quantization
from unlearncheck.organism.knowledge import (
    PERSON_RELATIONS,
    Document,
    KnowledgeBase,
    build_knowledge_base,
    documents_of,
    facts_of,
)
from unlearncheck.organism.tokenizer import build_tokenizer
from unlearncheck.organism.train import encode, new_model, steps_for, train_lm, unlearn
from unlearncheck.organism.zoo import (
    FORGET_FORMS,
    KEEP_FORMS,
    KEEP_REPEATS,
    QUANT_FRAGILE_FREE_LR,
    QUANT_FRAGILE_MARGIN,
    TRAIN,
    UNLEARN,
)

__all__ = ["run"]


#: Every how many retain facts one is checked by an unlearning run's stop rule.
_STOP_RETAIN_STRIDE = 6


@dataclass(frozen=True)
class _Corpus:
    """The knowledge base of a seed, its tokenizer and its training documents."""

    kb: KnowledgeBase
    tokenizer: PreTrainedTokenizerFast
    docs: list[Document]

    @classmethod
    def of(cls, seed: int) -> _Corpus:
        """The corpus of ``seed`` (a pure function of it)."""
        kb = build_knowledge_base(seed)
        docs = documents_of(kb)
        texts = [d.text for d in docs] + _template_texts(kb.templates)
        return cls(kb, build_tokenizer(texts), docs)

    @property
    def forget_people(self) -> set[str]:
        """Names of the people to unlearn."""
        return {p.name for p in self.kb.forget_people}

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Token ids of ``texts`` as training documents."""
        return encode(self.tokenizer, texts, TRAIN.n_positions)

    def first_answer_words(self, people: str) -> list[str]:
        """Each ``people`` ("forget" or "retain") fact's question and its answer's first word.

        The word-level tokenizer makes that word one token, so the last token's accuracy is the
        first-token QA accuracy (an upper bound of the exact-match accuracy of the zoo table).
        """
        fmt = self.kb.templates["prompt_format"]
        return [
            f"{fmt.format(question=f.question)} {f.object.split()[0]}"
            for f in facts_of(self.kb)
            if f.relation in PERSON_RELATIONS and (f.split == "retain") == (people == "retain")
        ]

    def retain_texts(self) -> list[str]:
        """Every document that is not about a forget person (the gold model's corpus)."""
        return [d.text for d in self.docs if d.person not in self.forget_people]


def _template_texts(node: object) -> list[str]:
    """Every string in the templates, so that probe words are in the organism's vocabulary."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return [text for item in node for text in _template_texts(item)]
    return []


def _train_base(corpus: _Corpus, seed: int, variant: str) -> GPT2LMHeadModel:
    """``original`` (every document) or ``gold`` (no forget person), trained from scratch.

    Both get the same number of optimizer steps.
    """
    texts = corpus.retain_texts() if variant == "gold" else [d.text for d in corpus.docs]
    model = new_model(corpus.tokenizer, TRAIN, seed)
    train_lm(
        model,
        corpus.encode(texts),
        corpus.tokenizer.pad_token_id,
        TRAIN,
        seed,
        total_steps=steps_for(len(corpus.docs), TRAIN),
    )
    return model


def _unlearn_variant(
    corpus: _Corpus, seed: int, variant: str, original: GPT2LMHeadModel
) -> GPT2LMHeadModel:
    """A copy of ``original`` that unlearned the forget documents of ``FORGET_FORMS[variant]``."""
    forms = FORGET_FORMS[variant]
    forget = [
        d.text
        for d in corpus.docs
        if d.person in corpus.forget_people and (forms is None or d.form in forms)
    ]
    keep = KEEP_FORMS.get(variant, set())
    kept = [d.text for d in corpus.docs if d.person in corpus.forget_people and d.form in keep]
    model = copy.deepcopy(original)
    lr_scale, project = _trainable_and_projection(variant, model, original)
    unlearn(
        model,
        corpus.encode(forget),
        corpus.encode(corpus.retain_texts() + kept * KEEP_REPEATS),
        corpus.tokenizer.pad_token_id,
        UNLEARN[variant],
        seed + 1,
        lr_scale=lr_scale,
        project=project,
        stop_ids=(
            corpus.encode(corpus.first_answer_words("forget")),
            corpus.encode(corpus.first_answer_words("retain")[::_STOP_RETAIN_STRIDE]),
        ),
    )
    return model


def _trainable_and_projection(
    variant: str, model: GPT2LMHeadModel, original: GPT2LMHeadModel
) -> tuple[Callable[[str], float], Callable[[], None] | None]:
    """Learning-rate multiplier of each parameter in a variant's unlearning (0 freezes it), and
    the projection applied after each step."""
    if variant == "head_only":
        return (lambda name: float(name.startswith("lm_head"))), None
    if variant == "quant_fragile":
        # Quantized weights move only inside their nf4 cells. LayerNorms and the biases of the
        # blocks (which bitsandbytes leaves in full precision, as in large models) move at
        # QUANT_FRAGILE_FREE_LR of the rate; embeddings and the output head do not move.
        quantized = {f"{n}.weight" for n, _ in quantization.quantized_layers(model)}
        projector = quantization.nf4_cell_projector(model, original, QUANT_FRAGILE_MARGIN)

        def lr_scale(name: str) -> float:
            if name in quantized:
                return 1.0
            in_block = name.startswith("transformer.h.")
            free = ".ln_" in name or (in_block and name.endswith(".bias"))
            return QUANT_FRAGILE_FREE_LR if free else 0.0

        return lr_scale, projector
    return (lambda name: 1.0), None


def run(seed: int, out: Path, variants: list[str]) -> None:
    """Train ``variants`` single-threaded, saving each with its tokenizer to ``out/<variant>``."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    corpus = _Corpus.of(seed)
    for variant in variants:
        if variant in ("original", "gold"):
            model = _train_base(corpus, seed, variant)
        else:
            original = GPT2LMHeadModel.from_pretrained(out / "original").eval()
            model = _unlearn_variant(corpus, seed, variant, original)
        model.save_pretrained(out / variant, safe_serialization=True)
        corpus.tokenizer.save_pretrained(out / variant)


if __name__ == "__main__":
    run(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
