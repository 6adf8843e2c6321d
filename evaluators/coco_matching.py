"""COCO box (or mask) matching one batch at a time, and COCOeval's accumulate/summarize replayed from compact arrays.

Detection AP must be the number pycocotools prints, to the last bit, or nobody can compare it with a
paper or a model card. But COCOeval wants every prediction of the dataset in memory as Python dicts,
and a stress run makes dozens of passes over the dataset. So `evaluate_batch` runs the real
`COCOeval.evaluate()` on just one batch's images (per-image matching needs nothing else) and keeps,
per detection, its score, its rank inside its (image, category) and its match / ignore flags at the
ten IoU thresholds as two uint16 bitmasks per area range; per ground-truth object, its ignore flag per
area range. `MatchTable` then replays `COCOeval.accumulate()` + `summarize()` over a whole pass from
those arrays: same stable merge sort by descending score over images in ascending id order, same
true/false-positive cumulative sums, same 101-point interpolation with the precision envelope, same -1
for categories without ground truth. The same table takes image weights (a bootstrap resample's
multiplicities), which is how the confidence intervals and `compare`'s paired bootstrap are computed:
`ResampledCoco` does that for a thousand resamples at once, visiting only the true positives.
Mask AP (COCOeval's "segm") goes through the same path: only the IoU that `evaluate()` matches by differs.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from visionstress.rng import numba_available

_PARAMS = Params(iouType="bbox")
IOU_THRESHOLDS: np.ndarray = _PARAMS.iouThrs
"""COCO's ten IoU thresholds .50:.05:.95, taken from pycocotools so that they are bit-identical."""
RECALL_THRESHOLDS: np.ndarray = _PARAMS.recThrs
"""COCO's 101 recall points 0:.01:1 for the interpolated precision."""
MAX_DETS: tuple[int, ...] = tuple(_PARAMS.maxDets)
"""Detections per image and category counted by AR1, AR10 and AR100 (and AP, at 100)."""
COCO_AREA_RANGES: dict[str, tuple[float, float]] = {
    label: (float(lo), float(hi)) for label, (lo, hi) in zip(_PARAMS.areaRngLbl, _PARAMS.areaRng)
}
"""all, small (< 32²), medium (32²-96²), large (>= 96²), in pixels² of the annotation's `area`."""

MATCH_COLUMNS = ("dt_category", "dt_score", "dt_match", "dt_ignore", "gt_category", "gt_ignore")
"""The per-image record columns `coco_metrics_from_matches` reads (area 'all', maxDets 100)."""

_T = len(IOU_THRESHOLDS)
_R = len(RECALL_THRESHOLDS)
_BITS = (1 << np.arange(_T)).astype(np.uint16)
_CHUNK_ELEMENTS = 1 << 22  # bound on the float64 working arrays of one accumulate step (32 MiB)
_IOU50, _IOU75 = 0, 5  # positions of .50 and .75 in IOU_THRESHOLDS
_COMPILED_FROM = 16  # rows of weights from which loading the compiled kernel pays (a point estimate does not)


class MatchTableError(ValueError):
    """Match records that cannot be accumulated: the message names the column and the problem."""


@dataclass
class BatchMatches:
    """`COCOeval.evaluate()`'s per-image results for one batch, flattened.

    Detections are the ones COCOeval keeps (the top `MAX_DETS[-1]` per image and category, of the
    evaluated categories), ordered by image (batch position) and, within an image, by descending score
    with ties in COCOeval's order. Area axes follow the `area_ranges` given to `evaluate_batch`.
    Ground-truth rows follow the input: image by image, object by object.
    """

    det_image: np.ndarray  # [D] int64 batch position of the image
    det_index: np.ndarray  # [D] int64 index into that image's input detections
    det_category: np.ndarray  # [D] int64 index into the sorted category ids
    det_score: np.ndarray  # [D] float64
    det_rank: np.ndarray  # [D] int64 rank within (image, category), COCOeval's order
    det_match: np.ndarray  # [D, A] uint16, bit t: matched at IOU_THRESHOLDS[t]
    det_ignore: np.ndarray  # [D, A] uint16, bit t: ignored (matched a crowd / out-of-range object, or out of range)
    gt_ignore: np.ndarray  # [G, A] bool: crowd or outside the area range
    gt_matched_by: np.ndarray  # [G] int64 detection row matching it at IoU .50 (area 'all'), -1 if none


def evaluate_batch(image_ids: Sequence[int], image_sizes: Sequence[tuple[int, int]],
                   gts: Sequence[Mapping[str, np.ndarray]], dets: Sequence[Mapping[str, np.ndarray]],
                   category_ids: Sequence[int], area_ranges: Mapping[str, tuple[float, float]],
                   iou_type: str = "bbox") -> BatchMatches:
    """Run pycocotools' `COCOeval.evaluate()` on one batch and keep its matches as arrays.

    `image_sizes` are (height, width) as in a COCO `images` entry; `gts[i]` has `boxes` (xywh float64
    [N, 4]), `category` (ids), `iscrowd` (bool) and `area`; `dets[i]` has `boxes` (xywh), `scores` and
    `category`. `area_ranges` must start with "all".
    With `iou_type="segm"` objects are matched by mask IoU instead: `gts[i]` and `dets[i]` then also
    have `masks` (bool [N, H, W] at the image's size), passed to COCOeval as RLE `segmentation`. Ground
    truth keeps its annotated `area` (as in a COCO file); a detection's area is its mask's pixel count,
    which is what `COCO.loadRes` gives a segmentation result.
    The COCO objects are built in memory (not with `loadRes`, which fails on an empty list) with
    1-based annotation ids, because COCOeval uses id 0 to mean "unmatched".
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"evaluate_batch: iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    segm = iou_type == "segm"
    images = [{"id": int(i), "height": int(hw[0]), "width": int(hw[1])} for i, hw in zip(image_ids, image_sizes)]
    categories = [{"id": int(c)} for c in category_ids]
    gt_anns, dt_anns, dt_where = [], [], []
    for b, (image_id, g, d) in enumerate(zip(image_ids, gts, dets)):
        gt_rles = _rles(g["masks"]) if segm else []
        for j in range(len(g["category"])):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": int(image_id), "category_id": int(g["category"][j]),
                            "bbox": [float(v) for v in g["boxes"][j]], "area": float(g["area"][j]),
                            "iscrowd": int(bool(g["iscrowd"][j]))})
            if segm:
                gt_anns[-1]["segmentation"] = gt_rles[j]
        dt_rles = _rles(d["masks"]) if segm else []
        for j in range(len(d["category"])):
            x, y, w, h = (float(v) for v in d["boxes"][j])
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": int(image_id), "category_id": int(d["category"][j]),
                            "bbox": [x, y, w, h], "area": w * h, "score": float(d["scores"][j])})
            if segm:
                dt_anns[-1] |= {"segmentation": dt_rles[j], "area": float(mask_utils.area(dt_rles[j]))}
            dt_where.append((b, j))
    coco_eval = COCOeval(_coco(images, gt_anns, categories), _coco(images, dt_anns, categories), iouType=iou_type)
    coco_eval.params.imgIds = [int(i) for i in image_ids]
    coco_eval.params.catIds = [int(c) for c in category_ids]
    coco_eval.params.areaRng = [[lo, hi] for lo, hi in area_ranges.values()]
    coco_eval.params.areaRngLbl = list(area_ranges)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
    return _flatten(coco_eval, len(gt_anns), dt_where)


def _rles(masks: np.ndarray) -> list[dict]:
    """COCO's compressed RLE of each mask of `[N, H, W]` (pycocotools encodes Fortran-ordered [H, W, N])."""
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0)))


def _coco(images: list[dict], annotations: list[dict], categories: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _flatten(coco_eval: COCOeval, num_gt: int, dt_where: list[tuple[int, int]]) -> BatchMatches:
    """evalImgs (ordered category, area range, image) -> flat arrays, detections in per-image score order."""
    p = coco_eval.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    rows: list[tuple[int, int, int, float, int]] = []  # (image, index, category, score, rank)
    match: list[np.ndarray] = []
    ignore: list[np.ndarray] = []
    gt_ignore = np.zeros((num_gt, n_area), dtype=bool)
    gt_matched_det_id = np.zeros(num_gt, dtype=np.int64)
    det_row_of_id: dict[int, int] = {}
    for k in range(len(p.catIds)):
        for i in range(n_img):
            per_area = [coco_eval.evalImgs[(k * n_area + a) * n_img + i] for a in range(n_area)]
            if per_area[0] is None:
                continue
            for rank, (det_id, score) in enumerate(zip(per_area[0]["dtIds"], per_area[0]["dtScores"])):
                det_row_of_id[det_id] = len(rows)
                b, j = dt_where[det_id - 1]
                rows.append((b, j, k, float(score), rank))
            if per_area[0]["dtIds"]:
                match.append(np.stack([_bits(e["dtMatches"] != 0) for e in per_area], axis=1))
                ignore.append(np.stack([_bits(e["dtIgnore"]) for e in per_area], axis=1))
            for a, e in enumerate(per_area):
                gt_rows = np.asarray(e["gtIds"], dtype=np.int64) - 1
                gt_ignore[gt_rows, a] = np.asarray(e["gtIgnore"], dtype=bool)
                if a == 0:
                    gt_matched_det_id[gt_rows] = np.asarray(e["gtMatches"][_IOU50], dtype=np.int64)
    table = np.array(rows, dtype=np.float64).reshape(-1, 5)
    det_match = np.concatenate(match) if match else np.zeros((0, n_area), np.uint16)
    det_ignore = np.concatenate(ignore) if ignore else np.zeros((0, n_area), np.uint16)
    image = table[:, 0].astype(np.int64)
    # per image, by descending score; lexsort is stable, so ties keep (category, rank) order
    order = np.lexsort((-table[:, 3], image))
    new_row = np.empty(len(order), dtype=np.int64)
    new_row[order] = np.arange(len(order))
    matched = np.array([new_row[det_row_of_id[d]] if d else -1 for d in gt_matched_det_id.tolist()], dtype=np.int64)
    return BatchMatches(
        det_image=image[order], det_index=table[order, 1].astype(np.int64),
        det_category=table[order, 2].astype(np.int64), det_score=table[order, 3],
        det_rank=table[order, 4].astype(np.int64), det_match=det_match[order], det_ignore=det_ignore[order],
        gt_ignore=gt_ignore, gt_matched_by=matched,
    )


def _bits(flags: np.ndarray) -> np.ndarray:
    """[T, D] booleans -> [D] uint16 with bit t set where flags[t] is true."""
    flags = np.asarray(flags, dtype=bool).reshape(_T, -1)
    return (flags * _BITS[:, None]).sum(axis=0).astype(np.uint16)


@dataclass
class MatchTable:
    """The matches of one pass over `num_images` images, accumulated exactly like `COCOeval.accumulate()`.

    Detection rows are ordered by image, images in ascending id order (COCOeval's `np.unique` order,
    which breaks score ties between images), and within an image in COCOeval's per-category order
    (descending score, stable). `rank` is a detection's position within its (image, category), which
    is what COCOeval's `maxDets` cuts on. `positives[i, k, a]` counts image i's non-ignored ground
    truth of category k in area range a. Area axes are whatever ranges the matches were made with.
    """

    num_images: int
    num_categories: int
    image: np.ndarray  # [D] int64
    category: np.ndarray  # [D] int64
    rank: np.ndarray  # [D] int64
    score: np.ndarray  # [D] float64
    match: np.ndarray  # [D, A] uint16 bits over IOU_THRESHOLDS
    ignore: np.ndarray  # [D, A] uint16 bits
    positives: np.ndarray  # [num_images, num_categories, A] float64

    def __post_init__(self) -> None:
        # category by category, descending score; lexsort is stable, so ties stay in row order, which is
        # COCOeval's concatenation order (images ascending, then rank) before its stable merge sort
        self._order = np.lexsort((-self.score, self.category))
        self._bounds = np.searchsorted(self.category[self._order], np.arange(self.num_categories + 1))
        self._resampled: ResampledCoco | None = None

    def accumulate(self, weights: np.ndarray, areas: Sequence[int],
                   ious: Sequence[int] = tuple(range(_T))) -> tuple[np.ndarray, np.ndarray]:
        """COCOeval's `precision` (at maxDets 100) and `recall` for each row of image `weights` [r, n].

        Returns precision `[r, T', R, K, A']` and recall `[r, T', K, A', M]` for the IoU threshold
        indices `ious` and area indices `areas`, -1 where a category has no (weighted) ground truth.
        Weights are image multiplicities: an image of weight 2 counts as if it were in the set twice,
        so all-ones weights reproduce COCOeval on the images as they are, bit for bit.
        """
        weights = np.asarray(weights, dtype=np.float64)
        areas, ious = list(areas), list(ious)
        r, bits = weights.shape[0], _BITS[ious][:, None]
        precision = np.full((r, len(ious), _R, self.num_categories, len(areas)), -1.0)
        recall = np.full((r, len(ious), self.num_categories, len(areas), len(MAX_DETS)), -1.0)
        for k in range(self.num_categories):
            rows = self._order[self._bounds[k]:self._bounds[k + 1]]
            positives = weights @ self.positives[:, k, areas]  # [r, A']
            w = weights[:, self.image[rows]]  # [r, D]
            rank = self.rank[rows]
            for ai, a in enumerate(areas):
                has_gt = positives[:, ai] > 0
                if not has_gt.any():
                    continue
                npig = np.where(has_gt, positives[:, ai], 1.0)
                matched = (self.match[rows, a][None, :] & bits) != 0  # [T', D]
                ignored = (self.ignore[rows, a][None, :] & bits) != 0
                tp, fp = matched & ~ignored, ~matched & ~ignored
                for m, max_det in enumerate(MAX_DETS):
                    keep = rank < max_det
                    found = w[:, keep] @ tp[:, keep].T.astype(np.float64)  # [r, T']: exact integer sums
                    recall[:, :, k, ai, m] = np.where(has_gt[:, None], found / npig[:, None], -1.0)
                keep = rank < MAX_DETS[-1]
                p = _precision(tp & keep, fp & keep, w, npig)
                precision[:, :, :, k, ai] = np.where(has_gt[:, None, None], p, -1.0)
        return precision, recall

    def coco_metrics(self, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """AP, AP50, AP75, AR1, AR10, AR100 (area index 0, 'all') for each row of image `weights` [r, n].

        None means every image once (a single row). Undefined values (no ground truth) are NaN. This is
        the vectorised path (see `ResampledCoco`); `accumulate` is the literal replay it is tested against.
        """
        weights = np.ones((1, self.num_images)) if weights is None else np.asarray(weights, dtype=np.float64)
        if self._resampled is None:
            self._resampled = ResampledCoco(self)
        return self._resampled(weights)


class ResampledCoco:
    """COCOeval's area-'all' AP/AR of one `MatchTable` for many rows of image weights at once.

    A bootstrap needs AP for a thousand resamples of every pass; replaying `accumulate` per resample
    (even vectorised over resamples, but over every detection, IoU threshold and recall point) takes
    minutes for a few hundred images. Three facts make it cheap without changing a single precision
    value (each is the same float64 division COCOeval does, at the same detection):

    - The interpolated precision at recall point j is the precision envelope (suffix maximum) at the
      first detection whose recall reaches j, and both that detection and the maximum lie on weighted
      *true positives*: recall only rises at one, and between them precision only falls. So only the
      true positives of each (IoU threshold, category) are visited, each with the weight of the
      non-ignored detections up to it (tp + fp) from one cumulative sum per category.
    - AP needs only the sum over the 101 recall points, and the points first reached at true positive
      m are those between the counts reached at m - 1 and at m, so that sum is
      sum_m envelope[m] * (reached[m] - reached[m - 1]): no recall-point axis.
    - Recall at each maxDets is a weighted count of true positives over the weighted ground truth: one
      sparse product of the weights with per-image counts (summed over the IoU thresholds, since AR
      averages over them with the same denominator).

    The walk over true positives is a compiled loop (numba, parallel over resamples); without numba a
    numpy form pads the runs of true positives to power-of-two lengths and processes chunks of resamples.
    """

    def __init__(self, table: MatchTable) -> None:
        from scipy import sparse

        self.num_images, k = table.num_images, table.num_categories
        rows = table._order[table.rank[table._order] < MAX_DETS[-1]]  # category-major, by descending score
        self.image = np.ascontiguousarray(table.image[rows], dtype=np.int64)
        category = table.category[rows].astype(np.int64)
        self.size = len(rows)
        self.positives = np.ascontiguousarray(table.positives[:, :, 0], dtype=np.float64)  # [n, K]
        self.category_start = np.searchsorted(category, np.arange(k + 1)).astype(np.int64)
        bits = _BITS[:, None]
        matched = (table.match[rows, 0][None, :] & bits) != 0  # [T, D]
        ignored = (table.ignore[rows, 0][None, :] & bits) != 0
        tp = matched & ~ignored
        # thresholds that ignore the same detections share one cumulative count (usually all ten do)
        first_of: dict[bytes, int] = {}  # threshold -> the first threshold with its pattern
        self.pattern_of = np.array([first_of.setdefault(np.packbits(~row).tobytes(), len(first_of))
                                    for row in ignored], dtype=np.int64)  # [T]
        patterns = [t for t in range(_T) if self.pattern_of[t] == len(set(self.pattern_of[:t]))]
        self.counted = np.ascontiguousarray(~ignored[patterns], dtype=np.float64)  # [G, D]
        # runs of true positives, one per (IoU threshold, category), in score order
        threshold, position = np.nonzero(tp)  # row-major: by threshold, then category, then score
        key = threshold * max(k, 1) + category[position]
        starts = np.flatnonzero(np.r_[True, np.diff(key) != 0]) if len(key) else np.zeros(0, np.int64)
        self.run_bounds = np.append(starts, len(key)).astype(np.int64)
        self.run_threshold = threshold[starts].astype(np.int64)
        self.run_category = category[position[starts]]
        self.run_position = position.astype(np.int64)
        rank = table.rank[rows][position]
        m = len(MAX_DETS)  # true positives per image, category and maxDets, summed over the IoU thresholds
        images = np.concatenate([self.image[position[rank < d]] for d in MAX_DETS])
        columns = np.concatenate([category[position[rank < d]] * m + i for i, d in enumerate(MAX_DETS)])
        self.found = sparse.csr_matrix((np.ones(len(images)), (images, columns)), shape=(self.num_images, k * m))

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        r, k = weights.shape[0], self.positives.shape[1]
        npig = weights @ self.positives  # [r, K]
        has_gt = npig > 0
        defined = has_gt.sum(axis=1)
        if r >= _COMPILED_FROM and numba_available():
            from ._coco_kernel import precision_sums

            sums = precision_sums(weights, npig, self.image, self.category_start, self.counted, self.pattern_of,
                                  self.run_bounds, self.run_position, self.run_threshold, self.run_category,
                                  RECALL_THRESHOLDS)
        else:
            sums = self._precision_sums_numpy(weights, npig)
        with np.errstate(invalid="ignore", divide="ignore"):
            found = np.asarray(self.found.T @ weights.T).T.reshape(r, k, len(MAX_DETS))
            # AR: the mean over thresholds and categories with ground truth of found / npig
            recall = np.where(has_gt[:, :, None], found / np.where(has_gt, npig, 1.0)[:, :, None], 0.0).sum(axis=1)
            out = {"AP": sums.sum(axis=1) / (_T * _R * defined), "AP50": sums[:, _IOU50] / (_R * defined),
                   "AP75": sums[:, _IOU75] / (_R * defined)}
            out |= {f"AR{d}": recall[:, i] / (_T * defined) for i, d in enumerate(MAX_DETS)}
        for values in out.values():
            values[defined == 0] = np.nan
        return out

    def _precision_sums_numpy(self, weights: np.ndarray, npig: np.ndarray) -> np.ndarray:
        """`_coco_kernel.precision_sums` without numba: runs padded to power-of-two lengths, one dense
        `[r, runs, length]` block per length (at most twice the ragged work), chunks of resamples."""
        lengths = np.diff(self.run_bounds)
        width = 1 << np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
        widths = np.unique(width)
        largest = max([self.size + 1] + [int((width == w).sum()) * int(w) for w in widths])
        step = max(1, _CHUNK_ELEMENTS // (4 * largest))
        restart = np.repeat(self.category_start[:-1], np.diff(self.category_start))  # each detection's category start
        sums = np.zeros((weights.shape[0], _T))
        for start in range(0, weights.shape[0], step):
            w, positives_all = weights[start:start + step], npig[start:start + step]
            det_w = np.concatenate([w[:, self.image], np.zeros((len(w), 1))], axis=1)  # [r, D + 1]; D: padding
            counted = []  # non-ignored weight up to each detection within its category, per pattern
            for pattern in self.counted:
                running = np.concatenate([np.zeros((len(w), 1)), np.cumsum(det_w[:, :-1] * pattern, axis=1)], axis=1)
                counted.append(running[:, 1:] - running[:, restart])
            for wide in widths:
                runs = np.flatnonzero(width == wide)
                offset = np.arange(wide)[None, :]
                inside = offset < lengths[runs, None]  # [S, P]
                first, last = self.run_bounds[runs, None], self.run_bounds[runs + 1, None] - 1
                where = np.where(inside, self.run_position[np.minimum(first + offset, last)], self.size)
                tp_sum = np.cumsum(det_w[:, where], axis=2)  # [r, S, P]
                pattern = self.pattern_of[self.run_threshold[runs]]
                clipped = np.minimum(where, max(self.size - 1, 0))
                total = np.stack([counted[p][:, clipped[i]] for i, p in enumerate(pattern)], axis=1)
                positives = positives_all[:, self.run_category[runs]]
                with np.errstate(invalid="ignore", divide="ignore"):
                    pr = np.where(inside, tp_sum / (total + np.spacing(1)), 0.0)
                    rc = tp_sum / np.where(positives > 0, positives, 1.0)[:, :, None]
                envelope = np.maximum.accumulate(pr[:, :, ::-1], axis=2)[:, :, ::-1]
                reached = np.searchsorted(RECALL_THRESHOLDS, rc, side="right")
                reached[:, :, 1:] -= reached[:, :, :-1].copy()  # recall points first reached at each one
                run_sum = np.where(positives > 0, (envelope * reached).sum(axis=2), 0.0)  # [r, S]
                sums[start:start + step] += run_sum @ np.eye(_T)[self.run_threshold[runs]]
        return sums


def _precision(tp: np.ndarray, fp: np.ndarray, w: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """Interpolated precision `[r, T', R]` from score-sorted tp/fp flags `[T', D]`, weights `[r, D]`, npig `[r]`.

    Element for element the arithmetic of COCOeval.accumulate: cumulative sums, rc = tp / npig,
    pr = tp / (fp + tp + eps), the right-to-left precision envelope, and precision at the first
    position whose recall reaches each recall threshold (0 past the last one).
    """
    r, (t, d) = w.shape[0], tp.shape
    out = np.zeros((r, t, _R))
    if d == 0:
        return out
    step = max(1, _CHUNK_ELEMENTS // (t * d))
    for start in range(0, r, step):
        ws = w[start:start + step, None, :]
        tp_sum = np.cumsum(tp[None] * ws, axis=2)
        fp_sum = np.cumsum(fp[None] * ws, axis=2)
        rc = tp_sum / npig[start:start + step, None, None]
        pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        n = len(rc)
        out[start:start + n] = _interpolate(rc.reshape(n * t, d), pr.reshape(n * t, d)).reshape(n, t, _R)
    return out


def _interpolate(rc: np.ndarray, pr: np.ndarray) -> np.ndarray:
    """Rows of recall/precision curves `[N, D]` -> precision at the 101 recall thresholds `[N, R]`.

    COCOeval does `searchsorted(rc, recThrs, 'left')` row by row; equivalently, with `n[d]` the number
    of thresholds at or below rc[d], threshold j is read at the first d with n[d] > j. Those first
    positions are scattered at the start of each run of thresholds and carried forward, all rows at once.
    """
    rows, d = rc.shape
    envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    reached = np.searchsorted(RECALL_THRESHOLDS, rc, side="right")
    before = np.concatenate([np.zeros((rows, 1), dtype=reached.dtype), reached[:, :-1]], axis=1)
    row, pos = np.nonzero(reached > before)
    first = np.full((rows, _R), -1, dtype=np.int64)
    first[row, before[row, pos]] = pos
    first = np.maximum.accumulate(first, axis=1)
    valid = np.arange(_R)[None, :] < reached[:, -1:]
    return np.where(valid, np.take_along_axis(envelope, np.maximum(first, 0), axis=1), 0.0)


def coco_mean(values: np.ndarray) -> float:
    """`summarize()`'s average over the defined (> -1) entries; NaN where COCOeval reports -1."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else float("nan")


def coco_stats(precision: np.ndarray, recall: np.ndarray, area_labels: Sequence[str]) -> dict[str, float]:
    """COCOeval's twelve `stats` from one precision `[T, R, K, A]` and recall `[T, K, A, M]`, by name.

    Areas missing from `area_labels` (e.g. a table made for 'all' only) are left out of the result.
    """
    area = {label: i for i, label in enumerate(area_labels)}
    m100 = len(MAX_DETS) - 1
    stats: dict[str, float] = {}
    if "all" in area:
        a = area["all"]
        stats["AP"] = coco_mean(precision[:, :, :, a])
        stats["AP50"] = coco_mean(precision[_IOU50:_IOU50 + 1, :, :, a])
        stats["AP75"] = coco_mean(precision[_IOU75:_IOU75 + 1, :, :, a])
    for label, suffix in (("small", "s"), ("medium", "m"), ("large", "l")):
        if label in area:
            stats["AP" + suffix] = coco_mean(precision[:, :, :, area[label]])
    if "all" in area:
        for m, max_det in enumerate(MAX_DETS):
            stats[f"AR{max_det}"] = coco_mean(recall[:, :, area["all"], m])
    for label, suffix in (("small", "s"), ("medium", "m"), ("large", "l")):
        if label in area:
            stats["AR" + suffix] = coco_mean(recall[:, :, area[label], m100])
    return stats


def coco_metrics_from_matches(table, weights: Sequence[float] | np.ndarray | None = None) -> dict[str, float]:
    """AP, AP50, AP75, AR1, AR10, AR100 of one pass from its per-image match records.

    `table` is a pandas DataFrame of one pass's records (or a dict of per-image lists) with the
    columns `MATCH_COLUMNS` (area 'all', maxDets 100, as the detection evaluator writes them) and,
    optionally, `sample_id`: images are taken in ascending sample id, as COCOeval orders them, so
    the rows may come in any order. `weights` (one per row, in the table's row order) are image
    multiplicities, e.g. a bootstrap resample; None counts each image once and then the result equals
    COCOeval on those images exactly. Undefined metrics (no ground truth) are NaN.

    This is the literal replay of `accumulate()` for one row of weights: the reference that the
    vectorised `detection_statistics` (many resamples at once) is tested against.
    """
    match_table, order = match_table_from_records(table)
    if weights is None:
        w = np.ones((1, match_table.num_images))
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if len(w) != len(order):
            raise MatchTableError(f"coco_metrics_from_matches: {len(w)} weights for {len(order)} images")
        if not np.all(np.isfinite(w)) or (w < 0).any():
            raise MatchTableError("coco_metrics_from_matches: weights must be finite and >= 0")
        w = w[order][None, :]
    precision, recall = match_table.accumulate(w, [0])
    stats = coco_stats(precision[0], recall[0], ["all"])
    return {name: stats[name] for name in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")}


def match_table_from_records(table) -> tuple[MatchTable, np.ndarray]:
    """A one-area ('all') `MatchTable` from per-image match records, and the row order it put images in."""
    missing = [c for c in MATCH_COLUMNS if c not in table]
    if missing:
        raise MatchTableError(f"match records lack the column(s) {missing}; need {list(MATCH_COLUMNS)}")
    columns = {c: list(table[c]) for c in MATCH_COLUMNS}
    n = len(columns["dt_category"])
    if any(len(v) != n for v in columns.values()):
        raise MatchTableError(f"match records: columns have different lengths "
                              f"{ {c: len(v) for c, v in columns.items()} }")
    ids = np.asarray(list(table["sample_id"]), dtype=np.int64) if "sample_id" in table else np.arange(n)
    order = np.argsort(ids, kind="stable")

    def cat(name: str, dtype, rows: np.ndarray) -> np.ndarray:
        parts = [np.asarray(columns[name][i], dtype=dtype).reshape(-1) for i in rows]
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    dt_len = np.array([len(columns["dt_category"][i]) for i in order], dtype=np.int64)
    gt_len = np.array([len(columns["gt_category"][i]) for i in order], dtype=np.int64)
    for name, lengths, ref in (("dt_score", dt_len, "dt_category"), ("dt_match", dt_len, "dt_category"),
                               ("dt_ignore", dt_len, "dt_category"), ("gt_ignore", gt_len, "gt_category")):
        actual = np.array([len(columns[name][i]) for i in order], dtype=np.int64)
        bad = np.flatnonzero(actual != lengths)
        if bad.size:
            raise MatchTableError(f"match records: sample {int(ids[order[bad[0]]])} has {actual[bad[0]]} "
                                  f"{name} values for {lengths[bad[0]]} {ref} values")
    dt_category, gt_category = cat("dt_category", np.int64, order), cat("gt_category", np.int64, order)
    category_ids = np.unique(np.concatenate([dt_category, gt_category]))
    image = np.repeat(np.arange(n), dt_len)
    category = np.searchsorted(category_ids, dt_category)
    # rank within (image, category): records list an image's detections by descending score
    grouped = np.lexsort((np.arange(len(image)), category, image))
    new_group = np.ones(len(grouped), dtype=bool)
    new_group[1:] = (np.diff(image[grouped]) != 0) | (np.diff(category[grouped]) != 0)
    start = np.maximum.accumulate(np.where(new_group, np.arange(len(grouped)), 0))
    rank = np.empty(len(grouped), dtype=np.int64)
    rank[grouped] = np.arange(len(grouped)) - start
    positives = np.zeros((n, len(category_ids), 1))
    counted = ~cat("gt_ignore", bool, order)
    np.add.at(positives, (np.repeat(np.arange(n), gt_len)[counted],
                          np.searchsorted(category_ids, gt_category[counted]), 0), 1.0)
    match_table = MatchTable(
        num_images=n, num_categories=len(category_ids), image=image, category=category, rank=rank,
        score=cat("dt_score", np.float64, order), match=cat("dt_match", np.uint16, order)[:, None],
        ignore=cat("dt_ignore", np.uint16, order)[:, None], positives=positives,
    )
    return match_table, order
