"""The metric registry: the one place that knows how to show and judge a metric.

Every output (scorecard summary, HTML report, compare, pytest plugin, CLI tables) asks this module
whether a metric is a fraction (shown as a percentage, differences in percentage points), which
direction is better, what unit it has and which paired test compares two runs of it. Before this
registry those facts lived in four lists that drifted apart; a metric a task adds is registered
once, beside the code that computes it.

Names may be patterns (`AP_*`, `segm_*`): a task's user-defined size bins produce metric names
nobody can list in advance.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

TESTS = ("mcnemar", "bootstrap", "none")


@dataclass(frozen=True)
class Metric:
    """What a metric is: `fraction` metrics live on 0..1 and read as percentages; `test` is the paired
    test compare uses between two runs ("mcnemar": per-image yes/no, exact; "bootstrap": a paired
    bootstrap over images of the task's statistics function; "none": not testable from the records)."""

    name: str
    task: str | None
    higher_is_better: bool
    fraction: bool
    unit: str
    description: str
    test: str = "bootstrap"

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ValueError(f"metric {self.name!r}: test must be one of {TESTS}, got {self.test!r}")

    def format(self, value: float | None) -> str:
        """`83.3%` for a fraction, `0.412` otherwise; `–` when undefined."""
        if value is None or not math.isfinite(value):
            return "–"
        return f"{100 * value:.1f}%" if self.fraction else f"{value:.3f}"

    def format_delta(self, delta: float | None) -> str:
        """A difference: `-1.2 pp` for a fraction (so it reads against the percentages), `+0.031` otherwise."""
        if delta is None or not math.isfinite(delta):
            return "–"
        return f"{100 * delta:+.1f} pp" if self.fraction else f"{delta:+.3f}"

    def worse(self, delta: float) -> bool:
        """Whether a change of `delta` (candidate − reference) is a regression."""
        return delta < 0 if self.higher_is_better else delta > 0


_METRICS: dict[tuple[str | None, str], Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add a metric (or a pattern such as `AP_*`) for its task; registering the same name twice for one
    task raises, because two definitions of one name is exactly the drift this registry prevents."""
    key = (metric.task, metric.name)
    if key in _METRICS and _METRICS[key] != metric:
        raise ValueError(f"metric {metric.name!r} is already registered for task {metric.task!r}")
    _METRICS[key] = metric
    return metric


def find_metric(name: str, task: str | None = None) -> Metric | None:
    """The metric called `name` for `task` (task-specific first, then task-neutral; exact names before
    patterns), or None when nobody registered it."""
    import visionstress.tasks  # noqa: F401  (the task modules register their metrics)

    for owner in dict.fromkeys((task, None)):
        exact = _METRICS.get((owner, name))
        if exact is not None:
            return exact
    for owner in dict.fromkeys((task, None)):
        for (registered_task, pattern), metric in _METRICS.items():
            if registered_task == owner and any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern):
                return metric
    if task is None:  # a scorecard of unknown task: any task's definition will do
        for (_, pattern), metric in _METRICS.items():
            if fnmatch.fnmatchcase(name, pattern):
                return metric
    return None


def metric_info(name: str, task: str | None = None) -> Metric:
    """Like `find_metric`, but an unregistered metric raises KeyError naming the known ones: judging a
    metric whose direction nobody declared would be a guess."""
    found = find_metric(name, task)
    if found is None:
        known = sorted({n for (t, n) in _METRICS if t in (task, None)})
        raise KeyError(f"unknown metric {name!r}" + (f" for task {task}" if task else "")
                       + f"; known: {', '.join(known)}")
    return found


def format_value(value: float | None, metric: str, task: str | None = None) -> str:
    """Format `value` the way its metric says (plain `0.412` for an unregistered metric)."""
    found = find_metric(metric, task)
    return found.format(value) if found else Metric(metric, task, True, False, "", "").format(value)


def format_delta(delta: float | None, metric: str, task: str | None = None) -> str:
    found = find_metric(metric, task)
    return found.format_delta(delta) if found else Metric(metric, task, True, False, "", "").format_delta(delta)


def registered_metrics(task: str | None = None) -> list[Metric]:
    """Every registered metric of `task` (and the task-neutral ones), in registration order."""
    import visionstress.tasks  # noqa: F401  (the task modules register their metrics)

    return [m for (t, _), m in _METRICS.items() if task is None or t in (task, None)]


def _register(task: str | None, rows: list[tuple[str, bool, bool, str, str, str]]) -> None:
    for name, higher, fraction, unit, test, description in rows:
        register_metric(Metric(name, task, higher, fraction, unit, description, test))


# Summaries over the suite (any task): the robustness summary of the task's main metric.
_register(None, [
    ("mPC", True, True, "main metric", "bootstrap",
     "mean of the main metric under perturbation: over perturbations of the mean over severities"),
    ("rPC", True, False, "ratio", "bootstrap", "relative performance under perturbation: mPC / clean"),
    ("mPC[*]", True, True, "main metric", "bootstrap", "mPC over the perturbations of one family"),
])

# Summaries of the background and cue families (evaluators/reliance.py), on any task's main metric.
_register(None, [
    ("bg_gap", False, True, "main metric", "bootstrap",
     "metric on mixed_same - on mixed_rand: how much a background matching the class helps (Xiao et al. 2020)"),
    ("shape_bias", True, True, "fraction", "bootstrap",
     "shape decisions / (shape + texture decisions) on texture_fill cue conflicts (Geirhos et al. 2019)"),
    ("texture_reliance", False, False, "ratio", "bootstrap",
     "share of the clean metric kept under patch_shuffle k=4, where only local texture is left"),
])
