"""Batched linear filters shared by the blur family and the weather effects.

Everything takes float images `[B, C, H, W]` on any device and returns the same shape. Filters
with per-sample kernels (a motion-blur direction per image) are evaluated as one FFT correlation
over the batch, whose cost does not depend on the kernel's size; small shared kernels (Gaussians)
use separable depthwise convolutions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "disk_kernel",
    "fft_correlate",
    "filter2d",
    "filter_matrix",
    "gaussian_blur",
    "gaussian_kernel1d",
    "motion_blur",
    "motion_blur_taps",
    "separable_filter",
]


# ---------------------------------------------------------------------------------------------
# Gaussian


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, device: torch.device | str = "cpu") -> Tensor:
    """Normalised 1-D Gaussian with radius `int(truncate * sigma + 0.5)`, as scipy.ndimage uses."""
    radius = max(0, int(truncate * float(sigma) + 0.5))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / float(sigma)) ** 2)
    return (kernel / kernel.sum()).to(torch.float32)


def _pad_1d(x: Tensor, before: int, after: int, dim: int, mode: str) -> Tensor:
    """Pad one spatial dim of `[N, C, H, W]` by any amount; 'replicate' or 'reflect' (scipy's 'mirror')."""
    if before == 0 and after == 0:
        return x
    n = x.shape[dim]
    index = torch.arange(-before, n + after, device=x.device)
    if mode == "replicate" or n == 1:
        index = index.clamp(0, n - 1)
    elif mode == "reflect":  # mirror about the edge pixel (cv2 BORDER_REFLECT_101, torch 'reflect')
        period = 2 * (n - 1)
        index = torch.remainder(index, period)
        index = torch.where(index >= n, period - index, index)
    elif mode == "symmetric":  # mirror including the edge pixel (scipy 'reflect', cv2 BORDER_REFLECT)
        period = 2 * n
        index = torch.remainder(index, period)
        index = torch.where(index >= n, period - 1 - index, index)
    else:
        raise ValueError(f"unknown padding mode {mode!r}")
    return x.index_select(dim, index)


def filter_matrix(n: int, kernel: Tensor, mode: str = "replicate") -> Tensor:
    """The `[n, n]` matrix M with `M @ signal` = correlation of a length-n signal with the odd-length
    1-D `kernel` (centred), border handling folded in, so a separable filter becomes two matmuls whose
    cost does not depend on the kernel's length."""
    k = kernel.numel()
    r = (k - 1) // 2
    index = torch.arange(n, device=kernel.device)[:, None] + torch.arange(-r, r + 1, device=kernel.device)[None]
    index = _pad_1d(torch.arange(n, device=kernel.device).view(1, 1, 1, n).float(), r, r, 3, mode).view(-1).long()[
        index + r]
    matrix = torch.zeros(n, n, device=kernel.device, dtype=kernel.dtype)
    return matrix.scatter_add_(1, index, kernel.expand(n, -1).contiguous())


def separable_filter(images: Tensor, kernel_y: Tensor, kernel_x: Tensor, mode: str = "replicate") -> Tensor:
    """Correlate `[B, C, H, W]` with `kernel_y` down the columns and `kernel_x` along the rows."""
    _, _, h, w = images.shape
    my = filter_matrix(h, kernel_y.to(images.device, images.dtype), mode)
    mx = filter_matrix(w, kernel_x.to(images.device, images.dtype), mode)
    return torch.matmul(my, torch.matmul(images, mx.T))


def gaussian_blur(images: Tensor, sigma: float, truncate: float = 4.0, mode: str = "replicate") -> Tensor:
    """Separable Gaussian blur with one sigma for the whole batch.

    Defaults match `skimage.filters.gaussian` (scipy.ndimage: radius `int(4 sigma + 0.5)`, 'nearest'
    borders = 'replicate'), which is what ImageNet-C uses. Works for images smaller than the kernel.
    Evaluated as two matmuls with banded matrices (faster on CPU than depthwise convolution, and
    independent of sigma).
    """
    if sigma <= 0:
        return images
    kernel = gaussian_kernel1d(sigma, truncate, images.device)
    return separable_filter(images, kernel, kernel, mode)


# ---------------------------------------------------------------------------------------------
# Generic FFT correlation


def _good_size(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def fft_correlate(images: Tensor, taps_y: Tensor, taps_x: Tensor, weights: Tensor, mode: str = "replicate") -> Tensor:
    """Sparse correlation with per-sample kernels, evaluated by FFT.

    `out[b, :, y, x] = sum_i weights[b, i] * images[b, :, y + taps_y[b, i], x + taps_x[b, i]]`, where
    out-of-range reads are resolved by `mode` padding ('replicate', 'reflect' or 'symmetric').
    `taps_*` are integer tensors `[B, N]` (or `[N]`, shared); `weights` `[B, N]` or `[N]`.
    Cost is two FFTs of the padded batch, whatever the kernel's extent.
    """
    b, c, h, w = images.shape
    device = images.device
    taps_y = torch.as_tensor(taps_y, device=device).long().expand(b, -1)
    taps_x = torch.as_tensor(taps_x, device=device).long().expand(b, -1)
    weights = torch.as_tensor(weights, device=device, dtype=torch.float32).expand(b, -1)
    top, bottom = max(0, -int(taps_y.min())), max(0, int(taps_y.max()))
    left, right = max(0, -int(taps_x.min())), max(0, int(taps_x.max()))
    hp, wp = _good_size(h + top + bottom), _good_size(w + left + right)
    bottom, right = hp - h - top, wp - w - left  # extra padding up to the fast length, wrap-free
    x = _pad_1d(_pad_1d(images.float(), top, bottom, 2, mode), left, right, 3, mode)
    # Circular correlation: kernel value k at offset (u, v) sits at ((u mod Hp), (v mod Wp)).
    flat = torch.remainder(taps_y, hp) * wp + torch.remainder(taps_x, wp)
    kernel = torch.zeros(b, hp * wp, device=device, dtype=torch.float32)
    kernel.scatter_add_(1, flat, weights)
    spectrum = torch.fft.rfft2(x) * torch.fft.rfft2(kernel.view(b, 1, hp, wp)).conj()
    out = torch.fft.irfft2(spectrum, s=(hp, wp))
    return out[:, :, top : top + h, left : left + w].to(images.dtype)


def filter2d(images: Tensor, kernel: Tensor, mode: str = "reflect") -> Tensor:
    """Correlate every channel with one 2-D `kernel` `[kh, kw]` (odd sides, anchored at its centre), as
    `cv2.filter2D` does; default borders are cv2's BORDER_REFLECT_101 ('reflect')."""
    kh, kw = kernel.shape
    ys, xs = torch.meshgrid(torch.arange(kh, device=images.device) - kh // 2,
                            torch.arange(kw, device=images.device) - kw // 2, indexing="ij")
    keep = kernel.reshape(-1) != 0
    return fft_correlate(images, ys.reshape(-1)[keep], xs.reshape(-1)[keep],
                         kernel.reshape(-1)[keep].to(images.device), mode=mode)


# ---------------------------------------------------------------------------------------------
# Disk (defocus)


def disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """ImageNet-C's defocus kernel: a normalised disk of `radius` (on a 17x17 support up to radius 8),
    anti-aliased by a Gaussian of `alias_blur` with a 3x3 (radius <= 8) or 5x5 window, as
    `cv2.GaussianBlur` does it (BORDER_REFLECT_101 at the support's edge)."""
    half = 8 if radius <= 8 else int(radius)
    window = 3 if radius <= 8 else 5
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).double()
    disk = disk / disk.sum()
    r = window // 2
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / alias_blur) ** 2)
    g = g / g.sum()
    x = disk.view(1, 1, *disk.shape)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1))
    return x[0, 0].float()


# ---------------------------------------------------------------------------------------------
# Motion blur


def motion_blur_taps(radius: int, sigma: float, angle_degrees: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's motion-blur kernel as sparse taps: `(dy, dx, weight)`, each `[B, 2 radius + 1]`.

    Tap i reads the pixel i steps *behind* along the direction `angle` (degrees; 0 = +x, 90 = +y, i.e.
    downwards), rounded to integers as imagecorruptions' `_motion_blur` rounds them, with one-sided
    Gaussian weights `exp(-i^2 / 2 sigma^2)` normalised over the `2 radius + 1` taps. As in the
    reference, once a tap's offset reaches the image's size it and all later taps are dropped
    (without renormalising), so tiny images lose part of the kernel's mass the same way.
    """
    h, w = size
    width = 2 * int(radius) + 1
    angle = torch.as_tensor(angle_degrees, dtype=torch.float64).reshape(-1)
    device = angle.device
    i = torch.arange(width, device=device, dtype=torch.float64)
    weights = torch.exp(-(i**2) / (2.0 * float(sigma) ** 2))
    weights = weights / weights.sum()
    theta = torch.deg2rad(angle)[:, None]
    # shift(x, dx, dy)[y, x] = x[y - dy, x - dx] with dy = -ceil(i sin - 0.5): reads x[y + ceil(i sin - 0.5)].
    read_y = torch.ceil(i * torch.sin(theta) - 0.5)
    read_x = torch.ceil(i * torch.cos(theta) - 0.5)
    inside = (read_y.abs() < h) & (read_x.abs() < w)
    inside = torch.cumprod(inside.to(torch.int64), dim=1).bool()
    weights = torch.where(inside, weights, torch.zeros_like(weights))
    return read_y.long(), read_x.long(), weights.float()


def motion_blur(images: Tensor, radius: float, sigma: float, angle_degrees: Tensor) -> Tensor:
    """ImageNet-C motion blur with a per-sample direction.

    images `[B, C, H, W]` (any C, any float range: the filter is linear), `angle_degrees` `[B]` (or a
    float, shared). Each output pixel is a one-sided Gaussian-weighted average (2 radius + 1 taps,
    `sigma` in taps) of the pixels behind it along the angle, edges replicated: imagecorruptions'
    `_motion_blur` exactly (up to float32 rounding), including its dropping of taps that reach past
    a tiny image.

    On CUDA this is one FFT correlation over the batch. On CPU, where FFTs of the padded batch cost
    more than the taps themselves, the taps are accumulated as shifted views of one replicate-padded
    copy (a loop over samples and taps of whole-image adds: B x (2 radius + 1) vectorised ops).
    """
    b, c, h, w = images.shape
    angle = torch.as_tensor(angle_degrees, device=images.device, dtype=torch.float64).reshape(-1).expand(b)
    taps_y, taps_x, weights = motion_blur_taps(int(radius), sigma, angle, (h, w))
    if images.is_cuda:
        return fft_correlate(images, taps_y, taps_x, weights, mode="replicate")
    top, bottom = max(0, -int(taps_y.min())), max(0, int(taps_y.max()))
    left, right = max(0, -int(taps_x.min())), max(0, int(taps_x.max()))
    padded = _pad_1d(_pad_1d(images, top, bottom, 2, "replicate"), left, right, 3, "replicate")
    out = torch.zeros_like(images)
    for s, (ys, xs, ws) in enumerate(zip(taps_y.tolist(), taps_x.tolist(), weights.tolist())):
        acc, src = out[s], padded[s]
        for dy, dx, wt in zip(ys, xs, ws):
            if wt != 0.0:
                acc.add_(src[:, top + dy : top + dy + h, left + dx : left + dx + w], alpha=wt)
    return out
