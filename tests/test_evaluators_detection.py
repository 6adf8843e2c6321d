"""The detection evaluator against pycocotools' COCOeval run directly on the whole set, plus hand-built cases.

Every AP/AR of a row must equal COCOeval's `stats` to floating-point precision whatever the batching,
because the evaluator only ever runs COCOeval on one batch and replays accumulate/summarize itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionstress.batch import ObjectTargets
from visionstress.evaluators import (DEFAULT_SIZE_BINS, DetectionEvaluator, DetectionEvaluatorError,
                                     coco_metrics_from_matches)
from visionstress.evaluators.detection import COCO_METRICS

ROOT = Path(__file__).resolve().parents[1]
EXACT = 1e-12


def _categories(k: int) -> list[dict]:
    return [{"id": 3 * c + 1, "name": f"cat{c}"} for c in range(k)]  # sparse ids, like COCO's


def _dataset(seed: int, n: int = 24, k: int = 3, mode: str = "noisy", crowd: float = 0.0, empty: float = 0.2):
    """Seeded images: targets and detections (tensors), sample ids non-contiguous and unordered."""
    rng = np.random.default_rng(seed)
    cats = np.array([c["id"] for c in _categories(k)])
    ids = rng.choice(1000, size=n, replace=False)
    targets, boxes, scores, labels = [], [], [], []
    for i in range(n):
        g = 0 if rng.random() < empty else int(rng.integers(1, 7))
        xy = rng.uniform(0, 300, (g, 2))
        wh = np.exp(rng.uniform(np.log(4), np.log(160), (g, 2)))
        gt = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        gl = rng.choice(cats, g)
        t = ObjectTargets(boxes=torch.from_numpy(gt), labels=torch.from_numpy(gl),
                          iscrowd=torch.from_numpy(rng.random(g) < crowd))
        if crowd:
            t.area = torch.from_numpy((wh.prod(1) * rng.uniform(0.5, 1.0, g)).astype(np.float32))  # segment < box
        m = 150 if (mode == "crowded" and i == 0) else int(rng.integers(0, 12))
        if mode == "empty":
            m = 0
        db = np.concatenate([rng.uniform(0, 300, (m, 2)), np.zeros((m, 2))], 1)
        db[:, 2:] = db[:, :2] + np.exp(rng.uniform(np.log(4), np.log(160), (m, 2)))
        dl = rng.choice(cats, m)
        if g and mode in ("noisy", "duplicates", "crowded"):
            src = rng.integers(0, g, m)
            near = rng.random(m) < (0.95 if mode == "duplicates" else 0.7)
            jitter = rng.normal(0, 0.08, (near.sum(), 4)) * np.repeat(gt[src[near], 2:] - gt[src[near], :2], 2, 1)
            db[near] = gt[src[near]] + jitter
            db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 0.5)
            dl[near] = np.where(rng.random(near.sum()) < 0.85, gl[src[near]], rng.choice(cats, near.sum()))
        if mode == "crowded" and i == 0:
            dl[:] = cats[0]
        targets.append(t)
        boxes.append(torch.from_numpy(db.astype(np.float32)))
        scores.append(torch.from_numpy(np.round(rng.random(m), 2).astype(np.float32)))  # ties on purpose
        labels.append(torch.from_numpy(dl))
    return ids, targets, SimpleNamespace(boxes=boxes, scores=scores, labels=labels)


def _select(preds: SimpleNamespace, index) -> SimpleNamespace:
    return SimpleNamespace(**{f: [getattr(preds, f)[i] for i in index] for f in ("boxes", "scores", "labels")})


def _feed(ev: DetectionEvaluator, name: str, severity: int, ids, targets, preds, batch: int = 5, order=None):
    order = np.arange(len(ids)) if order is None else order
    columns = []
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        columns.append(ev.update_arrays(name, severity, torch.as_tensor(ids[idx]), [(400, 400)] * len(idx),
                                 [targets[i] for i in idx], _select(preds, idx)))
    return pd.concat([pd.DataFrame(c) for c in columns], ignore_index=True)


def _coco_reference(ids, targets, preds, categories, bins=DEFAULT_SIZE_BINS) -> COCOeval:
    """COCOeval, run once on the whole set, with COCO's area ranges plus the user bins."""
    images = [{"id": int(i), "height": 400, "width": 400} for i in ids]
    gt_anns, dt_anns = [], []
    for image_id, t, b, s, lab in zip(ids, targets, preds.boxes, preds.scores, preds.labels):
        g = t.boxes.double().numpy()
        for j in range(len(g)):
            x, y, w, h = g[j, 0], g[j, 1], g[j, 2] - g[j, 0], g[j, 3] - g[j, 1]
            area = w * h if t.area is None else float(t.area[j])
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": int(image_id), "category_id": int(t.labels[j]),
                            "bbox": [x, y, w, h], "area": area,
                            "iscrowd": int(t.iscrowd[j]) if t.iscrowd is not None else 0})
        d = b.double().numpy()
        for j in range(len(d)):
            dt_anns.append({"image_id": int(image_id), "category_id": int(lab[j]), "score": float(s[j]),
                            "bbox": [d[j, 0], d[j, 1], d[j, 2] - d[j, 0], d[j, 3] - d[j, 1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        gt.createIndex()
        if dt_anns:
            dt = gt.loadRes(dt_anns)
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = {"images": images, "annotations": [], "categories": categories}
            dt.createIndex()
        coco_eval = COCOeval(gt, dt, iouType="bbox")
        coco_eval.params.catIds = [c["id"] for c in categories]
        coco_eval.params.areaRng = coco_eval.params.areaRng + [list(r) for r in bins.values()]
        coco_eval.params.areaRngLbl = coco_eval.params.areaRngLbl + list(bins)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def _reference_mean(values: np.ndarray) -> float:
    values = values[values > -1]
    return float(np.mean(values)) if values.size else math.nan


def _same(a: float, b: float, tol: float = EXACT) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


CASES = {
    "noisy": dict(seed=1, mode="noisy"),
    "random": dict(seed=2, mode="random"),
    "duplicates": dict(seed=3, mode="duplicates"),
    "many_categories": dict(seed=4, mode="noisy", k=20, n=30),
    "crowded_over_100": dict(seed=5, mode="crowded", crowd=0.25),
    "empty_predictions": dict(seed=6, mode="empty"),
    "mostly_unannotated": dict(seed=7, mode="noisy", empty=0.7),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rows_equal_cocoeval_on_the_whole_set(case):
    params = CASES[case]
    k = params.get("k", 3)
    ids, targets, preds = _dataset(**params)
    categories = _categories(k)
    ev = DetectionEvaluator(categories, bootstrap=0)
    records = _feed(ev, "clean", 0, ids, targets, preds)
    res = ev.finalize()
    row = res.row("clean", 0)
    ref = _coco_reference(ids, targets, preds, categories)
    for name, value in zip(COCO_METRICS, ref.stats):
        expected = math.nan if value == -1 else float(value)
        assert _same(row.metrics[name], expected), (name, row.metrics[name], expected)
    precision, recall = ref.eval["precision"], ref.eval["recall"]
    assert _same(row.metrics["AP_tiny"], _reference_mean(precision[:, :, :, 4, 2]))
    assert _same(row.metrics["recall_tiny"], _reference_mean(recall[:, :, 4, 2]))
    for c, cat in enumerate(categories):
        assert _same(res.per_class_ap["clean@0"][cat["name"]], _reference_mean(precision[:, :, c, 0, 2]))
    for a, label in enumerate(["small", "medium", "large", "tiny"], start=1):
        assert _same(res.size["clean@0"][label]["AP"], _reference_mean(precision[:, :, :, a, 2]))
        assert _same(res.size["clean@0"][label]["recall"], _reference_mean(recall[:, :, a, 2]))
    # the per-image match records alone reproduce COCOeval too (shuffled rows: images are ordered by sample id)
    shuffled = records.sample(frac=1.0, random_state=0)
    from_records = coco_metrics_from_matches(shuffled)
    for name, value in zip(COCO_METRICS, ref.stats):
        if name in from_records:
            assert _same(from_records[name], math.nan if value == -1 else float(value)), name
    assert len(records) == len(ids) and set(records["sample_id"]) == set(ids.tolist())


def test_batching_and_order_do_not_change_anything():
    ids, targets, preds = _dataset(seed=11, n=30, mode="noisy", crowd=0.1)
    rows = []
    for batch, order in ((30, None), (4, None), (7, np.random.default_rng(0).permutation(30))):
        ev = DetectionEvaluator(_categories(3), bootstrap=20, seed=3)
        _feed(ev, "clean", 0, ids, targets, preds, batch=batch, order=order)
        res = ev.finalize()
        rows.append((res.rows[0], res.error_types, res.size))
    for row, errors, size in rows[1:]:
        assert row.metrics.keys() == rows[0][0].metrics.keys()
        assert all(_same(row.metrics[m], rows[0][0].metrics[m], 0.0) for m in row.metrics)
        assert row.ci == rows[0][0].ci
        assert errors == rows[0][1] and size.keys() == rows[0][2].keys()


def test_records_metrics_with_weights():
    ids, targets, preds = _dataset(seed=12, n=20, mode="noisy")
    ev = DetectionEvaluator(_categories(3), bootstrap=0)
    records = _feed(ev, "clean", 0, ids, targets, preds)
    once = coco_metrics_from_matches(records)
    twice = coco_metrics_from_matches(records, weights=np.full(len(records), 2))
    assert all(_same(once[m], twice[m], 1e-9) for m in once)
    # weight 0 = the image left out: equals COCOeval on the remaining images
    weights = np.ones(len(records))
    weights[:6] = 0
    kept = records["sample_id"].to_numpy()[6:]
    keep = [int(np.flatnonzero(ids == s)[0]) for s in kept]
    ref = _coco_reference(ids[keep], [targets[i] for i in keep], _select(preds, keep), _categories(3))
    partial = coco_metrics_from_matches(records, weights=weights)
    for name, value in zip(COCO_METRICS, ref.stats):
        if name in partial:
            assert _same(partial[name], float(value)), name
    # a dict of lists works as well as a DataFrame
    assert coco_metrics_from_matches(records.to_dict(orient="list")) == once


def test_bootstrap_intervals_bracket_the_point_estimate():
    ids, targets, preds = _dataset(seed=13, n=40, mode="noisy")
    ev = DetectionEvaluator(_categories(3), bootstrap=100, seed=0)
    _feed(ev, "clean", 0, ids, targets, preds)
    row = ev.finalize().rows[0]
    for name in ("AP", "AP50", "AR100", "fp_per_image", "miss_rate"):
        lo, hi = row.ci[name]
        assert lo <= row.metrics[name] <= hi and lo < hi, name
    no_ci = DetectionEvaluator(_categories(3), bootstrap=0)
    _feed(no_ci, "clean", 0, ids, targets, preds)
    assert no_ci.finalize().rows[0].ci == {}


def test_demo_ground_truth_as_predictions_gives_perfect_ap():
    data = json.loads((ROOT / "data/demo/shapes/val_instances.json").read_text())
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    ids = np.array(sorted(by_image))
    targets, boxes, scores, labels = [], [], [], []
    for i in ids:
        anns = by_image[int(i)]
        xyxy = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                             for a in anns], dtype=torch.float32).reshape(-1, 4)
        lab = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        targets.append(ObjectTargets(boxes=xyxy, labels=lab, area=torch.tensor([a["area"] for a in anns]),
                                     iscrowd=torch.tensor([bool(a["iscrowd"]) for a in anns])))
        boxes.append(xyxy.clone())
        scores.append(torch.ones(len(anns)))
        labels.append(lab.clone())
    ev = DetectionEvaluator(data["categories"], bootstrap=0)
    _feed(ev, "clean", 0, ids, targets, SimpleNamespace(boxes=boxes, scores=scores, labels=labels), batch=16)
    res = ev.finalize()
    row = res.rows[0]
    for name in ("AP", "AP50", "AP75", "AR100"):
        assert abs(row.metrics[name] - 1.0) < EXACT, name
    assert row.metrics["fp_per_image"] == 0 and row.metrics["miss_rate"] == 0
    assert all(abs(v - 1.0) < EXACT for v in res.per_class_ap["clean@0"].values())
    assert all(e["count"] == 0 for e in res.error_types["clean@0"].values())


def _image(boxes, labels, **kw):
    return ObjectTargets(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                         labels=torch.tensor(labels, dtype=torch.int64), **kw)


def _preds(*per_image):
    """per_image: lists of (x1, y1, x2, y2, score, label)."""
    rows = [torch.tensor(p, dtype=torch.float64).reshape(-1, 6) for p in per_image]
    return SimpleNamespace(boxes=[r[:, :4].float() for r in rows], scores=[r[:, 4].float() for r in rows],
                           labels=[r[:, 5].long() for r in rows])


def test_operating_point_counts_by_hand():
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    targets = [
        _image([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 90, 90]], [1, 1, 2], iscrowd=[False, False, True]),
        _image([[0, 0, 30, 30]], [2]),
    ]
    preds = _preds(
        [(0, 0, 10, 10, .9, 1),      # tp
         (0, 0, 10, 10, .8, 1),      # duplicate: fp
         (20, 20, 40, 40, .3, 1),    # would be tp, but below the threshold: the object counts as missed
         (52, 52, 88, 88, .7, 2),    # inside the crowd region: ignored, neither tp nor fp
         (200, 200, 220, 220, .6, 7)],  # label 7 is no dataset category: not evaluated at all
        [(100, 100, 120, 120, .95, 2)],  # fp; the object is missed
    )
    ev = DetectionEvaluator(cats, score_threshold=0.5, bootstrap=0)
    cols = ev.update_arrays("clean", 0, [10, 11], [(128, 128)] * 2, targets, preds)
    assert cols["tp"] == [1, 0] and cols["fp"] == [1, 1] and cols["fn"] == [1, 1]
    assert cols["num_gt"] == [2, 1] and cols["num_pred"] == [3, 1]
    assert cols["gt_ignore"][0].tolist() == [False, False, True]
    assert cols["dt_score"][0].tolist() == sorted(cols["dt_score"][0].tolist(), reverse=True)
    assert 7 not in cols["pred_labels"][0].tolist()
    row = ev.finalize().rows[0]
    assert row.metrics["fp_per_image"] == 1.0
    assert row.metrics["miss_rate"] == pytest.approx(2 / 3)


def test_occlusion_bins_and_dropped_objects():
    cats = [{"id": 1, "name": "a"}]
    boxes = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10], [80, 0, 90, 10]]
    t = _image(boxes, [1] * 5, occluded=[0.0, 0.1, 0.3, 0.6, 0.9])
    t.dropped = 2
    preds = _preds([(0, 0, 10, 10, .9, 1), (20, 0, 30, 10, .9, 1), (40, 0, 50, 10, .2, 1), (60, 0, 70, 10, .8, 1)])
    ev = DetectionEvaluator(cats, bootstrap=0)
    ev.update_arrays("occlusion", 2, [0], [(100, 100)], [t], preds)
    res = ev.finalize()
    occ = res.occlusion["occlusion@2"]
    assert occ["0-25%"] == {"miss_rate": 0.0, "num_gt": 2}
    assert occ["25-50%"] == {"miss_rate": 1.0, "num_gt": 1}  # found only below the score threshold
    assert occ["50-75%"] == {"miss_rate": 0.0, "num_gt": 1}
    assert occ["75-100%"] == {"miss_rate": 1.0, "num_gt": 1}
    assert res.rows[0].metrics["objects_dropped"] == 2.0


def test_passes_rows_and_keys():
    ids, targets, preds = _dataset(seed=14, n=10)
    ev = DetectionEvaluator(_categories(3), size_bins={"tiny": (0, 256), "huge": (300 ** 2, 1e10)}, bootstrap=0)
    _feed(ev, "fog", 3, ids, targets, preds)
    _feed(ev, "clean", 0, ids, targets, preds)
    res = ev.finalize()
    assert [(r.perturbation, r.severity) for r in res.rows] == [("clean", 0), ("fog", 3)]
    assert set(res.size["fog@3"]) == {"small", "medium", "large", "tiny", "huge"}
    assert {"AP_tiny", "AP_huge", "recall_tiny", "recall_huge"} <= set(res.rows[1].metrics)
    fog, clean = res.row("fog", 3).metrics, res.row("clean", 0).metrics
    assert all(_same(fog[m], clean[m], 0.0) for m in clean) and math.isnan(fog["AP_huge"])
    assert res.occlusion == {}
    with pytest.raises(KeyError, match="fog@3"):
        res.row("blur", 1)


def test_bad_input_is_reported_clearly():
    cats = [{"id": 1, "name": "a"}]
    good = [_image([[0, 0, 10, 10]], [1])]
    with pytest.raises(DetectionEvaluatorError, match="categories is empty"):
        DetectionEvaluator([])
    with pytest.raises(DetectionEvaluatorError, match="appears twice"):
        DetectionEvaluator([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
    with pytest.raises(DetectionEvaluatorError, match="size bin name 'small'"):
        DetectionEvaluator(cats, size_bins={"small": (0, 10)})
    with pytest.raises(DetectionEvaluatorError, match="low < high"):
        DetectionEvaluator(cats, size_bins={"tiny": (10, 5)})
    ev = DetectionEvaluator(cats, bootstrap=0)
    with pytest.raises(DetectionEvaluatorError, match="not dataset category ids"):
        ev.update_arrays("clean", 0, [0], [(20, 20)], [_image([[0, 0, 10, 10]], [5])], _preds([]))
    with pytest.raises(DetectionEvaluatorError, match="x2 >= x1"):
        ev.update_arrays("clean", 0, [0], [(20, 20)], good, _preds([(5, 5, 2, 2, .5, 1)]))
    with pytest.raises(DetectionEvaluatorError, match="1 sample ids"):
        ev.update_arrays("clean", 0, [0], [(20, 20)], good + good, _preds([], []))
    with pytest.raises(DetectionEvaluatorError, match="`boxes`, `scores` and `labels`"):
        ev.update_arrays("clean", 0, [0], [(20, 20)], good, {"boxes": []})
    with pytest.raises(DetectionEvaluatorError, match="severity"):
        ev.update_arrays("clean", 2, [0], [(20, 20)], good, _preds([]))
    with pytest.raises(DetectionEvaluatorError, match="no predictions"):
        ev.finalize()
    ev.update_arrays("clean", 0, [0], [(20, 20)], good, _preds([]))
    ev.update_arrays("clean", 0, [0], [(20, 20)], good, _preds([]))
    with pytest.raises(DetectionEvaluatorError, match=r"sample ids \[0\] more than once"):
        ev.finalize()
