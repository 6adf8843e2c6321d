"""The `adversarial` family summary: attack success of the fitted patch beside its random control.

Computed after the loop from the per-image records, on the held-out images only (those the patches were
not fitted on: the images the patch passes scored). Per area:

- the task's main metric clean (on the same held-out images, so the drop is not inflated by the fit
  images), under `adversarial_patch` and under `random_patch`, and the *patch effect* = metric under
  the random patch - metric under the adversarial patch: what the patch's content does beyond covering
  that much of the image;
- the *attack success rate* of both: classification, the share of clean-correct images the patch turns
  wrong (targeted: into the target class, among clean-correct images of other classes); detection, the
  share of objects found on the clean image (IoU 0.5, score threshold; of the target category when set)
  that are no longer found; segmentation, the share of correct pixels lost outside the patch (targeted:
  the share of scored non-target pixels turned into the target).

Every number gets a 95% percentile-bootstrap interval over images, all from the same resamples (so the
effect's interval is paired). `_statistics` is the one place that turns records into per-resample
numbers; it will give way to the task statistics functions once they exist (`SummaryContext.statistics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import pandas as pd

from visionstress.family_summaries import register_family_summary

from .bootstrap import bootstrap_ci

ATTACK = "adversarial_patch"
CONTROL = "random_patch"
CLEAN = "clean"
StatFn = Callable[[np.ndarray], dict[str, np.ndarray]]


def adversarial_summary(context: Any) -> dict[str, Any]:
    """The family summary (see the module docstring) from a `SummaryContext`."""
    records: pd.DataFrame = context.records
    prepared = dict(context.prepared or {})
    info = prepared.get(ATTACK) or prepared.get(CONTROL) or {}
    target = info.get("target")
    threshold = float((context.options or {}).get("score_threshold", 0.5))
    clean = _by_id(records[records["perturbation"] == CLEAN])
    severities = sorted(set(records.loc[records["perturbation"].isin([ATTACK, CONTROL]), "severity"].astype(int)))
    areas = []
    for severity in severities:
        frames = {name: _by_id(records[(records["perturbation"] == name) & (records["severity"] == severity)])
                  for name in (ATTACK, CONTROL)}
        present = [name for name, frame in frames.items() if len(frame)]
        ids = clean.index
        for name in present:
            ids = ids.intersection(frames[name].index)
        if len(ids) == 0:
            continue
        passes = {CLEAN: clean.loc[ids]} | {name: frames[name].loc[ids] for name in present}
        stat = _area_statistics(context, passes, target, threshold)
        point = {k: float(v[0]) for k, v in stat(np.ones((1, len(ids)))).items()}
        ci = bootstrap_ci(stat, len(ids), context.bootstrap, context.seed) if context.bootstrap else {}
        entry: dict[str, Any] = {"severity": severity, "area": _area(info, severity), "images": int(len(ids)),
                                 "clean": _value(point, ci, "metric_clean")}
        for name in present:
            entry[name] = {"metric": _value(point, ci, f"metric_{name}"),
                           "success": _value(point, ci, f"success_{name}")}
        if len(present) == 2:
            entry["effect"] = _value(point, ci, "effect")
        areas.append(entry)
    return {
        "metric": context.main_metric, "target": target, "areas": areas,
        "held_out_images": max((a["images"] for a in areas), default=0),
        "fit_images": info.get("fit_images"), "fit_fraction": info.get("fit_fraction"),
        "source": info.get("source"), "patch_from": info.get("patch_from"),
        "success": _SUCCESS[context.task][target is not None],
        "effect": "metric under random_patch - metric under adversarial_patch (higher: the content, not the "
                  "occlusion, does the damage)",
        "patches": {name: _patch_files(prepared[name]) for name in (ATTACK, CONTROL) if name in prepared},
    }


_SUCCESS = {
    "classification": ("clean-correct images the patch turns wrong",
                       "clean-correct images of other classes the patch turns into the target"),
    "detection": ("objects found on the clean image (IoU 0.5, score threshold) no longer found",
                  "objects of the target category found on the clean image no longer found"),
    "segmentation": ("correct pixels outside the patch lost",
                     "scored pixels of other classes turned into the target"),
}


def _by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop_duplicates("sample_id", keep="last").set_index("sample_id").sort_index()


def _area(info: Mapping[str, Any], severity: int) -> float | None:
    areas = info.get("area_by_severity") or {}
    value = areas.get(str(severity), areas.get(severity))
    return None if value is None else float(value)


def _value(point: Mapping[str, float], ci: Mapping[str, tuple[float, float]], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {"value": point.get(key)}
    if key in ci:
        out["ci"] = list(ci[key])
    return out


def _patch_files(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Where the report finds the patch images: the state folder and the PNG per area."""
    return {"state_dir": summary.get("state_dir"), "files": dict(summary.get("files") or {}),
            "resolution": dict(summary.get("resolution") or {})}


def _area_statistics(context: Any, passes: Mapping[str, pd.DataFrame], target: Mapping[str, Any] | None,
                     threshold: float) -> StatFn:
    """Every statistic of one area under image weights `[r, n]`: the main metric per pass, success rates
    of the attack and the control, and the effect."""
    clean = passes[CLEAN]
    metric = {name: _statistics(context, frame) for name, frame in passes.items()}
    success = {name: _success_counts(context.task, clean, frame, target, threshold)
               for name, frame in passes.items() if name != CLEAN}

    def stat(weights: np.ndarray) -> dict[str, np.ndarray]:
        out = {f"metric_{name}": fn(weights) for name, fn in metric.items()}
        for name, (hits, base) in success.items():
            out[f"success_{name}"] = _ratio(weights @ hits, weights @ base)
        if ATTACK in passes and CONTROL in passes:
            out["effect"] = out[f"metric_{CONTROL}"] - out[f"metric_{ATTACK}"]
        return out

    return stat


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.full_like(numerator, np.nan, dtype=np.float64),
                     where=denominator > 0)


def _statistics(context: Any, frame: pd.DataFrame) -> Callable[[np.ndarray], np.ndarray]:
    """The task's main metric of one pass's records (sample-id order) under image weights `[r, n]`.

    The one place to switch to the shared task statistics (`context.statistics(columns)[main]`) once every
    task provides them."""
    main = context.main_metric
    if context.task == "classification":
        correct = frame["correct"].to_numpy(dtype=np.float64)
        return lambda weights: (weights @ correct) / weights.sum(axis=1)
    if context.task == "segmentation":
        from .segmentation import _metrics_from_totals

        counts = [np.stack(frame[c].to_numpy()).astype(np.float64)
                  for c in ("intersection", "gt_pixels", "pred_pixels")]
        return lambda weights: np.asarray(_metrics_from_totals(*(weights @ c for c in counts))[main], np.float64)
    if context.task == "detection":
        from .coco_matching import match_table_from_records

        table, order = match_table_from_records(frame.reset_index())
        return lambda weights: np.asarray(table.coco_metrics(weights[:, order])[main], np.float64)
    raise ValueError(f"adversarial summary: no statistics for task {context.task!r}")


def _success_counts(task: str, clean: pd.DataFrame, patched: pd.DataFrame, target: Mapping[str, Any] | None,
                    threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per image (hits, base): the success rate of a resample is sum(w * hits) / sum(w * base)."""
    if task == "classification":
        base = clean["correct"].to_numpy(dtype=bool)
        if target is None:
            hits = base & ~patched["correct"].to_numpy(dtype=bool)
        else:
            base &= clean["label"].to_numpy() != int(target["index"])
            hits = base & (patched["prediction"].to_numpy() == int(target["index"]))
        return hits.astype(np.float64), base.astype(np.float64)
    if task == "detection":
        category = None if target is None else int(target["category_id"])
        found_clean = _found(clean, threshold, category)
        found = _found(patched, threshold, category)
        return np.maximum(found_clean - found, 0.0), found_clean
    if task == "segmentation":
        inter, gt, pred = (np.stack(patched[c].to_numpy()).astype(np.float64)
                           for c in ("intersection", "gt_pixels", "pred_pixels"))
        if target is not None:
            t = int(target["index"])
            return pred[:, t] - inter[:, t], gt.sum(1) - gt[:, t]
        clean_inter, clean_gt = (np.stack(clean[c].to_numpy()).astype(np.float64)
                                 for c in ("intersection", "gt_pixels"))
        # correct pixels expected among the pixels the patched pass scores, had the patch only covered some
        expected = _ratio(clean_inter.sum(1), clean_gt.sum(1)) * gt.sum(1)
        expected = np.nan_to_num(expected)
        return np.maximum(expected - inter.sum(1), 0.0), expected
    raise ValueError(f"adversarial summary: no success rate for task {task!r}")


def _found(frame: pd.DataFrame, threshold: float, category: int | None) -> np.ndarray:
    """Objects found per image: detections at or above the threshold matched at IoU 0.5 (COCOeval's
    matching, bit 0), of `category` when given."""
    out = np.zeros(len(frame))
    for i, (score, match, ignore, cat) in enumerate(zip(frame["dt_score"], frame["dt_match"], frame["dt_ignore"],
                                                        frame["dt_category"])):
        score = np.asarray(score, np.float64)
        hit = ((np.asarray(match, np.uint16) & 1) != 0) & ((np.asarray(ignore, np.uint16) & 1) == 0)
        hit &= score >= threshold
        if category is not None:
            hit &= np.asarray(cat) == category
        out[i] = hit.sum()
    return out


register_family_summary("adversarial", adversarial_summary)
