"""Object masks ("foreground") for the background and cue perturbations, from what a user already has.

Background swaps and shape probes must know which pixels are the object. Nobody should have to draw
masks for that, so each task takes them from its own annotations:

- classification: a folder of mask PNGs, one per image with the image's stem (non-zero = object);
- detection: the COCO instance masks (polygons / RLE) where an annotation has one, else OpenCV's
  GrabCut initialised with the box, cached on disk by image content;
- segmentation: every pixel whose class is not a background class (and not the ignore index).

Masks are checked like segmentation masks: a missing or unreadable mask file, or one whose size
differs from its image, is an error naming the file. An image whose foreground is empty is not an
error: the background perturbations record it and leave it out of their passes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
"""Lossless formats only: a JPEG mask's compression noise would turn background pixels into object."""
_SHOWN = 5


class ForegroundError(ValueError):
    """Object masks that cannot be used; the message names the file or option and the problem."""


# --- classification: a folder of masks ----------------------------------------------------------------

def pair_masks(image_paths: Sequence[str | Path], masks: str | Path,
               unreadable: Callable[[Path], bool] | None = None) -> list[Path | None]:
    """The mask file of each image: `masks/<class folder>/<stem>.<ext>` or `masks/<stem>.<ext>`.

    A stem shared by several masks is resolved by the image's parent folder name (ImageFolder class
    folders); images without a mask, or with an ambiguous one, are an error listing them, raised before
    any work starts, except an image without a mask that `unreadable(path)` says the run will skip
    anyway (a corrupt file): its mask is None.
    """
    root = Path(masks)
    if not root.is_dir():
        raise ForegroundError(f"--masks {root}: masks folder not found")
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix.lower() in MASK_EXTENSIONS and path.is_file() and not any(p.startswith(".") for p in rel.parts):
            by_stem[path.stem].append(path)
    paired, missing, ambiguous = [], [], []
    for image in map(Path, image_paths):
        candidates = by_stem.get(image.stem, [])
        if len(candidates) > 1:
            candidates = [c for c in candidates if c.parent.name == image.parent.name] or candidates
        if not candidates and unreadable is not None and unreadable(image):
            paired.append(None)
        elif not candidates:
            missing.append(str(image))
        elif len(candidates) > 1:
            ambiguous.append(f"{image} ({', '.join(str(c) for c in candidates[:3])})")
        else:
            paired.append(candidates[0])
    if missing:
        raise ForegroundError(f"--masks {root}: {len(missing)} image(s) have no mask (a PNG with the image's stem): "
                              f"{', '.join(missing[:_SHOWN])}{' ...' if len(missing) > _SHOWN else ''}")
    if ambiguous:
        raise ForegroundError(f"--masks {root}: several masks match these images; keep one per stem or put them in "
                              f"class folders: {'; '.join(ambiguous[:_SHOWN])}")
    return paired


def read_foreground_mask(path: str | Path, size: tuple[int, int] | None = None) -> Tensor:
    """bool `[H, W]`: non-zero pixels are the object; for images with transparency, opaque pixels are.

    EXIF orientation is applied, as to the image. `size` (height, width) is the decoded image's size:
    a mask of another size is an error naming both files' sizes.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                array = np.asarray(img.convert("RGBA"))[..., 3]
            else:
                array = np.asarray(img)
    except FileNotFoundError:
        raise ForegroundError(f"{path}: mask file not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ForegroundError(f"{path}: not a readable mask image ({exc})") from None
    mask = array != 0
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    if size is not None and tuple(mask.shape) != tuple(size):
        raise ForegroundError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]} "
                              "(width x height); masks must have their image's size")
    return torch.from_numpy(np.ascontiguousarray(mask))


# --- segmentation: class masks -------------------------------------------------------------------------

def parse_background_classes(text: str | Sequence[int], num_classes: int | None = None) -> tuple[int, ...]:
    """`"0"` or `"0,3"` as class indices; with `num_classes`, indices outside the classes are an error.
    Messages say what is wrong with the value; the caller names the option."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or not all(re.fullmatch(r"\d+", p) for p in parts):
            raise ForegroundError("expected comma-separated class indices, e.g. 0 or 0,3")
        values = tuple(int(p) for p in parts)
    else:
        values = tuple(int(v) for v in text)
    if num_classes is not None:
        bad = [v for v in values if v >= num_classes]
        if bad:
            raise ForegroundError(f"{bad} are not class indices (the dataset has classes 0..{num_classes - 1})")
    return tuple(dict.fromkeys(values))


def segmentation_foreground(masks: Tensor, background_classes: Sequence[int], ignore_index: int) -> Tensor:
    """bool, the shape of `masks`: pixels of a class that is not background; the ignore index never is."""
    background = torch.as_tensor(list(background_classes), dtype=masks.dtype, device=masks.device)
    return ~torch.isin(masks, background) & (masks != ignore_index)


# --- detection: instance masks, else GrabCut on the box ----------------------------------------------------

GRABCUT_ITERATIONS = 5
GRABCUT_MARGIN = 0.5
"""GrabCut runs on the box grown by this fraction of its size on each side (clipped to the image): the
ring around the box is what it learns the background colours from, and a crop is far faster than the
whole image."""
_GRABCUT_VERSION = f"grabcut-v1-it{GRABCUT_ITERATIONS}-m{GRABCUT_MARGIN}"
"""Part of every cache key: a change to how masks are made must not reuse masks made the old way."""


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/visionstress/grabcut` (default `~/.cache/...`): masks outlive a run, not a machine."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "visionstress" / "grabcut"


def grabcut_box(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """bool `[H, W]`: the object inside `box` (xyxy pixels) of `image` (uint8 `[H, W, 3]` RGB), by GrabCut.

    Boxes too small for GrabCut's colour models, or where it finds nothing or fails, give the whole box:
    a mask that is too large keeps some background with the object; an empty one would erase the object.
    OpenCV's random generator is reseeded before each call, so the same image gives the same mask.
    """
    import cv2

    h, w = image.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    out = np.zeros((h, w), dtype=bool)
    if x1 <= x0 or y1 <= y0:
        return out
    out[y0:y1, x0:x1] = True
    bw, bh = x1 - x0, y1 - y0
    cx0, cy0 = max(0, x0 - int(GRABCUT_MARGIN * bw) - 1), max(0, y0 - int(GRABCUT_MARGIN * bh) - 1)
    cx1, cy1 = min(w, x1 + int(GRABCUT_MARGIN * bw) + 1), min(h, y1 + int(GRABCUT_MARGIN * bh) + 1)
    if bw < 3 or bh < 3 or (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        return out  # too small, or no background around the box to learn from
    crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1, ::-1])  # OpenCV wants BGR
    mask = np.zeros(crop.shape[:2], np.uint8)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(crop, mask, (x0 - cx0, y0 - cy0, bw, bh), np.zeros((1, 65), np.float64),
                    np.zeros((1, 65), np.float64), GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_RECT)
    except cv2.error:
        return out
    found = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if not found.any():
        return out
    out[:] = False
    out[cy0:cy1, cx0:cx1] = found
    return out


def grabcut_foreground(image: Tensor, boxes: Tensor, cache_dir: str | Path | None) -> Tensor:
    """bool `[H, W]`: the union of GrabCut masks of `boxes` (`[N, 4]` xyxy) in `image` (uint8 `[3, H, W]`).

    With `cache_dir`, the mask is stored as a PNG named by the SHA-256 of the pixels, the boxes and the
    GrabCut settings, and read back on later runs (GrabCut takes a fraction of a second per box). Files
    are written atomically, so loader workers computing the same mask at once cannot corrupt it.
    """
    array = image.permute(1, 2, 0).contiguous().numpy()
    box_list = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(_GRABCUT_VERSION.encode())
        digest.update(np.asarray(array.shape, np.int64).tobytes() + array.tobytes() + box_list.tobytes())
        path = Path(cache_dir) / f"{digest.hexdigest()}.png"
        if path.is_file():
            try:
                return read_foreground_mask(path, tuple(array.shape[:2]))
            except ForegroundError:
                pass  # a damaged cache entry is recomputed and replaced
    mask = np.zeros(array.shape[:2], dtype=bool)
    for box in box_list:
        mask |= grabcut_box(array, box)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            raise ForegroundError(f"GrabCut cache {cache_dir}: cannot write {path.name} ({exc.strerror or exc}); "
                                  "point --foreground-cache at a writable folder") from None
    return torch.from_numpy(mask)


def detection_foreground(image: Tensor, annotations: Sequence[Mapping[str, Any]],
                         cache_dir: str | Path | None) -> Tensor:
    """bool `[H, W]`: the union of the image's objects, each from its instance mask (polygon / RLE, rasterised
    by pycocotools as COCO's `annToMask` does) when the annotation has one, else from GrabCut on its box
    (cached in `cache_dir`)."""
    import warnings

    from pycocotools import mask as mask_utils

    height, width = image.shape[-2:]
    mask = torch.zeros((height, width), dtype=torch.bool)
    boxes = []
    for ann in annotations:
        if has_segmentation(ann):
            segmentation = ann["segmentation"]
            with warnings.catch_warnings():  # pycocotools' numpy-2 "copy=False" deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                if isinstance(segmentation, list):
                    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
                elif isinstance(segmentation.get("counts"), list):
                    rle = mask_utils.frPyObjects(segmentation, height, width)
                else:
                    rle = segmentation
                mask |= torch.from_numpy(mask_utils.decode(rle).astype(bool))
        else:
            x, y, w, h = ann["bbox"]
            boxes.append([x, y, x + w, y + h])
    if boxes:
        mask |= grabcut_foreground(image, torch.tensor(boxes), cache_dir)
    return mask


def has_segmentation(annotation: Mapping[str, Any]) -> bool:
    """Whether a COCO annotation carries a polygon or RLE mask (an empty list is none)."""
    segmentation = annotation.get("segmentation")
    return isinstance(segmentation, dict) or (isinstance(segmentation, list) and len(segmentation) > 0)


def detection_foreground_sources(images: Iterable[int], image_annotations: Mapping[int, Sequence[Mapping[str, Any]]]
                                 ) -> dict[str, int]:
    """How many images take their foreground from instance masks, from GrabCut, from both, or have no
    objects: what the scorecard says about where the masks came from."""
    counts = {"instance_masks": 0, "grabcut": 0, "instance_masks_and_grabcut": 0, "no_objects": 0}
    for image_id in images:
        anns = image_annotations.get(image_id, [])
        with_masks = sum(has_segmentation(a) for a in anns)
        if not anns:
            counts["no_objects"] += 1
        elif with_masks == len(anns):
            counts["instance_masks"] += 1
        elif with_masks == 0:
            counts["grabcut"] += 1
        else:
            counts["instance_masks_and_grabcut"] += 1
    return counts


# --- the check before a run ------------------------------------------------------------------------------

def check_foreground_source(task: str, options: Mapping[str, Any], perturbations: Iterable[Any],
                            num_classes: int | None = None) -> str | None:
    """Stop a run before any work when its suite needs object masks that the inputs cannot give.

    `perturbations` are the suite's Perturbation objects. Returns a line saying where the masks come
    from (for the scorecard's dataset info), or None when no perturbation needs them. Classification
    needs `--masks`; detection takes instance masks or GrabCut; segmentation its class masks, whose
    `--background-classes` are checked here (against `num_classes` when given).
    """
    needing = sorted({p.name for p in perturbations if getattr(p, "needs_foreground", False)})
    if not needing:
        return None
    if task == "classification":
        masks = options.get("masks")
        if masks is None:
            raise ForegroundError(
                f"the suite's {', '.join(needing)} need object masks: pass --masks DIR, a folder with one mask PNG "
                "per image named like the image (non-zero pixels = the object; class sub-folders allowed), or drop "
                "those perturbations from the suite")
        if not Path(masks).is_dir():
            raise ForegroundError(f"--masks {masks}: masks folder not found")
        return f"mask files in {Path(masks).name}/"
    if task == "detection":
        return "COCO instance masks; GrabCut on the box where an object has none (cached per image)"
    if task == "segmentation":
        text = options.get("background_classes") or "0"
        try:
            classes = parse_background_classes(text, num_classes)
        except ForegroundError as exc:
            raise ForegroundError(f"--background-classes {text!r}: {exc}") from None
        return f"class masks: every class but {', '.join(map(str, classes))} (background) and the ignore index"
    raise ForegroundError(f"--task {task}: {', '.join(needing)} need object masks, and this task has no source of "
                          "them; drop those perturbations from the suite")
