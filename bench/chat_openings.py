"""How a chat model's answers are read: the relation's question asked in each way, side by side.

Run: ``python bench/chat_openings.py [--zoo DIR]`` (default: the real organism, built on first
use; needs the ``real`` extra). On the zoo's ``original`` and its forget facts, each fact's
question is asked as plain ``Question: … Answer:``; in the chat format with the answer as the
assistant's first words (no opening); with the generic openings "The answer is" and "Answer:";
and with the statement's first words ("The capital of France is", what the input attacks use).
For each way it prints the mean p̂ of the answer among its options and the share of facts whose
answer ranks first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from unlearncheck.attacks.input import answer_opening
from unlearncheck.backends.hf import HFModel
from unlearncheck.facts import load_facts
from unlearncheck.probes import Templates, question_of
from unlearncheck.scoring import Scorer

#: (name, prompt format, opening: None for none, "statement" for the fact's own).
WAYS = (
    ("plain Question: … Answer:", "plain", None),
    ("chat, no opening", "chat", None),
    ("chat, 'The answer is'", "chat", "The answer is"),
    ("chat, 'Answer:'", "chat", "Answer:"),
    ("chat, the statement's first words", "chat", "statement"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, help="zoo directory (default: the real organism)")
    args = parser.parse_args()
    if args.zoo is None:
        from unlearncheck.organism.real import real_zoo_dir

        args.zoo = real_zoo_dir(print)
    facts = load_facts(args.zoo / "facts.jsonl").split("forget")
    print(f"{args.zoo / 'original'}: {len(facts)} forget facts")
    print(f"{'asked as':40} {'mean p̂':>7} {'first':>6}")
    for name, prompt_format, opening in WAYS:
        model = HFModel.load(str(args.zoo / "original"), device="cpu", prompt_format=prompt_format)
        templates = Templates.load().for_format(prompt_format)
        items = []
        for fact in facts:
            words = (
                answer_opening(fact, templates, fact.subject) if opening == "statement" else opening
            )
            prompt = templates.format_question(str(question_of(fact, templates)), words)
            items.append((prompt, [fact.object, *fact.distractors]))
        shares = Scorer().distributions(model, items)
        p_hat = float(np.mean([d[0] for d in shares]))
        first = float(np.mean([d.argmax() == 0 for d in shares]))
        print(f"{name:40} {p_hat:7.2f} {first:6.2f}")


if __name__ == "__main__":
    main()
