"""The detection evaluator: COCO-exact AP/AR per pass, streaming, with size, error-type and occlusion breakdowns.

The engine calls `update` once per batch and pass and `finalize` once. Each `update` runs pycocotools'
`COCOeval.evaluate()` on that batch's images only (see `coco_matching`) and keeps a few numbers per
detection and per object; `finalize` replays `COCOeval.accumulate()` + `summarize()` over each pass,
so every AP/AR equals COCOeval run once on all images of the pass, while memory holds compact arrays
rather than every prediction of every pass as Python dicts. Area ranges are COCO's all / small /
medium / large plus the user's size bins (by default `tiny`, under 16² px², where detectors lose most
under blur and down-scaling).

As in COCOeval, only the dataset's categories are evaluated: detections with a label that is not a
dataset category id are not counted (a COCO-trained model scored on a subset of its classes), and
only the top 100 detections per image and category are.

With `masks=True` the same batches are also matched by instance-mask IoU (COCOeval's "segm"), for
instance-segmentation models, and rows gain mask AP/AR as `segm_*` next to the box metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from visionstress.batch import Batch, ObjectTargets

from .bootstrap import StatFn, on_subset, row_estimates, subset_positions
from .classification import CLEAN, MetricRow, find_row, result_key
from .coco_matching import (COCO_AREA_RANGES, MAX_DETS, MatchTable, coco_mean, coco_stats, evaluate_batch,
                            match_table_from_records)
from .error_types import classify_detections, error_type_breakdown
from .protocol import PassKey, Update

DEFAULT_SIZE_BINS: dict[str, tuple[float, float]] = {"tiny": (0.0, 16.0 ** 2)}
"""User size bins (area in px², [low, high]) evaluated on top of COCO's small / medium / large."""

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""COCOeval's `stats`, in `summarize()` order."""
SEGM_METRICS = tuple(f"segm_{name}" for name in COCO_METRICS)
"""COCOeval's `stats` with iouType "segm" (mask AP/AR), in rows of an evaluator made with `masks=True`."""
CI_METRICS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR100", "fp_per_image", "miss_rate", "segm_AP")
"""Metrics that get a bootstrap interval (the size-bin ones rest on too few objects to be worth it)."""
OCCLUSION_BINS = ("0-25%", "25-50%", "50-75%", "75-100%")
RECORD_TOP_BOXES = 20
"""Predicted boxes kept per image in the records (by score), enough to draw what the model saw."""


class DetectionEvaluatorError(ValueError):
    """Bad input to the detection evaluator: the message names the pass, the image and the problem."""


@dataclass
class DetectionResults:
    """Everything `finalize` computes; the dict fields are keyed by `result_key` ("clean@0", "fog@3").

    `per_class_ap[key][class_name]` is AP@[.5:.95] (NaN for a class without ground truth);
    `size[key][bin]` holds "AP", "recall" (AR100) and "num_gt" for small, medium, large and each user
    bin; `error_types[key][type]` holds "count" and "delta_ap" (see `error_types`); `occlusion[key][bin]`
    holds "miss_rate" (at the score threshold) and "num_gt", for passes whose targets carry `occluded`.
    """

    rows: list[MetricRow]
    per_class_ap: dict[str, dict[str, float]] = field(default_factory=dict)
    size: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    error_types: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    occlusion: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def row(self, perturbation: str, severity: int) -> MetricRow:
        """The row of one pass; KeyError naming what exists when it was not run."""
        return find_row(self.rows, perturbation, severity)


@dataclass
class _Pass:
    """What one pass keeps, batch by batch: per image, per detection and per object arrays."""

    images: list[dict[str, np.ndarray]] = field(default_factory=list)
    dets: list[dict[str, np.ndarray]] = field(default_factory=list)
    gts: list[dict[str, np.ndarray]] = field(default_factory=list)
    occlusion: np.ndarray = field(default_factory=lambda: np.zeros((len(OCCLUSION_BINS), 2), np.int64))
    has_occlusion: bool = False
    segm_dets: list[dict[str, np.ndarray]] = field(default_factory=list)  # mask matches, when scoring masks
    segm_gts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def merged(self, part: str) -> dict[str, np.ndarray]:
        chunks = getattr(self, part)
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


class DetectionEvaluator:
    """Streaming COCO detection metrics for the clean pass and every perturbation x severity.

    `categories` are the dataset's COCO categories (`{"id", "name"}`); targets and predictions carry
    these ids. `size_bins` add area ranges (px²) on top of COCO's (default `DEFAULT_SIZE_BINS`).
    `score_threshold` is the operating point of the counts (fp_per_image, miss_rate, record tp/fp/fn,
    occlusion); AP/AR use every detection. `bootstrap` resamples of the images give 95% intervals
    (0: none), drawn from `seed` so that rows over the same images are paired. `masks` also scores
    instance masks (targets' `masks` against predictions' `masks`), adding `SEGM_METRICS` to every row.
    """

    def __init__(self, categories: list[dict], *, size_bins: dict[str, tuple[float, float]] | None = None,
                 score_threshold: float = 0.5, bootstrap: int = 200, seed: int = 0, masks: bool = False,
                 letterbox: Callable[[list[int]], tuple[list[tuple[int, int]], list[float]]] | None = None) -> None:
        self.category_ids, self.category_names = _check_categories(categories)
        self.size_bins = _check_size_bins(DEFAULT_SIZE_BINS if size_bins is None else size_bins)
        if not np.isfinite(score_threshold):
            raise DetectionEvaluatorError(f"DetectionEvaluator: score_threshold must be finite, got {score_threshold}")
        if int(bootstrap) < 0:
            raise DetectionEvaluatorError(f"DetectionEvaluator: bootstrap must be >= 0, got {bootstrap}")
        self.score_threshold = float(score_threshold)
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self.masks = bool(masks)
        self.area_ranges = {**COCO_AREA_RANGES, **self.size_bins}
        self.letterbox = letterbox
        self._passes: dict[tuple[str, int], _Pass] = {}
        self._clean_statistics: tuple[np.ndarray, StatFn] | None = None  # set by finalize, read by subset passes

    def update(self, key: PassKey, batch: Batch, predictions: Any) -> Update:
        """The evaluator protocol: match one batch of one pass against `batch.boxes` (as the pass moved
        them). With `letterbox` (sample ids -> original (height, width) and canvas scale per image), boxes
        of letterboxed images are mapped back to the original pixels before matching."""
        ids = batch.sample_ids.tolist()
        targets = [t.to("cpu") for t in batch.boxes]
        predictions = _to_host(predictions)
        if self.letterbox is None:
            sizes = [batch.image_size] * len(ids)
        else:
            sizes, scales = self.letterbox(ids)
            targets = [replace(t, boxes=t.boxes / f, area=None if t.area is None else t.area / (f * f))
                       for t, f in zip(targets, scales)]
            predictions = replace(predictions, boxes=[b / f for b, f in zip(predictions.boxes, scales)])
        return self._score(key.perturbation, key.severity, batch.sample_ids, sizes, targets, predictions)

    def update_arrays(self, perturbation: str, severity: int, sample_ids, image_sizes: list[tuple[int, int]],
                      targets: list[ObjectTargets], predictions) -> dict[str, Any]:
        """Match one batch of one pass; return its per-image record columns (one value per image).

        `predictions` has `boxes` ([M, 4] xyxy), `scores` ([M]) and `labels` ([M] category ids):
        one tensor per image, any device. When scoring masks, targets carry `masks` and predictions
        `masks` ([M, H, W] bool, at the image's size), matched in a second COCOeval ("segm"). Columns: sample_id, num_gt (non-crowd objects), num_pred
        (detections at or above the score threshold), tp, fp, fn (at the threshold, IoU .50), the
        COCO match data dt_category, dt_score, dt_match, dt_ignore (bit t: IoU threshold t; area
        'all', top 100 per category, by descending score), gt_category, gt_ignore, and for display
        pred_boxes / pred_scores / pred_labels (top 20 by score, xyxy) and gt_boxes / gt_labels.
        """
        return self._score(perturbation, severity, sample_ids, image_sizes, targets, predictions).records

    def _score(self, perturbation: str, severity: int, sample_ids, image_sizes: list[tuple[int, int]],
               targets: list[ObjectTargets], predictions) -> Update:
        where = f"DetectionEvaluator.update({perturbation!r}, severity={severity})"
        severity = int(severity)
        if severity < 0 or (perturbation == CLEAN and severity != 0):
            raise DetectionEvaluatorError(f"{where}: severity must be >= 0, and 0 for the clean pass")
        ids = torch.as_tensor(sample_ids).detach().to("cpu", torch.int64).reshape(-1).numpy()
        gts, dets = self._inputs(where, ids, image_sizes, targets, predictions)
        matches = evaluate_batch(ids.tolist(), image_sizes, gts, dets, self.category_ids, self.area_ranges)
        occlusion = np.zeros((len(OCCLUSION_BINS), 2), np.int64)
        has_occlusion = False

        bit0 = np.uint16(1)
        m0, i0 = (matches.det_match[:, 0] & bit0) != 0, (matches.det_ignore[:, 0] & bit0) != 0
        det_tp, above = m0 & ~i0, matches.det_score >= self.score_threshold
        det_bounds = np.searchsorted(matches.det_image, np.arange(len(ids) + 1))
        gt_bounds = np.cumsum([0] + [len(g["category"]) for g in gts])
        error = np.empty(len(m0), dtype=np.int8)
        fix = np.empty(len(m0), dtype=np.int64)
        missed = np.zeros(gt_bounds[-1], dtype=bool)
        columns: dict[str, list] = {name: [] for name in _RECORD_COLUMNS}
        for b, (g, d) in enumerate(zip(gts, dets)):
            rows = slice(det_bounds[b], det_bounds[b + 1])
            objects = slice(gt_bounds[b], gt_bounds[b + 1])
            counted = ~matches.gt_ignore[objects, 0]
            matched_by = matches.gt_matched_by[objects]
            gt_category = np.searchsorted(self.category_ids, g["category"])
            error[rows], fix[rows], missed_here = classify_detections(
                d["boxes"][matches.det_index[rows]], matches.det_category[rows], det_tp[rows], i0[rows],
                g["boxes"][counted], gt_category[counted], matched_by[counted] >= 0)
            missed[gt_bounds[b] + np.flatnonzero(counted)] = missed_here
            found = np.zeros(len(counted), dtype=bool)
            found[matched_by >= 0] = above[matched_by[matched_by >= 0]]
            if g["occluded"] is not None:
                has_occlusion = True
                occ_bin = np.minimum((np.clip(g["occluded"], 0.0, 1.0) * 4).astype(np.int64), 3)[counted]
                np.add.at(occlusion, (occ_bin, 0), 1)
                np.add.at(occlusion, (occ_bin, 1), (~found[counted]).astype(np.int64))
            tp = int((det_tp[rows] & above[rows]).sum())
            top = np.argsort(-d["scores"], kind="stable")[:RECORD_TOP_BOXES]
            values = {
                "sample_id": int(ids[b]), "num_gt": int(counted.sum()),
                "num_pred": int((d["scores"] >= self.score_threshold).sum()), "tp": tp,
                "fp": int((~m0[rows] & ~i0[rows] & above[rows]).sum()), "fn": int(counted.sum()) - tp,
                "dt_category": self.category_ids[matches.det_category[rows]].astype(np.int32),
                "dt_score": matches.det_score[rows], "dt_match": matches.det_match[rows, 0],
                "dt_ignore": matches.det_ignore[rows, 0], "gt_category": g["category"].astype(np.int32),
                "gt_ignore": matches.gt_ignore[objects, 0],
                "pred_boxes": d["xyxy"][top].tolist(), "pred_scores": d["scores"][top].astype(np.float32),
                "pred_labels": d["category"][top].astype(np.int32), "gt_boxes": g["xyxy"].tolist(),
                "gt_labels": g["category"].astype(np.int32),
            }
            for name, value in values.items():
                columns[name].append(value)
        parts = {"images": {name: np.asarray(columns[name], dtype=np.int64) for name in ("sample_id", "tp", "fp", "fn")}
                 | {"dropped": np.array([g["dropped"] for g in gts], dtype=np.int64)}}
        # compact dtypes: a pass keeps these for every detection (rank < MAX_DETS[-1] fits a uint8)
        parts["dets"] = {"sample": ids[matches.det_image], "category": matches.det_category.astype(np.int32),
                         "rank": matches.det_rank.astype(np.uint8), "score": matches.det_score,
                         "match": matches.det_match, "ignore": matches.det_ignore, "error": error,
                         "fix": fix.astype(np.int32)}
        gt_category = np.searchsorted(self.category_ids, np.concatenate([g["category"] for g in gts]))
        gt_sample = np.repeat(ids, np.diff(gt_bounds))
        parts["gts"] = {"sample": gt_sample, "category": gt_category.astype(np.int32),
                        "ignore": matches.gt_ignore, "missed": missed}
        if self.masks:
            segm = evaluate_batch(ids.tolist(), image_sizes, gts, dets, self.category_ids, COCO_AREA_RANGES,
                                  iou_type="segm")
            parts["segm_dets"] = {"sample": ids[segm.det_image], "category": segm.det_category.astype(np.int32),
                                  "rank": segm.det_rank.astype(np.uint8), "score": segm.det_score,
                                  "match": segm.det_match, "ignore": segm.det_ignore}
            parts["segm_gts"] = {"sample": gt_sample, "category": gt_category.astype(np.int32),
                                 "ignore": segm.gt_ignore}
        chunk = {f"{part}/{name}": value for part, values in parts.items() for name, value in values.items()}
        chunk["occlusion"], chunk["has_occlusion"] = occlusion, np.array(has_occlusion)
        self.absorb(perturbation, severity, chunk)
        return Update(columns, chunk)

    def absorb(self, perturbation: str, severity: int, chunk: dict[str, np.ndarray]) -> None:
        """Add one batch's state chunk of one pass (from `update`, or from a run's journal on resume)."""
        state = self._passes.setdefault((perturbation, int(severity)), _Pass())
        parts: dict[str, dict[str, np.ndarray]] = {}
        for name, value in chunk.items():
            if "/" in name:
                part, field_name = name.split("/", 1)
                parts.setdefault(part, {})[field_name] = value
        for part, values in parts.items():
            getattr(state, part).append(values)
        state.occlusion += np.asarray(chunk["occlusion"], dtype=np.int64)
        state.has_occlusion = state.has_occlusion or bool(chunk["has_occlusion"])



    def finalize(self) -> DetectionResults:
        """Metric rows (clean first, then passes in arrival order) with intervals, and the breakdowns."""
        if not self._passes:
            raise DetectionEvaluatorError("DetectionEvaluator.finalize: no predictions were given to update()")
        keys = sorted(self._passes, key=lambda k: k != (CLEAN, 0))
        results = DetectionResults(rows=[])
        self._clean_statistics = None
        for name, severity in keys:
            self._finalize_pass(results, name, severity, self._passes[(name, severity)])
        return results

    def _finalize_pass(self, results: DetectionResults, name: str, severity: int, state: _Pass) -> None:
        key = result_key(name, severity)
        images, dets, gts = state.merged("images"), state.merged("dets"), state.merged("gts")
        sample_ids = np.sort(images["sample_id"])
        repeated = sample_ids[1:][np.diff(sample_ids) == 0]
        if repeated.size:
            raise DetectionEvaluatorError(f"DetectionEvaluator.finalize: {key} received sample ids "
                                          f"{np.unique(repeated)[:10].tolist()} more than once")
        n, k, labels = len(sample_ids), len(self.category_ids), list(self.area_ranges)
        table, order = _match_table(sample_ids, k, dets, gts)
        positives, gt_image = table.positives, np.searchsorted(sample_ids, gts["sample"])
        precision, recall = table.accumulate(np.ones((1, n)), range(len(labels)))
        p, rc = precision[0], recall[0]
        area = {label: i for i, label in enumerate(labels)}
        m100 = len(MAX_DETS) - 1
        metrics = coco_stats(p, rc, labels)
        metrics |= {f"AP_{b}": coco_mean(p[:, :, :, area[b]]) for b in self.size_bins}
        metrics |= {f"recall_{b}": coco_mean(rc[:, :, area[b], m100]) for b in self.size_bins}
        order_i = np.argsort(images["sample_id"])
        tp, fp, fn = (images[c][order_i].astype(np.float64) for c in ("tp", "fp", "fn"))
        metrics["fp_per_image"] = float(fp.sum() / n)
        metrics["miss_rate"] = _ratio(fn.sum(), (tp + fn).sum())
        metrics["objects_dropped"] = float(images["dropped"].sum())
        box = self._record_columns(sample_ids, dets, gts) | {"tp": tp, "fp": fp, "fn": fn}
        statistics = detection_statistics(box)
        if self.masks:
            segm_dets, segm_gts = state.merged("segm_dets"), state.merged("segm_gts")
            segm_table, _ = _match_table(sample_ids, k, segm_dets, segm_gts)
            segm_p, segm_rc = segm_table.accumulate(np.ones((1, n)), range(len(COCO_AREA_RANGES)))
            stats = coco_stats(segm_p[0], segm_rc[0], list(COCO_AREA_RANGES))
            metrics |= {f"segm_{m}": stats[m] for m in COCO_METRICS}
            statistics = _with_mask_ap(statistics, detection_statistics(self._record_columns(sample_ids, segm_dets,
                                                                                             segm_gts)))
        values, ci = row_estimates(statistics, n, self.bootstrap, self.seed)
        metrics |= values  # the same numbers the replay above gives (tested), from the function the intervals use
        row = MetricRow(name, severity, metrics, {m: ci[m] for m in CI_METRICS if m in ci})
        clean = self._clean_statistics
        positions = None if clean is None else subset_positions(sample_ids, clean[0])
        if positions is not None:
            subset = on_subset(clean[1], positions, len(clean[0]))
            row.clean_same_images, intervals = row_estimates(subset, n, self.bootstrap, self.seed)
            row.clean_same_images_ci = {m: intervals[m] for m in CI_METRICS if m in intervals}
        if (name, severity) == (CLEAN, 0):
            self._clean_statistics = (sample_ids, statistics)
        results.rows.append(row)
        results.per_class_ap[key] = {self.category_names[c]: coco_mean(p[:, :, c, 0]) for c in range(k)}
        results.size[key] = {
            b: {"AP": coco_mean(p[:, :, :, area[b]]), "recall": coco_mean(rc[:, :, area[b], m100]),
                "num_gt": int(positives[:, :, area[b]].sum())}
            for b in ("small", "medium", "large", *self.size_bins)
        }
        missed = np.zeros((n, k))
        np.add.at(missed, (gt_image[gts["missed"]], gts["category"][gts["missed"]]), 1.0)
        results.error_types[key] = error_type_breakdown(
            n, k, table.image, table.category, table.rank, table.score, dets["error"][order], dets["fix"][order],
            positives[:, :, 0], missed)
        if state.has_occlusion:
            results.occlusion[key] = {label: {"miss_rate": _ratio(missed_n, total), "num_gt": int(total)}
                                      for label, (total, missed_n) in zip(OCCLUSION_BINS, state.occlusion)}

    def _record_columns(self, sample_ids: np.ndarray, dets: dict[str, np.ndarray],
                        gts: dict[str, np.ndarray]) -> dict[str, Any]:
        """A pass's merged match arrays as the per-image record columns (`MATCH_COLUMNS`, area 'all', each
        image's detections in descending score order as matched), in sample-id order."""
        det_order = np.argsort(dets["sample"], kind="stable")  # an image's detections keep their order
        gt_order = np.argsort(gts["sample"], kind="stable")
        det_split = np.searchsorted(dets["sample"][det_order], sample_ids[1:])
        gt_split = np.searchsorted(gts["sample"][gt_order], sample_ids[1:])
        return {
            "sample_id": sample_ids,
            "dt_category": np.split(self.category_ids[dets["category"][det_order]], det_split),
            "dt_score": np.split(dets["score"][det_order], det_split),
            "dt_match": np.split(dets["match"][det_order, 0], det_split),
            "dt_ignore": np.split(dets["ignore"][det_order, 0], det_split),
            "gt_category": np.split(self.category_ids[gts["category"][gt_order]], gt_split),
            "gt_ignore": np.split(gts["ignore"][gt_order, 0], gt_split),
        }

    def _inputs(self, where: str, ids: np.ndarray, image_sizes, targets, predictions):
        """Validated numpy views of one batch: per image ground truth and (known-category) detections."""
        try:
            boxes, scores, labels = predictions.boxes, predictions.scores, predictions.labels
        except AttributeError:
            raise DetectionEvaluatorError(f"{where}: predictions need per-image lists `boxes`, `scores` and "
                                          f"`labels`, got {type(predictions).__name__}") from None
        b = len(ids)
        lengths = {"image_sizes": len(image_sizes), "targets": len(targets), "predictions.boxes": len(boxes),
                   "predictions.scores": len(scores), "predictions.labels": len(labels)}
        if b == 0 or any(v != b for v in lengths.values()):
            raise DetectionEvaluatorError(f"{where}: {b} sample ids but {lengths}; need one of each per image")
        if len(np.unique(ids)) != b:
            raise DetectionEvaluatorError(f"{where}: a sample id appears twice in one batch")
        if not all(len(s) == 2 and all(int(v) > 0 for v in s) for s in image_sizes):
            raise DetectionEvaluatorError(f"{where}: image_sizes must be positive (height, width) pairs, "
                                          f"got {list(image_sizes)[:4]}")
        gts = [self._ground_truth(f"{where}: sample {int(i)}", t) for i, t in zip(ids, targets)]
        dets = [self._detections(f"{where}: sample {int(i)}", bx, s, lb)
                for i, bx, s, lb in zip(ids, boxes, scores, labels)]
        if self.masks:
            self._add_masks(where, ids, image_sizes, targets, predictions, gts, dets)
        return gts, dets

    def _add_masks(self, where: str, ids: np.ndarray, image_sizes, targets, predictions, gts, dets) -> None:
        """Put each image's target and predicted instance masks (bool numpy, at the image's size) into
        `gts[i]["masks"]` and `dets[i]["masks"]`, the latter filtered like the detections."""
        pred_masks = getattr(predictions, "masks", None)
        if pred_masks is None:
            raise DetectionEvaluatorError(f"{where}: scoring instance masks, but the predictions carry no masks; "
                                          "mask AP needs a model that returns them (e.g. torchvision maskrcnn_*)")
        if len(pred_masks) != len(ids):
            raise DetectionEvaluatorError(f"{where}: {len(pred_masks)} predicted mask sets for {len(ids)} images")
        for i, size, t, m, g, d in zip(ids, image_sizes, targets, pred_masks, gts, dets):
            here, shape = f"{where}: sample {int(i)}", (int(size[0]), int(size[1]))
            if t.masks is None:
                raise DetectionEvaluatorError(f"{here}: scoring instance masks, but the target has none; load the "
                                              "dataset with masks (DetectionImages(..., with_masks=True))")
            gt_masks = t.masks.detach().to("cpu", torch.bool).numpy()
            if gt_masks.shape != (len(g["category"]), *shape):
                raise DetectionEvaluatorError(f"{here}: target masks are {list(gt_masks.shape)}, expected [objects, "
                                              f"height, width] = [{len(g['category'])}, {shape[0]}, {shape[1]}]")
            m = torch.as_tensor(m)
            if m.dtype != torch.bool:
                raise DetectionEvaluatorError(f"{here}: predicted masks must be bool, got {m.dtype} "
                                              "(threshold mask probabilities first, e.g. > 0.5)")
            dt_masks = m.detach().cpu().numpy()
            if dt_masks.shape != (len(d["known"]), *shape):
                raise DetectionEvaluatorError(f"{here}: predicted masks are {list(dt_masks.shape)}, expected "
                                              f"[{len(d['known'])}, {shape[0]}, {shape[1]}] (one per box, at the "
                                              "image's height and width)")
            g["masks"], d["masks"] = gt_masks, dt_masks[d["known"]]

    def _ground_truth(self, where: str, t: ObjectTargets) -> dict[str, Any]:
        xyxy = t.boxes.detach().to("cpu", torch.float32).numpy().reshape(-1, 4)
        category = t.labels.detach().cpu().numpy().astype(np.int64).reshape(-1)
        _check_boxes(f"{where}: target", xyxy)
        unknown = np.setdiff1d(category, self.category_ids)
        if unknown.size:
            raise DetectionEvaluatorError(f"{where}: target labels {unknown[:10].tolist()} are not dataset "
                                          f"category ids {self.category_ids[:20].tolist()}")
        boxes = _xywh(xyxy)
        values = {
            "iscrowd": (np.zeros(len(category), bool) if t.iscrowd is None
                        else t.iscrowd.detach().cpu().numpy().astype(bool).reshape(-1)),
            # COCO's annotated (segment) area when the dataset gives one, else the box's
            "area": (boxes[:, 2] * boxes[:, 3] if t.area is None
                     else t.area.detach().to("cpu", torch.float64).numpy().reshape(-1)),
            "occluded": (None if t.occluded is None
                         else t.occluded.detach().to("cpu", torch.float64).numpy().reshape(-1)),
        }
        for name, value in values.items():
            if value is not None and len(value) != len(category):
                raise DetectionEvaluatorError(f"{where}: target has {len(value)} {name} values for "
                                              f"{len(category)} boxes")
        return {"xyxy": xyxy, "boxes": boxes, "category": category, "dropped": int(t.dropped), **values}

    def _detections(self, where: str, boxes, scores, labels) -> dict[str, np.ndarray]:
        xyxy = torch.as_tensor(boxes).detach().to("cpu", torch.float32).numpy()
        score = torch.as_tensor(scores).detach().to("cpu", torch.float64).numpy().reshape(-1)
        category = torch.as_tensor(labels).detach().to("cpu", torch.int64).numpy().reshape(-1)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4 or not (len(xyxy) == len(score) == len(category)):
            raise DetectionEvaluatorError(f"{where}: predicted boxes must be [M, 4] with M scores and labels, got "
                                          f"boxes {tuple(xyxy.shape)}, {len(score)} scores, {len(category)} labels")
        _check_boxes(f"{where}: prediction", xyxy)
        if not np.isfinite(score).all():
            raise DetectionEvaluatorError(f"{where}: predicted scores contain NaN or inf")
        known = np.isin(category, self.category_ids)
        return {"xyxy": xyxy[known], "boxes": _xywh(xyxy[known]), "scores": score[known],
                "category": category[known], "known": known}


_RECORD_COLUMNS = ("sample_id", "num_gt", "num_pred", "tp", "fp", "fn", "dt_category", "dt_score", "dt_match",
                   "dt_ignore", "gt_category", "gt_ignore", "pred_boxes", "pred_scores", "pred_labels", "gt_boxes",
                   "gt_labels")


def _match_table(sample_ids: np.ndarray, num_categories: int, dets: dict[str, np.ndarray],
                 gts: dict[str, np.ndarray]) -> tuple[MatchTable, np.ndarray]:
    """One pass's `MatchTable` from its merged per-detection and per-object arrays (area axes as matched),
    and the order it put the detection rows in."""
    n, num_areas = len(sample_ids), gts["ignore"].shape[1]
    image = np.searchsorted(sample_ids, dets["sample"])
    order = np.argsort(image, kind="stable")  # images ascending, each image's detections kept in score order
    positives = np.zeros((n, num_categories, num_areas))
    gt_image = np.searchsorted(sample_ids, gts["sample"])
    for a in range(num_areas):
        counted = ~gts["ignore"][:, a]
        np.add.at(positives, (gt_image[counted], gts["category"][counted], a), 1.0)
    table = MatchTable(num_images=n, num_categories=num_categories, image=image[order],
                       category=dets["category"][order], rank=dets["rank"][order], score=dets["score"][order],
                       match=dets["match"][order], ignore=dets["ignore"][order], positives=positives)
    return table, order


def detection_statistics(columns: Mapping[str, Any]) -> StatFn:
    """Every bootstrap-able detection metric of one pass, as a function of image weights.

    `columns` are the pass's per-image record columns in sample-id order: the COCO match columns
    (`MATCH_COLUMNS`: dt_category, dt_score, dt_match, dt_ignore, gt_category, gt_ignore, area 'all') and
    optionally the operating-point counts `tp`, `fp`, `fn`. The result maps weights `[r, n]` (image
    multiplicities; a row of ones is the pass as it is) to `{metric: [r]}`: COCO AP, AP50, AP75, AR1,
    AR10, AR100 exactly as COCOeval computes them on the weighted images (`ResampledCoco`, all rows at
    once) and, with the counts, fp_per_image and miss_rate. The evaluator's rows, their intervals and
    compare's paired bootstrap all use it.
    """
    table, order = match_table_from_records(columns)
    counts = None
    if all(c in columns for c in ("tp", "fp", "fn")):
        counts = np.stack([np.asarray(columns[c], dtype=np.float64) for c in ("tp", "fp", "fn")], axis=1)

    def stats(weights: np.ndarray) -> dict[str, np.ndarray]:
        weights = np.asarray(weights, dtype=np.float64)
        out = table.coco_metrics(weights[:, order])
        if counts is not None:
            tp, fp, fn = (weights @ counts).T
            with np.errstate(invalid="ignore", divide="ignore"):
                out["fp_per_image"] = fp / weights.sum(axis=1)
                out["miss_rate"] = fn / (tp + fn)
        return out

    return stats


def _with_mask_ap(box: StatFn, masks: StatFn) -> StatFn:
    """Box statistics plus mask AP as `segm_AP`, on the same weights (so their intervals are paired)."""
    return lambda weights: {**box(weights), "segm_AP": masks(weights)["AP"]}


def _xywh(xyxy: np.ndarray) -> np.ndarray:
    """COCO boxes from xyxy, in float64 so that every caller gets the same widths."""
    b = xyxy.astype(np.float64)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def _check_boxes(where: str, xyxy: np.ndarray) -> None:
    if not np.isfinite(xyxy).all():
        raise DetectionEvaluatorError(f"{where} boxes contain NaN or inf")
    bad = (xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1])
    if bad.any():
        raise DetectionEvaluatorError(f"{where} boxes must be xyxy with x2 >= x1 and y2 >= y1; "
                                      f"box {int(np.flatnonzero(bad)[0])} is {xyxy[bad][0].tolist()} (xywh?)")


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def _check_categories(categories: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, dict[int, str]]:
    """Sorted category ids (COCOeval's order) and their names, or a clear error."""
    if not categories:
        raise DetectionEvaluatorError("DetectionEvaluator: categories is empty; give the dataset's COCO categories")
    names: dict[int, str] = {}
    for i, c in enumerate(categories):
        if not isinstance(c, Mapping) or "id" not in c or "name" not in c:
            raise DetectionEvaluatorError(f"DetectionEvaluator: categories[{i}] must be a dict with 'id' and 'name', "
                                          f"got {c!r}")
        if int(c["id"]) in names:
            raise DetectionEvaluatorError(f"DetectionEvaluator: category id {c['id']} appears twice")
        names[int(c["id"])] = str(c["name"])
    ids = np.array(sorted(names), dtype=np.int64)
    return ids, {k: names[int(v)] for k, v in enumerate(ids)}


def _check_size_bins(bins: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    out = {}
    for name, rng in bins.items():
        if not str(name).isidentifier() or name in COCO_AREA_RANGES:
            raise DetectionEvaluatorError(f"DetectionEvaluator: size bin name {name!r} must be an identifier "
                                          f"other than {list(COCO_AREA_RANGES)}")
        try:
            lo, hi = (float(v) for v in rng)
        except (TypeError, ValueError):
            raise DetectionEvaluatorError(f"DetectionEvaluator: size bin {name!r} must be (low, high) areas in px², "
                                          f"got {rng!r}") from None
        if not 0.0 <= lo < hi:
            raise DetectionEvaluatorError(f"DetectionEvaluator: size bin {name!r} needs 0 <= low < high, got {rng!r}")
        out[str(name)] = (lo, hi)
    return out


def _to_host(predictions: Any) -> Any:
    """Detections as float32 / int64 CPU tensors (COCO matching runs on the host)."""
    return replace(predictions, boxes=[b.float().cpu() for b in predictions.boxes],
                   scores=[x.float().cpu() for x in predictions.scores],
                   labels=[lab.cpu() for lab in predictions.labels],
                   **({} if getattr(predictions, "masks", None) is None else
                      {"masks": [m.cpu() for m in predictions.masks]}))
