"""Scale perturbations: zoom factors, boxes moving with them, torchvision replay, low resolution."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import visionstress as vs
from visionstress.perturbations import get_perturbation
from visionstress.perturbations.scale import ZOOM_IN, ZOOM_OUT, _antialias_sigma

H, W = 48, 64
CENTRE_BOX = torch.tensor([[24.0, 16.0, 40.0, 32.0]])  # 16 x 16, centred on (32, 24)


def _batch(b: int = 4) -> vs.Batch:
    g = torch.Generator().manual_seed(0)
    targets = [vs.ObjectTargets(boxes=CENTRE_BOX.clone(), labels=torch.tensor([1])) for _ in range(b)]
    return vs.Batch(torch.rand(b, 3, H, W, generator=g), sample_ids=torch.arange(b), boxes=targets)


@pytest.mark.parametrize("name,table", [("zoom_in", ZOOM_IN), ("zoom_out", ZOOM_OUT)])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_centre_box_scales_by_the_recorded_factor(name, table, severity):
    out = get_perturbation(name)(_batch(), severity=severity, seed=0)
    low, high = table[severity - 1]
    for i, targets in enumerate(out.boxes):
        s = float(out.params["scale"][i])
        assert low <= s <= high
        box = targets.boxes[0]
        torch.testing.assert_close(box[2:] - box[:2], torch.tensor([16.0, 16.0]) * s, atol=1e-3, rtol=0)
        torch.testing.assert_close((box[:2] + box[2:]) / 2, torch.tensor([32.0, 24.0]), atol=1e-3, rtol=0)


def test_severity_bands_do_not_overlap():
    for table, grows in ((ZOOM_IN, True), (ZOOM_OUT, False)):
        for (lo, hi), (lo2, hi2) in zip(table, table[1:]):
            assert lo < hi if grows else lo < hi
            assert (lo2 > hi) if grows else (hi2 < lo)


@pytest.mark.parametrize("severity", [1, 5])
def test_zoom_in_replays_with_torchvision_affine(severity):
    batch = _batch()
    out = get_perturbation("zoom_in")(batch, severity=severity, seed=3)
    for i in range(len(batch)):
        s = float(out.params["scale"][i])
        ref = TF.affine(batch.images[i], angle=0.0, translate=[0.0, 0.0], scale=s, shear=[0.0, 0.0],
                        interpolation=TF.InterpolationMode.BILINEAR)
        torch.testing.assert_close(out.images[i, :, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=1e-4, rtol=0)


@pytest.mark.parametrize("severity", [1, 5])
def test_zoom_out_replays_as_blur_then_torchvision_affine(severity):
    batch = _batch()
    out = get_perturbation("zoom_out")(batch, severity=severity, seed=3)
    sigma = _antialias_sigma(ZOOM_OUT[severity - 1])
    radius = max(1, int(torch.ceil(torch.tensor(3 * sigma))))
    for i in range(len(batch)):
        s = float(out.params["scale"][i])
        blurred = TF.gaussian_blur(batch.images[i], kernel_size=[2 * radius + 1] * 2, sigma=[sigma] * 2)
        ref = TF.affine(blurred, angle=0.0, translate=[0.0, 0.0], scale=s, shear=[0.0, 0.0],
                        interpolation=TF.InterpolationMode.BILINEAR)
        # interior of the shrunk picture (its rim mixes with the black border differently)
        h0, w0 = int(H * (1 - s) / 2) + 3, int(W * (1 - s) / 2) + 3
        torch.testing.assert_close(out.images[i, :, h0:H - h0, w0:W - w0], ref[:, h0:H - h0, w0:W - w0],
                                   atol=1e-4, rtol=0)


def test_zoom_out_pads_black_and_antialiases():
    # a one-pixel checkerboard shrunk without a low-pass would alias into strong patterns
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    checker = ((ys + xs) % 2).float().expand(1, 3, H, W).clone()
    out = get_perturbation("zoom_out")(checker, severity=5, seed=0)
    assert float(out[0, :, :4].abs().max()) == 0.0 and float(out[0, :, :, :6].abs().max()) == 0.0
    centre = out[0, :, 18:30, 24:40]
    assert float((centre - 0.5).abs().max()) < 0.1


def test_low_resolution_keeps_constants_and_removes_fine_detail():
    p = get_perturbation("low_resolution")
    flat = torch.full((2, 3, 37, 53), 0.3)
    for severity in range(1, 6):
        torch.testing.assert_close(p(flat, severity=severity), flat, atol=1e-6, rtol=0)
    ys, xs = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    checker = ((ys + xs) % 2).float().expand(1, 3, 64, 64).clone()
    out = p(checker, severity=2)[..., 3:-3, 3:-3]  # halved with a low-pass: a flat 0.5 away from the rim
    torch.testing.assert_close(out, torch.full_like(out, 0.5), atol=1e-5, rtol=0)
    smooth = torch.linspace(0, 1, 64).expand(1, 3, 64, 64).clone()
    assert float((p(smooth, severity=5) - smooth)[..., 8:-8].abs().max()) < 0.01, "smooth ramps survive"
