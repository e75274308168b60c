"""What an INCONCLUSIVE claim does to its test (``--uc-inconclusive``): ``fail`` (the default)
leaves the `unlearncheck.verdict.InconclusiveError` a claim raises to fail the test; ``warn``
catches it when it leaves the test function, and the test passes with an
`InconclusiveClaimWarning` whose message is the verdict's ``explain()``.

Either way the claim published its verdict before raising, so the run log, the HTML report and the
terminal summary count it INCONCLUSIVE (`unlearncheck.pytest_plugin.evidence`). A FAIL claim
(`unlearncheck.verdict.ForgettingAssertionError`) fails its test in both modes.

pytest shows such a test as INCONCLUSIVE (letter ``I``) in its progress line and counts it as
"inconclusive" in its final line (`pytest_report_teststatus`); under ``fail`` it still fails the
run (exit status 1), and its explanation is printed in the unlearncheck section of the summary,
since pytest prints tracebacks only for the tests it counts as failed.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from pathlib import Path

import pytest

from unlearncheck.pytest_plugin.options import get_options

__all__ = [
    "INCONCLUSIVE_ATTRIBUTE",
    "InconclusiveClaimWarning",
    "is_inconclusive",
    "mark_inconclusive",
    "pytest_pyfunc_call",
    "pytest_report_teststatus",
]

#: The test report attribute set on the call report of a test ended by an INCONCLUSIVE claim
#: (a plain attribute: pytest-xdist carries it from a worker to the controller).
INCONCLUSIVE_ATTRIBUTE = "unlearncheck_inconclusive"
_WARNED = pytest.StashKey[bool]()


class InconclusiveClaimWarning(UserWarning):
    """A claim of the test was INCONCLUSIVE and ``--uc-inconclusive warn`` let the test pass; the
    message is the verdict's ``explain()``.

    Filter it as any warning, e.g. ``-W error::unlearncheck.pytest_plugin.InconclusiveClaimWarning``
    turns it back into a failure.
    """


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """With ``--uc-inconclusive warn``: an `InconclusiveError` leaving the test function becomes
    an `InconclusiveClaimWarning` (shown at the test's line that ran the claim), and the test
    passes."""
    from unlearncheck.verdict import InconclusiveError

    try:
        return (yield)
    except InconclusiveError as error:
        if get_options(pyfuncitem.config).inconclusive != "warn":
            raise
        filename, lineno = _where(error, pyfuncitem)
        # The error's message is the verdict's explain(), as the test would have failed with.
        warnings.warn_explicit(InconclusiveClaimWarning(str(error)), None, filename, lineno)
        pyfuncitem.stash[_WARNED] = True
        return True  # the test function was called


def mark_inconclusive(
    item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
) -> None:
    """Mark the call report of a test that an INCONCLUSIVE claim ended: it raised
    `InconclusiveError` (``fail``), or the error became a warning (``warn``)."""
    from unlearncheck.verdict import InconclusiveError

    if call.when != "call":
        return
    raised = call.excinfo is not None and call.excinfo.errisinstance(InconclusiveError)
    if raised or item.stash.get(_WARNED, False):
        setattr(report, INCONCLUSIVE_ATTRIBUTE, True)


def is_inconclusive(report: pytest.TestReport) -> bool:
    """Whether an INCONCLUSIVE claim ended the test of this (call) report."""
    return bool(getattr(report, INCONCLUSIVE_ATTRIBUTE, False))


def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    """INCONCLUSIVE, as pytest's own status of a test that an INCONCLUSIVE claim ended."""
    if report.when == "call" and is_inconclusive(report):
        return "inconclusive", "I", ("INCONCLUSIVE", {"yellow": True})
    return None


def _where(error: BaseException, item: pytest.Function) -> tuple[str, int]:
    """The outermost line of the test's file in the error's traceback (the test function's line
    that called the claim, or the helper that did), else the test function's first line."""
    tb = error.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == item.path:
            return str(item.path), tb.tb_lineno
        tb = tb.tb_next
    return str(item.path), (item.reportinfo()[1] or 0) + 1  # reportinfo counts lines from 0
