"""The organism claims suite (``probes/``) end to end: from an empty score cache, then re-run.

Run: ``python bench/suite.py [--model organism:npo_gd] [--out bench/results]``.

Each run is ``python -m pytest probes/`` in a subprocess, as a user runs it, with its own score
cache file (so the first run computes every score and the re-runs read them) and its report in a
temporary directory. The zoo must already be built (it is, after the README's main job). Results
go to ``<out>/suite.json`` and are printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unlearncheck.runlog import read_runlog

RUNS = (
    ("empty score cache", ()),
    ("re-run, scores cached", ()),
    ("re-run, scores cached, -n 2", ("-n", "2")),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="organism:npo_gd")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache, log = Path(tmp) / "scores.sqlite", Path(tmp) / "run.jsonl"
        for name, extra in RUNS:
            command = [
                *(sys.executable, "-m", "pytest", "probes/", "-q", "-p", "no:cacheprovider"),
                *(f"--uc-model={args.model}", f"--uc-cache={cache}"),
                *(f"--uc-report={Path(tmp) / 'report.html'}", f"--uc-json={log}"),
                *extra,
            ]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - start
            records = list(read_runlog(log))
            rows.append(
                {
                    "run": name,
                    "seconds": round(seconds, 1),
                    "exit_status": done.returncode,
                    "summary": done.stdout.strip().splitlines()[-1],
                    "cases": sum(r["kind"] == "case" for r in records),
                    "verdicts": sorted(
                        (r["test"], r["status"]) for r in records if r["kind"] == "verdict"
                    ),
                }
            )
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "verdicts"}), flush=True)
    same = all(row["verdicts"] == rows[0]["verdicts"] for row in rows)
    print(f"verdicts identical across runs: {same}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "suite.json").write_text(
        json.dumps({"model": args.model, "verdicts_identical": same, "runs": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
