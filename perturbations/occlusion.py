"""Occlusion: part of the scene hidden behind something else.

Rectangles are drawn anti-aliased: a pixel is blended with the fill by the exact fraction of its area
the rectangle covers, so covered areas are continuous in the rectangle coordinates and match their
tables to well under a pixel even on 16x16 images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from visionstress.batch import Batch, ObjectTargets
from visionstress.rng import SampleRNG, uniform_field

from .levels import Field
from .registry import data_aware

_FILL_BLOCKS = 56  # the noise has about this many blocks along the shorter side (1-pixel blocks below)


def _fill(params: dict[str, Tensor], shape: tuple[int, ...]) -> Tensor:
    """`[B, 3, H, W]` occluder texture: uniform colour noise in square blocks, from the sample's key.

    Noise rather than black or a flat grey: it carries no colour a model could learn to read as
    'missing', and its mean difference from any image lies in [1/4, 1/2] of the range, so the
    distortion tracks the covered area instead of the luck of a fill colour against the image.
    Blocks (4 px at 224 px) keep the texture's scale relative to the image and the hash cheap.
    """
    _, c, h, w = shape
    block = max(1, round(min(h, w) / _FILL_BLOCKS))
    coarse = uniform_field(params["key"], (c, -(-h // block), -(-w // block)), counter=0)
    if block > 1:
        coarse = coarse.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)
    return coarse[:, :, :h, :w]


def _axis_coverage(lo: Tensor, hi: Tensor, n: int) -> Tensor:
    """Fraction of each pixel [i, i+1) covered by the interval [lo, hi): `[..., n]` for lo/hi `[...]`."""
    edges = torch.arange(n, device=lo.device, dtype=torch.float32)
    return (torch.minimum(hi[..., None], edges + 1.0) - torch.maximum(lo[..., None], edges)).clamp(0.0, 1.0)


def _rect_masks(rects: Tensor, size: tuple[int, int]) -> Tensor:
    """Anti-aliased union `[B, H, W]` of rectangles `rects` `[B, N, 4]` (x0, y0, x1, y1 in pixels).

    Within a pixel the union is taken as the largest single coverage, exact everywhere except on
    pixels crossed by the edges of two rectangles at once.
    """
    h, w = size
    b = rects.shape[0]
    if rects.shape[1] == 0:
        return torch.zeros(b, h, w, device=rects.device)
    cx = _axis_coverage(rects[..., 0], rects[..., 2], w)  # [B, N, W]
    cy = _axis_coverage(rects[..., 1], rects[..., 3], h)  # [B, N, H]
    mask = cy[:, 0, :, None] * cx[:, 0, None, :]
    for k in range(1, rects.shape[1]):
        mask = torch.maximum(mask, cy[:, k, :, None] * cx[:, k, None, :])
    return mask


def _subsets(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Membership `[S, n]` of every non-empty subset of n items, and its inclusion-exclusion sign `[S]`."""
    members = torch.tensor([[(m >> k) & 1 for k in range(n)] for m in range(1, 1 << n)], dtype=torch.bool,
                           device=device)
    sign = torch.where(members.sum(1) % 2 == 1, 1.0, -1.0).to(device)
    return members, sign


def _union_area(rects: Tensor, subsets: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Exact area `[B]` of the union of rectangles `[B, N, 4]`, by inclusion-exclusion (small N)."""
    members, sign = subsets if subsets is not None else _subsets(rects.shape[-2], rects.device)
    inf = torch.tensor(float("inf"), device=rects.device)
    x0, y0, x1, y1 = (rects[..., None, :, k] for k in range(4))  # [B, 1, N]
    width = (torch.where(members, x1, inf).amin(-1) - torch.where(members, x0, -inf).amax(-1)).clamp_min(0.0)
    height = (torch.where(members, y1, inf).amin(-1) - torch.where(members, y0, -inf).amax(-1)).clamp_min(0.0)
    return (width * height * sign).sum(-1)


RANDOM_OCCLUSION = ((0.05, 1), (0.10, 2), (0.20, 2), (0.30, 3), (0.40, 4))
"""(fraction of the image area covered, number of rectangles). Own calibration, after Cutout /
Random Erasing (DeVries & Taylor 2017; Zhong et al. 2020), which erase 2-40% of the image.
The rectangles are grown together until their union, overlaps counted once, covers the fraction."""

_ASPECT_RANGE = (0.5, 2.0)  # width / height of each rectangle, log-uniform
_BISECTION_STEPS = 32  # halvings of the scale interval: far below a pixel


def _sample_random_occlusion(rng: SampleRNG, level: tuple[float, int], batch: Batch) -> dict[str, Tensor]:
    _, count = level
    lo, hi = math.log(_ASPECT_RANGE[0]), math.log(_ASPECT_RANGE[1])
    return {
        "centre": rng.uniform(0.0, 1.0, shape=(count, 2)),  # (x, y) in image fractions
        "log_aspect": rng.uniform(lo, hi, shape=(count,)),
        "share": rng.uniform(0.5, 1.5, shape=(count,)),  # relative size of each rectangle
        "key": rng.key(),  # the fill texture
    }


def _random_rects(params: dict[str, Tensor], fraction: float, size: tuple[int, int], device: torch.device) -> Tensor:
    """Rectangles `[B, N, 4]` in pixels whose union covers `fraction` of the image.

    Each rectangle has its sampled centre, aspect ratio and relative size; a common scale is found by
    bisection on the exact union area (inclusion-exclusion, all in `[B]`-tensors, no pixels involved).
    """
    h, w = size
    centre = params["centre"]
    aspect = torch.exp(params["log_aspect"])
    share = params["share"]
    share = share / share.sum(dim=1, keepdim=True)
    # Unit-scale sides: rectangle k has area fraction * share_k of the image (if nothing overlapped).
    area = fraction * share * (h * w)
    half_w0 = 0.5 * torch.sqrt(area * aspect)
    half_h0 = 0.5 * torch.sqrt(area / aspect)
    # Keep centres far enough inside that a rectangle at unit scale starts fully in the image.
    cx = half_w0.clamp(max=w / 2) + centre[..., 0] * (w - 2 * half_w0.clamp(max=w / 2))
    cy = half_h0.clamp(max=h / 2) + centre[..., 1] * (h - 2 * half_h0.clamp(max=h / 2))

    def rects_at(scale: Tensor) -> Tensor:
        s = scale[:, None]
        return torch.stack([(cx - s * half_w0).clamp(0, w), (cy - s * half_h0).clamp(0, h),
                            (cx + s * half_w0).clamp(0, w), (cy + s * half_h0).clamp(0, h)], dim=-1)

    target = fraction * h * w
    b = centre.shape[0]
    low = torch.zeros(b, device=device)
    # Scale at which every rectangle spans the whole image: coverage 1 >= fraction.
    smallest_half_side = torch.minimum(half_w0, half_h0).amin(dim=1).clamp_min(1e-6)
    high = (2.0 * max(h, w)) / smallest_half_side
    subsets = _subsets(centre.shape[1], device)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (low + high)
        below = _union_area(rects_at(mid), subsets) < target
        low = torch.where(below, mid, low)
        high = torch.where(below, high, mid)
    return rects_at(high)


@data_aware(family="occlusion", severities=RANDOM_OCCLUSION, sample=_sample_random_occlusion,
            fields=[Field("area", 0, 1), Field("count", 1, 8, integer=True)],
            description="Cutout: rectangles at per-sample positions covering a set fraction of the image, "
                        "filled with colour noise; the covered fraction of each box is recorded.")
def random_occlusion(batch: Batch, params: dict[str, Tensor], level: tuple[float, int]) -> Batch:
    """Occluders placed without regard to the objects: pixels only change, and each box's covered
    fraction goes to `ObjectTargets.occluded`, so miss rates can be read by how hidden objects were."""
    images = batch.images
    fraction, _ = level
    size = (images.shape[2], images.shape[3])
    mask = _rect_masks(_random_rects(params, fraction, size, images.device), size)
    out = torch.lerp(images, _fill(params, tuple(images.shape)), mask[:, None])
    return batch.replace(images=out, boxes=_record_occlusion(batch.boxes, mask))


OBJECT_OCCLUSION = (0.1, 0.2, 0.3, 0.4, 0.5)
"""Fraction of each object's box covered by an occluder. Own calibration: the partial-occlusion
levels of occlusion benchmarks (e.g. OccludedPASCAL3D+'s 20-40 / 40-60% bands) with lighter steps."""

CENTRAL_REGION = 0.5
"""Without boxes (classification), the occluded 'object' is the central box spanning this fraction of
each side of the image, where ImageNet-style crops put their subject."""

_OBJECT_DRAWS = 3  # uniforms per object: aspect, x position, y position


def _sample_object_occlusion(rng: SampleRNG, level: float, batch: Batch) -> dict[str, Tensor]:
    return {"object_key": rng.key(), "key": rng.key()}


def _object_rects(boxes: Tensor, draws: Tensor, fraction: float) -> Tensor:
    """An occluder `[N, 4]` inside each box `[N, 4]` covering `fraction` of its area.

    `draws` `[N, 3]` uniforms: the occluder's width as a fraction of the box's is log-uniform in
    [fraction, 1] (so its height fraction, fraction / width, also lies in [fraction, 1]), and its
    position inside the box is uniform.
    """
    bw = (boxes[:, 2] - boxes[:, 0]).clamp_min(0.0)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp_min(0.0)
    rel_w = torch.exp(draws[:, 0] * math.log(fraction)) if fraction < 1 else torch.ones_like(bw)
    rel_h = fraction / rel_w
    ow, oh = rel_w * bw, rel_h * bh
    x0 = boxes[:, 0] + draws[:, 1] * (bw - ow)
    y0 = boxes[:, 1] + draws[:, 2] * (bh - oh)
    return torch.stack([x0, y0, x0 + ow, y0 + oh], dim=-1)


def _box_fraction(mask: Tensor, boxes: Tensor) -> Tensor:
    """Mean of `mask` `[H, W]` over each box `[N, 4]` (pixel-area weighted): `[N]`."""
    h, w = mask.shape
    cx = _axis_coverage(boxes[:, 0], boxes[:, 2], w)
    cy = _axis_coverage(boxes[:, 1], boxes[:, 3], h)
    covered = torch.einsum("hw,nh,nw->n", mask, cy, cx)
    area = cx.sum(1) * cy.sum(1)
    return torch.where(area > 0, covered / area.clamp_min(1e-12), torch.zeros_like(area))


@data_aware(family="occlusion", severities=OBJECT_OCCLUSION, sample=_sample_object_occlusion,
            fields=[Field("area", 0.01, 1)],
            description="Each object partly hidden: an occluder covering a set fraction of every box "
                        "(the central region without boxes); the covered fraction is recorded.")
def object_occlusion(batch: Batch, params: dict[str, Tensor], level: float) -> Batch:
    """Cover `level` of each object's box; images of a detection batch without objects are unchanged.

    Each occluder depends only on the sample's key and the object's index, so it is the same whatever
    the batch. `ObjectTargets.occluded` receives the fraction of each box covered by all occluders of
    the image together (neighbouring objects' occluders can overlap a box), replacing earlier values.
    """
    images = batch.images
    b, _, h, w = images.shape
    device = images.device
    if batch.boxes is None:
        side = torch.tensor([w, h, w, h], device=device, dtype=torch.float32)
        margin = (1.0 - CENTRAL_REGION) / 2
        region = torch.tensor([margin, margin, 1 - margin, 1 - margin], device=device) * side
        per_image = [region[None]] * b
    else:
        per_image = [t.boxes.to(device) for t in batch.boxes]
    most = max((len(bx) for bx in per_image), default=0)
    if most == 0:
        return batch
    draws = uniform_field(params["object_key"], (most, _OBJECT_DRAWS), counter=0)
    rects = torch.zeros(b, most, 4, device=device)  # unused slots stay empty
    for i, bx in enumerate(per_image):
        if len(bx):
            rects[i, : len(bx)] = _object_rects(bx, draws[i, : len(bx)], level)
    mask = _rect_masks(rects, (h, w))
    out = torch.lerp(images, _fill(params, tuple(images.shape)), mask[:, None])
    return batch.replace(images=out, boxes=_record_occlusion(batch.boxes, mask))


def _record_occlusion(boxes: list[ObjectTargets] | None, mask: Tensor) -> list[ObjectTargets] | None:
    """The targets with `occluded` = the fraction of each box the occluder mask `[B, H, W]` covers
    (replacing earlier values: the occluders of one pass are all that hide an object)."""
    if boxes is None:
        return None
    return [ObjectTargets(boxes=t.boxes, labels=t.labels, masks=t.masks, iscrowd=t.iscrowd, ids=t.ids,
                          occluded=_box_fraction(mask[i], t.boxes.to(mask.device)).to(t.boxes.device),
                          dropped=t.dropped, area=t.area)
            for i, t in enumerate(boxes)]
