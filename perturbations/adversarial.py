"""Adversarial patches: a universal patch fitted on the model under test, and its random control.

`adversarial_patch` pastes a patch that was optimised on the model (visionstress.patches fits it in the
prepare phase, before the evaluation loop); `random_patch` pastes a patch of random colour noise drawn
once per run from the seed, with the same shape, area and placement. Without the control nobody can
tell an attack from plain occlusion, so the two share their placements exactly: for a given sample,
severity and seed both patches land at the same position, angle and size, and the difference between
their rows is the patch's content alone.

Severity is the patch area: a fraction of the image (classification, segmentation) or of each
object's box (detection: one patch per object, placed on the object and moving with it, as in the
person-vanishing attacks of Thys et al. 2019). Placement is drawn per sample from per-sample randomness
(position, rotation within ±22.5°, side length ±10%), so a sample replays alone exactly like in a batch.
The same kernel (`paste_patch`) renders the patches in evaluation and in fitting, where the expectation
over transformation adds brightness, contrast and perspective jitter; it is differentiable with
respect to the patch and batched in torch (a loop runs over objects per image, never over samples).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from visionstress.batch import Batch
from visionstress.rng import sample_keys, uniform_field

from .levels import Field
from .occlusion import _record_occlusion
from .registry import Params, Perturbation, PrepareContext, register_perturbation

PATCH_AREAS = (0.01, 0.02, 0.05, 0.10, 0.20)
"""Patch area as a fraction of the image (or of each object's box), severities 1..5: the 1-20% range of
the patch-attack literature (Brown et al. 2017 report 10% of the image fooling ImageNet classifiers)."""

SHAPES = ("square", "circle")
ROTATION_DEGREES = 22.5
"""Placement rotation is uniform in ±this many degrees."""
SIDE_JITTER = (0.9, 1.1)
"""Placement scale: the patch's side is multiplied by a uniform factor in this range (mean area 1.0033x)."""

PLACEMENT_STREAM = "patch_placement"
"""Random stream of the placements, shared by both perturbations so attack and control are paired."""
FIT_SUBSET_STREAM = "patch_fit_subset"
"""Random stream deciding which sample ids a patch is fitted on (a function of the id alone)."""
_CONTENT_STREAM = "random_patch_content"
_DRAWS = 4  # uniforms per patch: x position, y position, rotation, side jitter
MIN_RESOLUTION, MAX_RESOLUTION = 8, 256
"""Bounds on a patch texture's side in texels."""


@dataclass
class PatchState:
    """A prepared patch perturbation's state: the patch texture per area, and how it is used.

    `patches` maps each area (the severity table's value) to a `[3, R, R]` float32 texture in [0, 1];
    `fit_fraction` is the share of sample ids the adversarial patches were fitted on (the passes score
    the others); `target_category` (detection) limits patches to the objects of one category id;
    `summary` is what `prepared_summary()` reports.
    """

    patches: dict[float, Tensor]
    shape: str = "square"
    fit_fraction: float = 0.2
    target_category: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def check_area(name: str, area: Any) -> float:
    """`area` as a float in (0, 1), or a ValueError naming the perturbation."""
    if isinstance(area, bool) or not isinstance(area, (int, float)) or not 0.0 < float(area) < 1.0:
        raise ValueError(f"perturbation {name!r}: patch area {area!r} is outside (0, 1); the table gives the "
                         f"fraction of the image (or of each object's box) the patch covers, e.g. 0.1 for 10%")
    return float(area)


def area_key(area: float) -> str:
    """The text form of an area used in file names and JSON keys (0.1 -> '0.1')."""
    return f"{float(area):g}"


def fit_subset(sample_ids: Tensor, fraction: float) -> Tensor:
    """Which sample ids (bool, same device) a patch is fitted on: a hash of the id alone below
    `fraction`, so the split never depends on batching, sharding or the seed."""
    keys = sample_keys(0, FIT_SUBSET_STREAM, 0, sample_ids)
    return uniform_field(keys, ()) < float(fraction)


def nominal_side(area: float, region_area: Tensor | float, shape: str) -> Tensor | float:
    """Side of the square (or diameter of the disc) covering `area` of a region, in pixels."""
    covered = area * region_area
    return (covered * 4.0 / math.pi) ** 0.5 if shape == "circle" else covered ** 0.5


def texture_resolution(side_pixels: float) -> int:
    """Texels per side of a patch whose nominal side is `side_pixels`: one texel per pixel, bounded."""
    return int(min(MAX_RESOLUTION, max(MIN_RESOLUTION, round(float(side_pixels)))))


def content_key(seed: int, severity: int, count: int = 1, device: torch.device | str = "cpu") -> Tensor:
    """The control's content key, `count` copies: a function of (seed, severity) only, never of a sample."""
    return sample_keys(seed, _CONTENT_STREAM, severity, torch.zeros(count, dtype=torch.int64, device=device))


def random_texture(key: Tensor, resolution: int) -> Tensor:
    """The control's content: uniform colour noise `[3, R, R]` from a content key (`[1]` or more copies)."""
    return uniform_field(key[:1], (3, resolution, resolution))[0]


def patch_regions(batch: Batch, target_category: int | None = None) -> tuple[Tensor, Tensor]:
    """Where patches go: `regions` `[B, S, 4]` (xyxy pixels) and `present` `[B, S]` bool.

    Without boxes the one region is the whole image. With boxes slot k is object k of its image (so
    an object's placement draws do not depend on its neighbours); with `target_category`, objects of
    other categories get no patch.
    """
    b, _, h, w = batch.images.shape
    device = batch.images.device
    if batch.boxes is None:
        whole = torch.tensor([0.0, 0.0, float(w), float(h)], device=device)
        return whole.expand(b, 1, 4).clone(), torch.ones(b, 1, dtype=torch.bool, device=device)
    if not any(len(t) for t in batch.boxes):
        return torch.zeros(b, 0, 4, device=device), torch.zeros(b, 0, dtype=torch.bool, device=device)
    regions = pad_sequence([t.boxes.to(device=device, dtype=torch.float32) for t in batch.boxes], batch_first=True)
    labels = pad_sequence([t.labels.to(device) for t in batch.boxes], batch_first=True, padding_value=-1)
    present = labels >= 0 if target_category is None else labels == int(target_category)
    return regions, present


@dataclass
class Jitter:
    """Fitting-only transformations (expectation over transformation), per patch `[B, S]`:
    brightness offset, contrast factor, and perspective coefficients `[B, S, 2]`."""

    brightness: Tensor
    contrast: Tensor
    perspective: Tensor | None = None


def paste_patch(images: Tensor, texture: Tensor, draws: Tensor, regions: Tensor, present: Tensor, area: float,
                shape: str = "square", jitter: Jitter | None = None) -> tuple[Tensor, Tensor]:
    """Paste one patch per present region; returns the images and the patch coverage `[B, H, W]`.

    `images` `[B, 3, H, W]` float in [0, 1]; `texture` `[3, R, R]` (or `[B, 3, R, R]`); `draws` `[B, S, 4]`
    uniforms (x, y, rotation, side jitter) for the `[B, S, 4]` `regions`. The patch covers `area` of its
    region (times the side jitter squared), rotated about its centre, placed uniformly where its
    rotated bounding box fits inside the region (centred when it cannot), clipped to the region, with
    edges anti-aliased over one pixel. Differentiable with respect to `texture`.
    """
    b, _, h, w = images.shape
    out = images
    coverage = torch.zeros(b, h * w, device=images.device, dtype=images.dtype)
    for k in range(regions.shape[1]):
        if not bool(present[:, k].any()):
            continue
        out, alpha, flat = _paste_slot(out, texture, draws[:, k], regions[:, k], present[:, k], area, shape,
                                       None if jitter is None else _slot_jitter(jitter, k))
        coverage.scatter_reduce_(1, flat, alpha.detach().flatten(1).to(coverage.dtype), reduce="amax")
    return out, coverage.view(b, h, w)


def _slot_jitter(jitter: Jitter, k: int) -> Jitter:
    return Jitter(jitter.brightness[:, k], jitter.contrast[:, k],
                  None if jitter.perspective is None else jitter.perspective[:, k])


def _paste_slot(images: Tensor, texture: Tensor, draws: Tensor, region: Tensor, present: Tensor, area: float,
                shape: str, jitter: Jitter | None) -> tuple[Tensor, Tensor, Tensor]:
    """One patch per image: the images, the patch's alpha in its window `[B, hs, ws]`, and the window's
    flat pixel indices `[B, hs * ws]`. Each image's window is a square around its own patch, all of one
    size, so the work scales with the patch, not with the image."""
    b, _, h, w = images.shape
    device = images.device
    draws = draws.to(device=device, dtype=torch.float32)
    x0, y0, x1, y1 = region.unbind(-1)
    rw, rh = (x1 - x0).clamp_min(0.0), (y1 - y0).clamp_min(0.0)
    angle = torch.deg2rad((2.0 * draws[:, 2] - 1.0) * ROTATION_DEGREES)
    side = nominal_side(area, rw * rh, shape) * (SIDE_JITTER[0] + (SIDE_JITTER[1] - SIDE_JITTER[0]) * draws[:, 3])
    half = (side / 2.0).clamp_min(1e-3)
    cos, sin = torch.cos(angle), torch.sin(angle)
    extent = half if shape == "circle" else half * (cos.abs() + sin.abs())
    cx = (x0 + x1) / 2.0 + (draws[:, 0] - 0.5) * (rw - 2.0 * extent).clamp_min(0.0)
    cy = (y0 + y1) / 2.0 + (draws[:, 1] - 0.5) * (rh - 2.0 * extent).clamp_min(0.0)
    reach = extent
    if jitter is not None and jitter.perspective is not None:
        # the projective map divides by 1 + gx u + gy v >= 1 - |gx| - |gy| on the patch: it reaches further
        reach = extent / (1.0 - jitter.perspective.abs().sum(-1)).clamp_min(0.2)
    size = math.ceil(2.0 * float(reach[present].max())) + 2
    ix, iy = _window(cx, size, w), _window(cy, size, h)  # [B, ws], [B, hs] pixel indices
    dx = (ix + 0.5).unsqueeze(1) - cx.view(b, 1, 1)
    dy = (iy + 0.5).unsqueeze(2) - cy.view(b, 1, 1)
    c, s, r = cos.view(b, 1, 1), sin.view(b, 1, 1), half.view(b, 1, 1)
    u = (c * dx + s * dy) / r
    v = (c * dy - s * dx) / r
    if jitter is not None and jitter.perspective is not None:
        g = jitter.perspective.to(device=device, dtype=torch.float32)
        den = (1.0 + g[:, 0].view(b, 1, 1) * u + g[:, 1].view(b, 1, 1) * v).clamp_min(1e-3)
        u, v = u / den, v / den
    inside = 1.0 - (torch.sqrt(u * u + v * v) if shape == "circle" else torch.maximum(u.abs(), v.abs()))
    alpha = (inside * r + 0.5).clamp(0.0, 1.0)  # distance to the edge in pixels, anti-aliased over one pixel
    alpha = alpha * _coverage(x0, x1, ix).unsqueeze(1) * _coverage(y0, y1, iy).unsqueeze(2)
    alpha = alpha * present.view(b, 1, 1).to(alpha.dtype)
    tex = texture.to(device=device, dtype=images.dtype)
    tex = tex.unsqueeze(0).expand(b, -1, -1, -1) if tex.ndim == 3 else tex
    if jitter is not None:
        contrast = jitter.contrast.to(device=device, dtype=tex.dtype).view(b, 1, 1, 1)
        brightness = jitter.brightness.to(device=device, dtype=tex.dtype).view(b, 1, 1, 1)
        tex = ((tex - 0.5) * contrast + 0.5 + brightness).clamp(0.0, 1.0)
    sampled = F.grid_sample(tex, torch.stack([u, v], dim=-1).to(tex.dtype), mode="bilinear",
                            padding_mode="border", align_corners=False)  # [B, C, hs, ws]
    c = images.shape[1]
    flat = (iy.long().unsqueeze(2) * w + ix.long().unsqueeze(1)).flatten(1)  # [B, hs * ws]
    pixels = images.flatten(2)
    index = flat.unsqueeze(1).expand(b, c, -1)
    window = pixels.gather(2, index)
    blended = window + alpha.flatten(1).unsqueeze(1).to(images.dtype) * (sampled.flatten(2) - window)
    return pixels.scatter(2, index, blended).view_as(images), alpha, flat


def _window(centre: Tensor, size: int, limit: int) -> Tensor:
    """Pixel indices `[B, min(size, limit)]` (as floats) of a window around each centre, inside [0, limit)."""
    size = min(size, limit)
    start = torch.floor(centre - size / 2.0).clamp(0, limit - size)
    return start.unsqueeze(1) + torch.arange(size, device=centre.device, dtype=centre.dtype)


def _coverage(lo: Tensor, hi: Tensor, pixels: Tensor) -> Tensor:
    """Fraction of each pixel [i, i+1) of `pixels` `[B, n]` inside [lo, hi) (`[B]` each): `[B, n]`."""
    return (torch.minimum(hi[:, None], pixels + 1.0) - torch.maximum(lo[:, None], pixels)).clamp(0.0, 1.0)


class PatchPerturbation(Perturbation):
    """`adversarial_patch` (content fitted on the model) or `random_patch` (content drawn from the seed).

    The registered objects are unprepared: `random_patch` then works on its own (texture resolution from
    the image size, every sample scored), `adversarial_patch` refuses with a message saying how to get
    a patch. `prepare` (the run's prepare phase) or `load_prepared` returns a copy carrying a
    `PatchState`; `with_state` builds one from patches in hand.
    """

    def __init__(self, name: str, description: str, adversarial: bool) -> None:
        super().__init__(name=name, family="adversarial", severities=PATCH_AREAS, description=description,
                         kind="model-aware" if adversarial else "data-aware", fields=[Field("area", 0.0, 1.0)])
        self.adversarial = adversarial
        self.state: PatchState | None = None

    def check_level(self, level: Any) -> None:
        check_area(self.name, level)

    def with_state(self, state: PatchState) -> PatchPerturbation:
        """A prepared copy carrying `state` (the registered object is left as it is)."""
        if state.shape not in SHAPES:
            raise ValueError(f"perturbation {self.name!r}: patch shape must be one of {SHAPES}, got {state.shape!r}")
        for area, patch in state.patches.items():
            check_area(self.name, area)
            if patch.ndim != 3 or patch.shape[0] != 3 or patch.shape[1] != patch.shape[2]:
                raise ValueError(f"perturbation {self.name!r}: the patch for area {area_key(area)} must be "
                                 f"[3, R, R], got {list(patch.shape)}")
        prepared = copy.copy(self)
        prepared.state = state
        return prepared

    def prepare(self, context: PrepareContext) -> PatchPerturbation:
        from visionstress.patches import prepare_patches

        return self.with_state(prepare_patches(self, context))

    def load_prepared(self, state_dir: Path, context: PrepareContext) -> PatchPerturbation:
        from visionstress.patches import load_patch_state

        return self.with_state(load_patch_state(Path(state_dir) / self.name, self.name, context.device))

    def prepared_summary(self) -> dict[str, Any]:
        return {} if self.state is None else dict(self.state.summary)

    def sample_filter(self, sample_ids: Tensor) -> Tensor | None:
        """The held-out images (not fitted on); every image when unprepared."""
        if self.state is None:
            return None
        return ~fit_subset(sample_ids, self.state.fit_fraction)

    def sample_params(self, batch: Batch, severity: int, seed: int = 0) -> Params:
        """One placement key per sample, from a stream both patch perturbations share (paired placements);
        the control also carries its content key (the same for every sample), so a replay redraws it."""
        params = {"placement_key": sample_keys(seed, PLACEMENT_STREAM, severity, batch.sample_ids)}
        if not self.adversarial:
            params["content_key"] = content_key(seed, severity, len(batch), batch.sample_ids.device)
        return params

    def texture(self, area: float, image_size: tuple[int, int], params: Params, device: torch.device) -> Tensor:
        """The `[3, R, R]` patch pasted at `area`."""
        if self.state is not None:
            patch = self.state.patches.get(float(area))
            if patch is None:
                have = ", ".join(area_key(a) for a in sorted(self.state.patches)) or "none"
                raise ValueError(f"perturbation {self.name!r}: no patch was prepared for area {area_key(area)} "
                                 f"(prepared: {have}); prepare it with the suite's severities")
            return patch.to(device)
        if self.adversarial:
            raise ValueError(
                f"perturbation {self.name!r} needs a patch fitted on the model: run it in a suite "
                "(`visionstress run --suite adversarial`, which fits the patches before the loop), load fitted "
                "patches (`--patch-from REPORT`), or build one with `.with_state(PatchState(...))`")
        h, w = image_size
        resolution = texture_resolution(nominal_side(area, h * w, "square"))
        return random_texture(params["content_key"].to(device), resolution)

    def apply(self, batch: Batch, params: Params, level: Any) -> Batch:
        area = check_area(self.name, level)
        images = batch.images
        state = self.state or PatchState(patches={})
        if len(batch) == 0:
            return batch
        texture = self.texture(area, batch.image_size, params, images.device)
        regions, present = patch_regions(batch, state.target_category)
        draws = uniform_field(params["placement_key"].to(images.device), (regions.shape[1], _DRAWS))
        out, coverage = paste_patch(images, texture, draws, regions, present, area, state.shape)
        masks = batch.masks
        if masks is not None:  # pixels under the patch show the patch, not the scene: not scored
            masks = torch.where(coverage >= 0.5, batch.ignore_index, masks)
        return batch.replace(images=out, masks=masks, boxes=_record_occlusion(batch.boxes, coverage))


adversarial_patch = register_perturbation(PatchPerturbation(
    "adversarial_patch",
    "A universal patch fitted on the model under test (prepare phase) to push the true class down, "
    "towards a target class, or to make objects vanish; area = fraction of the image or of each box.",
    adversarial=True,
))
random_patch = register_perturbation(PatchPerturbation(
    "random_patch",
    "The adversarial patch's control: colour noise drawn once per run, with the same shape, area and "
    "(paired) placements; the difference between the two is the attack, not the occlusion.",
    adversarial=False,
))
