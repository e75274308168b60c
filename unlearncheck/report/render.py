"""The HTML evidence report: one self-contained page rendered from the records of a run log.

The page (inline CSS and SVG; no script, no network) shows who was tested (model specs and content
hashes, seed, package versions, git revision, date), a claims × attacks summary, the evidence of
every failing fact (attack, probe lineage, prompt, output, answer, score against its baseline,
tolerance, probes and leaks, p-value), the reason of every inconclusive fact, and the passing
facts collapsed to one line each, so that large runs stay small. Every string taken from the log
is untrusted text (model output, prompts, entity names, model specs): it is shown through
`unlearncheck.untrusted.shown` (active characters such as ANSI escapes, NUL, bidi overrides and
lone surrogates written as visible escapes; text cut after `MAX_TEXT_CHARS` characters with a
marker; the run log keeps it whole), then jinja2 autoescaping.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from unlearncheck.runlog import read_runlog, redact
from unlearncheck.untrusted import shown

Record = dict[str, Any]

NOT_RUN = "NOT RUN"
SEVERITY = ("FAIL", "INCONCLUSIVE", "PASS", NOT_RUN)
"""Statuses, worst first: a cell or a claim shows the worst status among its parts."""
MAX_EVIDENCE = 3
"""Probe results shown per decisive attack of a failing fact (strongest first)."""
MAX_EXTRA_CHARS = 300
MAX_TEXT_CHARS = 10_000
"""Characters of one string of the log shown in the report (a prompt, an output, a name)."""
CHART_LABEL_WIDTH = 170
CHART_BAR_WIDTH = 420
CHART_TEXT_WIDTH = 260
CHART_ROW_HEIGHT = 24
CHART_LABEL_CHARS = 24
_TEMPLATES = Path(__file__).parent / "templates"
#: The scorecard columns of the metrics section (headers, then `Scorecard` field names).
METRIC_COLUMNS = (
    "forget quality",
    "truth ratio",
    "forget ROUGE-L",
    "privleak LOSS",
    "privleak Min-K%++",
    "FADE",
    "model utility",
)
METRIC_KEYS = (
    "forget_quality",
    "truth_ratio",
    "forget_rouge",
    "privleak_loss",
    "privleak_min_k_plus_plus",
    "fade",
    "model_utility",
)


@dataclass(frozen=True)
class ModelIdentity:
    """One model of the run: its role (model, reference, original), spec and content hash."""

    role: str
    spec: str
    content_hash: str | None


@dataclass(frozen=True)
class RunInfo:
    """The run's identity, from the header record, the model records and the verdict configs."""

    started: str | None
    python: str | None
    git: str | None
    versions: Mapping[str, str | None]
    models: list[ModelIdentity]
    seeds: list[Any]
    cases: int


@dataclass(frozen=True)
class Cell:
    """One claim × attack cell: how many facts ended in each status under that attack."""

    status: str
    counts: Mapping[str, int]

    @property
    def label(self) -> str:
        """Counts worst first, e.g. ``2 fail · 48 pass``."""
        return " · ".join(f"{self.counts[s]} {s.lower()}" for s in SEVERITY if self.counts.get(s))


@dataclass(frozen=True)
class FailingFact:
    """A failing fact with the attacks that decided it (their evidence is shown in full)."""

    fact: Record
    decisive: list[Record]


@dataclass(frozen=True)
class PassingFact:
    """A passing fact, shown as one line: its id and the attack with the strongest signal."""

    fact_id: str
    note: str


@dataclass(frozen=True)
class Claim:
    """One verdict of the run log, ready to render."""

    index: int
    verdict: Record
    status: str
    baseline: str
    attacks: list[str]
    facts: Mapping[str, int]
    cells: list[Cell]
    failing: list[FailingFact]
    inconclusive: list[Record]
    passing: list[PassingFact]


@dataclass(frozen=True)
class Segment:
    """One coloured part of a chart bar."""

    status: str
    count: int
    x: float
    width: float


@dataclass(frozen=True)
class Bar:
    """One chart row: the facts of every claim under one attack, by status."""

    attack: str
    short: str
    y: int
    segments: list[Segment]
    label: str


@dataclass(frozen=True)
class Chart:
    """The per-attack bar chart, laid out for inline SVG."""

    bars: list[Bar]
    label_width: int
    width: int
    height: int


@dataclass(frozen=True)
class Interrupted:
    """A claim that has case records but no verdict: the run stopped while it was judged."""

    claim: str
    cases: int
    facts: int
    attacks: list[str]


@dataclass(frozen=True)
class NotCompleted:
    """A test whose process died before it finished (a crashed pytest-xdist worker)."""

    test: str
    reason: str


@dataclass(frozen=True)
class MetricsTable:
    """A ``metrics`` record of the run log: scorecards of models against one reference."""

    reference: str
    facts: str
    rows: list[Record]
    columns: tuple[str, ...] = METRIC_COLUMNS
    keys: tuple[str, ...] = METRIC_KEYS


@dataclass(frozen=True)
class Report:
    """Everything the template shows."""

    status: str
    generated: str
    run: RunInfo
    attacks: list[str]
    claims: list[Claim]
    chart: Chart
    interrupted: list[Interrupted]
    not_completed: list[NotCompleted]
    metrics: list[MetricsTable]


def outcome_status(kind: str, outcome: Mapping[str, Any]) -> str:
    """The status one attack outcome gives its fact.

    For a ``forgotten`` claim a recovered fact fails; for a ``retained`` claim a fact that is not
    recovered (no longer known) does. An attack that could not run is INCONCLUSIVE when it keeps
    the fact from passing (``blocking``), else NOT RUN.
    """
    state = outcome.get("outcome")
    if state == "not run":
        return "INCONCLUSIVE" if outcome.get("blocking") else NOT_RUN
    recovered = state == "recovered"
    return "PASS" if recovered == (kind == "retained") else "FAIL"


def worst(statuses: Iterable[str]) -> str:
    """The worst of ``statuses`` (NOT RUN when there are none)."""
    present = set(statuses)
    return next((s for s in SEVERITY if s in present), NOT_RUN)


def baseline_label(config: Mapping[str, Any]) -> str:
    """What the scores of a claim are compared with."""
    if config.get("reference"):
        return "the reference model (same prompt)"
    return "chance (the answer's p̂ on control subjects)"


def attack_names(verdicts: Iterable[Record]) -> list[str]:
    """Every attack of the run, in order of first appearance (configs, then fact outcomes)."""
    names: dict[str, None] = {}
    for verdict in verdicts:
        for name in verdict.get("config", {}).get("attacks", []):
            names[str(name)] = None
        for fact in verdict.get("facts", []):
            for outcome in fact.get("attacks", []):
                names[str(outcome.get("attack"))] = None
    return list(names)


def _cells(verdict: Record, kind: str, attacks: list[str]) -> list[Cell]:
    """The claim's row of the summary table: one cell per attack of the run."""
    counts: dict[str, Counter[str]] = {name: Counter() for name in attacks}
    for fact in verdict.get("facts", []):
        for outcome in fact.get("attacks", []):
            counts[str(outcome.get("attack"))][outcome_status(kind, outcome)] += 1
    return [Cell(worst(counts[name]), counts[name]) for name in attacks]


def _strongest(fact: Record) -> str:
    """One line for a passing fact: the attack with the strongest signal (smallest p-value)."""
    scored = [a for a in fact.get("attacks", []) if a.get("p_value") is not None]
    if not scored:
        return str(fact.get("reason", ""))
    best = min(scored, key=lambda a: a["p_value"])
    leaks = f"{best.get('leaks')}/{best.get('n')} leak"
    return f"strongest: {best.get('attack')} {leaks}, p={best['p_value']:.2g}"


def _claim(index: int, verdict: Record, attacks: list[str]) -> Claim:
    """A verdict record, grouped for rendering."""
    config = verdict.get("config", {})
    kind = str(config.get("kind", "forgotten"))
    facts = verdict.get("facts", [])
    failing, inconclusive, passing = [], [], []
    for fact in facts:
        status = fact.get("status")
        if status == "FAIL":
            outcomes = fact.get("attacks", [])
            decisive = [a for a in outcomes if outcome_status(kind, a) == "FAIL"]
            failing.append(FailingFact(fact, decisive))
        elif status == "PASS":
            passing.append(PassingFact(str(fact.get("fact_id")), _strongest(fact)))
        else:
            inconclusive.append(fact)
    return Claim(
        index=index,
        verdict=verdict,
        status=str(verdict.get("status", "INCONCLUSIVE")),
        baseline=baseline_label(config),
        attacks=attack_names([verdict]),
        facts=Counter(str(f.get("status")) for f in facts),
        cells=_cells(verdict, kind, attacks),
        failing=failing,
        inconclusive=inconclusive,
        passing=passing,
    )


def _chart(claims: list[Claim], attacks: list[str]) -> Chart:
    """One bar per attack: facts of every claim by status, scaled to the longest bar."""
    totals = [Counter[str]() for _ in attacks]
    for claim in claims:
        for total, cell in zip(totals, claim.cells, strict=True):
            total.update(cell.counts)
    longest = max((sum(t.values()) for t in totals), default=0) or 1
    bars = []
    for row, (name, total) in enumerate(zip(attacks, totals, strict=True)):
        x, segments = float(CHART_LABEL_WIDTH), []
        for status in SEVERITY:
            if total[status]:
                width = total[status] / longest * CHART_BAR_WIDTH
                segments.append(Segment(status, total[status], round(x, 1), round(width, 1)))
                x += width
        short = name if len(name) <= CHART_LABEL_CHARS else name[: CHART_LABEL_CHARS - 1] + "…"
        label = Cell(worst(total), total).label or "no facts"
        bars.append(Bar(name, short, row * CHART_ROW_HEIGHT, segments, label))
    return Chart(
        bars,
        CHART_LABEL_WIDTH,
        CHART_LABEL_WIDTH + CHART_BAR_WIDTH + CHART_TEXT_WIDTH,
        max(len(bars), 1) * CHART_ROW_HEIGHT,
    )


def _models(models: Iterable[Record], verdicts: Iterable[Record]) -> list[ModelIdentity]:
    """Model identities from the model records and the verdict configs, without repeats."""
    found: dict[ModelIdentity, None] = {}
    for record in models:
        role, spec = str(record.get("role")), str(record.get("spec"))
        found[ModelIdentity(role, spec, record.get("content_hash"))] = None
    for verdict in verdicts:
        config = verdict.get("config", {})
        for role in ("model", "reference", "original"):
            if config.get(role):
                found[ModelIdentity(role, str(config[role]), config.get(f"{role}_hash"))] = None
    return list(found)


def _interrupted(records: Iterable[Record]) -> list[Interrupted]:
    """Claims with case records but no verdict of the same name anywhere in the log.

    Order does not matter: under the pytest plugin the cases of each process are merged into the
    log at the end of the session, after the verdicts.
    """
    cases_of: dict[str, list[Record]] = {}
    judged: set[str] = set()
    for record in records:
        if record.get("kind") == "case":
            cases_of.setdefault(str(record.get("claim")), []).append(record)
        elif record.get("kind") == "verdict":
            judged.add(str(record.get("claim")))
    return [
        Interrupted(
            claim,
            len(cases),
            len({c.get("fact_id") for c in cases}),
            list(dict.fromkeys(str(c.get("attack")) for c in cases)),
        )
        for claim, cases in cases_of.items()
        if claim not in judged
    ]


def build_report(records: Iterable[Record]) -> Report:
    """The report's content from run-log records (secrets redacted again, in case)."""
    log = [redact(r) for r in records if isinstance(r, dict)]
    by_kind: dict[str, list[Record]] = {}
    for record in log:
        by_kind.setdefault(str(record.get("kind")), []).append(record)
    header = next(iter(by_kind.get("run", [])), {})
    verdicts = by_kind.get("verdict", [])
    attacks = attack_names(verdicts)
    claims = [_claim(i, v, attacks) for i, v in enumerate(verdicts)]
    configs = [v.get("config", {}) for v in verdicts]
    run = RunInfo(
        started=header.get("started"),
        python=header.get("python"),
        git=header.get("git"),
        versions=header.get("versions") or {},
        models=_models(by_kind.get("model", []), verdicts),
        seeds=list(dict.fromkeys(c["seed"] for c in configs if c.get("seed") is not None)),
        cases=len(by_kind.get("case", [])),
    )
    return Report(
        status=worst(c.status for c in claims) if claims else "NO VERDICTS",
        generated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        run=run,
        attacks=attacks,
        claims=claims,
        chart=_chart(claims, attacks),
        interrupted=_interrupted(log),
        not_completed=[
            NotCompleted(str(r.get("test")), str(r.get("reason")))
            for r in by_kind.get("not_completed", [])
        ],
        metrics=[
            MetricsTable(str(r.get("reference")), str(r.get("facts")), list(r.get("rows") or []))
            for r in by_kind.get("metrics", [])
        ],
    )


_CSS = {"FAIL": "fail", "PASS": "pass", "INCONCLUSIVE": "inconclusive"}


def _css(status: Any) -> str:
    """The CSS class of a status (``notrun`` for anything else)."""
    return _CSS.get(str(status), "notrun")


def _num(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals (ints as they are), ``—`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _pval(value: Any) -> str:
    """A p-value with two significant digits, ``—`` when absent."""
    return f"{value:.2g}" if isinstance(value, int | float) else "—"


def _compact(value: Any) -> str:
    """A value as one line of JSON, cut to a readable length."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_EXTRA_CHARS else text[: MAX_EXTRA_CHARS - 1] + "…"


def _shown(value: Any) -> Any:
    """A string as the report shows it (`shown`, keeping line breaks and tabs); markup the
    template made itself and anything else as it is."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return shown(value, limit=MAX_TEXT_CHARS, keep="\n\t")
    return value


@jinja2.pass_eval_context
def _join(context: jinja2.nodes.EvalContext, items: Iterable[Any], separator: str = "") -> str:
    """jinja2's ``join`` with every item shown through `_shown` first."""
    return jinja2.filters.do_join(context, [_shown(item) for item in items], separator)


@cache
def _environment() -> jinja2.Environment:
    """The jinja2 environment: every printed value and joined item through `_shown`, then
    autoescaping; compact whitespace."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_shown,
    )
    env.filters.update(css=_css, num=_num, pval=_pval, compact=_compact, join=_join)
    return env


def render_report(records: Iterable[Record] | str | Path, out: str | Path) -> Path:
    """Write the HTML evidence report of a run to ``out``.

    Args:
        records: Run-log records, or the path of a run log (a truncated last line, left by an
            interrupted run, is skipped).
        out: The HTML file to write; missing parent directories are created.

    Returns:
        The path written.
    """
    if isinstance(records, str | Path):
        records = read_runlog(records)
    template = _environment().get_template("report.html.j2")
    html = template.render(report=build_report(records), max_evidence=MAX_EVIDENCE)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole or not at all: a reader never sees half a report.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(html, encoding="utf-8")
    os.replace(partial, path)
    return path
