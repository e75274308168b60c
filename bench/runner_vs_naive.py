"""The runner against a naive loop and against the model's raw forward throughput, in one run.

Run: ``python bench/runner_vs_naive.py [--variant npo_gd] [--seed 0] [--out bench/results]``.

1. The organism suite's input-attack claim (every forget fact, the six input attacks, with the
   original) runs once end to end; every (prompt, continuation) it scores on the model under test
   is the workload of the next steps.
2. **runner**: `Scorer.loglikelihoods` on that workload, from an empty cache (batched, sorted by
   length, one forward pass per distinct context for one-token answers).
3. **naive loop**: what research scripts do: for each (prompt, continuation), tokenize the
   concatenation, run one forward pass and sum the continuation's log-probabilities.
4. **raw forward**: the model's forward pass alone on length-sorted, pre-tokenized, pre-padded
   batches of the same sequences (no tokenization, no read-out): the practical limit.

Throughput is counted in real (non-padding) tokens of the prompt+continuation sequences.
Results go to ``<out>/runner_vs_naive.json`` and are printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from unlearncheck import scoring
from unlearncheck.attacks import INPUT_ATTACKS
from unlearncheck.backends.hf import HFModel
from unlearncheck.claims import assert_forgotten
from unlearncheck.organism import zoo_dir
from unlearncheck.validity import forget_facts

BATCH = 64


def workload(model: HFModel, zoo: Path) -> tuple[list[tuple[str, str]], float]:
    """Every request the input-attack claim scores on ``model``, and the claim's wall time."""
    scoring.use_score_cache(None)
    scoring.forget_scores()
    start = time.perf_counter()
    assert_forgotten(
        model,
        forget_facts(zoo),
        attacks=INPUT_ATTACKS,
        original=str(zoo / "original"),
        raise_on_fail=False,
        on_inconclusive="return",
    )
    seconds = time.perf_counter() - start
    requests = scoring.scored_requests(model)
    return requests, seconds


def naive_loop(model: HFModel, requests: list[tuple[str, str]]) -> list[float]:
    """One tokenization and one forward pass per request, as a research script would."""
    tokenizer, out = model.tokenizer, []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for prompt, continuation in requests:
        context = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        whole = bos + tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([whole])
        with torch.inference_mode():
            logprobs = model.model(input_ids=ids).logits[0].float().log_softmax(-1)
        targets = whole[len(context) :]
        positions = range(len(context) - 1, len(whole) - 1)
        out.append(sum(float(logprobs[p, t]) for p, t in zip(positions, targets, strict=True)))
    return out


def raw_forward(model: HFModel, requests: list[tuple[str, str]]) -> tuple[float, int]:
    """Seconds of the bare forward passes over the same sequences, and their real tokens."""
    rows = sorted((model.tokenizer(p + c)["input_ids"] for p, c in requests), key=len, reverse=True)
    pad = model.tokenizer.pad_token_id or 0
    batches = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        width = len(chunk[0])
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(chunk):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        batches.append((ids, mask))
    start = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in batches:
            model.model(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - start, sum(len(r) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="npo_gd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    zoo = zoo_dir(args.seed)
    model = HFModel.load(str(zoo / args.variant), device="cpu")
    requests, claim_seconds = workload(model, zoo)

    scoring.forget_scores()
    start = time.perf_counter()
    batched = scoring.Scorer(readout="sum", batch_size=BATCH).loglikelihoods(model, requests)
    runner_seconds = time.perf_counter() - start

    start = time.perf_counter()
    naive = naive_loop(model, requests)
    naive_seconds = time.perf_counter() - start
    worst = max(abs(a - b) for a, b in zip(batched, naive, strict=True))

    raw_seconds, tokens = raw_forward(model, requests)
    result = {
        "variant": args.variant,
        "seed": args.seed,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "requests": len(requests),
        "tokens": tokens,
        "claim_end_to_end_s": round(claim_seconds, 2),
        "runner_s": round(runner_seconds, 3),
        "naive_loop_s": round(naive_seconds, 3),
        "runner_speedup_over_naive": round(naive_seconds / runner_seconds, 1),
        "max_abs_difference_runner_vs_naive": worst,
        "raw_forward_s": round(raw_seconds, 3),
        "runner_tokens_per_s": round(tokens / runner_seconds),
        "raw_forward_tokens_per_s": round(tokens / raw_seconds),
        "runner_fraction_of_raw_forward": round(raw_seconds / runner_seconds, 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runner_vs_naive.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
