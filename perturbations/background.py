"""Background swaps: does the model read the object, or the scene around it?

The variants and their names are those of the Backgrounds Challenge (Xiao et al. 2020, "Noise or
Signal: The Role of Image Backgrounds in Object Recognition"), so results read the same, but built on
the user's own data and object masks (visionstress.foreground):

- `only_fg`: the background replaced by a constant grey;
- `no_fg`: the object removed, its pixels filled by OpenCV inpainting;
- `only_bg_t`: the object's bounding box filled with tiles of the image's own background;
- `mixed_same` / `mixed_rand` / `mixed_next`: the object pasted, in place, onto the background of another
  image of the same class / of any class / of the next class.

Donor backgrounds come from a bank collected in the prepare phase (`BackgroundBank`): every donor's own
objects are inpainted out first, so a pasted object is the only object in the picture. Donors are drawn
with the per-sample randomness (a function of seed, perturbation, severity and sample id), and the bank's
members are chosen by a hash of their sample id, never by arrival order, so a sample gets the same
donor whatever the batching, sharding or loader order.

Targets follow the pixels: the pasted object keeps its boxes and masks; the removal variants remove the
objects from the targets (counted as dropped); semantic masks label synthetic background with the
background class (the ignore index when there are several background classes, since which one is there
cannot be known). `mask_dilation` grows the object mask before compositing: with it, a halo of the
object's original surroundings travels with the object, which tests whether a model reads the
immediate context.

Each variant has one level; until the registry takes single-level perturbations its table repeats that
level five times, and severity 1 is the one to run (the presets do).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from visionstress.batch import Batch
from visionstress.rng import SampleRNG, sample_keys

from .registry import ALL_TARGETS, Params, Perturbation, PrepareContext, register_perturbation

BANK_FILE = "background_bank.safetensors"
BANK_CAPACITY = 512
"""Backgrounds kept in the bank (at least 2 per class): memory stays bounded whatever the dataset size."""
BANK_MAX_SIDE = 320
"""Bank backgrounds are stored with their longer side at most this many pixels, and resized to each
target image when pasted."""
BANK_DILATION = 2
"""Pixels by which a donor's object mask is grown before it is inpainted out: mask edges are rarely
exact, and a rim of the donor's object left in its background would be a second object."""
INPAINT_RADIUS = 3.0
TEXTURE_MIN_SIDE = 5
"""Smallest texture patch (pixels) worth cutting from an object; smaller objects give no texture."""
TEXTURE_MAX_SIDE = 96
GREY = 0.5
# --- which pixels, which class ----------------------------------------------------------------------------

def dilate(mask: Tensor, radius: int) -> Tensor:
    """bool `[B, H, W]` grown by a disc of `radius` pixels (0: unchanged)."""
    if radius <= 0:
        return mask
    r = int(radius)
    ys, xs = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disc = ((ys ** 2 + xs ** 2) <= r * r).float().to(mask.device)
    grown = F.conv2d(mask[:, None].float(), disc[None, None], padding=r)
    return grown[:, 0] > 0.5


def image_classes(batch: Batch) -> Tensor:
    """One class per image `[B]` (-1 when it has none), for choosing same-class and next-class donors.

    Classification: the label. Detection: the category of the largest non-crowd object. Segmentation:
    the most frequent class among the foreground pixels.
    """
    b = len(batch)
    device = batch.images.device
    if batch.labels is not None:
        return batch.labels.to(device)
    out = torch.full((b,), -1, dtype=torch.int64, device=device)
    if batch.boxes is not None:
        for i, t in enumerate(batch.boxes):
            keep = torch.ones(len(t), dtype=torch.bool) if t.iscrowd is None else ~t.iscrowd.cpu()
            if keep.any():
                boxes = t.boxes.cpu()[keep]
                area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                out[i] = int(t.labels.cpu()[keep][int(area.argmax())])
        return out
    if batch.masks is not None and batch.foreground is not None:
        for i in range(b):
            values = batch.masks[i][batch.foreground[i]]
            if values.numel():
                out[i] = int(torch.bincount(values).argmax())
    return out


def with_void_outline(region: Tensor, masks: Tensor | None, ignore_index: int) -> Tensor:
    """`region` (bool `[B, H, W]`) plus the ignore-index pixels connected to it. VOC-style masks draw the
    ignore index along every object's outline; an object removed without that band leaves its outline,
    which inpainting grows back into a ghost of the object while the targets say background."""
    if masks is None:
        return region
    void = masks.to(region.device) == ignore_index
    if not void.any():
        return region
    touching = dilate(region, 1)
    out = region.clone()
    for i in range(region.shape[0]):
        for pixels, *_ in _components(void[i]):
            if (pixels & touching[i]).any():
                out[i] |= pixels
    return out


def fill_label(background_classes: Sequence[int], ignore_index: int) -> int:
    """The semantic label of synthetic background: the background class if there is one, else the ignore
    index (with several background classes, which one a grey or inpainted patch is cannot be known)."""
    return int(background_classes[0]) if len(background_classes) == 1 else int(ignore_index)


# --- the bank ---------------------------------------------------------------------------------------------

@dataclass
class BackgroundBank:
    """Donor backgrounds (objects inpainted out) and object textures, collected before the loop.

    Members are sorted by sample id. `labels` (segmentation) holds each background's class map with
    the inpainted object region labelled `fill_label`. `texture_scale` is each texture patch's side
    relative to its image's shorter side, so a texture keeps its scale on images of other sizes.
    `empty` lists the sample ids whose foreground was empty (their background passes are skipped).
    """

    sample_ids: Tensor
    classes: Tensor
    backgrounds: list[Tensor]  # uint8 [3, h, w]
    labels: list[Tensor] | None
    texture_ids: Tensor
    texture_classes: Tensor
    textures: list[Tensor]  # uint8 [3, s, s]
    texture_scale: Tensor
    empty: Tensor
    images: int
    settings: dict[str, Any] = field(default_factory=dict)
    _devices: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts for the scorecard, with the members (so donors can be traced and recomputed)."""
        return {
            "images": self.images,
            "empty_foreground": int(self.empty.numel()),
            "backgrounds": len(self),
            "background_classes": sorted(set(self.classes.tolist())),
            "textures": int(self.texture_ids.numel()),
            "texture_classes": sorted(set(self.texture_classes.tolist())),
            "settings": dict(self.settings),
            "members": {"sample_ids": self.sample_ids.tolist(), "classes": self.classes.tolist()},
            "texture_members": {"sample_ids": self.texture_ids.tolist(), "classes": self.texture_classes.tolist()},
        }

    def on(self, device: torch.device) -> dict[str, Any]:
        """The bank's tensors on `device`, moved once and kept."""
        key = str(device)
        if key not in self._devices:
            self._devices[key] = {
                "sample_ids": self.sample_ids.to(device), "classes": self.classes.to(device),
                "backgrounds": [t.to(device) for t in self.backgrounds],
                "labels": None if self.labels is None else [t.to(device) for t in self.labels],
                "texture_ids": self.texture_ids.to(device), "texture_classes": self.texture_classes.to(device),
                "textures": [t.to(device) for t in self.textures], "texture_scale": self.texture_scale.to(device),
            }
        return self._devices[key]

    def save(self, path: str | Path) -> None:
        """One safetensors file (plain tensors + JSON metadata: loads without unpickling anything)."""
        from safetensors.torch import save_file

        tensors = {"sample_ids": self.sample_ids, "classes": self.classes, "texture_ids": self.texture_ids,
                   "texture_classes": self.texture_classes, "texture_scale": self.texture_scale, "empty": self.empty}
        tensors.update({f"background.{i}": t.contiguous() for i, t in enumerate(self.backgrounds)})
        tensors.update({f"texture.{i}": t.contiguous() for i, t in enumerate(self.textures)})
        if self.labels is not None:
            tensors.update({f"labels.{i}": t.contiguous() for i, t in enumerate(self.labels)})
        meta = {"images": str(self.images), "settings": json.dumps(self.settings),
                "has_labels": str(self.labels is not None)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> BackgroundBank:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
            n, m = int(t["sample_ids"].numel()), int(t["texture_ids"].numel())
            return cls(sample_ids=t["sample_ids"], classes=t["classes"],
                       backgrounds=[t[f"background.{i}"] for i in range(n)],
                       labels=[t[f"labels.{i}"] for i in range(n)] if meta.get("has_labels") == "True" else None,
                       texture_ids=t["texture_ids"], texture_classes=t["texture_classes"],
                       textures=[t[f"texture.{i}"] for i in range(m)], texture_scale=t["texture_scale"],
                       empty=t["empty"], images=int(meta.get("images", 0)),
                       settings=json.loads(meta.get("settings", "{}")))
        except (OSError, SafetensorError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable background bank ({exc}); delete it to collect a new one") from None


def _inpaint(image: np.ndarray, mask: np.ndarray, radius: float = INPAINT_RADIUS) -> np.ndarray:
    """`image` (uint8 HWC RGB) with the `mask` pixels filled by OpenCV's Telea inpainting."""
    import cv2

    if not mask.any():
        return image
    return cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8), radius, cv2.INPAINT_TELEA)


def _texture_patch(image: Tensor, foreground: Tensor) -> tuple[Tensor, float] | None:
    """The largest square of object pixels (uint8 `[3, s, s]`, at most TEXTURE_MAX_SIDE) and its side relative
    to the image's shorter side, or None when the object holds no square of TEXTURE_MIN_SIDE pixels."""
    import cv2

    fg = foreground.numpy().astype(np.uint8)
    distance = cv2.distanceTransform(np.pad(fg, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    half = int(math.floor(float(distance[y, x]) / math.sqrt(2.0)))
    while half > 0 and not fg[max(0, y - half):y + half + 1, max(0, x - half):x + half + 1].all():
        half -= 1
    side = 2 * half + 1
    if side < TEXTURE_MIN_SIDE or y - half < 0 or x - half < 0:
        return None
    patch = image[:, y - half:y + half + 1, x - half:x + half + 1]
    if side > TEXTURE_MAX_SIDE:
        patch = _resize(patch, (TEXTURE_MAX_SIDE, TEXTURE_MAX_SIDE)).round().clamp(0, 255).to(torch.uint8)
    return patch.contiguous(), side / min(image.shape[-2:])


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    """float `[C, H, W]` resized (bilinear, antialiased), in the input's value range."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.float()
    return F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()


def _bank_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, BANK_MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _member_hash(seed: int, sample_ids: Tensor) -> list[int]:
    return sample_keys(seed, "background_bank", 0, sample_ids.cpu()).tolist()


class _BottomK:
    """The k members of each class with the smallest (hash, sample id): a choice that does not depend on
    the order samples arrive in. `build` is called only for samples that currently make the cut."""

    def __init__(self, per_class: int) -> None:
        self.per_class = per_class
        self.members: dict[int, dict[tuple[int, int], Any]] = {}

    def offer(self, cls: int, key: tuple[int, int], build: Callable[[], Any]) -> None:
        kept = self.members.setdefault(cls, {})
        if len(kept) >= self.per_class:
            worst = max(kept)
            if key >= worst:
                return
            value = build()
            if value is None:
                return
            del kept[worst]
        else:
            value = build()
            if value is None:
                return
        kept[key] = value

    def sorted_items(self) -> list[tuple[int, int, Any]]:
        """(sample id, class, value) by sample id."""
        items = [(key[1], cls, value) for cls, kept in self.members.items() for key, value in kept.items()]
        return sorted(items, key=lambda item: item[0])


def collect_bank(batches: Iterable[Batch], *, seed: int = 0, num_classes: int = 0,
                 background_classes: Sequence[int] = (0,), capacity: int = BANK_CAPACITY,
                 log: Callable[[str], None] | None = None) -> BackgroundBank:
    """One pass over `batches` (host Batches carrying `foreground`): the donor backgrounds and textures.

    Per class, the `capacity / num_classes` (at least 2) members with the smallest hash of (seed, sample
    id) are kept. A donor's background is its image with the (grown) object mask inpainted out, stored with
    its longer side at most BANK_MAX_SIDE. Its texture is the largest square inside its object.
    """
    per_class = max(2, math.ceil(capacity / max(1, num_classes)))
    backgrounds, textures = _BottomK(per_class), _BottomK(per_class)
    empty: list[int] = []
    images = 0
    with_labels = False
    for batch in batches:
        if len(batch) == 0:
            continue
        if batch.foreground is None:
            raise ValueError("collecting the background bank needs batches with `foreground` (object masks)")
        batch = batch.to("cpu")
        images += len(batch)
        classes = image_classes(batch).tolist()
        hashes = _member_hash(seed, batch.sample_ids)
        pixels = batch.images if batch.images.dtype == torch.uint8 else (batch.images * 255).round().clamp(0, 255).to(torch.uint8)
        with_labels = with_labels or batch.masks is not None
        fill = fill_label(background_classes, batch.ignore_index)
        removed = with_void_outline(batch.foreground, batch.masks, batch.ignore_index)
        for i, sample_id in enumerate(batch.sample_ids.tolist()):
            foreground = batch.foreground[i]
            if not foreground.any():
                empty.append(sample_id)
                continue
            key = (hashes[i], sample_id)
            image = pixels[i, :3]

            def background(i: int = i, image: Tensor = image, foreground: Tensor = removed[i]) -> Any:
                size = _bank_size(*image.shape[-2:])
                small = _resize(image, size).round().clamp(0, 255).to(torch.uint8)
                mask = _resize(foreground[None].float(), size)[0] > 0
                mask = dilate(mask[None], BANK_DILATION)[0]
                filled = _inpaint(small.permute(1, 2, 0).numpy(), mask.numpy())
                labels = None
                if batch.masks is not None:
                    labels = _resize_labels(batch.masks[i], size).masked_fill(mask, fill)
                return torch.from_numpy(np.ascontiguousarray(filled)).permute(2, 0, 1).contiguous(), labels

            backgrounds.offer(classes[i], key, background)
            textures.offer(classes[i], key, lambda image=image, foreground=foreground: _texture_patch(image, foreground))
    members = backgrounds.sorted_items()
    texture_members = textures.sorted_items()
    bank = BackgroundBank(
        sample_ids=torch.tensor([m[0] for m in members], dtype=torch.int64),
        classes=torch.tensor([m[1] for m in members], dtype=torch.int64),
        backgrounds=[m[2][0] for m in members],
        labels=[m[2][1] for m in members] if with_labels else None,
        texture_ids=torch.tensor([m[0] for m in texture_members], dtype=torch.int64),
        texture_classes=torch.tensor([m[1] for m in texture_members], dtype=torch.int64),
        textures=[m[2][0] for m in texture_members],
        texture_scale=torch.tensor([m[2][1] for m in texture_members], dtype=torch.float32),
        empty=torch.tensor(sorted(empty), dtype=torch.int64),
        images=images,
        settings={"seed": int(seed), "capacity": int(capacity), "per_class": per_class,
                  "donor_dilation": BANK_DILATION, "max_side": BANK_MAX_SIDE,
                  "background_classes": [int(c) for c in background_classes]},
    )
    if log is not None:
        log(f"background bank: {len(bank)} backgrounds and {len(bank.textures)} textures from {images} images "
            f"({len(empty)} with an empty foreground, left out of the background passes)")
    return bank


_LATEST: list[tuple[PrepareContext, BackgroundBank]] = []
"""The latest run's context and bank: the run's other perturbations reuse the bank instead of reading the
dataset again."""


def shared_bank(context: PrepareContext) -> BackgroundBank:
    """The run's bank: collected by the first background / cue perturbation prepared with `context` and
    reused by the others prepared with an equal context (same dataset pass, options and state folder).
    Saved as `BANK_FILE` in `context.state_dir`, where `load_prepared` finds it (resume, other ranks)."""
    if _LATEST and _LATEST[0][0] == context:
        return _LATEST[0][1]
    bank = collect_bank(context.batches(), seed=context.seed, num_classes=len(context.class_names),
                        background_classes=_background_classes(context.options), log=context.log)
    bank.save(Path(context.state_dir) / BANK_FILE)
    _LATEST[:] = [(context, bank)]
    return bank


def _background_classes(options: Mapping[str, Any]) -> tuple[int, ...]:
    from visionstress.foreground import parse_background_classes

    return parse_background_classes(options.get("background_classes") or "0")


# --- donors -----------------------------------------------------------------------------------------------

POLICIES = ("same", "rand", "next", "other")


def donor_draw(seed: int, name: str, severity: int, sample_ids: Tensor) -> Tensor:
    """The uniform number `[B]` that picks each sample's donor: a function of (seed, name, severity, id)."""
    return SampleRNG(sample_keys(seed, name, severity, sample_ids)).uniform()


def choose_donors(u: Tensor, sample_ids: Tensor, classes: Tensor, policy: str, member_ids: Tensor,
                  member_classes: Tensor) -> Tensor:
    """Index into the members `[B]` of each sample's donor, picked by `u` among the allowed members.

    `same`: another member of the sample's class; `rand`: any other member; `next`: a member of the next
    class present (in class order, wrapping around); `other`: a member of another class. When a policy
    allows nobody, any other member is used, and when the bank holds only the sample itself, itself.
    """
    if policy not in POLICIES:
        raise ValueError(f"donor policy must be one of {POLICIES}, got {policy!r}")
    if member_ids.numel() == 0:
        raise ValueError("the background bank is empty: no image of the dataset has a non-empty foreground")
    device = member_ids.device
    u, sample_ids, classes = u.to(device), sample_ids.to(device), classes.to(device)
    own = member_ids[None, :] == sample_ids[:, None]
    same_class = member_classes[None, :] == classes[:, None]
    if policy == "rand":
        allowed = ~own
    elif policy == "same":
        allowed = same_class & ~own
    elif policy == "other":
        allowed = ~same_class
    else:
        present = torch.unique(member_classes)  # sorted
        following = present[torch.searchsorted(present, classes, right=True) % present.numel()]
        allowed = (member_classes[None, :] == following[:, None]) & ~own
    fallback = torch.where((~own).any(1, keepdim=True), ~own, torch.ones_like(own))
    allowed = torch.where(allowed.any(1, keepdim=True), allowed, fallback)
    count = allowed.sum(1)
    k = torch.minimum(torch.floor(u * count).long(), count - 1)
    hit = allowed & ((allowed.long().cumsum(1) - 1) == k[:, None])
    return hit.float().argmax(1)


# --- the perturbations ------------------------------------------------------------------------------------

class ForegroundPerturbation(Perturbation):
    """A data-aware perturbation that reads the object mask (`Batch.foreground`).

    `prepare` takes the run's shared `BackgroundBank` (collected once; also the record of which images
    have an empty foreground, whose passes `sample_filter` skips) and the run's `mask_dilation` and
    `background_classes`. Perturbations with `uses_bank` (donors) cannot run unprepared; the others can,
    e.g. on a single image.

    Subclasses implement `kernel(batch, params, level) -> Batch` on float RGB images; `policy` is the
    donor rule of perturbations that take donors.
    """

    kind = "data-aware"
    needs_foreground = True
    uses_bank = False
    policy: str | None = None

    def __init__(self, kernel: Callable[[ForegroundPerturbation, Batch, Params, Any], Batch], *,
                 name: str, family: str, severities: Sequence[Any], description: str,
                 targets: frozenset[str] = ALL_TARGETS, policy: str | None = None, uses_bank: bool = False,
                 version: int = 1) -> None:
        super().__init__(name=name, family=family, severities=severities, description=description, targets=targets,
                         version=version)
        self.kernel = kernel
        self.policy = policy
        self.uses_bank = uses_bank
        self.bank: BackgroundBank | None = None
        self.mask_dilation = 0
        self.background_classes: tuple[int, ...] = (0,)

    def with_bank(self, bank: BackgroundBank | None, *, mask_dilation: int = 0,
                  background_classes: Sequence[int] = (0,)) -> ForegroundPerturbation:
        """A copy using `bank`, growing object masks by `mask_dilation` pixels before compositing."""
        if isinstance(mask_dilation, bool) or int(mask_dilation) != mask_dilation or mask_dilation < 0:
            raise ValueError(f"{self.name}: mask_dilation must be a whole number of pixels >= 0, got {mask_dilation!r}")
        if self.uses_bank and bank is not None and self.policy == "other" and len(set(bank.texture_classes.tolist())) < 2:
            raise ValueError(f"{self.name}: needs object textures of at least two classes, the bank has "
                             f"{sorted(set(bank.texture_classes.tolist())) or 'none'} (objects under "
                             f"{TEXTURE_MIN_SIDE}x{TEXTURE_MIN_SIDE} pixels give no texture)")
        out = copy.copy(self)
        out.bank = bank
        out.mask_dilation = int(mask_dilation)
        out.background_classes = tuple(int(c) for c in background_classes)
        return out

    def prepare(self, context: PrepareContext) -> ForegroundPerturbation:
        return self.with_bank(shared_bank(context), mask_dilation=int(context.options.get("mask_dilation") or 0),
                              background_classes=_background_classes(context.options))

    def load_prepared(self, state_dir: Path, context: PrepareContext) -> ForegroundPerturbation:
        return self.with_bank(BackgroundBank.load(Path(state_dir) / BANK_FILE),
                              mask_dilation=int(context.options.get("mask_dilation") or 0),
                              background_classes=_background_classes(context.options))

    def prepared_summary(self) -> dict[str, Any]:
        if self.bank is None:
            return {}
        return {**self.bank.summary(), "mask_dilation": self.mask_dilation}

    def sample_filter(self, sample_ids: Tensor) -> Tensor | None:
        """Images with an empty foreground are left out (the bank counted them)."""
        if self.bank is None or self.bank.empty.numel() == 0:
            return None
        return ~torch.isin(sample_ids, self.bank.empty.to(sample_ids.device))

    def _check(self, batch: Batch) -> None:
        if batch.foreground is None:
            raise ValueError(f"perturbation {self.name!r} needs object masks (Batch.foreground): give the run "
                             "--masks (classification); detection and segmentation take them from their annotations")
        if self.uses_bank and self.bank is None:
            raise ValueError(f"perturbation {self.name!r} takes donors from a background bank: prepare it first "
                             "(a run does; in code, p.with_bank(collect_bank(batches)))")

    def sample_params(self, batch: Batch, severity: int, seed: int = 0) -> Params:
        self._check(batch)
        if not self.uses_bank:
            return {}
        u = donor_draw(seed, self.name, severity, batch.sample_ids)
        members = self.bank.on(batch.images.device)
        ids, classes = ((members["texture_ids"], members["texture_classes"]) if self.policy == "other"
                        else (members["sample_ids"], members["classes"]))
        return {"donor": choose_donors(u, batch.sample_ids, image_classes(batch), self.policy, ids, classes)}

    def apply(self, batch: Batch, params: Params, level: Any) -> Batch:
        self._check(batch)
        return self.kernel(self, batch, params, level)


def _removed_targets(p: ForegroundPerturbation, batch: Batch, region: Tensor) -> dict[str, Any]:
    """Targets once the objects are gone: no boxes (counted as dropped), background labels, no foreground."""
    boxes = None
    if batch.boxes is not None:
        boxes = [t.keep(torch.zeros(len(t), dtype=torch.bool, device=t.boxes.device), dropped=len(t))
                 for t in batch.boxes]
    masks = None
    if batch.masks is not None:
        masks = batch.masks.masked_fill(region, fill_label(p.background_classes, batch.ignore_index))
    return {"boxes": boxes, "masks": masks, "foreground": torch.zeros_like(batch.foreground)}


def _only_fg(p: ForegroundPerturbation, batch: Batch, params: Params, level: float) -> Batch:
    region = dilate(batch.foreground, p.mask_dilation)
    images = torch.where(region[:, None], batch.images, torch.full_like(batch.images, float(level)))
    masks = None
    if batch.masks is not None:
        masks = torch.where(region, batch.masks, fill_label(p.background_classes, batch.ignore_index))
    return batch.replace(images=images, masks=masks)


def _no_fg(p: ForegroundPerturbation, batch: Batch, params: Params, level: float) -> Batch:
    region = with_void_outline(dilate(batch.foreground, p.mask_dilation), batch.masks, batch.ignore_index)
    pixels = (batch.images.cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    holes = region.cpu().numpy()
    filled = np.stack([_inpaint(pixels[i], holes[i], float(level)) for i in range(len(batch))])
    filled = torch.from_numpy(filled).to(batch.images.device).permute(0, 3, 1, 2).float() / 255.0
    images = torch.where(region[:, None], filled, batch.images)
    return batch.replace(images=images, **_removed_targets(p, batch, region))


_TILE_RINGS = 2  # offsets of up to two object-box sizes in each direction


def _components(mask: Tensor) -> list[tuple[Tensor, int, int, int, int]]:
    """The 8-connected components of `mask` `[H, W]`: (pixels, x, y, width, height) each."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.cpu().numpy().astype(np.uint8), connectivity=8)
    labels = torch.from_numpy(labels).to(mask.device)
    return [(labels == k, *(int(v) for v in stats[k, :4])) for k in range(1, count)]


def object_boxes(mask: Tensor) -> Tensor:
    """bool `[B, H, W]`: the bounding box of every connected part of each image's `mask`, filled."""
    out = torch.zeros_like(mask)
    for i in range(mask.shape[0]):
        for _, x, y, w, h in _components(mask[i]):
            out[i, y:y + h, x:x + w] = True
    return out


def tile_fill(images: Tensor, region: Tensor) -> Tensor:
    """`images` with the `region` pixels filled by tiles of the image's own background.

    Each connected part of the region is filled from its bounding box shifted by whole box sizes: a pixel
    copies the pixel one box away (above, left, right, below, then the diagonals, then two boxes away),
    reflected at the image border, taking the first copy that is background. Pixels with no background
    copy (objects filling the frame) get the mean background colour, grey without any.
    """
    b, c, h, w = images.shape
    device = images.device
    out = images.clone()
    ys = torch.arange(h, device=device)[:, None].expand(h, w)
    xs = torch.arange(w, device=device)[None, :].expand(h, w)
    offsets = sorted(((dy, dx) for dy in range(-_TILE_RINGS, _TILE_RINGS + 1)
                      for dx in range(-_TILE_RINGS, _TILE_RINGS + 1) if (dy, dx) != (0, 0)),
                     key=lambda o: (max(abs(o[0]), abs(o[1])), abs(o[0]) + abs(o[1]), o))
    for i in range(b):
        hole = region[i]
        flat = images[i].reshape(c, -1)
        for todo, _, _, tw, th in _components(hole):
            for dy, dx in offsets:
                sy, sx = _reflect(ys + dy * th, h), _reflect(xs + dx * tw, w)
                usable = todo & ~hole[sy, sx]
                if usable.any():
                    out[i][:, usable] = flat[:, (sy * w + sx)[usable]]
                    todo &= ~usable
                if not todo.any():
                    break
            if todo.any():
                background = ~hole
                colour = images[i][:, background].mean(1) if background.any() else torch.full((c,), GREY, device=device)
                out[i][:, todo] = colour[:, None]
    return out


def _reflect(index: Tensor, n: int) -> Tensor:
    """Indices mirrored into [0, n) (the edge pixel repeated: ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...)."""
    period = 2 * n
    index = index % period
    return torch.where(index >= n, period - 1 - index, index)


def _only_bg_t(p: ForegroundPerturbation, batch: Batch, params: Params, level: Any) -> Batch:
    """The objects' bounding boxes, not their masks, are filled (as the reference's Only-BG-T): a filled mask
    would still show the object's outline."""
    region = object_boxes(with_void_outline(dilate(batch.foreground, p.mask_dilation), batch.masks,
                                            batch.ignore_index))
    return batch.replace(images=tile_fill(batch.images, region), **_removed_targets(p, batch, region))


def _mixed(p: ForegroundPerturbation, batch: Batch, params: Params, level: Any) -> Batch:
    members = p.bank.on(batch.images.device)
    size = batch.image_size
    donors = params["donor"].tolist()
    backgrounds = torch.stack([_resize(members["backgrounds"][d], size) / 255.0 for d in donors])
    region = dilate(batch.foreground, p.mask_dilation)
    images = torch.where(region[:, None], batch.images, backgrounds)
    masks = None
    if batch.masks is not None:
        if members["labels"] is not None:
            donor_labels = torch.stack([_resize_labels(members["labels"][d], size) for d in donors])
        else:
            donor_labels = torch.full_like(batch.masks, fill_label(p.background_classes, batch.ignore_index))
        masks = torch.where(region, batch.masks, donor_labels)
    return batch.replace(images=images, masks=masks)


def _register(kernel: Callable, name: str, level: Any, description: str, **kwargs: Any) -> ForegroundPerturbation:
    return register_perturbation(ForegroundPerturbation(kernel, name=name, family="background",
                                                        severities=(level,), description=description,
                                                        **kwargs))


_register(_only_fg, "only_fg", GREY, "Only the object: the background replaced by constant grey (Xiao et al. "
          "2020's Only-FG). One level.")
_register(_no_fg, "no_fg", INPAINT_RADIUS, "No object: its pixels filled by OpenCV inpainting (radius in pixels); "
          "objects leave the targets. One level.",
          version=2)  # 2: a void (ignore-index) outline connected to the object leaves with it
_register(_only_bg_t, "only_bg_t", "tiled background", "Only background: the object's bounding box filled with tiles "
          "of the image's own background (Xiao et al.'s Only-BG-T); objects leave the targets. One level.",
          version=2)  # 2: the box covers the void outline connected to the object
_register(_mixed, "mixed_same", "same class", "The object pasted onto the background of another image of the same "
          "class (donor objects inpainted out). One level.", policy="same", uses_bank=True,
          version=2)  # 2: donors' void outlines are inpainted with their objects
_register(_mixed, "mixed_rand", "random class", "The object pasted onto the background of a random image. One level.",
          policy="rand", uses_bank=True, version=2)
_register(_mixed, "mixed_next", "next class", "The object pasted onto the background of an image of the next class. "
          "One level.", policy="next", uses_bank=True, version=2)

BACKGROUND_VARIANTS = ("only_fg", "no_fg", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")

