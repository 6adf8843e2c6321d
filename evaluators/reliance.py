"""What a model relies on: the summaries of the `background` and `cue` perturbation families.

Computed after the loop from the per-image records (visionstress.family_summaries):

- background (Xiao et al. 2020): the metric under each variant beside the clean one on the same images;
  `bg_gap` = metric under `mixed_same` − under `mixed_rand` (how much a matching background helps);
  `only_fg` against clean (foreground reliance); `only_bg_t` and `no_fg` against chance (what the
  background alone gives); for detection the TIDE background false positives each variant adds.
- cue (Geirhos et al. 2019): `shape_bias` = shape decisions / (shape + texture decisions) on the
  `texture_fill` cue conflicts; `texture_reliance` = the share of the clean metric kept under
  `patch_shuffle` at k = 4 (only local texture left: 1 = texture alone suffices, chance / clean = the
  model needs the global shape); the metric on `silhouette` and `edges`.

Intervals are paired percentile bootstraps over images: every variant was run on the same images, so one
resample of the images is applied to both sides of a difference. The metric under a resample comes from
`_weighted_metric`. What differs by task comes from the task module (visionstress.tasks): the metric
(`Task.reliance_metric`: the main one; for segmentation the mIoU over the object classes, since the
background classes are what the perturbations replace), its weighted form and the chance level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from visionstress.family_summaries import SummaryContext, register_family_examples, register_family_summary

from .bootstrap import bootstrap_ci

CLEAN = "clean"
BACKGROUND_VARIANTS = ("only_fg", "no_fg", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")
PATCH_SHUFFLE_GRID = (2, 3, 4, 6, 8)
TEXTURE_RELIANCE_K4 = 3
"""patch_shuffle's severity with a 4 x 4 grid."""

WeightedMetric = Callable[[np.ndarray], np.ndarray]
"""Image weights `[r, n]` -> the metric under each weighting `[r]`."""


# --- one pass's records ------------------------------------------------------------------------------------

def _pass(records: pd.DataFrame, perturbation: str, severity: int | None = None) -> pd.DataFrame | None:
    """The records of one pass (the lowest severity run when `severity` is None), by sample id."""
    rows = records[records["perturbation"] == perturbation]
    if rows.empty:
        return None
    chosen = int(rows["severity"].min()) if severity is None else severity
    rows = rows[rows["severity"] == chosen]
    return None if rows.empty else rows.sort_values("sample_id").drop_duplicates("sample_id")


def _on(rows: pd.DataFrame, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The pass's columns for `ids` (sorted sample ids all present in `rows`), list columns stacked."""
    picked = rows.set_index("sample_id").loc[ids]
    out = {"sample_id": ids}
    for name in picked.columns:
        values = picked[name].to_numpy()
        if len(values) and isinstance(values[0], (list, tuple, np.ndarray)):
            try:
                values = np.stack([np.asarray(v) for v in values])
            except ValueError:  # ragged (detection match lists): kept per image
                pass
        out[name] = values
    return out


def _task(context: SummaryContext) -> Any:
    from visionstress.tasks import get_task

    return get_task(context.task)


def _weighted_metric(context: SummaryContext, columns: Mapping[str, np.ndarray]) -> WeightedMetric | None:
    """The summary metric of one pass under image weights, or None where this task cannot resample it:
    the task's own (`Task.weighted_reliance_metric`), else its statistics function's main metric."""
    own = _task(context).weighted_reliance_metric(columns, context.options, context.class_names)
    if own is not None:
        return own
    if context.statistics is not None:
        stat = context.statistics(columns)
        return lambda w: np.asarray(stat(w)[context.main_metric], dtype=np.float64)
    return None


def _metric_name(context: SummaryContext) -> str:
    return _task(context).reliance_metric(context.options)


def _row_metric(context: SummaryContext, perturbation: str, severity: int | None, metric: str | None = None) -> float:
    for row in context.rows:
        if row["perturbation"] == perturbation and (severity is None or row["severity"] == severity):
            return float(row["metrics"].get(metric or context.main_metric, np.nan))
    return float("nan")


def _paired(context: SummaryContext, fn: WeightedMetric, n: int) -> tuple[float, list[float] | None]:
    """`fn` on all `n` images and its 95% bootstrap interval (None without resamples)."""
    value = float(fn(np.ones((1, n)))[0])
    if context.bootstrap <= 0 or n < 2:
        return value, None
    low, high = bootstrap_ci(lambda weights: {"value": fn(weights)}, n, context.bootstrap, context.seed)["value"]
    return value, [low, high]


class _Passes:
    """The passes of a summary, each restricted to the images all of them scored (the background passes
    skip images with an empty object mask), so that every number of a summary is on the same images."""

    def __init__(self, context: SummaryContext, names: Sequence[tuple[str, int | None]]) -> None:
        self.context = context
        rows = {name: found for name, severity in names if (found := _pass(context.records, name, severity)) is not None}
        if rows:
            common = None
            for found in rows.values():
                ids = found["sample_id"].to_numpy()
                common = ids if common is None else np.intersect1d(common, ids)
            rows = {name: found[found["sample_id"].isin(common)] for name, found in rows.items()}
        self.rows = {name: found for name, found in rows.items() if not found.empty}
        self.images = 0 if not self.rows else len(next(iter(self.rows.values())))

    def metric(self, name: str, other: str | None = None, ratio: bool = False) -> tuple[WeightedMetric | None, int]:
        """The weighted metric of `name` (minus `other`'s, or divided by it) on the images both passes scored."""
        if name not in self.rows or (other is not None and other not in self.rows):
            return None, 0
        ids = self.rows[name]["sample_id"].to_numpy()
        if other is not None:
            ids = np.intersect1d(ids, self.rows[other]["sample_id"].to_numpy())
        if ids.size == 0:
            return None, 0
        first = _weighted_metric(self.context, _on(self.rows[name], ids))
        if first is None or other is None:
            return first, int(ids.size)
        second = _weighted_metric(self.context, _on(self.rows[other], ids))
        if second is None:
            return None, int(ids.size)
        if ratio:
            return (lambda w: first(w) / second(w)), int(ids.size)
        return (lambda w: first(w) - second(w)), int(ids.size)

    def value(self, name: str) -> float:
        """The metric of `name` on its own images, from the records (or the scorecard row, for tasks the
        records cannot resample)."""
        fn, n = self.metric(name)
        if fn is not None:
            return float(fn(np.ones((1, n)))[0])
        return _row_metric(self.context, name, None if name not in self.rows
                           else int(self.rows[name]["severity"].iloc[0]))

    def difference(self, name: str, other: str, ratio: bool = False) -> tuple[float | None, list[float] | None]:
        """`name` − `other` (or `name` / `other`) with its paired interval; from the scorecard rows, without an
        interval, for a task whose records cannot be resampled here."""
        if name not in self.rows or other not in self.rows:
            return None, None
        fn, n = self.metric(name, other, ratio)
        if fn is None:
            a, b = self.value(name), self.value(other)
            return (a / b if ratio else a - b), None
        return _paired(self.context, fn, n)


def _with_interval(out: dict[str, Any], key: str, value: float | None, interval: list[float] | None) -> None:
    if value is None:
        return
    out[key] = value
    if interval is not None:
        out[f"{key}_ci"] = interval


# --- the background family -----------------------------------------------------------------------------

def background_summary(context: SummaryContext) -> dict[str, Any]:
    """bg_gap, foreground reliance, background-only scores against chance, and (detection) the background
    false positives each variant creates."""
    passes = _Passes(context, [(CLEAN, 0)] + [(v, None) for v in BACKGROUND_VARIANTS])
    present = [v for v in BACKGROUND_VARIANTS if v in passes.rows]
    out: dict[str, Any] = {"metric": _metric_name(context), "variants": present, "images": passes.images}
    for name in present:
        out[name] = passes.value(name)
        _with_interval(out, f"{name}_vs_clean", *passes.difference(name, CLEAN))
    if CLEAN in passes.rows:
        out["clean"] = passes.value(CLEAN)
    _with_interval(out, "bg_gap", *passes.difference("mixed_same", "mixed_rand"))
    chance = _task(context).chance(context.class_names)
    if chance is not None:
        out["chance"] = chance
        for name in ("only_bg_t", "no_fg"):
            if name in out:
                out[f"{name}_above_chance"] = out[name] - out["chance"]
    added = _background_false_positives(context, present)  # from error-type breakdowns (detection)
    if added:
        out["background_false_positives"] = added
    per_image = {name: _row_metric(context, name, _severity(context, name), "fp_per_image")
                 for name in [CLEAN, *present]}
    if any(np.isfinite(v) for v in per_image.values()):
        out["fp_per_image"] = per_image
    prepared = _bank_facts(context)
    if prepared:
        out.update(prepared)
    return out


def _background_false_positives(context: SummaryContext, variants: Sequence[str]) -> dict[str, dict[str, int]]:
    """TIDE background errors per variant beside the clean pass's: false detections on nothing."""
    errors = context.breakdowns.get("error_types") or {}
    clean = errors.get(f"{CLEAN}@0", {}).get("background", {}).get("count")
    out = {}
    for name in variants:
        count = errors.get(f"{name}@{_severity(context, name)}", {}).get("background", {}).get("count")
        if count is not None and clean is not None:
            out[name] = {"count": int(count), "clean": int(clean), "added": int(count) - int(clean)}
    return out


def _severity(context: SummaryContext, name: str) -> int:
    """The severity a summary reads `name` at (the lowest one run)."""
    return 0 if name == CLEAN else int(_pass(context.records, name)["severity"].iloc[0])


def _bank_facts(context: SummaryContext) -> dict[str, Any]:
    for name, facts in (context.prepared or {}).items():
        if name in BACKGROUND_VARIANTS + ("silhouette", "texture_fill") and isinstance(facts, Mapping) and facts:
            return {"images_with_empty_foreground": facts.get("empty_foreground", 0),
                    "donor_backgrounds": facts.get("backgrounds", 0), "mask_dilation": facts.get("mask_dilation", 0)}
    return {}


# --- the cue family ------------------------------------------------------------------------------------

def texture_classes(seed: int, severity: int, sample_ids: np.ndarray, labels: np.ndarray,
                    texture_members: Mapping[str, Sequence[int]]) -> np.ndarray:
    """The class of the texture `texture_fill` gave each image: the same donor draw as the perturbation's,
    from the prepared bank's texture members (`prepared_summary()["texture_members"]`)."""
    import torch

    from visionstress.perturbations.background import choose_donors, donor_draw

    ids = torch.tensor(np.asarray(sample_ids, dtype=np.int64))
    member_ids = torch.as_tensor(list(texture_members["sample_ids"]), dtype=torch.int64)
    member_classes = torch.as_tensor(list(texture_members["classes"]), dtype=torch.int64)
    u = donor_draw(seed, "texture_fill", severity, ids)
    donors = choose_donors(u, ids, torch.tensor(np.asarray(labels, dtype=np.int64)), "other", member_ids,
                           member_classes)
    return member_classes[donors].numpy()


def shape_bias(predictions: np.ndarray, shape: np.ndarray, texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: (decided for the shape, decided for the texture), images whose two cues agree excluded."""
    conflict = shape != texture
    return (predictions == shape) & conflict, (predictions == texture) & conflict


def cue_summary(context: SummaryContext) -> dict[str, Any]:
    """shape_bias with its interval, texture reliance (patch_shuffle k=4 against clean), silhouette and edges."""
    passes = _Passes(context, [(CLEAN, 0), ("patch_shuffle", TEXTURE_RELIANCE_K4), ("silhouette", None),
                               ("edges", None)])
    out: dict[str, Any] = {"metric": _metric_name(context), "images": passes.images}
    if CLEAN in passes.rows:
        out["clean"] = passes.value(CLEAN)
    for name in ("silhouette", "edges"):
        if name in passes.rows:
            out[name] = passes.value(name)
    if "patch_shuffle" in passes.rows:
        out["patch_shuffle_k4"] = passes.value("patch_shuffle")
        _with_interval(out, "patch_shuffle_k4_vs_clean", *passes.difference("patch_shuffle", CLEAN))
        with np.errstate(invalid="ignore", divide="ignore"):
            _with_interval(out, "texture_reliance", *passes.difference("patch_shuffle", CLEAN, ratio=True))
    shuffled = context.records[context.records["perturbation"] == "patch_shuffle"]
    if not shuffled.empty:
        grid = dict(zip(range(1, 6), PATCH_SHUFFLE_GRID))
        out["patch_shuffle"] = {f"k={grid[int(s)]}": _Passes(context, [("patch_shuffle", int(s))]).value("patch_shuffle")
                                for s in sorted(shuffled["severity"].unique())}
    out.update(_shape_bias(context))
    return out


def _shape_bias(context: SummaryContext) -> dict[str, Any]:
    rows = _pass(context.records, "texture_fill")
    members = (context.prepared or {}).get("texture_fill", {}).get("texture_members")
    if rows is None or not members or not {"label", "prediction"} <= set(rows.columns):
        return {}  # a shape decision needs one label and one prediction per image (classification)
    ids = rows["sample_id"].to_numpy()
    labels = rows["label"].to_numpy()
    texture = texture_classes(context.seed, int(rows["severity"].iloc[0]), ids, labels, members)
    by_shape, by_texture = (a.astype(np.float64) for a in shape_bias(rows["prediction"].to_numpy(), labels, texture))
    decided = by_shape + by_texture
    out: dict[str, Any] = {"cue_conflict_images": int((labels != texture).sum()),
                           "shape_decisions": int(by_shape.sum()), "texture_decisions": int(by_texture.sum())}
    if decided.sum() == 0:
        return out

    def bias(w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ by_shape) / (w @ decided)

    value, interval = _paired(context, bias, len(ids))
    _with_interval(out, "shape_bias", value, interval)
    return out


register_family_summary("background", background_summary)
register_family_summary("cue", cue_summary)


def _examples(passes: Sequence[tuple[Any, int]], batch: Any, seed: int, out_dir: Any) -> list[dict[str, Any]]:
    from visionstress.variant_examples import variant_examples

    return variant_examples(passes, batch, seed, out_dir)


register_family_examples("background", _examples)
register_family_examples("cue", _examples)
