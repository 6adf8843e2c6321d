"""Comparing scorecards with paired tests and regression gates (see `core`, `statistics`, `gates`).

The presentation of a comparison (tables, Markdown, HTML) lives in `visionstress.report`, which
imports this package and never the other way round.
"""

from .core import (BACKGROUND_GAP, CellComparison, CompareWarning, Comparison, ComparisonSet, IncomparableError,
                   compare, perturbation_changes, task_records)
from .gates import (Gate, GateCell, GateError, GateResult, default_gates, format_p, main_metric, parse_gate,
                    threshold_text)
from .skew import SkewCellDiff, SkewDiff, compare_skew
from .statistics import PairedTest, bootstrap_test, holm, images_needed, mcnemar, mcnemar_mde, mcnemar_test

__all__ = ["BACKGROUND_GAP", "CellComparison", "CompareWarning", "Comparison", "ComparisonSet", "Gate", "GateCell",
           "GateError", "GateResult", "IncomparableError", "PairedTest", "SkewCellDiff", "SkewDiff", "bootstrap_test",
           "compare", "compare_skew", "default_gates", "format_p", "holm", "images_needed", "main_metric", "mcnemar",
           "mcnemar_mde", "mcnemar_test", "parse_gate", "perturbation_changes", "task_records", "threshold_text"]
