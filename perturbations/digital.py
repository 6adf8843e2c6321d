"""Digital corruptions of ImageNet-C not covered by other families: saturate and elastic_transform.

(ImageNet-C's other digital corruptions live where a user looks for them: contrast under lighting,
pixelate and jpeg_compression under camera.) Algorithms and severity tables follow Hendrycks &
Dietterich (2019) as implemented in the `imagecorruptions` package, rewritten as batched torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from visionstress.rng import uniform_field

from ._filters import gaussian_kernel1d, separable_filter
from ._warp import Warp, pixel_centres
from .levels import Field
from .registry import geometric, photometric, sample_key

Params = dict[str, Tensor]


# ---------------------------------------------------------------------------------------------
# saturate

SATURATE = ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2))
"""ImageNet-C saturate: (scale, shift) of the HSV saturation, S' = clip(S * scale + shift, 0, 1).
Severities 1-2 desaturate, 3-5 oversaturate (so distortion is not monotone in severity)."""


@photometric(family="digital", severities=SATURATE,
             fields=[Field("scale", 0, 100), Field("shift", -1, 1)],
             description="ImageNet-C saturate: HSV saturation scaled and shifted, hue and value kept.")
def saturate(images: Tensor, params: Params, level: tuple[float, float]) -> Tensor:
    """RGB -> HSV -> RGB with S replaced, done in closed form.

    With hue and value fixed, each channel is `V - V * S * k_c` where `k_c` depends on hue only, so
    the new channel is `V - (V - x) / (V - min) * V * S'`: one fused multiply-add per pixel instead
    of a full HSV round trip. Grey pixels have hue 0 (red) in skimage's convention, so a positive
    shift tints them red exactly as the reference does.
    """
    scale, shift = level
    value = images.amax(dim=1, keepdim=True)
    delta = value - images.amin(dim=1, keepdim=True)
    grey = delta <= 0
    sat = delta / value.clamp_min(1e-12)  # 0 where value == 0, as skimage has it
    chroma = value * (sat * scale + shift).clamp_(0.0, 1.0)
    factor = torch.where(grey, torch.zeros_like(chroma), chroma / delta.clamp_min(1e-12))
    out = torch.addcmul(value - value * factor, images, factor)
    # Grey (delta == 0): hue 0 -> R = V, G = B = V (1 - S').
    out[:, 1:] -= torch.where(grey, chroma, torch.zeros_like(chroma))
    return out


# ---------------------------------------------------------------------------------------------
# elastic_transform

ELASTIC_ALPHA = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)
"""ImageNet-C elastic_transform (imagecorruptions' version): gain `alpha` of the smoothed random
displacement field. The field is U(-0.005 H, 0.005 H) per pixel smoothed by a Gaussian of sigma
0.01 x (H, W), so displacements scale with the image size."""


@geometric(family="digital", severities=ELASTIC_ALPHA, sample=sample_key,
           fields=[Field("alpha", 0, 100)],
           padding="reflection",
           version=2,  # 2: boxes from moved masks or inscribed ellipses (1: box_method="enclosing")
           description="ImageNet-C elastic transform: a smooth random displacement field; targets move with it.")
def elastic_transform(params: Params, level: float, size: tuple[int, int], device: torch.device) -> Warp:
    """One dense backward map: output pixel p samples the input at p + alpha * G_sigma * U.

    The installed reference (imagecorruptions 1.1.x) applies only the smoothed displacement field
    (no affine pre-warp, unlike the original ImageNet-C script), with reflect borders; we do the same
    so the SSIM fidelity test compares like with like. Bilinear sampling with reflection padding is
    map_coordinates(order=1, mode='reflect').
    """
    h, w = size
    keys = params["key"]
    b = keys.shape[0]
    max_d = h * 0.005
    noise = (uniform_field(keys, (2, h, w), counter=1) * 2 - 1) * max_d  # (dx, dy)
    ky = gaussian_kernel1d(0.01 * h, truncate=3.0)
    kx = gaussian_kernel1d(0.01 * w, truncate=3.0)
    field = separable_filter(noise.reshape(b * 2, 1, h, w), ky, kx, "symmetric").reshape(b, 2, h, w) * level
    grid = pixel_centres(size, device).unsqueeze(0) + field.permute(0, 2, 3, 1)
    return Warp(grid=grid)
