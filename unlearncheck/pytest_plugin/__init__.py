"""The pytest plugin: model fixtures, verdict evidence on test reports, run log, HTML report.

Registered through the ``pytest11`` entry point; this package is the plugin pytest registers, and
exposes the hooks and fixtures of its modules:

- `unlearncheck.pytest_plugin.options`: the ``--uc-*`` options and ``uc_*`` ini keys,
  `set_defaults`, their resolution into `Options` and the check of the inputs;
- `unlearncheck.pytest_plugin.fixtures`: ``unlearned``, ``original``, ``reference``, ``facts``,
  ``generator``, ``uc_options``, model loading, each xdist worker's GPU;
- `unlearncheck.pytest_plugin.evidence`: the verdicts of each test on its report;
- `unlearncheck.pytest_plugin.inconclusive`: ``--uc-inconclusive``, whether an INCONCLUSIVE claim
  fails its test or passes it with an `InconclusiveClaimWarning`;
- `unlearncheck.pytest_plugin.reporting`: case logs, run log, HTML report and its evidence
  file (each session's own files, behind links to the latest), terminal summary.

Loading it imports neither torch nor transformers (models load inside the fixtures), and a
session in which no claim ran writes nothing and prints nothing.

How a verdict travels: every finished claim publishes its `Verdict` on `unlearncheck.events`;
while a test runs the plugin listens there and adds each verdict, as JSON, to the test's
``user_properties`` (so JUnit XML gets it as a property and pytest-xdist carries it from a worker to
the controller with the reports). The controller (or the only process, without xdist) reads the
verdicts from each test's teardown report, appends them to the run log, and at the end of the
session renders the HTML report from that log and prints a summary.
"""

from __future__ import annotations

import pytest

# Registers the hypothesis profiles before hypothesis's own plugin reads --hypothesis-profile.
from unlearncheck import hypothesis_profiles  # noqa: F401
from unlearncheck.pytest_plugin.evidence import (
    PROPERTY,
    pytest_runtest_makereport,
    pytest_runtest_protocol,
    verdicts_of,
)
from unlearncheck.pytest_plugin.fixtures import (
    facts,
    generator,
    original,
    pin_gpu,
    reference,
    uc_options,
    unlearned,
    worker_gpu,
)
from unlearncheck.pytest_plugin.inconclusive import (
    InconclusiveClaimWarning,
    pytest_pyfunc_call,
    pytest_report_teststatus,
)
from unlearncheck.pytest_plugin.options import (
    DEFAULT_REPORT,
    Options,
    check_inputs,
    default_cache,
    get_options,
    pytest_addoption,
    set_batch_size,
    set_defaults,
    suite_facts,
    use_score_cache,
)
from unlearncheck.pytest_plugin.reporting import (
    CRASHED_PHASE,
    SESSION_ENV,
    SUMMARY_CHARS,
    Collector,
    check_outputs,
    start_case_log,
    start_session,
)

__all__ = [
    "CRASHED_PHASE",
    "DEFAULT_REPORT",
    "PROPERTY",
    "SESSION_ENV",
    "SUMMARY_CHARS",
    "Collector",
    "InconclusiveClaimWarning",
    "Options",
    "default_cache",
    "facts",
    "generator",
    "get_options",
    "original",
    "pytest_addoption",
    "pytest_configure",
    "pytest_pyfunc_call",
    "pytest_report_teststatus",
    "pytest_runtest_makereport",
    "pytest_runtest_protocol",
    "pytest_sessionstart",
    "reference",
    "set_defaults",
    "suite_facts",
    "uc_options",
    "unlearned",
    "verdicts_of",
    "worker_gpu",
]


def _is_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker (the controller writes the reports)."""
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """Register the collector of verdicts in the controller (or the only process); pin each
    xdist worker to its GPU."""
    if not _is_worker(config):
        start_session(config)
        return
    if get_options(config).device in (None, "cuda"):
        pin_gpu(config.workerinput["workerid"])  # type: ignore[attr-defined]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Check the options and output paths; open the score cache; start this process's case log;
    set the scoring batch size when one is given."""
    options = get_options(session.config)
    check_inputs(session.config, options)
    check_outputs(session.config)
    use_score_cache(options)
    start_case_log(session.config)
    set_batch_size(options)
