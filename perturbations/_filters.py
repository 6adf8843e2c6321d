"""Padding and batched linear filters: the one place every family takes them from.

Everything takes float images `[B, C, H, W]` on any device and returns the same shape. Filters
with per-sample kernels (a motion-blur direction per image) are evaluated as one FFT correlation
over the batch, whose cost does not depend on the kernel's size; separable kernels (Gaussians) run
as a compiled loop on the CPU and as banded matrix products elsewhere.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from visionstress.rng import numba_available

__all__ = [
    "PAD_MODES",
    "box3",
    "correlate3x3",
    "disk_kernel",
    "fft_correlate",
    "filter2d",
    "filter_matrix",
    "fold_index",
    "gaussian_blur",
    "gaussian_kernel1d",
    "motion_blur",
    "motion_blur_taps",
    "pad",
    "pad2d",
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


PAD_MODES = ("replicate", "reflect", "symmetric")
"""Border modes: 'replicate' repeats the edge pixel (scipy 'nearest'); 'reflect' mirrors about the edge
pixel (cv2 BORDER_REFLECT_101, torch 'reflect', scipy 'mirror'); 'symmetric' mirrors including the edge
pixel (cv2 BORDER_REFLECT, scipy 'reflect', grid_sample's 'reflection')."""


def fold_index(index: Tensor, n: int, mode: str) -> Tensor:
    """Integer positions on an axis of length `n` (any, inside or outside [0, n)) mapped to the pixel
    that border mode `mode` reads there."""
    if mode == "replicate" or n == 1:
        return index.clamp(0, n - 1)
    if mode == "reflect":
        period = 2 * (n - 1)
        index = torch.remainder(index, period)
        return torch.where(index >= n, period - index, index)
    if mode == "symmetric":
        period = 2 * n
        index = torch.remainder(index, period)
        return torch.where(index >= n, period - 1 - index, index)
    raise ValueError(f"unknown padding mode {mode!r}; use one of {PAD_MODES}")


def pad(x: Tensor, before: int, after: int, dim: int, mode: str) -> Tensor:
    """Pad dimension `dim` of `x` by any amount (even more than its length) in border mode `mode`."""
    if before == 0 and after == 0:
        return x
    n = x.shape[dim]
    return x.index_select(dim, fold_index(torch.arange(-before, n + after, device=x.device), n, mode))


def pad2d(x: Tensor, r: int, mode: str) -> Tensor:
    """Pad the last two dimensions of `x` by `r` on every side."""
    return pad(pad(x, r, r, -1, mode), r, r, -2, mode)


def filter_matrix(n: int, kernel: Tensor, mode: str = "replicate") -> Tensor:
    """The `[n, n]` matrix M with `M @ signal` = correlation of a length-n signal with the odd-length
    1-D `kernel` (centred), border handling folded in, so a separable filter becomes two matmuls whose
    cost does not depend on the kernel's length."""
    k = kernel.numel()
    r = (k - 1) // 2
    index = torch.arange(n, device=kernel.device)[:, None] + torch.arange(-r, r + 1, device=kernel.device)[None]
    index = fold_index(index, n, mode)
    matrix = torch.zeros(n, n, device=kernel.device, dtype=kernel.dtype)
    return matrix.scatter_add_(1, index, kernel.expand(n, -1).contiguous())


USE_NUMBA = True
"""Use the compiled CPU loops (numba) where they apply; tests switch it off to compare with the torch path."""


def _numba_ok(images: Tensor) -> bool:
    """Whether the compiled CPU loops apply: float32 CPU tensors without autograd, numba installed."""
    return (USE_NUMBA and images.device.type == "cpu" and images.dtype == torch.float32
            and not images.requires_grad and images.numel() > 0 and numba_available())


def _border_index(n: int, r: int, mode: str) -> np.ndarray:
    """Source index of each of the `n + 2 r` positions of a `mode`-padded axis (as `pad` pads)."""
    return fold_index(torch.arange(-r, n + r), n, mode).numpy().astype(np.int64)


def _separable_numba(images: Tensor, kernel_y: Tensor, kernel_x: Tensor, mode: str) -> Tensor:
    b, c, h, w = images.shape
    ky = kernel_y.detach().to("cpu", torch.float32).contiguous().numpy()
    kx = kernel_x.detach().to("cpu", torch.float32).contiguous().numpy()
    iy = _border_index(h, (ky.shape[0] - 1) // 2, mode)
    ix = _border_index(w, (kx.shape[0] - 1) // 2, mode)
    x = images.detach().contiguous().view(b * c, h, w).numpy()
    from ._kernels import separable

    return torch.from_numpy(separable(x, ky, kx, iy, ix)).view(b, c, h, w)


def separable_filter(images: Tensor, kernel_y: Tensor, kernel_x: Tensor, mode: str = "replicate") -> Tensor:
    """Correlate `[B, C, H, W]` with `kernel_y` down the columns and `kernel_x` along the rows.

    On CPU (float32) a compiled direct loop (cost proportional to the taps, a few ms for a 224x224
    batch of 32 at small sigma); elsewhere two matmuls with banded matrices (fast on GPUs whatever
    the kernel's length). Both give the same result up to float32 rounding.
    """
    if _numba_ok(images):
        return _separable_numba(images, kernel_y, kernel_x, mode)
    _, _, h, w = images.shape
    my = filter_matrix(h, kernel_y.to(images.device, images.dtype), mode)
    mx = filter_matrix(w, kernel_x.to(images.device, images.dtype), mode)
    return torch.matmul(my, torch.matmul(images, mx.T))


def gaussian_blur(images: Tensor, sigma: float, truncate: float = 4.0, mode: str = "replicate") -> Tensor:
    """Separable Gaussian blur with one sigma for the whole batch.

    Defaults match `skimage.filters.gaussian` (scipy.ndimage: radius `int(4 sigma + 0.5)`, 'nearest'
    borders = 'replicate'), which is what ImageNet-C uses. Works for images smaller than the kernel.
    See `separable_filter` for how it is evaluated.
    """
    if sigma <= 0:
        return images
    kernel = gaussian_kernel1d(sigma, truncate, images.device)
    return separable_filter(images, kernel, kernel, mode)


# ---------------------------------------------------------------------------------------------
# Small 3x3 filters with OpenCV's arithmetic


def box3(x: Tensor) -> Tensor:
    """cv2.blur with a 3x3 window (BORDER_REFLECT_101) of `[..., H, W]`: the nine values summed, then
    divided, so integer-valued inputs give the same floors as OpenCV."""
    p = pad2d(x, 1, "reflect")
    rows = p[..., :-2] + p[..., 1:-1] + p[..., 2:]
    return (rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]) * (1.0 / 9.0)


def correlate3x3(x: Tensor, kernel: tuple[tuple[float, ...], ...], mode: str) -> Tensor:
    """Correlate `[..., H, W]` with a small 3x3 kernel by shifted slices (cv2.filter2D semantics)."""
    h, w = x.shape[-2:]
    p = pad2d(x, 1, mode)
    out = torch.zeros_like(x)
    for i in range(3):
        for j in range(3):
            if kernel[i][j] != 0:
                out = out + kernel[i][j] * p[..., i : i + h, j : j + w]
    return out


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
    taps_y = torch.as_tensor(taps_y, device=device).long()
    taps_x = torch.as_tensor(taps_x, device=device).long()
    weights = torch.as_tensor(weights, device=device, dtype=torch.float32)
    # A kernel shared by the batch (1-D taps and weights) is transformed once and broadcast.
    kb = 1 if taps_y.ndim == 1 and taps_x.ndim == 1 and weights.ndim == 1 else b
    taps_y, taps_x, weights = taps_y.expand(kb, -1), taps_x.expand(kb, -1), weights.expand(kb, -1)
    top, bottom = max(0, -int(taps_y.min())), max(0, int(taps_y.max()))
    left, right = max(0, -int(taps_x.min())), max(0, int(taps_x.max()))
    hp, wp = _good_size(h + top + bottom), _good_size(w + left + right)
    bottom, right = hp - h - top, wp - w - left  # extra padding up to the fast length, wrap-free
    x = pad(pad(images.float(), top, bottom, 2, mode), left, right, 3, mode)
    # Circular correlation: kernel value k at offset (u, v) sits at ((u mod Hp), (v mod Wp)).
    flat = torch.remainder(taps_y, hp) * wp + torch.remainder(taps_x, wp)
    kernel = torch.zeros(kb, hp * wp, device=device, dtype=torch.float32)
    kernel.scatter_add_(1, flat, weights)
    spectrum = torch.fft.rfft2(x) * torch.fft.rfft2(kernel.view(kb, 1, hp, wp)).conj()
    out = torch.fft.irfft2(spectrum, s=(hp, wp))
    return out[:, :, top : top + h, left : left + w].to(images.dtype)


_DIRECT_MAX_TAPS = 500
"""On CPU, `filter2d` correlates directly (compiled loop, cost proportional to the nonzero taps, halved
for vertically mirrored kernels) up to this many taps and by FFT beyond: measured on 32 x 3 x 224 x 224,
the direct loop takes ~12 ms for ImageNet-C's radius-3 disk (61 taps), ~26 ms at radius 8 (257) and
~43 ms at radius 10 (429), the FFT ~35-65 ms whatever the kernel."""


def filter2d(images: Tensor, kernel: Tensor, mode: str = "reflect") -> Tensor:
    """Correlate every channel with one 2-D `kernel` `[kh, kw]` (odd sides, anchored at its centre), as
    `cv2.filter2D` does; default borders are cv2's BORDER_REFLECT_101 ('reflect').

    On CPU a direct compiled loop for kernels of at most `_DIRECT_MAX_TAPS` nonzero taps, otherwise
    (and on other devices) an FFT correlation; the same result up to float32 rounding."""
    kh, kw = kernel.shape
    if _numba_ok(images) and int((kernel != 0).sum()) <= _DIRECT_MAX_TAPS:
        b, c, h, w = images.shape
        k = kernel.detach().to("cpu", torch.float32).contiguous().numpy()
        x = images.detach().contiguous().view(b * c, h, w).numpy()
        mirrored = bool(np.array_equal(k, k[::-1]))
        from ._kernels import correlate

        out = correlate(x, k, _border_index(h, kh // 2, mode), _border_index(w, kw // 2, mode), mirrored)
        return torch.from_numpy(out).view(b, c, h, w)
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
    copy: a compiled loop (numba), or without it a loop over samples and taps of whole-image adds
    (B x (2 radius + 1) vectorised ops); both add the taps in the same order.
    """
    b, c, h, w = images.shape
    angle = torch.as_tensor(angle_degrees, device=images.device, dtype=torch.float64).reshape(-1).expand(b)
    taps_y, taps_x, weights = motion_blur_taps(int(radius), sigma, angle, (h, w))
    if images.is_cuda:
        return fft_correlate(images, taps_y, taps_x, weights, mode="replicate")
    if _numba_ok(images):
        return _taps_numba(images, taps_y, taps_x, weights)
    top, bottom = max(0, -int(taps_y.min())), max(0, int(taps_y.max()))
    left, right = max(0, -int(taps_x.min())), max(0, int(taps_x.max()))
    padded = pad(pad(images, top, bottom, 2, "replicate"), left, right, 3, "replicate")
    out = torch.zeros_like(images)
    for s, (ys, xs, ws) in enumerate(zip(taps_y.tolist(), taps_x.tolist(), weights.tolist())):
        acc, src = out[s], padded[s]
        for dy, dx, wt in zip(ys, xs, ws):
            if wt != 0.0:
                acc.add_(src[:, top + dy : top + dy + h, left + dx : left + dx + w], alpha=wt)
    return out


def _taps_numba(images: Tensor, taps_y: Tensor, taps_x: Tensor, weights: Tensor) -> Tensor:
    """`out[b, :, y, x] = sum_i weights[b, i] * images[b, :, y + taps_y[b, i], x + taps_x[b, i]]`, reads
    clamped to the image (replicated borders), taps added in order."""
    b, _, h, w = images.shape
    ty = taps_y.to("cpu", torch.int64).expand(b, -1).contiguous()
    tx = taps_x.to("cpu", torch.int64).expand(b, -1).contiguous()
    wt = weights.to("cpu", torch.float32).expand(b, -1).contiguous().numpy()
    top, bottom = max(0, -int(ty.min())), max(0, int(ty.max()))
    left, right = max(0, -int(tx.min())), max(0, int(tx.max()))
    iy = torch.arange(-top, h + bottom).clamp(0, h - 1).numpy()
    ix = torch.arange(-left, w + right).clamp(0, w - 1).numpy()
    from ._kernels import correlate_taps

    out = correlate_taps(images.detach().contiguous().numpy(), ty.numpy(), tx.numpy(), wt, top, left, iy, ix)
    return torch.from_numpy(out)
