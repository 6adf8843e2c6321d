"""The HTML report: one self-contained file a person can open, mail or attach to a pull request.

Everything is inline (CSS, figures as PNG data URIs, gallery thumbnails), there is no JavaScript
and nothing is fetched, so the file renders the same offline, in a mail client or in a CI artifact
viewer. The page is task-aware (classification top-1, detection AP, segmentation mIoU) and shows a
section only when the scorecard holds its data, so a scorecard from a partial or older run still
renders. Every string from the scorecard is HTML-escaped by jinja2's autoescaping: class names,
paths and model specs are user data.
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from visionstress.scorecard import CLEAN, SCORECARD_FILE, Scorecard

from . import figures

REPORT_FILE = "report.html"
_WORST_SHOWN = 5
_CLASSES_SHOWN = 8
_SKIPPED_SHOWN = 50
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SUMMARY_LABELS = {"mce": "mCE", "relative_mce": "relative mCE"}
_HEADLINE_SUMMARIES = frozenset({"metric", "clean", "mpc", "rpc"})
"""Summaries the headline computes from the rows itself (the same way summary.md does)."""
_PER_CLASS = (("per_class", "F1"), ("per_class_ap", "AP"), ("per_class_iou", "IoU"))
"""The per-class breakdowns tasks write, and the value each shows (the first one present is shown)."""
_SIZE_COLUMNS = {"size": ("num_gt", "objects", (("AP", "AP"), ("recall", "recall"))),
                 "region_recall": ("num_regions", "regions", (("recall", "recall"),))}
_SECTIONS = (("headline", "headline", ()), ("skew", "preprocessing skew", ("skew",)),
             ("heatmap", "heatmap", ("heatmap",)),
             ("curves", "degradation", ("curves",)), ("confusion", "confusion", ("confusion", "most_confused")),
             ("calibration", "calibration", ("calibration",)), ("small-objects", "small objects", ("size",)),
             ("error-types", "error types", ("error_types",)), ("occlusion", "occlusion", ("occlusion",)),
             ("adversarial", "adversarial patches", ("adversarial",)),
             ("per-class", "per class", ("per_class",)), ("probes", "backgrounds & cues", ("probes",)),
             ("gallery", "failure gallery", ("gallery",)), ("skipped", "skipped files", ()))
"""(anchor, link text, context entries of which one must be present; none: always shown) for the
navigation bar, in page order."""
# Heatmap colour stops, light enough for dark text at every value: lost, half kept, all kept.
_RAMP = ((0.0, (217, 88, 74)), (0.5, (246, 217, 107)), (1.0, (124, 196, 127)))


class ReportError(ValueError):
    """A report that cannot be written; the message says which input is missing or wrong."""


@dataclass
class Table:
    """A plain table for the template; columns from `first_numeric` on are right-aligned numbers."""

    header: list[str]
    rows: list[list[str]]
    first_numeric: int = 1
    caption: str = ""


@dataclass
class HeatCell:
    text: str
    background: str
    title: str


@dataclass
class HeatRow:
    perturbation: str
    family: str
    cells: list[HeatCell]
    mean: HeatCell
    change: str


@dataclass
class Heatmap:
    severities: list[int]
    rows: list[HeatRow]


@dataclass
class GalleryItem:
    caption: str
    pass_label: str
    path: str
    sample_id: Any
    clean: str | None  # data URI, None when the file is missing or not a PNG inside the report folder
    perturbed: str | None


@dataclass
class EmbeddedFigure:
    uri: str  # PNG data URI
    alt: str


@dataclass
class _Passes:
    """The main metric of every row, and which perturbed cell is the worst."""

    metric: str
    clean: float
    clean_ci: Sequence[float] | None
    cells: list[tuple[str, str, int, float]] = field(default_factory=list)  # perturbation, family, severity, value
    higher_is_better: bool = True

    @property
    def ranked(self) -> list[tuple[str, str, int, float]]:
        """Defined cells, worst first in the metric's direction (ties by name and severity, as summary.md)."""
        sign = 1.0 if self.higher_is_better else -1.0
        return sorted((c for c in self.cells if math.isfinite(c[3])), key=lambda c: (sign * c[3], c[0], c[2]))

    def losses(self) -> list[tuple[str, str, int, float]]:
        """The ranked cells that scored worse than clean."""
        sign = 1.0 if self.higher_is_better else -1.0
        return [c for c in self.ranked if sign * (self.clean - c[3]) > 0]

    def key_order(self) -> list[str]:
        """Result keys, clean first, then from the worst cell up."""
        return [f"{CLEAN}@0"] + [f"{p}@{s}" for p, _, s, _ in self.ranked]


def write_report(scorecard: str | Path | Scorecard, out: str | Path | None = None) -> Path:
    """Write `report.html` next to the scorecard (or into `out`) and return its path.

    `scorecard` is a `scorecard.json`, the folder holding one, or a Scorecard object; gallery images
    are read from the scorecard's folder (for an object: its records' folder, else `out`).
    """
    if isinstance(scorecard, Scorecard):
        card = scorecard
        base = Path(card.records_path).parent if card.records_path else None
        if out is None and base is None:
            raise ReportError("write_report: this Scorecard has no folder (no records_path); give `out`")
        target_dir = Path(out) if out is not None else base
        base = base if base is not None else target_dir
    else:
        path = Path(scorecard)
        card = Scorecard.load(path)
        base = path if path.is_dir() else path.parent
        target_dir = Path(out) if out is not None else base
    html = render_report(card, base)
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / REPORT_FILE
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        raise ReportError(f"{target_dir}: cannot write {REPORT_FILE} ({exc.strerror or exc})") from None
    return target


def render_report(card: Scorecard, base_dir: Path, skew: Mapping[str, Any] | None = None) -> str:
    """The report's HTML text; `base_dir` is the folder the gallery's relative image paths start from.
    `skew` is a scorecard's `skew` section (visionstress.skew), by default the card's own if it has one."""
    metric = card.main_metric
    passes = _passes(card, metric)
    breakdowns = card.breakdowns or {}
    compare = _compare_keys(passes, breakdowns)
    context = {
        "card": card,
        "metric": metric,
        "title": f"{card.model.get('spec')} on {card.dataset.get('path')}",
        "tiles": _tiles(card, passes),
        "skew": _skew(skew if skew is not None else getattr(card, "skew", None)),
        "facts": _facts(card),
        "worst": _worst_table(passes),
        "heatmap": _heatmap(passes, card),
        "curves": _curves(passes),
        "confusion": _confusion(card, breakdowns, compare),
        "most_confused": _most_confused(breakdowns, passes),
        "calibration": _calibration(breakdowns, compare, card),
        "per_class": _per_class(card, breakdowns, compare),
        "size": _size_tables(breakdowns, compare),
        "error_types": _error_types(breakdowns, compare),
        "occlusion": _occlusion(breakdowns, passes),
        "probes": _probes(card, Path(base_dir)),
        "adversarial": adversarial_section(card, Path(base_dir)),
        "gallery": _gallery(breakdowns.get("gallery") or [], Path(base_dir)),
        "skipped": _skipped(card),
        "environment": [(k.replace("_", " "), _plain_value(v)) for k, v in (card.environment or {}).items()],
        "timing": [_timing(k, v) for k, v in (card.timing or {}).items()],
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "scorecard_file": SCORECARD_FILE,
    }
    context["sections"] = [(anchor, name) for anchor, name, keys in _SECTIONS
                           if not keys or any(context[k] for k in keys)]
    return _environment().get_template("report.html.j2").render(**context)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("visionstress.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


# --- numbers ------------------------------------------------------------------------------------

def _fraction(metric: str) -> bool:
    from visionstress.metrics import find_metric

    found = find_metric(metric)
    return bool(found and found.fraction)


def _number(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: Any, metric: str) -> str:
    """A metric value as people read it: fractions in percent, other values to three decimals."""
    v = _number(value)
    if not math.isfinite(v):
        return "–"
    return f"{100 * v:.1f}%" if _fraction(metric) else f"{v:.3f}"


def _percent(value: Any) -> str:
    return _fmt(value, "top1")


def _fmt_change(value: float, metric: str) -> str:
    """A difference; percentage points for fractions so it reads against the percentages."""
    if not math.isfinite(value):
        return "–"
    return f"{100 * value:+.1f} pp" if _fraction(metric) else f"{value:+.3f}"


def _plain_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "–" if value is None else str(value)


def _timing(key: str, value: Any) -> tuple[str, str]:
    """`("total", "26.1 s")` from `("total_seconds", 26.14)`; counts with thousands separators."""
    if key.endswith("_seconds") and isinstance(value, (int, float)):
        return key[: -len("_seconds")].replace("_", " "), f"{value:.1f} s"
    return key.replace("_", " "), f"{value:,}" if isinstance(value, int) else _plain_value(value)


def _colour(fraction: float) -> str:
    """Background for a heatmap cell: red (nothing kept) through yellow to green (all of clean kept)."""
    if not math.isfinite(fraction):
        return "#e6e6e6"
    f = min(max(fraction, 0.0), 1.0)
    for (x0, c0), (x1, c1) in zip(_RAMP, _RAMP[1:]):
        if f <= x1:
            t = (f - x0) / (x1 - x0)
            return "#" + "".join(f"{round(a + t * (b - a)):02x}" for a, b in zip(c0, c1))
    return "#" + "".join(f"{c:02x}" for c in _RAMP[-1][1])


# --- the pieces of the page -----------------------------------------------------------------------

def _passes(card: Scorecard, metric: str) -> _Passes:
    clean_row = next((r for r in card.results if r["perturbation"] == CLEAN), None)
    clean = _number(clean_row["metrics"].get(metric)) if clean_row else math.nan
    ci = (clean_row.get("ci") or {}).get(metric) if clean_row else None
    from visionstress.metrics import find_metric

    info = find_metric(metric, card.task)
    passes = _Passes(metric, clean, ci, higher_is_better=info is None or info.higher_is_better)
    for row in card.results:
        if row["perturbation"] != CLEAN:
            passes.cells.append((row["perturbation"], row["family"], int(row["severity"]),
                                 _number(row["metrics"].get(metric))))
    return passes


def _label(key: str) -> str:
    """`fog@3` as the page shows it."""
    name, _, severity = key.rpartition("@")
    return "clean" if name == CLEAN else f"{name} @ {severity}"


def _compare_keys(passes: _Passes, breakdowns: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Per breakdown, the passes to set side by side: clean and the worst cell it holds."""
    order = passes.key_order()
    out = {}
    for name, values in breakdowns.items():
        if not isinstance(values, Mapping):
            continue
        present = [k for k in order if k in values]
        clean = present[:1] if present and present[0] == order[0] else []
        worst = [k for k in present if k != order[0]][:1]
        out[name] = tuple(clean + worst)
    return out


def _tiles(card: Scorecard, passes: _Passes) -> list[tuple[str, str, str]]:
    """(label, value, note) for the headline numbers."""
    metric = passes.metric
    note = ""
    if passes.clean_ci and len(passes.clean_ci) == 2 and all(math.isfinite(_number(v)) for v in passes.clean_ci):
        note = f"95% CI {_fmt(passes.clean_ci[0], metric)} – {_fmt(passes.clean_ci[1], metric)}"
    tiles = [(f"clean {metric}", _fmt(passes.clean, metric), note)]
    values = [v for *_, v in passes.cells if math.isfinite(v)]
    if values:
        mean = sum(values) / len(values)
        tiles.append((f"mean {metric} under perturbation", _fmt(mean, metric),
                      f"over {len(values)} perturbation × severity cells"))
        if passes.clean > 0:
            tiles.append(("relative robustness", f"{mean / passes.clean:.3f}", "perturbed mean / clean"))
    summaries = card.summaries or {}
    baseline = summaries.get("mce_baseline")
    for key, value in summaries.items():
        if key in _HEADLINE_SUMMARIES or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            note = f"baseline: {baseline}" if "mce" in key and baseline else ""
            tiles.append((_SUMMARY_LABELS.get(key, key.replace("_", " ")), f"{value:.3f}", note))
    return tiles


def _facts(card: Scorecard) -> list[tuple[str, str]]:
    model, dataset, config = card.model or {}, card.dataset or {}, card.data_config or {}
    sha = model.get("sha256")
    facts = [("task", card.task),
             ("model", f"{model.get('spec')} ({model.get('format')}" + (f", sha256 {sha[:12]}…)" if sha else ")"))]
    if model.get("weights"):
        facts.append(("weights", str(model["weights"])))
    images = f"{dataset.get('num_samples')} images"
    if dataset.get("num_listed") not in (None, dataset.get("num_samples")):
        images += f" of {dataset.get('num_listed')} listed"
    if dataset.get("num_classes") is not None:
        images += f", {dataset.get('num_classes')} classes"
    facts += [("dataset", f"{dataset.get('path')}"), ("images", images)]
    items = (card.suite or {}).get("perturbations") or []
    cells = sum(len(p.get("severities") or []) for p in items)
    facts.append(("suite", f"{card.suite.get('name')}: {len(items)} perturbations, {cells} cells, seed {card.seed}"))
    if config:
        shown = ", ".join(f"{k} {_plain_value(v)}" for k, v in config.items() if k != "source" and v is not None)
        facts.append(("preprocessing", shown + (f" (from {config['source']})" if config.get("source") else "")))
    env = card.environment or {}
    device = str(env.get("device")) + (f" ({env['device_name']})" if env.get("device_name") else "")
    facts += [("device", device), ("created", str(card.created))]
    return facts


def _worst_table(passes: _Passes) -> Table | None:
    worst = passes.losses()[:_WORST_SHOWN]
    if not worst:
        return None
    metric = passes.metric
    return Table(["perturbation", "family", "severity", metric, "change from clean"],
                 [[p, f, str(s), _fmt(v, metric), _fmt_change(v - passes.clean, metric)] for p, f, s, v in worst],
                 first_numeric=2, caption="Only cells that scored worse than clean; each cell's 95% interval is in "
                 "the scorecard and summary.md (a drop inside it is not told from noise).")


def _heatmap(passes: _Passes, card: Scorecard | None = None) -> Heatmap | None:
    """Perturbation x severity cells; a geometric perturbation's row says how it moved boxes without masks."""
    if not passes.cells:
        return None
    box_methods = {item.get("name"): item.get("box_method") for item in (card.suite.get("perturbations") or [])
                   if isinstance(item, Mapping) and item.get("box_method")} if card is not None else {}
    metric, clean = passes.metric, passes.clean
    severities = sorted({s for _, _, s, _ in passes.cells})
    by_name: dict[str, dict[int, float]] = {}
    families: dict[str, str] = {}
    for name, family, severity, value in passes.cells:
        by_name.setdefault(name, {})[severity] = value
        families[name] = family

    def cell(value: float, title: str) -> HeatCell:
        kept = value / clean if clean > 0 else value
        return HeatCell(_fmt(value, metric), _colour(kept), title)

    rows = []
    for name in sorted(by_name, key=lambda n: families[n]):  # stable: suite order within a family
        values = by_name[name]
        defined = [v for v in values.values() if math.isfinite(v)]
        mean = sum(defined) / len(defined) if defined else math.nan
        cells = [cell(values.get(s, math.nan), f"{name} @ {s}: {_fmt(values.get(s), metric)}") for s in severities]
        label = f"{name} (boxes: {box_methods[name]})" if name in box_methods else name
        rows.append(HeatRow(label, families[name], cells, cell(mean, f"{name} mean: {_fmt(mean, metric)}"),
                            _fmt_change(mean - clean, metric)))
    return Heatmap(severities, rows)


def _curves(passes: _Passes) -> list[EmbeddedFigure]:
    families: dict[str, dict[str, dict[int, float]]] = {}
    for name, family, severity, value in passes.cells:
        if math.isfinite(value):
            families.setdefault(family, {}).setdefault(name, {})[severity] = value
    if not families:
        return []
    values = [v for curves in families.values() for c in curves.values() for v in c.values()]
    top = max(values + ([passes.clean] if math.isfinite(passes.clean) else []))
    y_max = top * 1.08 if top > 0 else 1.0
    percent = _fraction(passes.metric)
    return [EmbeddedFigure(figures.degradation_curve(family, curves, passes.clean, passes.metric, y_max, percent),
                   f"{passes.metric} against severity for the {family} family")
            for family, curves in sorted(families.items())]


def _confusion(card: Scorecard, breakdowns: Mapping[str, Any], compare: Mapping[str, tuple]) -> EmbeddedFigure | None:
    keys = compare.get("confusion") or ()
    matrices = [(_label(k), np.asarray(breakdowns["confusion"][k])) for k in keys]
    if not matrices or any(m.ndim != 2 or m.shape[0] != m.shape[1] or m.size == 0 for _, m in matrices):
        return None
    names = (card.dataset or {}).get("class_names") or []
    return EmbeddedFigure(figures.confusion_matrices(matrices, names),
                  "confusion matrices: " + " and ".join(label for label, _ in matrices))


def _most_confused(breakdowns: Mapping[str, Any], passes: _Passes) -> Table | None:
    pairs_by_key = breakdowns.get("most_confused")
    if not isinstance(pairs_by_key, Mapping):
        return None
    order = passes.key_order()
    # the worst cell that has pairs (clean's own when no perturbed cell has any)
    key = next((k for k in order[1:] + order[:1] if pairs_by_key.get(k)), None)
    if key is None:
        return None
    rows = []
    for pair in pairs_by_key[key]:
        if isinstance(pair, Mapping):
            true, predicted, count, clean = (pair.get(k) for k in ("true", "predicted", "count", "clean_count"))
        else:
            true, predicted, count, clean = (list(pair) + [None] * 4)[:4]
        rows.append([str(true), str(predicted), _plain_value(count), _plain_value(clean)])
    return Table(["true class", "predicted as", f"count ({_label(key)})", "count (clean)"], rows, first_numeric=2,
                 caption=f"Most frequent mistakes under {_label(key)}, beside how often the same mistake "
                         f"happens on clean images.")


def _calibration(breakdowns: Mapping[str, Any], compare: Mapping[str, tuple], card: Scorecard) -> EmbeddedFigure | None:
    keys = compare.get("calibration") or ()
    diagrams = breakdowns.get("calibration") or {}
    panels = []
    for key in keys:
        diagram = diagrams[key]
        if not isinstance(diagram, Mapping) or not {"bin_edges", "accuracy", "count"} <= set(diagram):
            return None
        ece = _row_metric(card, key, "ece")
        panels.append((f"{_label(key)}\nECE {_fmt(ece, 'ece')}" if math.isfinite(ece) else _label(key), diagram))
    if not panels:
        return None
    return EmbeddedFigure(figures.reliability_diagrams(panels),
                  "reliability diagrams: " + ", ".join(p[0].replace("\n", " ") for p in panels))


def _row_metric(card: Scorecard, key: str, metric: str) -> float:
    name, _, severity = key.rpartition("@")
    for row in card.results:
        if row["perturbation"] == name and str(row["severity"]) == severity:
            return _number(row["metrics"].get(metric))
    return math.nan


def _per_class(card: Scorecard, breakdowns: Mapping[str, Any], compare: Mapping[str, tuple]) -> Table | None:
    name, label = next(((n, lab) for n, lab in _PER_CLASS if n in breakdowns), _PER_CLASS[0])
    keys = compare.get(name) or ()
    if not keys:
        return None

    def value(entry: Any) -> float:
        return _number(entry.get("f1") if isinstance(entry, Mapping) else entry)

    columns = [{cls: value(v) for cls, v in breakdowns[name][k].items()} for k in keys]
    classes = list(dict.fromkeys(c for col in columns for c in col))
    support = {cls: v.get("support") for cls, v in breakdowns[name][keys[0]].items() if isinstance(v, Mapping)}

    def change(cls: str) -> float:
        return columns[-1].get(cls, math.nan) - columns[0].get(cls, math.nan) if len(columns) > 1 else math.nan

    def order(cls: str) -> tuple[bool, float, str]:
        delta = change(cls) if len(columns) > 1 else columns[0].get(cls, math.nan)
        return (not math.isfinite(delta), delta, cls)

    classes.sort(key=order)
    rows = []
    for i, cls in enumerate(classes):
        if len(classes) > 2 * _CLASSES_SHOWN and i == _CLASSES_SHOWN:
            rows.append(["…"] + [""] * (len(keys) + (len(keys) > 1) + bool(support)))
        if len(classes) > 2 * _CLASSES_SHOWN and _CLASSES_SHOWN <= i < len(classes) - _CLASSES_SHOWN:
            continue
        row = [cls] + [_percent(col.get(cls)) for col in columns]
        if len(keys) > 1:
            row.append(_fmt_change(change(cls), "top1"))
        if support:
            row.append(_plain_value(support.get(cls)))
        rows.append(row)
    header = ["class"] + [f"{label} ({_label(k)})" for k in keys] + (["change"] if len(keys) > 1 else [])
    header += ["support"] if support else []
    what = "most hurt first" if len(keys) > 1 else "lowest first"
    shown = f"the {_CLASSES_SHOWN} at each end of {len(classes)} classes" if len(classes) > 2 * _CLASSES_SHOWN else \
        f"all {len(classes)} classes"
    return Table(header, rows, caption=f"Per-class {label}, {what} ({shown}).")


def _size_tables(breakdowns: Mapping[str, Any], compare: Mapping[str, tuple]) -> list[Table]:
    tables = []
    for name, (count_field, count_label, fields) in _SIZE_COLUMNS.items():
        keys = compare.get(name) or ()
        if not keys:
            continue
        bins = list(dict.fromkeys(b for k in keys for b in breakdowns[name][k]))
        header = ["size"]
        for key in keys:
            header += [f"{count_label} · {_label(key)}"] + [f"{label} · {_label(key)}" for _, label in fields]
        rows = []
        for b in bins:
            row = [b]
            for key in keys:
                entry = breakdowns[name][key].get(b) or {}
                row += [_plain_value(entry.get(count_field))]
                row += [_percent(entry.get(f)) for f, _ in fields]
            rows.append(row)
        what = "objects" if name == "size" else "connected ground-truth regions"
        tables.append(Table(header, rows, caption=f"How {what} of each size fare, clean and under the worst "
                                                  f"perturbation the breakdown holds."))
    return tables


def _error_types(breakdowns: Mapping[str, Any], compare: Mapping[str, tuple]) -> EmbeddedFigure | None:
    keys = compare.get("error_types") or ()
    if not keys:
        return None
    panels = [(_label(k), breakdowns["error_types"][k]) for k in keys]
    return EmbeddedFigure(figures.error_type_bars(panels),
                          "detection errors by type: " + ", ".join(p[0] for p in panels))


def _occlusion(breakdowns: Mapping[str, Any], passes: _Passes) -> Table | None:
    data = breakdowns.get("occlusion")
    if not isinstance(data, Mapping) or not data:
        return None
    suite_order = [f"{CLEAN}@0"] + [f"{p}@{s}" for p, _, s, _ in passes.cells]
    keys = sorted(data, key=lambda k: (suite_order.index(k) if k in suite_order else len(suite_order), k))
    bins = list(dict.fromkeys(b for k in keys for b in data[k]))
    rows = []
    for key in keys:
        row = [_label(key)]
        for b in bins:
            entry = data[key].get(b) or {}
            row.append(f"{_percent(entry.get('miss_rate'))} (n={_plain_value(entry.get('num_gt'))})")
        rows.append(row)
    return Table(["pass"] + [f"miss rate · {b}" for b in bins], rows,
                 caption="Share of ground-truth objects missed, by how much of each object was occluded.")


@dataclass
class SkewView:
    """The preprocessing-skew section: the cell table, the bar chart of deltas, the knobs ranked by their
    worst cell, notes, and the serving-parity verdict with its disagreeing images."""

    metric: str
    headline: str
    table: Table
    chart: EmbeddedFigure | None
    knobs: Table | None
    notes: list[str]
    parity: str | None
    parity_passed: bool
    disagreements: Table | None


def _skew(section: Mapping[str, Any] | None) -> SkewView | None:
    if not isinstance(section, Mapping) or not section.get("rows"):
        return None
    metric, rows = str(section.get("metric")), section["rows"]

    def name(row: Mapping[str, Any]) -> str:
        return f"{row['label']} ({row['cell']})" if row.get("label") else str(row["cell"])

    def interval(pair: Any, change: bool = False) -> str:
        if not pair or len(pair) != 2 or not all(math.isfinite(_number(v)) for v in pair):
            return "–"
        f = (lambda v: _fmt_change(_number(v), metric)) if change else (lambda v: _fmt(v, metric))
        return f"{f(pair[0])} – {f(pair[1])}"

    def p_value(value: Any) -> str:
        v = _number(value)
        return "–" if not math.isfinite(v) else ("<0.001" if v < 0.001 else f"{v:.3f}")

    table = Table(["cell", metric, "95% CI", "change", "change 95% CI", "agreement", "p (Holm)",
                   "significant"],
                  [[name(r), _fmt(r["metrics"].get(metric), metric), interval(r["ci"].get(metric)),
                    _fmt_change(_number(r["delta"].get(metric)), metric), interval(r["delta_ci"].get(metric), True),
                    _percent(r.get("agreement")), p_value(r.get("p_adjusted")), "yes" if r.get("significant") else ""]
                   for r in rows],
                  caption=f"Each cell changes the model's declared preprocessing (the reference, first row); "
                          f"agreement is the share of images (pixels, for segmentation; the reference's confident "
                          f"detections, for detection) whose prediction is the reference's. "
                          f"{section.get('test', '')}; intervals: {section.get('interval', '')}.")
    cells = sorted(rows[1:], key=lambda r: _number(r["delta"].get(metric)))
    chart = None
    if cells:
        chart = EmbeddedFigure(figures.skew_deltas(
            [(r.get("label") or str(r["cell"]), _number(r["delta"].get(metric)), *[_number(v) for v in (r["delta_ci"].get(metric) or
                                                                                  (None, None))],
              bool(r.get("significant"))) for r in cells], metric),
            f"change of {metric} from the reference per preprocessing cell")
    summary = section.get("summary") or {}
    knobs = None
    if summary.get("knobs"):
        knobs = Table(["knob", "worst cell", "change", "p (Holm)"],
                      [[str(k["knob"]), str(k["worst_cell"]), _fmt_change(_number(k["delta"]), metric),
                        p_value(k.get("p_adjusted"))] for k in summary["knobs"]], first_numeric=2,
                      caption="Knobs ranked by their worst cell.")
    reference = rows[0]
    significant = summary.get("significant") or []
    headline = (f"Reference {metric} {_fmt(reference['metrics'].get(metric), metric)} on {section.get('images')} "
                f"images; {len(significant)} of {len(rows) - 1} cells change it significantly"
                + (": " + ", ".join(significant) if significant else "."))
    parity = section.get("parity")
    parity_text, passed, disagreements = None, True, None
    if isinstance(parity, Mapping):
        passed = bool(parity.get("passed"))
        parity_text = (f"Serving parity {'PASS' if passed else 'FAIL'}: {parity.get('serving')} agrees with the reference "
                       f"on {_percent(parity.get('agreement'))} of {parity.get('images')} images (minimum "
                       f"{_percent(parity.get('min_agreement'))}); largest logit difference "
                       f"{_number(parity.get('max_logit_diff')):.3g}.")
        listed = parity.get("disagreements") or []
        if listed:
            disagreements = Table(["image", "reference", "serving", "max logit diff"],
                                  [[str(d["path"]), str(d["reference"]), str(d["serving"]),
                                    f"{_number(d['max_logit_diff']):.3g}"] for d in listed[:_SKIPPED_SHOWN]],
                                  first_numeric=3, caption=f"{len(listed)} image(s) where the serving prediction "
                                                           f"differs from the reference's.")
    return SkewView(metric, headline, table, chart, knobs, [str(n) for n in section.get("notes") or []],
                    parity_text, passed, disagreements)


def _image(base_dir: Path, relative: Any) -> str | None:
    """A gallery PNG as a data URI; only PNG files inside the report folder are read, so a crafted
    scorecard cannot pull other local files into the page."""
    if not isinstance(relative, str) or not relative:
        return None
    root = base_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _gallery(entries: Sequence[Any], base_dir: Path) -> list[GalleryItem]:
    items = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        key = f"{entry.get('perturbation')}@{entry.get('severity')}"
        items.append(GalleryItem(caption=str(entry.get("caption") or ""), pass_label=_label(key),
                                 path=str(entry.get("path") or ""), sample_id=entry.get("sample_id"),
                                 clean=_image(base_dir, entry.get("clean_image")),
                                 perturbed=_image(base_dir, entry.get("perturbed_image"))))
    return items


def _skipped(card: Scorecard) -> Table | None:
    skipped = (card.dataset or {}).get("skipped") or []
    if not skipped:
        return None
    rows = [[str(s.get("path")), str(s.get("reason"))] for s in skipped[:_SKIPPED_SHOWN]]
    more = len(skipped) - _SKIPPED_SHOWN
    caption = f"{len(skipped)} file{'s' if len(skipped) > 1 else ''} could not be read" + (f"; the first {_SKIPPED_SHOWN} are listed, all are in "
                                                          f"{SCORECARD_FILE}" if more > 0 else "") + "."
    return Table(["file", "reason"], rows, first_numeric=2, caption=caption)


# --- backgrounds and cues (the `background` and `cue` family summaries) -----------------------------------

@dataclass
class Probes:
    """The background and cue section: example sheets, the variants table, the gap and the cue conflict."""

    examples: list[EmbeddedFigure]
    headline: list[tuple[str, str, str]]  # (label, value, note) tiles
    variants: Table | None
    cues: Table | None
    notes: list[str]


_BACKGROUND_ORDER = ("only_fg", "no_fg", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")
_VARIANT_MEANING = {
    "only_fg": "object on grey", "no_fg": "object inpainted away", "only_bg_t": "object filled with background tiles",
    "mixed_same": "on a same-class background", "mixed_rand": "on a random background",
    "mixed_next": "on the next class's background",
}


def _interval(ci: Any, show: Any) -> str:
    """` [low, high]` with `show` formatting each end, or nothing when there is no finite interval."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(math.isfinite(_number(v)) for v in ci):
        return f" [{show(ci[0])}, {show(ci[1])}]"
    return ""


def _with_ci(value: Any, ci: Any, metric: str) -> str:
    return _fmt(value, metric) + _interval(ci, lambda v: _fmt(v, metric))


def _change_with_ci(value: Any, ci: Any, metric: str) -> str:
    return _fmt_change(_number(value), metric) + _interval(ci, lambda v: _fmt_change(_number(v), metric))


def _probes(card: Scorecard, base_dir: Path) -> Probes | None:
    """The section, or None when the run had no background or cue perturbation."""
    summaries = card.summaries or {}
    background = summaries.get("background") if isinstance(summaries.get("background"), Mapping) else {}
    cue = summaries.get("cue") if isinstance(summaries.get("cue"), Mapping) else {}
    entries = (card.breakdowns or {}).get("probe_examples") or []
    examples = []
    for entry in entries:
        if isinstance(entry, Mapping) and (uri := _image(base_dir, entry.get("image"))):
            examples.append(EmbeddedFigure(uri, f"sample {entry.get('sample_id')}: "
                                                f"{', '.join(map(str, entry.get('variants') or []))}"))
    if not background and not cue and not examples:
        return None
    metric = str(background.get("metric") or cue.get("metric") or card.main_metric)
    unit = "top1" if metric == "object_mIoU" else metric  # fractions either way
    headline = []
    if "bg_gap" in background:
        interval = _interval(background.get("bg_gap_ci"), lambda v: _fmt_change(_number(v), unit))
        headline.append(("background gap", _fmt_change(_number(background["bg_gap"]), unit),
                         f"{metric}: mixed_same − mixed_rand" + (f", 95% CI{interval}" if interval else "")))
    if "shape_bias" in cue:
        note = f"{cue.get('shape_decisions', 0)} shape / {cue.get('texture_decisions', 0)} texture decisions"
        headline.append(("shape bias", _with_ci(cue["shape_bias"], cue.get("shape_bias_ci"), "top1"), note))
    if "texture_reliance" in cue:
        headline.append(("texture reliance", _with_ci(cue["texture_reliance"], cue.get("texture_reliance_ci"), "ratio"),
                         "share of clean kept under patch_shuffle k=4"))
    rows = []
    for name in _BACKGROUND_ORDER:
        if name in background:
            rows.append([name, _VARIANT_MEANING[name], _fmt(background[name], unit),
                         _change_with_ci(background.get(f"{name}_vs_clean"), background.get(f"{name}_vs_clean_ci"), unit)])
    variants = None
    if rows:
        chance = f"; chance is {_fmt(background['chance'], unit)}" if "chance" in background else ""
        variants = Table(["variant", "what the model sees", metric, "vs clean [95% CI]"], rows, first_numeric=2,
                         caption=f"{metric} on each background variant, on the {background.get('images', '')} images "
                                 f"every variant scored (clean {_fmt(background.get('clean'), unit)}{chance}).")
    cue_rows = [[name, _fmt(cue[name], unit)] for name in ("silhouette", "edges") if name in cue]
    for k, value in (cue.get("patch_shuffle") or {}).items():
        cue_rows.append([f"patch_shuffle {k}", _fmt(value, unit)])
    if "shape_bias" in cue:
        cue_rows.append(["texture_fill: shape bias", _with_ci(cue["shape_bias"], cue.get("shape_bias_ci"), "top1")])
    cues = (Table(["view", metric], cue_rows, caption="Shape-only views (silhouette, edges), texture-only views "
                  "(patch_shuffle), and the cue conflict (texture_fill: an object's silhouette filled with another "
                  "class's texture; shape bias = shape / (shape + texture) decisions, Geirhos et al. 2019).")
            if cue_rows else None)
    notes = []
    if background.get("images_with_empty_foreground"):
        notes.append(f"{background['images_with_empty_foreground']} image(s) had an empty object mask and were left "
                     "out of the background passes.")
    if background.get("mask_dilation"):
        notes.append(f"Object masks were grown by {background['mask_dilation']} px before compositing (a halo of the "
                     "original surroundings travels with the object).")
    for name, facts in (background.get("background_false_positives") or {}).items():
        notes.append(f"{name}: {facts.get('count')} background false positives against {facts.get('clean')} clean "
                     f"({facts.get('added'):+d}).")
    return Probes(examples=examples, headline=headline, variants=variants, cues=cues, notes=notes)


# --- adversarial patches --------------------------------------------------------------------------

_PATCHES = ("adversarial_patch", "random_patch")


@dataclass
class PatchImage:
    label: str
    uri: str | None  # data URI of the fitted patch's PNG, None when the file is not in the report folder


@dataclass
class AdversarialSection:
    """The `adversarial` family summary as the page shows it: the patches, success against area for the
    attack and its control, the numbers per area, and the gallery's patch failures."""

    patches: list[PatchImage]
    curve: EmbeddedFigure | None
    table: Table
    gallery: list[GalleryItem]
    notes: list[str]


def adversarial_section(card: Scorecard, base_dir: Path) -> AdversarialSection | None:
    """The report section of the `adversarial` family summary, or None when the run had no patches."""
    summary = (card.summaries or {}).get("adversarial")
    if not isinstance(summary, Mapping) or not summary.get("areas"):
        return None
    metric = str(summary.get("metric") or "metric")
    areas = [a for a in summary["areas"] if isinstance(a, Mapping)]
    patches = []
    for name, info in (summary.get("patches") or {}).items():
        for key, file in sorted((info.get("files") or {}).items(), key=lambda kv: _number(kv[0])):
            uri = _image(base_dir, f"prepared/{name}/{file}")
            if uri is None and info.get("state_dir"):
                uri = _image(base_dir, os.path.relpath(Path(info["state_dir"]) / file, base_dir))
            patches.append(PatchImage(f"{name}, {100 * _number(key):g}%", uri))
    rows = []
    for a in areas:
        area = f"{100 * _number(a['area']):g}%" if a.get("area") is not None else f"severity {a.get('severity')}"
        rows.append([area, str(a.get("images")), _entry_with_ci(a.get("clean"), metric)]
                    + [_entry_with_ci((a.get(n) or {}).get("metric"), metric) for n in _PATCHES]
                    + [_entry_with_ci(a.get("effect"), metric, change=True)]
                    + [_entry_with_ci((a.get(n) or {}).get("success"), "top1") for n in _PATCHES])
    table = Table(["area", "held-out images", f"clean {metric}", f"{metric} adversarial", f"{metric} random",
                   "patch effect", "success adversarial", "success random"], rows, first_numeric=1,
                  caption=f"Success: {summary.get('success')}. Patch effect: {summary.get('effect')}. "
                          "95% bootstrap intervals over images.")
    series = {}
    for name in _PATCHES:
        points = [(_number(a.get("area")), (a.get(name) or {}).get("success") or {}) for a in areas if name in a]
        points = [(x, s) for x, s in points if math.isfinite(x)]
        if points:
            series[name] = ([x for x, _ in points], [_number(s.get("value")) for _, s in points],
                            [s.get("ci") for _, s in points])
    curve = EmbeddedFigure(figures.success_curves(series), "attack success rate against patch area") if series else None
    gallery = [g for g in _gallery((card.breakdowns or {}).get("gallery") or [], base_dir)
               if g.pass_label.split(" @ ")[0] in _PATCHES]
    notes = [f"Scored on the {summary.get('held_out_images')} held-out images; the patches were fitted on "
             f"{summary.get('fit_images') if summary.get('fit_images') is not None else 'other'} images "
             f"(fit fraction {summary.get('fit_fraction')})."]
    if summary.get("target"):
        notes.append(f"Targeted: {summary['target']}.")
    if summary.get("patch_from"):
        notes.append(f"Patches from {summary['patch_from']} (transfer: fitted on another model).")
    return AdversarialSection(patches, curve, table, gallery, notes)


def _entry_with_ci(entry: Any, metric: str, change: bool = False) -> str:
    """`71.2% (65.0% – 77.1%)` from a summary entry `{value, ci}`."""
    if not isinstance(entry, Mapping):
        return "–"

    def fmt(value: Any) -> str:
        return _fmt_change(_number(value), metric) if change else _fmt(value, metric)

    text = fmt(entry.get("value"))
    ci = entry.get("ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(math.isfinite(_number(v)) for v in ci):
        text += f" ({fmt(ci[0])} – {fmt(ci[1])})"
    return text
