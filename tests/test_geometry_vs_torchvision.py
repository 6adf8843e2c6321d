"""Targets move with the pixels exactly as torchvision.transforms.v2 moves them.

Each geometric perturbation's recorded parameters are replayed through torchvision's functional API
on the same image, boxes and masks; images, boxes and masks must agree. torchvision moves a box to the
enclosing box of its moved corners, which is our `enclosing` box method (the default `ellipse` method
is checked against albumentations in test_geometry_boxes.py).
"""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

import visionstress as vs
from visionstress.perturbations import get_perturbation, list_perturbations

H, W = 48, 64
BOXES = torch.tensor([[10.0, 8.0, 30.0, 30.0], [35.0, 20.0, 60.0, 44.0], [2.0, 2.0, 8.0, 6.0], [50.0, 1.0, 63.0, 12.0]])


def _batch(b: int = 4) -> vs.Batch:
    g = torch.Generator().manual_seed(0)
    semantic = torch.zeros(b, H, W, dtype=torch.long)
    semantic[:, 8:30, 10:30] = 1
    semantic[:, 20:44, 35:60] = 2
    instance = torch.stack([semantic == 1, semantic == 2, torch.zeros_like(semantic, dtype=torch.bool),
                            torch.zeros_like(semantic, dtype=torch.bool)], dim=1)
    targets = [vs.ObjectTargets(boxes=BOXES, labels=torch.arange(1, 5), masks=instance[i]) for i in range(b)]
    return vs.Batch(torch.rand(b, 3, H, W, generator=g), sample_ids=torch.arange(b), boxes=targets, masks=semantic)


def _tv(image, boxes, mask, op):
    tv_boxes = op(tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(H, W)))
    return op(image), TF.clamp_bounding_boxes(tv_boxes), op(tv_tensors.Mask(mask))


def _check(out: vs.Batch, i: int, image, op_image, op_target, interior: int = 10):
    ours = out.images[i]
    ref_image = op_image(image)
    torch.testing.assert_close(ours[:, interior:-interior, interior:-interior],
                               ref_image[:, interior:-interior, interior:-interior], atol=1e-4, rtol=0)
    ref_boxes = TF.clamp_bounding_boxes(op_target(tv_tensors.BoundingBoxes(BOXES, format="XYXY", canvas_size=(H, W))))
    keep = (ref_boxes[:, 2] > ref_boxes[:, 0]) & (ref_boxes[:, 3] > ref_boxes[:, 1])
    torch.testing.assert_close(out.boxes[i].boxes, ref_boxes.as_subclass(torch.Tensor)[keep], atol=1e-3, rtol=0)
    assert out.boxes[i].ids.tolist() == torch.nonzero(keep).flatten().tolist()
    assert out.boxes[i].dropped == int((~keep).sum())
    ref_mask = op_target(tv_tensors.Mask(_batch().masks[i]))
    covered = op_target(tv_tensors.Mask(torch.ones(H, W, dtype=torch.long))) == 1
    agree = (out.masks[i][covered] == ref_mask[covered]).float().mean()
    assert agree > 0.995, f"semantic mask agrees on only {agree:.3%} of covered pixels"
    assert (out.masks[i][~covered] == 255).all(), "area uncovered by the warp must become the ignore index"


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_rotation_matches_torchvision(severity):
    batch = _batch()
    out = get_perturbation("rotation").with_box_method("enclosing")(batch, severity=severity, seed=1)
    for i in range(len(batch)):
        angle = float(out.params["angle"][i])
        op = lambda x: TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR)  # noqa: E731
        _check(out, i, batch.images[i], op, op)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_perspective_matches_torchvision(severity):
    batch = _batch()
    out = get_perturbation("perspective").with_box_method("enclosing")(batch, severity=severity, seed=2)
    corners = torch.tensor([[0.0, 0.0], [W, 0.0], [W, H], [0.0, H]])
    inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    for i in range(len(batch)):
        end = corners + inward * out.params["corner_shift"][i] * torch.tensor([W / 2, H / 2])
        op = lambda x: TF.perspective(x, corners.tolist(), end.tolist(),  # noqa: E731
                                      interpolation=TF.InterpolationMode.BILINEAR)
        _check(out, i, batch.images[i], op, op)


@pytest.mark.parametrize("method", ["ellipse", "enclosing"])
@pytest.mark.parametrize("name", list_perturbations(kind="geometric"))
def test_moved_boxes_enclose_moved_instance_masks(name, method):
    """Boxes and instance masks are moved by one map: each box tightly encloses its moved mask."""
    batch = _batch()
    out = get_perturbation(name).with_box_method(method)(batch, severity=4, seed=5)
    for targets in out.boxes:
        for box, mask in zip(targets.boxes, targets.masks):
            if mask.sum() < 20:
                continue
            ys, xs = torch.nonzero(mask, as_tuple=True)
            tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            assert (box[:2] <= tight[:2] + 1.5).all() and (box[2:] >= tight[2:] - 1.5).all(), (name, box, tight)
            # the corner-based box of a rotated rectangle is looser than the mask, but not much
            slack = (box[2:] - box[:2]) - (tight[2:] - tight[:2])
            assert (slack <= 0.45 * (box[2:] - box[:2]) + 2).all(), (name, box, tight)
