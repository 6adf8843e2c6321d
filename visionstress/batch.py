"""The unit of work: a batch of same-shape images with their task targets.

Images are perturbed in pixel space, before any model normalisation, so a `Batch` holds them as
uint8 or float in [0, 1] and every perturbation hands back the same dtype and device it was given.
Targets travel with the images so that geometric perturbations can move them with the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

DEFAULT_IGNORE_INDEX = 255


@dataclass
class ObjectTargets:
    """The objects of one image (detection / instance segmentation).

    `ids` is each object's index in the image's original annotation list, so an evaluator can tell
    which ground-truth objects survived a geometric perturbation; `dropped` counts those that were
    pushed out of frame; `occluded` is the fraction of each box an occlusion perturbation covered.
    `area` is COCO's per-object area (the segment's, not the box's), which decides the small /
    medium / large bin an object is scored in; geometric perturbations keep it in step with the pixels.
    """

    boxes: Tensor  # [N, 4] float32, xyxy in pixels (continuous coordinates, pixel i spans [i, i+1])
    labels: Tensor  # [N] int64
    masks: Tensor | None = None  # [N, H, W] bool
    iscrowd: Tensor | None = None  # [N] bool
    ids: Tensor | None = None  # [N] int64
    occluded: Tensor | None = None  # [N] float32 in [0, 1]
    dropped: int = 0
    area: Tensor | None = None  # [N] float32, COCO 'area' (segment area for instance annotations)

    def __post_init__(self) -> None:
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float32).reshape(-1, 4)
        n = self.boxes.shape[0]
        device = self.boxes.device
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64, device=device).reshape(-1)
        if self.labels.shape[0] != n:
            raise ValueError(f"ObjectTargets: {n} boxes but {self.labels.shape[0]} labels")
        if self.masks is not None:
            self.masks = torch.as_tensor(self.masks, device=device).bool()
            if self.masks.ndim != 3 or self.masks.shape[0] != n:
                raise ValueError(
                    f"ObjectTargets: instance masks must be [N, H, W] with N={n}, got {tuple(self.masks.shape)}"
                )
        if self.iscrowd is not None:
            self.iscrowd = torch.as_tensor(self.iscrowd, device=device).bool().reshape(-1)
        if self.ids is None:
            self.ids = torch.arange(n, device=device)
        if self.occluded is not None:
            self.occluded = torch.as_tensor(self.occluded, dtype=torch.float32, device=device).reshape(-1)
        if self.area is not None:
            self.area = torch.as_tensor(self.area, dtype=torch.float32, device=device).reshape(-1)
            if self.area.shape[0] != n:
                raise ValueError(f"ObjectTargets: {n} boxes but {self.area.shape[0]} areas")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def keep(self, keep: Tensor, dropped: int = 0) -> ObjectTargets:
        """The subset selected by boolean `keep`, adding `dropped` to the out-of-frame count."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[keep]

        return ObjectTargets(
            boxes=self.boxes[keep],
            labels=self.labels[keep],
            masks=pick(self.masks),
            iscrowd=pick(self.iscrowd),
            ids=pick(self.ids),
            occluded=pick(self.occluded),
            dropped=self.dropped + dropped,
            area=pick(self.area),
        )

    def to(self, device: torch.device | str) -> ObjectTargets:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return ObjectTargets(
            boxes=self.boxes.to(device),
            labels=self.labels.to(device),
            masks=move(self.masks),
            iscrowd=move(self.iscrowd),
            ids=move(self.ids),
            occluded=move(self.occluded),
            dropped=self.dropped,
            area=move(self.area),
        )


def _as_object_targets(item: ObjectTargets | Mapping[str, Any]) -> ObjectTargets:
    if isinstance(item, ObjectTargets):
        return item
    if isinstance(item, Mapping):
        unknown = set(item) - {"boxes", "labels", "masks", "iscrowd", "ids", "occluded", "area"}
        if unknown:
            raise ValueError(f"Batch.boxes: unknown keys {sorted(unknown)} in a per-image target dict")
        if "boxes" not in item or "labels" not in item:
            raise ValueError("Batch.boxes: each per-image target needs 'boxes' (xyxy) and 'labels'")
        return ObjectTargets(**item)
    raise TypeError(f"Batch.boxes: expected ObjectTargets or a dict per image, got {type(item).__name__}")


@dataclass
class Batch:
    """Images `[B, C, H, W]` (uint8, or float in [0, 1]) with their sample ids and targets.

    `sample_ids` identify each image across the whole run: every random draw a perturbation makes
    for an image is a function of (seed, perturbation, severity, sample id) only, which is what makes
    results independent of batching and lets one failing sample be replayed alone.
    `params` holds the per-sample parameters the last perturbation drew (for replay).
    """

    images: Tensor
    sample_ids: Tensor | None = None
    labels: Tensor | None = None  # [B] int64 (classification)
    boxes: list[ObjectTargets] | None = None  # one per image (detection)
    masks: Tensor | None = None  # [B, H, W] int64 class indices (semantic segmentation)
    ignore_index: int = DEFAULT_IGNORE_INDEX
    params: dict[str, Tensor] = field(default_factory=dict)
    foreground: Tensor | None = None  # [B, H, W] bool object pixels, for background / cue perturbations

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor):
            raise TypeError(f"Batch.images must be a torch.Tensor, got {type(self.images).__name__}")
        if self.images.ndim != 4:
            raise ValueError(f"Batch.images must be [B, C, H, W], got shape {tuple(self.images.shape)}")
        if not (self.images.dtype == torch.uint8 or self.images.is_floating_point()):
            raise TypeError(f"Batch.images must be uint8 or floating point in [0, 1], got {self.images.dtype}")
        b, _, h, w = self.images.shape
        device = self.images.device
        if self.sample_ids is None:
            self.sample_ids = torch.arange(b, device=device)
        self.sample_ids = torch.as_tensor(self.sample_ids, dtype=torch.int64, device=device).reshape(-1)
        if self.sample_ids.shape[0] != b:
            raise ValueError(f"Batch: {b} images but {self.sample_ids.shape[0]} sample_ids")
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels, dtype=torch.int64, device=device).reshape(-1)
            if self.labels.shape[0] != b:
                raise ValueError(f"Batch: {b} images but {self.labels.shape[0]} labels")
        if self.boxes is not None:
            self.boxes = [_as_object_targets(t) for t in self.boxes]
            if len(self.boxes) != b:
                raise ValueError(f"Batch: {b} images but {len(self.boxes)} per-image box targets")
            for i, t in enumerate(self.boxes):
                if t.masks is not None and tuple(t.masks.shape[1:]) != (h, w):
                    raise ValueError(
                        f"Batch: instance masks of image {i} are {tuple(t.masks.shape[1:])}, images are {(h, w)}"
                    )
        if self.masks is not None:
            self.masks = torch.as_tensor(self.masks, device=device).long()
            if tuple(self.masks.shape) != (b, h, w):
                raise ValueError(f"Batch.masks must be [B, H, W] = {(b, h, w)}, got {tuple(self.masks.shape)}")
        if self.foreground is not None:
            self.foreground = torch.as_tensor(self.foreground, device=device).bool()
            if tuple(self.foreground.shape) != (b, h, w):
                raise ValueError(f"Batch.foreground must be [B, H, W] = {(b, h, w)}, "
                                 f"got {tuple(self.foreground.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    @property
    def target_kinds(self) -> frozenset[str]:
        """Which targets this batch carries: a subset of {'labels', 'boxes', 'instance_masks', 'masks'}."""
        kinds = set()
        if self.labels is not None:
            kinds.add("labels")
        if self.boxes is not None:
            kinds.add("boxes")
            if any(t.masks is not None for t in self.boxes):
                kinds.add("instance_masks")
        if self.masks is not None:
            kinds.add("masks")
        return frozenset(kinds)

    def replace(self, **changes: Any) -> Batch:
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> Batch:
        return self.replace(
            images=self.images.to(device),
            sample_ids=self.sample_ids.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            boxes=None if self.boxes is None else [t.to(device) for t in self.boxes],
            masks=None if self.masks is None else self.masks.to(device),
            params={k: v.to(device) for k, v in self.params.items()},
            foreground=None if self.foreground is None else self.foreground.to(device),
        )

    def select(self, index: Sequence[int] | Tensor | slice) -> Batch:
        """The samples at `index`, keeping their sample ids (and hence their random draws)."""
        if isinstance(index, slice):
            index = range(len(self))[index]
        idx = torch.as_tensor(list(index) if not isinstance(index, Tensor) else index, dtype=torch.int64)
        dev_idx = idx.to(self.images.device)
        return Batch(
            images=self.images[dev_idx],
            sample_ids=self.sample_ids[dev_idx],
            labels=None if self.labels is None else self.labels[dev_idx],
            boxes=None if self.boxes is None else [self.boxes[int(i)] for i in idx],
            masks=None if self.masks is None else self.masks[dev_idx],
            ignore_index=self.ignore_index,
            params={k: v[dev_idx] for k, v in self.params.items()},
            foreground=None if self.foreground is None else self.foreground[dev_idx],
        )
