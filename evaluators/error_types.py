"""Why a detector loses AP: TIDE's error types (Bolya et al., ECCV 2020) and what fixing each is worth.

"AP dropped 12 points under fog" does not say what to fix. TIDE splits every false positive into
one error type by its IoUs with the image's ground truth, and every missed object into "missed",
then asks how much AP50 would rise if that one type were fixed. Matching is COCO's (the IoU .50 match
of `COCOeval`, crowd regions ignored), over the detections COCO keeps (top 100 per image and
category), so the unfixed AP50 here is the scorecard's AP50.

A false positive with best same-class IoU `s` and best other-class IoU `o` (0 where there is no
such object) is, in TIDE's precedence order (first rule that applies):

1. background  — the image has no (non-crowd) ground truth at all;
2. localisation — bg <= s < fg: right class, box too far off;
3. classification — o >= fg: a good box on an object of another class;
4. duplicate — s >= fg: a good box on an object a higher-scoring detection already matched;
5. background  — max(s, o) < bg: on nothing;
6. both — otherwise (bg <= o < fg and s < bg): wrong class and a poor box.

Fixes, each applied alone: a classification error is relabelled to its object's class and a
localisation error snapped onto its object — either becomes a true positive when the object was not
matched, and only the highest-scoring such error per object does (the others are removed, as are
those whose object was already matched); duplicate, both and background errors are removed; missed
objects (not matched, and not the target of a fixable classification / localisation error) are
removed from the ground truth count. `delta_ap` = AP50 after the fix - AP50 before (NaN when either
is undefined: no ground truth left).
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from .coco_matching import MatchTable, coco_mean

ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
"""Error type names in report order; codes 0-4 are detection errors, missed objects are counted per object."""
CLASSIFICATION, LOCALISATION, BOTH, DUPLICATE, BACKGROUND = range(5)
TRUE_POSITIVE = -1
IGNORED = -2
"""Codes of detections that are no error: matched at IoU .50, or matched to a crowd region (not counted)."""

FOREGROUND_IOU = 0.5
BACKGROUND_IOU = 0.1


def classify_detections(det_boxes: np.ndarray, det_category: np.ndarray, det_tp: np.ndarray,
                        det_ignored: np.ndarray, gt_boxes: np.ndarray, gt_category: np.ndarray,
                        gt_used: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The error type of each detection of one image, its fix, and which objects were missed.

    Detections (xywh boxes) must be in descending score order, so that the first fixable error on an
    object is the highest-scoring one; `det_tp` / `det_ignored` are COCO's IoU .50 outcome. Ground
    truth is the image's non-crowd objects; `gt_used` marks those matched by a true positive.
    Returns `error` [D] int8 (a code, TRUE_POSITIVE or IGNORED), `fix_category` [D] (the category the
    fixed detection is a true positive of, -1 when fixing removes it) and `missed` [G] bool.
    """
    d, g = len(det_category), len(gt_category)
    error = np.where(det_tp, TRUE_POSITIVE, np.where(det_ignored, IGNORED, BACKGROUND)).astype(np.int8)
    fix_category = np.full(d, -1, dtype=np.int64)
    missed = ~np.asarray(gt_used, dtype=bool)
    if g == 0 or d == 0:
        return error, fix_category, missed
    iou = np.asarray(mask_utils.iou([list(map(float, b)) for b in det_boxes],
                                    [list(map(float, b)) for b in gt_boxes], [0] * g)).reshape(d, g)
    same = det_category[:, None] == gt_category[None, :]
    same_iou, other_iou = np.where(same, iou, 0.0), np.where(same, 0.0, iou)
    claimed = np.zeros(g, dtype=bool)
    for i in np.flatnonzero(error == BACKGROUND):
        s_idx, o_idx = int(same_iou[i].argmax()), int(other_iou[i].argmax())
        s, o = same_iou[i, s_idx], other_iou[i, o_idx]
        target = -1
        if BACKGROUND_IOU <= s < FOREGROUND_IOU:
            error[i], target = LOCALISATION, s_idx
        elif o >= FOREGROUND_IOU:
            error[i], target = CLASSIFICATION, o_idx
        elif s >= FOREGROUND_IOU:
            error[i] = DUPLICATE
        elif max(s, o) >= BACKGROUND_IOU:
            error[i] = BOTH
        if target >= 0 and not gt_used[target]:
            missed[target] = False  # a fixable error is aimed at it: it was found, just badly
            if not claimed[target]:
                claimed[target] = True
                fix_category[i] = gt_category[target]
    return error, fix_category, missed


def error_type_breakdown(num_images: int, num_categories: int, image: np.ndarray, category: np.ndarray,
                         rank: np.ndarray, score: np.ndarray, error: np.ndarray, fix_category: np.ndarray,
                         positives: np.ndarray, missed: np.ndarray) -> dict[str, dict[str, float]]:
    """`{type: {"count", "delta_ap"}}` for one pass.

    Detection rows (category indices) are in `MatchTable` order: by image, then descending score.
    `positives` / `missed` are `[num_images, num_categories]` counts of non-ignored and missed objects.
    """
    counted = error != IGNORED
    image, category, rank, score = image[counted], category[counted], rank[counted], score[counted]
    error, fix_category = error[counted], fix_category[counted]
    tp = error == TRUE_POSITIVE

    def ap50(keep: np.ndarray, cat: np.ndarray, hit: np.ndarray, gt: np.ndarray) -> float:
        table = MatchTable(num_images=num_images, num_categories=num_categories, image=image[keep],
                           category=cat[keep], rank=rank[keep], score=score[keep],
                           match=hit[keep].astype(np.uint16)[:, None], ignore=np.zeros((int(keep.sum()), 1), np.uint16),
                           positives=gt[:, :, None].astype(np.float64))
        precision, _ = table.accumulate(np.ones((1, num_images)), areas=[0], ious=[0])
        return coco_mean(precision[0, :, :, :, 0])

    everything = np.ones(len(error), dtype=bool)
    before = ap50(everything, category, tp, positives)
    out: dict[str, dict[str, float]] = {}
    for code, name in enumerate(ERROR_TYPES[:-1]):
        chosen = error == code
        fixed = chosen & (fix_category >= 0)
        after = ap50(~(chosen & ~fixed), np.where(fixed, fix_category, category), tp | fixed, positives)
        out[name] = {"count": int(chosen.sum()), "delta_ap": after - before}
    after = ap50(everything, category, tp, positives - missed)
    out["missed"] = {"count": int(missed.sum()), "delta_ap": after - before}
    return out
