"""Verdicts as test evidence: while a test runs, the verdicts of its claims (heard on
`unlearncheck.events`) go onto its report's ``user_properties`` (so JUnit XML gets them as
properties and pytest-xdist carries them to the controller) and pytest-html's extras. The facts
file the process loaded for the claims (`suite_facts`) goes with them (`FACTS_PROPERTY`), so the
controller of an xdist run records its hash without loading the facts itself."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from unlearncheck import events
from unlearncheck.pytest_plugin.inconclusive import mark_inconclusive
from unlearncheck.pytest_plugin.options import FACTS_FILE

if TYPE_CHECKING:
    from unlearncheck.verdict import Verdict

__all__ = [
    "FACTS_PROPERTY",
    "PROPERTY",
    "facts_file_of",
    "pytest_runtest_makereport",
    "pytest_runtest_protocol",
    "verdicts_of",
]

#: The ``user_properties`` name under which a verdict (JSON of `Verdict.to_dict`) is attached.
PROPERTY = "unlearncheck_verdict"
#: The ``user_properties`` name of the facts file the claims' process loaded (`suite_facts`).
FACTS_PROPERTY = "unlearncheck_facts_file"

_PENDING = pytest.StashKey[list[str]]()


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
    mark_inconclusive(item, call, report)
    pending = item.stash.get(_PENDING, [])
    if pending:
        for verdict in pending:
            item.user_properties.append((PROPERTY, verdict))
            report.user_properties.append((PROPERTY, verdict))
        _html_extras(report, pending)
        pending.clear()
    facts = item.config.stash.get(FACTS_FILE, None)
    if call.when == "teardown" and facts is not None and verdicts_of(report):
        report.user_properties.append((FACTS_PROPERTY, str(facts)))
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


def facts_file_of(report: pytest.TestReport) -> Path | None:
    """The facts file the process that ran the test loaded for its claims, if it did."""
    files = [Path(str(value)) for name, value in report.user_properties if name == FACTS_PROPERTY]
    return files[-1] if files else None


def verdicts_of(report: pytest.TestReport) -> list[dict[str, Any]]:
    """The verdicts (`Verdict.to_dict`) carried by a test report's user properties."""
    return [json.loads(str(value)) for name, value in report.user_properties if name == PROPERTY]
