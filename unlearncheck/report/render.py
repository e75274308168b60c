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

The records are read and merged into the page's content by `unlearncheck.report.view`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from unlearncheck.report.view import Record, build_report
from unlearncheck.runlog import read_runlog
from unlearncheck.untrusted import shown

__all__ = ["MAX_TEXT_CHARS", "render_report"]

_MAX_EVIDENCE = 3
"""Probe results shown per decisive attack of a failing fact (strongest first)."""
_MAX_EXTRA_CHARS = 300
MAX_TEXT_CHARS = 10_000
"""Characters of one string of the log shown in the report (a prompt, an output, a name)."""
_TEMPLATES = Path(__file__).parent / "templates"


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
    return text if len(text) <= _MAX_EXTRA_CHARS else text[: _MAX_EXTRA_CHARS - 1] + "…"


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
    html = template.render(report=build_report(records), max_evidence=_MAX_EVIDENCE)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole or not at all: a reader never sees half a report.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(html, encoding="utf-8")
    os.replace(partial, path)
    return path
