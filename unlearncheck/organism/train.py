"""Training and unlearning recipes for the organism (a tiny GPT-2 on CPU).

Losses are computed on whole documents (``<s> text </s>``). The unlearning methods follow the
literature: gradient difference (GradDiff), negative preference optimization (NPO) with a retain
term, each optionally restricted to some parameters or projected after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

__all__ = [
    "TrainConfig",
    "UnlearnConfig",
    "encode",
    "final_token_accuracy",
    "length_grouped_batches",
    "new_model",
    "sequence_nll",
    "steps_for",
    "train_lm",
    "unlearn",
]


@dataclass(frozen=True)
class TrainConfig:
    """Recipe of the original (and gold) model."""

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 64
    lr: float = 3e-3
    epochs: int = 15
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
    #: Stop once the answers of the forget QA documents are predicted at most this often while
    #: those of the retain QA documents still are at least ``keep_accuracy`` of the time
    #: (checked every ``_STOP_CHECK_EVERY`` steps); ``None`` runs all ``steps``.
    stop_at_accuracy: float | None = None
    keep_accuracy: float = 0.0


#: Steps between two checks of ``UnlearnConfig.stop_at_accuracy``.
_STOP_CHECK_EVERY = 10


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


#: Length-sorted parts a batch is run in by ``sequence_nll``.
_NLL_CHUNKS = 2


def sequence_nll(model: torch.nn.Module, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Summed negative log-likelihood of each row (padding excluded): shape [n].

    Rows are right-padded. They are run in two length-sorted halves, each cut to its longest
    row, which spares most of the padding of a random batch and gives the same result.
    """
    lengths = (ids != pad_id).sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    nll = torch.empty(len(ids), dtype=torch.float32)
    parts = [_rows_nll(model, ids[rows], pad_id) for rows in order.chunk(_NLL_CHUNKS)]
    return nll.index_put((order,), torch.cat(parts))


def _rows_nll(model: torch.nn.Module, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
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
    lengths = (ids != pad_id).sum(dim=1)
    model.train()
    step = 0
    while step < total_steps:
        for rows in length_grouped_batches(lengths, config.batch_size, generator):
            if step == total_steps:
                break
            batch = ids[rows]
            tokens = (batch[:, 1:] != pad_id).sum()
            loss = sequence_nll(model, batch, pad_id).sum() / tokens
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
    model.eval()


#: Batches per length-sorted group (as in ``transformers``' ``group_by_length`` sampler).
_GROUP_BATCHES = 50


def length_grouped_batches(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """One shuffled epoch of row indices, batched so that a batch holds rows of similar length.

    The rows are shuffled, cut into groups of ``_GROUP_BATCHES`` batches, sorted by length within
    each group and batched; the batches are then shuffled. Padding drops from about 60% of a
    random batch to a few percent, which halves the time of a training step on CPU.
    """
    order = torch.randperm(len(lengths), generator=generator)
    group = batch_size * _GROUP_BATCHES
    batches: list[torch.Tensor] = []
    for start in range(0, len(order), group):
        rows = order[start : start + group]
        rows = rows[torch.argsort(lengths[rows], stable=True)]
        batches += list(rows.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _should_stop(
    model: torch.nn.Module,
    config: UnlearnConfig,
    step: int,
    stop_ids: tuple[torch.Tensor, torch.Tensor] | None,
    pad_id: int,
) -> bool:
    if config.stop_at_accuracy is None or step % _STOP_CHECK_EVERY:
        return False
    if stop_ids is None:
        raise ValueError("stop_at_accuracy needs the stop_ids documents")
    forget, retain = stop_ids
    return (
        final_token_accuracy(model, forget, pad_id) <= config.stop_at_accuracy
        and final_token_accuracy(model, retain, pad_id) >= config.keep_accuracy
    )


@torch.no_grad()
def final_token_accuracy(model: torch.nn.Module, ids: torch.Tensor, pad_id: int) -> float:
    """Share of documents whose last token before ``</s>`` is the model's greedy prediction.

    For a question-answer document that is the answer, so this is the model's QA accuracy.
    """
    was_training = model.training
    model.eval()
    hits = 0
    for rows in ids.split(256):
        mask = (rows != pad_id).long()
        answer_at = mask.sum(dim=1) - 2  # the last token is </s>
        logits = model(input_ids=rows, attention_mask=mask).logits
        at = torch.arange(len(rows))
        hits += int((logits[at, answer_at - 1].argmax(-1) == rows[at, answer_at]).sum())
    model.train(was_training)
    return hits / len(ids)


def steps_for(n_documents: int, config: TrainConfig) -> int:
    """Optimizer steps of ``config.epochs`` passes over ``n_documents`` documents."""
    return config.epochs * ((n_documents + config.batch_size - 1) // config.batch_size)


def _reference_nll(model: torch.nn.Module, forget_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """NPO's reference: each forget document's NLL under the model before unlearning."""
    with torch.no_grad():
        return torch.cat(
            [sequence_nll(model.eval(), rows, pad_id) for rows in forget_ids.split(256)]
        )


def _optimizer(
    model: torch.nn.Module, config: UnlearnConfig, lr_scale: Callable[[str], float]
) -> torch.optim.AdamW:
    """AdamW over the parameters ``lr_scale`` keeps (one group per scale); the rest frozen."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        scale = lr_scale(name)
        p.requires_grad_(scale > 0)
        if scale > 0:
            groups.setdefault(scale, []).append(p)
    return torch.optim.AdamW(
        [{"params": ps, "lr": config.lr * scale} for scale, ps in groups.items()],
        lr=config.lr,
        weight_decay=0.0,
    )


def _forget_loss(
    model: torch.nn.Module,
    f: torch.Tensor,
    pad_id: int,
    config: UnlearnConfig,
    reference_nll: torch.Tensor | None,
    rows: torch.Tensor,
) -> torch.Tensor:
    """The forget term of the loss on the batch ``f`` (rows ``rows`` of the forget documents)."""
    f_nll = sequence_nll(model, f, pad_id)
    if config.method == "graddiff":
        return -f_nll.sum() / (f[:, 1:] != pad_id).sum()
    if config.method == "npo":
        assert reference_nll is not None
        log_ratio = reference_nll[rows] - f_nll  # log pi_theta(y|x) - log pi_ref(y|x)
        return -(2.0 / config.beta) * F.logsigmoid(-config.beta * log_ratio).mean()
    raise ValueError(f"unknown unlearning method {config.method!r}")


def unlearn(
    model: torch.nn.Module,
    forget_ids: torch.Tensor,
    retain_ids: torch.Tensor,
    pad_id: int,
    config: UnlearnConfig,
    seed: int,
    *,
    lr_scale: Callable[[str], float] = lambda name: 1.0,
    project: Callable[[], None] | None = None,
    stop_ids: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Unlearn ``forget_ids`` while keeping ``retain_ids`` (in place).

    Args:
        model: The model to change.
        forget_ids: Encoded forget documents.
        retain_ids: Encoded retain documents.
        pad_id: Padding token id.
        config: Method, learning rate, steps, NPO beta.
        seed: Seed of the batch sampling.
        lr_scale: Learning-rate multiplier of each named parameter; 0 freezes it.
        project: Called after every optimizer step (e.g. to project weights into a set).
        stop_ids: Forget and retain question-answer documents, whose answer accuracies are
            checked against ``config.stop_at_accuracy`` and ``config.keep_accuracy``.
    """
    reference_nll = _reference_nll(model, forget_ids, pad_id) if config.method == "npo" else None
    optimizer = _optimizer(model, config, lr_scale)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(config.steps):
        if _should_stop(model, config, step, stop_ids, pad_id):
            break
        rows = torch.randint(len(forget_ids), (config.batch_size,), generator=generator)
        f = forget_ids[rows]
        r = retain_ids[torch.randint(len(retain_ids), (config.batch_size,), generator=generator)]
        forget_loss = _forget_loss(model, f, pad_id, config, reference_nll, rows)
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
