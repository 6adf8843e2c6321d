"""Occlusion: covered areas match their tables, and object occlusion records what it hid."""

from __future__ import annotations

import pytest
import torch

import visionstress as vs
from visionstress.perturbations import get_perturbation
from visionstress.perturbations.occlusion import (
    CENTRAL_REGION, OBJECT_OCCLUSION, RANDOM_OCCLUSION, _box_fraction, _random_rects, _rect_masks, _union_area,
)


def _changed(out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool: pixels the perturbation touched (noise fill never equals the image exactly)."""
    return (out - images).abs().amax(dim=1) > 1e-6


def test_union_area_counts_overlaps_once():
    rects = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0]]])
    assert float(_union_area(rects)) == pytest.approx(175.0)
    mask = _rect_masks(rects, (20, 20))
    assert float(mask.sum()) == pytest.approx(175.0)
    # Anti-aliasing: a rectangle covering half a pixel covers it by half.
    half = _rect_masks(torch.tensor([[[2.0, 2.0, 3.5, 3.0]]]), (6, 6))
    assert float(half[0, 2, 2]) == 1.0 and float(half[0, 2, 3]) == pytest.approx(0.5)


@pytest.mark.parametrize("size", [(224, 288), (37, 53), (16, 16)])
@pytest.mark.parametrize("severity", range(1, 6))
def test_random_occlusion_covers_the_table_fraction(severity, size):
    fraction, count = RANDOM_OCCLUSION[severity - 1]
    images = torch.rand(16, 3, *size)
    p = get_perturbation("random_occlusion")
    out = p(vs.Batch(images), severity=severity, seed=5)
    rects = _random_rects(out.params, fraction, size, images.device)
    assert rects.shape == (16, count, 4)
    mask = _rect_masks(rects, size)
    # The soft mask's area is the table's fraction (exact but for pixels crossed by two edges).
    torch.testing.assert_close(mask.mean(dim=(1, 2)), torch.full((16,), fraction), atol=0.01, rtol=0)
    changed = _changed(out.images, images).float().mean(dim=(1, 2))
    # Changed pixels include partially covered edge pixels, hence more slack upwards on tiny images.
    edge = 4 * (size[0] + size[1]) / (size[0] * size[1]) * count
    assert (changed >= fraction - 0.01).all() and (changed <= fraction + 0.01 + edge).all()


def test_random_occlusion_fully_covered_pixels_hold_the_noise_fill():
    images = torch.full((4, 3, 64, 64), 0.5)
    out = get_perturbation("random_occlusion")(images, severity=5, seed=0)
    covered = out[_changed(out, images)[:, None].expand_as(out)]
    # Uniform noise fill: mean 1/2, variance 1/12 (edge pixels blend a little towards the image).
    assert abs(float(covered.mean()) - 0.5) < 0.02 and abs(float(covered.var()) - 1 / 12) < 0.01


def _detection_batch(boxes: list[list[list[float]]], h: int = 120, w: int = 160) -> vs.Batch:
    targets = [vs.ObjectTargets(boxes=torch.tensor(bx).reshape(-1, 4), labels=torch.ones(len(bx), dtype=torch.long))
               for bx in boxes]
    return vs.Batch(torch.rand(len(boxes), 3, h, w), sample_ids=torch.arange(10, 10 + len(boxes)), boxes=targets)


@pytest.mark.parametrize("severity", range(1, 6))
def test_object_occlusion_covers_each_box_by_the_table_fraction(severity):
    level = OBJECT_OCCLUSION[severity - 1]
    separate = [[10.0, 10.0, 60.0, 50.0], [80.0, 20.0, 150.0, 110.0], [20.0, 70.0, 45.5, 113.3]]
    batch = _detection_batch([separate, separate[:2], separate[1:]])
    out = get_perturbation("object_occlusion")(batch, severity=severity, seed=1)
    changed = _changed(out.images, batch.images).float()
    for i, targets in enumerate(out.boxes):
        torch.testing.assert_close(targets.occluded, torch.full((len(targets),), level), atol=0.01, rtol=0)
        torch.testing.assert_close(targets.boxes, batch.boxes[i].boxes)  # targets pass through
        inside = _box_fraction(changed[i], targets.boxes)
        # Edge pixels of the occluder count as changed: allow a pixel's perimeter of slack.
        assert (inside >= level - 0.01).all() and (inside <= level + 0.08).all()
        outside = torch.ones(120, 160, dtype=torch.bool)
        for x0, y0, x1, y1 in targets.boxes.floor().long().tolist():
            outside[y0 : y1 + 1, x0 : x1 + 1] = False
        assert not changed[i][outside].any(), "nothing outside the boxes is occluded"


def test_object_occlusion_records_overlap_from_neighbouring_occluders():
    nested = [[0.0, 0.0, 100.0, 100.0], [30.0, 30.0, 50.0, 50.0]]
    out = get_perturbation("object_occlusion")(_detection_batch([nested] * 8, 100, 100), severity=5, seed=0)
    occluded = torch.stack([t.occluded for t in out.boxes])
    assert (occluded >= 0.5 - 0.01).all()
    assert (occluded[:, 1] > 0.51).any(), "the big box's occluder often also covers part of the small one"


def test_object_occlusion_is_per_object_deterministic():
    """An object's occluder depends on the sample and the object's index, not on the other objects."""
    first = [10.0, 10.0, 60.0, 50.0]
    alone = _detection_batch([[first]])
    with_other = _detection_batch([[first, [80.0, 20.0, 150.0, 110.0]]])
    with_other.images = alone.images.clone()
    p = get_perturbation("object_occlusion")
    a = p(alone, severity=3, seed=4).images[..., 10:50, 10:60]
    b = p(with_other, severity=3, seed=4).images[..., 10:50, 10:60]
    assert torch.equal(a, b)


def test_object_occlusion_without_boxes_uses_the_central_region():
    images = torch.rand(8, 3, 80, 120)
    for severity in (1, 5):
        level = OBJECT_OCCLUSION[severity - 1]
        out = get_perturbation("object_occlusion")(vs.Batch(images, labels=torch.zeros(8)), severity=severity, seed=0)
        changed = _changed(out.images, images)
        margin_y, margin_x = int(80 * (1 - CENTRAL_REGION) / 2), int(120 * (1 - CENTRAL_REGION) / 2)
        centre = torch.zeros(80, 120, dtype=torch.bool)
        centre[margin_y : 80 - margin_y, margin_x : 120 - margin_x] = True
        assert not changed[:, ~centre].any()
        fraction = changed[:, centre].float().mean(dim=1)
        assert (fraction >= level - 0.01).all() and (fraction <= level + 0.06).all()
        assert out.labels.tolist() == [0] * 8


def test_object_occlusion_leaves_images_without_objects_alone_and_keeps_masks():
    h, w = 48, 64
    targets = [vs.ObjectTargets(boxes=torch.zeros(0, 4), labels=torch.zeros(0), masks=torch.zeros(0, h, w)),
               vs.ObjectTargets(boxes=torch.tensor([[5.0, 5.0, 40.0, 40.0]]), labels=torch.tensor([3]),
                                masks=torch.ones(1, h, w))]
    semantic = torch.randint(0, 5, (2, h, w))
    batch = vs.Batch(torch.rand(2, 3, h, w), boxes=targets, masks=semantic)
    out = get_perturbation("object_occlusion")(batch, severity=4, seed=0)
    assert torch.equal(out.images[0], batch.images[0]) and not torch.equal(out.images[1], batch.images[1])
    assert torch.equal(out.masks, semantic) and out.boxes[0].occluded.numel() == 0
    assert torch.equal(out.boxes[1].masks, targets[1].masks) and out.boxes[1].labels.tolist() == [3]


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_random_occlusion_records_how_much_of_each_box_it_covered(severity):
    images = torch.rand(3, 3, 48, 64)
    whole = torch.tensor([[0.0, 0.0, 64.0, 48.0]])
    left_half = torch.tensor([[0.0, 0.0, 32.0, 48.0]])
    batch = vs.Batch(images, sample_ids=torch.arange(3),
                     boxes=[{"boxes": torch.cat([whole, left_half]), "labels": torch.tensor([1, 2])}] * 3)
    out = get_perturbation("random_occlusion")(batch, severity=severity, seed=0)
    fraction = get_perturbation("random_occlusion").severities[severity - 1][0]
    changed = (out.images != images).any(1).float()  # [B, H, W]: the pixels an occluder touched
    for i, targets in enumerate(out.boxes):
        assert targets.occluded[0].item() == pytest.approx(fraction, abs=2e-3)  # the union covers `fraction`
        assert targets.occluded[1].item() == pytest.approx(changed[i, :, :32].mean().item(), abs=0.05)
        assert torch.equal(targets.boxes, batch.boxes[i].boxes)  # nothing moves
