"""The semantic-segmentation evaluator: confusion on the device, per-image counts for records and intervals.

The engine calls `update` once per batch and pass with the ground truth *moved with the pixels*
(geometric perturbations mark uncovered pixels `ignore_index`) and the model's predictions, then
`finalize` once. Per batch, everything that scales with pixels stays on the device of the masks:

- the pass's `C x C` confusion (`torch.bincount` of `gt * C + pred` over valid pixels, int64);
- per-image intersection, GT and predicted pixel counts per class, from one batched bincount with
  per-image offsets; these `[B, C]` arrays are the only per-image state moved to the host. They are
  the record columns, and kept (int64, `N x C x 3` per pass) because a bootstrap over images needs
  them: mIoU is a ratio of sums, not a mean of per-image values;
- the class-agnostic boundary F1 counts (four integers per pass).

Region recall is the exception: connected components are found on the host (OpenCV), so each batch
moves its GT labels and a "predicted right" bit map to the host and labels components once per GT
class present in each image -- roughly `classes per image x H x W` work. Pass `region_bins={}` to
turn it off where that cost matters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from visionstress.batch import Batch

from .bootstrap import StatFn, on_subset, row_estimates, subset_positions
from .classification import CLEAN, MetricRow, by_sample_id, find_row, result_key
from .protocol import PassKey, Update

DEFAULT_REGION_BINS: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, math.inf),
}
"""COCO's area ranges in pixels, `low <= area < high`, applied to connected GT regions."""

INTERVAL_METRICS = ("mIoU", "pixel_accuracy", "mDice")
"""The metrics that get a bootstrap interval: those that are functions of the per-image counts."""
INTERVAL_COLUMNS = ("intersection", "gt_pixels", "pred_pixels")
"""The per-image record columns they are computed from."""


class SegmentationInputError(ValueError):
    """Masks or predictions handed to the segmentation evaluator do not fit its classes or each other."""


@dataclass
class SegmentationResults:
    """Everything `finalize` computes; the dict fields are keyed by `result_key` ("clean@0", "fog@3").

    `per_class_iou[key][class_name]` is NaN for a class absent from both GT and prediction in that
    pass; `confusion[key]` is the `[C, C]` int64 pixel matrix (rows GT, columns prediction, ignore
    pixels excluded); `region_recall[key][bin]` holds `recall` (pixel-weighted, NaN without regions)
    and `num_regions`.
    """

    rows: list[MetricRow]
    per_class_iou: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: dict[str, np.ndarray] = field(default_factory=dict)
    region_recall: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def row(self, perturbation: str, severity: int) -> MetricRow:
        """The row of one pass; KeyError naming what exists when it was not run."""
        return find_row(self.rows, perturbation, severity)


def segmentation_metrics_from_counts(intersection, gt_pixels, pred_pixels, weights=None) -> dict[str, float]:
    """mIoU, pixel_accuracy and mDice from per-image per-class pixel counts `[N, C]`.

    The inputs are the record columns of one pass (`intersection`, `gt_pixels`, `pred_pixels`), so a
    comparison of two runs can recompute the metrics of any resample of the images: `weights` are the
    images' multiplicities (`[N]`, e.g. from a paired bootstrap), None meaning once each. Counts are
    summed over images first and the ratios taken after, as the dataset metrics are.
    """
    columns = {"intersection": intersection, "gt_pixels": gt_pixels, "pred_pixels": pred_pixels}
    statistics = _CountStatistics(columns, "segmentation_metrics_from_counts")
    n = statistics.num_images
    if weights is None:
        w = np.ones(n)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != n or (w < 0).any() or not np.isfinite(w).all():
            raise ValueError(f"segmentation_metrics_from_counts: weights must be {n} finite "
                             f"non-negative multiplicities, one per image; got {w.shape[0]} values")
    return {name: float(value[0]) for name, value in statistics(w[None, :]).items()}


def segmentation_statistics(columns: Mapping[str, Any]) -> StatFn:
    """Every bootstrap-able segmentation metric of one pass, as a function of image weights.

    `columns` are the pass's per-image record columns in sample-id order: the per-class pixel counts
    `intersection`, `gt_pixels` and `pred_pixels` (`[n, C]`, or n per-image lists). The result maps
    weights `[r, n]` (image multiplicities; a row of ones is the pass as it is) to `{metric: [r]}` for
    mIoU, pixel_accuracy and mDice: the counts are summed over the weighted images first and the ratios
    taken after (one matrix product for all r rows), as the dataset metrics are. The evaluator's rows,
    their intervals and compare's paired bootstrap all use it.
    """
    return _CountStatistics(columns, "segmentation_statistics")


class _CountStatistics:
    """`segmentation_statistics`, with the image count and the name of the public caller for errors."""

    def __init__(self, columns: Mapping[str, Any], where: str) -> None:
        counts = [_counts_matrix(name, columns[name], where) for name in INTERVAL_COLUMNS]
        if not counts[0].shape == counts[1].shape == counts[2].shape:
            raise ValueError(f"{where}: intersection {counts[0].shape}, gt_pixels {counts[1].shape} and "
                             f"pred_pixels {counts[2].shape} must have the same [N, C] shape")
        self.num_images, self.classes = counts[0].shape
        self.stacked = np.concatenate(counts, axis=1)

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        c = self.classes
        totals = np.asarray(weights, dtype=np.float64) @ self.stacked
        return _metrics_from_totals(totals[:, :c], totals[:, c:2 * c], totals[:, 2 * c:])


@dataclass
class _Pass:
    """Accumulated state of one perturbation x severity."""

    confusion: Tensor  # [C, C] int64 on the masks' device
    boundary: Tensor  # [4] int64 on the masks' device: pred hits, pred total, GT hits, GT total
    region: np.ndarray  # [bins, 3] int64: correct pixels, pixels, regions
    chunks: list[dict[str, np.ndarray]] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-image arrays in sample-id order, so that passes over the same images resample alike."""
        return by_sample_id(self.chunks)


class SegmentationEvaluator:
    """Streaming semantic-segmentation metrics for the clean pass and every perturbation x severity.

    `class_names` are in model index order (`len == num_classes`). Ground-truth pixels equal to
    `ignore_index` are not scored. `region_bins` maps a bin name to an area range in pixels
    (`low <= area < high`) for `region_recall_<name>` (COCO small/medium/large by default; `{}` skips
    the host-side region analysis). `boundary` adds `boundary_f1` with a tolerance of
    `boundary_tolerance` x the image diagonal (radius `max(1, round(tolerance x diagonal))` pixels, a
    square neighbourhood): the class-agnostic BF score, which asks whether edges are in the right place
    whatever the classes on either side; see `_boundary_f1`. `bootstrap` resamples of the images give 95% percentile
    intervals for mIoU, pixel_accuracy and mDice (0 turns them off), drawn from `seed`.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str], *, ignore_index: int = 255,
                 region_bins: Mapping[str, tuple[float, float]] | None = None, boundary: bool = True,
                 boundary_tolerance: float = 0.0075, bootstrap: int = 1000, seed: int = 0) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"SegmentationEvaluator: num_classes must be >= 1, got {num_classes}")
        if len(class_names) != int(num_classes):
            raise ValueError(f"SegmentationEvaluator: {len(class_names)} class names for {num_classes} classes")
        if 0 <= int(ignore_index) < int(num_classes):
            raise ValueError(f"SegmentationEvaluator: ignore_index {ignore_index} is one of the "
                             f"{num_classes} classes; it must lie outside 0..{int(num_classes) - 1}")
        if int(bootstrap) < 0 or not float(boundary_tolerance) >= 0:
            raise ValueError(f"SegmentationEvaluator: bootstrap and boundary_tolerance must be >= 0, "
                             f"got {bootstrap} and {boundary_tolerance}")
        bins = dict(DEFAULT_REGION_BINS if region_bins is None else region_bins)
        for name, edges in bins.items():
            if len(edges) != 2 or not 0 <= float(edges[0]) < float(edges[1]):
                raise ValueError(f"SegmentationEvaluator: region bin {name!r} must be (low, high) areas in "
                                 f"pixels with 0 <= low < high, got {edges}")
        self.num_classes = int(num_classes)
        self.class_names = [str(n) for n in class_names]
        self.ignore_index = int(ignore_index)
        self.region_bins = {str(n): (float(lo), float(hi)) for n, (lo, hi) in bins.items()}
        self.boundary = bool(boundary)
        self.boundary_tolerance = float(boundary_tolerance)
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self._passes: dict[tuple[str, int], _Pass] = {}

    def update(self, key: PassKey, batch: Batch, predictions: Any) -> Update:
        """The evaluator protocol: score one batch of one pass against `batch.masks` (as the pass moved
        them); the counting runs on the masks' device and reaches the host once per batch."""
        return self._score(key.perturbation, key.severity, batch.sample_ids, batch.masks, predictions)

    def update_arrays(self, perturbation: str, severity: int, sample_ids, masks: Tensor,
                      predictions) -> dict[str, np.ndarray | list]:
        """Reduce one batch of one pass; return its per-image record columns.

        `masks` is the (moved) ground truth `[B, H, W]`; `predictions` any object with `labels`
        (`[B, H, W]` int) or, failing that, `logits` (`[B, C, H, W]`, argmax taken) at the same size.
        Columns: `sample_id`, `pixel_accuracy` and `miou` (this image alone, mean IoU over the classes
        in its GT or prediction; NaN when every pixel is ignored), and per-class lists `intersection`,
        `gt_pixels`, `pred_pixels` (length C).
        """
        return self._score(perturbation, severity, sample_ids, masks, predictions).records

    def _score(self, perturbation: str, severity: int, sample_ids, masks: Tensor, predictions) -> Update:
        where = f"SegmentationEvaluator.update({perturbation!r}, severity={severity})"
        ids, gt, pred = self._validate(where, perturbation, int(severity), sample_ids, masks, predictions)
        c = self.num_classes
        valid = gt != self.ignore_index
        g, p = gt[valid], pred[valid]
        confusion = torch.bincount(g * c + p, minlength=c * c)
        # One bincount for all per-image counts: slot (image, kind, class), kind 0 GT, 1 prediction, 2 both.
        image = torch.arange(len(ids), device=gt.device)[:, None, None].expand_as(gt)[valid] * (3 * c)
        hit = g == p
        slots = torch.cat([image + g, image + c + p, image[hit] + 2 * c + g[hit]])
        counts = torch.bincount(slots, minlength=len(ids) * 3 * c)
        boundary = self._boundary_counts(gt, pred, valid) if self.boundary else torch.zeros(4, dtype=torch.int64)
        packed = torch.cat([counts, confusion, boundary.to(counts.device)]).cpu().numpy()
        counts = packed[:len(ids) * 3 * c].reshape(len(ids), 3, c)
        gt_pixels, pred_pixels, inter = counts[:, 0], counts[:, 1], counts[:, 2]
        region = (self._region_counts(gt, (pred == gt) & valid, gt_pixels) if self.region_bins
                  else np.zeros((0, 3), dtype=np.int64))
        chunk = {"sample_id": ids, "intersection": inter, "gt_pixels": gt_pixels, "pred_pixels": pred_pixels,
                 "confusion": packed[len(ids) * 3 * c:len(ids) * 3 * c + c * c], "boundary": packed[-4:],
                 "region": region}
        self.absorb(perturbation, int(severity), chunk)
        per_image = _metrics_from_totals(inter, gt_pixels, pred_pixels)
        records = {
            "sample_id": ids, "pixel_accuracy": per_image["pixel_accuracy"].astype(np.float32),
            "miou": per_image["mIoU"].astype(np.float32), "intersection": inter.tolist(),
            "gt_pixels": gt_pixels.tolist(), "pred_pixels": pred_pixels.tolist(),
        }
        return Update(records, chunk)

    def absorb(self, perturbation: str, severity: int, chunk: dict[str, np.ndarray]) -> None:
        """Add one batch's state chunk of one pass (from `update`, or from a run's journal on resume)."""
        c = self.num_classes
        state = self._passes.get((perturbation, int(severity)))
        if state is None:
            state = _Pass(torch.zeros(c * c, dtype=torch.int64), torch.zeros(4, dtype=torch.int64),
                          np.zeros((len(self.region_bins), 3), dtype=np.int64))
            self._passes[(perturbation, int(severity))] = state
        state.confusion += torch.from_numpy(np.asarray(chunk["confusion"], dtype=np.int64))
        state.boundary += torch.from_numpy(np.asarray(chunk["boundary"], dtype=np.int64))
        if self.region_bins:
            state.region += np.asarray(chunk["region"], dtype=np.int64)
        state.chunks.append({name: chunk[name] for name in ("sample_id", "intersection", "gt_pixels",
                                                           "pred_pixels")})

    def finalize(self) -> SegmentationResults:
        """Metric rows (clean first when present, then passes in arrival order) and the breakdowns."""
        if not self._passes:
            raise ValueError("SegmentationEvaluator.finalize: no predictions were given to update()")
        keys = sorted(self._passes, key=lambda k: k != (CLEAN, 0))
        results = SegmentationResults(rows=[])
        clean: tuple[np.ndarray, StatFn] | None = None
        for name, severity in keys:
            key = result_key(name, severity)
            state = self._passes[(name, severity)]
            data = state.arrays()
            repeated = data["sample_id"][1:][np.diff(data["sample_id"]) == 0]
            if repeated.size:
                raise ValueError(f"SegmentationEvaluator.finalize: {key} received sample ids "
                                 f"{np.unique(repeated)[:10].tolist()} more than once")
            matrix = state.confusion.view(self.num_classes, self.num_classes).cpu().numpy()
            tp, gt_total, pred_total = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
            metrics = {m: float(v) for m, v in _metrics_from_totals(tp, gt_total, pred_total).items()}
            if self.boundary:
                metrics["boundary_f1"] = _boundary_f1(*state.boundary.cpu().tolist())
            results.region_recall[key] = {}
            for (bin_name, _), (correct, pixels, regions) in zip(self.region_bins.items(), state.region):
                recall = float(correct / pixels) if pixels else math.nan
                metrics[f"region_recall_{bin_name}"] = recall
                results.region_recall[key][bin_name] = {"recall": recall, "num_regions": int(regions)}
            statistics = segmentation_statistics(data)
            values, ci = row_estimates(statistics, len(data["sample_id"]), self.bootstrap, self.seed)
            metrics |= values  # the confusion totals above give the same numbers; one function gives both
            row = MetricRow(name, int(severity), metrics, ci)
            positions = None if clean is None else subset_positions(data["sample_id"], clean[0])
            if positions is not None:
                subset = on_subset(clean[1], positions, len(clean[0]))
                row.clean_same_images, row.clean_same_images_ci = row_estimates(
                    subset, len(data["sample_id"]), self.bootstrap, self.seed)
            if (name, severity) == (CLEAN, 0):
                clean = (data["sample_id"], statistics)
            results.rows.append(row)
            results.confusion[key] = matrix
            union = gt_total + pred_total - tp
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.where(union > 0, tp / union, math.nan)
            results.per_class_iou[key] = {n: float(v) for n, v in zip(self.class_names, iou)}
        return results

    def _boundary_counts(self, gt: Tensor, pred: Tensor, valid: Tensor) -> Tensor:
        """[pred boundary pixels near a GT boundary, pred boundary pixels, the same two for GT]."""
        height, width = gt.shape[-2:]
        radius = max(1, round(self.boundary_tolerance * math.hypot(height, width)))
        gt_edge, pred_edge = _boundaries(gt, valid), _boundaries(pred, valid)
        near_gt, near_pred = _dilate(gt_edge, radius), _dilate(pred_edge, radius)
        return torch.stack([(pred_edge & near_gt).sum(), pred_edge.sum(), (gt_edge & near_pred).sum(), gt_edge.sum()])

    def _region_counts(self, gt: Tensor, correct: Tensor, gt_pixels: np.ndarray) -> np.ndarray:
        """Per region bin: GT pixels predicted as their class, GT pixels, regions (8-connected, per class)."""
        out = np.zeros((len(self.region_bins), 3), dtype=np.int64)
        edges = np.array(list(self.region_bins.values()))
        labels = gt.to(torch.int32).cpu().numpy()
        right = correct.cpu().numpy()
        for image, hits, present in zip(labels, right, gt_pixels):
            for cls in np.flatnonzero(present):
                count, components, stats, _ = cv2.connectedComponentsWithStats(
                    (image == cls).astype(np.uint8), connectivity=8)
                area = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
                correct_pixels = np.bincount(components[hits], minlength=count)[1:]
                member = (area[None, :] >= edges[:, :1]) & (area[None, :] < edges[:, 1:])  # [bins, regions]
                out += np.stack([member @ correct_pixels, member @ area, member.sum(axis=1)], axis=1)
        return out

    def _validate(self, where: str, perturbation: str, severity: int, sample_ids, masks: Tensor,
                  predictions) -> tuple[np.ndarray, Tensor, Tensor]:
        if perturbation == CLEAN and severity != 0:
            raise ValueError(f"{where}: the clean pass has severity 0")
        if severity < 0:
            raise ValueError(f"{where}: severity must be >= 0")
        gt = torch.as_tensor(masks).detach()
        if gt.ndim != 3 or gt.dtype.is_floating_point or gt.dtype == torch.bool or gt.is_complex():
            raise SegmentationInputError(f"{where}: masks must be an integer [B, H, W] tensor, "
                                         f"got {gt.dtype} of shape {tuple(gt.shape)}")
        gt = gt.to(torch.int64)
        pred = self._predicted_labels(where, predictions, gt)
        ids = torch.as_tensor(sample_ids).detach().to("cpu", torch.int64).reshape(-1).numpy()
        if len(ids) != gt.shape[0] or len(ids) == 0:
            raise ValueError(f"{where}: {len(ids)} sample ids for {gt.shape[0]} masks; need one per image, "
                             f"and at least one")
        if (ids < 0).any():
            raise ValueError(f"{where}: sample ids must be >= 0, got {ids[ids < 0][:10].tolist()}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"{where}: a sample id appears twice in one batch")
        c = self.num_classes
        bad = (gt != self.ignore_index) & ((gt < 0) | (gt >= c))
        if bad.any():
            raise SegmentationInputError(f"{where}: mask values {torch.unique(gt[bad])[:10].tolist()} are neither "
                                         f"classes 0..{c - 1} nor ignore_index {self.ignore_index}")
        bad = (pred < 0) | (pred >= c)
        if bad.any():
            values = torch.unique(pred[bad])[:10].tolist()
            hint = " (a model must not predict the ignore index)" if self.ignore_index in values else ""
            raise SegmentationInputError(f"{where}: predicted labels {values} are outside the "
                                         f"{c} classes 0..{c - 1}{hint}")
        return ids, gt, pred

    def _predicted_labels(self, where: str, predictions, gt: Tensor) -> Tensor:
        """Predicted label map `[B, H, W]` int64 on the masks' device, from `labels` or argmax of `logits`."""
        labels, logits = getattr(predictions, "labels", None), getattr(predictions, "logits", None)
        if labels is not None:
            pred = torch.as_tensor(labels).detach()
            if pred.dtype.is_floating_point or pred.dtype == torch.bool or pred.shape != gt.shape:
                raise SegmentationInputError(f"{where}: predicted labels must be an integer tensor shaped like "
                                             f"the masks {tuple(gt.shape)}, got {pred.dtype} "
                                             f"of shape {tuple(pred.shape)}")
            return pred.to(gt.device, torch.int64)
        if logits is not None:
            z = torch.as_tensor(logits).detach()
            expected = (gt.shape[0], self.num_classes, *gt.shape[1:])
            if tuple(z.shape) != expected or not z.dtype.is_floating_point:
                raise SegmentationInputError(f"{where}: logits must be float {expected} ([B, classes, H, W] at "
                                             f"the masks' size), got {z.dtype} of shape {tuple(z.shape)}")
            if not torch.isfinite(z).all():
                raise SegmentationInputError(f"{where}: logits contain NaN or inf")
            return z.argmax(dim=1).to(gt.device, torch.int64)
        raise SegmentationInputError(f"{where}: predictions must have `labels` [B, H, W] or `logits` "
                                     f"[B, C, H, W], got {type(predictions).__name__} with neither")


def _counts_matrix(name: str, values, where: str) -> np.ndarray:
    """Counts as a float64 `[N, C]` matrix; also accepts a sequence of per-image arrays (a records column)."""
    array = np.asarray(values)
    if array.dtype == object:
        array = np.stack([np.asarray(v) for v in values])
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{where}: {name} must be [N, C] with N >= 1, "
                         f"got shape {array.shape}")
    return array.astype(np.float64)


def _metrics_from_totals(inter: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """mIoU, pixel_accuracy, mDice from pixel counts summed per class (`[..., C]`; any leading shape).

    Classes in neither GT nor prediction are left out of the means (mmsegmentation's nanmean), so a
    class the data never shows neither helps nor hurts; nothing to score at all gives NaN.
    """
    inter, gt, pred = (np.asarray(x, dtype=np.float64) for x in (inter, gt, pred))
    union = gt + pred - inter
    present = union > 0
    classes = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, inter / np.where(present, union, 1), 0.0).sum(axis=-1) / classes
        dice = np.where(present, 2 * inter / np.where(present, gt + pred, 1), 0.0).sum(axis=-1) / classes
        accuracy = inter.sum(axis=-1) / gt.sum(axis=-1)
    return {"mIoU": iou, "pixel_accuracy": accuracy, "mDice": dice}


def _boundaries(labels: Tensor, valid: Tensor) -> Tensor:
    """Pixels whose 3x3 neighbourhood holds another label; ignored pixels are neither boundary nor neighbour.

    Image borders are not boundaries (max pooling pads with -inf). Labels go through float32, exact
    below 2**24 classes, because pooling is defined for floating point on every device.
    """
    x = labels.to(torch.float32).unsqueeze(1)
    keep = valid.unsqueeze(1)
    highest = F.max_pool2d(torch.where(keep, x, -math.inf), 3, stride=1, padding=1)
    lowest = -F.max_pool2d(torch.where(keep, -x, -math.inf), 3, stride=1, padding=1)
    return (valid & ((highest != x) | (lowest != x)).squeeze(1))


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """Square (Chebyshev) dilation by `radius`, as two 1-D max pools: O(radius) per pixel, not O(radius**2)."""
    x = mask.to(torch.float32).unsqueeze(1)
    x = F.max_pool2d(x, (2 * radius + 1, 1), stride=1, padding=(radius, 0))
    x = F.max_pool2d(x, (1, 2 * radius + 1), stride=1, padding=(0, radius))
    return x.squeeze(1) > 0


def _boundary_f1(pred_hits: int, pred_total: int, gt_hits: int, gt_total: int) -> float:
    """Class-agnostic boundary F1 from counts summed over a pass.

    Precision is the share of predicted boundary pixels within the tolerance of a GT boundary pixel,
    recall the share of GT boundary pixels within the tolerance of a predicted one. With no boundary
    on a side, that side's score is 1 (nothing there to be wrong about), so two boundary-free maps
    agree perfectly and a missing boundary still costs the other side's score.
    """
    precision = pred_hits / pred_total if pred_total else 1.0
    recall = gt_hits / gt_total if gt_total else 1.0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
