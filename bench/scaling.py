"""How a claim's time grows with its facts (about 10×) and its attacks (2×), in one run.

Run: ``python bench/scaling.py [--variant npo_gd] [--seed 0] [--out bench/results]``.

The claim runs on the model under test with the original given, from an empty score cache, for
every combination of: the 96 forget facts or every person fact of the organism (forget and retain
people: about 9.4× as many), and three input attacks (direct, paraphrase, prefix) or all six.
Each row gives the time and the (prompt, option) requests scored on the model per (fact, attack):
a fact's controls are capped (`MAX_CLAIM_CONTROLS`), so the requests per fact stop growing once a
claim is large. Results go to ``<out>/scaling.json`` and are printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from unlearncheck import scoring
from unlearncheck.attacks import INPUT_ATTACKS
from unlearncheck.attacks.input import direct, paraphrase, prefix
from unlearncheck.claims import assert_forgotten
from unlearncheck.facts import load_facts
from unlearncheck.loading import load_model
from unlearncheck.organism import zoo_dir
from unlearncheck.organism.knowledge import PERSON_RELATIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="npo_gd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    zoo = zoo_dir(args.seed)
    facts = load_facts(zoo / "facts.jsonl")
    fact_sets = {
        "forget": facts.split("forget"),
        "all people": facts.filter(lambda f: f.relation in PERSON_RELATIONS),
    }
    attack_sets = {"3 attacks": (direct, paraphrase, prefix), "6 attacks": INPUT_ATTACKS}
    model, original = load_model(str(zoo / args.variant)), str(zoo / "original")
    load_model(original)
    scoring.use_score_cache(None)
    rows = []
    for facts_name, claim_facts in fact_sets.items():
        for attacks_name, attacks in attack_sets.items():
            scoring.forget_scores()
            start = time.perf_counter()
            verdict = assert_forgotten(
                model,
                claim_facts,
                attacks=attacks,
                original=original,
                raise_on_fail=False,
                on_inconclusive="return",
            )
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "facts": facts_name,
                    "n_facts": len(claim_facts),
                    "attacks": attacks_name,
                    "seconds": round(seconds, 1),
                    "ms_per_fact_attack": round(1e3 * seconds / len(claim_facts) / len(attacks), 1),
                    "requests_per_fact_attack": round(
                        len(scoring.scored_requests(model)) / len(claim_facts) / len(attacks), 1
                    ),
                    "status": verdict.status,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
