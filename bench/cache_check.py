"""What the score cache's check costs: a cached re-run of a claim with and without it.

Run: ``python bench/cache_check.py [--zoo DIR] [--variants gold,npo_gd,original] [--repeats 2]
[--out bench/results]``.

For claims on the zoo's variants with the six input attacks on the 96 forget facts and the
original given (``gold`` and ``npo_gd`` have facts that PASS, so every cached score they use is
re-scored; ``original`` FAILs every fact, so only the spot checks run): the claim is scored once
into an empty cache file, then re-run from that file in fresh processes with the check
(`unlearncheck.cache_check`) and without it (no spot checks, no re-check before a PASS),
alternating. Each time is the claim alone (models loaded before).
Results go to ``<out>/cache_check.json`` and are printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unlearncheck import cache_check, scoring
from unlearncheck.attacks import INPUT_ATTACKS
from unlearncheck.claims import assert_forgotten
from unlearncheck.facts import load_facts
from unlearncheck.loading import load_model
from unlearncheck.organism import zoo_dir

VARIANTS = "gold,npo_gd,original"


def _claim(zoo: Path, variant: str, cache: Path, checked: bool) -> dict[str, object]:
    """One claim run from ``cache``, in this process: its time, status and cache record."""
    if not checked:
        cache_check.SPOT_CHECKS = 0
        scoring.confirm_cached = lambda: None  # type: ignore[assignment]
    scoring.use_score_cache(cache)
    model, original = (load_model(str(zoo / name)) for name in (variant, "original"))
    forget = load_facts(zoo / "facts.jsonl").split("forget")
    start = time.perf_counter()
    verdict = assert_forgotten(
        model,
        forget,
        INPUT_ATTACKS,
        original=original,
        raise_on_fail=False,
        on_inconclusive="return",
    )
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "status": verdict.status, **verdict.config["score_cache"]}


def _child(zoo: Path, variant: str, cache: Path, checked: bool) -> dict[str, object]:
    """`_claim` in a fresh interpreter (nothing in memory but what the cache file holds)."""
    command = [sys.executable, __file__, "--child", variant, str(cache), str(checked), str(zoo)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zoo", type=Path, default=None, help="a zoo folder (default: seed 0's)")
    parser.add_argument("--variants", default=VARIANTS, help="comma-separated zoo variants")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, cache, checked, zoo = args.child
        print(json.dumps(_claim(Path(zoo), variant, Path(cache), checked == "True")))
        return
    zoo = args.zoo or zoo_dir(0)
    rows: dict[str, dict[str, list[dict[str, object]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            cache = Path(tmp) / f"{variant}.sqlite"
            rows[variant] = {"fill": [_child(zoo, variant, cache, True)], "on": [], "off": []}
            for _ in range(args.repeats):
                for mode in ("on", "off"):
                    rows[variant][mode].append(_child(zoo, variant, cache, mode == "on"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache_check.json").write_text(json.dumps(rows, indent=2) + "\n")
    for variant, modes in rows.items():
        for mode, runs in modes.items():
            times = ", ".join(f"{run['seconds']:.1f} s" for run in runs)
            last = runs[-1]
            print(
                f"{variant:7} {mode:5} {times:20} {last['status']:13} "
                f"from cache {last['from_cache']}, re-checked {last['rechecked']}"
            )


if __name__ == "__main__":
    main()
