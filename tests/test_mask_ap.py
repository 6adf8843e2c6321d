"""Mask AP (COCOeval iouType "segm") for instance-segmentation detectors.

The evaluator's segm_* metrics must equal pycocotools' COCOeval run directly on the whole set, whatever
the batching, while the box metrics stay exactly what they were; end to end, an oracle that returns the
ground-truth masks each pass scored against gets mask AP 1 under geometric perturbations, and one that
returns the unmoved masks does not. A real torchvision Mask R-CNN goes through the adapter.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

import visionstress as vs
from oracle import geometric_suite_file, route_predictions
from visionstress.batch import ObjectTargets
from visionstress.cli import app
from visionstress.evaluators import DetectionEvaluator, DetectionEvaluatorError
from visionstress.evaluators.detection import SEGM_METRICS
from visionstress.models import DetectorAdapter, DetectorOutput, ModelOutputError
from visionstress.runner import RunError

EXACT = 1e-12
CATEGORIES = [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}]


def _blob(rng, height: int, width: int) -> np.ndarray:
    """A random ellipse or rectangle, from a few pixels to most of the image (COCO small to large)."""
    side = np.exp(rng.uniform(np.log(3), np.log(min(height, width) * 0.95), 2))
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    y, x = np.mgrid[:height, :width] + 0.5
    if rng.random() < 0.5:
        mask = ((y - cy) / side[0]) ** 2 + ((x - cx) / side[1]) ** 2 <= 0.25
    else:
        mask = (np.abs(y - cy) <= side[0] / 2) & (np.abs(x - cx) <= side[1] / 2)
    if not mask.any():
        mask[int(min(cy, height - 1)), int(min(cx, width - 1))] = True
    return mask


def _bounding_boxes(masks: np.ndarray) -> np.ndarray:
    """xyxy boxes enclosing each mask ([0, 0, 0, 0] for an empty one)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for j, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs):
            boxes[j] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return boxes


def _shifted(mask: np.ndarray, rng) -> np.ndarray:
    """A copy, exact or dilated, eroded or shifted by a few pixels."""
    kind = rng.integers(4)
    if kind == 3:
        return mask.copy()
    padded = np.pad(mask, 1)
    neighbours = [padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]
                  for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    if kind == 0:
        return np.logical_or.reduce(neighbours)
    if kind == 1:
        return np.logical_and.reduce(neighbours)
    return np.roll(mask, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))


def _dataset(seed: int = 0, n: int = 14):
    """Images of different sizes with instance masks: a crowd region, an image without annotations, an
    image without predictions, noisy copies with some wrong labels, random blobs, an unknown label."""
    rng = np.random.default_rng(seed)
    cats = np.array([c["id"] for c in CATEGORIES])
    ids = rng.choice(1000, size=n, replace=False)
    sizes, targets, preds = [], [], SimpleNamespace(boxes=[], scores=[], labels=[], masks=[])
    for i in range(n):
        h, w = int(rng.integers(110, 240)), int(rng.integers(110, 240))
        g = 0 if i == 1 else int(rng.integers(1, 7))
        gt_masks = np.stack([_blob(rng, h, w) for _ in range(g)]) if g else np.zeros((0, h, w), bool)
        crowd = np.zeros(g, bool)
        if i == 0:
            crowd[0] = True
        gl = rng.choice(cats, g)
        # COCO's annotated area is the polygon's, close to but not the mask's pixel count
        area = gt_masks.sum(axis=(1, 2)) * rng.uniform(0.9, 1.1, g)
        targets.append(ObjectTargets(boxes=torch.from_numpy(_bounding_boxes(gt_masks)), labels=torch.from_numpy(gl),
                                     masks=torch.from_numpy(gt_masks), iscrowd=torch.from_numpy(crowd),
                                     area=torch.from_numpy(area.astype(np.float32))))
        m = 0 if i == 2 else int(rng.integers(1, 10))
        src = rng.integers(0, max(g, 1), m)
        copies = (rng.random(m) < 0.7) & (g > 0)
        dt_masks = np.stack([_shifted(gt_masks[s], rng) if c else _blob(rng, h, w) for s, c in zip(src, copies)]
                            ) if m else np.zeros((0, h, w), bool)
        dl = rng.choice(cats, m)
        dl[copies] = np.where(rng.random(copies.sum()) < 0.85, gl[src[copies]], dl[copies])
        if m > 2:
            dl[-1] = 7  # not a dataset category: neither its box nor its mask is scored
        preds.boxes.append(torch.from_numpy(_bounding_boxes(dt_masks)))
        score = np.round(np.where(copies, 0.4 + 0.6 * rng.random(m), 0.6 * rng.random(m)), 1)  # ties on purpose
        preds.scores.append(torch.from_numpy(score.astype(np.float32)))
        preds.labels.append(torch.from_numpy(dl))
        preds.masks.append(torch.from_numpy(dt_masks))
        sizes.append((h, w))
    return ids, sizes, targets, preds


def _feed(ev: DetectionEvaluator, ids, sizes, targets, preds, order, batch: int) -> None:
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        ev.update_arrays("clean", 0, torch.as_tensor(ids[idx]), [sizes[i] for i in idx], [targets[i] for i in idx],
                  SimpleNamespace(**{f: [getattr(preds, f)[i] for i in idx]
                                     for f in ("boxes", "scores", "labels", "masks")}))


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _coco_segm(ids, sizes, targets, preds) -> np.ndarray:
    """COCOeval(iouType="segm") on the whole set, results loaded as a COCO result file would be."""
    images = [{"id": int(i), "height": h, "width": w} for i, (h, w) in zip(ids, sizes)]
    gt_anns, dt_anns = [], []
    for image_id, t, masks, scores, labels in zip(ids, targets, preds.masks, preds.scores, preds.labels):
        for j in range(len(t)):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": int(image_id), "category_id": int(t.labels[j]),
                            "segmentation": _rle(t.masks[j].numpy()), "area": float(t.area[j]),
                            "bbox": [0, 0, 1, 1], "iscrowd": int(t.iscrowd[j])})
        for j in range(len(masks)):
            dt_anns.append({"image_id": int(image_id), "category_id": int(labels[j]), "score": float(scores[j]),
                            "segmentation": _rle(masks[j].numpy())})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gt_anns, "categories": CATEGORIES}
        gt.createIndex()
        coco_eval = COCOeval(gt, gt.loadRes(dt_anns), iouType="segm")
        coco_eval.params.catIds = [c["id"] for c in CATEGORIES]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


@pytest.fixture(scope="module")
def data():
    return _dataset()


def test_segm_metrics_equal_cocoeval_for_any_batching_and_box_metrics_are_unchanged(data):
    ids, sizes, targets, preds = data
    expected = _coco_segm(ids, sizes, targets, preds)
    assert expected[0] > 0.1 and sum(s < 0 for s in expected) == 0  # a meaningful case: every stat defined
    boxes_only = DetectionEvaluator(CATEGORIES, bootstrap=30, seed=4)
    _feed(boxes_only, ids, sizes, targets, preds, np.arange(len(ids)), 4)
    box_row = boxes_only.finalize().row("clean", 0)
    rng = np.random.default_rng(1)
    for batch, order in ((1, np.arange(len(ids))), (3, rng.permutation(len(ids))), (14, rng.permutation(len(ids)))):
        ev = DetectionEvaluator(CATEGORIES, bootstrap=30, seed=4, masks=True)
        _feed(ev, ids, sizes, targets, preds, order, batch)
        row = ev.finalize().row("clean", 0)
        for name, value in zip(SEGM_METRICS, expected):
            assert row.metrics[name] == pytest.approx(float(value), abs=EXACT), (batch, name)
        assert {k: v for k, v in row.metrics.items() if k not in SEGM_METRICS} == box_row.metrics
        assert {k: v for k, v in row.ci.items() if k != "segm_AP"} == box_row.ci
        low, high = row.ci["segm_AP"]
        assert low <= row.metrics["segm_AP"] <= high and low < high
    assert "segm_AP" not in box_row.metrics and "segm_AP" not in box_row.ci


def test_undefined_segm_metrics_are_nan(data):
    ids, sizes, targets, preds = data
    ev = DetectionEvaluator(CATEGORIES, bootstrap=0, masks=True)
    _feed(ev, ids[1:2], sizes[1:2], targets[1:2], SimpleNamespace(**{k: v[1:2] for k, v in vars(preds).items()}),
          np.arange(1), 1)  # the image without annotations: no ground truth, COCOeval's -1
    metrics = ev.finalize().row("clean", 0).metrics
    assert all(math.isnan(metrics[name]) for name in SEGM_METRICS)


def test_mask_scoring_refuses_missing_or_mismatched_masks(data):
    ids, sizes, targets, preds = data
    idx = [3, 4]

    def update(targets_, **changes):
        fields = {f: [getattr(preds, f)[i] for i in idx] for f in ("boxes", "scores", "labels", "masks")}
        ev = DetectionEvaluator(CATEGORIES, bootstrap=0, masks=True)
        ev.update_arrays("clean", 0, torch.as_tensor(ids[idx]), [sizes[i] for i in idx], targets_,
                  SimpleNamespace(**(fields | changes)))

    chosen = [targets[i] for i in idx]
    with pytest.raises(DetectionEvaluatorError, match="predictions carry no masks.*maskrcnn"):
        update(chosen, masks=None)
    unmasked = [ObjectTargets(boxes=t.boxes, labels=t.labels, iscrowd=t.iscrowd, area=t.area) for t in chosen]
    with pytest.raises(DetectionEvaluatorError, match="target has none.*with_masks=True"):
        update(unmasked)
    with pytest.raises(DetectionEvaluatorError, match="must be bool"):
        update(chosen, masks=[preds.masks[i].float() for i in idx])
    with pytest.raises(DetectionEvaluatorError, match=r"predicted masks are \[\d+, \d+, \d+\], expected"):
        update(chosen, masks=[preds.masks[i][:, :-1] for i in idx])


# --- end to end on the demo COCO data, with an oracle instead of the model ------------------------------

GEOMETRIC = ("rotation", "perspective", "zoom_in", "zoom_out")
LIMIT = 24


@pytest.fixture(scope="module")
def geometric_suite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "geometric.yaml"
    geometric_suite_file(path, GEOMETRIC, [5])
    return path


def _objects_of(batch) -> DetectorOutput:
    objects = batch.boxes
    return DetectorOutput(boxes=[t.boxes.clone() for t in objects], scores=[torch.ones(len(t)) for t in objects],
                          labels=[t.labels.clone() for t in objects], masks=[t.masks.clone() for t in objects])


def _by_pass(card, metric: str) -> dict[tuple[str, int], float]:
    return {(r["perturbation"], r["severity"]): r["metrics"][metric] for r in card.results}


def test_oracle_masks_score_segm_ap_1_and_unmoved_masks_do_not(monkeypatch, tmp_path, geometric_suite):
    args = dict(task="detection", suite=str(geometric_suite), limit=LIMIT, workers=0, device="cpu", bootstrap=0,
                instance_masks=True, gallery=0)
    route_predictions(monkeypatch, lambda view, original: _objects_of(view))
    moved = vs.run(out=tmp_path / "moved", **args)
    assert moved.data_config["instance_masks"] is True
    for key, ap in _by_pass(moved, "segm_AP").items():
        assert ap == pytest.approx(1.0, abs=EXACT), key
    for key, ap in _by_pass(moved, "AP").items():
        assert ap == pytest.approx(1.0, abs=EXACT), key
    route_predictions(monkeypatch, lambda view, original: _objects_of(original))
    unmoved = _by_pass(vs.run(out=tmp_path / "unmoved", **args), "segm_AP")
    assert unmoved[("clean", 0)] == pytest.approx(1.0) and unmoved[("brightness", 5)] == pytest.approx(1.0)
    for name in GEOMETRIC:
        assert unmoved[(name, 5)] < 0.95, name  # the masks really moved


def test_instance_masks_are_refused_with_canvas_and_outside_detection(tmp_path):
    result = CliRunner().invoke(app, ["run", "--task", "detection", "--instance-masks", "--canvas", "64x64",
                                      "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--instance-masks cannot be combined with --canvas" in result.output
    result = CliRunner().invoke(app, ["run", "--task", "segmentation", "--instance-masks",
                                      "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--instance-masks does not apply to --task segmentation" in result.output
    with pytest.raises(RunError, match="--canvas"):
        vs.run(task="detection", instance_masks=True, canvas=(64, 64), out=tmp_path / "c")


# --- the adapter ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*random weights:UserWarning")
def test_maskrcnn_masks_come_through_the_adapter_filtered_with_their_boxes():
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    net = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=7, min_size=160, max_size=160,
                                box_score_thresh=0.0, box_detections_per_img=20).eval()
    raw: list = []

    def model(images):
        raw.extend(net(images))
        return raw[-len(images):]

    images = torch.randint(0, 256, (2, 3, 160, 160), dtype=torch.uint8)
    out = DetectorAdapter(model, label_map={1: 10, 2: 20, 3: 30}).predict(images)
    assert out.masks is not None and len(out.masks) == 2
    for d, boxes, labels, masks in zip(raw, out.boxes, out.labels, out.masks):
        assert d["masks"].shape[1:] == (1, 160, 160) and len(d["masks"]) > 0
        keep = (d["labels"] >= 1) & (d["labels"] <= 3)
        assert masks.dtype == torch.bool and masks.shape == (int(keep.sum()), 160, 160) == (len(boxes), 160, 160)
        assert torch.equal(masks, d["masks"][keep, 0] > 0.5)
        assert torch.equal(labels, d["labels"][keep] * 10)


def test_adapter_refuses_masks_of_the_wrong_shape_and_keeps_boolean_ones():
    def fake(masks_per_image):
        def model(images):
            return [{"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "scores": torch.tensor([0.9]),
                     "labels": torch.tensor([1]), **({} if m is None else {"masks": m})} for m in masks_per_image]
        return model

    images = torch.zeros((2, 3, 8, 10), dtype=torch.uint8)
    ok = torch.zeros((1, 8, 10), dtype=torch.bool)
    ok[0, 2:4, 3:6] = True
    out = DetectorAdapter(fake([ok, ok])).predict(images)
    assert all(torch.equal(m, ok) for m in out.masks)
    assert DetectorAdapter(fake([None, None])).predict(images).masks is None
    with pytest.raises(ModelOutputError, match=r"expected masks \[1, 1, 8, 10\].*got \[1, 1, 10, 8\]"):
        DetectorAdapter(fake([torch.zeros(1, 1, 10, 8)] * 2)).predict(images)
    with pytest.raises(ModelOutputError, match="1 of 2 images have masks"):
        DetectorAdapter(fake([ok, None])).predict(images)
