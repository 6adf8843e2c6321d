"""Metric thresholds on scorecard cells: the checks behind `assert_metric` and the marker's min/max.

A threshold names its cells with the cell-selector grammar of visionstress.compare's gates,
`metric[@perturbation-glob[/severity]]`; for a threshold a missing scope means the clean pass.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visionstress.scorecard import Scorecard

CLEAN = "clean"


class MarkerError(ValueError):
    """A malformed @pytest.mark.visionstress: reported as a collection error naming the test and key."""


@dataclass(frozen=True)
class Threshold:
    """One `min`/`max` entry of the marker: the cells it selects and its bound."""

    metric: str
    perturbation: str
    severity: int | None
    bound: float




def parse_cell_key(key: Any, where: str) -> tuple[str, str, int | None]:
    """`metric[@perturbation[/severity]]` (visionstress.cells, the grammar compare's gates use too) as
    (metric, perturbation glob, severity or None); a missing perturbation is the clean pass."""
    from visionstress.cells import CellError, parse_cell

    if not isinstance(key, str):
        raise MarkerError(f"{where}: the key is not METRIC[@PERTURBATION[/SEVERITY]], e.g. 'top1', "
                          "'top1@fog' or 'top1@fog/3'")
    try:
        selector = parse_cell(key)
    except CellError as exc:
        raise MarkerError(f"{where}: {exc}") from None
    return selector.metric, selector.scope or CLEAN, selector.severity


def parse_threshold(key: Any, bound: Any, name: str) -> Threshold:
    where = f"{name}[{key!r}]"
    metric, perturbation, severity = parse_cell_key(key, where)
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
        raise MarkerError(f"{where}: the bound must be a finite number, got {bound!r}")
    return Threshold(metric, perturbation, severity, float(bound))


def main_metric(card: Scorecard) -> str:
    """The metric a card is summarised and gated by (top-1, AP, mIoU)."""
    return card.main_metric


def fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def metric_problems(card: Scorecard, metric: str, at_least: float | None, at_most: float | None,
                    perturbation: str, severity: int | None) -> list[str]:
    """One line per matching cell outside the bounds. Cells where the metric is undefined (NaN) are not
    judged, but at least one judged cell must match, so a misspelt perturbation fails rather than
    passing vacuously."""
    where = perturbation if severity is None else f"{perturbation} severity {severity}"
    cells = [r for r in card.results if fnmatch.fnmatchcase(r["perturbation"], perturbation)
             and (severity is None or int(r["severity"]) == severity)]
    if not cells:
        have = ", ".join(sorted({f"{r['perturbation']}@{r['severity']}" for r in card.results}))
        return [f"  {metric} at {where}: no such cell in the scorecard (it has {have})"]
    lacking = [r for r in cells if metric not in r["metrics"]]
    if lacking:
        return [f"  {metric} at {where}: no such metric; the rows have {', '.join(lacking[0]['metrics'])}"]
    judged = [r for r in cells if r["metrics"][metric] is not None and math.isfinite(r["metrics"][metric])]
    if not judged:
        return [f"  {metric} at {where}: undefined (NaN) in every matching cell"]
    problems = []
    for row in judged:
        value = float(row["metrics"][metric])
        for ok, op, bound in ((at_least is None or value >= at_least, ">=", at_least),
                              (at_most is None or value <= at_most, "<=", at_most)):
            if ok:
                continue
            low, high = row.get("ci", {}).get(metric, (None, None))
            ci = "" if low is None or high is None else f" (95% CI {fmt(low)}-{fmt(high)})"
            problems.append(f"  {metric} at {row['perturbation']} severity {row['severity']}: observed "
                            f"{fmt(value)}{ci}, required {op} {bound:g}")
    return problems


def failure_header(card: Scorecard) -> str:
    return (f"visionstress: {card.model.get('spec')} on {card.dataset.get('path')} "
            f"(suite {card.suite.get('name')}) misses its thresholds:\n")
