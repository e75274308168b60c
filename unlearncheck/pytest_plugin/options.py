"""The plugin's settings: the ``--uc-*`` options and ``uc_*`` ini keys, conftest defaults
(`set_defaults`), their resolution into `Options`, and the check of the inputs at session start."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import pytest

from unlearncheck.suggestions import did_you_mean

if TYPE_CHECKING:
    from unlearncheck.facts import FactSet

__all__ = [
    "DEFAULT_REPORT",
    "FACTS_FILE",
    "Options",
    "check_inputs",
    "default_cache",
    "facts_path",
    "get_options",
    "pytest_addoption",
    "set_batch_size",
    "set_defaults",
    "suite_facts",
    "use_score_cache",
]

DEFAULT_REPORT = "reports/unlearncheck.html"

#: (name, help) of every option: ``--uc-<name>`` on the command line, ``uc_<name>`` in the ini file
#: (``-`` becomes ``_``); every value is a string, parsed where needed.
_OPTIONS = (
    ("model", "model under test: checkpoint directory, cached hub id or organism:<variant>"),
    ("original", "the model before unlearning (facts it does not know are INCONCLUSIVE)"),
    ("reference", "a model retrained without the forget set (baseline instead of chance)"),
    ("facts", "facts.jsonl of the claims (default: the zoo's facts for an organism model)"),
    (
        "device",
        "torch device of the models (default: cuda when available, else cpu; auto: spread each "
        "model over the visible GPUs, with accelerate)",
    ),
    (
        "dtype",
        "dtype the checkpoints load in: auto (default: bfloat16 on CUDA, float32 elsewhere), "
        "float32, bfloat16 or float16",
    ),
    (
        "prompt-format",
        "how prompts reach the models: auto (default: the tokenizer's chat template when it has "
        "one), chat (each prompt a user turn of the chat template) or plain (the text as it is)",
    ),
    (
        "threads",
        "torch intra-op threads of each process (default: the physical CPU cores, or "
        "$OMP_NUM_THREADS when set, shared evenly among pytest-xdist workers)",
    ),
    (
        "batch-size",
        "sequences per forward pass when scoring probes, or auto (start at 512, halve on "
        "out-of-memory)",
    ),
    ("seed", "seed the suite passes to its claims (uc_options.seed); default 0"),
    (
        "report",
        f"HTML report path (default {DEFAULT_REPORT}): a link to each session's own "
        "<stem>.<session>.html, never another file",
    ),
    (
        "json",
        "run log (JSONL) path (default: the report path with suffix .jsonl): a link to each "
        "session's own <stem>.<session>.jsonl, never another file",
    ),
    (
        "sign-key",
        "file holding a secret key (at least 32 bytes) to sign the report's evidence file with "
        "(HMAC-SHA256; unlearncheck verify --key checks it)",
    ),
    (
        "cache",
        "SQLite score cache (default: scores.sqlite in the unlearncheck cache dir; off: none)",
    ),
    (
        "generator-url",
        "base URL of an OpenAI-compatible chat API whose model writes paraphrases and aliases "
        "(the generator fixture's llm_paraphrase, llm_alias); key from $OPENAI_API_KEY",
    ),
    ("generator-model", "model name of the generator LLM at --uc-generator-url"),
    (
        "inconclusive",
        "what an INCONCLUSIVE claim does to its test: fail (default) or warn (the test passes "
        "with an InconclusiveClaimWarning; the claim still counts INCONCLUSIVE in the summary "
        "and report)",
    ),
)
#: The allowed values of the options that take one of a few words (the first is the default).
#: ``dtype`` and ``prompt-format`` are those of `unlearncheck.backends.hf_loading.DTYPES` and
#: `unlearncheck.backends.hf.PROMPT_FORMATS`, spelled here so that the plugin imports no torch.
_CHOICES = {
    "inconclusive": ("fail", "warn"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "prompt-format": ("auto", "chat", "plain"),
}
#: (name, help) of every switch: ``--uc-<name>`` on the command line, ``uc_<name> = true`` in the
#: ini file.
_FLAGS = (
    (
        "allow-pickle",
        "load pickle weights (pytorch_model.bin) of checkpoints without safetensors: unpickling "
        "can execute code, so only for checkpoints you trust",
    ),
    (
        "trust-remote-code",
        "run the code a checkpoint ships (auto_map in its config): only for checkpoints you trust",
    ),
)
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Options:
    """The plugin's settings, resolved from the command line, then ini, then conftest defaults.

    Attributes:
        model: Spec of the model under test (None when not set).
        original: Spec of the model before unlearning.
        reference: Spec of the retrained reference model.
        facts: Path of the facts file (None: derived from an organism model spec).
        device: Torch device (None: automatic; ``auto``: spread over the visible GPUs).
        dtype: The dtype checkpoints load in (``auto``: bfloat16 on CUDA, float32 elsewhere).
        prompt_format: How prompts reach the models (``auto``: chat when the tokenizer has a
            chat template; `unlearncheck.backends.hf.PromptFormat`).
        threads: Torch intra-op threads of each process (None: the physical cores, or
            ``$OMP_NUM_THREADS``, shared among the xdist workers;
            `unlearncheck.pytest_plugin.fixtures.default_threads`).
        batch_size: Scoring batch size (None: the library default; ``auto`` for
            `unlearncheck.scoring.AUTO_BATCH_SIZE`, halved on out-of-memory).
        seed: Seed passed by the suite to its claims.
        report: HTML report path.
        json: Run log path.
        sign_key: Key file to sign the evidence file with (None: unsigned).
        cache: Score cache path (None: no cache on disk).
        allow_pickle: Load pickle weights of checkpoints without safetensors.
        trust_remote_code: Run the code checkpoints ship.
        generator_url: Base URL of the generator LLM's API (None: no generator LLM).
        generator_model: The generator LLM's model name.
        inconclusive: What an INCONCLUSIVE claim (`unlearncheck.verdict.InconclusiveError`
            leaving the test function) does to its test: ``fail`` it, or ``warn`` and pass it
            (`unlearncheck.pytest_plugin.inconclusive`).
    """

    model: str | None = None
    original: str | None = None
    reference: str | None = None
    facts: Path | None = None
    device: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    prompt_format: Literal["auto", "chat", "plain"] = "auto"
    threads: int | None = None
    batch_size: int | Literal["auto"] | None = None
    seed: int = 0
    report: Path = field(default_factory=lambda: Path(DEFAULT_REPORT))
    json: Path = field(default_factory=lambda: Path(DEFAULT_REPORT).with_suffix(".jsonl"))
    sign_key: Path | None = None
    cache: Path | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    generator_url: str | None = None
    generator_model: str | None = None
    inconclusive: Literal["fail", "warn"] = "fail"


_DEFAULTS = pytest.StashKey[dict[str, str]]()
_OPTIONS_KEY = pytest.StashKey[Options]()
_FACTS = pytest.StashKey["FactSet"]()
#: The facts file `suite_facts` loaded in this process (absent: it loaded none).
FACTS_FILE = pytest.StashKey["Path | None"]()


def _dest(name: str) -> str:
    """The ini key and option ``dest`` of an option name: ``batch-size`` -> ``uc_batch_size``."""
    return "uc_" + name.replace("-", "_")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options ``--uc-*`` in one group, each with an ini key ``uc_*`` (the option wins)."""
    group = parser.getgroup("unlearncheck", "unlearning claims (unlearncheck)")
    for name, help_text in _OPTIONS:
        # An option of a few words shows them: --uc-inconclusive=fail|warn.
        extra = {"metavar": "|".join(_CHOICES[name])} if name in _CHOICES else {}
        group.addoption(f"--uc-{name}", dest=_dest(name), default=None, help=help_text, **extra)
        parser.addini(_dest(name), help_text, type="string", default="")
    for name, help_text in _FLAGS:
        group.addoption(
            f"--uc-{name}", dest=_dest(name), action="store_true", default=None, help=help_text
        )
        parser.addini(_dest(name), help_text + " (true/false)", type="string", default="")


def set_defaults(config: pytest.Config, **values: str) -> None:
    """Set defaults below the command line and ini (call it from a conftest's pytest_configure).

    Keys are option names with ``_`` for ``-`` (``model``, ``original``, ``batch_size``, …).
    """
    known = {name.replace("-", "_") for name, _ in (*_OPTIONS, *_FLAGS)}
    unknown = set(values) - known
    if unknown:
        names = sorted(unknown)
        hint = did_you_mean(names[0], known)
        raise ValueError(f"unknown unlearncheck options: {', '.join(names)}{hint}")
    config.stash.setdefault(_DEFAULTS, {}).update(values)
    if _OPTIONS_KEY in config.stash:
        del config.stash[_OPTIONS_KEY]


def get_options(config: pytest.Config) -> Options:
    """The resolved settings of this session (computed once)."""
    if _OPTIONS_KEY not in config.stash:
        config.stash[_OPTIONS_KEY] = _resolve(config)
    return config.stash[_OPTIONS_KEY]


class _Values:
    """The raw values of the options that are set, each with the base of a relative path:
    command line (the invocation directory), ini (the ini file's directory), conftest defaults
    (the rootdir), in that order."""

    def __init__(self, config: pytest.Config) -> None:
        defaults = config.stash.get(_DEFAULTS, {})
        ini_base = config.inipath.parent if config.inipath else config.rootpath
        self.values: dict[str, tuple[str, Path]] = {}  # key -> (value, base of a relative path)
        self.origins: dict[str, str] = {}  # key -> where its value was set, for error messages
        for name, _ in (*_OPTIONS, *_FLAGS):
            key, dest = name.replace("-", "_"), _dest(name)
            cli = config.getoption(dest)
            ini = str(config.getini(dest) or "")
            if cli is not None:
                self.values[key] = (str(cli), config.invocation_params.dir)
                self.origins[key] = f"--uc-{name}"
            elif ini:
                self.values[key] = (ini, ini_base)
                self.origins[key] = f"ini key {dest}"
            elif key in defaults:
                self.values[key] = (defaults[key], config.rootpath)
                self.origins[key] = f"set_defaults({key}=…)"

    def text(self, key: str) -> str | None:
        return self.values[key][0] if key in self.values else None

    def path(self, key: str) -> Path | None:
        if key not in self.values:
            return None
        value, base = self.values[key]
        return base / Path(value).expanduser()

    def number(self, key: str) -> int | None:
        value = self.text(key)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            message = f"--uc-{key.replace('_', '-')}: not an integer: {value!r}"
            raise pytest.UsageError(message) from None

    def seed(self) -> int:
        """The value of ``--uc-seed`` (0 when not set).

        Raises:
            pytest.UsageError: It is not a whole number from 0 to 2**63 - 1.
        """
        from unlearncheck.specs import check_seed

        try:
            return check_seed(self.number("seed") or 0, "--uc-seed")
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None

    def choice(self, key: str) -> str:
        """The value of an option of `_CHOICES` (its first choice when not set).

        Raises:
            pytest.UsageError: Naming where the value was set and the allowed values.
        """
        allowed = _CHOICES[key.replace("_", "-")]
        value = self.text(key)
        if value is None:
            return allowed[0]
        if value.strip().lower() not in allowed:
            words = ", ".join(allowed[:-1]) + " or " + allowed[-1]
            raise pytest.UsageError(f"{self.origins[key]}: expected {words}, got {value!r}")
        return value.strip().lower()

    def positive(self, key: str) -> int | None:
        """The value of an option that is a count of at least 1 (None when not set).

        Raises:
            pytest.UsageError: Naming where the value was set.
        """
        number = self.number(key)
        if number is not None and number < 1:
            raise pytest.UsageError(f"{self.origins[key]}: must be at least 1, got {number}")
        return number

    def switch(self, key: str) -> bool:
        value = (self.text(key) or "false").lower()
        if value not in (*_TRUE, *_FALSE):
            raise pytest.UsageError(f"{_dest(key)}: expected true or false, got {self.text(key)!r}")
        return value in _TRUE


def _resolve(config: pytest.Config) -> Options:
    """Command line (paths relative to the invocation directory), ini (relative to the ini file),
    conftest defaults and built-in defaults (relative to the rootdir), in that order."""
    values = _Values(config)
    # Refused before default_cache imports torch.
    inconclusive = values.choice("inconclusive")
    dtype = values.choice("dtype")
    prompt_format = values.choice("prompt_format")
    threads = values.positive("threads")
    report = values.path("report") or config.rootpath / DEFAULT_REPORT
    text = values.text
    return Options(
        model=text("model"),
        original=text("original"),
        reference=text("reference"),
        facts=values.path("facts"),
        device=text("device"),
        dtype=cast("Literal['auto', 'float32', 'bfloat16', 'float16']", dtype),
        prompt_format=cast("Literal['auto', 'chat', 'plain']", prompt_format),
        threads=threads,
        batch_size="auto" if text("batch_size") == "auto" else values.number("batch_size"),
        seed=values.seed(),
        report=report,
        json=values.path("json") or report.with_suffix(".jsonl"),
        sign_key=values.path("sign_key"),
        cache=None if text("cache") == "off" else values.path("cache") or default_cache(),
        allow_pickle=values.switch("allow_pickle"),
        trust_remote_code=values.switch("trust_remote_code"),
        generator_url=text("generator_url"),
        generator_model=text("generator_model"),
        inconclusive="warn" if inconclusive == "warn" else "fail",
    )


def default_cache() -> Path:
    """``scores.sqlite`` in the unlearncheck cache directory (``$UNLEARNCHECK_CACHE``)."""
    from unlearncheck.organism.zoo import cache_root

    return cache_root() / "scores.sqlite"


def facts_path(options: Options) -> Path | None:
    """The facts file of the claims: ``--uc-facts``, else the organism zoo's ``facts.jsonl``
    when the model is an organism spec (building the zoo if it is not cached), else None."""
    if options.facts is None and options.model and options.model.startswith("organism:"):
        from unlearncheck.specs import resolve_spec

        return resolve_spec(options.model).parent / "facts.jsonl"
    return options.facts


def suite_facts(config: pytest.Config) -> FactSet:
    """The facts of the claims (loaded once a process; usable at collection time).

    ``--uc-facts``, else the ``facts.jsonl`` of the organism zoo when the model is an organism
    spec (building the zoo if it is not cached).

    Raises:
        pytest.UsageError: Neither is given.
    """
    if _FACTS in config.stash:
        return config.stash[_FACTS]
    from unlearncheck.facts import load_facts

    path = facts_path(get_options(config))
    config.stash[FACTS_FILE] = path
    if path is None:
        raise pytest.UsageError(
            "unlearncheck: no facts: pass --uc-facts (needed unless --uc-model is organism:…)"
        )
    config.stash[_FACTS] = load_facts(path)
    return config.stash[_FACTS]


def check_inputs(config: pytest.Config, options: Options) -> None:
    """Refuse bad inputs before any model work: the facts file, each model spec and its checkpoint
    (`unlearncheck.specs.check_spec`), the device and the generator LLM's settings (the output
    paths: `unlearncheck.pytest_plugin.reporting.check_outputs`).

    Raises:
        pytest.UsageError: Naming the option and what is wrong with its value.
    """
    from unlearncheck.facts import FactFormatError

    if options.facts is not None:
        try:
            suite_facts(config)
        except (FactFormatError, OSError) as error:
            raise pytest.UsageError(f"--uc-facts: {error}") from None
    _check_models(options)
    from unlearncheck.generator.config import GeneratorConfig

    try:
        GeneratorConfig(base_url=options.generator_url, model=options.generator_model)
    except ValueError as error:
        raise pytest.UsageError(f"--uc-generator-url/--uc-generator-model: {error}") from None


def _check_models(options: Options) -> None:
    """Refuse a bad model spec or checkpoint (``--uc-model``, ``--uc-original``,
    ``--uc-reference``), ``--uc-prompt-format chat`` for a checkpoint without a chat template and
    an unknown ``--uc-device`` (or ``auto`` without accelerate)."""
    from unlearncheck.specs import (
        ModelSpecError,
        check_prompt_format,
        check_spec,
        resolve_device,
    )

    for role in ("model", "original", "reference"):
        spec = getattr(options, role)
        if spec is None:
            continue
        try:
            check_spec(
                spec, allow_pickle=options.allow_pickle, trust_remote_code=options.trust_remote_code
            )
        except ModelSpecError as error:
            raise pytest.UsageError(f"--uc-{role}: {error}") from None
        try:
            check_prompt_format(
                spec, options.prompt_format, trust_remote_code=options.trust_remote_code
            )
        except ModelSpecError as error:
            raise pytest.UsageError(f"--uc-prompt-format (--uc-{role}): {error}") from None
    if options.device is not None:
        try:
            resolve_device(options.device)
        except ValueError as error:
            raise pytest.UsageError(f"--uc-device: {error}") from None


def use_score_cache(options: Options) -> None:
    """Open the score cache of ``--uc-cache`` (none with ``off``)."""
    from unlearncheck import scoring

    try:
        scoring.use_score_cache(options.cache)
    except ValueError as error:
        raise pytest.UsageError(f"--uc-cache: {error}") from None


def set_batch_size(options: Options) -> None:
    """Set the scoring batch size when ``--uc-batch-size`` gives one."""
    if options.batch_size is None:
        return
    if options.batch_size != "auto" and options.batch_size < 1:
        raise pytest.UsageError("--uc-batch-size must be at least 1 (or auto)")
    from unlearncheck import scoring

    scoring.set_batch_size(options.batch_size)
