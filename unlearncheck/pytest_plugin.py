"""The pytest plugin: model fixtures, verdict evidence on test reports, run log, HTML report.

Registered through the ``pytest11`` entry point. Loading it imports neither torch nor transformers
(models load inside the fixtures), and a session in which no claim ran writes nothing and prints
nothing.

How a verdict travels: every finished claim publishes its `Verdict` on `unlearncheck.events`;
while a test runs the plugin listens there and adds each verdict, as JSON, to the test's
``user_properties`` (so JUnit XML gets it as a property and pytest-xdist carries it from a worker to
the controller with the reports). The controller (or the only process, without xdist) reads the
verdicts from each test's teardown report, appends them to the run log, and at the end of the
session renders the HTML report from that log and prints a summary.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from unlearncheck import events
from unlearncheck.untrusted import shown

if TYPE_CHECKING:
    from unlearncheck.backends.hf import HFModel
    from unlearncheck.backends.openai_api import OpenAIModel
    from unlearncheck.facts import FactSet
    from unlearncheck.generator import ProbeGenerator
    from unlearncheck.runlog import RunLog
    from unlearncheck.verdict import Verdict

#: The ``user_properties`` name under which a verdict (JSON of `Verdict.to_dict`) is attached.
PROPERTY = "unlearncheck_verdict"
DEFAULT_REPORT = "reports/unlearncheck.html"
#: Characters of one untrusted string (an attack name, an error message) in the terminal summary.
SUMMARY_CHARS = 200

#: (name, help) of every option: ``--uc-<name>`` on the command line, ``uc_<name>`` in the ini file
#: (``-`` becomes ``_``); every value is a string, parsed where needed.
_OPTIONS = (
    ("model", "model under test: checkpoint directory, cached hub id or organism:<variant>"),
    ("original", "the model before unlearning (facts it does not know are INCONCLUSIVE)"),
    ("reference", "a model retrained without the forget set (baseline instead of chance)"),
    ("facts", "facts.jsonl of the claims (default: the zoo's facts for an organism model)"),
    ("device", "torch device of the models (default: cuda when available, else cpu)"),
    (
        "batch-size",
        "sequences per forward pass when scoring probes, or auto (start at 512, halve on "
        "out-of-memory)",
    ),
    ("seed", "seed the suite passes to its claims (uc_options.seed); default 0"),
    ("report", f"HTML report path (default {DEFAULT_REPORT})"),
    ("json", "run log (JSONL) path (default: the report path with suffix .jsonl)"),
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
)
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
        device: Torch device (None: automatic).
        batch_size: Scoring batch size (None: the library default; ``auto`` for
            `unlearncheck.judge.AUTO_BATCH_SIZE`, halved on out-of-memory).
        seed: Seed passed by the suite to its claims.
        report: HTML report path.
        json: Run log path.
        cache: Score cache path (None: no cache on disk).
        allow_pickle: Load pickle weights of checkpoints without safetensors.
        trust_remote_code: Run the code checkpoints ship.
        generator_url: Base URL of the generator LLM's API (None: no generator LLM).
        generator_model: The generator LLM's model name.
    """

    model: str | None = None
    original: str | None = None
    reference: str | None = None
    facts: Path | None = None
    device: str | None = None
    batch_size: int | Literal["auto"] | None = None
    seed: int = 0
    report: Path = field(default_factory=lambda: Path(DEFAULT_REPORT))
    json: Path = field(default_factory=lambda: Path(DEFAULT_REPORT).with_suffix(".jsonl"))
    cache: Path | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    generator_url: str | None = None
    generator_model: str | None = None


_DEFAULTS = pytest.StashKey[dict[str, str]]()
_OPTIONS_KEY = pytest.StashKey[Options]()
_PENDING = pytest.StashKey[list[str]]()
_FACTS = pytest.StashKey["FactSet"]()


def _dest(name: str) -> str:
    """The ini key and option ``dest`` of an option name: ``batch-size`` -> ``uc_batch_size``."""
    return "uc_" + name.replace("-", "_")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options ``--uc-*`` in one group, each with an ini key ``uc_*`` (the option wins)."""
    group = parser.getgroup("unlearncheck", "unlearning claims (unlearncheck)")
    for name, help_text in _OPTIONS:
        group.addoption(f"--uc-{name}", dest=_dest(name), default=None, help=help_text)
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
        raise ValueError(f"unknown unlearncheck options: {', '.join(sorted(unknown))}")
    config.stash.setdefault(_DEFAULTS, {}).update(values)
    if _OPTIONS_KEY in config.stash:
        del config.stash[_OPTIONS_KEY]


def get_options(config: pytest.Config) -> Options:
    """The resolved settings of this session (computed once)."""
    if _OPTIONS_KEY not in config.stash:
        config.stash[_OPTIONS_KEY] = _resolve(config)
    return config.stash[_OPTIONS_KEY]


def _resolve(config: pytest.Config) -> Options:
    """Command line (paths relative to the invocation directory), ini (relative to the ini file),
    conftest defaults and built-in defaults (relative to the rootdir), in that order."""
    defaults = config.stash.get(_DEFAULTS, {})
    ini_base = config.inipath.parent if config.inipath else config.rootpath
    values: dict[str, tuple[str, Path]] = {}  # key -> (value, base of a relative path)
    for name, _ in (*_OPTIONS, *_FLAGS):
        key, dest = name.replace("-", "_"), _dest(name)
        cli = config.getoption(dest)
        ini = str(config.getini(dest) or "")
        if cli is not None:
            values[key] = (str(cli), config.invocation_params.dir)
        elif ini:
            values[key] = (ini, ini_base)
        elif key in defaults:
            values[key] = (defaults[key], config.rootpath)

    def text(key: str) -> str | None:
        return values[key][0] if key in values else None

    def path(key: str) -> Path | None:
        if key not in values:
            return None
        value, base = values[key]
        return base / Path(value).expanduser()

    def number(key: str) -> int | None:
        value = text(key)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            message = f"--uc-{key.replace('_', '-')}: not an integer: {value!r}"
            raise pytest.UsageError(message) from None

    def switch(key: str) -> bool:
        value = (text(key) or "false").lower()
        if value not in (*_TRUE, *_FALSE):
            raise pytest.UsageError(f"{_dest(key)}: expected true or false, got {text(key)!r}")
        return value in _TRUE

    report = path("report") or config.rootpath / DEFAULT_REPORT
    return Options(
        model=text("model"),
        original=text("original"),
        reference=text("reference"),
        facts=path("facts"),
        device=text("device"),
        batch_size="auto" if text("batch_size") == "auto" else number("batch_size"),
        seed=number("seed") or 0,
        report=report,
        json=path("json") or report.with_suffix(".jsonl"),
        cache=None if text("cache") == "off" else path("cache") or default_cache(),
        allow_pickle=switch("allow_pickle"),
        trust_remote_code=switch("trust_remote_code"),
        generator_url=text("generator_url"),
        generator_model=text("generator_model"),
    )


def default_cache() -> Path:
    """``scores.sqlite`` in the unlearncheck cache directory (``$UNLEARNCHECK_CACHE``)."""
    from unlearncheck.organism.zoo import cache_root

    return cache_root() / "scores.sqlite"


def _is_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker (the controller writes the reports)."""
    return hasattr(config, "workerinput")


#: Names the session's case logs; set by the controller, inherited by xdist workers.
SESSION_ENV = "UNLEARNCHECK_SESSION"


def pytest_configure(config: pytest.Config) -> None:
    """Register the collector of verdicts in the controller (or the only process); pin each
    xdist worker to its GPU."""
    if not _is_worker(config):
        os.environ[SESSION_ENV] = f"{os.getpid()}-{time.time_ns()}"
        config.pluginmanager.register(Collector(config), "unlearncheck-collector")
        return
    if get_options(config).device in (None, "cuda"):
        _pin_gpu(config.workerinput["workerid"])  # type: ignore[attr-defined]


def worker_gpu(worker: str, visible: Sequence[str]) -> str | None:
    """The GPU an xdist worker (``gw<n>``) uses: the n-th of the ``visible`` ones, round robin
    (None when fewer than two are visible, or for a process that is not a worker)."""
    if len(visible) < 2 or not worker.startswith("gw"):
        return None
    return visible[int(worker[2:]) % len(visible)]


def _pin_gpu(worker: str) -> None:
    """Make only this worker's GPU visible to it (``CUDA_VISIBLE_DEVICES``), within those the
    user left visible, before CUDA starts: each worker then loads its models on its own GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        import torch

        # Counted through NVML, which neither starts CUDA nor caches the count.
        ids = [str(i) for i in range(torch.cuda.device_count())]
    else:
        ids = [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    gpu = worker_gpu(worker, ids)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _case_log_path(config: pytest.Config, session: str, process: str) -> Path:
    """Where one process appends the case records of its claims (merged by the controller)."""
    from unlearncheck.runlog import case_log_path

    return case_log_path(get_options(config).json, session, process)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Check the options; open the score cache; set the scoring batch size when one is given."""
    options = get_options(session.config)
    _check_inputs(session.config, options)
    from unlearncheck import judge

    try:
        judge.use_score_cache(options.cache)
    except ValueError as error:
        raise pytest.UsageError(f"--uc-cache: {error}") from None
    if SESSION_ENV in os.environ:
        from unlearncheck import claims

        process = getattr(session.config, "workerinput", {}).get("workerid", "main")
        claims.set_case_log(_case_log_path(session.config, os.environ[SESSION_ENV], process))
    if options.batch_size is not None:
        if options.batch_size != "auto" and options.batch_size < 1:
            raise pytest.UsageError("--uc-batch-size must be at least 1 (or auto)")
        judge.set_batch_size(options.batch_size)


def _check_inputs(config: pytest.Config, options: Options) -> None:
    """Refuse bad inputs before any model work: the facts file, each model spec and its checkpoint
    (`unlearncheck.specs.check_spec`), the device, and report paths that are directories.

    Raises:
        pytest.UsageError: Naming the option and what is wrong with its value.
    """
    from unlearncheck.facts import FactFormatError
    from unlearncheck.specs import ModelSpecError, check_spec, resolve_device

    if options.facts is not None:
        try:
            suite_facts(config)
        except (FactFormatError, OSError) as error:
            raise pytest.UsageError(f"--uc-facts: {error}") from None
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
    if options.device is not None:
        try:
            resolve_device(options.device)
        except ValueError as error:
            raise pytest.UsageError(f"--uc-device: {error}") from None
    for name in ("report", "json"):
        if getattr(options, name).is_dir():
            raise pytest.UsageError(f"--uc-{name}: {getattr(options, name)} is a directory")
    from unlearncheck.generator.config import GeneratorConfig

    try:
        GeneratorConfig(base_url=options.generator_url, model=options.generator_model)
    except ValueError as error:
        raise pytest.UsageError(f"--uc-generator-url/--uc-generator-model: {error}") from None


# --- fixtures ----------------------------------------------------------------------------------


def _share_cpu(config: pytest.Config) -> None:
    """In an xdist worker, use this worker's share of the CPU cores for torch's threads.

    Without it every worker starts one thread per core and they spin against each other (on two
    cores, ``-n 2`` ran the claims suite four times slower than one process).
    """
    workers = getattr(config, "workerinput", {}).get("workercount")
    if not workers:
        return
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def _load(config: pytest.Config, spec: str | None) -> HFModel | OpenAIModel | None:
    if spec is None:
        return None
    from unlearncheck.loading import load_model

    _share_cpu(config)
    options = get_options(config)
    return load_model(
        spec,
        device=options.device,
        allow_pickle=options.allow_pickle,
        trust_remote_code=options.trust_remote_code,
    )


@pytest.fixture(scope="session")
def uc_options(pytestconfig: pytest.Config) -> Options:
    """The unlearncheck settings of this session (models, facts, device, seed, report paths)."""
    return get_options(pytestconfig)


@pytest.fixture(scope="session")
def unlearned(pytestconfig: pytest.Config) -> HFModel | OpenAIModel:
    """The model under test (``--uc-model``), loaded once per worker."""
    spec = get_options(pytestconfig).model
    if spec is None:
        pytest.fail("no model under test: pass --uc-model (or set uc_model in the ini file)")
    model = _load(pytestconfig, spec)
    assert model is not None
    return model


@pytest.fixture(scope="session")
def original(pytestconfig: pytest.Config) -> HFModel | OpenAIModel | None:
    """The model before unlearning (``--uc-original``), or None."""
    return _load(pytestconfig, get_options(pytestconfig).original)


@pytest.fixture(scope="session")
def reference(pytestconfig: pytest.Config) -> HFModel | OpenAIModel | None:
    """The retrained reference model (``--uc-reference``), or None."""
    return _load(pytestconfig, get_options(pytestconfig).reference)


@pytest.fixture(scope="session")
def generator(pytestconfig: pytest.Config) -> ProbeGenerator:
    """The probe generator: ``generator.llm_paraphrase`` and ``generator.llm_alias`` when
    ``--uc-generator-url`` and ``--uc-generator-model`` name a generator LLM, and
    ``generator.elicited_multihop(original)`` always. Replies are cached in
    ``generator.sqlite`` next to the score cache (in memory with ``--uc-cache off``)."""
    from unlearncheck.generator import GeneratorCache, GeneratorConfig, ProbeGenerator
    from unlearncheck.generator.cache import CACHE_FILE

    options = get_options(pytestconfig)
    path = options.cache.with_name(CACHE_FILE) if options.cache is not None else None
    config = GeneratorConfig(base_url=options.generator_url, model=options.generator_model)
    return ProbeGenerator(config, GeneratorCache(path))


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

    options = get_options(config)
    path = options.facts
    if path is None and options.model and options.model.startswith("organism:"):
        from unlearncheck.specs import resolve_spec

        path = resolve_spec(options.model).parent / "facts.jsonl"
    if path is None:
        raise pytest.UsageError(
            "unlearncheck: no facts: pass --uc-facts (needed unless --uc-model is organism:…)"
        )
    config.stash[_FACTS] = load_facts(path)
    return config.stash[_FACTS]


@pytest.fixture(scope="session")
def facts(pytestconfig: pytest.Config) -> FactSet:
    """The facts of the claims: ``--uc-facts``, else the zoo's facts for an organism model."""
    return suite_facts(pytestconfig)


# --- evidence ----------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Listen for the verdicts of the claims this test runs (setup, call and teardown)."""
    pending: list[str] = []
    item.stash[_PENDING] = pending

    def listen(verdict: Verdict) -> None:
        pending.append(json.dumps(verdict.to_dict(), ensure_ascii=False, default=str))

    events.subscribe(listen)
    try:
        return (yield)
    finally:
        events.unsubscribe(listen)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Move the verdicts heard so far onto the test's user properties (and pytest-html extras).

    Each phase's report gets the verdicts of that phase; the item keeps them all, so the teardown
    report (which copies the item's properties) carries every verdict of the test exactly once,
    which is the report the controller reads them from, and JUnit XML writes properties from.
    """
    report = yield
    pending = item.stash.get(_PENDING, [])
    if pending:
        for verdict in pending:
            item.user_properties.append((PROPERTY, verdict))
            report.user_properties.append((PROPERTY, verdict))
        _html_extras(report, pending)
        pending.clear()
    return report


def _html_extras(report: pytest.TestReport, verdicts: list[str]) -> None:
    """Add the verdicts to pytest-html's extras when pytest-html is installed."""
    try:
        import pytest_html  # type: ignore[import-not-found]
    except ImportError:
        return
    extras = list(getattr(report, "extras", []))
    for verdict in verdicts:
        extras.append(pytest_html.extras.json(json.loads(verdict), name="unlearncheck verdict"))
    report.extras = extras  # type: ignore[attr-defined]


def verdicts_of(report: pytest.TestReport) -> list[dict[str, Any]]:
    """The verdicts (`Verdict.to_dict`) carried by a test report's user properties."""
    return [json.loads(str(value)) for name, value in report.user_properties if name == PROPERTY]


@dataclass
class _Test:
    outcome: str = "passed"
    duration: float = 0.0


#: The phase pytest-xdist gives the report of a test whose worker died while running it.
CRASHED_PHASE = "???"


class Collector:
    """In the controller: verdicts from test reports to the run log, report and summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tests: dict[str, _Test] = {}
        self.seconds: dict[str, float] = {}
        self.records: list[dict[str, Any]] = []
        #: Tests whose process died before they finished: ``not_completed`` records.
        self.not_completed: list[dict[str, str]] = []
        self.log: RunLog | None = None
        self.html: Path | None = None
        self.html_error: str | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Track the test's outcome; write its verdicts when its last phase is reported, or that
        it did not complete when its worker crashed."""
        if report.when == CRASHED_PHASE:
            self.tests.pop(report.nodeid, None)
            self.not_completed.append({"test": report.nodeid, "reason": str(report.longrepr)})
            if self.log is not None:  # else written when the log starts (if a claim ran)
                self.log.write("not_completed", self.not_completed[-1])
            return
        test = self.tests.setdefault(report.nodeid, _Test())
        if report.when == "call":
            test.duration = report.duration
        if report.outcome != "passed" and test.outcome != "failed":
            test.outcome = report.outcome
        if report.when != "teardown":
            return
        del self.tests[report.nodeid]
        # A claim run again within one test with the same configuration (hypothesis replays the
        # example that failed) counts once, with its last verdict.
        last = {
            (str(v.get("claim")), json.dumps(v.get("config"), sort_keys=True, default=str)): v
            for v in verdicts_of(report)
        }
        for verdict in last.values():
            self.write(verdict, report.nodeid, test)
            self.seconds[report.nodeid] = test.duration

    def _open_log(self) -> RunLog:
        """The session's run log, started fresh on first use: the earlier run's log and the
        case logs that a killed session left next to it go."""
        if self.log is None:
            from unlearncheck.runlog import RunLog, case_logs

            path = get_options(self.config).json
            path.unlink(missing_ok=True)
            session = os.environ.get(SESSION_ENV, "")
            for other, leftovers in case_logs(path).items():
                if other != session:
                    for leftover in leftovers:
                        leftover.unlink(missing_ok=True)
            self.log = RunLog(path, header={"session": session})
            for record in self.not_completed:
                self.log.write("not_completed", record)
        return self.log

    def write(self, verdict: dict[str, Any], nodeid: str, test: _Test) -> None:
        """Append the verdict (and its models) to the run log."""
        log = self._open_log()
        config = verdict.get("config", {})
        for role in ("model", "reference", "original"):
            if config.get(role):
                log.model(role, config[role], config.get(f"{role}_hash") or "")
        record = {**verdict, "test": nodeid, "outcome": test.outcome, "duration": test.duration}
        log.write("verdict", record)
        self.records.append(record)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        """Close the run log and render the HTML report from it."""
        self._merge_cases()
        if self.log is None:
            return
        self.log.close()
        out = get_options(self.config).report
        try:
            from unlearncheck.report import render_report

            self.html = Path(render_report(self.log.path, out))
        except Exception as err:  # a broken renderer must not hide the verdicts
            self.html_error = shown(f"{type(err).__name__}: {err}", limit=SUMMARY_CHARS)

    def _merge_cases(self) -> None:
        """Append every process's case records to the run log (also those of a crashed worker
        or of claims that never reached a verdict) and remove their files."""
        from unlearncheck import claims
        from unlearncheck.runlog import case_logs, read_runlog

        claims.set_case_log(None)
        path = get_options(self.config).json
        for shard in case_logs(path).get(os.environ.get(SESSION_ENV, ""), []):
            for record in read_runlog(shard):
                if record.pop("kind", None) == "case":
                    self._open_log().write("case", record)
            shard.unlink()

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """The unlearncheck section: claims, attacks, where the report is (when claims ran)."""
        lines = self.summary()
        if lines:
            terminalreporter.section("unlearncheck")
            for line in lines:
                terminalreporter.write_line(line)

    def summary(self) -> list[str]:
        """Lines of the terminal summary (empty when no claim ran)."""
        if self.log is None:
            return []
        claims = Counter(r["status"] for r in self.records)
        lines = [
            f"claims: {claims['PASS']} passed, {claims['FAIL']} failed, "
            f"{claims['INCONCLUSIVE']} inconclusive "
            f"in {len(self.seconds)} tests ({sum(self.seconds.values()):.1f}s in their calls)"
        ]
        lines += _attack_lines(self.records)
        for record in self.not_completed:
            reason = shown(record["reason"], limit=SUMMARY_CHARS)
            test = shown(record["test"], limit=SUMMARY_CHARS)
            lines.append(f"did not complete: {test} ({reason})")
        lines.append(f"run log: {self.log.path}")
        if self.html is not None:
            lines.append(f"HTML report: {self.html}")
        else:
            lines.append(f"HTML report not written: {self.html_error}")
        return lines


def _attack_seconds(records: list[dict[str, Any]]) -> dict[str, float]:
    """Call time of the tests whose claims all ran one and the same attack, by that attack.

    Claims do not time their attacks; a test that runs only one attack times it (its model
    variant is built on first use and shared with later claims in the same process).
    """
    single: dict[str, set[str]] = {}  # test -> the attack of its one-attack claims
    mixed: set[str] = set()  # tests with a claim of several attacks (or none)
    seconds: dict[str, float] = {}
    for record in records:
        test, attacks = record["test"], record.get("config", {}).get("attacks") or []
        seconds[test] = record["duration"]
        if len(attacks) == 1:
            single.setdefault(test, set()).add(attacks[0])
        else:
            mixed.add(test)
    out: dict[str, float] = {}
    for test, names in single.items():
        if test not in mixed and len(names) == 1:
            (name,) = names
            out[name] = out.get(name, 0.0) + seconds[test]
    return out


def _attack_lines(records: list[dict[str, Any]]) -> list[str]:
    """Per attack of the forgetting claims: facts judged, recovered (failed), not run, time.

    Attack names (user code names its attacks) are shown through `shown`.
    """
    judged: Counter[str] = Counter()
    recovered: Counter[str] = Counter()
    not_run: Counter[str] = Counter()
    forgetting = [r for r in records if r.get("config", {}).get("kind") == "forgotten"]
    for record in forgetting:
        for fact in record.get("facts", []):
            for outcome in fact.get("attacks", []):
                name = outcome["attack"]
                if outcome["outcome"] == "not run":
                    not_run[name] += 1
                else:
                    judged[name] += 1
                    recovered[name] += outcome["outcome"] == "recovered"
    names = sorted(judged | not_run, key=lambda a: -recovered[a])
    if not names:
        return []
    seconds = _attack_seconds(forgetting)
    labels = {name: shown(name, limit=SUMMARY_CHARS) for name in names}
    width = max(len(label) for label in labels.values())
    lines = ["attacks (facts of forgetting claims; time: tests that ran only that attack):"]
    for name in names:
        time = f"{seconds[name]:7.1f}s" if name in seconds else "       —"
        lines.append(
            f"  {labels[name]:<{width}}  {judged[name]:>4} judged, {recovered[name]:>4} recovered "
            f"(FAIL), {not_run[name]:>4} not run  {time}"
        )
    return lines
