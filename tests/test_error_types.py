"""TIDE error types: one hand-built image per type, with the AP50 gain of fixing it worked out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from visionstress.batch import ObjectTargets
from visionstress.evaluators import ERROR_TYPES, DetectionEvaluator
from visionstress.evaluators.error_types import (BACKGROUND, BOTH, CLASSIFICATION, DUPLICATE, IGNORED,
                                                 LOCALISATION, TRUE_POSITIVE, classify_detections)

CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
TOL = 1e-12


def _errors(gt_boxes, gt_labels, dets):
    """Error breakdown and AP50 of one image; dets are (x1, y1, x2, y2, score, label)."""
    d = torch.tensor(dets, dtype=torch.float64).reshape(-1, 6)
    target = ObjectTargets(boxes=torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
                           labels=torch.tensor(gt_labels))
    preds = SimpleNamespace(boxes=[d[:, :4].float()], scores=[d[:, 4].float()], labels=[d[:, 5].long()])
    ev = DetectionEvaluator(CATS, bootstrap=0)
    ev.update_arrays("clean", 0, [0], [(128, 128)], [target], preds)
    res = ev.finalize()
    return res.error_types["clean@0"], res.rows[0].metrics["AP50"]


def _only(errors: dict, name: str, count: int = 1) -> None:
    for other in ERROR_TYPES:
        if other != name and other != "missed":
            assert errors[other]["count"] == 0, other
    assert errors[name]["count"] == count


def test_classification_error():
    # a good box on the b object, labelled a; fixing relabels it and class b goes from AP 0 to 1
    errors, ap50 = _errors([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2],
                           [(0, 0, 10, 10, .9, 1), (20, 20, 40, 40, .8, 1)])
    _only(errors, "classification")
    assert ap50 == pytest.approx(0.5, abs=TOL)
    assert errors["classification"]["delta_ap"] == pytest.approx(0.5, abs=TOL)
    assert errors["missed"]["count"] == 0  # its object was found, only mislabelled


def test_localisation_error():
    # IoU 100 / 250 = 0.4 with the only object: snapping the box makes it a true positive
    errors, ap50 = _errors([[0, 0, 10, 10]], [1], [(0, 0, 10, 25, .9, 1)])
    _only(errors, "localisation")
    assert ap50 == 0.0
    assert errors["localisation"]["delta_ap"] == pytest.approx(1.0, abs=TOL)
    assert errors["missed"]["count"] == 0


def test_both_error():
    # wrong class and IoU 0.4: removing it lifts class a from precision 1/2 to 1 (AP50 0.25 -> 0.5)
    errors, ap50 = _errors([[0, 0, 10, 10], [50, 50, 60, 60]], [2, 1],
                           [(0, 0, 10, 25, .9, 1), (50, 50, 60, 60, .5, 1)])
    _only(errors, "both")
    assert ap50 == pytest.approx(0.25, abs=TOL)
    assert errors["both"]["delta_ap"] == pytest.approx(0.25, abs=TOL)


def test_duplicate_error():
    # tp .9, duplicate .8 (IoU 100/110), tp .7 on a second object: recall 1/2 at precision 1, then 2/3
    errors, ap50 = _errors([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1],
                           [(0, 0, 10, 10, .9, 1), (0, 0, 10, 11, .8, 1), (50, 50, 60, 60, .7, 1)])
    _only(errors, "duplicate")
    by_hand = (51 * 1.0 + 50 * 2 / 3) / 101  # 101 recall points: 0..0.5 at precision 1, the rest at 2/3
    assert ap50 == pytest.approx(by_hand, abs=TOL)
    assert errors["duplicate"]["delta_ap"] == pytest.approx(1 - by_hand, abs=TOL)


def test_background_error():
    errors, ap50 = _errors([[0, 0, 10, 10]], [1], [(100, 100, 110, 110, .9, 1), (0, 0, 10, 10, .5, 1)])
    _only(errors, "background")
    assert ap50 == pytest.approx(0.5, abs=TOL)
    assert errors["background"]["delta_ap"] == pytest.approx(0.5, abs=TOL)


def test_missed_objects():
    # one of two objects found: recall 1/2 at precision 1 -> AP50 51/101; without the missed one, 1
    errors, ap50 = _errors([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 1], [(0, 0, 10, 10, .9, 1)])
    _only(errors, "missed")
    assert errors["missed"]["count"] == 1
    assert ap50 == pytest.approx(51 / 101, abs=TOL)
    assert errors["missed"]["delta_ap"] == pytest.approx(1 - 51 / 101, abs=TOL)


def test_perfect_detector_has_no_errors():
    errors, ap50 = _errors([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2],
                           [(0, 0, 10, 10, .9, 1), (20, 20, 40, 40, .8, 2)])
    assert ap50 == pytest.approx(1.0, abs=TOL)
    assert all(e["count"] == 0 and e["delta_ap"] == 0 for e in errors.values())


def test_precedence_and_one_fix_per_object():
    gt_boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float64)  # xywh: an a and a b object
    gt_category = np.array([0, 1])
    det_boxes = np.array([[0, 0, 10, 25],    # same-class IoU .4 and other-class .4: localisation first
                          [0, 0, 10, 30],    # localisation on the same object, lower score: removed when fixed
                          [0, 0, 10, 10],    # ignored (crowd) detections are no error
                          [0, 0, 10, 11]], dtype=np.float64)
    det_category = np.array([0, 0, 0, 1])
    error, fix, missed = classify_detections(det_boxes, det_category, np.array([False, False, False, True]),
                                             np.array([False, False, True, False]), gt_boxes, gt_category,
                                             np.array([False, True]))
    assert error.tolist() == [LOCALISATION, LOCALISATION, IGNORED, TRUE_POSITIVE]
    assert fix.tolist() == [0, -1, -1, -1]
    assert missed.tolist() == [False, False]
    # a good box on an object of another class that is already matched: classification, but not fixable
    error, fix, _ = classify_detections(np.array([[0, 0, 10, 10.]]), np.array([0]), np.array([False]),
                                        np.array([False]), gt_boxes[1:], gt_category[1:], np.array([True]))
    assert error.tolist() == [CLASSIFICATION] and fix.tolist() == [-1]
    # no ground truth at all: background; IoU .2 with another class only: both; IoU .6, used object: duplicate
    assert classify_detections(det_boxes[:1], det_category[:1], np.array([False]), np.array([False]),
                               np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))[0].tolist() == [BACKGROUND]
    both = classify_detections(np.array([[0, 0, 10, 50.]]), np.array([0]), np.array([False]), np.array([False]),
                               gt_boxes[1:], gt_category[1:], np.array([False]))
    assert both[0].tolist() == [BOTH] and both[2].tolist() == [True]
    dup = classify_detections(np.array([[0, 0, 10, 16.]]), np.array([1]), np.array([False]), np.array([False]),
                              gt_boxes[1:], gt_category[1:], np.array([True]))
    assert dup[0].tolist() == [DUPLICATE]


def _random_scene(seed: int, n: int = 25):
    """Objects in [0, 120]², exact detections of some of them, and background detections in [200, 320]²."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        g = int(rng.integers(0, 5))
        xy = rng.uniform(0, 100, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(3, 20, (g, 2))], 1)
        labels = rng.integers(1, 3, g)
        found = rng.random(g) < 0.7
        b = int(rng.integers(0, 4))
        far = rng.uniform(200, 300, (b, 2))
        dets = np.concatenate([gt[found], np.concatenate([far, far + 10], 1)])
        det_labels = np.concatenate([labels[found], rng.integers(1, 3, b)])
        scores = np.round(rng.random(len(dets)), 1)
        scenes.append((gt, labels, dets, det_labels, scores, np.arange(len(dets)) >= found.sum(), found))
    return scenes


def _run(scenes, drop_background=False, drop_missed=False):
    ev = DetectionEvaluator(CATS, bootstrap=0)
    for i, (gt, labels, dets, det_labels, scores, background, found) in enumerate(scenes):
        keep_gt = found if drop_missed else np.ones(len(gt), bool)
        keep = ~background if drop_background else np.ones(len(dets), bool)
        target = ObjectTargets(boxes=torch.tensor(gt[keep_gt], dtype=torch.float32).reshape(-1, 4),
                               labels=torch.tensor(labels[keep_gt]))
        preds = SimpleNamespace(boxes=[torch.tensor(dets[keep], dtype=torch.float32).reshape(-1, 4)],
                                scores=[torch.tensor(scores[keep], dtype=torch.float32)],
                                labels=[torch.tensor(det_labels[keep])])
        ev.update_arrays("clean", 0, [i], [(400, 400)], [target], preds)
    res = ev.finalize()
    return res.error_types["clean@0"], res.rows[0].metrics["AP50"]


def test_fixes_equal_rerunning_without_the_errors():
    """Removing background detections / missed objects and re-running COCO gives AP50 + delta_ap."""
    scenes = _random_scene(5)
    errors, ap50 = _run(scenes)
    assert errors["background"]["count"] == sum(int(s[5].sum()) for s in scenes)
    assert errors["missed"]["count"] == sum(int((~s[6]).sum()) for s in scenes)
    assert all(errors[t]["count"] == 0 for t in ("classification", "localisation", "both", "duplicate"))
    _, without_background = _run(scenes, drop_background=True)
    _, without_missed = _run(scenes, drop_missed=True)
    assert errors["background"]["delta_ap"] > 0 and errors["missed"]["delta_ap"] > 0
    assert ap50 + errors["background"]["delta_ap"] == pytest.approx(without_background, abs=TOL)
    assert ap50 + errors["missed"]["delta_ap"] == pytest.approx(without_missed, abs=TOL)
