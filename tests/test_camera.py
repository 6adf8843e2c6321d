"""Camera-quality perturbations: noise statistics, codec and resize equivalence, lens geometry."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import visionstress as vs
from visionstress.perturbations import get_perturbation
from visionstress.perturbations.camera import (
    CHROMATIC_ABERRATION, GAUSSIAN_NOISE, IMPULSE_NOISE, JPEG_QUALITY, PIXELATE, SHOT_NOISE, SPECKLE_NOISE,
    VIGNETTING_STOPS, _poisson,
)
from visionstress.rng import uniform_field


def _grey(value: float = 0.5, b: int = 4, h: int = 64, w: int = 96) -> torch.Tensor:
    return torch.full((b, 3, h, w), value)


def _textured(b: int = 2, h: int = 37, w: int = 53) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 3, h, w, generator=g)


# ---- noise statistics ---------------------------------------------------------------------------


@pytest.mark.parametrize("severity", [1, 2])
def test_gaussian_noise_std_matches_table(severity):
    out = get_perturbation("gaussian_noise")(_grey(), severity=severity, seed=0)
    noise = out - 0.5
    sigma = GAUSSIAN_NOISE[severity - 1]
    assert abs(float(noise.mean())) < 0.003
    assert float(noise.std()) == pytest.approx(sigma, rel=0.02)


def test_speckle_noise_is_proportional_to_brightness():
    p = get_perturbation("speckle_noise")
    for value in (0.2, 0.6):
        noise = p(_grey(value), severity=1, seed=0) - value
        assert float(noise.std()) == pytest.approx(value * SPECKLE_NOISE[0], rel=0.02)
    assert torch.equal(p(_grey(0.0), severity=5, seed=0), _grey(0.0)), "black has no speckle"


@pytest.mark.parametrize("severity", [1, 5])
def test_impulse_noise_fraction_and_values(severity):
    images = _grey(0.5)
    out = get_perturbation("impulse_noise")(images, severity=severity, seed=0)
    amount = IMPULSE_NOISE[severity - 1]
    pepper, salt = float((out == 0).float().mean()), float((out == 1).float().mean())
    assert pepper == pytest.approx(amount / 2, rel=0.05) and salt == pytest.approx(amount / 2, rel=0.05)
    untouched = (out != 0) & (out != 1)
    assert torch.equal(out[untouched], images[untouched]), "values not flipped must be left exactly alone"


@pytest.mark.parametrize("severity,value", [(1, 128 / 255), (1, 13 / 255), (3, 128 / 255), (5, 128 / 255), (5, 230 / 255)])
def test_shot_noise_mean_variance_and_lattice(severity, value):
    """Poisson(c x) / c: mean x, variance x / c, values on the 1/c lattice (x on the 8-bit grid)."""
    c = SHOT_NOISE[severity - 1]
    out = get_perturbation("shot_noise")(_grey(value), severity=severity, seed=0)
    counts = out * c
    assert torch.allclose(counts, counts.round(), atol=1e-4)
    unclipped = value + 4 * math.sqrt(value / c) < 1
    if unclipped:
        assert float(out.mean()) == pytest.approx(value, rel=0.01)
        assert float(out.var()) == pytest.approx(value / c, rel=0.03)


@pytest.mark.parametrize("photons,level", [(60.0, 3), (3.0, 255), (12.0, 200), (60.0, 128), (60.0, 255)])
def test_poisson_sampler_matches_the_poisson_law(photons, level):
    """The inverse-CDF sampler is exact: its histogram matches the Poisson pmf up to sampling noise."""
    n = 3 * 256 * 256
    rate = photons * level / 255
    u = uniform_field(torch.tensor([12345]), (3, 256, 256), counter=0)
    samples = _poisson(torch.full((1, 3, 256, 256), level / 255), u, photons)
    assert torch.equal(samples, samples.round())
    k = np.arange(0, int(rate + 10 * math.sqrt(rate) + 20))
    pmf = np.exp(-rate + k * math.log(rate) - np.array([math.lgamma(i + 1) for i in k]))
    empirical = np.bincount(samples.long().flatten().numpy(), minlength=len(k))[: len(k)] / n
    assert 0.5 * np.abs(empirical - pmf).sum() < 0.01
    # the tails are reached, and nothing is drawn from beyond them
    assert float(samples.max()) > rate + 3.5 * math.sqrt(rate) and float(samples.max()) < rate + 8 * math.sqrt(rate) + 8


def test_poisson_sampler_is_exact_inverse_cdf_at_bucket_edges():
    """Uniforms just either side of a CDF step give the counts either side of it."""
    from scipy import stats

    rate = 60.0 * 100 / 255
    cdf = stats.poisson.cdf(np.arange(80), rate)
    k = np.array([5, 20, 23, 30, 40])
    u = torch.tensor(np.concatenate([cdf[k] - 1e-6, cdf[k] + 1e-6]), dtype=torch.float32)
    images = torch.full((1, 1, 1, len(u)), 100 / 255)
    got = _poisson(images, u.reshape(1, 1, 1, -1), 60.0).flatten().long().tolist()
    assert got == list(k) + list(k + 1)


# ---- compression and resolution -----------------------------------------------------------------


@pytest.mark.parametrize("severity", [1, 5])
def test_jpeg_equals_torchvision_codec(severity):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import decode_jpeg, encode_jpeg

        images = _textured(2, 40, 56)
        out = get_perturbation("jpeg_compression")(images, severity=severity, seed=0)
        q = (images * 255).round().to(torch.uint8)
        expected = torch.stack([decode_jpeg(encode_jpeg(im, quality=JPEG_QUALITY[severity - 1])) for im in q])
    assert torch.equal(out, expected.float() / 255)


def test_jpeg_matches_pil_at_the_reference_quality():
    from io import BytesIO

    from PIL import Image

    images = _textured(1, 48, 64)
    out = get_perturbation("jpeg_compression")(images, severity=3, seed=0)
    arr = (images[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=JPEG_QUALITY[2])
    ref = torch.from_numpy(np.array(Image.open(buf))).permute(2, 0, 1).float() / 255
    assert float((out[0] - ref).abs().max()) <= 3 / 255


def test_pixelate_block_structure():
    """At c = 0.25 a 40 x 40 image becomes 10 x 10 blocks of 4 x 4 pixels, each the mean of its block."""
    images = _textured(2, 40, 40)
    out = get_perturbation("pixelate")(images, severity=5, seed=0)
    means = torch.nn.functional.avg_pool2d(images, 4)
    torch.testing.assert_close(out, means.repeat_interleave(4, 2).repeat_interleave(4, 3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_pixelate_matches_pil_box_nearest_on_odd_sizes(severity):
    from PIL import Image

    images = _textured(1, 37, 53)
    arr = (images[0] * 255).round().to(torch.uint8)
    images = arr.float().unsqueeze(0) / 255
    out = get_perturbation("pixelate")(images, severity=severity, seed=0)
    c = PIXELATE[severity - 1]
    pil = Image.fromarray(arr.permute(1, 2, 0).numpy())
    pil = pil.resize((int(53 * c), int(37 * c)), Image.BOX).resize((53, 37), Image.NEAREST)
    ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()
    # PIL resizes in two uint8 passes, rounding each: at most one level apart
    assert float((out[0] * 255 - ref).abs().max()) <= 1.001


# ---- lens defects ----------------------------------------------------------------------------------


def _radial_ramp(h: int = 64, w: int = 96) -> torch.Tensor:
    ys = torch.arange(h).float() + 0.5 - h / 2
    xs = torch.arange(w).float() + 0.5 - w / 2
    r = torch.sqrt(ys[:, None] ** 2 + xs[None] ** 2) / (0.5 * math.hypot(h, w))
    return r.expand(1, 3, h, w).clone()


def test_chromatic_aberration_magnifies_red_and_shrinks_blue():
    images = _radial_ramp()
    out = get_perturbation("chromatic_aberration")(images, severity=5, seed=0)
    a = CHROMATIC_ABERRATION[4]
    assert torch.equal(out[:, 1], images[:, 1]), "green is the reference channel"
    # red at radius r shows the scene at r / (1 + a): a radial ramp gets darker in red, brighter in blue
    interior = (slice(None), slice(8, -8), slice(8, -8))
    r = images[0, 1][interior[1:]]
    torch.testing.assert_close(out[0, 0][interior[1:]], r / (1 + a), atol=2e-3, rtol=0)
    torch.testing.assert_close(out[0, 2][interior[1:]], r / (1 - a), atol=2e-3, rtol=0)


def test_vignetting_darkens_corners_by_the_tabled_stops_in_linear_light():
    images = _grey(0.8, b=1, h=101, w=101)
    lin = lambda x: x ** 2.2  # noqa: E731 (the kernel's display gamma)
    for severity in (1, 5):
        out = get_perturbation("vignetting")(images, severity=severity, seed=0)
        centre = lin(out[0, 0, 50, 50]) / lin(torch.tensor(0.8))
        corner = lin(out[0, 0, 0, 0]) / lin(torch.tensor(0.8))
        assert float(centre) == pytest.approx(1.0, abs=1e-3)
        # the corner pixel's centre is at r = 0.99 half-diagonals
        assert float(corner) == pytest.approx(2.0 ** -VIGNETTING_STOPS[severity - 1], rel=0.05)
        diag = out[0, 0].diagonal()
        assert (diag[:50].diff() >= -1e-6).all(), "brightness must not fall towards the centre"
        assert torch.allclose(out[0, 0], out[0, 2]), "vignetting is colourless"


def test_lens_distortion_keeps_centre_and_pulls_corner_box_inward():
    h, w = 48, 64
    images = _textured(1, h, w)
    boxes = torch.tensor([[28.0, 20.0, 36.0, 28.0], [1.0, 1.0, 12.0, 10.0]])
    batch = vs.Batch(images, boxes=[vs.ObjectTargets(boxes=boxes, labels=torch.tensor([1, 2]))])
    out = get_perturbation("lens_distortion")(batch, severity=5, seed=0)
    k1 = float(out.params["k1"][0])
    assert 0.24 <= k1 <= 0.3
    moved = out.boxes[0].boxes
    # centre box: barely moves (distortion ~ r^3 near the centre)
    assert (moved[0] - boxes[0]).abs().max() <= 1.0
    # corner box: pulled towards the centre, and smaller
    assert moved[1, 0] > boxes[1, 0] + 1 and moved[1, 1] > boxes[1, 1] + 1
    assert (moved[1, 2:] - moved[1, :2]).prod() < (boxes[1, 2:] - boxes[1, :2]).prod()
    # centre pixels sample (almost) themselves; the corners show uncovered (black) area
    torch.testing.assert_close(out.images[0, :, 23:25, 31:33], images[0, :, 23:25, 31:33], atol=0.02, rtol=0)
    assert float(out.images[0, :, 0, 0].abs().max()) == 0.0


def test_lens_distortion_replays_its_k1():
    images = _textured(2, 48, 64)
    p = get_perturbation("lens_distortion")
    first = vs.Batch(images, sample_ids=torch.tensor([0, 1]))
    out = p(first, severity=2, seed=4)
    assert ((out.params["k1"] >= 0.8 * 0.08) & (out.params["k1"] <= 0.08)).all()
    again = p(first, severity=2, seed=5, params={"k1": out.params["k1"]})
    assert torch.equal(out.images, again.images)


def test_poisson_cpu_loop_equals_the_device_generic_search():
    """The numba CPU search and the torch search (used on CUDA) give identical counts."""
    from visionstress.perturbations import camera
    from visionstress.rng import sample_keys, uniform_field

    images = torch.rand(4, 3, 40, 56)
    images[0, 0, 0, :20] = (torch.arange(20) + 0.5) / 255  # exact rounding ties
    images[0, 0, 1, :2] = torch.tensor([-0.1, 1.2])
    u = uniform_field(sample_keys(0, "shot_noise", 1, torch.arange(4)), (3, 40, 56))
    for photons in (60.0, 3.0):
        cdf, guide, width = camera._poisson_tables(photons, images.device)
        level = (images.clamp(0, 1) * 255).round().to(torch.int64).reshape(-1)
        generic = camera._poisson_search_torch(level, u.reshape(-1), cdf, guide, width)
        fused = camera._poisson(images, u, photons).reshape(-1)
        assert torch.equal(generic, fused)
