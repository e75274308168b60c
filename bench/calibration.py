"""The false-FAIL rate of one-fact claims on gold: does the stated alpha hold for one fact?

Run: ``python bench/calibration.py [--seed S ...] [--attacks a,b,...] [--facts N] [--real-null]
[--json PATH]``. For each zoo seed (default 0, 1, 2; each zoo is built on first use) it makes one
claim per forget fact on ``gold`` (the model retrained without the forget people, which knows
none of them) with ``original=organism:original``, against chance, for each attack alone and for
all input attacks at once (``input``), and counts the claims FAILED: each is a false alarm. It
prints, per (seed, attack), FAIL / claims, the rate and its two-sided Clopper–Pearson 95%
interval, then the pooled rate per attack over the seeds. ``--real-null`` adds the real
organism's null split (made-up countries) as one-fact claims on its original with
``original=``: never FAIL (needs the ``real`` extra). ``--facts N`` takes the first N forget facts
of each zoo (default all 96). Results also go to ``bench/results/calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from scipy import stats

from unlearncheck import load_facts
from unlearncheck.attacks import FULL_ATTACKS, INPUT_ATTACKS, Attack
from unlearncheck.loading import load_model
from unlearncheck.organism import zoo_dir
from unlearncheck.validity import forget_facts, single_fact_failures

ALPHA = 0.05


def clopper_pearson(failed: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval of a binomial rate."""
    tail = (1 - level) / 2
    low = float(stats.beta.ppf(tail, failed, n - failed + 1)) if failed else 0.0
    high = float(stats.beta.ppf(1 - tail, failed + 1, n - failed)) if failed < n else 1.0
    return low, high


def row(label: str, failed: int, n: int) -> dict[str, object]:
    """One printed and recorded line: counts, rate and interval."""
    low, high = clopper_pearson(failed, n)
    rate = failed / n if n else 0.0
    print(f"{label:28} {failed:4d}/{n:<4d} {rate:6.3f}  [{low:.3f}, {high:.3f}]", flush=True)
    return {"label": label, "failed": failed, "n": n, "rate": rate, "ci95": [low, high]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", dest="seeds", type=int, action="append")
    parser.add_argument("--attacks", help="comma-separated attack names (default: all, and input)")
    parser.add_argument("--facts", type=int, help="first N forget facts of each zoo")
    parser.add_argument("--real-null", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("bench/results/calibration.json"))
    args = parser.parse_args()
    by_name: dict[str, Sequence[Attack]] = {a.name: [a] for a in FULL_ATTACKS}
    by_name["input"] = INPUT_ATTACKS
    names = args.attacks.split(",") if args.attacks else [*by_name]
    rows: list[dict[str, object]] = []
    pooled_rows: list[dict[str, object]] = []
    results: dict[str, object] = {"alpha": ALPHA, "rows": rows, "pooled": pooled_rows}
    pooled: dict[str, list[int]] = {name: [0, 0] for name in names}
    print(f"{'seed / attack':28} {'FAIL/n':>9} {'rate':>6}  95% interval")
    for seed in args.seeds or [0, 1, 2]:
        zoo = zoo_dir(seed)
        facts = forget_facts(zoo)[: args.facts]
        context = load_facts(zoo / "facts.jsonl")
        gold, original = load_model(str(zoo / "gold")), load_model(str(zoo / "original"))
        for name in names:
            start = time.perf_counter()
            failed = single_fact_failures(
                gold, facts, by_name[name], original=original, context=context
            )
            line = row(f"seed {seed} {name}", len(failed), len(facts))
            line.update(seed=seed, attack=name, failed_ids=failed)
            line["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(line)
            pooled[name][0] += len(failed)
            pooled[name][1] += len(facts)
    for name, (count, n) in pooled.items():
        pooled_rows.append(row(f"pooled {name}", count, n))
    if args.real_null:
        results["real_null"] = real_null()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")


def real_null() -> dict[str, int]:
    """One-fact claims on the real organism's null split, with ``original=``: FAIL count."""
    from unlearncheck.organism.real import real_zoo_dir

    zoo = real_zoo_dir(print)
    context = load_facts(zoo / "facts.jsonl")
    null = context.split("null")
    original = load_model(str(zoo / "original"))
    failed = single_fact_failures(original, null, INPUT_ATTACKS, original=original, context=context)
    row("real null (input)", len(failed), len(null))
    return {"failed": len(failed), "n": len(null)}


if __name__ == "__main__":
    main()
