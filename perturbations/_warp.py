"""Moving images and their targets with one geometric map.

Coordinates are continuous pixel coordinates, as boxes use them: pixel (row i, column j) covers
[j, j+1) x [i, i+1) and its centre is (j + 0.5, i + 0.5). A `Warp` gives, for every output pixel
centre, the input location it samples (`grid`), and optionally the forward homography
(`matrix`, input -> output) so boxes can be moved exactly by their corners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from visionstress.batch import Batch, ObjectTargets

from ._filters import fold_index, separable_filter

_BOX_CHUNK = 32  # objects moved at once through a dense warp (bounds memory at 32 x H x W bools)

BOX_METHODS = ("ellipse", "enclosing")
"""How a geometric perturbation moves a box.

'ellipse' (the default): an object with an instance mask gets the tight box of its moved mask; an object
known only by its box is taken to be the ellipse inscribed in it, and gets the box of the moved ellipse
(albumentations' `rotate_method="ellipse"`). Rotating the enclosing box of the moved corners instead
inflates it with the angle: at 45 degrees a perfectly tight detection of a round object scores IoU 0.5
against it, and of a diamond-shaped one 0.25, so correct detections count as localisation errors.
'enclosing': the enclosing box of the moved box corners (what torchvision's `tv_tensors.BoundingBoxes`
do), kept for comparison with earlier results; it is what version-1 geometric perturbations gave.
"""

ELLIPSE_POINTS = 64
"""Points sampled on an inscribed ellipse: the moved ellipse's extent is under-estimated by at most
1 - cos(pi / 64) = 0.12% of its half-axis (albumentations samples 360)."""


@dataclass
class Warp:
    """grid: `[B, H, W, 2]` input (x, y) sampled by each output pixel centre.

    matrix: `[B, 3, 3]` forward homography in the same coordinates, when the warp is projective.
    prefilter_sigma: Gaussian blur (input pixels) applied first, to avoid aliasing when the warp
    shrinks the image; one value for the batch, so a sample's blur never depends on its neighbours.
    """

    grid: Tensor
    matrix: Tensor | None = None
    prefilter_sigma: float | None = None


def pixel_centres(size: tuple[int, int], device: torch.device) -> Tensor:
    """`[H, W, 2]` (x, y) of every pixel centre."""
    h, w = size
    ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def apply_homography(matrix: Tensor, points: Tensor) -> Tensor:
    """Map points `[B, ..., 2]` through `[B, 3, 3]` homographies."""
    b = matrix.shape[0]
    flat = points.reshape(b, -1, 2)
    ones = torch.ones_like(flat[..., :1])
    mapped = torch.cat([flat, ones], dim=-1) @ matrix.transpose(1, 2)
    xy = mapped[..., :2] / mapped[..., 2:3].clamp_min(1e-8)
    return xy.reshape(points.shape)


def warp_from_matrix(matrix: Tensor, size: tuple[int, int], prefilter_sigma: float | None = None) -> Warp:
    """The Warp of forward homographies `matrix` `[B, 3, 3]` (input -> output, continuous coords)."""
    matrix = matrix.to(torch.float32)
    inverse = torch.linalg.inv(matrix)
    centres = pixel_centres(size, matrix.device).expand(matrix.shape[0], -1, -1, -1)
    return Warp(grid=apply_homography(inverse, centres), matrix=matrix, prefilter_sigma=prefilter_sigma)


def centred(matrix: Tensor, size: tuple[int, int]) -> Tensor:
    """Conjugate a transform about the origin so it acts about the image centre instead."""
    h, w = size
    shift = torch.eye(3, device=matrix.device).repeat(matrix.shape[0], 1, 1)
    back = shift.clone()
    shift[:, 0, 2], shift[:, 1, 2] = -w / 2.0, -h / 2.0
    back[:, 0, 2], back[:, 1, 2] = w / 2.0, h / 2.0
    return back @ matrix @ shift


def _prefilter(images: Tensor, sigma: float) -> Tensor:
    """Gaussian low-pass before a shrinking warp: radius ceil(3 sigma), reflect borders (what
    torchvision's gaussian_blur does), through the shared separable filter."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    return separable_filter(images, kernel, kernel, mode="reflect")


def _normalised(grid: Tensor, size: tuple[int, int]) -> Tensor:
    h, w = size
    scale = torch.tensor([2.0 / w, 2.0 / h], device=grid.device)
    return grid * scale - 1.0


def _nearest_index(grid: Tensor, size: tuple[int, int], padding: str) -> tuple[Tensor, Tensor]:
    """Flat source index `[B, H*W]` of each output pixel (nearest) and whether it lies in the input."""
    h, w = size
    ix = torch.floor(grid[..., 0]).long()
    iy = torch.floor(grid[..., 1]).long()
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    if padding == "reflection":
        # grid_sample's 'reflection' padding (align_corners=False) repeats the edge pixel: 'symmetric'
        ix, iy = fold_index(ix, w, "symmetric"), fold_index(iy, h, "symmetric")
        inside = torch.ones_like(inside)
    elif padding == "border":
        inside = torch.ones_like(inside)
    ix, iy = ix.clamp(0, w - 1), iy.clamp(0, h - 1)
    b = grid.shape[0]
    return (iy * w + ix).reshape(b, -1), inside.reshape(b, -1)


def _move_boxes(targets: ObjectTargets, warp: Warp, index: int, size: tuple[int, int],
                flat_index: Tensor, inside: Tensor, box_method: str) -> ObjectTargets:
    h, w = size
    boxes = targets.boxes
    masks = targets.masks
    if masks is not None:
        flat = masks.flatten(1)  # [N, H*W], also for N = 0 (an image without objects)
        masks = (flat.gather(1, flat_index[index].expand(flat.shape[0], -1)) & inside[index]).reshape(-1, h, w)
    # `stretch`: how much each object's area grows or shrinks before clipping, whatever the box method:
    # the exact factor for a projective warp (area of the moved box's quadrilateral over the box's), the
    # enclosing-box ratio for a dense warp (whose boxes come out already clipped).
    stretch = torch.ones(len(targets), device=boxes.device)
    if len(targets) == 0:
        moved = boxes
    elif warp.matrix is not None:
        x0, y0, x1, y1 = boxes.unbind(-1)
        corners = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                               torch.stack([x1, y1], -1), torch.stack([x0, y1], -1)], dim=1)
        mapped = apply_homography(warp.matrix[index : index + 1], corners.unsqueeze(0))[0]
        stretch = safe_ratio(_polygon_area(mapped), box_area(boxes))
        if box_method == "enclosing":
            moved = torch.cat([mapped.amin(dim=1), mapped.amax(dim=1)], dim=-1)
        else:
            moved = _ellipses_through_homography(boxes, warp.matrix[index])
    else:
        enclosing, ellipse = _boxes_through_dense_warp(boxes, warp.grid[index], inside[index].reshape(h, w))
        stretch = safe_ratio(box_area(enclosing), box_area(boxes))
        moved = enclosing if box_method == "enclosing" else ellipse
    if box_method != "enclosing" and masks is not None:
        # The object's own pixels say where it is; objects annotated without a mask keep the ellipse.
        has_mask = targets.masks.flatten(1).any(dim=1)
        moved = torch.where(has_mask[:, None], _extent(masks), moved)
    unclipped = moved
    moved = torch.stack([moved[:, 0].clamp(0, w), moved[:, 1].clamp(0, h),
                         moved[:, 2].clamp(0, w), moved[:, 3].clamp(0, h)], dim=-1)
    keep = (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
    area = targets.area
    if area is not None:
        if masks is not None:
            area = masks.flatten(1).sum(dim=1).float()
        else:
            # Without a mask the object's shape is unknown: assume it fills its box evenly, so
            # clipping keeps the same fraction of its area as of the box.
            area = area * stretch * safe_ratio(box_area(moved), box_area(unclipped))
    out = ObjectTargets(boxes=moved, labels=targets.labels, masks=masks, iscrowd=targets.iscrowd,
                        ids=targets.ids, occluded=targets.occluded, dropped=targets.dropped, area=area)
    return out.keep(keep, dropped=int((~keep).sum()))


def _ellipse_points(boxes: Tensor) -> Tensor:
    """`[N, ELLIPSE_POINTS, 2]` points (float64) evenly spaced in angle on the ellipse inscribed in each
    box `[N, 4]`, starting at the right-hand extreme; their count is a multiple of 4, so the four extremes
    are among them and an axis-aligned scaling moves the ellipse's box exactly as the box itself."""
    count = ELLIPSE_POINTS
    boxes = boxes.to(torch.float64)
    angle = torch.arange(count, device=boxes.device, dtype=torch.float64) * (2.0 * math.pi / count)
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    half = 0.5 * (boxes[:, 2:] - boxes[:, :2])
    unit = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    unit[count // 4 :: count // 2, 0] = 0.0  # exact zeros at the top and bottom extremes
    unit[:: count // 2, 1] = 0.0  # and at the left and right ones
    return centre[:, None] + half[:, None] * unit[None]


def _ellipses_through_homography(boxes: Tensor, matrix: Tensor) -> Tensor:
    """Box `[N, 4]` of each box's inscribed ellipse moved by one homography `[3, 3]` (float64 math)."""
    points = _ellipse_points(boxes)
    moved = apply_homography(matrix.to(torch.float64)[None], points.reshape(1, -1, 2)).reshape(points.shape)
    return torch.cat([moved.amin(dim=1), moved.amax(dim=1)], dim=-1).to(boxes.dtype)


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


def _polygon_area(points: Tensor) -> Tensor:
    """Shoelace area of polygons `[N, K, 2]`."""
    x, y = points[..., 0], points[..., 1]
    return 0.5 * (x * y.roll(-1, dims=1) - x.roll(-1, dims=1) * y).sum(dim=1).abs()


def safe_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, 1 where the denominator is 0 (a degenerate box keeps its area)."""
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator / safe, torch.ones_like(numerator))


def _extent(hit: Tensor) -> Tensor:
    """Tight box `[N, 4]` (pixel edges) of each non-empty bool map `[N, H, W]`; an empty map gives an
    inverted box (x0 = W > x1 = 0), which clipping turns into a dropped object."""
    n, h, w = hit.shape
    rows, cols = hit.any(dim=2), hit.any(dim=1)
    r = torch.arange(h, device=hit.device)
    c = torch.arange(w, device=hit.device)
    top = torch.where(rows, r, h).amin(dim=1)
    bottom = torch.where(rows, r + 1, 0).amax(dim=1)
    left = torch.where(cols, c, w).amin(dim=1)
    right = torch.where(cols, c + 1, 0).amax(dim=1)
    return torch.stack([left, top, right, bottom], dim=-1).float()


def _boxes_through_dense_warp(boxes: Tensor, grid: Tensor, inside: Tensor) -> tuple[Tensor, Tensor]:
    """For a non-projective warp, per box `[N, 4]`: the enclosing box of the output pixels whose source
    lies inside the box, and that of the output pixels whose source lies inside its inscribed ellipse
    (the enclosing one where the ellipse is too thin to hold a pixel centre)."""
    sx, sy = grid[..., 0], grid[..., 1]
    enclosing, ellipse = [], []
    for chunk in boxes.split(_BOX_CHUNK):
        x0, y0, x1, y1 = (v[:, None, None] for v in chunk.unbind(-1))
        in_box = (sx >= x0) & (sx < x1) & (sy >= y0) & (sy < y1) & inside
        a, b = ((x1 - x0) / 2).clamp_min(1e-6), ((y1 - y0) / 2).clamp_min(1e-6)
        in_ellipse = (((sx - (x0 + x1) / 2) / a) ** 2 + ((sy - (y0 + y1) / 2) / b) ** 2 <= 1.0) & inside
        box, ell = _extent(in_box), _extent(in_ellipse)
        enclosing.append(box)
        ellipse.append(torch.where(in_ellipse.flatten(1).any(dim=1)[:, None], ell, box))
    if not enclosing:
        return boxes, boxes
    return torch.cat(enclosing), torch.cat(ellipse)


def apply_warp(batch: Batch, warp: Warp, padding: str = "zeros", box_method: str = "ellipse") -> Batch:
    """Resample a float batch and move all of its targets with the same map; `box_method` says how boxes
    move (see `BOX_METHODS`)."""
    if box_method not in BOX_METHODS:
        raise ValueError(f"box method must be one of {', '.join(BOX_METHODS)}, got {box_method!r}")
    size = batch.image_size
    images = batch.images
    if warp.prefilter_sigma:
        images = _prefilter(images, float(warp.prefilter_sigma))
    images = F.grid_sample(images, _normalised(warp.grid, size), mode="bilinear",
                           padding_mode=padding, align_corners=False)
    need_index = batch.masks is not None or (batch.boxes is not None and (
        warp.matrix is None or any(t.masks is not None for t in batch.boxes)))
    flat_index = inside = None
    if need_index:
        flat_index, inside = _nearest_index(warp.grid, size, padding)
    masks = batch.masks
    if masks is not None:
        moved = masks.reshape(masks.shape[0], -1).gather(1, flat_index)
        masks = torch.where(inside, moved, batch.ignore_index).reshape(masks.shape)
    boxes = batch.boxes
    if boxes is not None:
        boxes = [_move_boxes(t, warp, i, size, flat_index, inside, box_method) for i, t in enumerate(boxes)]
    return batch.replace(images=images, masks=masks, boxes=boxes)
