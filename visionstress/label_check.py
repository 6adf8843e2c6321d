"""Silent label mismatches, caught after the first clean batches.

A model whose output indices mean something else than the dataset's labels scores near zero with no
error anywhere: a post-process returning 0-based labels against COCO ids starting at 1, a YOLO-style
model's 80 contiguous indices against COCO's 91-id numbering, a class list in another order. The
numbers then look like a terrible model, and every robustness verdict built on them is wrong. These
checks look for the signature of a numbering problem rather than of a bad model: the predictions are
*right in the wrong numbering* — boxes land on the objects (class-agnostic matches) or the confusion is
concentrated on one wrong class per true class — and they name the likely fix.

Each check needs evidence: at least `MIN_EVIDENCE` matched objects or images, a clean score near
zero, and one explanation (a constant offset, the COCO 80->91 map, or a permutation) that accounts for
most of the matches. A genuinely bad model spreads its errors and passes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MIN_EVIDENCE = 10
EXPLAINED = 0.6
"""Share of the matched pairs an explanation must account for to be named."""
NEAR_ZERO = 0.2
"""Share of matched pairs whose labels agree below which a run is suspected of a numbering problem."""


def classification_mismatch(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]) -> str | None:
    """A message when the predictions look like the labels in another numbering, else None."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    k = len(class_names)
    if len(labels) < MIN_EVIDENCE or k < 2 or (labels == predictions).mean() >= NEAR_ZERO:
        return None
    explanation = _explain(list(zip(labels.tolist(), predictions.tolist())), k)
    if explanation is None:
        return None
    kind, detail, share = explanation
    seen = f"top-1 on the clean images is {100 * (labels == predictions).mean():.0f}%, but {100 * share:.0f}% of " \
           f"the predictions follow {detail}"
    if kind == "offset":
        fix = "the model's output indices are shifted against the dataset's labels: check --class-names (one name " \
              "per output, in the model's index order) or the order of the class folders"
    else:
        fix = "the model's classes are in another order than the dataset's: give --class-names with the model's " \
              "class names in its output order"
    return f"labels look mismatched: {seen}; {fix} (--skip-label-check runs anyway)"


def detection_mismatch(records: Sequence[Mapping[str, Any]], category_ids: Sequence[int],
                       mapping_source: str) -> str | None:
    """A message when detections sit on the objects with consistently wrong labels, else None.

    `records` are clean-pass detection records (gt_boxes, gt_labels, pred_boxes, pred_labels,
    pred_scores per image, labels in dataset category ids after the run's label map)."""
    pairs = []
    objects = 0
    for record in records:
        gt = np.asarray(record["gt_boxes"], np.float64).reshape(-1, 4)
        objects += len(gt)
        pred = np.asarray(record["pred_boxes"], np.float64).reshape(-1, 4)
        if not len(gt) or not len(pred):
            continue
        scores = np.asarray(record["pred_scores"], np.float64)
        for g, row in enumerate(_iou(gt, pred)):
            on_it = np.flatnonzero(row >= 0.5)
            if on_it.size:  # the model's most confident detection on this object
                pairs.append((int(record["gt_labels"][g]), int(record["pred_labels"][on_it[scores[on_it].argmax()]])))
    if len(pairs) < MIN_EVIDENCE or len(pairs) < 0.3 * objects:
        return None
    agree = np.mean([g == p for g, p in pairs])
    if agree >= NEAR_ZERO:
        return None
    explanation = _explain(pairs, None, coco=True, category_ids=category_ids)
    seen = (f"{len(pairs)} of {objects} objects have a detection on them (IoU >= 0.5, any class) but only "
            f"{100 * agree:.0f}% carry the object's category (label map: {mapping_source})")
    if explanation is None:
        return (f"labels look mismatched: {seen}; the model's label numbering differs from the dataset's category "
                f"ids: pass --label-map (a file {{model_label: category_id}}, or coco80) (--skip-label-check runs "
                f"anyway)")
    kind, detail, share = explanation
    fix = {"offset": f"the labels are shifted: {detail}; pass a --label-map file mapping each model label to "
                     "label + offset",
           "coco80": "the model predicts contiguous COCO indices 0..79: pass --label-map coco80",
           "permutation": f"the labels are permuted: {detail}; pass a --label-map file with that mapping"}[kind]
    return f"labels look mismatched: {seen}; {fix} ({100 * share:.0f}% of the matches agree with it; " \
           f"--skip-label-check runs anyway)"


def _explain(pairs: list[tuple[int, int]], k: int | None, coco: bool = False,
             category_ids: Sequence[int] = ()) -> tuple[str, str, float] | None:
    """The explanation accounting for most pairs among: a constant offset, the COCO 80->91 map, a
    permutation (one predicted label per true label, all different). A permutation that explains clearly
    more than the simpler offset wins; otherwise the simpler one is named."""
    n = len(pairs)
    candidates: list[tuple[str, str, float]] = []
    offsets = Counter((p - g) if k is None else (p - g) % k for g, p in pairs)
    offset, count = offsets.most_common(1)[0]
    if offset != 0:
        if k is not None and offset > k // 2:
            offset -= k
        candidates.append(("offset", f"predicted label = true label {'+' if offset > 0 else '-'} {abs(offset)}",
                           count / n))
    if coco:
        from visionstress.models.label_map import COCO80_TO_COCO91

        candidates.append(("coco80", "", sum(COCO80_TO_COCO91.get(p) == g for g, p in pairs) / n))
    by_true: dict[int, Counter] = {}
    for g, p in pairs:
        by_true.setdefault(g, Counter())[p] += 1
    mapping = {g: c.most_common(1)[0][0] for g, c in by_true.items()}
    if len(mapping) >= 2 and len(set(mapping.values())) == len(mapping) and any(g != p for g, p in mapping.items()):
        shown = ", ".join(f"{p} -> {g}" for g, p in sorted(mapping.items(), key=lambda kv: kv[1])[:8])
        share = sum(by_true[g][p] for g, p in mapping.items()) / n
        candidates.append(("permutation", f"model label -> dataset label {shown}", share))
    candidates = [c for c in candidates if c[2] >= EXPLAINED]
    if not candidates:
        return None
    best = max(c[2] for c in candidates)
    return next(c for c in candidates if c[2] >= best - 0.05)  # the simplest of the (nearly) best


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` [N, 4] with every box of `b` [M, 4] (xyxy)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
