"""The albumentations adapter: same result as albumentations itself, per-sample determinism, targets."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import visionstress as vs
from visionstress.perturbations import get_perturbation, list_perturbations, unregister_perturbation

A = pytest.importorskip("albumentations")

from visionstress.perturbations.albumentations import _require_albumentations, albumentations_perturbation  # noqa: E402

H, W = 48, 64


@pytest.fixture
def affine():
    """A temporary geometric perturbation: random rotation + translation growing with severity."""
    transforms = [A.Affine(rotate=(-5 * s, 5 * s), translate_percent=(-0.05 * s, 0.05 * s), p=1.0)
                  for s in range(1, 6)]
    p = albumentations_perturbation("_test_affine", "test", transforms, "test affine", kind="geometric")
    yield p
    unregister_perturbation("_test_affine")


def _batch(b: int = 4) -> vs.Batch:
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(b, 3, H, W, generator=g) * 255).round().to(torch.uint8)
    targets = []
    for i in range(b):
        boxes = torch.tensor([[4.0 + i, 6.0, 30.0 + i, 28.0], [36.0, 20.0, 60.0, 44.0], [0.0, 0.0, 3.0, 3.0]])
        masks = torch.zeros(3, H, W, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[k, y0:y1, x0:x1] = True
        targets.append(vs.ObjectTargets(boxes=boxes, labels=torch.tensor([1, 2, 3]), masks=masks))
    semantic = torch.zeros(b, H, W, dtype=torch.long)
    semantic[:, 6:28, 4:30] = 1
    semantic[:, 20:44, 36:60] = 2
    return vs.Batch(images, sample_ids=torch.arange(20, 20 + b), boxes=targets, masks=semantic)


def test_geometric_adapter_matches_albumentations_called_directly(affine):
    batch = _batch()
    out = affine(batch, severity=5, seed=3)
    seeds = out.params["seed"].tolist()
    direct = A.Compose([affine.severities[4]],
                       bbox_params=A.BboxParams(format="pascal_voc", label_fields=["box_index"], clip=True,
                                                filter_invalid_bboxes=True))
    for i in range(len(batch)):
        t = batch.boxes[i]
        direct.set_random_seed(seeds[i])
        ref = direct(image=batch.images[i].permute(1, 2, 0).numpy(), mask=batch.masks[i].numpy().astype(np.uint8),
                     masks=list(t.masks.numpy().astype(np.uint8)), bboxes=t.boxes.numpy(),
                     box_index=np.arange(len(t)))
        assert np.array_equal(out.images[i].permute(1, 2, 0).numpy(), ref["image"])
        direct.set_random_seed(seeds[i])  # same draw again, now moving a plane of ones
        valid = direct(image=batch.images[i].permute(1, 2, 0).numpy(), mask=np.ones((H, W), np.uint8),
                       bboxes=np.zeros((0, 4), np.float32), box_index=np.zeros(0))["mask"]
        assert (valid == 0).any(), "the affine should bring in area from outside the frame"
        expected_mask = np.where(valid > 0, ref["mask"].astype(np.int64), batch.ignore_index)
        assert np.array_equal(out.masks[i].numpy(), expected_mask), "outside area gets the ignore index"
        kept = np.asarray(ref["box_index"], dtype=np.int64)
        np.testing.assert_allclose(out.boxes[i].boxes.numpy(), np.asarray(ref["bboxes"]).reshape(-1, 4), atol=1e-5)
        assert out.boxes[i].ids.tolist() == kept.tolist()
        assert out.boxes[i].labels.tolist() == t.labels[kept].tolist()
        assert out.boxes[i].dropped == len(t) - len(kept)
        assert np.array_equal(out.boxes[i].masks.numpy(), np.stack(ref["masks"])[kept].astype(bool))
    # The transform really moved things (else the comparison above would be vacuous).
    assert not torch.equal(out.images, batch.images)
    assert not torch.equal(out.boxes[0].boxes, batch.boxes[0].boxes[: len(out.boxes[0])])


def test_horizontal_flip_moves_boxes_exactly():
    p = albumentations_perturbation("_test_flip", "test", [A.HorizontalFlip(p=1.0)] * 5, "flip",
                                    kind="geometric", register=False)
    batch = _batch(2)
    out = p(batch, severity=1, seed=0)
    for before, after in zip(batch.boxes, out.boxes):
        flipped = torch.stack([W - before.boxes[:, 2], before.boxes[:, 1], W - before.boxes[:, 0], before.boxes[:, 3]], -1)
        torch.testing.assert_close(after.boxes, flipped)
        assert torch.equal(after.masks, before.masks.flip(-1))
    assert torch.equal(out.images, batch.images.flip(-1)) and torch.equal(out.masks, batch.masks.flip(-1))


def test_boxes_pushed_out_of_frame_are_counted_as_dropped():
    shift = [A.Affine(translate_px={"x": (40, 40), "y": (0, 0)}, p=1.0)] * 5
    p = albumentations_perturbation("_test_shift", "test", shift, "shift right", kind="geometric", register=False)
    out = p(_batch(2), severity=2, seed=0)
    for after in out.boxes:
        # Boxes starting at x >= 24 leave the 64-px frame; the rest move right and are clipped.
        assert after.dropped == 1 and after.ids.tolist() == [0, 2] and len(after.masks) == 2
        assert float(after.boxes[:, 0].min()) >= 40 - 1e-4


def test_adapter_is_per_sample_deterministic(affine):
    batch = _batch(4)
    full = affine(batch, severity=3, seed=1)
    alone = affine(batch.select([2]), severity=3, seed=1)
    shuffled = affine(batch.select([3, 2, 0, 1]), severity=3, seed=1)
    assert torch.equal(alone.images[0], full.images[2]) and torch.equal(shuffled.images[1], full.images[2])
    assert torch.equal(alone.boxes[0].boxes, full.boxes[2].boxes)
    other = affine(batch, severity=3, seed=2)
    assert not torch.equal(other.images, full.images)
    assert len(set(full.params["seed"].tolist())) == 4, "each sample gets its own seed"


def test_builtin_albumentations_perturbations():
    assert {"rain", "iso_noise"} <= set(list_perturbations())
    assert get_perturbation("rain").family == "weather" and get_perturbation("iso_noise").family == "camera"
    batch = _batch(3)
    for name in ("rain", "iso_noise"):
        p = get_perturbation(name)
        assert p.kind == "photometric"
        out = p(batch, severity=3, seed=0)
        assert out.images.dtype == torch.uint8 and not torch.equal(out.images, batch.images)
        assert torch.equal(out.masks, batch.masks)
        assert all(torch.equal(a.boxes, b.boxes) for a, b in zip(out.boxes, batch.boxes))
        clean = batch.images.float()
        distortion = [float((p(batch, severity=s, seed=0).images.float() - clean).abs().mean()) for s in range(1, 6)]
        assert distortion == sorted(distortion), f"{name}: {distortion}"


def test_missing_albumentations_raises_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "albumentations", None)
    with pytest.raises(ImportError, match="pip install"):
        _require_albumentations()


def test_kind_must_be_photometric_or_geometric():
    with pytest.raises(ValueError, match="photometric or geometric"):
        albumentations_perturbation("_test_bad", "test", [A.HorizontalFlip(p=1.0)] * 5, "bad", kind="data-aware",
                                    register=False)


def test_importing_the_library_does_not_touch_the_network():
    """albumentations checks for updates online on import unless told not to; we tell it not to."""
    import subprocess
    import sys

    code = ("import socket\n"
            "attempts = []\n"
            "def refuse(*args, **kwargs):\n"
            "    attempts.append(args)\n"
            "    raise OSError('network refused by test')\n"
            "socket.getaddrinfo = refuse\n"
            "socket.socket.connect = refuse\n"
            "import visionstress.perturbations\n"
            "assert not attempts, f'network access during import: {attempts}'\n")
    env = {k: v for k, v in __import__('os').environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
