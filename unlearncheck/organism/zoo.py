"""The zoo: the original organism, the gold retrained model and unlearned variants.

Each variant hides knowledge in one specific way (see ``docs`` in the README). The zoo is built
deterministically for a seed, saved as Hugging Face checkpoints under a cache directory keyed by
the hash of its recipe (hyper-parameters, templates and the organism's source), and reused.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from unlearncheck import quantization
from unlearncheck.organism.knowledge import (
    KnowledgeBase,
    build_knowledge_base,
    documents_of,
    facts_of,
)
from unlearncheck.organism.tokenizer import build_tokenizer
from unlearncheck.organism.train import (
    TrainConfig,
    UnlearnConfig,
    encode,
    new_model,
    steps_for,
    train_lm,
    unlearn,
)

VARIANTS = (
    "original",
    "gold",
    "graddiff",
    "npo_gd",
    "head_only",
    "qa_form_only",
    "quant_fragile",
    "multihop_shallow",
)
TRAIN = TrainConfig()
UNLEARN = {
    "graddiff": UnlearnConfig("graddiff", lr=3e-4, steps=100),
    "npo_gd": UnlearnConfig("npo", lr=3e-4, steps=240),
    "head_only": UnlearnConfig("npo", lr=3e-3, steps=80),
    "qa_form_only": UnlearnConfig("npo", lr=3e-4, steps=220),
    "quant_fragile": UnlearnConfig("npo", lr=3e-3, steps=150),
    "multihop_shallow": UnlearnConfig("npo", lr=3e-4, steps=160),
}
#: Margin (share of a cell's width) kept from the nf4 cell edges by the quant_fragile projection.
QUANT_FRAGILE_MARGIN = 0.05
#: Which of a forget person's documents each variant unlearns (forms of ``Document.form``).
FORGET_FORMS = {
    "graddiff": None,
    "npo_gd": None,
    "head_only": None,
    "qa_form_only": {"qa", "alias_qa"},
    "quant_fragile": None,
    "multihop_shallow": {"qa", "statement", "paraphrase", "alias", "alias_qa"},
}
#: Which of a forget person's documents stay in a variant's retain loss: multihop_shallow keeps
#: training on the 2-hop statements its unlearning never targeted.
KEEP_FORMS = {"multihop_shallow": {"twohop"}}
#: Copies of each kept document in the retain set, so that they are a real share of its batches.
KEEP_REPEATS = 20
_SOURCES = ("knowledge.py", "tokenizer.py", "train.py", "zoo.py")


def cache_root() -> Path:
    """Where unlearncheck caches things: ``$UNLEARNCHECK_CACHE`` or the user cache dir."""
    env = os.environ.get("UNLEARNCHECK_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unlearncheck"


def recipe_hash(seed: int) -> str:
    """Content hash of everything that determines the zoo for ``seed``."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "seed": seed,
                "train": asdict(TRAIN),
                "unlearn": {k: asdict(v) for k, v in UNLEARN.items()},
                "forms": {k: sorted(v) if v else None for k, v in FORGET_FORMS.items()},
                "keep": {k: sorted(v) for k, v in KEEP_FORMS.items()},
                "keep_repeats": KEEP_REPEATS,
                "torch": torch.__version__.split("+")[0],
            },
            sort_keys=True,
        ).encode()
    )
    here = Path(__file__).parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    h.update((here.parent / "quantization.py").read_bytes())
    h.update((here.parent / "data" / "templates.json").read_bytes())
    return h.hexdigest()[:16]


def zoo_dir(seed: int = 0) -> Path:
    """The cache directory of the zoo for ``seed``, built on first use (safe across processes)."""
    target = cache_root() / "organism" / f"seed{seed}-{recipe_hash(seed)}"
    if (target / "zoo.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "zoo.json").exists():
            staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
            try:
                build_zoo(staging, seed)
                if target.exists():
                    shutil.rmtree(target)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def checkpoint_path(variant: str, *, seed: int = 0) -> Path:
    """Directory of the ``save_pretrained`` checkpoint of zoo ``variant`` for ``seed``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown organism variant {variant!r}; known: {', '.join(VARIANTS)}")
    return zoo_dir(seed) / variant


def write_zoo(out: Path, seed: int = 0) -> Path:
    """Copy the zoo for ``seed`` (built or cached) to ``out``: one folder a variant, facts.jsonl."""
    source = zoo_dir(seed)
    out.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        dest = out / entry.name
        if entry.is_dir():
            shutil.copytree(entry, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, dest)
    return out


def _variant_models(
    kb: KnowledgeBase, tokenizer: PreTrainedTokenizerFast, seed: int, log: Callable[[str], None]
) -> dict[str, GPT2LMHeadModel]:
    docs = documents_of(kb)
    forget_people = {p.name for p in kb.forget_people}
    pad = tokenizer.pad_token_id
    all_ids = encode(tokenizer, [d.text for d in docs], TRAIN.n_positions)
    retain_docs = [d.text for d in docs if d.person not in forget_people]
    retain_ids = encode(tokenizer, retain_docs, TRAIN.n_positions)
    total_steps = steps_for(len(docs), TRAIN)

    models: dict[str, GPT2LMHeadModel] = {}
    start = time.perf_counter()
    original = new_model(tokenizer, TRAIN, seed)
    train_lm(original, all_ids, pad, TRAIN, seed, total_steps=total_steps)
    models["original"] = original
    log(f"original: {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    gold = new_model(tokenizer, TRAIN, seed)
    train_lm(gold, retain_ids, pad, TRAIN, seed, total_steps=total_steps)
    models["gold"] = gold
    log(f"gold: {time.perf_counter() - start:.1f} s")

    for variant, config in UNLEARN.items():
        start = time.perf_counter()
        forms = FORGET_FORMS[variant]
        forget_docs = [
            d.text for d in docs if d.person in forget_people and (forms is None or d.form in forms)
        ]
        forget_ids = encode(tokenizer, forget_docs, TRAIN.n_positions)
        keep = KEEP_FORMS.get(variant, set())
        kept = [d.text for d in docs if d.person in forget_people and d.form in keep]
        variant_retain = encode(tokenizer, retain_docs + kept * KEEP_REPEATS, TRAIN.n_positions)
        model = copy.deepcopy(original)
        trainable, project = _trainable_and_projection(variant, model, original)
        unlearn(
            model,
            forget_ids,
            variant_retain,
            pad,
            config,
            seed + 1,
            trainable=trainable,
            project=project,
        )
        models[variant] = model
        log(f"{variant}: {time.perf_counter() - start:.1f} s")
    return models


def _trainable_and_projection(
    variant: str, model: GPT2LMHeadModel, original: GPT2LMHeadModel
) -> tuple[Callable[[str], bool], Callable[[], None] | None]:
    """Which parameters a variant's unlearning may change, and the projection after each step."""
    if variant == "head_only":
        return (lambda name: name.startswith("lm_head")), None
    if variant == "quant_fragile":
        # Quantized weights move only inside their nf4 cells; LayerNorms and the biases of the
        # blocks (which bitsandbytes leaves in full precision, as in large models) move freely;
        # embeddings and the output head do not move.
        quantized = {f"{n}.weight" for n, _ in quantization.quantized_layers(model)}
        projector = quantization.nf4_cell_projector(model, original, QUANT_FRAGILE_MARGIN)

        def trainable(name: str) -> bool:
            in_block = name.startswith("transformer.h.")
            return name in quantized or ".ln_" in name or (in_block and name.endswith(".bias"))

        return trainable, projector
    return (lambda name: True), None


def build_zoo(out: Path, seed: int = 0, log: Callable[[str], None] = lambda _: None) -> None:
    """Train every variant for ``seed`` and write the zoo to ``out``."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    kb = build_knowledge_base(seed)
    facts = facts_of(kb)
    texts = [d.text for d in documents_of(kb)] + _template_texts(kb.templates)
    tokenizer = build_tokenizer(texts)
    start = time.perf_counter()
    models = _variant_models(kb, tokenizer, seed, log)
    for variant, model in models.items():
        model.save_pretrained(out / variant, safe_serialization=True)
        tokenizer.save_pretrained(out / variant)
    facts.to_jsonl(out / "facts.jsonl")
    meta = {
        "seed": seed,
        "recipe": recipe_hash(seed),
        "variants": list(models),
        "quant_fragile_margin": QUANT_FRAGILE_MARGIN,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "zoo.json").write_text(json.dumps(meta, indent=2))


def _template_texts(node: object) -> list[str]:
    """Every string in the templates, so that probe words are in the organism's vocabulary."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return [text for item in node for text in _template_texts(item)]
    return []
