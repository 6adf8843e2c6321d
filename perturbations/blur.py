"""Blur: defocus, camera or object motion, zoom, frosted glass and plain Gaussian blur (ImageNet-C).

Severity tables are Hendrycks & Dietterich's (2019), as in the `imagecorruptions` package; kernels
are batched torch re-implementations of its algorithms, with the deviations noted per kernel.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from visionstress.rng import SampleRNG, stream_seed, uniform_field

from . import _filters
from .levels import Field
from .registry import photometric, sample_key

FAMILY = "blur"

GAUSSIAN_BLUR = (1.0, 2.0, 3.0, 4.0, 6.0)
"""ImageNet-C gaussian_blur: the Gaussian's sigma in pixels (skimage `gaussian`, truncated at 4 sigma,
edges replicated)."""


@photometric(family=FAMILY, severities=GAUSSIAN_BLUR,
             fields=[Field("sigma", 0, 50)],
             description="ImageNet-C Gaussian blur: an out-of-focus look from a Gaussian kernel.")
def gaussian_blur(images: Tensor, params: dict[str, Tensor], level: float) -> Tensor:
    return _filters.gaussian_blur(images, level)


DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))
"""ImageNet-C defocus_blur: (disk radius in pixels, sigma of the Gaussian that anti-aliases the disk)."""


@photometric(family=FAMILY, severities=DEFOCUS_BLUR,
             fields=[Field("radius", 1, 50), Field("alias_sigma", 0.01, 10)],
             description="ImageNet-C defocus blur: convolution with an anti-aliased disk (lens out of focus).")
def defocus_blur(images: Tensor, params: dict[str, Tensor], level: tuple[int, float]) -> Tensor:
    """The reference's disk kernel (bit-for-bit, including its slightly >1 mass at radii 8 and 10),
    applied with cv2.filter2D's reflect-101 borders; evaluated by FFT since the kernel is up to 21x21."""
    radius, alias_blur = level
    kernel = _filters.disk_kernel(radius, alias_blur).to(images.device)
    return _filters.filter2d(images, kernel, mode="reflect")


MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))
"""ImageNet-C motion_blur: (radius: the kernel has 2 radius + 1 taps, sigma of their one-sided Gaussian
weights in taps). The direction is drawn per sample, uniform in [-45, 45] degrees as in the reference."""


def _sample_motion(rng: SampleRNG, level: tuple[int, float], batch) -> dict[str, Tensor]:
    return {"angle": rng.uniform(-45.0, 45.0)}


@photometric(family=FAMILY, severities=MOTION_BLUR, sample=_sample_motion,
             fields=[Field("radius", 1, 100, integer=True), Field("sigma", 0.1, 100)],
             description="ImageNet-C motion blur: a one-sided streak in a random direction (camera shake).")
def motion_blur(images: Tensor, params: dict[str, Tensor], level: tuple[int, float]) -> Tensor:
    """imagecorruptions' `_motion_blur` exactly (same integer taps, weights and replicated edges)."""
    radius, sigma = level
    return _filters.motion_blur(images, radius, sigma, params["angle"])


ZOOM_BLUR = (
    tuple(1 + 0.01 * i for i in range(12)),  # np.arange(1, 1.11, 0.01): 12 values, 1.11 included
    tuple(1 + 0.01 * i for i in range(16)),  # np.arange(1, 1.16, 0.01)
    tuple(1 + 0.02 * i for i in range(11)),  # np.arange(1, 1.21, 0.02)
    tuple(1 + 0.02 * i for i in range(13)),  # np.arange(1, 1.26, 0.02)
    tuple(1 + 0.03 * i for i in range(11)),  # np.arange(1, 1.31, 0.03)
)
"""ImageNet-C zoom_blur: the zoom factors averaged (with the clean image) per severity, exactly the
reference's `np.arange` ranges (floating-point endpoints and all)."""


def _zoom_layer(images: Tensor, factor: float) -> Tensor:
    """The reference's `clipped_zoom`: crop the centre `ceil(side / factor)`, enlarge it `factor` times with
    scipy's order-1 zoom (corner-aligned linear interpolation) and keep the top-left `H x W`."""
    _, _, h, w = images.shape
    ch, cw = max(1, math.ceil(h / factor)), max(1, math.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    out_h, out_w = max(h, round(ch * factor)), max(w, round(cw * factor))
    crop = images[:, :, top : top + ch, left : left + cw]
    if (out_h, out_w) == (ch, cw):
        return crop[:, :, :h, :w]
    return F.interpolate(crop, size=(out_h, out_w), mode="bilinear", align_corners=True)[:, :, :h, :w]


def _zoom_axis(n: int, factor: float) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """One axis of `_zoom_layer` as a table: the crop's start, and for each of the `n` kept output
    positions the two source indices (relative to the crop) and the second one's weight, computed as
    torch's corner-aligned bilinear interpolation computes them (float32)."""
    crop = max(1, math.ceil(n / factor))
    start = (n - crop) // 2
    out = max(n, round(crop * factor))
    scale = np.float32(crop - 1) / np.float32(out - 1) if out > 1 else np.float32(0.0)
    src = scale * np.arange(n, dtype=np.float32)
    i0 = np.minimum(src.astype(np.int64), crop - 1)
    i1 = np.minimum(i0 + 1, crop - 1)
    return start, i0, i1, (src - i0.astype(np.float32)).astype(np.float32)


def _zoom_numba(images: Tensor, level: tuple[float, ...]) -> Tensor:
    b, c, h, w = images.shape
    rows = [_zoom_axis(h, f) for f in level]
    cols = [_zoom_axis(w, f) for f in level]
    top = np.array([r[0] for r in rows], np.int64)
    left = np.array([r[0] for r in cols], np.int64)
    width = np.array([max(1, math.ceil(w / f)) for f in level], np.int64)
    y0, y1, wy = (np.stack([r[k] for r in rows]) for k in (1, 2, 3))
    x0, x1, wx = (np.stack([r[k] for r in cols]) for k in (1, 2, 3))
    x0, x1 = x0.astype(np.uint64), x1.astype(np.uint64)  # unsigned: no negative-index check, gathers vectorise
    x = images.detach().contiguous().view(b * c, h, w).numpy()
    from ._kernels import zoom_sum

    out = zoom_sum(x, top, y0, y1, wy, left, width, x0, x1, wx)
    return torch.from_numpy(out).view(b, c, h, w)


@photometric(family=FAMILY, severities=ZOOM_BLUR,
             fields=[Field("zooms", 1, 2, many=True)],
             description="ImageNet-C zoom blur: the average of progressively zoomed copies (camera moving forward).")
def zoom_blur(images: Tensor, params: dict[str, Tensor], level: tuple[float, ...]) -> Tensor:
    """Deviation: where rounding makes a zoomed layer smaller than the image (tiny images only), the
    reference adds it into the top-left corner only; here the layer is interpolated up to the image size.

    On CPU the layers are interpolated and summed in one compiled pass (numba, same interpolation
    weights); elsewhere with `F.interpolate` per layer."""
    if _filters._numba_ok(images):
        return _zoom_numba(images, level)
    out = images.clone()
    for factor in level:
        out += _zoom_layer(images, factor)
    return out / (len(level) + 1)


GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3), (1.1, 3, 2), (1.5, 4, 2))
"""ImageNet-C glass_blur: (Gaussian sigma in pixels, maximum pixel displacement, shuffling rounds)."""


_GLASS_EXTRA_STEP = 0.5
"""Probability of a second displacement step per round (max_delta >= 2), calibrated on the reference."""


_EXTRA_LEVELS = 16
"""Resolution of the partial step's coin: taken where the top 4 bits of the step's 24-bit draw are
below `_EXTRA_LEVELS * _GLASS_EXTRA_STEP`."""


def _glass_steps(rounds: int, delta: int) -> list[bool]:
    """The shuffle steps in order, True for a partial one: each round is one full gather step plus,
    for max_delta >= 2, a second step taken by a random half of the pixels (the reference's sequential
    swaps carry a pixel on along the scan about that often: measured on its swap loop, a mean
    displacement of ~1.5 uniform steps per round)."""
    partial = delta >= 2 and _GLASS_EXTRA_STEP > 0
    return [p for _ in range(rounds) for p in ((False, True) if partial else (False,))]


def _glass_shuffle(x: Tensor, keys: Tensor, partial: list[bool], delta: int, use_numba: bool) -> Tensor:
    """Apply the shuffle steps to `x` `[B, C, H, W]` (`keys` `[B]`: the per-sample glass keys).

    Step i (synchronous: every pixel reads the previous step's image) moves each interior pixel
    (rows and columns `delta + 1 .. side - delta`, as in the reference) to the value at offset
    `(dy, dx)` in `[-delta, delta)^2`, from the 24-bit integer `q = u * 2**24` of its draw
    `u = uniform_field(keys, (H, W), counter=i)`, by multiply-shift (bits 0-9 for dy, 10-19 for dx:
    `(bits * 2 delta) >> 10`, uniform up to 1/1024 for delta 3); a partial step moves only pixels
    whose bits 20-23 are below the threshold. Pure data movement, so the CPU loop and the torch ops
    agree exactly.
    """
    b, c, h, w = x.shape
    threshold = int(_EXTRA_LEVELS * _GLASS_EXTRA_STEP)
    if use_numba:
        from ._kernels import glass_shuffle

        seeds = torch.stack([stream_seed(keys, i) for i in range(len(partial))], dim=1).numpy().astype(np.uint32)
        flags = np.asarray(partial, dtype=np.uint8)
        return torch.from_numpy(glass_shuffle(x.contiguous().numpy(), seeds, flags, int(delta), threshold))
    span = 2 * delta
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    interior = ((rows >= delta + 1) & (rows <= h - delta))[:, None] & ((cols >= delta + 1) & (cols <= w - delta))[None]
    base = (rows[:, None] * w + cols[None]).expand(b, h, w)
    x = x.reshape(b, c, h * w)
    for i, is_partial in enumerate(partial):
        q = (uniform_field(keys, (h, w), counter=i) * 16777216.0).to(torch.int64)
        dy = (((q & 1023) * span) >> 10) - delta
        dx = ((((q >> 10) & 1023) * span) >> 10) - delta
        take = interior & ((q >> 20) < threshold) if is_partial else interior
        source = torch.where(take, base + dy * w + dx, base).reshape(b, 1, h * w)
        x = x.gather(2, source.expand(b, c, h * w))
    return x.reshape(b, c, h, w)


@photometric(family=FAMILY, severities=GLASS_BLUR, sample=sample_key,
             fields=[Field("sigma", 0, 20), Field("max_delta", 1, 10, integer=True), Field("rounds", 1, 10, integer=True)],
             description="ImageNet-C glass blur: blur, local pixel shuffling, blur again (frosted glass).")
def glass_blur(images: Tensor, params: dict[str, Tensor], level: tuple[float, int, int]) -> Tensor:
    """Deviations from the reference, for speed and batch independence:

    * the reference swaps pixels one at a time in a sequential (numba) loop, so a pixel can be carried
      several times along the scan; here each round is one synchronous step in which every interior
      pixel takes the value of a neighbour at a random offset in [-max_delta, max_delta) per axis (the
      reference's range), drawn from a per-sample counter-based noise field (one uniform per pixel and
      step, see `_glass_shuffle`), plus (max_delta >= 2) a partial step taken by half of the pixels. That is a local
      resampling, not a permutation: values can repeat or vanish, but none is created, and the final
      blur hides the difference (mean SSIM is checked against the reference).
    * the reference truncates to uint8 after the first blur; here the image stays float.

    On CPU the steps run as one compiled loop (numba); on other devices as torch gathers (identical).
    """
    sigma, delta, rounds = level
    b, c, h, w = images.shape
    x = _filters.gaussian_blur(images, sigma)
    if h >= 2 * delta + 1 and w >= 2 * delta + 1:  # some interior pixel exists
        partial = _glass_steps(rounds, delta)
        x = _glass_shuffle(x, params["key"], partial, delta, _filters._numba_ok(x))
    return _filters.gaussian_blur(x, sigma)
