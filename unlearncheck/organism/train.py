"""Training and unlearning recipes for the organism (a tiny GPT-2 on CPU).

Losses are computed on whole documents (``<s> text </s>``). The unlearning methods follow the
literature: gradient difference (GradDiff), negative preference optimization (NPO) with a retain
term, each optionally restricted to some parameters or projected after every step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast


@dataclass(frozen=True)
class TrainConfig:
    """Recipe of the original (and gold) model."""

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 64
    lr: float = 3e-3
    epochs: int = 20
    batch_size: int = 32


@dataclass(frozen=True)
class UnlearnConfig:
    """Recipe of one unlearning run."""

    method: str  # "graddiff" or "npo"
    lr: float
    steps: int
    batch_size: int = 32
    beta: float = 0.1
    retain_weight: float = 1.0


def new_model(
    tokenizer: PreTrainedTokenizerFast, config: TrainConfig, seed: int
) -> GPT2LMHeadModel:
    """A freshly initialized GPT-2 sized by ``config`` (untied head, no dropout)."""
    torch.manual_seed(seed)
    gpt2 = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(gpt2)


def encode(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str], max_len: int) -> torch.Tensor:
    """Token ids of ``<s> text </s>`` for every text, right-padded: shape [n, max_len]."""
    rows = [
        [tokenizer.bos_token_id, *tokenizer(t)["input_ids"], tokenizer.eos_token_id] for t in texts
    ]
    longest = max(len(r) for r in rows)
    if longest > max_len:
        raise ValueError(f"a document has {longest} tokens, more than the context of {max_len}")
    out = torch.full((len(rows), longest), tokenizer.pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def sequence_nll(model: torch.nn.Module, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Summed negative log-likelihood of each row (padding excluded): shape [n].

    Rows are right-padded, so the columns after the longest row are dropped first.
    """
    mask = (ids != pad_id).long()
    width = int(mask.sum(dim=1).max())
    ids, mask = ids[:, :width], mask[:, :width]
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = ids[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (nll * mask[:, 1:]).sum(dim=1)


def train_lm(
    model: torch.nn.Module,
    ids: torch.Tensor,
    pad_id: int,
    config: TrainConfig,
    seed: int,
    *,
    total_steps: int,
) -> None:
    """Language-model training on the documents ``ids`` for ``total_steps`` steps (in place).

    Epochs are shuffled passes over ``ids``; the step count is fixed so that a model trained on
    fewer documents (the gold model) gets the same optimization budget as the original.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=0.05
    )
    model.train()
    step = 0
    while step < total_steps:
        order = torch.randperm(len(ids), generator=generator)
        for start in range(0, len(ids), config.batch_size):
            if step == total_steps:
                break
            batch = ids[order[start : start + config.batch_size]]
            tokens = (batch[:, 1:] != pad_id).sum()
            loss = sequence_nll(model, batch, pad_id).sum() / tokens
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
    model.eval()


def steps_for(n_documents: int, config: TrainConfig) -> int:
    """Optimizer steps of ``config.epochs`` passes over ``n_documents`` documents."""
    return config.epochs * ((n_documents + config.batch_size - 1) // config.batch_size)


def unlearn(
    model: torch.nn.Module,
    forget_ids: torch.Tensor,
    retain_ids: torch.Tensor,
    pad_id: int,
    config: UnlearnConfig,
    seed: int,
    *,
    trainable: Callable[[str], bool] = lambda name: True,
    project: Callable[[], None] | None = None,
) -> None:
    """Unlearn ``forget_ids`` while keeping ``retain_ids`` (in place).

    Args:
        model: The model to change.
        forget_ids: Encoded forget documents.
        retain_ids: Encoded retain documents.
        pad_id: Padding token id.
        config: Method, learning rate, steps, NPO beta.
        seed: Seed of the batch sampling.
        trainable: Which named parameters may change; the others are frozen.
        project: Called after every optimizer step (e.g. to project weights into a set).
    """
    reference = copy.deepcopy(model).eval() if config.method == "npo" else None
    params = [p for n, p in model.named_parameters() if trainable(n)]
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name))
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(config.steps):
        f = forget_ids[torch.randint(len(forget_ids), (config.batch_size,), generator=generator)]
        r = retain_ids[torch.randint(len(retain_ids), (config.batch_size,), generator=generator)]
        f_nll = sequence_nll(model, f, pad_id)
        if config.method == "graddiff":
            forget_loss = -f_nll.sum() / (f[:, 1:] != pad_id).sum()
        elif config.method == "npo":
            assert reference is not None
            with torch.no_grad():
                ref_nll = sequence_nll(reference, f, pad_id)
            log_ratio = ref_nll - f_nll  # log pi_theta(y|x) - log pi_ref(y|x)
            forget_loss = -(2.0 / config.beta) * F.logsigmoid(-config.beta * log_ratio).mean()
        else:
            raise ValueError(f"unknown unlearning method {config.method!r}")
        retain_tokens = (r[:, 1:] != pad_id).sum()
        retain_loss = sequence_nll(model, r, pad_id).sum() / retain_tokens
        loss = forget_loss + config.retain_weight * retain_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if project is not None:
            with torch.no_grad():
                project()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
