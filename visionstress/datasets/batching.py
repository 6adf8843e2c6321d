"""Same-shape batches from full-resolution images (detection and segmentation).

Detection and segmentation images keep their own sizes, and a batch needs one shape. Rather than
pad images (padding would then be perturbed as if it were content: blurred into, fogged, rotated
into view), items are grouped by (height, width) and a batch is formed whenever a group fills up.
Datasets with many sizes can instead be brought to one `canvas`: each image is resized to fit
inside it, keeping its aspect ratio, and padded; the per-image scale maps results back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from visionstress.batch import Batch, ObjectTargets
from visionstress.datasets.classification import DatasetError, SkippedFile
from visionstress.datasets.detection import DetectionImages
from visionstress.datasets.segmentation import SegmentationImages
from visionstress.foreground import segmentation_foreground

T = TypeVar("T")


class DecodedImages(Protocol):
    """What `iterate_shape_batches` reads: items whose first element is an image `[C, H, W]`."""

    strict: bool

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Any, ...] | SkippedFile: ...


@dataclass
class BatchInfo:
    """What comes with a batch besides its images and targets."""

    skipped: list[SkippedFile]  # files that could not be decoded since the previous batch
    scales: Tensor | None = None  # [B] float32: canvas scale per image (None without a canvas)


def iterate_shape_batches(
    dataset: DecodedImages,
    batch_size: int,
    workers: int,
    make_batch: Callable[[list[tuple[Any, ...]]], T],
    *,
    max_buffered: int | None = None,
) -> Iterator[tuple[T, list[SkippedFile]]]:
    """Group decoded items by image (H, W) and yield `(make_batch(items), skipped files)` per group.

    A group is yielded when it holds `batch_size` items. Items wait in their group meanwhile, so to
    keep memory bounded when a dataset has many sizes, the fullest group is yielded early whenever
    `max_buffered` items (default `8 * batch_size`) are waiting; at the end the remaining groups are
    yielded fullest first. Every item is yielded exactly once, in dataset order within its group.
    Skipped files are reported with the next yielded batch, and skips after the last batch with a
    final `make_batch([])`, as classification's `iterate_batches` does. With `dataset.strict`, an
    unreadable file raises `DatasetError` here, in the main process.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise DatasetError(f"workers must be a non-negative integer, got {workers!r}")
    limit = max(max_buffered if max_buffered is not None else 8 * batch_size, batch_size)
    loader = DataLoader(_Loaded(dataset), batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is)
    groups: dict[tuple[int, int], list[tuple[Any, ...]]] = {}
    pending: list[SkippedFile] = []
    waiting = 0
    for item in loader:
        if isinstance(item, DatasetError):
            raise item
        if isinstance(item, SkippedFile):
            if dataset.strict:
                raise DatasetError(f"{item.path}: {item.reason}")
            pending.append(item)
            continue
        shape = (int(item[0].shape[-2]), int(item[0].shape[-1]))
        group = groups.setdefault(shape, [])
        group.append(item)
        waiting += 1
        if len(group) < batch_size and waiting < limit:
            continue
        if len(group) < batch_size:
            shape = max(groups, key=lambda s: len(groups[s]))  # first-created among the fullest
        items = groups.pop(shape)
        waiting -= len(items)
        yield make_batch(items), pending
        pending = []
    for shape in sorted(groups, key=lambda s: len(groups[s]), reverse=True):
        yield make_batch(groups[shape]), pending
        pending = []
    if pending:
        yield make_batch([]), pending


def iterate_detection_batches(
    images: DetectionImages, batch_size: int, workers: int = 0, canvas: tuple[int, int] | None = None
) -> Iterator[tuple[Batch, BatchInfo]]:
    """Detection batches (`boxes` = one `ObjectTargets` per image, `sample_ids` = dataset indices).

    Without `canvas` images keep their size and are grouped by shape. With `canvas=(H, W)` each image
    is resized to fit inside it keeping its aspect ratio (bilinear, antialiased) and padded with zeros
    at the bottom and right; boxes and areas are scaled with it (instance masks resized by nearest
    neighbour), and `BatchInfo.scales` holds each image's scale: dividing canvas boxes by it gives
    original-image boxes. With `images.foreground`, batches carry `foreground` (object pixels).
    """
    source: DecodedImages = images if canvas is None else _OnCanvas(images, _canvas_size(canvas))

    def make_batch(items: list[tuple[Any, ...]]) -> tuple[Batch, Tensor | None]:
        if items:
            pixels = torch.stack([item[0] for item in items])
        else:
            pixels = torch.empty((0, 3, *(canvas or (0, 0))), dtype=torch.uint8)
        # Object masks, when loaded, are the last element of every item (after the canvas scale).
        foreground = torch.stack([item[-1] for item in items]) if items and images.foreground else None
        batch = Batch(images=pixels, sample_ids=torch.tensor([item[2] for item in items], dtype=torch.int64),
                      boxes=[item[1] for item in items], foreground=foreground)
        scales = None if canvas is None else torch.tensor([item[3] for item in items], dtype=torch.float32)
        return batch, scales

    for (batch, scales), skipped in iterate_shape_batches(source, batch_size, workers, make_batch):
        yield batch, BatchInfo(skipped=skipped, scales=scales)


def iterate_segmentation_batches(
    images: SegmentationImages, batch_size: int, workers: int = 0,
    background_classes: Sequence[int] | None = None,
) -> Iterator[tuple[Batch, BatchInfo]]:
    """Segmentation batches (`masks` `[B, H, W]` with the dataset's `ignore_index`), grouped by shape.

    With `background_classes`, batches also carry `foreground`: the pixels of every other class (the
    ignore index is never foreground), for the background and cue perturbations.
    """
    ignore_index = images.dataset.ignore_index

    def make_batch(items: list[tuple[Any, ...]]) -> Batch:
        if not items:
            return Batch(images=torch.empty((0, 3, 0, 0), dtype=torch.uint8),
                         sample_ids=torch.empty(0, dtype=torch.int64),
                         masks=torch.empty((0, 0, 0), dtype=torch.int64), ignore_index=ignore_index)
        masks = torch.stack([item[1] for item in items])
        foreground = (None if background_classes is None
                      else segmentation_foreground(masks, background_classes, ignore_index))
        return Batch(images=torch.stack([item[0] for item in items]),
                     sample_ids=torch.tensor([item[2] for item in items], dtype=torch.int64),
                     masks=masks, ignore_index=ignore_index, foreground=foreground)

    for batch, skipped in iterate_shape_batches(images, batch_size, workers, make_batch):
        yield batch, BatchInfo(skipped=skipped)


def fit_to_canvas(
    image: Tensor, targets: ObjectTargets, canvas: tuple[int, int]
) -> tuple[Tensor, ObjectTargets, float]:
    """Resize `image` to fit inside `canvas` keeping its aspect ratio, pad bottom/right with zeros, and
    scale its targets the same way. Returns (image, targets, scale)."""
    size, scale = _fitted_size(tuple(image.shape[-2:]), canvas)
    resized = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    padding = [0, 0, canvas[1] - size[1], canvas[0] - size[0]]  # left, top, right, bottom
    out = TF.pad(resized, padding, fill=0)
    masks = targets.masks
    if masks is not None:
        masks = TF.resize(masks.to(torch.uint8), size, interpolation=InterpolationMode.NEAREST_EXACT)
        masks = TF.pad(masks, padding, fill=0).bool()
    moved = ObjectTargets(
        boxes=targets.boxes * scale,
        labels=targets.labels,
        masks=masks,
        iscrowd=targets.iscrowd,
        ids=targets.ids,
        occluded=targets.occluded,
        dropped=targets.dropped,
        area=None if targets.area is None else targets.area * scale**2,
    )
    return out, moved, scale


def _fitted_size(size: tuple[int, int], canvas: tuple[int, int]) -> tuple[list[int], float]:
    """The (height, width) an image of `size` takes inside `canvas` keeping its aspect ratio, and the scale."""
    height, width = size
    scale = min(canvas[0] / height, canvas[1] / width)
    return [min(canvas[0], max(1, round(height * scale))), min(canvas[1], max(1, round(width * scale)))], scale


def _canvas_size(canvas: Any) -> tuple[int, int]:
    try:
        height, width = canvas
    except (TypeError, ValueError):
        raise DatasetError(f"canvas must be (height, width), got {canvas!r}") from None
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in (height, width)):
        raise DatasetError(f"canvas must be two positive integers (height, width), got {canvas!r}")
    return height, width


class _OnCanvas:
    """Detection items fitted to one canvas, in the loader workers; the scale is appended to each item."""

    def __init__(self, images: DetectionImages, canvas: tuple[int, int]) -> None:
        self.images = images
        self.canvas = canvas
        self.strict = images.strict

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Any, ...] | SkippedFile:
        item = self.images.load(index)
        if isinstance(item, SkippedFile):
            return item
        image, targets, sample_id, *foreground = item
        if foreground:  # object pixels follow the image onto the canvas (nearest; padding is background)
            fitted, _ = _fitted_size(tuple(image.shape[-2:]), self.canvas)
            mask = TF.resize(foreground[0][None].to(torch.uint8), fitted, interpolation=InterpolationMode.NEAREST_EXACT)
            foreground = [TF.pad(mask, [0, 0, self.canvas[1] - fitted[1], self.canvas[0] - fitted[0]], fill=0)[0].bool()]
        image, targets, scale = fit_to_canvas(image, targets, self.canvas)
        return (image, targets, sample_id, scale, *foreground)


class _Loaded(Dataset):
    """Hands a dataset's `load` result to the loader, with a `DatasetError` returned rather than raised
    so that it reaches the main process as the user's message, not under a worker traceback."""

    def __init__(self, dataset: DecodedImages) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...] | SkippedFile | DatasetError:
        try:
            return self.dataset.load(index)
        except DatasetError as exc:
            return exc


def _as_is(item: Any) -> Any:
    return item
