"""Comparing scorecards: did the candidate model get better or worse than the reference, beyond chance?

`compare` loads the scorecards, refuses the ones that measure different things, pairs their cells
(perturbation x severity, plus the summaries mPC, rPC and mPC per family of the main metric), tests
every cell on the paired per-image records (`statistics`), and judges the gates (`gates`).

- Two runs of one suite on one dataset differ only by the model; their records pair every image (and
  every perturbed version of it) with itself, which is far more sensitive than comparing intervals.
- Metrics are recomputed from the records by the task's statistics function, the same one the
  evaluator used for the scorecard (`classification_statistics`, `detection_statistics`,
  `segmentation_statistics`): one set of multinomial image weights per resample is drawn over the
  shared images and applied to both runs and every cell, so the resampled differences keep the
  pairing and the summaries (resampled cell by cell with the same weights) are paired too. A cell
  scored on a subset of the images (an adversarial patch on held-out images) uses the weights of its
  images. The same function, on both runs' records of a cell as one table, gives the exchange test
  that checks the bootstrap's p-value on few images (`statistics.exchange_p_value`): each image's two
  records swapped between the runs at random, the same swaps in every cell.
- Each metric's cells form one family for the "significant" column (Holm-adjusted p < alpha), the
  summaries another; a gate adjusts over the cells it covers only.
- Scorecards of different datasets, tasks, suites or seeds are refused with the differences named;
  `force=True` compares the cells they share (a different dataset leaves every cell untested). A
  perturbation whose implementation version differs between the two scorecards is not a refusal:
  its cells are marked "perturbation changed" and left out of the gates.

The package is `comparison` rather than `compare` so that importing it never shadows the function
`visionstress.compare` (a submodule import rebinds the package attribute of the same name).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from visionstress.cells import CLEAN
from visionstress.metrics import find_metric
from visionstress.scorecard import Scorecard

from .gates import Gate, GateResult, check_gates, default_gates, evaluate_gate, main_metric, parse_gate
from .skew import SkewDiff, compare_skew
from .statistics import bootstrap_mde, bootstrap_test, exchange_p_value, holm, mcnemar_mde, mcnemar_test

BACKGROUND_GAP = "bg_gap"
GAP_PASSES = ("mixed_same", "mixed_rand")
"""`bg_gap` = main metric under the first minus under the second (Xiao et al. 2020's BG-Gap)."""
ROUNDING_NOISE = 1e-6
"""A change of a metric no larger than this is float32 rounding (the same model exported, or on another
device), never "significant", however consistently every image shows it."""
CUE_CONFLICT, SHAPE_BIAS = "texture_fill", "shape_bias"
"""The cue-conflict pass and its summary: shape decisions / (shape + texture decisions), Geirhos et al. 2019."""


class IncomparableError(ValueError):
    """Two scorecards whose cells do not measure the same thing; the message names every difference."""


class CompareWarning(UserWarning):
    """A comparison that goes ahead with less than it could (no records: no paired tests), or a gate
    that passes only because inconclusive outcomes were allowed."""


@dataclass
class CellComparison:
    """One metric of one perturbation x severity (or clean, or a summary) in both runs.

    `delta` is candidate minus reference. `test` is "mcnemar", "paired_bootstrap" or "none"; `p_value`
    and `ci_delta` (level 1 - alpha) come from that one test and agree (the interval excludes 0 exactly
    when p < alpha); `p_adjusted` is Holm-adjusted over the cells (or the summaries) of this metric and
    `significant` is `p_adjusted < alpha` (None when untested). `mde` is the minimum detectable effect
    at alpha and 80% power on `images` images; `discordant` (McNemar: images only the reference, only
    the candidate got "yes") and `standard_error` (bootstrap) are what it was computed from. `changed`
    says why the cell's perturbation is not the same in both runs (None when it is).
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
    mde: float | None = None
    images: int | None = None
    discordant: tuple[int, int] | None = None
    standard_error: float | None = None
    changed: str | None = None

    @property
    def key(self) -> str:
        """`metric@perturbation/severity` (summaries: `metric@mPC`), as gates list their cells."""
        where = self.perturbation if self.severity == 0 else f"{self.perturbation}/{self.severity}"
        return f"{self.metric}@{where}"

    def mde_at(self, alpha: float) -> float | None:
        """The minimum detectable effect of this cell's test at level `alpha` (80% power)."""
        if self.discordant is not None and self.images:
            return mcnemar_mde(*self.discordant, self.images, alpha)
        if self.standard_error is not None:
            return bootstrap_mde(self.standard_error, alpha)
        return None


@dataclass
class Comparison:
    """The candidate against the reference: every shared cell, the summaries and the gate verdicts.

    `passed` is False when a gate fails, or is inconclusive without `allow_inconclusive`.
    `differences` lists what made the scorecards incomparable when `force` let the comparison go
    ahead; `changed` maps perturbations whose implementation differs to why; `notes` say why some cells
    could not be tested; `images` is the number of paired images (None without records). `skew` sets the
    two scorecards' preprocessing-skew sections side by side when both have one (descriptive, no gate).
    `probes` holds the background gap of both runs with its paired test, when both ran the mixed
    backgrounds (descriptive, no gate).
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
    allow_inconclusive: bool = False
    images: int | None = None
    differences: list[str] = field(default_factory=list)
    changed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skew: SkewDiff | None = None
    probes: list[CellComparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def cell(self, metric: str, perturbation: str = CLEAN, severity: int = 0) -> CellComparison:
        """One cell, e.g. `comparison.cell("top1")` (clean) or `comparison.cell("top1", "fog", 3)`."""
        for c in self.cells + self.summaries + self.probes:
            if c.metric == metric and c.perturbation == perturbation and c.severity == severity:
                return c
        raise KeyError(f"no compared cell {metric}@{perturbation}/{severity}")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data (non-finite floats as None)."""
        return _plain({
            "passed": self.passed,
            "reference": _identity(self.reference, self.reference_source),
            "candidate": _identity(self.candidate, self.candidate_source),
            "alpha": self.alpha, "bootstrap": self.bootstrap, "allow_inconclusive": self.allow_inconclusive,
            "images": self.images, "differences": self.differences, "perturbations_changed": self.changed,
            "notes": self.notes,
            "gates": [{"spec": g.spec, "metric": g.metric, "scope": g.scope, "severity": g.severity,
                       "threshold": g.threshold, "relative": g.relative, "outcome": g.outcome, "passed": g.passed,
                       "message": g.message, "checked": g.checked, "mde": g.mde,
                       "failures": [c.key for c in g.failures], "inconclusive": [c.key for c in g.inconclusive],
                       "excluded": [c.key for c in g.excluded],
                       "cells": [{"cell": v.cell.key, "outcome": v.outcome, "p_adjusted": v.p_adjusted,
                                  "mde": v.mde, "reason": v.reason} for v in g.cells]}
                      for g in self.gates],
            "summaries": [asdict(c) for c in self.summaries],
            "cells": [asdict(c) for c in self.cells],
            "probes": [asdict(c) for c in self.probes],
            "skew": None if self.skew is None else self.skew.to_json(),
        })


@dataclass
class ComparisonSet:
    """Several candidates, each compared with the same reference."""

    comparisons: list[Comparison]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "comparisons": [c.to_json() for c in self.comparisons]}


def compare(reference: Scorecard | str | Path, *others: Scorecard | str | Path, gates: Sequence[str] | None = None,
            force: bool = False, alpha: float = 0.05, bootstrap: int = 1000, seed: int = 0,
            allow_inconclusive: bool = False) -> Comparison | ComparisonSet:
    """Compare each of `others` with `reference` (Scorecards, `scorecard.json` paths or report folders).

    Returns a `Comparison` when one other scorecard is given, else a `ComparisonSet` with one
    `Comparison` per candidate, in order. `gates` are gate specs (see `parse_gate`); None means the
    task's default gates (`default_gates`), `()` no gates. `bootstrap` resamples (0: McNemar tests only)
    are drawn from `seed`; `alpha` is the significance level (after Holm) and the interval level;
    `allow_inconclusive` lets inconclusive gates pass, with a warning. Raises IncomparableError
    (unless `force`), GateError for a bad gate, ScorecardError for an unreadable scorecard.
    """
    if not others:
        raise ValueError("compare: give at least one scorecard to compare with the reference")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"compare: alpha must be in (0, 1), got {alpha}")
    if int(bootstrap) < 0:
        raise ValueError(f"compare: bootstrap must be 0 (McNemar tests only) or more resamples, got {bootstrap}")
    if isinstance(gates, str):
        raise ValueError(f"compare: gates must be a list of specs, e.g. [{gates!r}], not a string")
    parsed = None if gates is None else [parse_gate(spec) for spec in gates]
    ref_card, ref_source = _load(reference)
    comparisons = []
    for other in others:
        card, source = _load(other)
        comparisons.append(_compare_pair(ref_card, ref_source, card, source, parsed, force, float(alpha),
                                         int(bootstrap), int(seed), bool(allow_inconclusive)))
    return comparisons[0] if len(comparisons) == 1 else ComparisonSet(comparisons)


def _load(item: Scorecard | str | Path) -> tuple[Scorecard, str]:
    if isinstance(item, Scorecard):
        source = str(Path(item.records_path).parent) if item.records_path else str(item.model.get("spec"))
        return item, source
    return Scorecard.load(item), str(item)


# --- refusal and perturbation versions ---------------------------------------------------------------

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
    out += _prepared_differences(ref.prepared or {}, cand.prepared or {})
    if int(ref.seed) != int(cand.seed):
        out.append(f"seed {ref.seed} vs {cand.seed}")
    a, b = (card.data_config.get("score_threshold") for card in (ref, cand))
    if a is not None and b is not None and float(a) != float(b):  # miss_rate and fp_per_image are defined by it
        out.append(f"score threshold {a} vs {b}")
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
        boxes_a, boxes_b = items_a[name].get("box_method"), items_b[name].get("box_method")
        if boxes_a and boxes_b and boxes_a != boxes_b:  # other ground-truth boxes under this warp
            out.append(f"suite: {name} moves boxes as {boxes_a} vs {boxes_b} (--box-warp)")
    return out


def _prepared_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Settings a data-aware perturbation was prepared with that change its pixels and targets (how far
    object masks grow, which classes are background), one phrase per setting and pair of values."""
    found: dict[tuple[str, str, str], list[str]] = {}
    for name in (n for n in a if n in b and isinstance(a[n], dict) and isinstance(b[n], dict)):
        for label, flag, key in (("mask dilation", " (--mask-dilation)", "mask_dilation"),
                                 ("background classes", " (--background-classes)", "background_classes")):
            x, y = ((p.get(key) if key in p else (p.get("settings") or {}).get(key)) for p in (a[name], b[name]))
            if x is not None and y is not None and x != y:
                found.setdefault((label, f"{x} vs {y}", flag), []).append(name)
    return [f"suite: {', '.join(names)} {label} {values}{flag}" for (label, values, flag), names in found.items()]


def perturbation_changes(ref_suite: dict[str, Any], cand_suite: dict[str, Any]) -> dict[str, str]:
    """`{perturbation: why}` for the perturbations of both suites whose implementation version differs,
    or is recorded on one side only (a scorecard written before versions were recorded: unknown)."""
    ref = {i["name"]: i.get("version") for i in ref_suite.get("perturbations", [])}
    cand = {i["name"]: i.get("version") for i in cand_suite.get("perturbations", [])}
    out = {}
    for name in (n for n in ref if n in cand):
        a, b = ref[name], cand[name]
        if a is None and b is None or a == b:
            continue
        if a is None or b is None:
            side, known = ("reference", b) if a is None else ("candidate", a)
            out[name] = (f"implementation version unknown in the {side} (written before versions were "
                         f"recorded), v{known} in the other")
        else:
            out[name] = f"implementation changed, v{a} -> v{b}"
    return out


# --- one comparison ----------------------------------------------------------------------------------

def _compare_pair(ref: Scorecard, ref_source: str, cand: Scorecard, cand_source: str, gates: list[Gate] | None,
                  force: bool, alpha: float, bootstrap: int, seed: int, allow_inconclusive: bool) -> Comparison:
    differences = _differences(ref, cand)
    if ref.task != cand.task:
        raise IncomparableError(f"{ref_source} and {cand_source} are not comparable: task {ref.task} vs "
                                f"{cand.task} (their metrics differ, so not even --force can compare them)")
    if differences and not force:
        raise IncomparableError(f"{ref_source} and {cand_source} are not comparable: " + "; ".join(differences)
                                + " (--force compares the cells they share)")
    if gates is None:
        gates = [parse_gate(spec) for spec in default_gates(ref.task)]
    ref_rows = {(r["perturbation"], int(r["severity"])): r for r in ref.results}
    cand_rows = {(r["perturbation"], int(r["severity"])): r for r in cand.results}
    shared = [k for k in ref_rows if k in cand_rows]
    if not shared:
        raise IncomparableError(f"{ref_source} and {cand_source} share no perturbation x severity cell")
    main = main_metric(ref.task) or next(iter(ref_rows[shared[0]]["metrics"]))
    changed = perturbation_changes(ref.suite, cand.suite)
    cells = [CellComparison(p, s, m, old, new, new - old, changed=changed.get(p))
             for p, s in shared
             for m in ref_rows[(p, s)]["metrics"] if m in cand_rows[(p, s)]["metrics"]
             for old, new in [(_float(ref_rows[(p, s)]["metrics"][m]), _float(cand_rows[(p, s)]["metrics"][m]))]]
    families = {p: ref_rows[(p, s)].get("family", p) for p, s in shared if p != CLEAN}
    summaries = _summary_cells(cells, main, families, changed)
    probes = _probe_cells(ref, cand, cells, main, changed)
    check_gates(gates, ref.task, cells, summaries)

    notes = [f"{name}: {why}; its cells are left out of the gates" for name, why in changed.items()]
    paired = _paired_records(ref, cand, shared, notes)
    images = None
    if paired is not None:
        images = paired.num_images
        _test(paired, cells, summaries, probes, main, families, alpha, bootstrap, seed, notes)
        _test_shape_bias(paired, ref, cand, probes, alpha, bootstrap, seed)
    for group in _groups(cells) + [summaries, probes]:
        _holm_group(group, alpha)
    results = [evaluate_gate(g, cells, summaries, alpha, allow_inconclusive, images) for g in gates]
    notes += [f"gate {g.spec} is inconclusive and passes only because inconclusive gates are allowed: {g.message}"
              for g in results if g.outcome == "inconclusive" and g.allowed]
    skew = compare_skew(ref.skew, cand.skew, notes)
    for note in notes:
        warnings.warn(note, CompareWarning, stacklevel=3)
    return Comparison(reference=ref, candidate=cand, cells=cells, summaries=summaries, gates=results,
                      reference_source=ref_source, candidate_source=cand_source, alpha=alpha, bootstrap=bootstrap,
                      allow_inconclusive=allow_inconclusive, images=images, differences=differences,
                      changed=changed, notes=notes, skew=skew, probes=probes)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _summary_cells(cells: list[CellComparison], main: str, families: dict[str, str],
                   changed: dict[str, str]) -> list[CellComparison]:
    """mPC, rPC and mPC per family of the main metric, from the scorecard values of the shared cells; a
    summary over a changed perturbation is marked changed too."""
    table = {(c.perturbation, c.severity): (c.old, c.new) for c in cells if c.metric == main}
    clean = table.get((CLEAN, 0))
    if clean is None or not families:
        return []
    old, new = (_summary_values({k: v[run] for k, v in table.items() if k[0] != CLEAN}, clean[run], families)
                for run in (0, 1))
    out = []
    for name in old:
        members = [p for p in families if name in ("mPC", "rPC") or name == f"mPC[{families[p]}]"]
        why = "; ".join(f"{p}: {changed[p]}" for p in members if p in changed) or None
        out.append(CellComparison(name, 0, main, float(old[name]), float(new[name]), float(new[name] - old[name]),
                                  changed=why))
    return out


def _probe_cells(ref: Scorecard, cand: Scorecard, cells: list[CellComparison], main: str,
                 changed: dict[str, str]) -> list[CellComparison]:
    """The reliance probes of both runs, where both ran them. Descriptive: no gate reads them.

    - `bg_gap` (the main metric under `mixed_same` minus under `mixed_rand`): did the candidate lean less
      on backgrounds? A larger gap is worse whatever the metric's direction.
    - `shape_bias` on the cue-conflict pass (`texture_fill`, classification), from the scorecards'
      cue summaries: did the candidate decide more by shape?"""
    probes = []
    table = {c.perturbation: (c.old, c.new) for c in cells if c.metric == main and c.perturbation in GAP_PASSES}
    if len(table) == len(GAP_PASSES):
        old, new = (table[GAP_PASSES[0]][run] - table[GAP_PASSES[1]][run] for run in (0, 1))
        why = "; ".join(f"{p}: {changed[p]}" for p in GAP_PASSES if p in changed) or None
        probes.append(CellComparison(BACKGROUND_GAP, 0, main, float(old), float(new), float(new - old), changed=why))
    severities = {c.severity for c in cells if c.perturbation == CUE_CONFLICT}
    bias = [((card.summaries or {}).get("cue") or {}).get(SHAPE_BIAS) for card in (ref, cand)]
    if len(severities) == 1 and None not in bias:
        old, new = float(bias[0]), float(bias[1])
        probes.append(CellComparison(CUE_CONFLICT, severities.pop(), SHAPE_BIAS, old, new, new - old,
                                     changed=changed.get(CUE_CONFLICT)))
    return probes


def _test_shape_bias(paired: _Paired, ref: Scorecard, cand: Scorecard, probes: list[CellComparison], alpha: float,
                     bootstrap: int, seed: int) -> None:
    """The paired bootstrap of the shape bias: both runs' shape and texture decisions on the cue-conflict
    images (each image's texture class recomputed from its run's prepared texture bank, as the cue summary
    computes it) under the same image weights."""
    from visionstress.evaluators.bootstrap import resample_weights
    from visionstress.evaluators.reliance import shape_bias, texture_classes

    for cell in probes:
        key = (CUE_CONFLICT, cell.severity)
        if cell.metric != SHAPE_BIAS or key not in paired.ref or bootstrap == 0:
            continue
        decisions = []
        for card, frame in ((ref, paired.ref[key]), (cand, paired.cand[key])):
            members = ((card.prepared or {}).get(CUE_CONFLICT) or {}).get("texture_members")
            if not members or not {"label", "prediction"} <= set(frame.columns):
                return
            ids, labels = frame["sample_id"].to_numpy(), frame["label"].to_numpy()
            texture = texture_classes(card.seed, cell.severity, ids, labels, members)
            by_shape, by_texture = shape_bias(frame["prediction"].to_numpy(), labels, texture)
            decisions.append((by_shape.astype(np.float64), (by_shape | by_texture).astype(np.float64)))
        (ref_shape, ref_decided), (cand_shape, cand_decided) = decisions

        def bias(from_ref: np.ndarray, from_cand: np.ndarray) -> np.ndarray:
            """Shape bias of a run made of the reference's decisions weighted `from_ref` and the candidate's
            weighted `from_cand` (image weights `[r, n]`)."""
            with np.errstate(invalid="ignore", divide="ignore"):
                return (from_ref @ ref_shape + from_cand @ cand_shape) / (from_ref @ ref_decided
                                                                          + from_cand @ cand_decided)

        changes, swaps = [], []
        for weights in resample_weights(paired.num_images, bootstrap, seed):
            w = weights[:, paired.positions[key]]
            changes.append(bias(0 * w, w) - bias(w, 0 * w))
        for flips in _exchange_flips(paired.num_images, exchanges(bootstrap), seed):
            swapped = flips[:, paired.positions[key]]
            swaps.append(bias(swapped, 1.0 - swapped) - bias(1.0 - swapped, swapped))
        _bootstrap_cell(cell, np.concatenate(changes), alpha, paired.num_images, np.concatenate(swaps))


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


def _holm_group(cells: list[CellComparison], alpha: float) -> None:
    tested = [c for c in cells if c.p_value is not None]
    for c, adjusted in zip(tested, holm([c.p_value for c in tested])):
        c.p_adjusted = adjusted
        c.significant = adjusted < alpha


# --- the records of both runs, paired ----------------------------------------------------------------

StatFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class _TaskRecords:
    """What compare needs from a task's records: the columns, the statistics function, and the per-image
    yes/no outcome of each metric tested with McNemar."""

    columns: tuple[str, ...]
    statistics: Callable[[Mapping[str, Any]], StatFn]
    outcomes: Callable[[pd.DataFrame], dict[str, np.ndarray]]


def task_records(task: str) -> _TaskRecords | None:
    """The task's record columns, statistics function and McNemar outcomes, from its task module
    (visionstress.tasks); None for a task this installation does not know."""
    from visionstress.tasks import get_task

    try:
        owner = get_task(task)
    except ValueError:
        return None
    return _TaskRecords(tuple(owner.compare_columns()), owner.statistics, owner.mcnemar_outcomes)


@dataclass
class _Paired:
    """Both runs' records of the shared cells, each in sample-id order, and where each cell's images sit
    among the `num_images` shared clean images (the axis of the bootstrap weights)."""

    task: str
    records: _TaskRecords
    num_images: int
    ref: dict[tuple[str, int], pd.DataFrame]
    cand: dict[tuple[str, int], pd.DataFrame]
    positions: dict[tuple[str, int], np.ndarray]


def _paired_records(ref: Scorecard, cand: Scorecard, keys: list[tuple[str, int]], notes: list[str]) -> _Paired | None:
    """Read and align both runs' records; None (with a note) when no paired test is possible."""
    if ref.dataset.get("fingerprint") != cand.dataset.get("fingerprint"):
        notes.append("no paired tests: the datasets differ, so the images cannot be paired")
        return None
    task = task_records(ref.task)
    if task is None:
        notes.append(f"no paired tests: compare does not know the records of task {ref.task!r}")
        return None
    frames = []
    for card, role in ((ref, "reference"), (cand, "candidate")):
        frame = _read(card, role, task.columns, notes)
        if frame is None:
            return None
        frames.append({key: part.drop_duplicates("sample_id").sort_values("sample_id", kind="stable")
                       for key, part in frame.groupby(["perturbation", "severity"], sort=False)})
    clean = [f.get((CLEAN, 0)) for f in frames]
    if clean[0] is None or clean[1] is None:
        notes.append("no paired tests: the records hold no clean pass")
        return None
    ids = np.intersect1d(clean[0]["sample_id"].to_numpy(), clean[1]["sample_id"].to_numpy())
    if ids.size == 0:
        notes.append("no paired tests: the two runs' records share no image")
        return None
    paired = _Paired(ref.task, task, int(ids.size), {}, {}, {})
    for key in keys:
        parts = [f.get(key) for f in frames]
        cell_ids = [None if p is None else p["sample_id"].to_numpy() for p in parts]
        if cell_ids[0] is None or cell_ids[1] is None or not np.array_equal(cell_ids[0], cell_ids[1]) \
                or not np.isin(cell_ids[0], ids).all():
            notes.append(f"{key[0]}@{key[1]}: untested, the two runs' records do not hold the same images of this "
                         "pass")
            continue
        paired.ref[key], paired.cand[key] = parts[0].reset_index(drop=True), parts[1].reset_index(drop=True)
        paired.positions[key] = np.searchsorted(ids, cell_ids[0])
    return paired


def _read(card: Scorecard, role: str, columns: tuple[str, ...], notes: list[str]) -> pd.DataFrame | None:
    """The records columns compare needs (only those: a detection run also stores boxes for display)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not card.records_path:
        notes.append(f"no paired tests: the {role} scorecard names no records file")
        return None
    path = Path(card.records_path)
    try:
        names = pq.read_schema(path).names
        missing = [c for c in ("sample_id", "perturbation", "severity", *columns) if c not in names]
        if missing:
            notes.append(f"no paired tests: the {role} records ({path}) lack columns {', '.join(missing)}")
            return None
        frame = pq.read_table(path, columns=["sample_id", "perturbation", "severity", *columns]).to_pandas()
    except FileNotFoundError:
        notes.append(f"no paired tests: the {role} records are unreadable ({path}: records file not found)")
        return None
    except (pa.ArrowInvalid, OSError) as exc:
        notes.append(f"no paired tests: the {role} records are unreadable ({path}: {exc})")
        return None
    frame["severity"] = frame["severity"].astype(np.int64)
    if "flipped" in frame:
        frame["flipped"] = frame["flipped"].astype("boolean")
    return frame


# --- paired tests ------------------------------------------------------------------------------------

def _test(paired: _Paired, cells: list[CellComparison], summaries: list[CellComparison],
          probes: list[CellComparison], main: str, families: dict[str, str], alpha: float, bootstrap: int, seed: int,
          notes: list[str]) -> None:
    """Fill the test, p-value, interval and MDE of every testable cell, summary and probe."""
    by_key = {(c.perturbation, c.severity, c.metric): c for c in cells}
    for key in paired.ref:
        outcomes = paired.records.outcomes(paired.ref[key]), paired.records.outcomes(paired.cand[key])
        for metric, a in outcomes[0].items():
            cell, b = by_key.get((*key, metric)), outcomes[1].get(metric)
            if cell is None or b is None or _test_kind(metric, paired) != "mcnemar":
                continue
            only_ref, only_cand = int((a & ~b).sum()), int((~a & b).sum())
            result = mcnemar_test(only_ref, only_cand, len(a), alpha)
            cell.test, cell.p_value, cell.ci_delta = "mcnemar", result.p_value, result.interval
            cell.images, cell.discordant = len(a), (only_ref, only_cand)
            cell.mde = cell.mde_at(alpha)
    if bootstrap == 0:
        return
    wanted = {key: {m for (p, s, m), c in by_key.items() if (p, s) == key and c.test == "none"
                    and _test_kind(m, paired) == "bootstrap"} | {main} for key in paired.ref}
    resampled = _resample(paired, wanted, bootstrap, seed)
    exchanged = _exchange(paired, wanted, exchanges(bootstrap), seed)
    for (p, s, metric), cell in by_key.items():
        values = resampled.get((p, s), {}).get(metric)
        if values is not None and cell.test == "none" and metric in wanted[(p, s)]:
            swaps = exchanged[(p, s)][metric]
            _bootstrap_cell(cell, values[1] - values[0], alpha, paired.num_images, swaps[1] - swaps[0])
    perturbed = {(c.perturbation, c.severity) for c in cells if c.metric == main and c.perturbation != CLEAN}
    # the main metric of every cell: resampled (the same weights in every cell), and exchanged (the same exchanges)
    clean, available = _main_cells(resampled, perturbed, main)
    clean_swaps, available_swaps = _main_cells(exchanged, perturbed, main)
    gap = [{p: v for (p, _), v in cells_.items() if p in GAP_PASSES} for cells_ in (available, available_swaps)]
    for cell in probes:  # bg_gap: (same - rand) in both runs
        if len(gap[0]) == len(GAP_PASSES):
            _bootstrap_cell(cell, _gap_change(gap[0]), alpha, paired.num_images, _gap_change(gap[1]))
    if not summaries:
        return
    if clean is None or len(available) < len(perturbed):  # a summary over some of its cells is another number
        notes.append("summaries untested: some of their cells could not be resampled")
        return
    boot, swaps = ([_summary_values({k: v[run] for k, v in cells_.items()}, clean_[run], families) for run in (0, 1)]
                   for cells_, clean_ in ((available, clean), (available_swaps, clean_swaps)))
    for cell in summaries:
        name = cell.perturbation
        _bootstrap_cell(cell, boot[1][name] - boot[0][name], alpha, paired.num_images, swaps[1][name] - swaps[0][name])


def _main_cells(draws: dict[tuple[str, int], dict[str, Any]], perturbed: set[tuple[str, int]],
                main: str) -> tuple[Any, dict]:
    """(the clean pass's main metric, {perturbed cell: its main metric}) of resampled or exchanged draws."""
    return (draws.get((CLEAN, 0), {}).get(main),
            {k: draws[k][main] for k in sorted(perturbed) if main in draws.get(k, {})})


def _gap_change(gap: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The change of (main metric on mixed_same - on mixed_rand) between the runs, per draw."""
    (same_old, same_new), (rand_old, rand_new) = (gap[p] for p in GAP_PASSES)
    return (same_new - rand_new) - (same_old - rand_old)


def _test_kind(metric: str, paired: _Paired) -> str:
    """The paired test the metric registry declares for `metric` ("none" for an unregistered one)."""
    info = find_metric(metric, paired.task)
    return "none" if info is None else info.test


def _bootstrap_cell(cell: CellComparison, deltas: np.ndarray, alpha: float, images: int,
                    exchanged: np.ndarray) -> None:
    """The cell's interval and MDE from its bootstrap differences; its p-value the larger of the bootstrap's
    and the exchange test's (`exchanged[0]` the observed difference, the rest under random exchanges)."""
    result = bootstrap_test(deltas, alpha)
    if result is None:
        return
    finite = deltas[np.isfinite(deltas)]
    observed = float(exchanged[0])
    swap = exchange_p_value(observed, exchanged[1:])
    p_value = result.p_value if swap is None else max(result.p_value, swap)
    if abs(observed) <= ROUNDING_NOISE:  # a model and its export differ in the 7th digit, on every image alike
        p_value = 1.0
    cell.test, cell.p_value, cell.ci_delta = "paired_bootstrap", p_value, result.interval
    cell.images = images
    cell.standard_error = float(np.std(finite, ddof=1)) if finite.size > 1 else 0.0
    cell.mde = cell.mde_at(alpha)


def _resample(paired: _Paired, wanted: dict[tuple[str, int], set[str]], resamples: int,
              seed: int) -> dict[tuple[str, int], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """`{cell: {metric: (reference [R], candidate [R])}}`: every cell of both runs under the same image
    weights, drawn over the shared images (a cell on a subset of them takes its images' weights)."""
    from visionstress.evaluators.bootstrap import resample_weights

    stats = {key: (paired.records.statistics(paired.ref[key]), paired.records.statistics(paired.cand[key]))
             for key in paired.ref}
    parts: dict[tuple[str, int], list[tuple[dict, dict]]] = {key: [] for key in stats}
    for weights in resample_weights(paired.num_images, resamples, seed):
        for key, (ref_fn, cand_fn) in stats.items():
            w = weights[:, paired.positions[key]]
            parts[key].append((ref_fn(w), cand_fn(w)))
    out = {}
    for key, chunks in parts.items():
        metrics = [m for m in wanted[key] if m in chunks[0][0] and m in chunks[0][1]]
        out[key] = {m: (np.concatenate([c[0][m] for c in chunks]), np.concatenate([c[1][m] for c in chunks]))
                    for m in metrics}
    return out


def _exchange(paired: _Paired, wanted: dict[tuple[str, int], set[str]], exchanges: int,
              seed: int) -> dict[tuple[str, int], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """`{cell: {metric: (reference [1 + E], candidate [1 + E])}}`: both runs' metrics with each shared
    image's two records exchanged between the runs at random (`exchange_p_value`). Row 0 exchanges none
    (the runs as they are); every cell sees the same exchanges, so summaries over cells exchange alike.
    A cell's records of both runs are one table of 2n images, weighted 0 or 1 for each pseudo-run."""
    n = paired.num_images
    both = {key: paired.records.statistics(pd.concat([paired.ref[key], paired.cand[key]], ignore_index=True))
            for key in paired.ref}
    parts: dict[tuple[str, int], list[tuple[Any, Any]]] = {key: [] for key in both}
    for flips in _exchange_flips(n, exchanges, seed):
        for key, stats in both.items():
            swapped = flips[:, paired.positions[key]]
            kept = 1.0 - swapped
            parts[key].append((stats(np.hstack([kept, swapped])), stats(np.hstack([swapped, kept]))))
    out = {}
    for key, chunks in parts.items():
        metrics = [m for m in wanted[key] if m in chunks[0][0]]
        out[key] = {m: (np.concatenate([c[0][m] for c in chunks]), np.concatenate([c[1][m] for c in chunks]))
                    for m in metrics}
    return out


def exchanges(resamples: int) -> int:
    """How many random exchanges test a cell, beside its `resamples` bootstrap resamples: half as many, since
    each costs two evaluations of both runs' records (the p-value they give only needs to be right near
    alpha, and the normal tail takes over where few exchanges reach the observed change)."""
    return max(1, resamples // 2)


def _exchange_flips(n: int, exchanges: int, seed: int) -> Iterator[np.ndarray]:
    """Which of the `n` shared images have their two records exchanged: `[r, n]` 0/1 chunks of 1 + `exchanges`
    rows in all, the first row exchanging none; a random stream of its own, beside the bootstrap's."""
    from visionstress.evaluators.bootstrap import MAX_CHUNK_ELEMENTS

    rng = np.random.default_rng([int(seed), 0x5A1B])
    rows = max(1, MAX_CHUNK_ELEMENTS // (2 * n))
    for start in range(0, exchanges + 1, rows):
        flips = (rng.random((min(rows, exchanges + 1 - start), n)) < 0.5).astype(np.float64)
        if start == 0:
            flips[0] = 0.0
        yield flips


# --- plain data --------------------------------------------------------------------------------------

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

