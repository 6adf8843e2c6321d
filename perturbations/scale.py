"""Scale: the object closer, further away, or seen through too few pixels.

zoom_in and zoom_out are geometric (boxes and masks scale with the image) and record their factor
as params["scale"] `[B]`: the forward scale about the image centre, so a case replays exactly as
`torchvision.transforms.v2.functional.affine(img, angle=0, translate=[0, 0], scale=s, shear=[0, 0])`
(zoom_out additionally low-passes the image first, see its docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from visionstress.rng import SampleRNG

from ._warp import Warp, centred, warp_from_matrix
from .levels import Field
from .registry import geometric, photometric

Params = dict[str, Tensor]


def _sample_scale(rng: SampleRNG, level: tuple[float, float], batch) -> Params:
    low, high = level
    return {"scale": rng.uniform(low, high)}


def _scale_warp(params: Params, size: tuple[int, int], device: torch.device,
                prefilter_sigma: float | None = None) -> Warp:
    s = params["scale"]
    matrix = torch.zeros(s.shape[0], 3, 3, device=device)
    matrix[:, 0, 0], matrix[:, 1, 1], matrix[:, 2, 2] = s, s, 1.0
    return warp_from_matrix(centred(matrix, size), size, prefilter_sigma=prefilter_sigma)


ZOOM_IN = ((1.10, 1.20), (1.25, 1.35), (1.40, 1.60), (1.65, 1.85), (1.90, 2.10))
"""Magnification about the centre, drawn per sample uniformly in the band (low, high); the bands
do not overlap, so distortion grows with severity. 2x keeps the central quarter of the area: an
object framed much tighter than in training. Own calibration."""


@geometric(family="scale", severities=ZOOM_IN, sample=_sample_scale,
           fields=[Field("min_scale", 1, 8), Field("max_scale", 1, 8)],
           version=2,  # 2: boxes from moved masks or inscribed ellipses (1: box_method="enclosing")
           description="Zoom in: a centred crop magnified back to full size, objects larger and cut off at the borders.")
def zoom_in(params: Params, level: tuple[float, float], size: tuple[int, int], device: torch.device) -> Warp:
    return _scale_warp(params, size, device)


ZOOM_OUT = ((0.80, 0.90), (0.68, 0.76), (0.57, 0.64), (0.47, 0.53), (0.37, 0.43))
"""Shrink factor about the centre, drawn per sample uniformly in the band (low, high); the border
left uncovered is black. 0.4 makes an object 6x smaller in area. Own calibration."""


def _antialias_sigma(band: tuple[float, float]) -> float:
    """Gaussian low-pass (input pixels) before shrinking by the band's mean factor s: (1/s - 1) / 2,
    scikit-image's `rescale(anti_aliasing=True)` rule. One value per severity (not per sample) so a
    sample's blur does not depend on the rest of its batch."""
    s = 0.5 * (band[0] + band[1])
    return max(0.0, (1.0 / s - 1.0) / 2.0)


@geometric(family="scale", severities=ZOOM_OUT, sample=_sample_scale,
           fields=[Field("min_scale", 0.05, 1), Field("max_scale", 0.05, 1)],
           version=2,  # 2: boxes from moved masks or inscribed ellipses (1: box_method="enclosing")
           description="Zoom out: the image shrunk about the centre with anti-aliasing and padded black, objects smaller.")
def zoom_out(params: Params, level: tuple[float, float], size: tuple[int, int], device: torch.device) -> Warp:
    """Replay: Gaussian blur with sigma `_antialias_sigma(level)` (reflect padding, kernel radius
    ceil(3 sigma)), then torchvision affine with scale=params["scale"]."""
    return _scale_warp(params, size, device, prefilter_sigma=_antialias_sigma(level))


LOW_RESOLUTION = (1.5, 2.0, 3.0, 4.0, 6.0)
"""Downscale divisor: the image is reduced to 1/d of its side with antialiasing, then enlarged back
bilinearly (a cheap sensor, or a serving pipeline that resizes twice). 6 turns 224 px into 37 px.
Own calibration."""


@photometric(family="scale", severities=LOW_RESOLUTION,
             fields=[Field("factor", 1, 64)],
             description="Low resolution: downsampled with antialiasing by a factor, then upsampled back bilinearly.")
def low_resolution(images: Tensor, params: Params, level: float) -> Tensor:
    _, _, h, w = images.shape
    small = (max(1, round(h / level)), max(1, round(w / level)))
    reduced = F.interpolate(images, size=small, mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(reduced, size=(h, w), mode="bilinear", align_corners=False)
