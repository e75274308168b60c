"""The zoo: the original organism, the gold retrained model and unlearned variants.

Each variant hides knowledge in one specific way (see ``docs`` in the README). The zoo is built
deterministically for a seed, saved as Hugging Face checkpoints under a cache directory keyed by
the hash of its recipe (hyper-parameters, templates and the organism's source), and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from unlearncheck.organism.building import built_once, run_tied
from unlearncheck.organism.knowledge import (
    build_knowledge_base,
    facts_of,
)
from unlearncheck.organism.train import (
    TrainConfig,
    UnlearnConfig,
)

__all__ = [
    "FORGET_FORMS",
    "KEEP_FORMS",
    "KEEP_REPEATS",
    "QUANT_FRAGILE_FREE_LR",
    "QUANT_FRAGILE_MARGIN",
    "TRAIN",
    "UNLEARN",
    "VARIANTS",
    "build_zoo",
    "cache_root",
    "checkpoint_path",
    "write_zoo",
    "zoo_dir",
]


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
    "qa_form_only": UnlearnConfig("npo", lr=3e-4, steps=100, retain_weight=5.0),
    "quant_fragile": UnlearnConfig(
        "npo", lr=3e-3, steps=300, stop_at_accuracy=0.15, keep_accuracy=0.6
    ),
    "multihop_shallow": UnlearnConfig("npo", lr=3e-4, steps=160, retain_weight=3.0),
}
#: Margin (share of a cell's width) kept from the nf4 cell edges by the quant_fragile projection.
QUANT_FRAGILE_MARGIN = 0.05
#: Share of the learning rate at which quant_fragile's full-precision LayerNorms and biases move.
QUANT_FRAGILE_FREE_LR = 0.3
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
#: The module a training job runs (``python -m``; see `unlearncheck.organism.jobs`).
_JOB_MODULE = "unlearncheck.organism.jobs"
_SOURCES = ("jobs.py", "knowledge.py", "tokenizer.py", "train.py", "zoo.py")


def cache_root() -> Path:
    """Where unlearncheck caches things: ``$UNLEARNCHECK_CACHE`` or the user cache dir."""
    env = os.environ.get("UNLEARNCHECK_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unlearncheck"


def _recipe_hash(seed: int) -> str:
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
    target = cache_root() / "organism" / f"seed{seed}-{_recipe_hash(seed)}"
    return built_once(target, lambda staging: build_zoo(staging, seed))


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


def _run_job(seed: int, variants: list[str], staging: Path) -> float:
    """Train ``variants``, one after the other, into ``staging`` in a fresh interpreter that
    dies with this process (`run_tied`).

    Returns the job's seconds.
    """
    start = time.perf_counter()
    done = run_tied(_JOB_MODULE, [str(seed), str(staging), *variants])
    if done.returncode != 0:
        raise RuntimeError(f"training organism variants {variants} failed:\n{done.stderr[-4000:]}")
    return time.perf_counter() - start


def _balanced_groups(variants: list[str], n: int) -> list[list[str]]:
    """``variants`` split into at most ``n`` groups of similar total unlearning steps."""
    groups: list[list[str]] = [[] for _ in range(min(n, len(variants)))]
    for variant in sorted(variants, key=lambda v: -UNLEARN[v].steps):
        min(groups, key=lambda g: sum(UNLEARN[v].steps for v in g)).append(variant)
    return groups


def _train_variants(seed: int, staging: Path, log: Callable[[str], None]) -> None:
    """Train every variant into ``staging`` with single-threaded jobs on parallel processes.

    Jobs are separate interpreters (``python -m unlearncheck.organism.jobs``), so that no
    caller's ``__main__`` is re-imported and torch's thread pools are never forked. ``original``
    and ``gold`` train side by side; then the unlearning runs, split into one group a core,
    start from the saved original.
    """
    workers = max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        phases = [[["original"], ["gold"]], _balanced_groups(list(UNLEARN), workers)]
        for groups in phases:
            futures = [pool.submit(_run_job, seed, group, staging) for group in groups]
            for group, future in zip(groups, futures, strict=True):
                log(f"{', '.join(group)}: {future.result():.1f} s")


def build_zoo(out: Path, seed: int = 0, log: Callable[[str], None] = lambda _: None) -> None:
    """Train every variant for ``seed`` and write the zoo to ``out``."""
    start = time.perf_counter()
    _train_variants(seed, out, log)
    facts_of(build_knowledge_base(seed)).to_jsonl(out / "facts.jsonl")
    meta = {
        "seed": seed,
        "recipe": _recipe_hash(seed),
        "variants": list(VARIANTS),
        "quant_fragile_margin": QUANT_FRAGILE_MARGIN,
        "quant_fragile_free_lr": QUANT_FRAGILE_FREE_LR,
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "zoo.json").write_text(json.dumps(meta, indent=2))
