"""Summaries that belong to a perturbation family rather than to a task (attack success rates of the
adversarial patches, the background gap, shape bias): computed once per run from the per-image records,
after the loop, and stored in the scorecard's `summaries` under the family's name.

A family registers `fn(context) -> dict` with `register_family_summary`; the runner calls it when the
run's suite holds a perturbation of that family. The context carries the task's statistics function so
that a family summary's intervals come from the same per-task metric code as every other number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

StatFn = Callable[[np.ndarray], dict[str, np.ndarray]]
"""Image weights `[r, n]` -> `{metric: [r]}`: the task's metrics under each of r weightings."""


@dataclass
class SummaryContext:
    """What a family summary may read.

    `records` holds every per-image record of the run (all passes; columns as the task writes them,
    plus `sample_id`, `path`, `perturbation`, `family`, `severity`); `statistics(columns)` is the task's
    statistics function for one pass's columns (sample-id order); `rows` are the scorecard's result
    rows and `breakdowns` its breakdowns (e.g. detection error types per pass, keyed "name@severity");
    `prepared` the prepared-state summaries of model-/data-aware perturbations.
    """

    task: str
    records: pd.DataFrame
    rows: Sequence[Mapping[str, Any]]
    statistics: Callable[[Mapping[str, np.ndarray]], StatFn] | None
    main_metric: str
    class_names: Sequence[str]
    bootstrap: int
    seed: int
    prepared: Mapping[str, Any]
    options: Mapping[str, Any]
    breakdowns: Mapping[str, Any]


SummaryFn = Callable[[SummaryContext], dict[str, Any]]
_SUMMARIES: dict[str, SummaryFn] = {}


def register_family_summary(family: str, fn: SummaryFn) -> SummaryFn:
    """Register the summary of `family`; a second registration for one family raises."""
    if family in _SUMMARIES and _SUMMARIES[family] is not fn:
        raise ValueError(f"a summary for family {family!r} is already registered")
    _SUMMARIES[family] = fn
    return fn


def family_summaries(families: Sequence[str], context: SummaryContext) -> dict[str, dict[str, Any]]:
    """`{family: summary}` for every family of `families` that registered one."""
    return {family: _SUMMARIES[family](context) for family in dict.fromkeys(families) if family in _SUMMARIES}
