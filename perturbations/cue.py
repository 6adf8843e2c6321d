"""Shape versus texture: which cue does the model use?

Geirhos et al. (2019, "ImageNet-trained CNNs are biased towards texture") showed that ImageNet CNNs
classify by texture where people classify by shape. These probes ask the same of a user's model, on
the user's own images:

- `patch_shuffle` (k = 2, 3, 4, 6, 8 as severities): the image cut into a k x k grid and the tiles
  permuted, so local texture survives and global shape does not;
- `silhouette` (the object as a black shape on white) and `edges` (Canny edges, black on white): shape
  kept, texture gone;
- `texture_fill`: the cue conflict. The silhouette of an image of class A filled with texture cut from
  the object of an image of another class B; the model's answer says which cue it followed, and
  shape bias = shape decisions / (shape + texture decisions), as in Geirhos et al.

`patch_shuffle` and `edges` need no object masks; `silhouette` and `texture_fill` do (`texture_fill`
also the prepared bank of object textures, see `background.BackgroundBank`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from visionstress.batch import Batch
from visionstress.rng import SampleRNG

from .background import ForegroundPerturbation, _resize
from .registry import Params, data_aware, photometric, register_perturbation

PATCH_SHUFFLE = (2, 3, 4, 6, 8)
"""Grid size k per severity: the image becomes k x k tiles in a random order. k = 4 (severity 3) is the
texture-reliance summary's reference point."""


def _sattolo(u: Tensor) -> Tensor:
    """A uniformly random cyclic permutation `[B, n]` per row of uniforms `u` `[B, n]` (Sattolo's
    algorithm): every tile leaves its place, so even a 2 x 2 grid is always shuffled."""
    b, n = u.shape
    perm = torch.arange(n, device=u.device).expand(b, n).clone()
    rows = torch.arange(b, device=u.device)
    for i in range(n - 1, 0, -1):
        j = torch.minimum(torch.floor(u[:, i] * i).long(), torch.tensor(i - 1, device=u.device))
        at_i, at_j = perm[rows, i].clone(), perm[rows, j].clone()
        perm[rows, i], perm[rows, j] = at_j, at_i
    return perm


def _sample_patch_shuffle(rng: SampleRNG, k: int, batch: Batch) -> Params:
    return {"order": _sattolo(rng.uniform(shape=(k * k,)))}


def _shuffle_tiles(x: Tensor, order: Tensor, k: int) -> Tensor:
    """Tiles of `x` `[B, C, H, W]` rearranged: output tile t is input tile `order[:, t]` (row-major tiles
    of the top-left k*(H//k) x k*(W//k) area; the few rows and columns left over stay in place)."""
    b, c, h, w = x.shape
    th, tw = h // k, w // k
    if th == 0 or tw == 0:
        return x
    out = x.clone()
    grid = x[:, :, : k * th, : k * tw].reshape(b, c, k, th, k, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, k * k, c, th, tw)
    index = order.to(x.device)[:, :, None, None, None].expand(-1, -1, c, th, tw)
    moved = torch.gather(grid, 1, index).reshape(b, k, k, c, th, tw).permute(0, 3, 1, 4, 2, 5)
    out[:, :, : k * th, : k * tw] = moved.reshape(b, c, k * th, k * tw)
    return out


@data_aware(name="patch_shuffle", family="cue", severities=PATCH_SHUFFLE, sample=_sample_patch_shuffle,
            targets=frozenset({"labels", "masks"}),
            description="The image cut into k x k tiles (k = 2, 3, 4, 6, 8) put back in a random order: local "
                        "texture kept, global shape destroyed. Semantic masks are shuffled alike; boxes cannot be.")
def patch_shuffle(batch: Batch, params: Params, k: int) -> Batch:
    order = params["order"]
    masks = None if batch.masks is None else _shuffle_tiles(batch.masks[:, None], order, k)[:, 0]
    foreground = None if batch.foreground is None else _shuffle_tiles(batch.foreground[:, None], order, k)[:, 0]
    return batch.replace(images=_shuffle_tiles(batch.images, order, k), masks=masks, foreground=foreground)


EDGES = (math.sqrt(2.0), 0.33)
"""(Gaussian smoothing sigma in pixels, hysteresis band): MATLAB's Canny default smoothing, which Geirhos
et al.'s edge stimuli used, and thresholds at (1 -/+ 0.33) x the median grey level, a common automatic
choice for OpenCV's Canny. One level."""


@photometric(name="edges", family="cue", severities=(EDGES,),
             description="Canny edges of the image (OpenCV), black lines on white: shape kept, colour and texture "
                         "gone. One level.")
def edges(images: Tensor, params: Params, level: tuple[float, float]) -> Tensor:
    import cv2

    sigma, band = level
    grey = (images.detach().cpu().mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    out = []
    for image in grey:
        g = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        g = cv2.GaussianBlur(g, (0, 0), sigma)
        median = float(np.median(g))
        found = cv2.Canny(g, max(0.0, (1 - band) * median), min(255.0, (1 + band) * median), L2gradient=True)
        out.append(found == 0)
    white = torch.from_numpy(np.stack(out)).to(images.device, images.dtype)
    return white[:, None].expand_as(images).contiguous()


SILHOUETTE = (0.0, 1.0)
"""(object value, background value): a black shape on white, as Geirhos et al.'s silhouettes."""


def _silhouette(p: ForegroundPerturbation, batch: Batch, params: Params, level: tuple[float, float]) -> Batch:
    inside, outside = level
    value = torch.where(batch.foreground, float(inside), float(outside)).to(batch.images.dtype)
    return batch.replace(images=value[:, None].expand_as(batch.images).contiguous())


def _texture_fill(p: ForegroundPerturbation, batch: Batch, params: Params, level: Any) -> Batch:
    """Each image's object filled with its donor's texture, tiled from the object's top-left corner at the
    texture's own scale (relative to the image's shorter side), on white."""
    members = p.bank.on(batch.images.device)
    b, c, h, w = batch.images.shape
    out = torch.ones_like(batch.images)
    ys = torch.arange(h, device=batch.images.device)[:, None]
    xs = torch.arange(w, device=batch.images.device)[None, :]
    for i, donor in enumerate(params["donor"].tolist()):
        shape = batch.foreground[i]
        if not shape.any():
            continue
        side = max(2, round(float(members["texture_scale"][donor]) * min(h, w)))
        tile = _resize(members["textures"][donor], (side, side)) / 255.0
        rows, cols = torch.nonzero(shape.any(1)).flatten(), torch.nonzero(shape.any(0)).flatten()
        tiled = tile[:, (ys - rows[0]) % side, (xs - cols[0]) % side]
        out[i] = torch.where(shape, tiled[:c], out[i])
    return batch.replace(images=out.clamp(0, 1))


register_perturbation(ForegroundPerturbation(
    _silhouette, name="silhouette", family="cue", severities=(SILHOUETTE,),
    description="The object as a black shape on white (object masks): shape kept, texture gone. One level."))
register_perturbation(ForegroundPerturbation(
    _texture_fill, name="texture_fill", family="cue", severities=("other class",),
    targets=frozenset({"labels"}), policy="other", uses_bank=True,
    description="Cue conflict: the object's silhouette filled with texture cut from an object of another class "
                "(Geirhos et al. 2019's shape bias on your data); the label stays the shape's class. One level."))

CUE_PERTURBATIONS = ("patch_shuffle", "silhouette", "edges", "texture_fill")
