"""Rendering of scorecards: the self-contained HTML report (and its screenshot)."""

from .html import REPORT_FILE, ReportError, render_report, write_report

__all__ = ["REPORT_FILE", "ReportError", "render_report", "write_report"]
