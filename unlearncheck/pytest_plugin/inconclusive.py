"""What an INCONCLUSIVE claim does to its test (``--uc-inconclusive``): ``fail`` (the default)
leaves the `unlearncheck.verdict.InconclusiveError` a claim raises to fail the test; ``warn``
catches it when it leaves the test function, and the test passes with an
`InconclusiveClaimWarning` whose message is the verdict's ``explain()``.

Either way the claim published its verdict before raising, so the run log, the HTML report and the
terminal summary count it INCONCLUSIVE (`unlearncheck.pytest_plugin.evidence`). A FAIL claim
(`unlearncheck.verdict.ForgettingAssertionError`) fails its test in both modes.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from pathlib import Path

import pytest

from unlearncheck.pytest_plugin.options import get_options

__all__ = ["InconclusiveClaimWarning", "pytest_pyfunc_call"]


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
        return True  # the test function was called


def _where(error: BaseException, item: pytest.Function) -> tuple[str, int]:
    """The outermost line of the test's file in the error's traceback (the test function's line
    that called the claim, or the helper that did), else the test function's first line."""
    tb = error.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == item.path:
            return str(item.path), tb.tb_lineno
        tb = tb.tb_next
    return str(item.path), (item.reportinfo()[1] or 0) + 1  # reportinfo counts lines from 0
