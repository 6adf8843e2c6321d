"""COCO-format detection datasets: validated loading, decoding, and targets in the engine's types.

The annotation JSON is checked before any work starts, because a COCO file that pycocotools loads
without complaint can still be wrong in ways that silently corrupt the metrics: boxes of zero size,
objects of a category the evaluator does not know, image ids that point nowhere, file names that
escape the images folder. Each problem is a `DatasetError` naming the JSON file and the annotation,
image or file at fault. Boxes that only stick out of their image (off-by-one exports are common) are
clipped to it with an `AnnotationWarning` instead, so they do not stop a run.

The validated data is held in a pycocotools `COCO` object: the evaluator scores against exactly the
ground truth the targets were built from.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import reprlib
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from visionstress.batch import Batch, ObjectTargets
from visionstress.datasets.classification import (DatasetError, SkippedFile, SkipsUnreadable, is_inside,
                                                  read_image_or_skip)
from visionstress.foreground import ForegroundError, detection_foreground, detection_foreground_sources
from visionstress.images import MAX_PIXELS, display_path

if TYPE_CHECKING:  # pycocotools is imported when a dataset is loaded, not with the package
    from pycocotools.coco import COCO

ANNOTATIONS_FILE = "annotations.json"
_SHOWN = 5  # offenders listed in one message


class AnnotationWarning(UserWarning):
    """An annotation that was fixed up to be usable (a box clipped to its image)."""


@dataclass(frozen=True)
class DetectionSample:
    """One image of a COCO dataset; `index` is its position in the dataset and the run's sample id."""

    index: int
    image_id: int  # COCO image id
    path: str  # file_name as in the JSON (posix, relative to the images root)
    width: int
    height: int

    @property
    def display_path(self) -> str:
        """`path` safe to print and to write to UTF-8 files; see `visionstress.images.display_path`."""
        return display_path(self.path)


@dataclass
class CocoDataset:
    """A validated COCO instances file and where its images are."""

    annotation_file: Path
    images_root: Path
    samples: list[DetectionSample]
    categories: list[dict]  # [{"id", "name"}] sorted by id
    coco: COCO  # the validated ground truth (boxes clipped, 'area' and 'iscrowd' filled in)
    warnings: list[str]  # what was fixed up, one line per annotation, naming the file and annotation id

    def require_objects(self) -> None:
        """Refuse a selection of images without one annotated (non-crowd) object: every AP and AR would be
        undefined, and a run would spend its hours printing NaN."""
        for sample in self.samples:
            if any(not ann.get("iscrowd", 0) for ann in self.coco.imgToAnns.get(sample.image_id, [])):
                return
        raise DatasetError(f"{self.annotation_file}: none of the {len(self.samples)} images has an annotated object "
                           "(iscrowd 0), so every AP and AR would be undefined; give images with annotations "
                           "(or a larger --limit)")


def load_coco_dataset(data: str | Path, images: str | Path | None = None, *, with_masks: bool = False,
                      allow_outside_paths: bool = False) -> CocoDataset:
    """Load and validate a COCO instances dataset.

    `data` is the instances JSON (images are then under `images`, else beside the JSON) or a directory
    holding `annotations.json` (images under `images`, else `DIR/images` if it exists, else `DIR`).
    `with_masks` also checks that every annotation has a polygon or RLE segmentation, for runs that
    score instance masks. File names must lie inside the images folder (after `..` and symbolic links)
    unless `allow_outside_paths`. Raises `DatasetError` naming the file and the annotation / image at fault.
    """
    data = Path(data)
    if data.is_dir():
        annotation_file = data / ANNOTATIONS_FILE
        if not annotation_file.is_file():
            raise DatasetError(f"{data}: no {ANNOTATIONS_FILE} in this folder (expected a COCO instances JSON)")
        default_root = data / "images" if (data / "images").is_dir() else data
    elif data.is_file():
        annotation_file, default_root = data, data.parent
    else:
        raise DatasetError(f"{data}: dataset not found")
    images_root = Path(images) if images is not None else default_root
    if not images_root.is_dir():
        raise DatasetError(f"{images_root}: images folder not found (for {annotation_file})")

    raw = _read_json(annotation_file)
    categories = _check_categories(annotation_file, raw["categories"])
    infos = _check_images(annotation_file, raw["images"], images_root, allow_outside_paths)
    annotations, notes = _check_annotations(annotation_file, raw["annotations"], infos, categories)
    if with_masks:
        for ann in annotations:
            _check_segmentation(annotation_file, ann)
    if notes:
        more = f" (and {len(notes) - 1} more, listed in the dataset's warnings)" if len(notes) > 1 else ""
        warnings.warn(f"{notes[0]}{more}", AnnotationWarning, stacklevel=2)

    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {**raw, "images": list(infos.values()), "annotations": annotations,
                    "categories": [categories[i] for i in sorted(categories)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    samples = [
        DetectionSample(index=i, image_id=info["id"], path=info["file_name"], width=info["width"],
                        height=info["height"])
        for i, info in enumerate(infos.values())
    ]
    return CocoDataset(
        annotation_file=annotation_file,
        images_root=images_root,
        samples=samples,
        categories=[{"id": i, "name": categories[i]["name"]} for i in sorted(categories)],
        coco=coco,
        warnings=notes,
    )


class DetectionImages(SkipsUnreadable):
    """Decoded images with their objects, as `(uint8 [3, H, W], ObjectTargets, index)`.

    Images keep their full resolution (detection models resize as they normally would). Targets:
    xyxy float32 boxes, labels = COCO category ids, `iscrowd`, `area` (the annotation's, or the box's
    when it has none), `ids` = position in the image's annotation list, and with `with_masks` the
    instance masks (`[N, H, W]` bool, rasterised by pycocotools). An unreadable file gives a
    `SkippedFile` (`strict=False`) or raises `DatasetError` (`strict=True`).

    With `foreground`, items gain a fourth element, the image's object pixels (bool `[H, W]`, for the
    background and cue perturbations): the union of the objects' instance masks, with GrabCut on the box
    for objects that have none (cached in `foreground_cache`; see `visionstress.foreground`).
    """

    def __init__(self, dataset: CocoDataset, *, with_masks: bool = False, strict: bool = False,
                 foreground: bool = False, foreground_cache: str | Path | None = None,
                 max_pixels: int | None = MAX_PIXELS) -> None:
        self.dataset = dataset
        self.with_masks = with_masks
        self.strict = strict
        self.foreground = foreground
        self.foreground_cache = foreground_cache
        self.max_pixels = max_pixels
        if with_masks:
            for ann in dataset.coco.dataset["annotations"]:
                _check_segmentation(dataset.annotation_file, ann)
        if foreground:  # a malformed polygon must stop the run now, not in a loader worker
            for ann in dataset.coco.dataset["annotations"]:
                if ann.get("segmentation"):
                    _check_segmentation(dataset.annotation_file, ann)

    def foreground_sources(self) -> dict[str, int]:
        """Images whose foreground comes from instance masks, from GrabCut, from both, or that have no objects."""
        return detection_foreground_sources([s.image_id for s in self.dataset.samples], self.dataset.coco.imgToAnns)

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def shape(self, index: int) -> tuple[int, int]:
        """(height, width) as the JSON says (`load` refuses an image of another size)."""
        sample = self.dataset.samples[index]
        return sample.height, sample.width

    def collate(self, items: list[tuple[Any, ...]]) -> Batch:
        """One batch of same-shape items; `foreground` when the items carry object masks (4th element)."""
        if not items:
            return Batch(images=torch.empty((0, 3, 0, 0), dtype=torch.uint8), boxes=[])
        return Batch(images=torch.stack([item[0] for item in items]), boxes=[item[1] for item in items],
                     sample_ids=torch.tensor([item[2] for item in items], dtype=torch.int64),
                     foreground=torch.stack([item[3] for item in items]) if len(items[0]) > 3 else None)

    def load(self, index: int) -> tuple[Tensor, ObjectTargets, int] | SkippedFile:
        """The sample, or why its file could not be decoded (see `read_image_or_skip`)."""
        sample = self.dataset.samples[index]
        path = self.dataset.images_root / sample.path
        image = read_image_or_skip(path, self.max_pixels)
        if isinstance(image, SkippedFile):
            return image
        height, width = image.shape[-2:]
        if (height, width) != (sample.height, sample.width):
            hint = " (EXIF orientation turned it?)" if (height, width) == (sample.width, sample.height) else ""
            raise DatasetError(
                f"{display_path(path)}: decoded image is {width}x{height} but {self.dataset.annotation_file} says "
                f"{sample.width}x{sample.height} (image id {sample.image_id}){hint}; "
                "its boxes would not match the pixels"
            )
        if not self.foreground:
            return image, self._targets(sample), index
        try:
            foreground = detection_foreground(image, self.dataset.coco.imgToAnns.get(sample.image_id, []),
                                              self.foreground_cache)
        except ForegroundError as exc:
            raise DatasetError(f"{exc} (image {path})") from None
        return image, self._targets(sample), index, foreground

    def _targets(self, sample: DetectionSample) -> ObjectTargets:
        coco = self.dataset.coco
        anns = coco.imgToAnns.get(sample.image_id, [])
        xywh = torch.tensor([ann["bbox"] for ann in anns], dtype=torch.float64).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        masks = None
        if self.with_masks:
            masks = torch.zeros((len(anns), sample.height, sample.width), dtype=torch.bool)
            with warnings.catch_warnings():  # pycocotools' numpy-2 "copy=False" deprecation
                warnings.simplefilter("ignore", DeprecationWarning)
                for i, ann in enumerate(anns):
                    masks[i] = torch.from_numpy(coco.annToMask(ann).astype(bool))
        return ObjectTargets(
            boxes=boxes.float(),
            labels=torch.tensor([ann["category_id"] for ann in anns], dtype=torch.int64),
            masks=masks,
            iscrowd=torch.tensor([bool(ann["iscrowd"]) for ann in anns], dtype=torch.bool),
            area=torch.tensor([float(ann["area"]) for ann in anns], dtype=torch.float32),
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a COCO object with 'images', 'annotations' and 'categories', "
                           f"got a JSON {type(raw).__name__}")
    missing = [key for key in ("images", "annotations", "categories") if key not in raw]
    if missing:
        raise DatasetError(f"{path}: missing key(s) {missing}; a COCO instances file has 'images', "
                           "'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw[key], list):
            raise DatasetError(f"{path}: '{key}' must be a list, got {type(raw[key]).__name__}")
    return raw


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entry(path: Path, key: str, i: int, entry: Any, fields: dict[str, Any]) -> dict:
    """Check that `entry` (item `i` of list `key`) is an object whose `fields` pass their checks."""
    where = f"{path}: {key}[{i}]"
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object, got {reprlib.repr(entry)}")
    if "id" in entry and _is_int(entry["id"]):
        where = f"{path}: {key}[{i}] (id {entry['id']})"
    for field, (check, expected) in fields.items():
        if field not in entry:
            raise DatasetError(f"{where}: missing '{field}'")
        if not check(entry[field]):
            raise DatasetError(f"{where}: '{field}' must be {expected}, got {reprlib.repr(entry[field])}")
    return entry


def _no_duplicates(path: Path, key: str, ids: list[int]) -> None:
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise DatasetError(f"{path}: duplicate {key} id(s) {repeated[:_SHOWN]}"
                           f"{f' and {len(repeated) - _SHOWN} more' if len(repeated) > _SHOWN else ''}")


def _check_categories(path: Path, entries: list) -> dict[int, dict]:
    fields = {"id": (_is_int, "an integer"), "name": (lambda v: isinstance(v, str), "a string")}
    checked = [_entry(path, "categories", i, c, fields) for i, c in enumerate(entries)]
    _no_duplicates(path, "category", [c["id"] for c in checked])
    if not checked:
        raise DatasetError(f"{path}: 'categories' is empty")
    return {c["id"]: c for c in checked}


def _check_images(path: Path, entries: list, root: Path, allow_outside_paths: bool) -> dict[int, dict]:
    size = (lambda v: _is_int(v) and v > 0, "a positive integer")
    fields = {"id": (_is_int, "an integer"), "file_name": (lambda v: isinstance(v, str) and v != "", "a file name"),
              "width": size, "height": size}
    checked = [_entry(path, "images", i, info, fields) for i, info in enumerate(entries)]
    if not checked:
        raise DatasetError(f"{path}: 'images' is empty")
    _no_duplicates(path, "image", [info["id"] for info in checked])
    missing = []
    for info in checked:
        name = info["file_name"]
        file = root / name
        if not allow_outside_paths and (Path(name).is_absolute() or not is_inside(file, root)):
            raise DatasetError(f"{path}: image {info['id']}: file_name {display_path(name)!r} points outside the "
                               f"images folder {root}; file names must be relative paths inside it (pass "
                               "allow_outside_paths=True, --allow-outside-paths, for a dataset that deliberately "
                               "points elsewhere)")
        if not file.is_file():
            missing.append(display_path(name))
    if missing:
        shown = ", ".join(missing[:_SHOWN])
        raise DatasetError(f"{path}: {len(missing)} image file(s) listed but not found under {root}: {shown}"
                           f"{' ...' if len(missing) > _SHOWN else ''}")
    return {info["id"]: info for info in checked}


def _check_annotations(
    path: Path, entries: list, images: dict[int, dict], categories: dict[int, dict]
) -> tuple[list[dict], list[str]]:
    """Validated annotations (copies: boxes clipped, 'area' and 'iscrowd' filled in) and fix-up notes."""
    box = (lambda v: isinstance(v, list) and len(v) == 4 and all(_is_number(c) for c in v), "[x, y, width, height]")
    fields = {"id": (_is_int, "an integer"), "image_id": (_is_int, "an integer"),
              "category_id": (_is_int, "an integer"), "bbox": box}
    checked = [_entry(path, "annotations", i, ann, fields) for i, ann in enumerate(entries)]
    _no_duplicates(path, "annotation", [ann["id"] for ann in checked])
    out, notes = [], []
    for ann in checked:
        where = f"{path}: annotation {ann['id']}"
        info = images.get(ann["image_id"])
        if info is None:
            raise DatasetError(f"{where}: image_id {ann['image_id']} is not among the file's images")
        if ann["category_id"] not in categories:
            raise DatasetError(f"{where}: unknown category_id {ann['category_id']} (known ids: {sorted(categories)})")
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, float):
            raise DatasetError(f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
        if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
            raise DatasetError(f"{where}: 'area' must be a non-negative number, got {ann['area']!r}")
        x, y, w, h = ann["bbox"]
        x0, y0 = min(max(x, 0), info["width"]), min(max(y, 0), info["height"])
        x1, y1 = min(max(x + w, 0), info["width"]), min(max(y + h, 0), info["height"])
        if x1 <= x0 or y1 <= y0:
            raise DatasetError(f"{where} (image {info['file_name']}): bbox {ann['bbox']} has no area inside the "
                               f"{info['width']}x{info['height']} image (width and height must be positive)")
        bbox = [x0, y0, x1 - x0, y1 - y0]
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            notes.append(f"{where} (image {info['file_name']}): bbox {ann['bbox']} extends outside the "
                         f"{info['width']}x{info['height']} image; clipped to {bbox}")
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, dict):
            _check_rle(where, segmentation, info)
        out.append({**ann, "bbox": bbox, "iscrowd": int(iscrowd), "area": float(ann.get("area", bbox[2] * bbox[3]))})
    return out, notes


def _check_segmentation(path: Path, ann: dict) -> None:
    """A polygon list or an RLE that pycocotools can rasterise (its size is checked on loading)."""
    where = f"{path}: annotation {ann['id']}"
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list):
        if not segmentation:
            raise DatasetError(f"{where}: empty 'segmentation'; instance masks need a polygon or an RLE")
        for polygon in segmentation:
            if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
                    and all(_is_number(c) for c in polygon)):
                raise DatasetError(f"{where}: a polygon must be a flat list [x1, y1, x2, y2, ...] of at least "
                                   f"3 points, got {str(polygon)[:80]}")
    elif not isinstance(segmentation, dict):  # an RLE is checked with its annotation (`_check_rle`)
        raise DatasetError(f"{where}: no 'segmentation' (polygon list or RLE); instance masks need one")


def _check_rle(where: str, rle: dict, info: dict) -> None:
    """An RLE must cover exactly its image: pycocotools decodes runs without bounds checks, so counts
    that add up to more pixels than the image write past the mask (and fewer leave it half-filled)."""
    height, width = info["height"], info["width"]
    if rle.get("size") != [height, width]:
        raise DatasetError(f"{where}: RLE segmentation size {reprlib.repr(rle.get('size'))} differs from its image "
                           f"{display_path(info['file_name'])} ([height, width] = {[height, width]})")
    counts = rle.get("counts")
    if isinstance(counts, str):
        runs = rle_counts(counts)
        if runs is None:
            raise DatasetError(f"{where}: RLE 'counts' {reprlib.repr(counts)} is not a valid compressed RLE string")
    elif isinstance(counts, list) and all(_is_int(c) for c in counts):
        runs = np.asarray(counts, dtype=np.int64)
    else:
        raise DatasetError(f"{where}: RLE 'counts' must be a compressed string or a list of integers, "
                           f"got {reprlib.repr(counts)}")
    if (runs < 0).any():
        raise DatasetError(f"{where}: RLE 'counts' has a negative run")
    if int(runs.sum()) != height * width:
        raise DatasetError(f"{where}: RLE 'counts' cover {int(runs.sum())} pixels, but its {width}x{height} image has "
                           f"{height * width}")


def rle_counts(text: str) -> np.ndarray | None:
    """The run lengths of a COCO compressed RLE string, or None if it is not one.

    The format (pycocotools' `rleToString`): each count is written as 5-bit groups, least significant
    first, one character per group (value + 48), bit 0x20 set on every group but the last of a count,
    and bit 0x10 of the last group as the sign; from the fourth count on, a count is stored as the
    difference to the count two places before it. Decoded with numpy, since masks of large images
    have long strings.
    """
    if not text.isascii():
        return None
    codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0 or (codes < 0).any() or (codes > 63).any() or codes[-1] & 0x20:
        return None
    last = (codes & 0x20) == 0  # the last group of each count
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))
    group = np.arange(codes.size) - np.repeat(starts, np.diff(np.append(starts, codes.size)))
    if group.max() > 11:  # more than 60 bits: no image has that many pixels
        return None
    values = np.add.reduceat((codes & 0x1F) << (5 * group), starts)
    ends = np.flatnonzero(last)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (group[ends][negative] + 1))
    runs = values.copy()
    runs[3::2] = np.cumsum(values[1::2])[1:]  # count m (m > 2) is stored as count m - count m-2
    runs[2::2] = np.cumsum(values[2::2])
    return runs
