"""The report's view model: the records of a run log read and merged into what the page shows.

`build_report` groups the records by kind and turns them into a `Report`: the run's identity,
a claim per verdict with its claims × attacks cells and its failing, inconclusive and passing
facts, the per-attack chart laid out for SVG, the claims the run stopped in, the tests that did
not complete and the metrics tables. `unlearncheck.report.render` renders it to HTML.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from unlearncheck.runlog import redact

__all__ = [
    "Bar",
    "Cell",
    "Chart",
    "Claim",
    "FailingFact",
    "Interrupted",
    "MetricsTable",
    "ModelIdentity",
    "NotCompleted",
    "PassingFact",
    "Record",
    "Report",
    "RunInfo",
    "Segment",
    "build_report",
    "outcome_status",
]

Record = dict[str, Any]

_NOT_RUN = "NOT RUN"
_SEVERITY = ("FAIL", "INCONCLUSIVE", "PASS", _NOT_RUN)
"""Statuses, worst first: a cell or a claim shows the worst status among its parts."""
_CHART_LABEL_WIDTH = 170
_CHART_BAR_WIDTH = 420
_CHART_TEXT_WIDTH = 260
_CHART_ROW_HEIGHT = 24
_CHART_LABEL_CHARS = 24
#: The scorecard columns of the metrics section (headers, then `Scorecard` field names).
_METRIC_COLUMNS = (
    "forget quality",
    "truth ratio",
    "forget ROUGE-L",
    "privleak LOSS",
    "privleak Min-K%++",
    "FADE",
    "model utility",
)
_METRIC_KEYS = (
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
    facts: Mapping[str, Any] | None
    device: str | None
    hardware: Mapping[str, Any] | None
    models: list[ModelIdentity]
    seeds: list[Any]
    cases: int


@dataclass(frozen=True)
class Cell:
    """One claim × attack cell: how many facts ended in each status under that attack, and the
    attack's power (share of the facts it recovers from the original; None: not measured)."""

    status: str
    counts: Mapping[str, int]
    power: float | None = None

    @property
    def label(self) -> str:
        """Counts worst first, e.g. ``2 fail · 48 pass``."""
        return " · ".join(f"{self.counts[s]} {s.lower()}" for s in _SEVERITY if self.counts.get(s))


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
    power: str


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
    columns: tuple[str, ...] = _METRIC_COLUMNS
    keys: tuple[str, ...] = _METRIC_KEYS


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
        return "INCONCLUSIVE" if outcome.get("blocking") else _NOT_RUN
    recovered = state == "recovered"
    return "PASS" if recovered == (kind == "retained") else "FAIL"


def _worst(statuses: Iterable[str]) -> str:
    """The worst of ``statuses`` (NOT RUN when there are none)."""
    present = set(statuses)
    return next((s for s in _SEVERITY if s in present), _NOT_RUN)


def _baseline_label(config: Mapping[str, Any]) -> str:
    """What the scores of a claim are compared with."""
    if config.get("reference"):
        return "the reference model (same prompt)"
    return "chance (the answer's p̂ on control subjects)"


def _attack_names(verdicts: Iterable[Record]) -> list[str]:
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
    power: dict[str, list[bool]] = {name: [] for name in attacks}
    for fact in verdict.get("facts", []):
        for outcome in fact.get("attacks", []):
            name = str(outcome.get("attack"))
            counts[name][outcome_status(kind, outcome)] += 1
            if outcome.get("power") is not None:
                power[name].append(bool(outcome["power"]))
    return [
        Cell(_worst(counts[n]), counts[n], sum(power[n]) / len(power[n]) if power[n] else None)
        for n in attacks
    ]


def _power_line(cells: list[Cell], attacks: list[str]) -> str:
    """The attacks' power on the original, as one line (or that it was not measured)."""
    shares = [
        f"{a} {c.power:.0%}" for a, c in zip(attacks, cells, strict=True) if c.power is not None
    ]
    if shares:
        return "power on the original: " + ", ".join(shares)
    return "power not measured (no original model)"


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
    claim_attacks = _attack_names([verdict])
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
        baseline=_baseline_label(config),
        attacks=claim_attacks,
        facts=Counter(str(f.get("status")) for f in facts),
        cells=_cells(verdict, kind, attacks),
        power=_power_line(_cells(verdict, kind, claim_attacks), claim_attacks)
        if kind == "forgotten"
        else "",
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
        x, segments = float(_CHART_LABEL_WIDTH), []
        for status in _SEVERITY:
            if total[status]:
                width = total[status] / longest * _CHART_BAR_WIDTH
                segments.append(Segment(status, total[status], round(x, 1), round(width, 1)))
                x += width
        short = name if len(name) <= _CHART_LABEL_CHARS else name[: _CHART_LABEL_CHARS - 1] + "…"
        label = Cell(_worst(total), total).label or "no facts"
        bars.append(Bar(name, short, row * _CHART_ROW_HEIGHT, segments, label))
    return Chart(
        bars,
        _CHART_LABEL_WIDTH,
        _CHART_LABEL_WIDTH + _CHART_BAR_WIDTH + _CHART_TEXT_WIDTH,
        max(len(bars), 1) * _CHART_ROW_HEIGHT,
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
    attacks = _attack_names(verdicts)
    claims = [_claim(i, v, attacks) for i, v in enumerate(verdicts)]
    configs = [v.get("config", {}) for v in verdicts]
    run = RunInfo(
        started=header.get("started"),
        python=header.get("python"),
        git=header.get("git"),
        versions=header.get("versions") or {},
        facts=header.get("facts"),
        device=header.get("device"),
        hardware=header.get("hardware"),
        models=_models(by_kind.get("model", []), verdicts),
        seeds=list(dict.fromkeys(c["seed"] for c in configs if c.get("seed") is not None)),
        cases=len(by_kind.get("case", [])),
    )
    return Report(
        status=_worst(c.status for c in claims) if claims else "NO VERDICTS",
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
