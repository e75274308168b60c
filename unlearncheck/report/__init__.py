"""The HTML evidence report, rendered from a run log."""

from __future__ import annotations

from unlearncheck.report.render import render_report

__all__ = ["render_report"]
