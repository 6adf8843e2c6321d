"""Semantic segmentation datasets: images paired with class-index masks (VOC / Cityscapes style).

A mask is a single-channel image whose pixel values *are* class indices (0..C-1, plus an ignore
index). Palette PNGs are read as their indices, never as their colours, and colour-coded masks are
refused rather than guessed at: a wrong guess would score every pixel against the wrong class.
Masks are checked as they are decoded, so a value outside the classes stops the run with the file
named instead of silently counting as a miss.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from visionstress.batch import DEFAULT_IGNORE_INDEX, Batch
from visionstress.datasets.classification import (DatasetError, SkippedFile, SkipsUnreadable, read_class_names,
                                                  read_image_or_skip)
from visionstress.images import MAX_PIXELS, ImageReadError, display_path, image_size, open_image

SEGMENTATION_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_INDEX_MODES = {"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"}
_SHOWN = 5  # offenders listed in one message


@dataclass(frozen=True)
class SegmentationSample:
    """One image and its mask; `index` is its position in the dataset and the run's sample id."""

    index: int
    image_path: str  # relative to the images root, posix
    mask_path: str  # relative to the masks root, posix

    @property
    def display_path(self) -> str:
        """`image_path` safe to print and to write to UTF-8 files; see `visionstress.images.display_path`."""
        return display_path(self.image_path)


@dataclass
class SegmentationDataset:
    images_root: Path
    masks_root: Path
    samples: list[SegmentationSample]
    class_names: list[str]
    ignore_index: int


def load_segmentation_dataset(
    data: str | Path | None = None,
    *,
    images: str | Path | None = None,
    masks: str | Path | None = None,
    class_names: str | Path | Sequence[str] | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
) -> SegmentationDataset:
    """Pair the images of a segmentation dataset with their masks.

    `data` is a folder holding `images/`, `masks/` and `classes.txt`; `images`, `masks` and
    `class_names` (a file with one name per line, or a list) override its parts, or give them all
    when there is no `data`. Images are found recursively and matched to the mask with the same
    relative path and stem (`images/a/x.jpg` -> `masks/a/x.png`), falling back to the mask with the
    same bare stem when exactly one has it. Raises `DatasetError` for images without masks, ambiguous
    stems, or an `ignore_index` that is also a class index.
    """
    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise DatasetError(f"{root}: segmentation dataset folder not found (expected images/, masks/, classes.txt)")
        images = images if images is not None else root / "images"
        masks = masks if masks is not None else root / "masks"
        class_names = class_names if class_names is not None else root / "classes.txt"
    missing = [name for name, value in (("images", images), ("masks", masks), ("class_names", class_names))
               if value is None]
    if missing:
        raise DatasetError(f"segmentation dataset: give a data folder or {', '.join(missing)}")
    images_root, masks_root = Path(images), Path(masks)
    for what, folder in (("images", images_root), ("masks", masks_root)):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: {what} folder not found")
    if isinstance(class_names, (str, Path)):
        names = read_class_names(class_names)
    else:
        names = [str(name) for name in class_names]
        if not names:
            raise DatasetError("class_names is empty: give one name per class index")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise DatasetError(f"ignore_index must be an integer, got {ignore_index!r}")
    if 0 <= ignore_index < len(names):
        raise DatasetError(f"ignore_index {ignore_index} is the index of class {names[ignore_index]!r}; "
                           f"it must lie outside 0..{len(names) - 1}")

    image_files = _find(images_root)
    if not image_files:
        raise DatasetError(f"{images_root}: no images ({', '.join(sorted(SEGMENTATION_EXTENSIONS))}) found")
    mask_files = _find(masks_root)
    pairs = _pair(images_root, image_files, masks_root, mask_files)
    samples = [SegmentationSample(index=i, image_path=image, mask_path=mask) for i, (image, mask) in enumerate(pairs)]
    return SegmentationDataset(images_root=images_root, masks_root=masks_root, samples=samples,
                               class_names=names, ignore_index=ignore_index)


class SegmentationImages(SkipsUnreadable):
    """Decoded images with their masks, as `(uint8 [3, H, W], int64 [H, W], index)`, full resolution.

    An unreadable image or mask gives a `SkippedFile` (`strict=False`) or raises `DatasetError`
    (`strict=True`). A mask that cannot be right (colour-coded, of another size than its image, with
    values that are neither a class nor the ignore index) always raises.
    """

    def __init__(self, dataset: SegmentationDataset, *, strict: bool = False,
                 max_pixels: int | None = MAX_PIXELS, background_classes: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.strict = strict
        self.max_pixels = max_pixels
        self.background_classes = None if background_classes is None else tuple(background_classes)
        """With these classes, batches carry `foreground`: every other class's pixels (for background swaps)."""

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def shape(self, index: int) -> tuple[int, int]:
        """(height, width) from the image file's header, EXIF orientation applied as `read_image` does;
        an unreadable header plans the image alone (its load will report why)."""
        return image_size(self.dataset.images_root / self.dataset.samples[index].image_path)

    def collate(self, items: list[tuple[Tensor, Tensor, int]]) -> Batch:
        ignore_index = self.dataset.ignore_index
        if not items:
            return Batch(images=torch.empty((0, 3, 0, 0), dtype=torch.uint8), sample_ids=torch.empty(0, dtype=torch.int64),
                         masks=torch.empty((0, 0, 0), dtype=torch.int64), ignore_index=ignore_index)
        masks = torch.stack([item[1] for item in items])
        foreground = None
        if self.background_classes is not None:
            from visionstress.foreground import segmentation_foreground

            foreground = segmentation_foreground(masks, self.background_classes, ignore_index)
        return Batch(images=torch.stack([item[0] for item in items]),
                     sample_ids=torch.tensor([item[2] for item in items], dtype=torch.int64),
                     masks=masks, ignore_index=ignore_index, foreground=foreground)

    def load(self, index: int) -> tuple[Tensor, Tensor, int] | SkippedFile:
        """The sample, or why a file could not be decoded (see `read_image_or_skip`)."""
        sample = self.dataset.samples[index]
        image_path = self.dataset.images_root / sample.image_path
        mask_path = self.dataset.masks_root / sample.mask_path
        image = read_image_or_skip(image_path, self.max_pixels)
        if isinstance(image, SkippedFile):
            return image
        try:
            mask = read_mask(mask_path, max_pixels=self.max_pixels)
        except ImageReadError as exc:
            shown = display_path(mask_path)
            return SkippedFile(path=shown, reason=str(exc).removeprefix(f"{shown}: "))
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DatasetError(
                f"{display_path(mask_path)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{display_path(image_path)} is "
                f"{image.shape[2]}x{image.shape[1]} (width x height)"
            )
        self._check_values(mask, mask_path)
        return image, mask, index

    def _check_values(self, mask: Tensor, path: Path) -> None:
        num_classes = len(self.dataset.class_names)
        values = torch.unique(mask)
        bad = values[((values < 0) | (values >= num_classes)) & (values != self.dataset.ignore_index)]
        if bad.numel():
            shown = ", ".join(str(v) for v in bad[:_SHOWN].tolist())
            more = f" and {bad.numel() - _SHOWN} more" if bad.numel() > _SHOWN else ""
            raise DatasetError(
                f"{display_path(path)}: mask value(s) {shown}{more} are not class indices: {num_classes} classes "
                f"(0..{num_classes - 1}) and ignore index {self.dataset.ignore_index}"
            )


def read_mask(path: str | Path, *, max_pixels: int | None = MAX_PIXELS) -> Tensor:
    """int64 `[H, W]` class indices from a single-channel image, read without any conversion.

    Mode L and 16/32-bit integer images give their values, palette (P) images their palette
    indices, not their colours. EXIF orientation is applied, as it is to the image. Colour images
    are refused: mapping colours to classes is dataset-specific and must be done beforehand. A mask
    of more than `max_pixels` is refused before it is decoded, as images are.
    """
    path = Path(path)
    shown = display_path(path)
    try:
        with open_image(path, max_pixels) as img:
            mode = img.mode
            if mode in _INDEX_MODES:
                array = np.asarray(ImageOps.exif_transpose(img)).astype(np.int64)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{shown}: not a readable mask image ({exc})") from exc
    if mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        raise DatasetError(f"{shown}: colour-coded mask (mode {mode}); convert to class indices "
                           "(a single-channel or palette PNG whose pixel values are class indices)")
    if mode not in _INDEX_MODES:
        raise DatasetError(f"{shown}: mask mode {mode} does not hold class indices; expected a single-channel "
                           "(L, I;16, I) or palette (P) image")
    return torch.from_numpy(array)


def _find(root: Path) -> list[PurePosixPath]:
    """Image files under `root` (recursively, hidden files and folders skipped), relative, sorted.

    An entry with an image extension that is not a readable file (a dangling or looping symbolic link,
    a directory called `x.png`) is found too, so that the run records it as skipped with the reason."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix.lower() in SEGMENTATION_EXTENSIONS and not any(part.startswith(".") for part in rel.parts):
            found.append(PurePosixPath(rel.as_posix()))
    return sorted(found)


def _pair(
    images_root: Path, images: list[PurePosixPath], masks_root: Path, masks: list[PurePosixPath]
) -> list[tuple[str, str]]:
    """(image, mask) relative paths: same sub-folder and stem first, else the unique same bare stem."""
    by_relative: dict[PurePosixPath, list[PurePosixPath]] = defaultdict(list)
    by_stem: dict[str, list[PurePosixPath]] = defaultdict(list)
    for mask in masks:
        by_relative[mask.with_suffix("")].append(mask)
        by_stem[mask.stem].append(mask)
    images_by_relative: dict[PurePosixPath, list[PurePosixPath]] = defaultdict(list)
    images_by_stem: dict[str, list[PurePosixPath]] = defaultdict(list)
    for image in images:
        images_by_relative[image.with_suffix("")].append(image)
        images_by_stem[image.stem].append(image)

    pairs, unmatched = [], []
    for image in images:
        key = image.with_suffix("")
        if len(images_by_relative[key]) > 1:
            raise DatasetError(f"{images_root}: images {[str(p) for p in images_by_relative[key]]} share the stem "
                               f"{str(key)!r}; their mask would be ambiguous")
        candidates = by_relative.get(key) or by_stem.get(image.stem, [])
        if len(candidates) > 1:
            raise DatasetError(f"{masks_root}: masks {[str(p) for p in candidates]} all match image "
                               f"{display_path(image)}; "
                               "keep one mask per image stem")
        if not candidates:
            unmatched.append(display_path(image))
            continue
        mask = candidates[0]
        if mask.with_suffix("") != key and len(images_by_stem[image.stem]) > 1:
            shared = [str(p) for p in images_by_stem[image.stem]]
            raise DatasetError(f"{masks_root}: mask {display_path(mask)} matches images {shared} by file stem alone; "
                               "put masks in the same sub-folders as their images")
        pairs.append((str(image), str(mask)))
    if unmatched:
        shown = ", ".join(unmatched[:_SHOWN])
        raise DatasetError(f"{images_root}: {len(unmatched)} image(s) have no mask in {masks_root}: {shown}"
                           f"{' ...' if len(unmatched) > _SHOWN else ''}")
    return pairs
