"""Albumentations transforms as registered perturbations.

`albumentations_perturbation` wraps five albumentations transforms (one per severity) into a
Perturbation. Albumentations works on one HWC numpy image at a time, so this adapter loops over the
batch on the CPU: it is much slower than the native torch kernels and is meant for effects the
catalogue lacks. Determinism follows DESIGN §3: each sample gets an integer seed drawn from its own
key, and the albumentations pipeline is re-seeded with it before that image, so an image is perturbed
identically alone or in any batch. Boxes (pascal_voc), instance masks (`masks`) and the semantic mask
(`mask`) go through albumentations' own target handling; boxes it removes are counted in
`ObjectTargets.dropped`.

The built-in perturbations made this way live in their families' modules (`rain` in weather,
`iso_noise` in camera).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from visionstress.batch import Batch, ObjectTargets
from visionstress.rng import SampleRNG

from ._warp import box_area, safe_ratio
from .registry import ALL_TARGETS, Perturbation, register_perturbation

_SEED_HIGH = 2**31 - 1


def _require_albumentations() -> Any:
    # albumentations asks the network for a newer release on import; a test harness must not phone
    # home (and CI machines have no network), so opt out unless the user has decided otherwise.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import albumentations
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "albumentations perturbations need the albumentations package (>= 2.0): "
            "pip install 'albumentations>=2'"
        ) from error
    return albumentations


def optional_albumentations() -> Any | None:
    """The albumentations module, or None where it is not installed (the built-in perturbations made
    from it, `rain` and `iso_noise`, are then simply absent)."""
    try:
        return _require_albumentations()
    except ImportError:  # pragma: no cover - depends on the environment
        return None


def _image_back(image: np.ndarray, size: tuple[int, int], name: str) -> Tensor:
    """An albumentations result (HWC or HW, uint8 or float in [0, 1]) as float32 `[3, H, W]`."""
    if image.shape[:2] != size:
        raise ValueError(
            f"perturbation {name!r}: the albumentations transform changed the image size from {size} to "
            f"{image.shape[:2]}; only size-preserving transforms can be wrapped"
        )
    x = torch.from_numpy(np.ascontiguousarray(image))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.ndim == 2:
        x = x[..., None]
    return x.permute(2, 0, 1).expand(3, -1, -1) if x.shape[-1] == 1 else x.permute(2, 0, 1)[:3]


def _sample_seed(rng: SampleRNG, level: Any, batch: Batch) -> dict[str, Tensor]:
    return {"seed": rng.integers(0, _SEED_HIGH)}


class AlbumentationsPerturbation(Perturbation):
    """A perturbation whose severity levels are albumentations transforms, applied image by image.

    Each transform runs inside an `A.Compose` (with pascal_voc box handling) that is re-seeded per
    image. Transforms keep their own `p`: give them `p=1` for a perturbation that always applies.
    Images reach albumentations as HWC uint8 RGB (the dtype every albumentations transform accepts).
    """

    def __init__(self, name: str, family: str, transforms: Sequence[Any], description: str,
                 kind: str = "photometric", min_visibility: float = 0.0, version: int = 1) -> None:
        albumentations = _require_albumentations()
        if kind not in ("photometric", "geometric"):
            raise ValueError(
                f"perturbation {name!r}: an albumentations perturbation is photometric or geometric, got {kind!r}"
            )
        super().__init__(name=name, family=family, severities=tuple(transforms), description=description,
                         sample=_sample_seed, targets=ALL_TARGETS, kind=kind, version=version)
        bbox_params = albumentations.BboxParams(format="pascal_voc", label_fields=["box_index"], clip=True,
                                                filter_invalid_bboxes=True, min_visibility=min_visibility)
        # Photometric transforms pass targets through untouched, so only geometric ones get box handling.
        geometric = kind == "geometric"
        self._pipelines = [albumentations.Compose([t], bbox_params=bbox_params if geometric else None)
                           for t in transforms]

    def _pipeline(self, level: Any) -> Any:
        for transform, pipeline in zip(self.severities, self._pipelines):
            if transform is level:
                return pipeline
        raise ValueError(f"perturbation {self.name!r}: {level!r} is not one of its severity transforms")

    def _run(self, pipeline: Any, data: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
        """The pipeline on one image; albumentations' own failures (a transform that needs a bigger image)
        become an error naming the perturbation and the image size."""
        try:
            return pipeline(**data)
        except (ValueError, IndexError) as exc:
            raise ValueError(f"perturbation {self.name!r}: albumentations "
                             f"{type(pipeline.transforms[0]).__name__} failed on a {size[0]}x{size[1]} image "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc

    def apply(self, batch: Batch, params: dict[str, Tensor], level: Any) -> Batch:
        pipeline = self._pipeline(level)
        images = batch.images
        device = images.device
        b, _, h, w = images.shape
        pixels = (images.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        seeds = params["seed"].reshape(-1).tolist()
        semantic = None if batch.masks is None else batch.masks.cpu().numpy()
        semantic_fits_uint8 = semantic is not None and semantic.min() >= 0 and semantic.max() <= 255
        out_images, out_masks, out_boxes = [], [], []
        for i in range(b):
            data: dict[str, Any] = {"image": np.ascontiguousarray(pixels[i])}
            if self.kind != "geometric":
                pipeline.set_random_seed(int(seeds[i]))
                out_images.append(_image_back(self._run(pipeline, data, (h, w))["image"], (h, w), self.name))
                continue
            if semantic is not None:
                # uint8 when it fits; otherwise float32, exact for class indices below 2**24.
                data["mask"] = semantic[i].astype(np.uint8 if semantic_fits_uint8 else np.float32)
            targets = None if batch.boxes is None else batch.boxes[i]
            if targets is not None:
                data["bboxes"] = targets.boxes.cpu().numpy().astype(np.float32).reshape(-1, 4)
                data["box_index"] = np.arange(len(targets))
                if targets.masks is not None and len(targets):
                    data["masks"] = [m for m in targets.masks.cpu().numpy().astype(np.uint8)]
            else:
                data["bboxes"] = np.zeros((0, 4), dtype=np.float32)
                data["box_index"] = np.zeros((0,), dtype=np.int64)
            if semantic is not None:
                # A validity plane rides along with the instance masks: where the transform brought in
                # area from outside the image, the semantic mask gets the ignore index (as apply_warp does).
                data["masks"] = [*data.get("masks", []), np.ones((h, w), dtype=np.uint8)]
            pipeline.set_random_seed(int(seeds[i]))
            result = self._run(pipeline, data, (h, w))
            out_images.append(_image_back(result["image"], (h, w), self.name))
            if semantic is not None:  # geometric only: photometric ones `continue` above
                *instance, valid = result["masks"]
                result["masks"] = instance
                moved = np.rint(np.asarray(result["mask"], dtype=np.float64)).astype(np.int64)
                out_masks.append(torch.from_numpy(np.where(np.asarray(valid) > 0, moved, batch.ignore_index)))
            if targets is not None:
                out_boxes.append(self._targets_back(targets, result, (h, w)))
        new_images = torch.stack(out_images).to(device)
        if self.kind != "geometric":
            return batch.replace(images=new_images.contiguous())
        new_masks = None if semantic is None else torch.stack(out_masks).to(device)
        return batch.replace(images=new_images.contiguous(), masks=new_masks,
                             boxes=None if batch.boxes is None else out_boxes)

    @staticmethod
    def _targets_back(targets: ObjectTargets, result: dict[str, Any], size: tuple[int, int]) -> ObjectTargets:
        device = targets.boxes.device
        index = torch.as_tensor(np.asarray(result["box_index"], dtype=np.int64).reshape(-1), device=device)
        boxes = torch.as_tensor(np.asarray(result["bboxes"], dtype=np.float32).reshape(-1, 4), device=device)
        kept = torch.zeros(len(targets), dtype=torch.bool, device=device)
        kept[index] = True
        survivors = targets.keep(kept, dropped=len(targets) - int(index.numel()))
        order = torch.argsort(index)  # albumentations keeps the input order; sort to be sure
        masks = survivors.masks
        if targets.masks is not None:
            given = result.get("masks", [])
            moved = np.stack([np.asarray(m) for m in given]) if len(given) else np.zeros((0, *size), dtype=np.uint8)
            masks = torch.as_tensor(moved, device=device).bool()[index[order]]
        area = survivors.area
        if area is not None:  # as apply_warp does: the mask's pixels, else scaled with the box
            area = (masks.flatten(1).sum(dim=1).float() if masks is not None
                    else area * safe_ratio(box_area(boxes[order]), box_area(survivors.boxes)))
        return ObjectTargets(boxes=boxes[order], labels=survivors.labels, masks=masks, iscrowd=survivors.iscrowd,
                             ids=survivors.ids, occluded=survivors.occluded, dropped=survivors.dropped, area=area)


def albumentations_perturbation(name: str, family: str, transforms: Sequence[Any], description: str,
                                kind: str = "photometric", register: bool = True,
                                version: int = 1) -> AlbumentationsPerturbation:
    """Build (and by default register) a perturbation from five albumentations transforms, mildest first.

    `kind` is "photometric" for pixel-only transforms or "geometric" for spatial ones (boxes, instance
    masks and the semantic mask are then moved by albumentations). `version` is the implementation
    version (bump it when the transforms change). Raises ImportError with install instructions when
    albumentations is missing.
    """
    perturbation = AlbumentationsPerturbation(name, family, transforms, description, kind=kind, version=version)
    return register_perturbation(perturbation) if register else perturbation
