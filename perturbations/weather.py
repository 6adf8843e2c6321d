"""Weather: snow, frost, fog and spatter (ImageNet-C), and rain (albumentations).

Algorithms and severity tables follow Hendrycks & Dietterich (2019) as implemented in the
`imagecorruptions` package (the reference the fidelity tests compare against), rewritten as batched
torch so they run on the resident batch on any device. Randomness is per sample: `sample` draws a
key per sample and the kernels expand it into noise fields with `visionstress.rng`, so a sample is
perturbed identically alone or inside any batch, on CPU or CUDA. Deviations from the reference are
stated in each kernel's docstring.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from visionstress.rng import SampleRNG, normal_field, uniform_field

from ._filters import box3, correlate3x3, gaussian_blur, motion_blur, pad2d
from .albumentations import albumentations_perturbation, optional_albumentations
from .levels import Field
from .registry import photometric, sample_key

Params = dict[str, Tensor]


# ---------------------------------------------------------------------------------------------
# fog

FOG = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))
"""ImageNet-C fog: (strength of the added plasma-fractal haze, wibble decay of the fractal; lower
decay = more high-frequency detail)."""


def plasma_fractal(keys: Tensor, mapsize: int, wibble_decay: float) -> Tensor:
    """Per-sample diamond-square height maps `[B, mapsize, mapsize]` in [0, 1] (mapsize a power of 2).

    The reference's algorithm (toroidal diamond-square, perturbation `wibble * U(-wibble, wibble)`
    with wibble starting at 100 and divided by `wibble_decay` per level), batched; the uniform draws
    come from the per-sample keys instead of numpy's global RNG.
    """
    b = keys.shape[0]
    m = torch.zeros(b, mapsize, mapsize, device=keys.device)
    step, wibble, counter = mapsize, 100.0, 0

    def wibbled_mean(total: Tensor) -> Tensor:
        nonlocal counter
        counter += 1
        noise = uniform_field(keys, tuple(total.shape[1:]), counter) * (2 * wibble) - wibble
        return total / 4 + wibble * noise

    while step >= 2:
        half = step // 2
        corners = m[:, ::step, ::step]
        squares = corners + corners.roll(-1, dims=1)
        squares = squares + squares.roll(-1, dims=2)
        m[:, half::step, half::step] = wibbled_mean(squares)
        centres = m[:, half::step, half::step]
        corners = m[:, ::step, ::step]
        left = centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        m[:, ::step, half::step] = wibbled_mean(left)
        top = centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        m[:, half::step, ::step] = wibbled_mean(top)
        step = half
        wibble /= wibble_decay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


@photometric(family="weather", severities=FOG, sample=sample_key,
             fields=[Field("strength", 0, 10), Field("decay", 1, 10)],
             description="ImageNet-C fog: a per-sample plasma-fractal haze added, then the range renormalised.")
def fog(images: Tensor, params: Params, level: tuple[float, float]) -> Tensor:
    """`(x + s * plasma) * max(x) / (max(x) + s)`, the reference's formula, with its power-of-two
    fractal (side = next power of two of the longer image side) cropped to the image."""
    strength, decay = level
    _, _, h, w = images.shape
    mapsize = max(2, 1 << (max(h, w) - 1).bit_length())
    haze = plasma_fractal(params["key"], mapsize, decay)[:, None, :h, :w]
    peak = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images + strength * haze) * peak / (peak + strength)


# ---------------------------------------------------------------------------------------------
# spatter

SPATTER = (
    (0.65, 0.3, 4, 0.69, 0.6, 0),
    (0.65, 0.3, 3, 0.68, 0.6, 0),
    (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1),
    (0.67, 0.4, 1, 0.65, 1.5, 1),
)
"""ImageNet-C spatter: (noise mean, noise std, smoothing sigma, threshold, intensity, mode).
Mode 0 = water drops (severities 1-3; intensity = peak brightness of the drops), mode 1 = mud
(severities 4-5; intensity = sigma softening the mud blobs). The switch makes distortion non-monotone."""

_WATER = (175 / 255.0, 238 / 255.0, 238 / 255.0)  # the reference's "BGR" turquoise lands on RGB images as is
_MUD = (63 / 255.0, 42 / 255.0, 20 / 255.0)
_EMBOSS = ((-2.0, -1.0, 0.0), (-1.0, 1.0, 1.0), (0.0, 1.0, 2.0))


def _edges(level: Tensor) -> Tensor:
    """Canny edges (thresholds 50/150, 3x3 Sobel, L1 magnitude) of uint8-valued `[..., H, W]`.

    Non-maximum suppression as cv2 does it; hysteresis is reduced to "above the low threshold
    and next to a strong pixel", enough for the hard-edged drop masks this is used on.
    """
    h, w = level.shape[-2:]
    p = pad2d(level, 1, "replicate")
    rows = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]
    cols = p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]
    gx = rows[..., 2:] - rows[..., :-2]
    gy = cols[..., 2:, :] - cols[..., :-2, :]
    ax, ay = gx.abs(), gy.abs()
    mag = ax + ay
    mp = F.pad(mag, (1, 1, 1, 1))

    def at(dy: int, dx: int) -> Tensor:
        return mp[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    tan22, tan67 = math.tan(math.pi / 8), math.tan(3 * math.pi / 8)
    horizontal = ay < ax * tan22
    vertical = ay > ax * tan67
    same_sign = (gx * gy) > 0
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep_d1 = (mag > at(-1, -1)) & (mag > at(1, 1))  # gradient along the main diagonal
    keep_d2 = (mag > at(-1, 1)) & (mag > at(1, -1))
    keep = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, torch.where(same_sign, keep_d1, keep_d2)))
    candidate = keep & (mag > 50)
    return candidate & _dilate(candidate & (mag > 150), square=True)


def _dilate(mask: Tensor, square: bool) -> Tensor:
    """Binary dilation of a bool `[..., H, W]` by a 3x3 square or a 3x3 cross (zero borders)."""
    across = mask.clone()
    across[..., 1:] |= mask[..., :-1]
    across[..., :-1] |= mask[..., 1:]
    src = across if square else mask
    out = across if square else across | mask
    out = out.clone()
    out[..., 1:, :] |= src[..., :-1, :]
    out[..., :-1, :] |= src[..., 1:, :]
    return out


def _distance_to(edges: Tensor, limit: int) -> Tensor:
    """Distance (pixels, capped at `limit`) from every pixel to the nearest edge pixel.

    Deviation: an octagonal distance (alternating 3x3 square and cross dilations) instead of
    cv2.distanceTransform's 5x5 chamfer, which is sequential; they differ by under 8%, and the
    reference histogram-equalises the result right after, which keeps mostly the ordering.
    """
    reached = edges
    dist = torch.zeros(edges.shape, dtype=torch.uint8, device=edges.device)
    for k in range(limit):
        dist += ~reached
        reached = _dilate(reached, square=k % 2 == 0)
    return dist.float()


def _equalize(levels: Tensor) -> Tensor:
    """cv2.equalizeHist per image of integer-valued `[N, 1, H, W]` in [0, 255]."""
    n = levels.shape[0]
    flat = levels.reshape(n, -1).long()
    hist = torch.zeros(n, 256, device=levels.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    cdf = hist.cumsum(dim=1)
    total = cdf[:, -1:]
    first = flat.amin(dim=1, keepdim=True)
    base = cdf.gather(1, first)
    lut = torch.round((cdf - base) * 255.0 / (total - base).clamp_min(1.0)).clamp(0, 255)
    constant = (total - base) <= 0
    out = lut.gather(1, flat)
    out = torch.where(constant, flat.float(), out)
    return out.reshape(levels.shape)


def _water(liquid: Tensor, intensity: float) -> Tensor:
    """The reference's water-drop brightness map `m` `[B, 1, H, W]` from the thresholded liquid layer."""
    level = torch.floor(liquid * 255.0).clamp(0, 255)
    dist = _distance_to(_edges(level), 20)
    dist = _equalize(torch.floor(box3(dist)))
    dist = box3(torch.round(correlate3x3(dist, _EMBOSS, "reflect")).clamp(0, 255))
    m = level * dist
    peak = m.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 0, m / peak.clamp_min(1e-12), torch.zeros_like(m)) * intensity


@photometric(family="weather", severities=SPATTER, sample=sample_key,
             fields=[Field("mean", 0, 1), Field("std", 0, 1), Field("sigma", 0.1, 10), Field("threshold", 0, 2),
                     Field("intensity", 0, 10), Field("mode", 0, 1, integer=True)],
             version=2,  # 2: a normal draw from a uniform of 1.0 is finite (1: inf, or NaN on CPU)
             description="ImageNet-C spatter: pale water drops (severities 1-3) or brown mud blobs (4-5) on the lens.")
def spatter(images: Tensor, params: Params, level: tuple) -> Tensor:
    """Liquid layer = thresholded, Gaussian-smoothed normal noise, as in the reference.

    Water: drop brightness from the distance to the drops' edges, equalised and embossed, as the
    reference does with cv2 (Canny, distanceTransform, equalizeHist, filter2D); we run the same chain
    batched in torch, with the deviations noted in `_edges` and `_distance_to`. Mud: blobs softened
    and cut at 0.8, painted brown; identical to the reference.
    """
    mean, std, sigma, threshold, intensity, mode = level
    h, w = images.shape[-2:]
    keys = params["key"]
    liquid = normal_field(keys, (1, h, w), counter=1) * std + mean
    liquid = gaussian_blur(liquid, sigma)
    if mode == 0:
        liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
        m = _water(liquid, intensity)
        colour = torch.tensor(_WATER, device=images.device).view(1, 3, 1, 1)
        return images + m * colour
    blobs = (liquid > threshold).float()
    m = gaussian_blur(blobs, intensity)
    m = torch.where(m < 0.8, torch.zeros_like(m), m)
    colour = torch.tensor(_MUD, device=images.device).view(1, 3, 1, 1)
    return images * (1 - m) + colour * m


# ---------------------------------------------------------------------------------------------
# snow

SNOW = (
    (0.1, 0.3, 3.0, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2.0, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4.0, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
"""ImageNet-C snow: (flake noise mean, noise std, zoom factor = flake size, threshold = sparsity,
motion-blur radius, motion-blur sigma, weight kept of the original image; the rest goes to a
whitened, brightened copy)."""


def _sample_snow(rng: SampleRNG, level, batch) -> Params:
    return {"key": rng.key(), "angle": rng.uniform(-135.0, -45.0)}


@photometric(family="weather", severities=SNOW, sample=_sample_snow,
             fields=[Field("mean", 0, 1), Field("std", 0, 1), Field("zoom", 1, 10), Field("threshold", 0, 1),
                     Field("blur_radius", 0, 50, integer=True), Field("blur_sigma", 0.1, 50), Field("keep", 0, 1)],
             version=2,  # 2: a normal draw from a uniform of 1.0 is finite (1: inf, or NaN on CPU)
             description="ImageNet-C snow: falling flakes streaked along a per-sample direction over a whitened scene.")
def snow(images: Tensor, params: Params, level: tuple) -> Tensor:
    """The reference's algorithm, batched.

    The centre crop of the flake noise that the reference zooms is drawn directly at the crop's size
    (same distribution); zoom is scipy's order-1 zoom (bilinear, corners aligned); the motion blur is
    the reference's, per-sample angle, evaluated on the zoomed layer before cropping as it does.
    """
    mean, std, zoom, threshold, radius, sigma, keep = level
    b, _, h, w = images.shape
    keys = params["key"]
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    layer = normal_field(keys, (1, ch, cw), counter=1) * std + mean
    out_size = (max(h, round(ch * zoom)), max(w, round(cw * zoom)))
    layer = F.interpolate(layer, size=out_size, mode="bilinear", align_corners=True)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0.0, 1.0)
    layer = motion_blur(layer, radius, sigma, params["angle"])
    layer = torch.round(layer * 255.0) / 255.0
    layer = layer[:, :, :h, :w]
    grey = (images * torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    base = keep * images + (1 - keep) * torch.maximum(images, grey * 1.5 + 0.5)
    return base + layer + layer.flip(dims=(2, 3))


# ---------------------------------------------------------------------------------------------
# frost

FROST = ((1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))
"""ImageNet-C frost: (weight of the image, weight of the frost texture) in `a * x + b * frost`."""

_FROST_TINT = (0.90, 0.97, 1.04)  # the reference photos are bluish (mean RGB ~ 140, 150, 160)
_FROST_MEAN = 0.62  # grey mean of the three reference photos the fidelity test draws, ~158 / 255
_FROST_STD = 0.085  # grey contrast, tuned so mean SSIM matches the reference's at all severities (its photos: ~30 / 255)
_FROST_SCALE_PX = 315  # short side of the smallest reference photo: the texture's scale is fixed below it


def frost_texture(keys: Tensor, size: tuple[int, int]) -> Tensor:
    """Procedural frost `[B, 3, H, W]` in [0, 1]: a network of bright ice streaks over mottled ice.

    Ridged multi-octave noise (bright where a smooth random field crosses zero, i.e. thin branching
    lines), plus soft cloudy variation, normalised to the grey mean of the reference's photos and a
    contrast tuned to match its SSIM impact, and tinted blue. Features have fixed pixel sizes up to images of ~315 px and grow with
    larger images, as the reference's photos are only upscaled when the image is bigger than them.
    """
    h, w = size
    b = keys.shape[0]
    scale = max(1.0, min(h, w) / _FROST_SCALE_PX)
    total = torch.zeros(b, 1, h, w, device=keys.device)
    for octave, (cell, weight) in enumerate(((16.0, 0.5), (8.0, 0.8), (4.0, 1.0), (2.0, 0.8))):
        cell = cell * scale
        gh, gw = math.ceil(h / cell) + 3, math.ceil(w / cell) + 3
        coarse = normal_field(keys, (1, gh, gw), counter=10 + octave)
        field = F.interpolate(coarse, scale_factor=cell, mode="bilinear", align_corners=False)
        field = field[:, :, :h, :w]
        ridge = (1.0 - field.abs() / 0.35).clamp(min=0.0) ** 2
        total = total + weight * ridge
    clouds = normal_field(keys, (1, math.ceil(h / (48 * scale)) + 3, math.ceil(w / (48 * scale)) + 3), counter=20)
    clouds = F.interpolate(clouds, scale_factor=48 * scale, mode="bilinear", align_corners=False)[:, :, :h, :w]
    total = total + 0.3 * clouds
    centred = total - total.mean(dim=(2, 3), keepdim=True)
    spread = centred.square().mean(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-6)
    grey = _FROST_MEAN + _FROST_STD * centred / spread
    tint = torch.tensor(_FROST_TINT, device=keys.device).view(1, 3, 1, 1)
    return (grey * tint).clamp(0.0, 1.0)


@photometric(family="weather", severities=FROST, sample=sample_key,
             fields=[Field("image", 0, 1.5), Field("frost", 0, 1.5)],
             version=2,  # 2: a normal draw from a uniform of 1.0 is finite (1: inf, or NaN on CPU)
             description="ImageNet-C frost: the image seen through a frosted pane (procedural ice texture blended in).")
def frost(images: Tensor, params: Params, level: tuple[float, float]) -> Tensor:
    """`a * x + b * frost`, the reference's blend and table.

    Deviation: the reference blends a random crop of one of six bundled frost photographs; we ship no
    third-party images, so the texture is synthesised per sample (`frost_texture`), with the photos'
    mean, contrast and tint, tuned so that the SSIM impact matches the reference's.
    """
    a, b = level
    texture = frost_texture(params["key"], tuple(images.shape[-2:]))
    return a * images + b * texture


# ---------------------------------------------------------------------------------------------
# rain (albumentations)

RAIN = (("drizzle", 0.9), ("default", 0.8), ("heavy", 0.75), ("heavy", 0.65), ("torrential", 0.55))
"""(albumentations RandomRain rain type, brightness kept): more streaks and a darker sky with severity.
Drop length and count scale with the image height."""


def _register_rain() -> None:
    A = optional_albumentations()
    if A is None:
        return
    albumentations_perturbation(
        "rain", "weather",
        [A.RandomRain(rain_type=rain_type, brightness_coefficient=dim, slant_range=(-10, 10), drop_width=1,
                      blur_value=3, p=1.0) for rain_type, dim in RAIN],
        "Rain streaks over a dimmed scene (albumentations RandomRain), per-sample slant and drops.",
    )


_register_rain()
