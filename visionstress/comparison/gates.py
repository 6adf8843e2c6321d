"""Regression gates: `SELECTOR:THRESHOLD` specs and their three outcomes, pass, fail and inconclusive.

A gate is a cell selector (`visionstress.cells`: `top1`, `top1@*blur`, `ece@fog/5`, `AP@mPC`) and a
signed threshold, its sign the direction of a regression: `top1:-1pp` fails on a drop of more than
one percentage point, `ece:+2pp` on a rise of more than two; `pp` is percentage points (fraction
metrics only), `%` relative to the reference value, no unit the metric's own units. A gate without a
scope (`top1:-1pp`) covers the *primary endpoints*: the clean pass and the robustness summaries mPC
and mPC per family, pre-declared so that a gate does not go fishing among 66 cells. `top1@*:-1pp`
covers every perturbed cell, `top1@fog/3` one cell, `top1@summary` every summary, `top1@clean` the
clean pass alone.

Each cell a gate covers gets one of three outcomes, and the gate the worst of them:
- fail: the change goes beyond the threshold in the regression direction and is significant (the
  cell's p-value, Holm-adjusted over the cells *this gate* covers, below alpha);
- inconclusive: beyond the threshold but not significant, or within it but with a minimum detectable
  effect (at the gate's level, alpha / cells, and 80% power) larger than the threshold, so a
  threshold-sized regression could have gone unseen. Inconclusive fails unless allowed, with the
  number of images that would settle it;
- pass: within the threshold, with the power to have seen it crossed.
A cell whose metric is undefined in either run (COCO's APl with no large object, any AP with no annotated
object) is inconclusive: there is no change to judge.
A cell without a paired test (no records) is judged on its change alone. Cells whose perturbation
implementation changed between the two scorecards are left out of gates: a new implementation is not
a model regression.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from visionstress.cells import CLEAN, PRIMARY, CellError, CellSelector, parse_cell
from visionstress.metrics import find_metric, format_delta

from .statistics import holm, images_needed

if TYPE_CHECKING:
    from .core import CellComparison

OUTCOMES = ("pass", "inconclusive", "fail")
"""From best to worst; a gate's outcome is its worst cell's."""

_TOLERANCE = 1e-12
"""Slack when comparing a change with a gate threshold: 0.73 - 0.72 must not read as more than 1 pp."""
_GATE = re.compile(r"^(?P<selector>[^:\s]+):(?P<threshold>\S*)$")
_THRESHOLD = re.compile(r"^(?P<sign>[+-]?)(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<unit>pp|%)?$")


class GateError(ValueError):
    """A malformed or inapplicable gate; the message quotes the spec and says what is wrong."""


def default_gates(task: str) -> tuple[str, ...]:
    """The gates `compare(..., gates=None)` applies: the task's main metric on its primary endpoints
    (clean, mPC, mPC per family), failing on a regression of more than one point.

    One point of the main metric (top-1, COCO AP, mIoU) is the smallest difference the field's result
    tables treat as real; a smaller threshold is rarely detectable on the few hundred to few thousand
    images a stress run uses, and the gate says so (inconclusive) rather than passing blind. A task
    without declared defaults has none (the comparison is still made and shown).
    """
    from visionstress.tasks import get_task

    try:
        return tuple(get_task(task).default_gates)
    except ValueError:
        return ()


def main_metric(task: str) -> str | None:
    """The metric a task's summaries (mPC, rPC) are computed for (None for a task not installed here)."""
    from visionstress.tasks import get_task

    try:
        return get_task(task).main_metric
    except ValueError:
        return None


@dataclass
class Gate:
    """A parsed gate spec `METRIC[@SCOPE[/SEVERITY]]:THRESHOLD` (see the module docstring).

    `threshold` is signed, its sign the direction of a regression, in metric units (a `pp` threshold
    is stored as a fraction: -1pp is -0.01) or, when `relative`, as a fraction of the reference value
    (-2% is -0.02).
    """

    spec: str
    metric: str
    scope: str | None
    severity: int | None
    threshold: float
    relative: bool

    @property
    def selector(self) -> CellSelector:
        return CellSelector(self.metric, self.scope, self.severity)

    def covers(self, cell: CellComparison, summary: bool) -> bool:
        """Whether `cell` (a summary cell when `summary`) is in this gate's scope; no scope = primary."""
        return self.selector.matches(cell.metric, cell.perturbation, cell.severity, summary=summary, default=PRIMARY)

    def exceeded(self, cell: CellComparison) -> bool:
        """Whether the change goes past the threshold in the regression direction (significance aside)."""
        if not (math.isfinite(cell.old) and math.isfinite(cell.new)):
            return False
        change = cell.delta
        if self.relative:
            if cell.old == 0:
                change = 0.0 if cell.delta == 0 else math.copysign(math.inf, cell.delta)
            else:
                change = cell.delta / abs(cell.old)
        direction = math.copysign(1.0, self.threshold)
        return direction * change > abs(self.threshold) + _TOLERANCE

    def limit(self, cell: CellComparison) -> float:
        """The threshold's size in the cell's metric units (a relative threshold times the reference)."""
        return abs(self.threshold) * (abs(cell.old) if self.relative else 1.0)


@dataclass
class GateCell:
    """One cell under one gate: its outcome, its p-value Holm-adjusted over the gate's cells, its
    minimum detectable effect at the gate's level (None when untested) and why."""

    cell: CellComparison
    outcome: str
    p_adjusted: float | None
    mde: float | None
    reason: str


@dataclass
class GateResult(Gate):
    """A gate after the comparison. `passed` is False on "fail", and on "inconclusive" unless
    `allowed` (allow_inconclusive). `cells` are the covered cells with their verdicts, `excluded` the
    covered cells left out because their perturbation changed; `message` says why, in one line."""

    outcome: str = "pass"
    cells: list[GateCell] = field(default_factory=list)
    excluded: list[CellComparison] = field(default_factory=list)
    allowed: bool = False
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.outcome == "pass" or (self.outcome == "inconclusive" and self.allowed)

    @property
    def failures(self) -> list[CellComparison]:
        return [c.cell for c in self.cells if c.outcome == "fail"]

    @property
    def inconclusive(self) -> list[CellComparison]:
        return [c.cell for c in self.cells if c.outcome == "inconclusive"]

    @property
    def checked(self) -> int:
        return len(self.cells)

    @property
    def mde(self) -> float | None:
        """The largest minimum detectable effect among the gate's tested cells (its weakest point)."""
        values = [c.mde for c in self.cells if c.mde is not None]
        return max(values) if values else None


def parse_gate(spec: str) -> Gate:
    """Parse `METRIC[@SCOPE[/SEVERITY]]:THRESHOLD` (e.g. `top1:-1pp`, `ece@fog/5:+2pp`, `AP@*blur:-2%`,
    `top1@mPC:-1pp`); GateError says what is wrong."""
    text = str(spec).strip()
    match = _GATE.match(text)
    if match is None:
        raise GateError(f"gate {spec!r}: expected METRIC[@PERTURBATION[/SEVERITY]]:THRESHOLD, "
                        f"e.g. top1:-1pp or ece@fog/5:+2pp")
    try:
        selector = parse_cell(match.group("selector"))
    except CellError as exc:
        problem = str(exc).split(": ", 1)[1]
        if problem.startswith("expected"):
            problem = "expected METRIC[@PERTURBATION[/SEVERITY]]:THRESHOLD, e.g. top1:-1pp or ece@fog/5:+2pp"
        raise GateError(f"gate {spec!r}: {problem}") from None
    threshold_text = match.group("threshold")
    number = _THRESHOLD.match(threshold_text)
    if number is None:
        raise GateError(f"gate {spec!r}: threshold {threshold_text!r} is not a signed number with an optional "
                        f"unit pp (percentage points) or % (relative), e.g. -1pp, +0.05, -2%")
    unit, sign = number.group("unit"), number.group("sign")
    if not sign:
        raise GateError(f"gate {spec!r}: the threshold needs a sign, the direction of a regression: "
                        f"-{threshold_text} fails on a drop, +{threshold_text} on a rise")
    metric = find_metric(selector.metric)
    if unit == "pp" and metric is not None and not metric.fraction:
        raise GateError(f"gate {spec!r}: {selector.metric} is not a fraction, so pp does not apply; give the "
                        f"threshold in {selector.metric} units (e.g. {sign}0.05) or relative (e.g. {sign}5%)")
    value = float(sign + number.group("number"))
    if unit is not None:
        value /= 100.0
    return Gate(spec=text, metric=selector.metric, scope=selector.scope, severity=selector.severity,
                threshold=value, relative=unit == "%")


def check_gates(gates: Sequence[Gate], task: str, cells: list[CellComparison],
                summaries: list[CellComparison]) -> None:
    """Refuse gates that name a metric or a scope the comparison does not have, before they silently pass."""
    metrics = list(dict.fromkeys(c.metric for c in cells))
    perturbations = sorted({c.perturbation for c in cells if c.perturbation != CLEAN})
    main = main_metric(task)
    for gate in gates:
        if gate.metric not in metrics:
            raise GateError(f"gate {gate.spec!r}: no metric {gate.metric!r} in these scorecards; "
                            f"they have {', '.join(metrics)}")
        info = find_metric(gate.metric, task)
        if gate.spec.endswith("pp") and info is not None and not info.fraction:
            raise GateError(f"gate {gate.spec!r}: {gate.metric} is not a fraction, so pp does not apply; give the "
                            f"threshold in {gate.metric} units or relative (%)")
        selector = gate.selector
        if selector.is_summary_scope:
            if gate.metric != main:
                raise GateError(f"gate {gate.spec!r}: summaries are computed for the main metric {main} only")
            if not any(gate.covers(c, True) for c in summaries):
                names = ", ".join(c.perturbation for c in summaries) or "none: no perturbed cells are shared"
                raise GateError(f"gate {gate.spec!r}: no summary {gate.scope!r}; the summaries are {names}")
        elif gate.scope not in (None, CLEAN, PRIMARY) and not any(gate.covers(c, False) for c in cells):
            severity = "" if gate.severity is None else f" at severity {gate.severity}"
            raise GateError(f"gate {gate.spec!r}: {gate.scope!r}{severity} matches no compared perturbation; "
                            f"they are {', '.join(perturbations) or 'none'} (and clean, primary, summary)")


def evaluate_gate(gate: Gate, cells: list[CellComparison], summaries: list[CellComparison], alpha: float,
                  allow_inconclusive: bool, num_images: int | None) -> GateResult:
    """The gate's verdict on its cells (see the module docstring)."""
    covered = [c for c in cells if gate.covers(c, False)] + [c for c in summaries if gate.covers(c, True)]
    excluded = [c for c in covered if c.changed]
    gated = [c for c in covered if not c.changed]
    tested = [c for c in gated if c.p_value is not None]
    adjusted = dict(zip(map(id, tested), holm([c.p_value for c in tested])))
    level = alpha / max(1, len(tested))  # Holm tests its most significant cell at alpha / m: plan power for that
    verdicts = [_verdict(gate, c, adjusted.get(id(c)), c.mde_at(level), alpha) for c in gated]
    result = GateResult(**{k: getattr(gate, k) for k in ("spec", "metric", "scope", "severity", "threshold",
                                                           "relative")},
                        cells=verdicts, excluded=excluded, allowed=allow_inconclusive)
    result.outcome = max((v.outcome for v in verdicts), key=OUTCOMES.index, default="pass")
    result.message = _message(result, num_images)
    return result


def _verdict(gate: Gate, cell: CellComparison, p_adjusted: float | None, mde: float | None,
             alpha: float) -> GateCell:
    limit = gate.limit(cell)
    undefined = [side for side, value in (("the reference", cell.old), ("the candidate", cell.new))
                 if value is None or not math.isfinite(value)]
    if undefined:  # e.g. APl with no large object: no change to judge, so no pass either
        where = "both runs" if len(undefined) == 2 else undefined[0]
        return GateCell(cell, "inconclusive", None, None, f"{cell.metric} is undefined in {where}")
    if cell.p_value is None:
        if gate.exceeded(cell):
            return GateCell(cell, "fail", None, None, "beyond the threshold (untested: no paired records)")
        return GateCell(cell, "pass", None, None, "within the threshold (untested: no paired records)")
    if gate.exceeded(cell):
        if p_adjusted < alpha:
            return GateCell(cell, "fail", p_adjusted, mde, "beyond the threshold, significantly")
        return GateCell(cell, "inconclusive", p_adjusted, mde, "beyond the threshold but not significant")
    if mde is not None and mde > limit + _TOLERANCE:
        return GateCell(cell, "inconclusive", p_adjusted, mde, "too few images to detect a threshold-sized change")
    return GateCell(cell, "pass", p_adjusted, mde, "within the threshold")


def _message(result: GateResult, num_images: int | None) -> str:
    """One line: the verdict, the cells that decided it and, when inconclusive, what would settle it."""
    shown = {"fail": result.failures, "inconclusive": result.inconclusive}.get(result.outcome, [])
    verdicts = {id(v.cell): v for v in result.cells}
    parts = []
    for cell in shown[:6]:
        v = verdicts[id(cell)]
        p = "untested" if v.p_adjusted is None else f"p (Holm) {format_p(v.p_adjusted)}"
        mde = "" if v.mde is None else f", MDE {_size(v.mde, cell.metric)}"
        parts.append(f"{cell.key} {format_delta(cell.delta, cell.metric)} ({v.reason}; {p}{mde})")
    more = f" and {len(shown) - 6} more" if len(shown) > 6 else ""
    checked = f"{result.checked} cell{'s' if result.checked != 1 else ''} checked"
    if result.excluded:
        checked += f", {len(result.excluded)} left out (perturbation changed)"
    threshold = threshold_text(result)
    if result.outcome == "pass":
        power = "" if result.mde is None else f"; MDE at most {_size(result.mde, result.metric)}"
        return f"within {threshold} ({checked}{power})"
    line = f"{'; '.join(parts)}{more} [threshold {threshold}, {checked}]"
    if result.outcome == "inconclusive":
        needed = [images_needed(num_images, v.mde, result.limit(v.cell)) for v in result.cells
                  if num_images and v.outcome == "inconclusive" and v.mde is not None]
        needed = [n for n in needed if n is not None]
        if needed:
            line += f"; about {max(needed):,} images (instead of {num_images:,}) would detect a {threshold} change"
        line += " (allowed by --allow-inconclusive)" if result.allowed else "; --allow-inconclusive lets it pass"
    return line


def threshold_text(gate: Gate) -> str:
    """The threshold as the spec gave it: `-1.0 pp`, `-2%`, `+0.05`."""
    if gate.relative:
        return f"{100 * gate.threshold:+g}%"
    return format_delta(gate.threshold, gate.metric)


def format_p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _size(value: float, metric: str) -> str:
    """An unsigned size of change (an MDE) in the metric's units."""
    return "∞" if math.isinf(value) else format_delta(value, metric).lstrip("+")
