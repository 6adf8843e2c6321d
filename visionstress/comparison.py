"""Comparing scorecards: did the candidate model get better or worse than the reference, beyond chance?

Two runs of one suite on one dataset differ only by the model, and their per-sample records pair
every image (and every perturbed version of it) with itself. The tests are therefore paired, which
is far more sensitive than comparing two confidence intervals: a one-point top-1 drop on a few
thousand images is invisible in overlapping intervals and obvious in the discordant pairs.

- top1, top5 and flip_rate (per-image yes/no): exact McNemar test, i.e. the two-sided binomial test
  on the discordant pairs (b images only the reference got right, c only the candidate), exact at
  any size. Its interval on the difference comes from the paired bootstrap below.
- Other metrics computable from the records (nll, ece, macro_f1, balanced_accuracy; detection AP,
  AP50, AP75, AR1, AR10, AR100; segmentation mIoU, pixel_accuracy, mDice): paired bootstrap over
  images: each resample draws multinomial image weights once and applies them to both runs, so the
  resampled differences keep the pairing. The two-sided p-value is a Wald test with the bootstrap
  standard error, 2 * P(Z >= |diff| / sd(diff*)) (no 1/R floor, which Holm over many cells would
  otherwise turn into "never significant"); identical runs (every resampled difference 0) get p = 1.
- Summaries (mean of the main metric under perturbation, mPC, over perturbations then severities;
  relative robustness rPC = mPC / clean; mPC per family) are resampled the same way, cell by cell
  with shared weights, so they are paired too.
- Metrics the records cannot reproduce (brier needs every class probability) are reported with
  test "none".

Each metric's cells (clean included) form one family of tests whose p-values are Holm-adjusted, and
the summaries form another: a suite of 76 cells would otherwise turn up a "significant" change by
chance in almost every comparison. A change is significant when its adjusted p is below `alpha`.

Comparisons of different datasets, tasks, suites or seeds are refused with the differences named,
because their cells do not measure the same thing; `force=True` compares the cells the two share
and records the differences (paired tests need the same images, so a different dataset leaves
every cell untested).

The module is `comparison` rather than `compare` so that importing it never shadows the function
`visionstress.compare` (a submodule import rebinds the package attribute of the same name).
"""

from __future__ import annotations

import fnmatch
import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from visionstress.scorecard import Scorecard

CLEAN = "clean"
SUMMARY = "summary"
MAIN_METRIC = {"classification": "top1", "detection": "AP", "segmentation": "mIoU"}

LOWER_IS_BETTER = frozenset({"ece", "nll", "brier", "flip_rate", "fp_per_image", "miss_rate", "objects_dropped"})
NOT_FRACTIONS = frozenset({"nll", "brier", "fp_per_image", "objects_dropped"})
"""Metrics not on a 0-1 scale: shown in their own units, and `pp` thresholds are refused for them."""

MCNEMAR_METRICS = ("top1", "top5", "flip_rate")
ECE_BINS = 15
"""The evaluator's default binning (calibration.expected_calibration_error); the scorecard's ece used it."""
DETECTION_METRICS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")
DETECTION_COLUMNS = ("dt_category", "dt_score", "dt_match", "dt_ignore", "gt_category", "gt_ignore")
SEGMENTATION_METRICS = ("mIoU", "pixel_accuracy", "mDice")
SEGMENTATION_COLUMNS = ("intersection", "gt_pixels", "pred_pixels")

MAX_CHUNK_ELEMENTS = 1 << 22
"""Resample weights are drawn in chunks of at most this many (resample, image) entries (32 MiB)."""
_TOLERANCE = 1e-12
"""Slack when comparing a change with a gate threshold: 0.73 - 0.72 must not read as more than 1 pp."""


class IncomparableError(ValueError):
    """Two scorecards whose cells do not measure the same thing; the message names every difference."""


class GateError(ValueError):
    """A malformed or inapplicable `--fail-on` gate; the message quotes the spec and says what is wrong."""


class CompareWarning(UserWarning):
    """A comparison that goes ahead with less than it could (no records: no paired tests)."""


@dataclass
class CellComparison:
    """One metric of one perturbation x severity (or clean, or a summary) in both runs.

    `delta` is candidate minus reference. `test` is "mcnemar", "paired_bootstrap" or "none";
    `p_value` is raw, `p_adjusted` Holm-adjusted over the cells (or the summaries) of this metric;
    `ci_delta` is the paired-bootstrap interval of the difference at level 1 - alpha; `significant`
    is None when no paired test was possible.
    """

    perturbation: str
    severity: int
    metric: str
    old: float
    new: float
    delta: float
    test: str = "none"
    p_value: float | None = None
    p_adjusted: float | None = None
    ci_delta: tuple[float, float] | None = None
    significant: bool | None = None

    @property
    def key(self) -> str:
        """`metric@perturbation/severity` (summaries: `metric@mPC`), as gate failures are listed."""
        where = self.perturbation if self.severity == 0 else f"{self.perturbation}/{self.severity}"
        return f"{self.metric}@{where}"


@dataclass
class Gate:
    """A parsed `--fail-on` spec: `METRIC[@PERTURBATION[/SEVERITY]]:THRESHOLD`.

    `scope` is None (every cell, clean included), "clean", "summary" or a glob over perturbation
    names; `threshold` is signed, its sign the direction of a regression, in metric units (a `pp`
    threshold is stored as a fraction: -1pp is -0.01) or, when `relative`, as a fraction of the
    reference value (-2% is -0.02).
    """

    spec: str
    metric: str
    scope: str | None
    severity: int | None
    threshold: float
    relative: bool

    def covers(self, cell: CellComparison, summary: bool) -> bool:
        """Whether `cell` (a summary cell when `summary`) is in this gate's scope."""
        if cell.metric != self.metric:
            return False
        if self.scope == SUMMARY or summary:
            return self.scope == SUMMARY and summary
        if self.scope is None:
            return True
        if self.scope == CLEAN:
            return cell.perturbation == CLEAN
        return (cell.perturbation != CLEAN and fnmatch.fnmatchcase(cell.perturbation, self.scope)
                and (self.severity is None or cell.severity == self.severity))

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


@dataclass
class GateResult(Gate):
    """A gate after the comparison: `failures` are the cells beyond the threshold that are significant,
    or untested (test "none": the gate then judges the difference alone); `checked` counts the cells
    in scope."""

    failures: list[CellComparison] = field(default_factory=list)
    checked: int = 0

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Comparison:
    """The candidate against the reference: every shared cell, the summaries and the gate verdicts.

    `differences` lists what made the scorecards incomparable when `force` let the comparison go
    ahead; `notes` say why some cells could not be tested.
    """

    reference: Scorecard
    candidate: Scorecard
    cells: list[CellComparison]
    summaries: list[CellComparison]
    gates: list[GateResult]
    reference_source: str = ""
    candidate_source: str = ""
    alpha: float = 0.05
    bootstrap: int = 1000
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def cell(self, metric: str, perturbation: str = CLEAN, severity: int = 0) -> CellComparison:
        """One cell, e.g. `comparison.cell("top1")` (clean) or `comparison.cell("top1", "fog", 3)`."""
        for c in self.cells + self.summaries:
            if c.metric == metric and c.perturbation == perturbation and c.severity == severity:
                return c
        raise KeyError(f"no compared cell {metric}@{perturbation}/{severity}")

    def to_markdown(self, all_cells: bool = False) -> str:
        """A review-ready summary: verdict, gates, summaries, then the clean cells and those that changed
        significantly or failed a gate (every cell with `all_cells`)."""
        return _markdown(self, all_cells)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data (non-finite floats as None)."""
        return _plain({
            "passed": self.passed,
            "reference": _identity(self.reference, self.reference_source),
            "candidate": _identity(self.candidate, self.candidate_source),
            "alpha": self.alpha,
            "bootstrap": self.bootstrap,
            "differences": self.differences,
            "notes": self.notes,
            "gates": [{"spec": g.spec, "metric": g.metric, "scope": g.scope, "severity": g.severity,
                       "threshold": g.threshold, "relative": g.relative, "passed": g.passed, "checked": g.checked,
                       "failures": [f.key for f in g.failures]} for g in self.gates],
            "summaries": [asdict(c) for c in self.summaries],
            "cells": [asdict(c) for c in self.cells],
        })

    def to_html(self) -> str:
        """A self-contained HTML page of the comparison."""
        from visionstress.report.compare_html import render_compare_html

        return render_compare_html([self])


@dataclass
class ComparisonSet:
    """Several candidates, each compared with the same reference."""

    comparisons: list[Comparison]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def to_markdown(self, all_cells: bool = False) -> str:
        return "\n".join(c.to_markdown(all_cells) for c in self.comparisons)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "comparisons": [c.to_json() for c in self.comparisons]}

    def to_html(self) -> str:
        from visionstress.report.compare_html import render_compare_html

        return render_compare_html(self.comparisons)


# --- the entry point --------------------------------------------------------------------------------

def compare(reference: Scorecard | str | Path, *others: Scorecard | str | Path, gates: Sequence[str] = (),
            force: bool = False, alpha: float = 0.05, bootstrap: int = 1000,
            seed: int = 0) -> Comparison | ComparisonSet:
    """Compare each of `others` with `reference` (Scorecards, `scorecard.json` paths or report folders).

    Returns a `Comparison` when one other scorecard is given, else a `ComparisonSet` with one
    `Comparison` per candidate, in order. `gates` are `--fail-on` specs (see `parse_gate`);
    `bootstrap` resamples (0: McNemar tests only) drawn from `seed`; `alpha` is the significance
    level after the Holm adjustment and the interval level. Raises IncomparableError (unless `force`),
    GateError for a bad gate, ScorecardError for an unreadable scorecard.
    """
    if not others:
        raise ValueError("compare: give at least one scorecard to compare with the reference")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"compare: alpha must be in (0, 1), got {alpha}")
    if int(bootstrap) < 0:
        raise ValueError(f"compare: bootstrap must be 0 (McNemar tests only) or more resamples, got {bootstrap}")
    parsed = [parse_gate(spec) for spec in gates]
    ref_card, ref_source = _load(reference)
    comparisons = []
    for other in others:
        card, source = _load(other)
        comparisons.append(_compare_pair(ref_card, ref_source, card, source, parsed, force, float(alpha),
                                         int(bootstrap), int(seed)))
    return comparisons[0] if len(comparisons) == 1 else ComparisonSet(comparisons)


def _load(item: Scorecard | str | Path) -> tuple[Scorecard, str]:
    if isinstance(item, Scorecard):
        source = str(Path(item.records_path).parent) if item.records_path else str(item.model.get("spec"))
        return item, source
    return Scorecard.load(item), str(item)


# --- gates ------------------------------------------------------------------------------------------

_GATE = re.compile(r"^(?P<metric>[^@:/\s]+)(?:@(?P<scope>[^@:/\s]+)(?:/(?P<severity>[^@:/\s]*))?)?:(?P<threshold>\S*)$")
_THRESHOLD = re.compile(r"^(?P<sign>[+-]?)(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<unit>pp|%)?$")


def parse_gate(spec: str) -> Gate:
    """Parse `METRIC[@PERTURBATION[/SEVERITY]]:THRESHOLD` (e.g. `top1:-1pp`, `ece@fog/5:+2pp`,
    `AP@*blur:-2%`, `top1@summary:-1pp`); GateError says what is wrong."""
    text = spec.strip()
    match = _GATE.match(text)
    if match is None:
        raise GateError(f"gate {spec!r}: expected METRIC[@PERTURBATION[/SEVERITY]]:THRESHOLD, "
                        f"e.g. top1:-1pp or ece@fog/5:+2pp")
    metric, scope, severity_text, threshold_text = match.group("metric", "scope", "severity", "threshold")
    number = _THRESHOLD.match(threshold_text)
    if number is None:
        raise GateError(f"gate {spec!r}: threshold {threshold_text!r} is not a signed number with an optional "
                        f"unit pp (percentage points) or % (relative), e.g. -1pp, +0.05, -2%")
    unit, sign = number.group("unit"), number.group("sign")
    if not sign:
        raise GateError(f"gate {spec!r}: the threshold needs a sign, the direction of a regression: "
                        f"-{threshold_text} fails on a drop, +{threshold_text} on a rise")
    if unit == "pp" and metric in NOT_FRACTIONS:
        raise GateError(f"gate {spec!r}: {metric} is not a fraction, so pp does not apply; give the threshold "
                        f"in {metric} units (e.g. {sign}0.05) or relative (e.g. {sign}5%)")
    severity = None
    if severity_text is not None:
        if scope in (CLEAN, SUMMARY):
            raise GateError(f"gate {spec!r}: a severity applies to a perturbation, not to {scope}")
        if not severity_text.isdigit() or not 1 <= int(severity_text) <= 5:
            raise GateError(f"gate {spec!r}: severity {severity_text!r} is not an integer from 1 to 5")
        severity = int(severity_text)
    value = float(sign + number.group("number"))
    if unit is not None:
        value /= 100.0
    return Gate(spec=text, metric=metric, scope=scope, severity=severity, threshold=value, relative=unit == "%")


def _check_gates(gates: Sequence[Gate], cells: list[CellComparison], summaries: list[CellComparison],
                 main: str) -> None:
    """Refuse gates that name a metric or a scope the comparison does not have, before they silently pass."""
    metrics = list(dict.fromkeys(c.metric for c in cells))
    perturbations = sorted({c.perturbation for c in cells if c.perturbation != CLEAN})
    for gate in gates:
        if gate.metric not in metrics:
            raise GateError(f"gate {gate.spec!r}: no metric {gate.metric!r} in these scorecards; "
                            f"they have {', '.join(metrics)}")
        if gate.scope == SUMMARY:
            if gate.metric != main:
                raise GateError(f"gate {gate.spec!r}: summaries are computed for the main metric {main} only")
            if not summaries:
                raise GateError(f"gate {gate.spec!r}: there are no summaries (no perturbed cells are shared)")
        elif gate.scope not in (None, CLEAN) and not any(gate.covers(c, False) for c in cells):
            severity = "" if gate.severity is None else f" at severity {gate.severity}"
            raise GateError(f"gate {gate.spec!r}: {gate.scope!r}{severity} matches no compared perturbation; "
                            f"they are {', '.join(perturbations) or 'none'} (and clean, summary)")


def _evaluate_gate(gate: Gate, cells: list[CellComparison], summaries: list[CellComparison]) -> GateResult:
    scoped = [c for c in cells if gate.covers(c, False)] + [c for c in summaries if gate.covers(c, True)]
    failures = [c for c in scoped if gate.exceeded(c) and c.significant is not False]
    return GateResult(**asdict(gate), failures=failures, checked=len(scoped))


# --- refusal ----------------------------------------------------------------------------------------

def _differences(ref: Scorecard, cand: Scorecard) -> list[str]:
    """What makes two scorecards measure different things, one phrase per difference."""
    out = []
    if ref.task != cand.task:
        out.append(f"task {ref.task} vs {cand.task}")
    a, b = ref.dataset.get("fingerprint"), cand.dataset.get("fingerprint")
    if a != b:
        out.append(f"dataset fingerprint {str(a)[:8]}… vs {str(b)[:8]}… "
                   f"({ref.dataset.get('path')} vs {cand.dataset.get('path')})")
    out += _suite_differences(ref.suite, cand.suite)
    if int(ref.seed) != int(cand.seed):
        out.append(f"seed {ref.seed} vs {cand.seed}")
    return out


def _suite_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = []
    if a.get("name") != b.get("name"):
        out.append(f"suite: name {a.get('name')} vs {b.get('name')}")
    items_a = {i["name"]: i for i in a.get("perturbations", [])}
    items_b = {i["name"]: i for i in b.get("perturbations", [])}
    only_a, only_b = [n for n in items_a if n not in items_b], [n for n in items_b if n not in items_a]
    if only_a:
        out.append(f"suite: only the reference runs {', '.join(only_a)}")
    if only_b:
        out.append(f"suite: only the candidate runs {', '.join(only_b)}")
    for name in (n for n in items_a if n in items_b):
        if list(items_a[name].get("severities", [])) != list(items_b[name].get("severities", [])):
            out.append(f"suite: {name} severities {list(items_a[name].get('severities', []))} vs "
                       f"{list(items_b[name].get('severities', []))}")
        table_a, table_b = items_a[name].get("table"), items_b[name].get("table")
        if table_a != table_b:
            out.append(f"suite: {name} table {table_a or 'built-in'} vs {table_b or 'built-in'}")
    return out


# --- one comparison ---------------------------------------------------------------------------------

def _compare_pair(ref: Scorecard, ref_source: str, cand: Scorecard, cand_source: str, gates: Sequence[Gate],
                  force: bool, alpha: float, bootstrap: int, seed: int) -> Comparison:
    differences = _differences(ref, cand)
    if ref.task != cand.task:
        raise IncomparableError(f"{ref_source} and {cand_source} are not comparable: task {ref.task} vs "
                                f"{cand.task} (their metrics differ, so not even --force can compare them)")
    if differences and not force:
        raise IncomparableError(f"{ref_source} and {cand_source} are not comparable: " + "; ".join(differences)
                                + " (--force compares the cells they share)")
    ref_rows = {(r["perturbation"], int(r["severity"])): r for r in ref.results}
    cand_rows = {(r["perturbation"], int(r["severity"])): r for r in cand.results}
    shared = [k for k in ref_rows if k in cand_rows]
    if not shared:
        raise IncomparableError(f"{ref_source} and {cand_source} share no perturbation x severity cell")
    main = MAIN_METRIC.get(ref.task, next(iter(ref_rows[shared[0]]["metrics"])))
    cells = [CellComparison(p, s, m, old, new, new - old)
             for p, s in shared
             for m in ref_rows[(p, s)]["metrics"] if m in cand_rows[(p, s)]["metrics"]
             for old, new in [(_float(ref_rows[(p, s)]["metrics"][m]), _float(cand_rows[(p, s)]["metrics"][m]))]]
    families = {p: ref_rows[(p, s)].get("family", p) for p, s in shared if p != CLEAN}
    summaries = _summary_cells(cells, main, families)
    _check_gates(gates, cells, summaries, main)

    notes: list[str] = []
    paired = _paired_records(ref, cand, shared, notes)
    if paired is not None:
        _test(paired, cells, summaries, main, families, alpha, bootstrap, seed, notes)
    for group in _groups(cells) + [summaries]:
        _holm_group(group, alpha)
    for note in notes:
        warnings.warn(note, CompareWarning, stacklevel=3)
    return Comparison(reference=ref, candidate=cand, cells=cells, summaries=summaries,
                      gates=[_evaluate_gate(g, cells, summaries) for g in gates], reference_source=ref_source,
                      candidate_source=cand_source, alpha=alpha, bootstrap=bootstrap, differences=differences,
                      notes=notes)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _summary_cells(cells: list[CellComparison], main: str, families: dict[str, str]) -> list[CellComparison]:
    """mPC, rPC and mPC per family of the main metric, from the scorecard values of the shared cells."""
    table = {(c.perturbation, c.severity): (c.old, c.new) for c in cells if c.metric == main}
    clean = table.get((CLEAN, 0))
    if clean is None or not families:
        return []
    old, new = (_summary_values({k: v[run] for k, v in table.items() if k[0] != CLEAN}, clean[run], families)
                for run in (0, 1))
    return [CellComparison(name, 0, main, float(old[name]), float(new[name]), float(new[name] - old[name]))
            for name in old]


def _summary_values(perturbed: dict[tuple[str, int], Any], clean: Any, families: dict[str, str]) -> dict[str, Any]:
    """`{summary name: value}` from the main metric per perturbed cell (floats, or arrays of resamples)."""
    values = {"mPC": _mpc(perturbed)}
    values["rPC"] = _ratio(values["mPC"], clean)
    for family in sorted({families[name] for name, _ in perturbed}):
        values[f"mPC[{family}]"] = _mpc({k: v for k, v in perturbed.items() if families[k[0]] == family})
    return values


def _mpc(values: dict[tuple[str, int], Any]) -> Any:
    """Mean over perturbations of the mean over severities (floats, or arrays of resampled values)."""
    by_name: dict[str, list[Any]] = {}
    for (name, _), value in values.items():
        by_name.setdefault(name, []).append(value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN metric stays NaN
        return np.nanmean([np.nanmean(v, axis=0) for v in by_name.values()], axis=0)


def _ratio(num: Any, den: Any) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(den) > 0, np.asarray(num, dtype=np.float64) / np.asarray(den), np.nan)


def _groups(cells: list[CellComparison]) -> list[list[CellComparison]]:
    by_metric: dict[str, list[CellComparison]] = {}
    for c in cells:
        by_metric.setdefault(c.metric, []).append(c)
    return list(by_metric.values())


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error control without independence assumptions)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def _holm_group(cells: list[CellComparison], alpha: float) -> None:
    tested = [c for c in cells if c.p_value is not None]
    for c, adjusted in zip(tested, holm([c.p_value for c in tested])):
        c.p_adjusted = adjusted
        c.significant = adjusted < alpha


# --- paired tests -----------------------------------------------------------------------------------

@dataclass
class _Paired:
    """Both runs' records of the shared cells, each aligned to the same image order."""

    task: str
    num_images: int
    ref: dict[tuple[str, int], pd.DataFrame]
    cand: dict[tuple[str, int], pd.DataFrame]
    num_classes: int


_TASK_COLUMNS = {"classification": ("label", "prediction", "confidence", "correct", "top5", "nll", "flipped"),
                 "detection": DETECTION_COLUMNS, "segmentation": SEGMENTATION_COLUMNS}


def _paired_records(ref: Scorecard, cand: Scorecard, keys: list[tuple[str, int]],
                    notes: list[str]) -> _Paired | None:
    """Read and align both runs' records; None (with a note) when no paired test is possible."""
    if ref.dataset.get("fingerprint") != cand.dataset.get("fingerprint"):
        notes.append("no paired tests: the datasets differ, so the images cannot be paired")
        return None
    frames = []
    for card, role in ((ref, "reference"), (cand, "candidate")):
        frame = _read(card, role, notes)
        if frame is None:
            return None
        frames.append(frame)
    ids = np.intersect1d(*[f.loc[(f.perturbation == CLEAN) & (f.severity == 0), "sample_id"].to_numpy()
                           for f in frames])
    if ids.size == 0:
        notes.append("no paired tests: the two runs' records share no image")
        return None
    aligned: list[dict[tuple[str, int], pd.DataFrame]] = [{}, {}]
    for key in keys:
        parts = [_cell_frame(f, key, ids) for f in frames]
        if any(p is None for p in parts):
            notes.append(f"{key[0]}@{key[1]}: untested, the records do not hold every image of this pass in both runs")
            continue
        aligned[0][key], aligned[1][key] = parts
    num_classes = int(ref.dataset.get("num_classes") or 0)
    return _Paired(ref.task, int(ids.size), aligned[0], aligned[1], num_classes)


def _read(card: Scorecard, role: str, notes: list[str]) -> pd.DataFrame | None:
    from visionstress.records import read_records

    if not card.records_path:
        notes.append(f"no paired tests: the {role} scorecard names no records file")
        return None
    try:
        frame = read_records(card.records_path)
    except (FileNotFoundError, ValueError) as exc:
        notes.append(f"no paired tests: the {role} records are unreadable ({exc})")
        return None
    missing = [c for c in ("sample_id", "perturbation", "severity", *_TASK_COLUMNS.get(card.task, ()))
               if c not in frame.columns]
    if missing:
        notes.append(f"no paired tests: the {role} records ({card.records_path}) lack columns {', '.join(missing)}")
        return None
    return frame


def _cell_frame(frame: pd.DataFrame, key: tuple[str, int], ids: np.ndarray) -> pd.DataFrame | None:
    part = frame[(frame.perturbation == key[0]) & (frame.severity == key[1])]
    part = part.drop_duplicates("sample_id").set_index("sample_id")
    if not np.isin(ids, part.index.to_numpy()).all():
        return None
    return part.loc[ids].reset_index()


StatFn = Callable[[np.ndarray], dict[str, np.ndarray]]
"""Resample weights `[r, n]` (image counts) -> `{metric: [r]}`, the metric under each resample."""


def _test(paired: _Paired, cells: list[CellComparison], summaries: list[CellComparison], main: str,
          families: dict[str, str], alpha: float, bootstrap: int, seed: int, notes: list[str]) -> None:
    """Fill test, p_value and ci_delta of every testable cell and summary."""
    stats = {}
    for key in paired.ref:
        try:
            stats[key] = (_stat_fn(paired, paired.ref[key]), _stat_fn(paired, paired.cand[key]))
        except ImportError as exc:
            notes.append(f"no paired bootstrap for {paired.task}: {exc}")
            break
    by_key = {(c.perturbation, c.severity, c.metric): c for c in cells}
    if paired.task == "classification":
        for metric, column in zip(MCNEMAR_METRICS, ("correct", "top5_correct", "flipped")):
            for key in paired.ref:
                cell = by_key.get((*key, metric))
                a, b = _binary(paired.ref[key], column), _binary(paired.cand[key], column)
                if cell is not None and a is not None and b is not None:
                    cell.test, cell.p_value = "mcnemar", mcnemar(a, b)
    if bootstrap == 0 or len(stats) < len(paired.ref):
        return
    resampled = _resample(stats, paired.num_images, bootstrap, seed)
    for (p, s, metric), cell in by_key.items():
        values = resampled.get((p, s), {}).get(metric)
        if values is None:
            continue
        deltas = values[1] - values[0]
        cell.ci_delta = _interval(deltas, alpha)
        if cell.test == "none":
            p_value = bootstrap_p_value(deltas, cell.delta)
            if p_value is not None:
                cell.test, cell.p_value = "paired_bootstrap", p_value
    needed = {(c.perturbation, c.severity) for c in cells if c.metric == main and c.perturbation != CLEAN}
    _test_summaries(resampled, needed, summaries, main, families, alpha, notes)


def _test_summaries(resampled: dict[tuple[str, int], dict[str, tuple[np.ndarray, np.ndarray]]],
                    needed: set[tuple[str, int]], summaries: list[CellComparison], main: str,
                    families: dict[str, str], alpha: float, notes: list[str]) -> None:
    """The summaries recomputed from the resampled cells, pairing each resample across the two runs."""
    clean = resampled.get((CLEAN, 0), {}).get(main)
    perturbed = {k: resampled[k][main] for k in sorted(needed) if main in resampled.get(k, {})}
    if not summaries or clean is None or len(perturbed) < len(needed):
        if summaries:  # a summary over only some of its cells would not be the summary reported
            notes.append("summaries untested: some of their cells could not be resampled")
        return
    old, new = (_summary_values({k: v[run] for k, v in perturbed.items()}, clean[run], families) for run in (0, 1))
    for cell in summaries:
        deltas = new[cell.perturbation] - old[cell.perturbation]
        p_value = bootstrap_p_value(deltas, cell.delta)
        if p_value is not None:
            cell.test, cell.p_value, cell.ci_delta = "paired_bootstrap", p_value, _interval(deltas, alpha)


def mcnemar(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Exact two-sided McNemar p-value for paired yes/no outcomes (the binomial test on the discordant
    pairs); 1.0 when there is none."""
    from scipy.stats import binomtest

    a, b = np.asarray(reference, dtype=bool), np.asarray(candidate, dtype=bool)
    only_ref, only_cand = int((a & ~b).sum()), int((~a & b).sum())
    if only_ref + only_cand == 0:
        return 1.0
    return float(binomtest(only_ref, only_ref + only_cand, 0.5, alternative="two-sided").pvalue)


def bootstrap_p_value(deltas: np.ndarray, observed: float | None = None) -> float | None:
    """Two-sided p-value of a paired difference from its bootstrap distribution: a Wald test with the
    bootstrap standard error, 2 * P(Z >= |observed| / sd(delta*)).

    The percentile p-value (the share of resamples on the far side of 0) cannot go below 1/R, so after
    Holm over a suite's cells a large regression could stay "not significant" with a few hundred
    resamples; the normal approximation has no such floor. `observed` defaults to the resamples'
    mean; None when every resample is undefined (NaN)."""
    from scipy.stats import norm

    d = np.asarray(deltas, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    centre = float(np.mean(d)) if observed is None or not np.isfinite(observed) else float(observed)
    spread = float(np.std(d, ddof=1)) if d.size > 1 else 0.0
    if spread == 0.0:
        return 1.0 if centre == 0.0 else 0.0
    return float(min(1.0, 2.0 * norm.sf(abs(centre) / spread)))


def _interval(deltas: np.ndarray, alpha: float) -> tuple[float, float] | None:
    d = np.asarray(deltas, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    low, high = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _binary(frame: pd.DataFrame, column: str) -> np.ndarray | None:
    if column == "top5_correct":
        return _top5_correct(frame)
    values = frame[column]
    if values.isna().any():
        return None  # flipped on the clean pass: nothing to flip from
    return values.to_numpy(dtype=bool)


def _top5_correct(frame: pd.DataFrame) -> np.ndarray:
    top = np.stack(frame["top5"].to_numpy())  # [n, min(5, K)]: one width per run
    return (top == frame["label"].to_numpy()[:, None]).any(axis=1)


def _weight_chunks(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Multinomial image weights (how often each image is drawn), `[r, n]` per chunk; the same for both runs."""
    rng = np.random.default_rng(seed)
    rows = max(1, min(resamples, MAX_CHUNK_ELEMENTS // n))
    for start in range(0, resamples, rows):
        r = min(rows, resamples - start)
        idx = rng.integers(0, n, size=(r, n)) + (np.arange(r) * n)[:, None]
        yield np.bincount(idx.reshape(-1), minlength=r * n).reshape(r, n).astype(np.float64)


def _resample(stats: dict[tuple[str, int], tuple[StatFn, StatFn]], n: int, resamples: int,
              seed: int) -> dict[tuple[str, int], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """`{cell: {metric: (reference [R], candidate [R])}}` under the same weights for every cell and run."""
    parts: dict[tuple[str, int], list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]] = {k: [] for k in stats}
    for weights in _weight_chunks(n, resamples, seed):
        for key, (ref_fn, cand_fn) in stats.items():
            parts[key].append((ref_fn(weights), cand_fn(weights)))
    out = {}
    for key, chunks in parts.items():
        metrics = [m for m in chunks[0][0] if m in chunks[0][1]]
        out[key] = {m: (np.concatenate([c[0][m] for c in chunks]), np.concatenate([c[1][m] for c in chunks]))
                    for m in metrics}
    return out


def _stat_fn(paired: _Paired, frame: pd.DataFrame) -> StatFn:
    if paired.task == "classification":
        return _classification_stats(frame, paired.num_classes)
    if paired.task == "detection":
        return _detection_stats(frame)
    return _segmentation_stats(frame)


def _classification_stats(frame: pd.DataFrame, num_classes: int) -> StatFn:
    """The evaluator's metrics under image weights, vectorised over resamples (sparse class and bin sums)."""
    from scipy import sparse

    from visionstress.evaluators.calibration import bin_index
    from visionstress.evaluators.confusion import balanced_accuracy_from_counts, macro_f1_from_counts

    label = frame["label"].to_numpy(dtype=np.int64)
    pred = frame["prediction"].to_numpy(dtype=np.int64)
    correct = frame["correct"].to_numpy(dtype=np.float64)
    confidence = frame["confidence"].to_numpy(dtype=np.float64)
    k = max(num_classes, int(label.max()) + 1, int(pred.max()) + 1)
    n = len(frame)
    means = {"top1": correct, "top5": _top5_correct(frame).astype(np.float64),
             "nll": frame["nll"].to_numpy(dtype=np.float64, na_value=np.nan)}
    flipped = frame["flipped"]
    if not flipped.isna().any():
        means["flip_rate"] = flipped.to_numpy(dtype=np.float64)
    mean_matrix = np.stack(list(means.values()), axis=1)

    def sums(index: np.ndarray, values: np.ndarray, size: int) -> sparse.csr_matrix:
        return sparse.csr_matrix((values, (index, np.arange(n))), shape=(size, n))

    ones = np.ones(n)
    bins = bin_index(confidence, ECE_BINS)
    class_sums = sparse.vstack([sums(label, correct, k), sums(label, ones, k), sums(pred, ones, k),
                                sums(bins, correct, ECE_BINS), sums(bins, confidence, ECE_BINS)]).tocsr()

    def stats(weights: np.ndarray) -> dict[str, np.ndarray]:
        total = weights.sum(axis=1)
        out = dict(zip(means, (weights @ mean_matrix / total[:, None]).T))
        counts = np.asarray(class_sums @ weights.T).T  # [r, 3k + 2 bins]
        tp, support, predicted = counts[:, :k], counts[:, k:2 * k], counts[:, 2 * k:3 * k]
        hits, mass = counts[:, 3 * k:3 * k + ECE_BINS], counts[:, 3 * k + ECE_BINS:]
        out["macro_f1"] = macro_f1_from_counts(tp, support, predicted)
        out["balanced_accuracy"] = balanced_accuracy_from_counts(tp, support)
        out["ece"] = np.abs(hits - mass).sum(axis=1) / total
        return out

    return stats


def _detection_stats(frame: pd.DataFrame) -> StatFn:
    """COCO AP/AR recomputed from the stored matches under each resample's image weights."""
    from visionstress.evaluators import coco_metrics_from_matches

    def stats(weights: np.ndarray) -> dict[str, np.ndarray]:
        rows = [coco_metrics_from_matches(frame, w) for w in weights]
        return {m: np.array([_defined(r.get(m)) for r in rows]) for m in DETECTION_METRICS if m in rows[0]}

    return stats


def _segmentation_stats(frame: pd.DataFrame) -> StatFn:
    """mIoU, pixel accuracy and mDice recomputed from per-image class counts under each resample's weights."""
    from visionstress.evaluators import segmentation_metrics_from_counts

    counts = [np.stack(frame[c].to_numpy()).astype(np.int64) for c in SEGMENTATION_COLUMNS]

    def stats(weights: np.ndarray) -> dict[str, np.ndarray]:
        rows = [segmentation_metrics_from_counts(*counts, w) for w in weights]
        return {m: np.array([_defined(r.get(m)) for r in rows]) for m in SEGMENTATION_METRICS if m in rows[0]}

    return stats


def _defined(value: Any) -> float:
    """COCOeval's -1 ("undefined") and None as NaN, so they drop out of the resampled differences."""
    if value is None:
        return math.nan
    value = float(value)
    return math.nan if value < 0 else value


# --- presentation -----------------------------------------------------------------------------------

def _identity(card: Scorecard, source: str) -> dict[str, Any]:
    return {"source": source, "model": card.model.get("spec"), "weights": card.model.get("weights"),
            "sha256": card.model.get("sha256"), "dataset": card.dataset.get("path"),
            "fingerprint": card.dataset.get("fingerprint"), "suite": card.suite.get("name"), "seed": card.seed,
            "created": card.created}


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def model_label(card: Scorecard) -> str:
    """How a run is named in the outputs: its model spec and weights file."""
    weights = card.model.get("weights")
    return f"{card.model.get('spec')}" + (f" ({Path(weights).name})" if weights else "")


def format_value(value: float | None, metric: str, perturbation: str = "") -> str:
    """Fractions as percentages, other metrics (and the rPC ratio) as plain numbers; – when undefined."""
    if value is None or not math.isfinite(value):
        return "–"
    if metric in NOT_FRACTIONS or perturbation == "rPC":
        return f"{value:.3f}"
    return f"{100 * value:.1f}%"


def format_delta(value: float | None, metric: str, perturbation: str = "") -> str:
    """A difference: percentage points for fractions, so it reads against the percentages."""
    if value is None or not math.isfinite(value):
        return "–"
    if metric in NOT_FRACTIONS or perturbation == "rPC":
        return f"{value:+.3f}"
    return f"{100 * value:+.1f} pp"


def format_p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


@dataclass
class DisplayRow:
    """A compared cell as every output shows it: formatted values, significance and gate marks.

    `tone` is "better" or "worse" for a significant change (by the metric's direction), "" otherwise.
    """

    kind: str
    perturbation: str
    severity: str
    metric: str
    old: str
    new: str
    delta: str
    ci: str
    p: str
    p_adjusted: str
    test: str
    significant: str
    gate: str
    tone: str


def display_rows(comparison: Comparison, all_cells: bool = False) -> list[DisplayRow]:
    """Summaries, then cells: the clean ones and those that changed significantly or failed a gate
    (every cell with `all_cells`)."""
    failed: dict[int, list[str]] = {}
    for gate in comparison.gates:
        for cell in gate.failures:
            failed.setdefault(id(cell), []).append(gate.spec)
    rows = []
    for kind, cells in ((SUMMARY, comparison.summaries), ("cell", comparison.cells)):
        for c in cells:
            notable = kind == SUMMARY or c.perturbation == CLEAN or c.significant or id(c) in failed
            if not (all_cells or notable):
                continue
            tone = ""
            if c.significant and math.isfinite(c.delta) and c.delta != 0:
                tone = "better" if (c.delta < 0) == (c.metric in LOWER_IS_BETTER) else "worse"
            ci = "–" if c.ci_delta is None else (f"{format_delta(c.ci_delta[0], c.metric, c.perturbation)} … "
                                                 f"{format_delta(c.ci_delta[1], c.metric, c.perturbation)}")
            rows.append(DisplayRow(
                kind=kind, perturbation=c.perturbation, severity="" if kind == SUMMARY else str(c.severity),
                metric=c.metric, old=format_value(c.old, c.metric, c.perturbation),
                new=format_value(c.new, c.metric, c.perturbation),
                delta=format_delta(c.delta, c.metric, c.perturbation),
                ci=ci, p=format_p(c.p_value), p_adjusted=format_p(c.p_adjusted), test=c.test,
                significant="untested" if c.significant is None else ("✓" if c.significant else ""),
                gate=("✗ " + ", ".join(failed[id(c)])) if id(c) in failed else "", tone=tone))
    return rows


def gate_lines(comparison: Comparison) -> list[str]:
    """One verdict line per gate, naming the failing cells and whether they were tested."""
    lines = []
    for g in comparison.gates:
        if g.passed:
            lines.append(f"PASS {g.spec} ({g.checked} cell{'s' if g.checked != 1 else ''} checked)")
            continue
        shown = ", ".join(f"{c.key} {format_delta(c.delta, c.metric, c.perturbation)}"
                          + (" (untested)" if c.significant is None else "") for c in g.failures[:8])
        more = f" and {len(g.failures) - 8} more" if len(g.failures) > 8 else ""
        lines.append(f"FAIL {g.spec}: {shown}{more}")
    return lines


def _markdown(comparison: Comparison, all_cells: bool) -> str:
    ref, cand = comparison.reference, comparison.candidate
    verdict = "PASSED" if comparison.passed else "FAILED"
    lines = [f"# visionstress compare: {model_label(cand)} vs {model_label(ref)}", "",
             f"**{verdict}**" + (f" ({len(comparison.gates)} gate{'s' if len(comparison.gates) != 1 else ''})"
                                 if comparison.gates else " (no gates)"), "",
             f"- reference: `{comparison.reference_source}`: {model_label(ref)}, sha256 "
             f"`{str(ref.model.get('sha256') or 'n/a')[:12]}`, created {ref.created}",
             f"- candidate: `{comparison.candidate_source}`: {model_label(cand)}, sha256 "
             f"`{str(cand.model.get('sha256') or 'n/a')[:12]}`, created {cand.created}",
             f"- {ref.dataset.get('num_samples')} images of {ref.dataset.get('path')}, suite {ref.suite.get('name')}, "
             f"seed {ref.seed}; significance: Holm-adjusted p < {comparison.alpha:g} over the cells of each metric; "
             f"{comparison.bootstrap} paired bootstrap resamples"]
    for difference in comparison.differences:
        lines.append(f"- compared despite: {difference}")
    for note in comparison.notes:
        lines.append(f"- note: {note}")
    if comparison.gates:
        lines += ["", "## Gates", ""] + [f"- {line}" for line in gate_lines(comparison)]
    rows = display_rows(comparison, all_cells)
    header = ["| {} | metric | old | new | Δ | CI of Δ | p | p (Holm) | test | significant | gate |",
              "|---|---|---:|---:|---:|---|---:|---:|---|---|---|"]
    summary_rows = [r for r in rows if r.kind == SUMMARY]
    if summary_rows:
        lines += ["", "## Summaries", "", header[0].format("summary"), header[1]]
        lines += [_md_row(r.perturbation, r) for r in summary_rows]
    cell_rows = [r for r in rows if r.kind != SUMMARY]
    hidden = len(comparison.cells) - len(cell_rows)
    title = "All cells" if all_cells else "Clean, and the cells that changed significantly or failed a gate"
    lines += ["", f"## {title}", "", header[0].format("cell"), header[1]]
    lines += [_md_row(r.perturbation if r.perturbation == CLEAN else f"{r.perturbation}@{r.severity}", r)
              for r in cell_rows]
    if hidden:
        lines += ["", f"{hidden} other cells show no significant change (all of them: `--all`, or the JSON)."]
    return "\n".join(lines) + "\n"


def _md_row(name: str, r: DisplayRow) -> str:
    mark = {"better": " ▲", "worse": " ▼"}.get(r.tone, "")
    return (f"| {name} | {r.metric} | {r.old} | {r.new} | {r.delta}{mark} | {r.ci} | {r.p} | {r.p_adjusted} | "
            f"{r.test} | {r.significant} | {r.gate} |")
