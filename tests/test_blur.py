"""The blur family and its filters: closed-form behaviour and fidelity to the reference algorithms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visionstress.batch import Batch
from visionstress.perturbations import get_perturbation, list_perturbations
from visionstress.perturbations import _filters

BLURS = ("gaussian_blur", "defocus_blur", "motion_blur", "zoom_blur", "glass_blur")


def _rand(b=2, h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def test_family_registered():
    assert set(BLURS) <= set(list_perturbations(family="blur"))


@pytest.mark.parametrize("name", BLURS)
@pytest.mark.parametrize("severity", [1, 5])
def test_constant_image_stays_constant(name, severity):
    # Every kernel is a normalised average (defocus's disk at radii <= 6; motion taps all inside).
    images = torch.full((2, 3, 48, 64), 0.37)
    out = get_perturbation(name)(images, severity=severity, seed=3)
    expected = 0.37 * (float(_filters.disk_kernel(*get_perturbation(name).level(severity)).sum())
                       if name == "defocus_blur" else 1.0)
    torch.testing.assert_close(out, torch.full_like(out, expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("sigma", [0.7, 2.0, 6.0])
def test_gaussian_matches_skimage(sigma):
    from skimage.filters import gaussian

    x = np.random.default_rng(0).random((23, 37, 3))
    ref = gaussian(x, sigma=sigma, channel_axis=-1)
    ours = _filters.gaussian_blur(torch.from_numpy(x).permute(2, 0, 1)[None].float(), sigma)
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_disk_kernel_matches_reference_and_defocus_matches_filter2d():
    corruptions = pytest.importorskip("imagecorruptions.corruptions")
    import cv2

    x = np.random.default_rng(1).random((30, 41)).astype(np.float32)
    for radius, alias in [(3, 0.1), (8, 0.5), (10, 0.5)]:
        ref_kernel = corruptions.disk(radius=radius, alias_blur=alias)
        kernel = _filters.disk_kernel(radius, alias)
        np.testing.assert_allclose(kernel.numpy(), ref_kernel, atol=1e-7)
        ours = _filters.filter2d(torch.from_numpy(x)[None, None], kernel)[0, 0].numpy()
        np.testing.assert_allclose(ours, cv2.filter2D(x, -1, ref_kernel), atol=1e-5)


@pytest.mark.parametrize("size", [(32, 48), (16, 16), (7, 5)])
@pytest.mark.parametrize("angle", [-45.0, -12.3, 0.0, 30.0, -120.0])
def test_motion_blur_matches_reference_exactly(size, angle):
    corruptions = pytest.importorskip("imagecorruptions.corruptions")
    x = np.random.default_rng(2).integers(0, 256, (*size, 3)).astype(np.uint8)
    for radius, sigma in [(10, 3), (20, 15)]:
        ref = corruptions._motion_blur(x, radius=radius, sigma=sigma, angle=angle)
        ours = _filters.motion_blur(torch.from_numpy(x).permute(2, 0, 1)[None].float(), radius, sigma,
                                    torch.tensor([angle]))
        np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), ref, atol=2e-3)


@pytest.mark.parametrize("angle", [0.0, 45.0, -30.0, 90.0])
def test_motion_blur_smears_impulse_along_angle(angle):
    img = torch.zeros(1, 1, 61, 61)
    img[0, 0, 30, 30] = 1.0
    out = _filters.motion_blur(img, 10, 3.0, torch.tensor([angle]))[0, 0]
    assert math.isclose(float(out.sum()), 1.0, rel_tol=1e-5)
    ys, xs = torch.nonzero(out > 1e-6, as_tuple=True)
    # Tap i of pixel p reads p + i*(cos, sin): the impulse lands on p = impulse - i*(cos, sin).
    theta = math.radians(angle)
    vx, vy = 30 - xs.float(), 30 - ys.float()
    along = vx * math.cos(theta) + vy * math.sin(theta)
    across = -vx * math.sin(theta) + vy * math.cos(theta)
    assert float(across.abs().max()) <= 1.0
    assert float(along.min()) >= -0.5 and float(along.max()) > 10  # one-sided, 21 taps long
    # The brightest output is next to the impulse (the first taps weigh most; at 45 degrees the
    # reference's rounding makes taps 1 and 2 coincide, so their sum can beat tap 0).
    peak = int(out.argmax())
    assert abs(peak // 61 - 30) <= 1 and abs(peak % 61 - 30) <= 1


def test_motion_blur_cpu_loop_equals_fft_path():
    x = _rand(3, 33, 47)
    angle = torch.tensor([-40.0, 5.0, 170.0])
    taps_y, taps_x, weights = _filters.motion_blur_taps(15, 8.0, angle, (33, 47))
    fft = _filters.fft_correlate(x, taps_y, taps_x, weights, mode="replicate")
    torch.testing.assert_close(_filters.motion_blur(x, 15, 8.0, angle), fft, atol=1e-5, rtol=0)


def test_motion_blur_angles_drawn_per_sample_in_reference_range():
    p = get_perturbation("motion_blur")
    batch = Batch(_rand(64, 16, 16))
    out = p(batch, severity=2, seed=0).images
    angle = p.sample_params(batch, 2, 0)["angle"]
    assert angle.shape == (64,) and float(angle.min()) >= -45 and float(angle.max()) <= 45
    assert float(angle.std()) > 15  # uniform on [-45, 45] has std 26
    assert out.shape == (64, 3, 16, 16)


def test_zoom_blur_keeps_centre_and_matches_reference():
    corruptions = pytest.importorskip("imagecorruptions.corruptions")
    x = np.random.default_rng(3).integers(0, 256, (45, 61, 3)).astype(np.uint8)
    ours = get_perturbation("zoom_blur")(torch.from_numpy(x).permute(2, 0, 1).float() / 255, severity=3)
    ref = corruptions.zoom_blur(x, severity=3) / 255
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), ref, atol=1e-4)
    # A bright centre stays bright and in place; the zoom streaks it outwards, not elsewhere.
    img = torch.zeros(1, 3, 65, 65)
    img[..., 30:35, 30:35] = 1.0
    out = get_perturbation("zoom_blur")(img, severity=5)
    assert float(out[0, 0, 32, 32]) > 0.9
    assert float(out[0, 0, :20].max()) == 0.0 and float(out[0, 0, 45:].max()) == 0.0


def test_glass_blur_shuffles_locally_without_new_values():
    p = get_perturbation("glass_blur")
    x = _rand(2, 48, 64)
    for severity in (1, 5):
        sigma, delta, _ = p.level(severity)
        blurred = _filters.gaussian_blur(x, sigma)
        out = p(x, severity=severity, seed=0)
        # Values only move and get averaged: the result stays within the blurred image's range ...
        assert float(out.min()) >= float(blurred.min()) - 1e-6
        assert float(out.max()) <= float(blurred.max()) + 1e-6
        # ... the histogram is preserved to within the second blur's smoothing ...
        assert abs(float(out.mean()) - float(blurred.mean())) < 0.01
        # ... and it is not just the twice-blurred image: pixels really moved.
        assert float((out - _filters.gaussian_blur(blurred, sigma)).abs().mean()) > 1e-3


def test_glass_shuffle_is_local():
    # A single bright pixel in a dark image ends near where it started.
    p = get_perturbation("glass_blur")
    img = torch.zeros(1, 3, 64, 64)
    img[..., 32, 32] = 1.0
    out = p(img, severity=5, seed=7)[0, 0]
    ys, xs = torch.nonzero(out > 1e-3, as_tuple=True)
    sigma, delta, rounds = p.level(5)
    reach = 2 * rounds * delta + 2 * int(4 * sigma + 0.5)
    assert (ys - 32).abs().max() <= reach and (xs - 32).abs().max() <= reach


@pytest.mark.parametrize("name", BLURS)
def test_tiny_and_batch_independent(name):
    p = get_perturbation(name)
    x = _rand(4, 16, 16, seed=5)
    ids = torch.tensor([10, 11, 12, 13])
    full = p(Batch(x, sample_ids=ids), severity=5, seed=1).images
    alone = p(Batch(x[2:3], sample_ids=ids[2:3]), severity=5, seed=1).images
    torch.testing.assert_close(full[2:3], alone, atol=1e-5, rtol=0)
    assert torch.isfinite(full).all()


# ---------------------------------------------------------------------------------------------
# CPU fast paths (numba) against the plain torch paths used on other devices


def _both_paths(monkeypatch, fn):
    pytest.importorskip("numba")
    monkeypatch.setattr(_filters, "USE_NUMBA", True)
    fast = fn()
    monkeypatch.setattr(_filters, "USE_NUMBA", False)
    slow = fn()
    return fast, slow


@pytest.mark.parametrize("size", [(40, 56), (7, 5), (1, 9)])
@pytest.mark.parametrize("mode", ["replicate", "reflect", "symmetric"])
def test_separable_numba_equals_matmul(monkeypatch, size, mode):
    x = _rand(2, *size, seed=7)
    for sigma in (0.7, 3.0):
        fast, slow = _both_paths(monkeypatch, lambda: _filters.gaussian_blur(x, sigma, mode=mode))
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    ky, kx = torch.tensor([0.1, 0.5, 0.2]), torch.tensor([0.3, -0.2, 0.4, 0.1, 0.4])  # asymmetric
    fast, slow = _both_paths(monkeypatch, lambda: _filters.separable_filter(x, ky, kx, mode))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(33, 47), (7, 5)])
def test_filter2d_direct_equals_fft(monkeypatch, size):
    x = _rand(2, *size, seed=8)
    for radius, alias in [(3, 0.1), (6, 0.5), (10, 0.5)]:  # vertically mirrored: paired rows
        kernel = _filters.disk_kernel(radius, alias)
        fast, slow = _both_paths(monkeypatch, lambda: _filters.filter2d(x, kernel))
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    asym = torch.zeros(5, 3)
    asym[0, 0], asym[4, 2], asym[2, 1] = 0.5, 0.3, 0.2  # not mirrored: row by row
    fast, slow = _both_paths(monkeypatch, lambda: _filters.filter2d(x, asym))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(33, 47), (7, 5)])
def test_motion_blur_numba_equals_torch_loop(monkeypatch, size):
    x = _rand(3, *size, seed=9)
    angle = torch.tensor([-40.0, 5.0, 170.0])
    fast, slow = _both_paths(monkeypatch, lambda: _filters.motion_blur(x, 15, 8.0, angle))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(45, 61), (16, 16), (7, 5), (1, 3)])
def test_zoom_blur_numba_equals_interpolate(monkeypatch, size):
    from visionstress.perturbations import blur

    x = _rand(2, *size, seed=10)
    for level in blur.ZOOM_BLUR:
        fast, slow = _both_paths(monkeypatch, lambda: blur.zoom_blur(x, {}, level))
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (5, 9)])
def test_glass_shuffle_numba_equals_torch_exactly(monkeypatch, size):
    pytest.importorskip("numba")
    from visionstress.perturbations import blur

    x = _rand(3, *size, seed=11)
    keys = torch.tensor([12345, 2**61 + 17, 99])
    for _, delta, rounds in blur.GLASS_BLUR:
        partial = blur._glass_steps(rounds, delta)
        fast = blur._glass_shuffle(x, keys, partial, delta, use_numba=True)
        slow = blur._glass_shuffle(x, keys, partial, delta, use_numba=False)
        assert torch.equal(fast, slow)
    p = get_perturbation("glass_blur")
    fast, slow = _both_paths(monkeypatch, lambda: p(x, severity=3, seed=4))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_numba", [True, False])
def test_glass_step_offsets_are_uniform_and_partial_step_takes_half(use_numba):
    if use_numba:
        pytest.importorskip("numba")
    from visionstress.perturbations import blur

    h, w = 64, 80
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None].expand(h, w)
    coords = torch.stack([rows, cols, rows])[None].repeat(2, 1, 1, 1)  # pixel values = their own coordinates
    keys = torch.tensor([5, 6])
    for delta in (1, 3):
        out = blur._glass_shuffle(coords, keys, [False], delta, use_numba)
        dy, dx = out[:, 0] - rows, out[:, 1] - cols
        inner = (slice(None), slice(delta + 1, h - delta + 1), slice(delta + 1, w - delta + 1))
        for d in (dy[inner], dx[inner]):
            counts = torch.stack([(d == v).float().mean() for v in range(-delta, delta)])
            assert abs(float(counts.sum()) - 1.0) < 1e-6  # every offset in [-delta, delta)
            assert float((counts - 1 / (2 * delta)).abs().max()) < 0.02
        border = torch.ones(h, w, dtype=torch.bool)
        border[delta + 1 : h - delta + 1, delta + 1 : w - delta + 1] = False
        assert float(dy[:, border].abs().max()) == 0 and float(dx[:, border].abs().max()) == 0
    # A partial step alone moves about half of the interior pixels (zero offsets stay put: 1/4 of them).
    moved = (blur._glass_shuffle(coords, keys, [True], 1, use_numba) != coords).any(dim=1)[:, 2:h, 2:w]
    assert abs(float(moved.float().mean()) - 0.5 * 0.75) < 0.03
