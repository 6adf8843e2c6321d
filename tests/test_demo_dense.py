"""The shipped demo detector and segmenter (data/demo/shapes/{detector,segmenter}.safetensors) score
what their metadata says, measured independently of data/train_demo_dense.py (pycocotools for AP,
per-class boolean masks for mIoU), and behave like models a harness can rely on: any input size,
and an image's output does not depend on the batch it is in. Also: the training script's
augmentation moves boxes and masks with the pixels."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from safetensors import safe_open
from safetensors.torch import load_file

from visionstress.models.demo import DEMO_SEGMENTER_DATA_CONFIG, tiny_detector, tiny_segmenter

SHAPES = Path(__file__).resolve().parents[1] / "data" / "demo" / "shapes"
IGNORE = 255


def _load(factory, name: str) -> tuple[torch.nn.Module, dict[str, str]]:
    path = SHAPES / f"{name}.safetensors"
    model = factory()
    model.load_state_dict(load_file(str(path)))  # strict: every tensor of the architecture is shipped
    with safe_open(str(path), "pt") as f:
        return model.eval(), f.metadata()


@pytest.fixture(scope="module")
def detector():
    return _load(tiny_detector, "detector")


@pytest.fixture(scope="module")
def segmenter():
    return _load(tiny_segmenter, "segmenter")


@pytest.fixture(scope="module")
def val() -> tuple[list[int], torch.Tensor, np.ndarray]:
    """COCO image ids, images float [N, 3, 64, 64] in [0, 1] and masks uint8 [N, 64, 64]."""
    coco = json.loads((SHAPES / "val_instances.json").read_text())
    ids, images, masks = [], [], []
    for info in coco["images"]:
        ids.append(info["id"])
        with Image.open(SHAPES / info["file_name"]) as img:
            images.append(np.asarray(img.convert("RGB")))
        with Image.open(SHAPES / "val_masks" / Path(info["file_name"]).name) as mask:
            masks.append(np.asarray(mask))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return ids, pixels, np.stack(masks)


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(DEMO_SEGMENTER_DATA_CONFIG.mean).view(1, 3, 1, 1)
    std = torch.tensor(DEMO_SEGMENTER_DATA_CONFIG.std).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.inference_mode()
def test_detector_reaches_recorded_ap(detector, val):
    model, meta = detector
    ids, images, _ = val
    results = []
    for image_id, det in zip(ids, model(images)):
        assert det["boxes"].dtype == torch.float32 and det["labels"].dtype == torch.int64
        assert len(det["scores"]) <= 20 and bool((det["scores"] > 0.05).all())
        for (x0, y0, x1, y1), score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                                  det["labels"].tolist()):
            results.append({"image_id": image_id, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": score})
    assert {r["category_id"] for r in results} <= set(range(1, 7))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(SHAPES / "val_instances.json"))
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(float(meta["val_AP"]), abs=1e-6)
    assert evaluator.stats[0] >= 0.5
    assert meta["classes"].split(",") == (SHAPES / "classes.txt").read_text().split()


@torch.inference_mode()
def test_segmenter_reaches_recorded_miou(segmenter, val):
    model, meta = segmenter
    _, images, masks = val
    logits = model(_normalise(images))
    assert logits.shape == (len(images), 7, 64, 64)
    predicted = logits.argmax(1).numpy()
    valid = masks != IGNORE
    ious = []
    for c in range(7):
        inter = np.sum((predicted == c) & (masks == c) & valid)
        union = np.sum(((predicted == c) | (masks == c)) & valid)
        ious.append(inter / union)
    assert np.mean(ious) == pytest.approx(float(meta["val_mIoU"]), abs=1e-6)
    assert np.mean(ious) >= 0.6
    assert meta["classes"].split(",") == ["background", *(SHAPES / "classes.txt").read_text().split()]
    assert json.loads(meta["data_config"]) == DEMO_SEGMENTER_DATA_CONFIG.to_dict()


@torch.inference_mode()
def test_detector_any_size_and_batch_independent(detector, val):
    model, _ = detector
    odd = torch.nn.functional.interpolate(val[1][:4], size=(50, 70), mode="bilinear", align_corners=False)
    square = val[1][4]
    batched = model(odd)
    mixed = model([odd[2], square, odd[0]])  # a list of two sizes runs each size on its own
    for got, alone in ((batched[0], model(odd[:1])[0]), (batched[3], model([odd[3]])[0]),
                       (mixed[0], batched[2]), (mixed[2], batched[0]), (mixed[1], model(square[None])[0])):
        assert got.keys() == {"boxes", "scores", "labels"}
        assert torch.equal(got["labels"], alone["labels"])
        torch.testing.assert_close(got["scores"], alone["scores"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got["boxes"], alone["boxes"], atol=1e-3, rtol=0)
    for det in batched:
        assert len(det["boxes"]) > 0
        assert bool((det["boxes"][:, 0::2] <= 70).all() and (det["boxes"][:, 1::2] <= 50).all())
        assert bool((det["boxes"] >= 0).all() and (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all())


@torch.inference_mode()
def test_segmenter_any_size_and_batch_independent(segmenter, val):
    model, _ = segmenter
    odd = _normalise(torch.nn.functional.interpolate(val[1][:4], size=(50, 70), mode="bilinear",
                                                     align_corners=False))
    batched = model(odd)
    assert batched.shape == (4, 7, 50, 70)
    for i in range(4):
        torch.testing.assert_close(model(odd[i : i + 1])[0], batched[i], atol=1e-4, rtol=0)


def test_training_augmentation_moves_boxes_with_pixels():
    """data/train_demo_dense.augment flips and transposes images, masks and boxes alike: the box of the
    augmented mask is the augmented box (to within the partial-coverage pixel at each edge)."""
    spec = importlib.util.spec_from_file_location("train_demo_dense", SHAPES.parents[1] / "train_demo_dense.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    samples = [script.shapes.render_sample("train", i) for i in range(16)]
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2)
    masks = torch.from_numpy(np.stack([s.mask for s in samples]))
    boxes = torch.tensor([[*np.min(s.polygon, 0), *np.max(s.polygon, 0)] for s in samples], dtype=torch.float32)
    out_images, out_masks, out_boxes = script.augment(images, masks, boxes, torch.Generator().manual_seed(3))
    assert not torch.equal(out_masks, masks)  # some images did move
    symmetries = [lambda t, flip=flip, swap=swap: (t.transpose(-1, -2) if swap else t).flip(flip)
                  for swap in (False, True) for flip in ((), (-1,), (-2,), (-1, -2))]
    for i, (mask, box) in enumerate(zip(out_masks, out_boxes)):
        ys, xs = np.nonzero(mask.numpy())
        assert np.allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box.numpy(), atol=1.01)
        moved = [f for f in symmetries if torch.equal(f(masks[i]), mask)]
        assert any(torch.equal(f(images[i]), out_images[i]) for f in moved)
