"""The report's figures, drawn with matplotlib and embedded as PNG data URIs.

The object-oriented API (`Figure` + Agg canvas) is used rather than pyplot, so rendering a report
never changes the caller's matplotlib backend or leaves figures open. Every label is plain text:
dollar signs are escaped so a class named `a$b$` is not read as mathtext.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
CLEAN_COLOUR = "#4a6fa5"
WORST_COLOUR = "#c8553d"
_STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.spines.top": False, "axes.spines.right": False}
_MAX_TICK_LABELS = 30
_MAX_CELL_NUMBERS = 12


def text(value: Any) -> str:
    """A label matplotlib draws literally (no mathtext)."""
    return str(value).replace("$", r"\$")


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def data_uri(figure: Figure) -> str:
    """The figure as a `data:image/png;base64,...` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _styled(draw):
    """Run a drawing function with the report's rcParams (they apply when artists are created)."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_STYLE):
            return draw(*args, **kwargs)

    return wrapper


@_styled
def degradation_curve(family: str, curves: dict[str, dict[int, float]], clean: float, metric: str,
                      y_max: float, percent: bool) -> str:
    """One family's small multiple: the main metric against severity, a line per perturbation, the
    clean value as a dashed line; `y_max` is shared by all families so the panels compare. Its margins
    are fixed (the labels are short and of one font size): constrained layout took a third of the time
    of each of these panels, and a report draws one per family."""
    figure = _figure(3.4, 2.5, layout=None)
    figure.subplots_adjust(left=0.16, right=0.97, bottom=0.17, top=0.9)
    ax = figure.add_subplot()
    scale = 100.0 if percent else 1.0
    if math.isfinite(clean):
        ax.axhline(clean * scale, color="#555555", linestyle="--", linewidth=1, label="clean")
    for name, by_severity in curves.items():
        severities = sorted(by_severity)
        ax.plot(severities, [by_severity[s] * scale for s in severities], marker="o", markersize=3.5,
                linewidth=1.5, label=text(name))
    ax.set_title(text(family))
    ax.set_xlabel("severity")
    ax.set_ylabel(text(f"{metric} (%)" if percent else metric))
    ax.set_xticks(range(1, 6))
    ax.set_xlim(0.7, 5.3)
    ax.set_ylim(0, y_max * scale)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="best")
    return data_uri(figure)


@_styled
def confusion_matrices(panels: Sequence[tuple[str, np.ndarray]], class_names: Sequence[str]) -> str:
    """Side-by-side confusion matrices, colour = share of the true class (row-normalised), so a clean
    and a perturbed matrix read on the same scale; counts written in the cells of small matrices."""
    k = int(np.asarray(panels[0][1]).shape[0])
    side = min(4.6, 1.6 + 0.28 * k)
    figure = _figure(side * len(panels) + 0.6, side + 0.3)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (title, matrix) in zip(axes, panels):
        counts = np.asarray(matrix, dtype=np.float64)
        rows = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(text(title))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if k <= _MAX_TICK_LABELS:
            names = [text(n) for n in class_names] if len(class_names) == k else [str(i) for i in range(k)]
            ax.set_xticks(range(k), names, rotation=45, ha="right")
            ax.set_yticks(range(k), names)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if k <= _MAX_CELL_NUMBERS:
            for (i, j), value in np.ndenumerate(counts):
                if value:
                    ax.text(j, i, _count(value), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.6 else "#222222")
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="share of true class")
    return data_uri(figure)


@_styled
def reliability_diagrams(panels: Sequence[tuple[str, dict[str, list]]]) -> str:
    """Reliability diagrams (accuracy against confidence per bin, the diagonal being perfect
    calibration), one panel per pass; bar width is the bin, bar shade how many images fell in it."""
    figure = _figure(3.2 * len(panels), 3.3)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, diagram), colour in zip(axes, panels, (CLEAN_COLOUR, WORST_COLOUR)):
        edges = np.asarray(diagram["bin_edges"], dtype=np.float64)
        accuracy = np.array([np.nan if v is None else v for v in diagram["accuracy"]], dtype=np.float64)
        counts = np.asarray(diagram["count"], dtype=np.float64)
        filled = np.isfinite(accuracy)
        alphas = 0.35 + 0.65 * np.sqrt(counts / counts.max()) if counts.max() > 0 else np.ones_like(counts)
        for left, right, acc, alpha in zip(edges[:-1][filled], edges[1:][filled], accuracy[filled], alphas[filled]):
            ax.bar(left, acc, width=right - left, align="edge", color=colour, alpha=float(alpha),
                   edgecolor="white", linewidth=0.5)
        ax.plot([0, 1], [0, 1], color="#555555", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(text(f"{title}, {int(counts.sum())} images"))
        ax.set_aspect("equal")
    return data_uri(figure)


@_styled
def error_type_bars(panels: Sequence[tuple[str, dict[str, dict[str, float]]]]) -> str:
    """Detection errors by type (TIDE-style), clean beside the worst pass: how many of each, and how
    much AP fixing them would recover (ΔAP)."""
    types = list(dict.fromkeys(t for _, errors in panels for t in errors))
    figure = _figure(7.0, 2.6)
    count_ax, delta_ax = figure.subplots(1, 2)
    width = 0.8 / len(panels)
    y = np.arange(len(types))
    for n, ((title, errors), colour) in enumerate(zip(panels, (CLEAN_COLOUR, WORST_COLOUR))):
        counts = [float(errors.get(t, {}).get("count") or 0) for t in types]
        deltas = [_finite(errors.get(t, {}).get("delta_ap")) * 100 for t in types]
        offset = y - 0.4 + width * (n + 0.5)
        bars = count_ax.barh(offset, counts, height=width, color=colour, label=text(title))
        count_ax.bar_label(bars, fmt="%g", fontsize=7, padding=2)
        bars = delta_ax.barh(offset, deltas, height=width, color=colour, label=text(title))
        delta_ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    for ax, label in ((count_ax, "count"), (delta_ax, "ΔAP if fixed (points)")):
        ax.set_yticks(y, [text(t) for t in types])
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.margins(x=0.2)
    figure.legend(*count_ax.get_legend_handles_labels(), loc="outside upper center", ncols=len(panels),
                  fontsize=8, frameon=False)
    return data_uri(figure)


@_styled
def skew_deltas(cells: Sequence[tuple[str, float, float, float, bool]], metric: str) -> str:
    """Preprocessing skew: each cell's change of the main metric from the reference (points), worst at
    the top, with its 95% interval as a whisker; significant cells in the warning colour."""
    figure = _figure(7.0, 0.8 + 0.24 * len(cells))
    ax = figure.add_subplot()
    y = np.arange(len(cells))
    deltas = np.array([c[1] for c in cells], dtype=np.float64) * 100
    low = np.array([c[2] for c in cells], dtype=np.float64) * 100
    high = np.array([c[3] for c in cells], dtype=np.float64) * 100
    colours = [WORST_COLOUR if c[4] else "#9aa5b1" for c in cells]
    ax.barh(y, deltas, color=colours, height=0.7)
    whiskers = np.isfinite(low) & np.isfinite(high)
    ax.errorbar(deltas[whiskers], y[whiskers], xerr=[deltas[whiskers] - low[whiskers], high[whiskers] - deltas[whiskers]],
                fmt="none", ecolor="#333333", elinewidth=0.8, capsize=2)
    ax.axvline(0, color="#555555", linewidth=0.8)
    ax.set_yticks(y, [text(c[0]) for c in cells])
    ax.invert_yaxis()
    ax.set_xlabel(text(f"change of {metric} from the reference (points)"))
    ax.grid(axis="x", alpha=0.3)
    return data_uri(figure)


def _count(value: float) -> str:
    """A count short enough for a matrix cell (segmentation counts pixels: 1.2M, 45k)."""
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    return f"{value / 1e3:.0f}k" if value >= 1e4 else f"{int(value)}"


def _finite(value: Any) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else 0.0


@_styled
def success_curves(series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[Any]]]) -> str:
    """Attack success rate against patch area, a line per perturbation (the attack and its random
    control), with the 95% intervals as error bars: the gap between the lines is the attack."""
    figure = _figure(3.8, 2.6)
    ax = figure.add_subplot()
    for (name, (areas, values, intervals)), colour in zip(series.items(), (WORST_COLOUR, "#888888")):
        x = np.asarray(areas, dtype=np.float64) * 100
        y = np.asarray(values, dtype=np.float64) * 100
        low = np.array([_finite(ci[0]) * 100 if ci else v for ci, v in zip(intervals, y)])
        high = np.array([_finite(ci[1]) * 100 if ci else v for ci, v in zip(intervals, y)])
        ax.errorbar(x, y, yerr=[np.maximum(y - low, 0), np.maximum(high - y, 0)], marker="o", markersize=3.5,
                    linewidth=1.5, capsize=2, color=colour, label=text(name))
    ticks = sorted({round(100 * a, 6) for areas, _, _ in series.values() for a in areas})
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("patch area (% of the image or box)")
    ax.set_ylabel("attack success (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="best")
    return data_uri(figure)
