"""Camera quality: sensor noise, compression, resolution loss and lens defects.

The first six are ImageNet-C corruptions (Hendrycks & Dietterich, 2019) with the reference's severity
tables (the `imagecorruptions` package); the algorithms are re-implemented as batched torch so they run
on the images' device and draw their noise from per-sample counter-based keys (visionstress.rng).
`iso_noise` is albumentations' ISONoise.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from visionstress.rng import SampleRNG, normal_field, numba_available, uniform_field

from ._warp import Warp, pixel_centres
from .albumentations import albumentations_perturbation, optional_albumentations
from .levels import Field
from .registry import geometric, photometric, sample_key

Params = dict[str, Tensor]


# ---- noise -----------------------------------------------------------------------------------------

GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)
"""ImageNet-C: standard deviation of additive Gaussian noise, in units of the [0, 1] range."""


@photometric(family="camera", severities=GAUSSIAN_NOISE, sample=sample_key,
             fields=[Field("std", 0, 1)],
             version=2,  # 2: a normal draw from a uniform of 1.0 is finite (1: inf, or NaN on CPU)
             description="ImageNet-C Gaussian noise: independent zero-mean noise added to every channel of every pixel.")
def gaussian_noise(images: Tensor, params: Params, level: float) -> Tensor:
    noise = normal_field(params["key"], tuple(images.shape[1:]), counter=0)
    return images + level * noise


SHOT_NOISE = (60.0, 25.0, 12.0, 5.0, 3.0)
"""ImageNet-C: photons per unit intensity c; the output is Poisson(c * x) / c (fewer photons = noisier)."""

_LEVELS = 256
"""Intensities are read on the 8-bit grid (round(255 x) / 255), as the reference reads its uint8
images; this lets every possible rate c x have a precomputed Poisson table."""

_GUIDE = 1024
"""Buckets of the guide table (Chen & Asau, 1974) that starts each inverse-CDF search."""


def _poisson_support(rate: float) -> int:
    """Largest count tabulated for Poisson(rate): the upper tail beyond it is below 2**-26, under the
    resolution of the 24-bit uniforms, so no sample can fall there."""
    log_p, cdf, k = -rate, math.exp(-rate), 0
    while 1.0 - cdf > 2.0**-26 and k < 10_000:
        k += 1
        log_p += math.log(rate) - math.log(k)
        cdf += math.exp(log_p)
    return k


@functools.lru_cache(maxsize=16)
def _poisson_tables(photons: float, device: torch.device) -> tuple[Tensor, Tensor, int]:
    """For each 8-bit level v, the CDF of Poisson(photons * v / 255) `[256, K + 1]` and the guide
    table `[256, _GUIDE]`: the smallest k whose CDF reaches m / _GUIDE, where a search may start."""
    top = _poisson_support(photons)
    rates = torch.arange(_LEVELS, dtype=torch.float64) * (photons / (_LEVELS - 1))
    k = torch.arange(top + 1, dtype=torch.float64)
    log_pmf = -rates[:, None] + k * torch.log(rates[:, None].clamp_min(1e-300)) - torch.lgamma(k + 1)
    pmf = torch.exp(log_pmf)
    pmf[0] = 0.0
    pmf[0, 0] = 1.0  # rate 0: always 0 photons
    cdf = torch.cumsum(pmf, dim=1).float()
    cdf[:, -1] = 1.0  # the truncated tail (< 2**-26) folds into the last count
    starts = torch.arange(_GUIDE, dtype=torch.float32) / _GUIDE
    guide = torch.searchsorted(cdf, starts.expand(_LEVELS, -1).contiguous())
    return cdf.reshape(-1).to(device), guide.reshape(-1).to(device), top + 1


def _poisson(images: Tensor, u: Tensor, photons: float) -> Tensor:
    """Poisson(photons * x) counts by exact inverse CDF of the uniforms `u` (no generator): the
    smallest k with CDF(k) >= u, found from a guide-table start by stepping up. Each value's search is
    independent of the others, so results do not depend on the batch."""
    cdf, guide, width = _poisson_tables(float(photons), images.device)
    u = u.reshape(-1)
    if images.device.type == "cpu" and numba_available():
        flat = images.contiguous().reshape(-1).numpy()
        from ._kernels import poisson_search

        counts = poisson_search(flat, u.numpy(), cdf.numpy(), guide.numpy(), width, _GUIDE, np.float32(_LEVELS - 1))
        return torch.from_numpy(counts).reshape(images.shape)
    level = (images.clamp(0.0, 1.0) * (_LEVELS - 1)).round_().to(torch.int64).reshape(-1)
    return _poisson_search_torch(level, u, cdf, guide, width).reshape(images.shape)


def _poisson_search_torch(level: Tensor, u: Tensor, cdf: Tensor, guide: Tensor, width: int) -> Tensor:
    bucket = (u * _GUIDE).to(torch.int64).clamp_(max=_GUIDE - 1)
    k = guide.gather(0, level * _GUIDE + bucket)  # gather: far faster than advanced indexing on CPU
    base = level * width
    step = u > cdf.gather(0, base + k)
    k += step
    # the few values whose guide bucket straddles several counts (the far tail) keep stepping
    todo = torch.nonzero(step).squeeze(1)
    for _ in range(width):
        if todo.numel() == 0:
            break
        kt = k.gather(0, todo)
        step = u.gather(0, todo) > cdf.gather(0, base.gather(0, todo) + kt)
        k.scatter_(0, todo, kt + step)
        todo = todo[step]
    return k.to(torch.float32)


@photometric(family="camera", severities=SHOT_NOISE, sample=sample_key,
             fields=[Field("photons", 1, 1000)],
             description="ImageNet-C shot noise: photon-counting (Poisson) noise of a sensor starved of light.")
def shot_noise(images: Tensor, params: Params, level: float) -> Tensor:
    """Poisson(c x) / c with c the table's photon count. Deviation from the reference: numpy's Poisson
    sampler is replaced by the exact inverse CDF of counter-based uniforms (tabulated per 8-bit
    intensity level), so samples are batch- and device-independent; float inputs are read on the
    8-bit grid, as the reference reads its uint8 images."""
    u = uniform_field(params["key"], tuple(images.shape[1:]), counter=0)
    return _poisson(images, u, level) / level


IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)
"""ImageNet-C: fraction of channel values replaced by salt (1) or pepper (0), half each."""


@photometric(family="camera", severities=IMPULSE_NOISE, sample=sample_key,
             fields=[Field("amount", 0, 1)],
             description="ImageNet-C impulse noise: a fraction of channel values flipped to black or white (salt and pepper).")
def impulse_noise(images: Tensor, params: Params, level: float) -> Tensor:
    """scikit-image's 's&p' mode as the reference calls it: each channel value independently replaced
    with probability `level`, by 0 or 1 with equal probability (one uniform decides both)."""
    u = uniform_field(params["key"], tuple(images.shape[1:]), counter=0)
    out = torch.where(u < 0.5 * level, 0.0, images)
    return torch.where((u >= 0.5 * level) & (u < level), 1.0, out)


SPECKLE_NOISE = (0.15, 0.2, 0.35, 0.45, 0.6)
"""ImageNet-C: standard deviation of multiplicative Gaussian noise, x + x * N(0, c^2)."""


@photometric(family="camera", severities=SPECKLE_NOISE, sample=sample_key,
             fields=[Field("std", 0, 2)],
             version=2,  # 2: a normal draw from a uniform of 1.0 is finite (1: inf, or NaN on CPU)
             description="ImageNet-C speckle noise: multiplicative Gaussian noise, proportional to brightness.")
def speckle_noise(images: Tensor, params: Params, level: float) -> Tensor:
    noise = normal_field(params["key"], tuple(images.shape[1:]), counter=0)
    return images + images * (level * noise)


# ---- compression and resolution ---------------------------------------------------------------------

JPEG_QUALITY = (25, 18, 15, 10, 7)
"""ImageNet-C: JPEG quality factor (libjpeg's 1..100 scale, the one PIL uses)."""


@photometric(family="camera", severities=JPEG_QUALITY,
             fields=[Field("quality", 1, 100, integer=True)],
             description="ImageNet-C JPEG compression: encoded and decoded at a low quality factor (blocking, ringing).")
def jpeg_compression(images: Tensor, params: Params, level: int) -> Tensor:
    """Through torchvision.io's libjpeg (CPU, one call per image inside the codec) or nvjpeg (CUDA,
    batched), at the reference's quality. The codec needs 8-bit input, so images are rounded to
    uint8 first, as the reference's PIL images are."""
    q = images.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)  # in place: one allocation, not three
    # channels-last, so each image's HWC view is already contiguous: the encoder's own CHW -> HWC
    # copy, multithreaded, was 20x slower than the encoding itself on a busy 2-core CPU
    q = q.contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its codecs in favour of TorchCodec, which has no JPEG encoder yet.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import decode_jpeg, encode_jpeg

        encoded = encode_jpeg(list(q.unbind(0)), quality=int(level))  # nvjpeg, batched, on CUDA
        decoded = decode_jpeg([e.cpu() for e in encoded], device=q.device)  # the decoder reads host bytes
    return torch.stack(decoded).float().div_(255.0)


PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
"""ImageNet-C: the image is shrunk to this fraction of its size (box filter), then enlarged back (nearest)."""


@functools.lru_cache(maxsize=64)
def _box_matrix_cpu(n_in: int, n_out: int) -> Tensor:
    """`[n_out, n_in]` weights of PIL's BOX reduction (Resample.c `precompute_coeffs`), evaluated in
    the same double-precision order so pixels whose centre falls exactly on a cell border go to the
    same cell as in PIL: output i averages the inputs j with -0.5 < (j + 0.5 - centre_i) / scale <= 0.5
    inside the window PIL scans."""
    scale = n_in / n_out
    support = 0.5 * max(scale, 1.0)
    ss = 1.0 / max(scale, 1.0)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(0, int(centre - support + 0.5))
        hi = min(n_in, int(centre + support + 0.5))
        for j in range(lo, hi):
            v = (j - centre + 0.5) * ss
            if -0.5 < v <= 0.5:
                m[i, j] = 1.0
    return (m / m.sum(dim=1, keepdim=True).clamp_min(1.0)).float()


def _box_matrix(n_in: int, n_out: int, device: torch.device) -> Tensor:
    return _box_matrix_cpu(n_in, n_out).to(device)


@functools.lru_cache(maxsize=64)
def _nearest_index_cpu(n_small: int, n_out: int) -> Tensor:
    """Source index of PIL's NEAREST enlargement (Geometry.c `ImagingScaleAffine`): the sample
    position starts at scale / 2 and is accumulated by repeated addition of scale = n_small / n_out,
    then truncated; the running sum decides exact ties as PIL does."""
    scale = n_small / n_out
    pos, index = 0.5 * scale, []
    for _ in range(n_out):
        index.append(min(int(pos), n_small - 1))
        pos += scale
    return torch.tensor(index, dtype=torch.int64)


def _nearest_index(n_small: int, n_out: int, device: torch.device) -> Tensor:
    return _nearest_index_cpu(n_small, n_out).to(device)


@functools.lru_cache(maxsize=64)
def _torch_nearest_agrees(n_small: int, n_out: int) -> bool:
    """Whether torch's 'nearest-exact' picks PIL's source indices (it does except at exact ties,
    which PIL's running sum may break the other way); then the fast interpolation kernel is used."""
    ramp = torch.arange(n_small, dtype=torch.float32).reshape(1, 1, n_small, 1)
    picked = F.interpolate(ramp, size=(n_out, 1), mode="nearest-exact").flatten().long()
    return torch.equal(picked, _nearest_index_cpu(n_small, n_out))


@photometric(family="camera", severities=PIXELATE,
             fields=[Field("scale", 0.01, 1)],
             description="ImageNet-C pixelate: box-averaged down to a fraction of the size, enlarged back by nearest neighbour.")
def pixelate(images: Tensor, params: Params, level: float) -> Tensor:
    """PIL's BOX-then-NEAREST resize pair as separable matrix products and an index gather, to the
    same integer target size int(side * c) as the reference (at least 1 pixel)."""
    _, _, h, w = images.shape
    hs, ws = max(1, int(h * level)), max(1, int(w * level))
    dev = images.device
    small = _box_matrix(h, hs, dev) @ (images @ _box_matrix(w, ws, dev).T)  # [B, 3, hs, ws]
    if _torch_nearest_agrees(hs, h) and _torch_nearest_agrees(ws, w):
        return F.interpolate(small, size=(h, w), mode="nearest-exact")
    small = small.index_select(2, _nearest_index(hs, h, dev))
    return small.index_select(3, _nearest_index(ws, w, dev))


# ---- lens defects ------------------------------------------------------------------------------------


def _radius(size: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Offsets (dx, dy) of every pixel centre from the image centre and their radius, all in units of
    the half-diagonal (so the corners are at radius 1 whatever the aspect ratio)."""
    h, w = size
    centres = pixel_centres(size, device)
    half_diag = 0.5 * math.hypot(h, w)
    dx = (centres[..., 0] - w / 2.0) / half_diag
    dy = (centres[..., 1] - h / 2.0) / half_diag
    return dx, dy, torch.sqrt(dx * dx + dy * dy)


CHROMATIC_ABERRATION = (0.003, 0.006, 0.01, 0.015, 0.022)
"""Lateral colour: red is magnified by (1 + a) and blue by (1 - a) about the centre, green fixed; a is
the fringe width at the corners as a fraction of the half-diagonal (0.022 = 3.5 px on a 224 x 224 image
between green and each of red and blue, 7 px red-to-blue: a poor wide-angle zoom). Own calibration."""


@photometric(family="camera", severities=CHROMATIC_ABERRATION,
             fields=[Field("fringe", 0, 0.2)],
             description="Lateral chromatic aberration: red and blue channels magnified differently, colour fringes towards the corners.")
def chromatic_aberration(images: Tensor, params: Params, level: float) -> Tensor:
    """Photometric although it resamples: object geometry moves by at most a few pixels at the corners,
    so targets stay where they are. Edges are replicated (no black rim)."""
    b, _, h, w = images.shape
    centres = pixel_centres((h, w), images.device)
    norm = torch.tensor([2.0 / w, 2.0 / h], device=images.device)
    offset = centres * norm - 1.0  # normalised, about the centre
    # Output at offset r samples red at r / (1 + a): red appears magnified by (1 + a).
    grids = torch.stack([offset / (1.0 + level), offset / (1.0 - level)])  # [2, H, W, 2]
    rb = images[:, [0, 2]].transpose(0, 1).reshape(2, b, h, w)  # channel-major so each gets its grid
    moved = F.grid_sample(rb, grids, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.stack([moved[0], images[:, 1], moved[1]], dim=1)


VIGNETTING_STOPS = (0.5, 1.0, 1.5, 2.0, 3.0)
"""Light lost at the image corners, in photographic stops (factor 2**-stops in linear light), with the
natural cos^4 falloff in between. Own calibration: 0.5 stop is a good lens wide open, 3 stops a
cheap wide-angle lens or a misfitted lens hood."""


_DISPLAY_GAMMA = 2.2
"""Encoded values are treated as linear light ** (1 / 2.2), the pure-power approximation of sRGB."""


@photometric(family="camera", severities=VIGNETTING_STOPS,
             fields=[Field("stops", 0, 8)],
             description="Vignetting: cos^4 radial darkening towards the corners, applied in linear light.")
def vignetting(images: Tensor, params: Params, level: float) -> Tensor:
    """Relative illumination cos^4(theta) with tan(theta) = r tan(theta_c), r the radius in
    half-diagonals and theta_c chosen so the corners receive 2**-stops of the light. Light falloff
    is physical, so the gain applies to linear light; with the pure-power 2.2 display gamma that is
    one multiplicative map gain ** (1 / 2.2) on the encoded values (exact sRGB decoding would cost
    two pow passes over the batch for a difference confined to the darkest values)."""
    _, _, h, w = images.shape
    _, _, r = _radius((h, w), images.device)
    corner = 2.0 ** (-level)
    tan2_c = corner ** -0.5 - 1.0  # cos^4 = 1 / (1 + tan^2)^2
    gain = (1.0 + r * r * tan2_c) ** (-2.0 / _DISPLAY_GAMMA)
    return images * gain


LENS_DISTORTION = (0.04, 0.08, 0.13, 0.2, 0.3)
"""Barrel distortion k1 (largest of the severity's band; each sample draws k1 uniformly in
[0.8 k1, k1], so the bands do not overlap): an output pixel at radius r (in half-diagonals) shows the
scene point at r (1 + k1 r^2), so the corners show what lay k1 half-diagonals further out (uncovered
area black) and objects near the edges are squeezed towards the centre. Always barrel (k1 > 0), the
distortion of the cheap wide-angle lenses of webcams, dash and action cameras. Own calibration."""


def _sample_lens(rng: SampleRNG, level: float, batch) -> Params:
    return {"k1": rng.uniform(0.8 * level, level)}


@geometric(family="camera", severities=LENS_DISTORTION, sample=_sample_lens,
           fields=[Field("k1", 0, 1)],
           version=2,  # 2: boxes from moved masks or inscribed ellipses (1: box_method="enclosing")
           description="Barrel lens distortion: straight lines bow outwards, off-centre content pulled towards the centre.")
def lens_distortion(params: Params, level: float, size: tuple[int, int], device: torch.device) -> Warp:
    """A dense backward map (the radial model is not projective); boxes and masks follow it.
    Replay: params["k1"] `[B]`, the source radius is r (1 + k1 r^2), r in half-diagonals."""
    h, w = size
    k1 = params["k1"].reshape(-1, 1, 1)
    dx, dy, r = _radius(size, device)
    half_diag = 0.5 * math.hypot(h, w)
    factor = (1.0 + k1 * (r * r)) * half_diag  # [B, H, W]
    grid = torch.stack([w / 2.0 + dx * factor, h / 2.0 + dy * factor], dim=-1)
    return Warp(grid=grid)


# ---- sensor noise of a high ISO (albumentations) -------------------------------------------------------

ISO_NOISE = (((0.01, 0.02), (0.1, 0.2)), ((0.02, 0.03), (0.25, 0.35)), ((0.03, 0.04), (0.4, 0.5)),
             ((0.04, 0.05), (0.6, 0.7)), ((0.05, 0.06), (0.8, 0.9)))
"""(albumentations ISONoise colour-shift range, intensity range): hue shift and luminance noise both grow."""


def _register_iso_noise() -> None:
    A = optional_albumentations()
    if A is None:
        return
    albumentations_perturbation(
        "iso_noise", "camera",
        [A.ISONoise(color_shift=shift, intensity=intensity, p=1.0) for shift, intensity in ISO_NOISE],
        "High-ISO camera sensor noise: per-pixel hue shifts and luminance noise (albumentations ISONoise).",
    )


_register_iso_noise()
