"""Rotation and pose: the camera or the object turned, or seen from an angle."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from visionstress.rng import SampleRNG

from ._warp import Warp, centred, warp_from_matrix
from .levels import Field
from .registry import geometric

ROTATION_DEGREES = (5.0, 10.0, 20.0, 30.0, 45.0)
"""Rotation magnitude per severity; the direction is drawn per sample."""


def _sample_rotation(rng: SampleRNG, level: float, batch) -> dict[str, Tensor]:
    return {"angle": rng.sign() * level}


@geometric(family="rotation", severities=ROTATION_DEGREES, sample=_sample_rotation,
           fields=[Field("degrees", 0, 180)],
           version=2,  # 2: boxes from moved masks or inscribed ellipses (1: box_method="enclosing")
           description="In-plane rotation about the image centre by a fixed angle, direction per sample; corners filled black.")
def rotation(params: dict[str, Tensor], level: float, size: tuple[int, int], device: torch.device) -> Warp:
    theta = params["angle"] * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    # Positive angles turn the picture counter-clockwise as displayed (y points down), as torchvision does.
    matrix = torch.stack([torch.stack([cos, sin, zero], -1), torch.stack([-sin, cos, zero], -1),
                          torch.stack([zero, zero, one], -1)], dim=1)
    return warp_from_matrix(centred(matrix, size), size)


PERSPECTIVE_DISTORTION = (0.1, 0.2, 0.3, 0.4, 0.5)
"""How far each image corner moves inwards, as a fraction of half the image side (torchvision's
RandomPerspective `distortion_scale` convention)."""


def _sample_perspective(rng: SampleRNG, level: float, batch) -> dict[str, Tensor]:
    # Each corner moves inwards by between half and all of the severity's distortion, so the
    # amount of distortion grows strictly with severity while its shape varies per sample.
    return {"corner_shift": rng.uniform(0.5 * level, level, shape=(4, 2))}


def _homography(src: Tensor, dst: Tensor) -> Tensor:
    """`[B, 3, 3]` homographies mapping four points `src` `[B, 4, 2]` onto `dst`."""
    b = src.shape[0]
    rows = []
    for k in range(4):
        x, y = src[:, k, 0], src[:, k, 1]
        u, v = dst[:, k, 0], dst[:, k, 1]
        zero, one = torch.zeros_like(x), torch.ones_like(x)
        rows.append(torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1))
        rows.append(torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1))
    a = torch.stack(rows, dim=1).double()
    rhs = dst.reshape(b, 8, 1).double()
    h = torch.linalg.solve(a, rhs).reshape(b, 8)
    return torch.cat([h, torch.ones(b, 1, dtype=h.dtype, device=h.device)], dim=1).reshape(b, 3, 3).float()


@geometric(family="rotation", severities=PERSPECTIVE_DISTORTION, sample=_sample_perspective,
           fields=[Field("distortion", 0, 0.9)],
           version=2,  # 2: boxes from moved masks or inscribed ellipses (1: box_method="enclosing")
           description="Viewpoint change: the image plane tilted, each corner pulled inwards by a per-sample amount.")
def perspective(params: dict[str, Tensor], level: float, size: tuple[int, int], device: torch.device) -> Warp:
    h, w = size
    shift = params["corner_shift"]  # [B, 4, 2] in (0, 1]
    corners = torch.tensor([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]], device=device)
    inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], device=device)
    half = torch.tensor([w / 2.0, h / 2.0], device=device)
    dst = corners + inward * shift * half
    src = corners.expand_as(dst)
    return warp_from_matrix(_homography(src, dst), size)
