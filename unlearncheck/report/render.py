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
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from unlearncheck.integrity import file_digest, key_id, write_evidence
from unlearncheck.outputs import write_whole
from unlearncheck.report.view import Record, build_report
from unlearncheck.runlog import read_runlog
from unlearncheck.untrusted import shown

__all__ = ["MAX_TEXT_CHARS", "is_report_file", "render_report"]

_MAX_EVIDENCE = 3
"""Probe results shown per decisive attack of a failing fact (strongest first)."""
_MAX_EXTRA_CHARS = 300
MAX_TEXT_CHARS = 10_000
"""Characters of one string of the log shown in the report (a prompt, an output, a name)."""
_TEMPLATES = Path(__file__).parent / "templates"
#: The tag by which a report is recognised as unlearncheck's (`is_report_file`).
_GENERATOR = '<meta name="generator" content="unlearncheck">'


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


def render_report(
    records: Iterable[Record] | str | Path,
    out: str | Path,
    *,
    runlog: Path | None = None,
    case_logs: Sequence[Path] = (),
    key: bytes | None = None,
) -> Path:
    """Write the HTML evidence report of a run to ``out`` (whole or not at all) and, when it is
    rendered from a run log, its evidence file next to it (`unlearncheck.integrity`).

    Args:
        records: Run-log records, or the path of a run log (a truncated last line, left by an
            interrupted run, is skipped).
        out: The HTML file to write; missing parent directories are created; a link is
            followed. Check it first (`unlearncheck.outputs`): it is replaced.
        runlog: The run log ``records`` were read from, when they are records (its hash goes
            to the header and the evidence file).
        case_logs: Case logs a killed session left, whose records ``records`` include; their
            hashes go to the header and the evidence file.
        key: Signing key of the evidence file (`unlearncheck.integrity.load_key`).

    Returns:
        The path written.

    Raises:
        unlearncheck.runlog.RunLogError: A line of the run log is not a UTF-8 JSON record.
    """
    if isinstance(records, str | Path):
        runlog = Path(records)
        records = read_runlog(runlog)
    view = build_report(records)
    out = Path(out)
    sources = [("run log", runlog), *(("case log", path) for path in case_logs)]
    digests = [
        {"what": what, **file_digest(path, out.parent)}
        for what, path in sources
        if path is not None and path.exists()
    ]
    template = _environment().get_template("report.html.j2")
    html = template.render(
        report=view,
        max_evidence=_MAX_EVIDENCE,
        digests=digests,
        key_id=key_id(key) if key is not None else None,
    )
    path = write_whole(out, html)
    if digests:
        write_evidence(path, runlog, case_logs, key)
    return path


def is_report_file(path: Path) -> bool:
    """Whether ``path`` is an HTML report unlearncheck wrote (its generator meta tag), which
    ``unlearncheck report`` may render again."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2048)
    except OSError:
        return False
    return _GENERATOR.encode() in head
