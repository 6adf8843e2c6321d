"""Lighting perturbations: closed forms, directions and the statistics of the sensor noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import visionstress as vs
from visionstress.perturbations import get_perturbation
from visionstress.perturbations.lighting import (
    CONTRAST, GAMMA, GLARE, LOW_LIGHT, SHADOW, WHITE_BALANCE_MIRED, _to_linear, _to_srgb,
)

from conftest import natural_images_np, to_tensor


def _flat(value: float, b: int = 4, h: int = 32, w: int = 40) -> torch.Tensor:
    return torch.full((b, 3, h, w), value)


# ---- contrast --------------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", range(1, 6))
def test_contrast_closed_form(severity):
    # Two halves at 0.2 and 0.8 (mean 0.5): each moves to 0.5 -/+ 0.3 * c.
    images = torch.full((1, 3, 8, 8), 0.2)
    images[..., 4:] = 0.8
    images[:, 1] = images[:, 1] * 0.5  # a channel with another mean (0.25)
    c = CONTRAST[severity - 1]
    out = get_perturbation("contrast")(images, severity=severity)
    torch.testing.assert_close(out[0, 0, 0, 0], torch.tensor(0.5 - 0.3 * c))
    torch.testing.assert_close(out[0, 0, 0, 7], torch.tensor(0.5 + 0.3 * c))
    torch.testing.assert_close(out[0, 1, 0, 0], torch.tensor(0.25 - 0.15 * c))
    torch.testing.assert_close(out.mean(dim=(2, 3)), images.mean(dim=(2, 3)))


def test_contrast_matches_reference_pixelwise():
    corruptions = pytest.importorskip("imagecorruptions.corruptions")
    photo = natural_images_np((64, 80))[0]
    out = get_perturbation("contrast")(to_tensor((photo,)), severity=3)
    ref = corruptions.contrast(photo, severity=3) / 255.0  # unquantised
    ours = out[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - ref).max() < 1e-5


# ---- gamma -----------------------------------------------------------------------------------------


def test_gamma_is_a_power_with_per_sample_direction():
    images = torch.rand(16, 3, 12, 12)
    p = get_perturbation("gamma")
    out = p(vs.Batch(images), severity=4, seed=1)
    g = out.params["gamma"]
    level = GAMMA[3]
    assert torch.allclose(torch.where(g > 1, g, 1 / g), torch.full_like(g, level))
    assert (g > 1).any() and (g < 1).any(), "both directions should occur over 16 samples"
    torch.testing.assert_close(out.images, images ** g.view(-1, 1, 1, 1))
    grey = p(vs.Batch(_flat(0.5, b=16)), severity=4, seed=1).images[:, 0, 0, 0]
    assert ((grey < 0.5) == (g > 1)).all(), "gamma > 1 darkens, < 1 brightens"


# ---- white balance ---------------------------------------------------------------------------------


def test_white_balance_direction_and_grey_luminance():
    p = get_perturbation("white_balance")
    out = p(vs.Batch(_flat(0.5, b=16)), severity=5, seed=0)
    shift = out.params["mired_shift"]
    assert set(shift.abs().tolist()) == {WHITE_BALANCE_MIRED[4]}
    assert (shift > 0).any() and (shift < 0).any()
    r, g, b = out.images[:, 0, 0, 0], out.images[:, 1, 0, 0], out.images[:, 2, 0, 0]
    warm = shift > 0
    assert (r[warm] > g[warm]).all() and (g[warm] > b[warm]).all(), "a warmer light casts red/orange"
    assert (b[~warm] > r[~warm]).all(), "a cooler light casts blue"
    lum = _to_linear(out.images[:, :, 0, 0]) @ torch.tensor([0.2126, 0.7152, 0.0722])
    torch.testing.assert_close(lum, torch.full_like(lum, float(_to_linear(torch.tensor(0.5)))), atol=2e-3, rtol=0)


def test_white_balance_cast_grows_with_severity():
    images = _flat(0.5, b=8)
    spreads = []
    for s in range(1, 6):
        out = get_perturbation("white_balance")(images, severity=s, seed=0)
        spreads.append(float((out[:, 0] - out[:, 2]).abs().mean()))
    assert spreads == sorted(spreads) and spreads[0] > 0.01


def test_srgb_curves_pick_their_branch_exactly():
    """The curves select their branch with `lerp` (a 0/1 weight), faster on the CPU than `torch.where`, and
    equal to it bit for bit, at the thresholds too; gradients still flow through the branch taken."""
    x = torch.cat([torch.linspace(-0.1, 1.1, 200_001), torch.tensor([0.04045, 0.0031308, 0.0, 1.0])])
    c = x.clamp(0, 1)
    linear = torch.where(c <= 0.04045, c * (1.0 / 12.92), (c + 0.055).mul_(1.0 / 1.055).pow_(2.4))
    srgb = torch.where(c <= 0.0031308, c * 12.92, c.clamp_min(0.0031308).pow_(1.0 / 2.4).mul_(1.055).sub_(0.055))
    assert torch.equal(_to_linear(x), linear) and torch.equal(_to_srgb(x), srgb)
    dark = torch.tensor([0.01, 0.5], requires_grad=True)
    _to_linear(dark).sum().backward()
    assert dark.grad[0] == pytest.approx(1 / 12.92)
    assert dark.grad[1] == pytest.approx(2.4 / 1.055 * (0.555 / 1.055) ** 1.4)


def test_srgb_round_trip():
    x = torch.linspace(0, 1, 1001)
    torch.testing.assert_close(_to_srgb(_to_linear(x)), x, atol=1e-5, rtol=0)


# ---- shadow ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", [1, 5])
def test_shadow_darkens_only_part(severity):
    images = _flat(0.8, b=6, h=60, w=90)
    out = get_perturbation("shadow")(images, severity=severity, seed=2)
    fraction, depth = SHADOW[severity - 1]
    ratio = out / images
    assert (ratio <= 1 + 1e-6).all(), "a shadow never brightens"
    lit = (ratio > 1 - 1e-6).float().mean(dim=(1, 2, 3))
    umbra = (ratio < 1 - depth + 1e-4).float().mean(dim=(1, 2, 3))
    assert (ratio.amin(dim=(1, 2, 3)) > 1 - depth - 1e-5).all()
    assert (lit > 1 - fraction - 0.08).all() and (lit < 1 - fraction + 0.02).all()
    assert (umbra > fraction - 0.08).all() and (umbra < fraction + 0.02).all()
    # The mean light removed is the table's area x depth (the penumbra is symmetric about the edge).
    torch.testing.assert_close((1 - ratio).mean(dim=(1, 2, 3)) / depth, torch.full((6,), fraction), atol=0.02, rtol=0)
    # Per-sample angles: the shadows differ between samples.
    assert not torch.equal(out[0], out[1])


# ---- glare -----------------------------------------------------------------------------------------


def test_glare_only_adds_light_and_peaks_at_its_centre():
    images = _flat(0.3, b=4, h=50, w=70)
    out = get_perturbation("glare")(vs.Batch(images), severity=5, seed=0)
    haze, peak, _ = GLARE[4]
    assert (out.images >= images - 1e-6).all()
    # The darkest point still carries the veil: at least haze added by screen blending.
    assert (out.images.amin(dim=(1, 2, 3)) >= 1 - 0.7 * (1 - haze) - 1e-4).all()
    brightest = out.images[:, 0].flatten(1).argmax(dim=1)
    centre = out.params["centre"]
    for i in range(4):
        y, x = divmod(int(brightest[i]), 70)
        assert abs((x + 0.5) / 70 - float(centre[i, 0])) < 0.03 and abs((y + 0.5) / 50 - float(centre[i, 1])) < 0.03


# ---- low light -------------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", [1, 3])
def test_low_light_mean_and_noise_follow_the_sensor_model(severity):
    exposure, white, read = LOW_LIGHT[severity - 1]
    value = 0.6
    images = _flat(value, b=4, h=64, w=64)
    out = get_perturbation("low_light")(images, severity=severity, seed=0)
    electrons = _to_linear(out) * white  # back to the sensor's units (output is unquantised float)
    expected = float(_to_linear(torch.tensor(value))) * exposure * white
    assert abs(float(electrons.mean()) / expected - 1) < 0.02
    assert abs(float(electrons.var()) / (expected + read**2) - 1) < 0.06, "variance = shot (mean) + read**2"
    # Noise is independent between channels and pixels.
    a, b = (electrons[:, 0] - expected).flatten(), (electrons[:, 1] - expected).flatten()
    assert abs(float((a * b).mean() / (a.std() * b.std()))) < 0.05


def test_low_light_darkens_natural_images():
    batch = to_tensor(natural_images_np((48, 64)))
    means = [float(get_perturbation("low_light")(batch, severity=s, seed=0).mean()) for s in range(1, 6)]
    assert means == sorted(means, reverse=True) and means[0] < float(batch.mean())


def test_tables_have_five_increasing_levels():
    assert list(GAMMA) == sorted(GAMMA) and list(WHITE_BALANCE_MIRED) == sorted(WHITE_BALANCE_MIRED)
    assert [e for e, _, _ in LOW_LIGHT] == sorted((e for e, _, _ in LOW_LIGHT), reverse=True)
    assert all(math.isfinite(v) for level in SHADOW + GLARE for v in level)
