"""Blur: defocus, camera or object motion, zoom, frosted glass and plain Gaussian blur (ImageNet-C).

Severity tables are Hendrycks & Dietterich's (2019), as in the `imagecorruptions` package; kernels
are batched torch re-implementations of its algorithms, with the deviations noted per kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from visionstress.rng import SampleRNG, uniform_field

from . import _filters
from .registry import photometric

FAMILY = "blur"

GAUSSIAN_BLUR = (1.0, 2.0, 3.0, 4.0, 6.0)
"""ImageNet-C gaussian_blur: the Gaussian's sigma in pixels (skimage `gaussian`, truncated at 4 sigma,
edges replicated)."""


@photometric(name="gaussian_blur", family=FAMILY, severities=GAUSSIAN_BLUR,
             description="ImageNet-C Gaussian blur: an out-of-focus look from a Gaussian kernel.")
def gaussian_blur(images: Tensor, params: dict[str, Tensor], level: float) -> Tensor:
    return _filters.gaussian_blur(images, level)


DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))
"""ImageNet-C defocus_blur: (disk radius in pixels, sigma of the Gaussian that anti-aliases the disk)."""


@photometric(name="defocus_blur", family=FAMILY, severities=DEFOCUS_BLUR,
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


@photometric(name="motion_blur", family=FAMILY, severities=MOTION_BLUR, sample=_sample_motion,
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


@photometric(name="zoom_blur", family=FAMILY, severities=ZOOM_BLUR,
             description="ImageNet-C zoom blur: the average of progressively zoomed copies (camera moving forward).")
def zoom_blur(images: Tensor, params: dict[str, Tensor], level: tuple[float, ...]) -> Tensor:
    """Deviation: where rounding makes a zoomed layer smaller than the image (tiny images only), the
    reference adds it into the top-left corner only; here the layer is interpolated up to the image size."""
    out = images.clone()
    for factor in level:
        out += _zoom_layer(images, factor)
    return out / (len(level) + 1)


GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1.0, 2, 3), (1.1, 3, 2), (1.5, 4, 2))
"""ImageNet-C glass_blur: (Gaussian sigma in pixels, maximum pixel displacement, shuffling rounds)."""


_GLASS_EXTRA_STEP = 0.5
"""Probability of a second displacement step per round (max_delta >= 2), calibrated on the reference."""


def _sample_glass(rng: SampleRNG, level: tuple[float, int, int], batch) -> dict[str, Tensor]:
    return {"key": rng.key()}


@photometric(name="glass_blur", family=FAMILY, severities=GLASS_BLUR, sample=_sample_glass,
             description="ImageNet-C glass blur: blur, local pixel shuffling, blur again (frosted glass).")
def glass_blur(images: Tensor, params: dict[str, Tensor], level: tuple[float, int, int]) -> Tensor:
    """Deviations from the reference, for speed and batch independence:

    * the reference swaps pixels one at a time in a sequential (numba) loop, so a pixel can be carried
      several times along the scan; here each round is one gather in which every interior pixel takes the
      value of a neighbour at a random offset in [-max_delta, max_delta) per axis (the reference's range),
      from a per-sample counter-based noise field. That is a local resampling, not a permutation: values
      can repeat or vanish, but none is created, and the final blur hides the difference (mean SSIM is
      checked against the reference).
    * the reference truncates to uint8 after the first blur; here the image stays float.
    """
    sigma, delta, rounds = level
    b, c, h, w = images.shape
    x = _filters.gaussian_blur(images, sigma)
    # The reference shuffles rows/columns delta+1 .. side-delta (inclusive), reading offsets in [-delta, delta).
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    interior = ((rows >= delta + 1) & (rows <= h - delta))[:, None] & ((cols >= delta + 1) & (cols <= w - delta))[None]
    if bool(interior.any()):
        # Each round is one full gather step plus, for max_delta >= 2, a second step taken by a random
        # half of the pixels: the reference's sequential swaps carry a pixel on along the scan about
        # that often (measured on its swap loop: a mean displacement of ~1.5 uniform steps per round).
        extra = _GLASS_EXTRA_STEP if delta >= 2 else 0.0
        steps = [(r, False) for r in range(rounds)] + ([(r, True) for r in range(rounds)] if extra > 0 else [])
        steps.sort()
        span = 2 * delta
        # 12 random bits per step (4 for dy, 4 for dx, 4 for the partial step), two steps per 24-bit
        # uniform: the counter-based hash is the costly part, so it is used sparingly. Offsets are
        # (4 bits * span) >> 4: exact for max_delta 1, 2, 4; within 3/16 vs 2/16 per value for 3.
        n_fields = (len(steps) + 1) // 2
        words = (uniform_field(params["key"], (n_fields, h, w)) * 16777216.0).to(torch.int32)
        bits = torch.cat([words & 4095, words >> 12], dim=1)[:, : len(steps)]
        dy = ((bits >> 8) * span >> 4) - delta
        dx = (((bits >> 4) & 15) * span >> 4) - delta
        base = (rows[:, None] * w + cols[None]).int().expand(b, len(steps), h, w)
        moved = base + dy * w + dx
        x = x.reshape(b, c, h * w)
        for i, (_, partial) in enumerate(steps):
            take = interior & ((bits[:, i] & 15) < int(16 * extra)) if partial else interior
            source = torch.where(take, moved[:, i], base[:, i]).reshape(b, 1, h * w).long()
            x = x.gather(2, source.expand(b, c, h * w))
        x = x.reshape(b, c, h, w)
    return _filters.gaussian_blur(x, sigma)
