"""Lighting: brighter, darker, flatter or differently coloured scenes."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from visionstress.rng import SampleRNG, normal_field

from .levels import Field
from .registry import photometric, sample_key

BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
"""ImageNet-C: added to HSV value."""


@photometric(family="lighting", severities=BRIGHTNESS,
             fields=[Field("delta", 0, 1)],
             description="ImageNet-C brightness: the HSV value channel raised, hue and saturation kept.")
def brightness(images: Tensor, params: dict[str, Tensor], level: float) -> Tensor:
    # Raising V with H and S fixed scales all three channels by V'/V; black becomes grey V'.
    value = images.amax(dim=1, keepdim=True)
    raised = (value + level).clamp(max=1.0)
    scaled = images * (raised / value.clamp_min(1e-12))
    return scaled.where(value > 0, raised.expand_as(images))


CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
"""ImageNet-C: each channel's deviation from its image mean is scaled by this factor."""


@photometric(family="lighting", severities=CONTRAST,
             fields=[Field("factor", 0, 2)],
             description="ImageNet-C contrast: every channel pulled towards its image mean.")
def contrast(images: Tensor, params: dict[str, Tensor], level: float) -> Tensor:
    means = images.mean(dim=(2, 3), keepdim=True)
    return (images * level).add_(means * (1.0 - level))  # (x - mean) * c + mean, in two passes


def _to_linear(x: Tensor) -> Tensor:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1). Returns a new tensor."""
    x = x.clamp(0.0, 1.0)
    curve = (x + 0.055).mul_(1.0 / 1.055).pow_(2.4)
    return _pick(x, 0.04045, x * (1.0 / 12.92), curve)


def _to_srgb(x: Tensor) -> Tensor:
    """Linear light -> sRGB-encoded values, clamped to [0, 1]. Returns a new tensor."""
    x = x.clamp(0.0, 1.0)
    curve = x.clamp_min(0.0031308).pow_(1.0 / 2.4).mul_(1.055).sub_(0.055)
    return _pick(x, 0.0031308, x * 12.92, curve)


def _pick(x: Tensor, threshold: float, at_or_below: Tensor, above: Tensor) -> Tensor:
    """`torch.where(x <= threshold, at_or_below, above)` for finite values: `lerp` with a weight of exactly
    0 or 1 returns one side bit for bit, and is vectorised on the CPU, where `where` is not (1.9 -> 0.35 ms
    for a 64-image batch of 64 x 64, mask included)."""
    return torch.lerp(above, at_or_below, torch.le(x, threshold, out=torch.empty_like(x)))


GAMMA = (1.4, 1.8, 2.4, 3.2, 4.5)
"""Exponent g of the exposure curve out = in ** g (darker) or in ** (1/g) (brighter); direction per
sample. Own calibration: on a uniform histogram both directions change pixels by the same mean
amount, (g - 1) / (2 (g + 1)) = 0.08, 0.14, 0.21, 0.26, 0.32 of the range, growing evenly."""


def _sample_gamma(rng: SampleRNG, level: float, batch) -> dict[str, Tensor]:
    return {"gamma": torch.where(rng.sign() > 0, level, 1.0 / level)}


@photometric(family="lighting", severities=GAMMA, sample=_sample_gamma,
             fields=[Field("gamma", 1, 10)],
             description="Wrong exposure curve: encoded values raised to a power, darker or brighter per sample.")
def gamma(images: Tensor, params: dict[str, Tensor], level: float) -> Tensor:
    g = params["gamma"].reshape(-1, 1, 1, 1)
    return images.clamp_min(0.0) ** g


WHITE_BALANCE_MIRED = (15.0, 30.0, 50.0, 75.0, 105.0)
"""Colour-temperature error of the white balance, in mired (1e6 / kelvin, the scale colour-correction
gels are rated in, roughly perceptually uniform). The camera is balanced for D65 (6500 K, 153.8 mired)
but the light is warmer (+) or cooler (-) by this much; direction per sample. +105 mired is 3860 K
(tungsten-ish halogen under daylight balance), -105 mired is 20000 K (blue shade). Own calibration."""

_D65_MIRED = 1e6 / 6500.0


def _sample_white_balance(rng: SampleRNG, level: float, batch) -> dict[str, Tensor]:
    return {"mired_shift": rng.sign() * level}


def _blackbody_rgb(kelvin: Tensor) -> Tensor:
    """Linear-light RGB `[B, 3]` of a blackbody at `kelvin`, via Tanner Helland's fit of the
    CIE 1964 blackbody locus (sRGB-encoded, 1000-40000 K), then linearised."""
    t = kelvin.clamp(1000.0, 40000.0) / 100.0
    warm = t <= 66.0
    red = torch.where(warm, torch.full_like(t, 255.0), 329.698727446 * (t - 60.0).clamp_min(1e-3) ** -0.1332047592)
    green = torch.where(warm, 99.4708025861 * torch.log(t) - 161.1195681661,
                        288.1221695283 * (t - 60.0).clamp_min(1e-3) ** -0.0755148492)
    blue = torch.where(t >= 66.0, torch.full_like(t, 255.0),
                       torch.where(t <= 19.0, torch.zeros_like(t),
                                   138.5177312231 * torch.log((t - 10.0).clamp_min(1e-3)) - 305.0447927307))
    rgb = torch.stack([red, green, blue], dim=-1).clamp(0.0, 255.0) / 255.0
    return _to_linear(rgb)


@photometric(family="lighting", severities=WHITE_BALANCE_MIRED, sample=_sample_white_balance,
             fields=[Field("mired", 0, 500)],
             description="Colour cast of a wrong white balance: per-channel gains of a warmer or cooler light, per sample.")
def white_balance(images: Tensor, params: dict[str, Tensor], level: float) -> Tensor:
    shift = params["mired_shift"].reshape(-1)
    kelvin = 1e6 / (_D65_MIRED + shift).clamp_min(25.0)
    light = _blackbody_rgb(kelvin)
    white = _blackbody_rgb(torch.full_like(kelvin, 6500.0))
    gains = light / white
    # Keep the luminance of a grey unchanged: a cast, not an exposure change.
    luminance = gains @ torch.tensor([0.2126, 0.7152, 0.0722], device=images.device)
    gains = gains / luminance[:, None]
    # The gains act on linear light. Treating the sRGB encoding as the 2.2 power law it approximates,
    # that is one multiplication of the encoded values by gain ** (1 / 2.2): one pass instead of two
    # transfer-function round trips; it differs from the exact sRGB round trip by at most 0.015
    # (about 4/255, at the strongest casts), far less than the cast itself.
    return images * (gains ** (1.0 / 2.2))[:, :, None, None]


SHADOW = ((0.3, 0.35), (0.35, 0.45), (0.4, 0.55), (0.45, 0.65), (0.5, 0.75))
"""(fraction of the image in shadow, fraction of the light the shadow removes). Own calibration:
the shadow's area and depth both grow, so the mean change grows with severity whatever the angle.
The attenuation applies to encoded values (for a pure power-law encoding, a linear-light attenuation
is the same multiplication with a different constant)."""

_SHADOW_SOFTNESS = 0.04  # width of the penumbra, as a fraction of the image diagonal


def _sample_shadow(rng: SampleRNG, level: tuple[float, float], batch) -> dict[str, Tensor]:
    return {"angle": rng.uniform(0.0, 2.0 * math.pi)}


def _soft_threshold(distance: Tensor, fraction: float, width: Tensor) -> Tensor:
    """Mask `[B, N]`, ~1 on the `fraction` of positions with smallest `distance`, with a linear ramp
    of `width` centred on the threshold (so the mask's mean is `fraction` up to the ramp's asymmetry)."""
    n = distance.shape[1]
    k = min(n, max(1, int(round(fraction * n))))
    threshold = distance.kthvalue(k, dim=1, keepdim=True).values
    return ((threshold - distance) / width + 0.5).clamp(0.0, 1.0)


@photometric(family="lighting", severities=SHADOW, sample=_sample_shadow,
             fields=[Field("area", 0, 1), Field("depth", 0, 1)],
             description="A cast shadow: a half-plane at a per-sample angle darkened, with a soft penumbra.")
def shadow(images: Tensor, params: dict[str, Tensor], level: tuple[float, float]) -> Tensor:
    fraction, depth = level
    b, _, h, w = images.shape
    angle = params["angle"].reshape(-1, 1)
    ys = (torch.arange(h, device=images.device, dtype=torch.float32) + 0.5).repeat_interleave(w)
    xs = (torch.arange(w, device=images.device, dtype=torch.float32) + 0.5).repeat(h)
    # Signed distance along the shadow edge's normal; the shadow is the side with small distance,
    # its edge placed so that exactly `fraction` of the pixels lie in it.
    distance = torch.cos(angle) * xs[None] + torch.sin(angle) * ys[None]
    width = torch.full((b, 1), _SHADOW_SOFTNESS * math.hypot(h, w), device=images.device)
    mask = _soft_threshold(distance, fraction, width).reshape(b, 1, h, w)
    return images * (1.0 - depth * mask)


GLARE = ((0.05, 0.45, 0.15), (0.10, 0.6, 0.2), (0.15, 0.75, 0.25), (0.22, 0.9, 0.3), (0.30, 1.0, 0.35))
"""(veiling haze, peak of the bright blob, blob radius as a fraction of the image diagonal). Light is
added by screen blending, out = 1 - (1 - in)(1 - light), so it saturates instead of clipping hard.
Own calibration: haze, peak and size all grow with severity."""


def _sample_glare(rng: SampleRNG, level: tuple[float, float, float], batch) -> dict[str, Tensor]:
    return {"centre": rng.uniform(0.15, 0.85, shape=(2,))}


@photometric(family="lighting", severities=GLARE, sample=_sample_glare,
             fields=[Field("haze", 0, 1), Field("peak", 0, 1), Field("radius", 0.01, 2)],
             description="Lens glare: a bright soft blob at a per-sample position plus a veiling haze over the image.")
def glare(images: Tensor, params: dict[str, Tensor], level: tuple[float, float, float]) -> Tensor:
    haze, peak, radius = level
    b, _, h, w = images.shape
    centre = params["centre"]  # [B, 2] (x, y) in image fractions
    diagonal = math.hypot(h, w)
    xs = (torch.arange(w, device=images.device, dtype=torch.float32) + 0.5) / diagonal
    ys = (torch.arange(h, device=images.device, dtype=torch.float32) + 0.5) / diagonal
    cx = centre[:, 0:1] * (w / diagonal)
    cy = centre[:, 1:2] * (h / diagonal)
    gx = torch.exp(-0.5 * ((xs[None] - cx) / radius) ** 2)  # [B, W]
    gy = torch.exp(-0.5 * ((ys[None] - cy) / radius) ** 2)  # [B, H]
    blob = peak * gy[:, :, None] * gx[:, None, :]
    light = 1.0 - (1.0 - haze) * (1.0 - blob)
    return 1.0 - (1.0 - images) * (1.0 - light[:, None])


LOW_LIGHT = ((0.5, 600.0, 2.0), (0.3, 400.0, 3.0), (0.18, 300.0, 3.0), (0.1, 200.0, 4.0), (0.05, 150.0, 4.0))
"""(exposure: fraction of the usual light reaching the sensor, photo-electrons a white pixel collects
at full exposure, read noise in electrons). Own calibration after small-pixel phone sensors (full well
of a few thousand e-, of which a JPEG white uses a few hundred; read noise 2-4 e-). No gain: the
image stays dark, as an under-exposed frame."""


@photometric(family="lighting", severities=LOW_LIGHT, sample=sample_key,
             fields=[Field("exposure", 0.001, 1), Field("white_electrons", 1, 1e6), Field("read_noise", 0, 100)],
             version=2,  # 2: a normal draw from a uniform of 1.0 is finite (1: inf, or NaN on CPU)
             description="Dark scene: exposure cut, then photon shot noise and sensor read noise in linear light.")
def low_light(images: Tensor, params: dict[str, Tensor], level: tuple[float, float, float]) -> Tensor:
    exposure, white_electrons, read_noise = level
    electrons = _to_linear(images).mul_(exposure * white_electrons)
    # Shot noise is Poisson(electrons); with read noise it is close to Gaussian with variance
    # electrons + read_noise**2 at these counts (the normal approximation, per channel).
    z = normal_field(params["key"], tuple(images.shape[1:]), counter=0)
    noisy = (electrons + read_noise**2).sqrt_().mul_(z).add_(electrons)
    return _to_srgb(noisy.mul_(1.0 / white_electrons))
