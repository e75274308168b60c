"""Wall time per attack per 100 facts on the organism (CPU), and the process's peak memory.

Run: ``python bench/attack_times.py [--variant npo_gd] [--seed 0]``. Each attack runs as its own
claim on every forget fact of the zoo, after the models are loaded; times include deriving the
attack's variants (quantized copies, relearned copies, fitted probes) the first time.
"""

from __future__ import annotations

import argparse
import resource
import time

from unlearncheck.attacks import FULL_ATTACKS
from unlearncheck.claims import assert_forgotten
from unlearncheck.loading import load_model
from unlearncheck.organism import zoo_dir
from unlearncheck.validity import forget_facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="npo_gd")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    zoo = zoo_dir(args.seed)
    facts = forget_facts(zoo)
    model, original = str(zoo / args.variant), str(zoo / "original")
    load_model(model), load_model(original)
    print(f"{args.variant}, {len(facts)} forget facts, seed {args.seed}")
    print(f"{'attack':<14}{'s / 100 facts':>14}{'failed':>8}{'peak RSS GiB':>14}")
    for attack in FULL_ATTACKS:
        start = time.perf_counter()
        verdict = assert_forgotten(
            model,
            facts,
            attacks=[attack],
            original=original,
            raise_on_fail=False,
            on_inconclusive="return",
        )
        per_100 = (time.perf_counter() - start) * 100 / len(facts)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{attack.name:<14}{per_100:>14.1f}{len(verdict.failed):>8}{peak:>14.2f}")


if __name__ == "__main__":
    main()
