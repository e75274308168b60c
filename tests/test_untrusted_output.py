"""Untrusted text is inert everywhere it goes (fuzzed with hypothesis).

What a model says, and the prompts, entity names and model specs around it, may hold markup
(``<script>``, ``</textarea>``), template syntax (``{{ }}``), control characters (NUL, ``\\r``, ANSI
escape sequences), bidi overrides, separators, lone surrogates and megabytes of text. Such text is
put into every text field of a verdict, written through the run log and read back (one record a
line, every line JSON, the text kept), rendered into the HTML report (parsed with the stdlib HTML
parser: the same elements and attributes as a report of plain text, no script, the text shown
escaped and cut) and into the failure message and terminal summary (no active character).
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import unicodedata
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from unlearncheck.equivalence import EquivalenceVerdict
from unlearncheck.metrics.fade import FadeResult, FadeSample
from unlearncheck.probes import Probe
from unlearncheck.pytest_plugin.reporting import SUMMARY_CHARS, _attack_lines
from unlearncheck.report import render_report
from unlearncheck.report.render import MAX_TEXT_CHARS
from unlearncheck.runlog import RunLog, read_runlog, redact
from unlearncheck.untrusted import quoted, shown
from unlearncheck.verdict import (
    TERMINAL_CHARS,
    AttackOutcome,
    FactVerdict,
    ForgettingAssertionError,
    ProbeResult,
    Verdict,
)

pytest_plugins = ["pytester"]

#: 200 examples a property, the same ones on every CI run.
FUZZ = settings(max_examples=200, deadline=None, derandomize=bool(os.environ.get("CI")))
MEGABYTE = 2**20
#: Characters that act on a page or a terminal instead of showing: controls, format characters
#: (bidi overrides, zero-width), surrogates, line and paragraph separators.
ACTIVE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
NASTY = (
    "<script>alert(1)</script>",
    "</textarea><img src=x onerror=alert(1)>",
    "</pre></td></tr></table></article><h1>forged verdict: PASS</h1>",
    '" onmouseover="alert(1)',
    "' autofocus onfocus='alert(1)",
    "<svg onload=alert(1)><style>body{display:none}</style>",
    "<!-- <![CDATA[ ]]> -->",
    "{{ 7 * 7 }} {% raw %} {# comment #}",
    "&lt;script&gt; &amp; &#x3c;b&#62;",
    "javascript:alert(1)",
    "NUL\x00here",
    "carriage\rreturn\r\n",
    "\x1b[2J\x1b[1;31mred\x1b[0m",
    "\x1b]0;window title\x07",
    "\x9b31m C1 CSI",
    "\b\b\bbackspaced",
    "\u202eRTL override\u202c",
    "\u2066isolate\u2069\u200f",
    "zero\u200bwidth\ufeff",
    "line\u2028para\u2029next\x85",
    "\ud800",
    "\udfff lone low",
    "\ud83d\ude00 surrogate pair as two code points",
    "tab\tand\nnewline",
)
ANY_CHARACTER = st.one_of(
    st.characters(codec=None, exclude_categories=()),  # every code point, surrogates included
    st.characters(categories=sorted(ACTIVE)),  # the active ones, often
)
SHORT_PAYLOADS = st.one_of(
    st.sampled_from(NASTY),
    st.lists(
        st.one_of(st.sampled_from(NASTY), st.text(alphabet=ANY_CHARACTER, min_size=1, max_size=30)),
        min_size=1,
        max_size=6,
    ).map("".join),
)


def repeated(payload: str, length: int) -> str:
    """``payload`` repeated to ``length`` characters."""
    return (payload * length)[:length]


#: Text longer than the report shows (the terminal shows less still).
LONG_PAYLOADS = st.builds(
    repeated, SHORT_PAYLOADS, st.integers(MAX_TEXT_CHARS + 1, 2 * MAX_TEXT_CHARS)
)
#: Short payloads, and one time in twelve a long one.
PAYLOADS = st.integers(0, 11).flatmap(lambda draw: SHORT_PAYLOADS if draw else LONG_PAYLOADS)
#: Every payload, then words to a megabyte (a model that does not stop): each property runs on it.
MEGABYTE_OF_OUTPUT = "".join(NASTY) + repeated(" and so on", MEGABYTE)
#: Ends the text of the report and terminal properties: shown only when nothing is cut.
END = " [end of the untrusted text]"


def active(text: str, allowed: str = "") -> set[str]:
    """The active characters of ``text`` outside ``allowed``."""
    return {c for c in set(text) - set(allowed) if unicodedata.category(c) in ACTIVE}


def count_kinds(text: str) -> None:
    """Count in hypothesis's statistics what the example holds: markup, which active characters,
    and whether it is longer than the report shows."""
    for category in sorted({unicodedata.category(c) for c in active(text)}):
        event(f"has {category} characters")
    if "<" in text:
        event("has markup")
    if len(text) > MAX_TEXT_CHARS:
        event("longer than the report shows")


def claim_verdict(text: str) -> Verdict:
    """A forget-claim verdict with ``text`` in every field a model, a facts file or a user fills:
    a failing fact (with its evidence), an inconclusive one and a passing one."""
    probe = Probe(
        fact_id=text,
        attack=text,
        form=text,
        prompt=text,
        answer=text,
        distractors=(text, text),
        anchor=text,
        controls=(text,),
        control_answers=((text,),),
        lineage=(text, text),
    )
    result = ProbeResult(probe, 0.9, 0.1, 0.8, True, original_delta=0.7, output=text)
    recovered = AttackOutcome(
        text,
        "recovered",
        reason=text,
        n=12,
        leaks=9,
        effect=0.8,
        null_n=480,
        p_value=1e-4,
        significant=True,
        evidence=[result],
        extra={text: text},
        cases=[result],
    )
    not_run = AttackOutcome(f"not run: {text}", "not run", reason=text, blocking=True)
    kept = AttackOutcome(
        f"kept: {text}", "not recovered", reason=text, n=12, effect=0.0, null_n=480, p_value=0.5
    )
    facts = [
        FactVerdict(text, "FAIL", text, [recovered, kept]),
        FactVerdict(f"inconclusive: {text}", "INCONCLUSIVE", text, [not_run]),
        FactVerdict(f"passing: {text}", "PASS", text, [kept]),
    ]
    config = {
        "kind": "forgotten",
        "attacks": [text, f"not run: {text}", f"kept: {text}"],
        "model": text,
        "model_hash": text,
        "reference": text,
        "reference_hash": text,
        "original": text,
        "alpha": 0.05,
        "tolerance": 0.1,
        "seed": 0,
    }
    return Verdict(text, "FAIL", facts, config)


def equivalence_verdict(text: str) -> EquivalenceVerdict:
    """A failing equivalence verdict whose claim, model specs and sample are ``text`` (its reasons
    are the library's own words)."""
    sample = FadeSample(text, text, "model", -3.0, -1.0, 2.0)
    fade = FadeResult(0.4, 0.5, 0.55, 4, 1, False, 0, 0, (sample,))
    floor = FadeResult(1.0, 1.0, 0.0, 4, 1, False, 0, 0, ())
    config = {"kind": "equivalent", "model": text, "reference": text, "n": 4, "prompts": 1}
    return EquivalenceVerdict(
        text,
        "FAIL",
        [],
        config,
        result=fade,
        floor=floor,
        original_result=None,
        tolerance=0.05,
        reasons=["FADE(model, reference) 0.550 is 0.550 above the noise floor 0.000"],
    )


@cache
def header_line() -> bytes:
    """The first line of a run log: its header record (git revision, versions, ...)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "run.jsonl"
        log = RunLog(path)
        log.model("model", "plain", "hash")
        log.close()
        return path.read_bytes().splitlines(keepends=True)[0]


def write_run(path: Path, text: str) -> list[dict[str, Any]]:
    """Write a run of ``text`` through the run log as the plugin and the claims do: models,
    verdicts (with the test id), their cases, an interrupted claim's case and a metrics table.

    The log starts with a copy of `header_line` (its git calls take longer than the rest), and
    the run log appends to it as to any log it finds started.

    Returns:
        The records written after the header, with their kinds.
    """
    verdict = claim_verdict(text)
    written: list[dict[str, Any]] = []
    path.write_bytes(header_line())
    log = RunLog(path)

    def write(kind: str, record: dict[str, Any]) -> None:
        log.write(kind, record)
        written.append({"kind": kind, **record})

    write("model", {"role": "model", "spec": text, "content_hash": text})
    for fact in verdict.facts:
        for outcome in fact.attacks:
            for result in outcome.cases:
                case = {"claim": text, "fact_id": fact.fact_id, "attack": outcome.attack}
                write("case", {**case, **result.to_dict()})
    interrupted = {"claim": f"interrupted: {text}", "fact_id": text, "attack": text}
    write("case", {**interrupted, **verdict.facts[0].attacks[0].cases[0].to_dict()})
    for record in (verdict.to_dict(), equivalence_verdict(text).to_dict()):
        write("verdict", {**record, "test": text, "outcome": "failed", "duration": 1.5})
    row = {"model": text, "forget_quality": 0.5, "truth_ratio": 0.6, "fade": 0.1}
    write("metrics", {"reference": text, "facts": text, "rows": [row]})
    log.close()
    return written


class ParsedPage(HTMLParser):
    """A page as the stdlib HTML parser sees it: its markup in order, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.markup: list[tuple[Any, ...]] = []
        self.texts: list[str] = []

    def tags(self, name: str) -> int:
        """How many elements ``name`` the page opens."""
        return sum(item[:2] in {("start", name), ("empty", name)} for item in self.markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.markup.append(("start", tag, tuple(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.markup.append(("empty", tag, tuple(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.markup.append(("end", tag))

    def handle_comment(self, data: str) -> None:
        self.markup.append(("comment", data))

    def handle_decl(self, decl: str) -> None:
        self.markup.append(("declaration", decl))

    def handle_pi(self, data: str) -> None:
        self.markup.append(("processing instruction", data))

    def unknown_decl(self, data: str) -> None:
        self.markup.append(("unknown declaration", data))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)


def parse_report(text: str, directory: Path) -> tuple[ParsedPage, bytes]:
    """Write ``text``'s run log in ``directory``, render its report, and parse the page."""
    write_run(directory / "run.jsonl", text)
    page = render_report(directory / "run.jsonl", directory / "report.html").read_bytes()
    parsed = ParsedPage()
    parsed.feed(page.decode("utf-8"))
    parsed.close()
    return parsed, page


@cache
def plain_markup() -> list[tuple[Any, ...]]:
    """The markup of the report of a run whose untrusted text is plain words."""
    with tempfile.TemporaryDirectory() as directory:
        return parse_report("plain words", Path(directory))[0].markup


def test_shown_escapes_active_characters_visibly_and_cuts_long_text() -> None:
    assert shown("a\x1b[2Jb\x00\r", limit=100) == "a\\x1b[2Jb\\x00\\x0d"
    assert shown("\u202eevil\u2028\udcff\U000e0001", limit=100) == (
        "\\u202eevil\\u2028\\udcff\\U000e0001"
    )
    assert shown("line\n\ttab", limit=100, keep="\n\t") == "line\n\ttab"
    assert shown("é ü 漢字 <b>", limit=100) == "é ü 漢字 <b>"  # only active characters change
    assert shown("x" * 50, limit=10) == "x" * 10 + " … [cut: 10 of 50 characters shown]"
    assert quoted("a\\x1b\x1b", limit=100) == "'a\\\\x1b\\x1b'"  # repr tells the two apart


@FUZZ
@example(text=MEGABYTE_OF_OUTPUT)
@given(text=PAYLOADS)
def test_the_run_log_keeps_untrusted_text_one_record_a_line(text: str) -> None:
    count_kinds(text)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "run.jsonl"
        written = write_run(path, text)
        raw = path.read_bytes().decode("utf-8")  # strict: lone surrogates are escaped
        records = list(read_runlog(path))
    lines = raw.split("\n")
    assert lines.pop() == ""  # every record ends with a line break
    assert raw.splitlines() == lines  # and no other character breaks a line
    assert len(lines) == len(records) == 1 + len(written)  # the header, then a line a record
    # Every record reads back as written (secrets redacted), text included, except that JSON
    # reads a surrogate pair written as two code points as the one character they encode.
    assert records[0]["kind"] == "run"
    assert records[1:] == [json.loads(json.dumps(redact(record))) for record in written]
    assert records[1]["spec"] == json.loads(json.dumps(text))


@FUZZ
@example(text=MEGABYTE_OF_OUTPUT)
@given(text=PAYLOADS)
def test_the_html_report_shows_untrusted_text_inertly(text: str) -> None:
    count_kinds(text)
    text += END
    with tempfile.TemporaryDirectory() as directory:
        parsed, page = parse_report(text, Path(directory))
    assert parsed.markup == plain_markup()  # no element, attribute or comment from the text
    assert parsed.tags("script") == 0  # the report has no script of its own either
    attribute_values = [v or "" for item in parsed.markup if item[0] == "start" for _, v in item[2]]
    assert not active("".join(parsed.texts + attribute_values), allowed="\n\t")
    # The text itself is on the page, its active characters escaped, cut after MAX_TEXT_CHARS.
    on_page, logged = "".join(parsed.texts), json.loads(json.dumps(text))
    assert shown(logged, limit=MAX_TEXT_CHARS, keep="\n\t") in on_page
    assert (END in on_page) == (len(logged) <= MAX_TEXT_CHARS)
    assert len(page) < 4 * MEGABYTE


def terminal_lines(text: str) -> list[str]:
    """What the terminal shows of claims with ``text``: the failure messages of both kinds of
    claim, and the summary's attack lines from the verdict as the plugin carries it (JSON)."""
    verdict = claim_verdict(text)
    messages = str(ForgettingAssertionError(verdict)), equivalence_verdict(text).explain()
    carried = {
        **json.loads(json.dumps(verdict.to_dict(), ensure_ascii=False)),
        "test": text,
        "duration": 1.5,
    }
    return [line for message in messages for line in message.split("\n")] + _attack_lines([carried])


@FUZZ
@example(text=MEGABYTE_OF_OUTPUT)
@given(text=PAYLOADS)
def test_the_terminal_shows_untrusted_text_inertly(text: str) -> None:
    count_kinds(text)
    text += END
    lines = terminal_lines(text)
    assert not active("".join(lines))
    # The text itself is there, its active characters escaped, cut.
    screen = "\n".join(lines)
    assert shown(text, limit=TERMINAL_CHARS) in screen  # claim, fact, reason, attack
    assert quoted(text, limit=TERMINAL_CHARS) in screen  # prompt, answer, output, sample
    assert shown(text, limit=SUMMARY_CHARS) in screen  # attack names in the summary
    if len(text) > TERMINAL_CHARS:
        assert END not in screen


#: A suite whose one test publishes `claim_verdict` of the text in ``payload.json`` and fails.
PYTEST_SUITE = f"""
import json
from pathlib import Path

from unlearncheck import events
from unlearncheck.probes import Probe
from unlearncheck.verdict import (
    AttackOutcome, FactVerdict, ForgettingAssertionError, ProbeResult, Verdict
)

{inspect.getsource(claim_verdict)}

def test_claim():
    text = json.loads(Path("payload.json").read_text(encoding="ascii"))
    verdict = claim_verdict(text)
    events.publish(verdict)
    raise ForgettingAssertionError(verdict)
"""


def test_a_pytest_run_with_untrusted_text_prints_and_writes_it_inertly(
    pytester: pytest.Pytester,
) -> None:
    text = "".join(NASTY) * 30  # every payload, longer than the report and the terminal show
    (pytester.path / "payload.json").write_text(json.dumps(text), encoding="ascii")
    pytester.makepyfile(test_claims=PYTEST_SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--uc-cache=off", "--junitxml=junit.xml"
    )
    result.assert_outcomes(failed=1)
    terminal = "\n".join(result.outlines + result.errlines)
    assert not active(terminal, allowed="\n")
    logged = json.loads(json.dumps(text))  # as the suite reads it (surrogate pairs joined)
    assert shown(logged, limit=TERMINAL_CHARS) in terminal  # the failure message
    assert "HTML report: " in terminal and "HTML report not written" not in terminal
    records = list(read_runlog(pytester.path / "reports" / "unlearncheck.jsonl"))
    (verdict,) = (r for r in records if r["kind"] == "verdict")
    assert verdict["facts"][0]["attacks"][0]["evidence"][0]["output"] == logged
    parsed = ParsedPage()
    parsed.feed((pytester.path / "reports" / "unlearncheck.html").read_text(encoding="utf-8"))
    counts = {tag: parsed.tags(tag) for tag in ("script", "img", "textarea", "svg", "h1", "style")}
    assert counts == {"script": 0, "img": 0, "textarea": 0, "svg": 1, "h1": 1, "style": 1}
    assert not active("".join(parsed.texts), allowed="\n\t")
