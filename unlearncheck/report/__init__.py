"""The HTML evidence report, rendered from a run log."""

from __future__ import annotations

from unlearncheck.report.render import is_report_file, render_report

__all__ = ["is_report_file", "render_report"]
