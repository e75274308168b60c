"""Bad input gets a clear error before any model work; untrusted checkpoints are refused.

The tables below hold every bad input tried. Each case feeds one through the library, a real
pytest run with the plugin, or the ``unlearncheck`` command, and checks the kind of error (the
exception's exact type; for a pytest run a usage error: exit status 4 and ``ERROR: …``; for the
command exit status 2) and that the message names what is wrong: the file, line and field, the
option, the bad value. Claims are given a model spec that names no checkpoint, so the error they
raise shows that the bad input was found before any model was resolved or loaded.

Placeholders in the expected texts: ``{tmp}`` is the case's scratch directory, ``{<name>}`` the
checkpoint `checkpoints` built under that name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from unlearncheck.attacks import direct, paraphrase
from unlearncheck.backends.hf import HFModel
from unlearncheck.claims import assert_forgotten, assert_retained
from unlearncheck.cli import main
from unlearncheck.facts import MAX_LINE_BYTES, Fact, FactFormatError, FactSet, load_facts, load_tofu
from unlearncheck.lengths import PromptTooLongError
from unlearncheck.loading import load_model
from unlearncheck.probes import TemplateError, Templates
from unlearncheck.score_cache import ScoreCache, ScoreCacheError
from unlearncheck.specs import ModelSpecError, check_checkpoint, resolve_spec

pytest_plugins = ["pytester"]

#: A model spec that names no checkpoint: a claim that got as far as its models would fail on it.
NO_MODEL = "/nonexistent/unlearncheck-model"
FACT = {
    "id": "varo/birth_city",
    "subject": "Varo Melin",
    "relation": "birth_city",
    "object": "Rome",
}


def record(**changes: Any) -> dict[str, Any]:
    """`FACT` with ``changes`` (a value of None removes the key)."""
    merged = {**FACT, **changes}
    return {key: value for key, value in merged.items() if value is not None}


def jsonl(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def one_fact() -> FactSet:
    return FactSet([Fact.from_dict(FACT)])


def long_question() -> FactSet:
    """`FACT` asked with a 120-word question, among two other people's birth cities."""
    question = "In which city was Varo Melin born " * 15
    others = [
        record(id=f"p{i}/birth_city", subject=f"Person {i}", object=c)
        for i, c in enumerate(["Paris", "Oslo"])
    ]
    return FactSet(Fact.from_dict(r) for r in [record(question=question), *others])


@dataclass(frozen=True)
class Scratch:
    """What a case may use: a fresh directory and the module's bad checkpoints."""

    tmp: Path
    checkpoints: dict[str, Path]

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def fill(self, text: str) -> str:
        """``text`` with ``{tmp}`` and ``{<checkpoint>}`` replaced by their paths."""
        return text.format(tmp=self.tmp, **self.checkpoints)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, zoo: Path) -> dict[str, Path]:
    """Tiny random GPT-2 checkpoints with the organism's tokenizer, each bad in one way."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("checkpoints")
    tokenizer_dir = zoo / "original"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def save(name: str, *, rows: int = len(tokenizer), weights: str | None = "safetensors") -> Path:
        config = GPT2Config(
            n_layer=1,
            n_embd=16,
            n_head=2,
            n_positions=64,
            vocab_size=rows,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = GPT2LMHeadModel(config)
        path = root / name
        config.save_pretrained(path)
        if weights == "safetensors":
            model.save_pretrained(path)
        elif weights == "pickle":
            torch.save(model.state_dict(), path / "pytorch_model.bin")
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer_dir / file, path / file)
        return path

    def edit_json(path: Path, **changes: Any) -> None:
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    built = {
        "pickle": save("pickle", weights="pickle"),
        "no_weights": save("no_weights", weights=None),
        "small_embedding": save("small_embedding", rows=10),
    }
    for name in ("remote_code", "remote_tokenizer", "no_config", "bad_config", "no_tokenizer"):
        built[name] = save(name)
    edit_json(built["remote_code"] / "config.json", auto_map={"AutoConfig": "evil.Config"})
    edit_json(
        built["remote_tokenizer"] / "tokenizer_config.json",
        auto_map={"AutoTokenizer": ["evil.Tokenizer", None]},
    )
    (built["no_config"] / "config.json").unlink()
    (built["bad_config"] / "config.json").write_text("{not json")
    for file in ("tokenizer.json", "tokenizer_config.json"):
        (built["no_tokenizer"] / file).unlink()
    built["short_context"] = save("short_context")
    built["bad_sizes"] = save("bad_sizes")
    edit_json(built["bad_sizes"] / "config.json", n_embd=32)
    built["no_pad_eos"] = save("no_pad_eos")
    no_pad = json.loads((built["no_pad_eos"] / "tokenizer_config.json").read_text())
    for key in ("pad_token", "eos_token"):
        no_pad.pop(key, None)
    (built["no_pad_eos"] / "tokenizer_config.json").write_text(json.dumps(no_pad))
    built["corrupt_weights"] = save("corrupt_weights")
    (built["corrupt_weights"] / "model.safetensors").write_bytes(b"not safetensors")
    return built


@pytest.fixture
def scratch(tmp_path: Path, checkpoints: dict[str, Path]) -> Scratch:
    return Scratch(tmp_path, checkpoints)


# --- the library -------------------------------------------------------------------------------

Feed = Callable[[Scratch], object]


def case(id: str, feed: Feed, error: type[Exception], *names: str) -> Any:
    return pytest.param(feed, error, names, id=id)


FACTS_FILE = "{tmp}/facts.jsonl"
TEMPLATES_FILE = "{tmp}/templates.json"


def facts_file(content: str | bytes) -> Feed:
    return lambda s: load_facts(s.file("facts.jsonl", content))


def templates_file(content: str | bytes | object) -> Feed:
    text = content if isinstance(content, str | bytes) else json.dumps(content)
    return lambda s: Templates.load(s.file("templates.json", text))


def claim(facts: object = None, **arguments: Any) -> Feed:
    """``assert_forgotten(NO_MODEL, facts, **arguments)``; `one_fact` when ``facts`` is None."""
    return lambda s: assert_forgotten(NO_MODEL, one_fact() if facts is None else facts, **arguments)


def hf_load(checkpoint: str, **arguments: Any) -> Feed:
    settings = {"device": "cpu", **arguments}
    return lambda s: HFModel.load(s.fill(checkpoint), **settings)


LIBRARY = [
    # facts files
    case("facts: empty file", facts_file(""), FactFormatError, FACTS_FILE, "holds no facts"),
    case("facts: only blank lines", facts_file("\n  \n\n"), FactFormatError, "holds no facts"),
    case(
        "facts: invalid JSON",
        facts_file(jsonl(FACT) + '{"id": "b", "subject": \n'),
        FactFormatError,
        FACTS_FILE + ":2",
        "invalid JSON",
    ),
    case(
        "facts: a line is not an object",
        facts_file('["Varo Melin", "Rome"]\n'),
        FactFormatError,
        FACTS_FILE + ":1",
        "expected a JSON object, got list",
    ),
    case(
        "facts: required field missing",
        facts_file(jsonl(FACT, record(id="b", object=None))),
        FactFormatError,
        FACTS_FILE + ":2",
        "field 'object'",
        "missing required field",
    ),
    case(
        "facts: subject is a number",
        facts_file(jsonl(record(subject=7))),
        FactFormatError,
        FACTS_FILE + ":1",
        "field 'subject'",
        "got int",
    ),
    case(
        "facts: empty id",
        facts_file(jsonl(record(id=""))),
        FactFormatError,
        "field 'id'",
        "must be a non-empty string",
    ),
    case(
        "facts: question is a list",
        facts_file(jsonl(record(question=["Where?"]))),
        FactFormatError,
        "field 'question'",
        "must be a string or null, got list",
    ),
    case(
        "facts: paraphrases is a string",
        facts_file(jsonl(record(paraphrases="Varo Melin comes from Rome ."))),
        FactFormatError,
        "field 'paraphrases'",
        "must be a list of strings, got str",
    ),
    case(
        "facts: a distractor is null",
        facts_file(jsonl(record(distractors=["Oslo", None]))),
        FactFormatError,
        "field 'distractors'",
        "item 1 must be a non-empty string, got null",
    ),
    case(
        "facts: a distractor is the object",
        facts_file(jsonl(record(distractors=["Oslo", " rome"]))),
        FactFormatError,
        "facts.jsonl:1: field 'distractors'",
        "distractor 1 ' rome' is the same as the object",
    ),
    case(
        "facts: a distractor is repeated",
        facts_file(jsonl(record(distractors=["Oslo", "Paris", "oslo"]))),
        FactFormatError,
        "field 'distractors'",
        "distractor 2 'oslo' is the same as distractor 0",
    ),
    case(
        "facts: duplicate id",
        facts_file(jsonl(FACT, record(id="b"), FACT)),
        FactFormatError,
        FACTS_FILE + ":3",
        "field 'id'",
        "duplicate id 'varo/birth_city' (first on line 1)",
    ),
    case(
        "facts: not UTF-8",
        facts_file(jsonl(FACT).encode() + b'{"id": "caf\xe9"}\n'),
        FactFormatError,
        FACTS_FILE + ":2",
        "not UTF-8: byte 0xe9",
    ),
    case(
        "facts: huge line",
        facts_file(jsonl(FACT) + " " * MAX_LINE_BYTES + "\n"),
        FactFormatError,
        FACTS_FILE + ":2",
        f"line longer than {MAX_LINE_BYTES} bytes",
    ),
    case(
        "facts: no such file",
        lambda s: load_facts(s.tmp / "missing.jsonl"),
        FileNotFoundError,
        "{tmp}/missing.jsonl",
    ),
    case(
        "tofu: a row without answer",
        lambda s: load_tofu(
            s.file("tofu.json", '[{"question": "Q?", "answer": "A"},\n{"question": "R?"}]')
        ),
        FactFormatError,
        "{tmp}/tofu.json:2",
        "field 'answer'",
        "missing required field",
    ),
    case(
        "tofu: not UTF-8",
        lambda s: load_tofu(s.file("tofu.json", b'[\n{"question": "Q?",\n"answer": "\xff"}]')),
        FactFormatError,
        "{tmp}/tofu.json:3",
        "not UTF-8: byte 0xff",
    ),
    # templates files
    case(
        "templates: invalid JSON",
        templates_file('{\n  "relations": {\n    "colour": }\n}'),
        TemplateError,
        TEMPLATES_FILE + ":3",
        "invalid JSON",
    ),
    case(
        "templates: top level is a list",
        templates_file([]),
        TemplateError,
        TEMPLATES_FILE,
        "the top level must be a JSON object",
    ),
    case(
        "templates: not UTF-8",
        templates_file(b'{\n"prompt_format": "Q\xe9 {question}"}'),
        TemplateError,
        TEMPLATES_FILE + ":2",
        "not UTF-8",
    ),
    case(
        "templates: unknown placeholder",
        templates_file({"relations": {"colour": {"question": "Which colour does {person} like?"}}}),
        TemplateError,
        TEMPLATES_FILE,
        "relations.colour.question",
        "unknown placeholder {{person}}",
        "allowed: {{subject}}",
    ),
    case(
        "templates: questions is a string",
        templates_file({"relations": {"colour": {"questions": "Which colour?"}}}),
        TemplateError,
        "relations.colour.questions",
        "must be a list of templates, got str",
    ),
    case(
        "templates: malformed template",
        templates_file({"prefix": {"hint": "Remember {subject"}}),
        TemplateError,
        "prefix.hint",
        "malformed template 'Remember {{subject'",
    ),
    case(
        "templates: relations is a list",
        templates_file({"relations": ["colour"]}),
        TemplateError,
        "relations: must be an object, got list",
    ),
    case(
        "templates: prompt format is a number",
        templates_file({"prompt_format": 3}),
        TemplateError,
        "prompt_format: must be a string, got int",
    ),
    # claims: every one fails before its model spec (which names nothing) is resolved
    case(
        "claim: relation without templates and fact without question",
        claim(facts=[Fact("ada/colour", "Ada Rask", "favourite_colour", "red")]),
        FactFormatError,
        "field 'relation'",
        "fact 'ada/colour'",
        "relation 'favourite_colour' has no question or statement template",
    ),
    case(
        "claim: attack given by name",
        claim(attacks=["paraphrase"]),
        TypeError,
        "attacks[0] is the name 'paraphrase'",
        "unlearncheck.attacks.paraphrase",
    ),
    case(
        "claim: unknown attack name",
        claim(attacks=[direct, "quant5"]),
        TypeError,
        "attacks[1] is the name 'quant5'",
        "unknown attack name",
        "quant4, quant4_fp4",
    ),
    case(
        "claim: attacks is one string",
        claim(attacks="paraphrase"),
        TypeError,
        "attacks must be a list of attacks, got 'paraphrase'",
    ),
    case("claim: no attack", claim(attacks=[]), ValueError, "needs at least one attack"),
    case(
        "claim: an attack twice",
        claim(attacks=[direct, paraphrase, direct]),
        ValueError,
        "attacks[2]: attack 'direct' is listed twice",
    ),
    case(
        "claim: facts given as a path",
        claim(facts="facts.jsonl"),
        TypeError,
        "facts is the path 'facts.jsonl'",
        "load_facts('facts.jsonl')",
    ),
    case(
        "claim: a fact that is a dict",
        claim(facts=[FACT]),
        TypeError,
        "facts[0] is {{'id': 'varo/birth_city'",
        "not a Fact",
    ),
    case(
        "claim: no facts", claim(facts=[]), ValueError, "assert_forgotten needs at least one fact"
    ),
    case("claim: alpha above 1", claim(alpha=1.5), ValueError, "alpha", "got 1.5"),
    case(
        "claim: tolerance that nothing can exceed",
        claim(tolerance=1.0),
        ValueError,
        "tolerance must be at least 0 and below 1",
        "got 1.0",
    ),
    case("claim: unknown readout", claim(readout="mean"), ValueError, "unknown readout 'mean'"),
    case(
        "claim: a seed torch cannot take",
        claim(seed=2**70),
        ValueError,
        "seed must be a whole number from 0 to 2**63 - 1, got 1180591620717411303424",
    ),
    case(
        "claim: the meta device",
        claim(device="meta"),
        ValueError,
        "device 'meta' holds no data",
    ),
    case(
        "claim: a question longer than the model's context",
        lambda s: assert_forgotten(str(s.checkpoints["short_context"]), long_question(), [direct]),
        PromptTooLongError,
        "fact 'varo/birth_city'",
        "over the 64 positions of {short_context}'s context",
    ),
    case(
        "claim: unknown on_inconclusive",
        claim(on_inconclusive="ignore"),
        ValueError,
        "on_inconclusive must be 'raise' or 'return', got 'ignore'",
    ),
    case(
        "retained: max_loss above 1",
        lambda s: assert_retained(NO_MODEL, one_fact(), max_loss=2),
        ValueError,
        "max_loss must be between 0 and 1, got 2",
    ),
    # model specs and checkpoints
    case(
        "model: no such directory",
        hf_load("{tmp}/no-such-model"),
        ModelSpecError,
        "'{tmp}/no-such-model'",
        "not an existing directory",
    ),
    case(
        "model: organism spec without variant",
        lambda s: resolve_spec("organism:"),
        ModelSpecError,
        "'organism:'",
        "missing variant name",
    ),
    case(
        "model: organism spec with a bad seed",
        lambda s: resolve_spec("organism:gold@seed=x"),
        ModelSpecError,
        "'organism:gold@seed=x'",
        "expected '@seed=<n>'",
    ),
    case(
        "model: unknown organism variant",
        lambda s: load_model("organism:goldd"),
        ModelSpecError,
        "unknown organism variant 'goldd'",
        "gold, graddiff",
    ),
    case(
        "model: endpoint spec without URL",
        lambda s: load_model("openai:tiny"),
        ModelSpecError,
        "'openai:tiny'",
        "expected openai:<model name>@<http(s) base URL>",
    ),
    case(
        "checkpoint: config sizes that do not match the weights",
        hf_load("{bad_sizes}"),
        ModelSpecError,
        "{bad_sizes}: its weights do not match config.json: 16 tensor(s) shaped differently",
        "is [16] in model.safetensors, [32] by config.json",
    ),
    case(
        "checkpoint: a tokenizer with neither pad nor eos token",
        hf_load("{no_pad_eos}"),
        ModelSpecError,
        "{no_pad_eos}: its tokenizer has neither a pad nor an eos token",
    ),
    case(
        "model: organism spec with a seed torch cannot take",
        lambda s: resolve_spec("organism:gold@seed=1180591620717411303424"),
        ModelSpecError,
        "'organism:gold@seed=1180591620717411303424'",
        "from 0 to 2**63 - 1",
    ),
    case(
        "model: organism spec with a superscript seed",
        lambda s: resolve_spec("organism:gold@seed=\u00b2"),
        ModelSpecError,
        "expected '@seed=<n>'",
    ),
    case(
        "facts: a 5,000-digit number",
        facts_file(
            '{"id": "a", "subject": "s", "relation": "r", "object": "o", "n": ' + "1" * 5000 + "}\n"
        ),
        FactFormatError,
        FACTS_FILE + ":1",
        "invalid JSON",
        "4300 digits",
    ),
    case(
        "facts: arrays nested 100,000 deep",
        facts_file(jsonl(FACT) + "[" * 100_000 + "]" * 100_000 + "\n"),
        FactFormatError,
        FACTS_FILE + ":2",
        "nested too deeply",
    ),
    case(
        "templates: a 5,000-digit number",
        templates_file('{"n": ' + "1" * 5000 + "}"),
        TemplateError,
        TEMPLATES_FILE,
        "invalid JSON",
    ),
    case(
        "score cache: a folder that cannot be created",
        lambda s: ScoreCache(s.file("file", "") / "sub" / "scores.sqlite"),
        ScoreCacheError,
        "{tmp}/file/sub/scores.sqlite: cannot create the score cache's folder",
        "--uc-cache",
    ),
    case(
        "checkpoint: no config.json",
        hf_load("{no_config}"),
        ModelSpecError,
        "{no_config}/config.json: no such file",
    ),
    case(
        "checkpoint: config.json is not JSON",
        hf_load("{bad_config}"),
        ModelSpecError,
        "{bad_config}/config.json: not a JSON file",
    ),
    case(
        "checkpoint: pickle weights only",
        hf_load("{pickle}"),
        ModelSpecError,
        "{pickle}: refused",
        "pytorch_model.bin",
        "can execute arbitrary code",
        "--uc-allow-pickle",
        "allow_pickle=True",
    ),
    case(
        "checkpoint: config with auto_map",
        hf_load("{remote_code}"),
        ModelSpecError,
        "{remote_code}/config.json: refused",
        "auto_map (AutoConfig)",
        "--uc-trust-remote-code",
        "trust_remote_code=True",
    ),
    case(
        "checkpoint: tokenizer config with auto_map",
        hf_load("{remote_tokenizer}"),
        ModelSpecError,
        "{remote_tokenizer}/tokenizer_config.json: refused",
        "auto_map (AutoTokenizer)",
    ),
    case(
        "checkpoint: no weights",
        hf_load("{no_weights}"),
        ModelSpecError,
        "{no_weights}: no weights",
    ),
    case(
        "checkpoint: corrupt weights",
        hf_load("{corrupt_weights}"),
        ModelSpecError,
        "{corrupt_weights}: cannot load its weights",
        "header",
    ),
    case(
        "checkpoint: no tokenizer",
        hf_load("{no_tokenizer}"),
        ModelSpecError,
        "{no_tokenizer}: no tokenizer",
        "tokenizer.json",
    ),
    case(
        "checkpoint: tokenizer larger than the embedding",
        hf_load("{small_embedding}"),
        ModelSpecError,
        "{small_embedding}: the tokenizer has 706 tokens",
        "embedding has 10 rows (config.json vocab_size)",
    ),
    case(
        "load: unknown dtype",
        hf_load("{pickle}", dtype="int3"),
        ValueError,
        "unknown dtype 'int3'",
    ),
    case("load: unknown device", hf_load("{pickle}", device="gpu"), ValueError, "device 'gpu'"),
    case(
        "load: CUDA device this machine lacks",
        hf_load("{pickle}", device="cuda:99"),
        ValueError,
        "device 'cuda:99': this machine has",
    ),
]


@pytest.mark.parametrize(("feed", "error", "names"), LIBRARY)
def test_the_library_refuses(
    feed: Feed, error: type[Exception], names: tuple[str, ...], scratch: Scratch
) -> None:
    with pytest.raises(Exception) as info:
        feed(scratch)
    assert type(info.value) is error, info.value
    for name in names:
        assert scratch.fill(name) in str(info.value)


# --- the pytest plugin ---------------------------------------------------------------------------

#: Usage errors stop the session before any test runs.
NEVER_RUNS = "def test_never_runs():\n    raise AssertionError('ran despite a usage error')\n"


def plugin_case(id: str, args: tuple[str, ...], ini: str, *names: str) -> Any:
    return pytest.param(args, ini, names, id=id)


BAD_FACTS = jsonl(FACT, record(id="b", object=None))
PLUGIN = [
    plugin_case(
        "--uc-seed not a number", ("--uc-seed=abc",), "", "--uc-seed: not an integer: 'abc'"
    ),
    plugin_case("ini uc_seed not an integer", (), "uc_seed = 1.5", "not an integer: '1.5'"),
    plugin_case(
        "ini uc_allow_pickle not a boolean",
        (),
        "uc_allow_pickle = maybe",
        "uc_allow_pickle: expected true or false, got 'maybe'",
    ),
    plugin_case(
        "--uc-trust-remote-code given a value",
        ("--uc-trust-remote-code=yes",),
        "",
        "--uc-trust-remote-code: ignored explicit argument 'yes'",
    ),
    plugin_case(
        "misspelt option", ("--uc-modle=organism:gold",), "", "unrecognized arguments: --uc-modle"
    ),
    plugin_case(
        "--uc-facts missing file",
        ("--uc-facts={tmp}/missing.jsonl",),
        "",
        "--uc-facts:",
        "{tmp}/missing.jsonl",
    ),
    plugin_case(
        "--uc-facts with a bad line",
        ("--uc-facts={tmp}/bad.jsonl",),
        "",
        "--uc-facts: {tmp}/bad.jsonl:2: field 'object': missing required field",
    ),
    plugin_case(
        "--uc-model no such directory",
        ("--uc-model={tmp}/no-such-model",),
        "",
        "--uc-model: cannot resolve model spec '{tmp}/no-such-model'",
    ),
    plugin_case(
        "--uc-original malformed organism spec",
        ("--uc-original=organism:gold@seed=x",),
        "",
        "--uc-original: malformed organism spec 'organism:gold@seed=x': expected '@seed=<n>'",
    ),
    plugin_case(
        "--uc-model pickle checkpoint",
        ("--uc-model={pickle}",),
        "",
        "--uc-model: {pickle}: refused",
        "--uc-allow-pickle",
    ),
    plugin_case(
        "--uc-reference remote code checkpoint",
        ("--uc-reference={remote_code}",),
        "",
        "--uc-reference: {remote_code}/config.json: refused",
        "--uc-trust-remote-code",
    ),
    plugin_case("--uc-device unknown", ("--uc-device=gpu",), "", "--uc-device: device 'gpu'"),
    plugin_case(
        "--uc-device meta", ("--uc-device=meta",), "", "--uc-device: device 'meta' holds no data"
    ),
    plugin_case(
        "--uc-seed too large",
        ("--uc-seed=1180591620717411303424",),
        "",
        "--uc-seed must be a whole number from 0 to 2**63 - 1",
    ),
    plugin_case(
        "--uc-cache folder that cannot be created",
        ("--uc-cache={tmp}/bad.jsonl/sub/scores.sqlite",),
        "",
        "--uc-cache: {tmp}/bad.jsonl/sub/scores.sqlite: cannot create the score cache's folder",
    ),
    plugin_case(
        "--uc-report is a directory",
        ("--uc-report={tmp}",),
        "",
        "--uc-report: {tmp} exists and is a directory, not a regular file",
    ),
    plugin_case(
        "--uc-json (the report's stem + .jsonl) is the facts file",
        ("--uc-facts={tmp}/ok.jsonl", "--uc-report={tmp}/ok.html"),
        "",
        "--uc-json: {tmp}/ok.jsonl is the facts file (--uc-facts); an output never replaces",
    ),
    plugin_case(
        "--uc-json is a named pipe",
        ("--uc-json={tmp}/pipe",),
        "",
        "--uc-json: {tmp}/pipe exists and is a named pipe, not a regular file",
    ),
    plugin_case(
        "--uc-report is a .jsonl path: the run log's",
        ("--uc-report={tmp}/out/run.jsonl",),
        "",
        "--uc-report and --uc-json both name {tmp}/out/run.jsonl",
    ),
    plugin_case(
        "--uc-report is a file unlearncheck did not write",
        ("--uc-report={tmp}/short.key",),
        "",
        "--uc-report: {tmp}/short.key exists and is a file unlearncheck did not write",
    ),
    plugin_case(
        "--uc-sign-key too short",
        ("--uc-sign-key={tmp}/short.key",),
        "",
        "--uc-sign-key: {tmp}/short.key: a signing key needs at least 32 bytes",
    ),
    plugin_case(
        "--uc-cache is a directory",
        ("--uc-cache={tmp}",),
        "",
        "--uc-cache: {tmp}: not a usable unlearncheck score cache",
    ),
]


@pytest.mark.parametrize(("args", "ini", "names"), PLUGIN)
def test_the_plugin_refuses(
    args: tuple[str, ...],
    ini: str,
    names: tuple[str, ...],
    scratch: Scratch,
    pytester: pytest.Pytester,
) -> None:
    scratch.file("bad.jsonl", BAD_FACTS)
    scratch.file("ok.jsonl", jsonl(FACT))
    scratch.file("short.key", "0123")
    os.mkfifo(scratch.tmp / "pipe")
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(test_never_runs=NEVER_RUNS)
    cache = () if any(a.startswith("--uc-cache") for a in args) else ("--uc-cache=off",)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", *cache, *(scratch.fill(a) for a in args)
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = result.stderr.str()
    assert errors.startswith("ERROR: ")
    for name in names:
        assert scratch.fill(name) in errors
    assert sorted(p.name for p in scratch.tmp.iterdir()) == [
        "bad.jsonl",
        "ok.jsonl",
        "pipe",
        "short.key",
    ]
    assert scratch.tmp.joinpath("ok.jsonl").read_text() == jsonl(FACT)  # an input stays as it was


# --- the command ---------------------------------------------------------------------------------


def exit_status(argv: list[str]) -> int | str | None:
    """What ``unlearncheck argv`` exits with (argparse exits on its own errors)."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


METRICS = ("metrics", "--model=organism:gold", "--reference=organism:original")
COMMAND = [
    pytest.param(
        [
            "metrics",
            "--model=organism:gold",
            "--reference=organism:original",
            "--facts={tmp}/no.jsonl",
        ],
        ("unlearncheck metrics: ", "{tmp}/no.jsonl"),
        id="metrics: facts file missing",
    ),
    pytest.param(
        [
            "metrics",
            "--model=organism:gold",
            "--reference=organism:original",
            "--facts={tmp}/bad.jsonl",
        ],
        ("unlearncheck metrics: {tmp}/bad.jsonl:2: field 'object': missing required field",),
        id="metrics: facts file with a bad line",
    ),
    pytest.param(
        # the first model's weights are corrupt: loading it first would fail on them instead
        [
            "metrics",
            "--model={corrupt_weights}",
            f"--reference={NO_MODEL}",
            "--facts={tmp}/ok.jsonl",
        ],
        (f"unlearncheck metrics: cannot resolve model spec '{NO_MODEL}'",),
        id="metrics: bad reference found before any model loads",
    ),
    pytest.param(
        ["metrics", "--model=organism:gold"],
        ("the following arguments are required: --reference",),
        id="metrics: no reference",
    ),
    pytest.param(
        [*METRICS, "--facts={tmp}/ok.jsonl"],
        ("unlearncheck metrics: {tmp}/ok.jsonl has no forget and no retain facts; the scorecard",),
        id="metrics: neither split, found before any model loads",
    ),
    pytest.param(
        ["serve", "{tmp}/no-such-model", "--port=0"],
        ("unlearncheck serve: cannot resolve model spec '{tmp}/no-such-model'",),
        id="serve: no such model",
    ),
    pytest.param(
        [*METRICS, "--facts={tmp}/ok.jsonl", "--json={tmp}/ok.jsonl"],
        ("unlearncheck metrics: --json: {tmp}/ok.jsonl is the facts file (--facts)",),
        id="metrics: the JSON output is the facts file",
    ),
    pytest.param(
        [*METRICS, "--facts={tmp}/ok.jsonl", "--json={tmp}/run.jsonl", "--runlog={tmp}/run.jsonl"],
        ("unlearncheck metrics: --json: {tmp}/run.jsonl is the output of --runlog",),
        id="metrics: the JSON output is the run log",
    ),
    pytest.param(
        [*METRICS, "--facts={tmp}/ok.jsonl", "--json={tmp}/bad.jsonl"],
        (
            "unlearncheck metrics: --json: {tmp}/bad.jsonl exists and was not written by "
            "unlearncheck",
        ),
        id="metrics: the JSON output is a file unlearncheck did not write",
    ),
    pytest.param(
        ["generate", "--original=organism:gold", "--facts={tmp}/ok.jsonl", "--out={tmp}/bad.jsonl"],
        (
            "unlearncheck generate: --out: {tmp}/bad.jsonl exists and was not written by "
            "unlearncheck",
        ),
        id="generate: the output is a file unlearncheck did not write",
    ),
    pytest.param(
        ["generate", "--original=organism:gold", "--facts={tmp}/ok.jsonl", "--out={tmp}/ok.jsonl"],
        ("unlearncheck generate: --out: {tmp}/ok.jsonl is the facts file (--facts)",),
        id="generate: the output is the facts file",
    ),
    pytest.param(
        ["report", "{tmp}/broken.jsonl"],
        ("unlearncheck report: {tmp}/broken.jsonl:2: invalid run log record",),
        id="report: a broken middle line",
    ),
    pytest.param(
        ["report", "{tmp}/latin1.jsonl"],
        ("unlearncheck report: {tmp}/latin1.jsonl:2: not UTF-8 (byte 0xe9 at column",),
        id="report: a byte that is not UTF-8",
    ),
    pytest.param(
        ["report", "{tmp}/run.jsonl", "-o", "{tmp}/run.jsonl"],
        ("unlearncheck report: -o/--output: {tmp}/run.jsonl is the run log being read",),
        id="report: the output is the run log",
    ),
    pytest.param(
        ["report", "{tmp}/run.jsonl", "-o", "{tmp}"],
        ("unlearncheck report: -o/--output: {tmp} exists and is a directory",),
        id="report: the output is a directory",
    ),
    pytest.param(
        ["verify", "{tmp}/run.jsonl"],
        ("unlearncheck verify: {tmp}/run.evidence.json: no evidence file",),
        id="verify: no evidence file",
    ),
    pytest.param(
        ["serve", "{no_pad_eos}", "--port=0"],
        ("unlearncheck serve: {no_pad_eos}: its tokenizer has neither a pad nor an eos token",),
        id="serve: a tokenizer with neither pad nor eos token",
    ),
    pytest.param(
        ["serve", "{tmp}/m", "--max-work=0"],
        ("--max-work: must be at least 1, got 0",),
        id="serve: a work cap below 1",
    ),
    pytest.param(
        ["organism", "--out={tmp}/zoo", "--seed=1180591620717411303424"],
        ("--seed: a seed must be a whole number from 0 to 2**63 - 1",),
        id="organism: a seed torch cannot take",
    ),
    pytest.param(
        ["validity", "--reference=goldd"],
        ("unlearncheck validity: ", "unknown organism variant 'goldd'"),
        id="validity: unknown reference variant",
    ),
]


@pytest.mark.parametrize(("argv", "names"), COMMAND)
def test_the_command_refuses(
    argv: list[str],
    names: tuple[str, ...],
    scratch: Scratch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scratch.file("bad.jsonl", BAD_FACTS)
    scratch.file("ok.jsonl", jsonl(FACT))
    run = jsonl({"kind": "run", "session": "s"}, {"kind": "verdict", "claim": "c"})
    scratch.file("run.jsonl", run)
    scratch.file("broken.jsonl", run.replace("\n", "\n{broken\n", 1))
    scratch.file("latin1.jsonl", run.replace('"c"', '"caf\u00e9"').encode("latin-1"))
    before = {p.name: p.read_bytes() for p in scratch.tmp.iterdir()}
    assert exit_status([scratch.fill(a) for a in argv]) == 2
    assert {p.name: p.read_bytes() for p in scratch.tmp.iterdir()} == before  # nothing written
    errors = capsys.readouterr().err
    for name in names:
        assert scratch.fill(name) in errors


# --- untrusted checkpoints -----------------------------------------------------------------------


def test_pickle_weights_load_only_when_allowed(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["pickle"]
    for refused in (HFModel.load, load_model):
        with pytest.raises(ModelSpecError, match="can execute arbitrary code"):
            refused(str(path), device="cpu")
    model = HFModel.load(str(path), device="cpu", allow_pickle=True)
    saved = torch.load(path / "pytorch_model.bin", weights_only=True)
    loaded = model.model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in saved.items())
    assert load_model(str(path), device="cpu", allow_pickle=True).source == path


def test_remote_code_is_refused_unless_trusted(checkpoints: dict[str, Path]) -> None:
    for name, config in (
        ("remote_code", "config.json"),
        ("remote_tokenizer", "tokenizer_config.json"),
    ):
        path = checkpoints[name]
        with pytest.raises(ModelSpecError, match="trust_remote_code=True") as info:
            load_model(str(path), device="cpu")
        assert str(info.value).startswith(f"{path / config}: refused")
        check_checkpoint(path, trust_remote_code=True)  # trusted: its code is the user's call


LOADED = """
def test_loaded(unlearned, uc_options):
    assert uc_options.allow_pickle and not uc_options.trust_remote_code
    assert str(unlearned.source) == uc_options.model
"""


def test_the_plugin_loads_pickle_weights_with_allow_pickle(
    checkpoints: dict[str, Path], pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(test_loaded=LOADED)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--uc-cache=off",
        f"--uc-model={checkpoints['pickle']}",
        "--uc-allow-pickle",
    )
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("spec", "suggested"),
    [
        ("organism:gld", "'gold'"),
        ("organism:npogd", "'npo_gd'"),
        ("organism-real:orignal", "'original'"),
        ("organsim:gold", "'organism:gold'"),
        ("orgnism-real:npo_gd", "'organism-real:npo_gd'"),
    ],
)
def test_a_misspelled_spec_gets_a_suggestion(spec: str, suggested: str) -> None:
    from unlearncheck.specs import check_spec

    with pytest.raises(ModelSpecError, match=f"did you mean {suggested}"):
        check_spec(spec)


def test_misspelled_attacks_get_a_suggestion(
    tiny_checkpoint: Path, homes: FactSet, capsys: pytest.CaptureFixture[str]
) -> None:
    from unlearncheck.specs import check_spec

    with pytest.raises(TypeError, match=r"unknown attack name \(did you mean 'paraphrase'"):
        assert_forgotten(str(tiny_checkpoint), homes, ["paraphrse"])  # type: ignore[list-item]
    assert main(["validity", "--attacks", "direct,quant_4"]) == 2
    assert "unknown attack 'quant_4' (did you mean 'quant4'?)" in capsys.readouterr().err
    with pytest.raises(ModelSpecError) as far:
        check_spec("organism:zzzzzz")
    assert "did you mean" not in str(far.value)  # nothing close: no suggestion


def test_a_misspelled_option_default_gets_a_suggestion(pytestconfig: pytest.Config) -> None:
    from unlearncheck.pytest_plugin import set_defaults

    with pytest.raises(ValueError, match=re.escape("batchsize (did you mean 'batch_size'?)")):
        set_defaults(pytestconfig, batchsize="8")  # refused before anything is set
