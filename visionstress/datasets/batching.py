"""Batches planned before the run: which images go together is decided from the dataset alone.

A batch needs one image shape. Detection and segmentation images keep their own sizes, and padding
them would be perturbed as if it were content (blurred into, fogged, rotated into view), so images are
grouped by their (height, width). The grouping is planned up front from sizes the dataset knows without
decoding (the input size after a classification crop, the COCO JSON's width/height, an image file's
header), which makes a run's batches a pure function of (dataset, batch size, which images): a killed
run resumed later, or a shard of a distributed run, sees exactly the same batches and skips exactly the
ones already done, and memory holds one planned batch per loader worker whatever the mix of sizes.

Datasets datasets implement `PlannedImages`: `shape(index)`, `load(index)` (a decoded item or a
`SkippedFile`) and `collate(items)` (one `Batch` from same-shape items). `load_planned` decodes in
DataLoader workers and yields each planned batch as a list of `Batch`es: one, unless a decoded image
turned out to have another size than planned, in which case its items are split by shape (never mixed,
never padded).
Datasets may also tell a `canvas`: every image letterboxed into one size (`fit_to_canvas`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from visionstress.batch import Batch, ObjectTargets
from visionstress.datasets.classification import ClassificationImages, DatasetError, SkippedFile
from visionstress.datasets.detection import DetectionImages
from visionstress.datasets.segmentation import SegmentationImages
from visionstress.foreground import segmentation_foreground

Plan = list[tuple[int, ...]]
"""Planned batches: each a tuple of dataset indices (= sample ids) of one image shape."""


class PlannedImages(Protocol):
    """What `plan_batches` and `load_planned` read."""

    strict: bool

    def __len__(self) -> int: ...

    def shape(self, index: int) -> tuple[int, int]: ...

    def load(self, index: int) -> tuple[Any, ...] | SkippedFile: ...

    def collate(self, items: list[tuple[Any, ...]]) -> Batch: ...


@dataclass
class BatchInfo:
    """What comes with a batch besides its images and targets."""

    skipped: list[SkippedFile]  # files that could not be decoded since the previous batch
    scales: Tensor | None = None  # [B] float32: canvas scale per image (None without a canvas)


def plan_batches(dataset: PlannedImages, batch_size: int, indices: Sequence[int] | None = None) -> Plan:
    """Group `indices` (default: every image) by shape in dataset order, cut each group into batches of
    at most `batch_size`, and order the batches by their first index (so a run goes through the dataset
    roughly in order)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(f"batch_size must be a positive integer, got {batch_size!r}")
    groups: dict[tuple[int, int], list[int]] = {}
    for index in range(len(dataset)) if indices is None else indices:
        groups.setdefault(tuple(dataset.shape(int(index))), []).append(int(index))
    plan = [tuple(group[i:i + batch_size]) for group in groups.values() for i in range(0, len(group), batch_size)]
    return sorted(plan, key=lambda batch: batch[0])


def load_planned(dataset: PlannedImages, plan: Plan, workers: int = 0,
                 pin_memory: bool = False) -> Iterator[tuple[list[Batch], list[SkippedFile]]]:
    """Decode each planned batch (in `workers` DataLoader processes, in plan order) and yield its
    same-shape `Batch`es (usually one; none when every file was unreadable) with the files skipped in it.

    With `dataset.strict` an unreadable file raises `DatasetError` here, in the main process, with the
    user's message rather than a worker traceback.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise DatasetError(f"workers must be a non-negative integer, got {workers!r}")
    if not plan:
        return
    loader = DataLoader(_Items(dataset), batch_sampler=plan, num_workers=workers, collate_fn=_Collate(dataset),
                        pin_memory=pin_memory)
    for result in loader:
        if isinstance(result, DatasetError):
            raise result
        batches, skipped = result
        if skipped and dataset.strict:
            raise DatasetError(f"{skipped[0].path}: {skipped[0].reason}")
        yield batches, skipped


class _Items(Dataset):
    """Hands a dataset's `load` result to the loader, with a `DatasetError` returned rather than raised
    so that it reaches the main process as the user's message, not under a worker traceback."""

    def __init__(self, dataset: PlannedImages) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset.load(index)
        except DatasetError as exc:
            return exc


class _Collate:
    """In the worker: split a planned batch's items by decoded shape and collate each group."""

    def __init__(self, dataset: PlannedImages) -> None:
        self.dataset = dataset

    def __call__(self, items: list[Any]) -> tuple[list[Batch], list[SkippedFile]] | DatasetError:
        errors = [item for item in items if isinstance(item, DatasetError)]
        if errors:
            return errors[0]
        skipped = [item for item in items if isinstance(item, SkippedFile)]
        groups: dict[tuple[int, int], list[Any]] = {}
        for item in items:
            if not isinstance(item, SkippedFile):
                groups.setdefault((int(item[0].shape[-2]), int(item[0].shape[-1])), []).append(item)
        return [self.dataset.collate(group) for group in groups.values()], skipped


def iterate_planned(dataset: PlannedImages, batch_size: int, workers: int = 0,
                    pin_memory: bool = False) -> Iterator[tuple[Batch, list[SkippedFile]]]:
    """Every image once, in planned batches, with the files skipped since the previous batch.

    A planned batch whose files were all unreadable yields nothing: its skips come with the next batch,
    and only skips after the last batch come with a final empty `collate([])` batch.
    """
    pending: list[SkippedFile] = []
    for batches, skipped in load_planned(dataset, plan_batches(dataset, batch_size), workers, pin_memory):
        pending.extend(skipped)
        for batch in batches:
            yield batch, pending
            pending = []
    if pending:
        yield dataset.collate([]), pending


def iterate_batches(dataset: ClassificationImages, batch_size: int, num_workers: int = 0, *,
                    pin_memory: bool = False) -> Iterator[tuple[Batch, list[SkippedFile]]]:
    """Classification batches (`labels`, `sample_ids` = dataset indices) with the files skipped in them."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise DatasetError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    yield from iterate_planned(dataset, batch_size, num_workers, pin_memory)


def iterate_detection_batches(
    images: DetectionImages, batch_size: int, workers: int = 0, canvas: tuple[int, int] | None = None
) -> Iterator[tuple[Batch, BatchInfo]]:
    """Detection batches (`boxes` = one `ObjectTargets` per image, `sample_ids` = dataset indices).

    Without `canvas` images keep their size and are grouped by shape. With `canvas=(H, W)` each image
    is letterboxed into it (see `fit_to_canvas`), and `BatchInfo.scales` holds each image's scale:
    dividing canvas boxes by it gives original-image boxes. With `images.foreground`, batches carry
    `foreground` (object pixels).
    """
    source = images if canvas is None else OnCanvas(images, canvas)
    for batch, skipped in iterate_planned(source, batch_size, workers):
        yield batch, BatchInfo(skipped=skipped, scales=None if canvas is None else source.scales(batch.sample_ids))


def iterate_segmentation_batches(
    images: SegmentationImages, batch_size: int, workers: int = 0, background_classes: Sequence[int] | None = None,
) -> Iterator[tuple[Batch, BatchInfo]]:
    """Segmentation batches (`masks` `[B, H, W]` with the dataset's `ignore_index`), grouped by shape.

    With `background_classes`, batches also carry `foreground`: the pixels of every other class (the
    ignore index is never foreground), for the background and cue perturbations.
    """
    for batch, skipped in iterate_planned(images, batch_size, workers):
        if background_classes is not None and len(batch):
            batch = batch.replace(foreground=segmentation_foreground(batch.masks, background_classes,
                                                                     batch.ignore_index))
        yield batch, BatchInfo(skipped=skipped)


def canvas_scale(height: int, width: int, canvas: tuple[int, int]) -> float:
    """The letterbox scale of a `height` x `width` image fitted inside `canvas` (aspect ratio kept)."""
    return min(canvas[0] / height, canvas[1] / width)


def fitted_size(size: tuple[int, int], canvas: tuple[int, int]) -> tuple[list[int], float]:
    """The (height, width) an image of `size` takes inside `canvas` keeping its aspect ratio, and the scale."""
    scale = canvas_scale(size[0], size[1], canvas)
    return [min(canvas[0], max(1, round(size[0] * scale))), min(canvas[1], max(1, round(size[1] * scale)))], scale


def fit_to_canvas(
    image: Tensor, targets: ObjectTargets, canvas: tuple[int, int]
) -> tuple[Tensor, ObjectTargets, float]:
    """Resize `image` to fit inside `canvas` keeping its aspect ratio, pad bottom/right with zeros, and
    scale its targets the same way. Returns (image, targets, scale)."""
    size, scale = fitted_size(tuple(image.shape[-2:]), canvas)
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


def _canvas_size(canvas: Any) -> tuple[int, int]:
    try:
        height, width = canvas
    except (TypeError, ValueError):
        raise DatasetError(f"canvas must be (height, width), got {canvas!r}") from None
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in (height, width)):
        raise DatasetError(f"canvas must be two positive integers (height, width), got {canvas!r}")
    return height, width


class OnCanvas:
    """Detection images letterboxed into one canvas (in the loader workers); their scales are a function
    of each image's annotated size, so they can be looked up by sample id when scoring."""

    def __init__(self, images: DetectionImages, canvas: tuple[int, int]) -> None:
        self.images = images
        self.canvas = _canvas_size(canvas)
        self.strict = images.strict

    def __len__(self) -> int:
        return len(self.images)

    def shape(self, index: int) -> tuple[int, int]:
        return self.canvas

    def load(self, index: int) -> tuple[Any, ...] | SkippedFile:
        item = self.images.load(index)
        if isinstance(item, SkippedFile):
            return item
        image, targets, sample_id, *foreground = item
        if foreground:  # object pixels follow the image onto the canvas (nearest; padding is background)
            fitted, _ = fitted_size(tuple(image.shape[-2:]), self.canvas)
            mask = TF.resize(foreground[0][None].to(torch.uint8), fitted, interpolation=InterpolationMode.NEAREST_EXACT)
            foreground = [TF.pad(mask, [0, 0, self.canvas[1] - fitted[1], self.canvas[0] - fitted[0]], fill=0)[0].bool()]
        image, targets, _ = fit_to_canvas(image, targets, self.canvas)
        return (image, targets, sample_id, *foreground)

    def collate(self, items: list[tuple[Any, ...]]) -> Batch:
        if not items:
            return Batch(images=torch.empty((0, 3, *self.canvas), dtype=torch.uint8), boxes=[])
        return self.images.collate(items)

    def scales(self, sample_ids: Tensor) -> Tensor:
        """[B] float32: the canvas scale of each sample."""
        samples = self.images.dataset.samples
        return torch.tensor([canvas_scale(samples[i].height, samples[i].width, self.canvas)
                             for i in sample_ids.tolist()], dtype=torch.float32)
