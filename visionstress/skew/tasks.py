"""What a task contributes to the skew matrix: the one narrow interface the loop talks to.

The loop (visionstress.skew.run) reads, decodes, batches, runs the model and aggregates without knowing
the task. A task says which knobs apply to it, how a decoded image becomes the model's pixels under a
recipe, what its per-image target is, how the model's output becomes per-image predictions, how those
are scored, how they agree with the reference's, and the paired statistics of a cell against the
reference. Classification, segmentation and detection implement `SkewTask`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from visionstress.skew.cells import KNOBS, Recipe, SkewError, reference_recipe
from visionstress.skew.preprocess import classification_pixels, detection_pixels, native_pixels
from visionstress.skew.stats import paired_binary, paired_bootstrap


@dataclass(frozen=True)
class CellStatistics:
    """A cell's row numbers: its metrics with intervals, the paired difference to the reference with
    its interval and p-value (None when it cannot be computed; not yet adjusted over cells), and the
    test that produced them."""

    metrics: dict[str, float]
    ci: dict[str, list[float]]
    delta: dict[str, float]
    delta_ci: dict[str, list[float]]
    p_value: float | None
    test: str
    details: dict[str, Any]
    agreement: float | None = None  # the row's agreement when it is not the mean over images (pooled)


class SkewTask(Protocol):
    name: str
    metric: str  # the main metric, higher is better
    knobs: tuple[str, ...]  # the knobs that apply
    catalogue: tuple[str, ...]  # the knobs the default matrix varies
    values: dict[str, tuple[str, ...]]  # a knob's catalogue values where only some apply to this task
    test: str  # the paired test, as the report names it
    interval: str  # how the metric's and the difference's intervals are computed

    def reference(self, config: Any) -> Recipe:
        """The reference recipe of the model's DataConfig."""

    def canonical(self, recipe: Recipe, reference: Recipe) -> Recipe:
        """`recipe` with settings that cannot matter to this task set to the reference's."""

    def adapter(self, loaded: Any, input_size: tuple[int, int] | None, device: torch.device, amp: bool,
                num_classes: int) -> Any:
        """The model behind `predict`, fed already-normalised float inputs (of `input_size`, if fixed)."""

    def pixels(self, image: torch.Tensor, recipe: Recipe) -> torch.Tensor:
        """Decoded uint8 `[3, H, W]` -> the uint8 pixels the model sees under `recipe` (before the
        channel order and normalisation, which the loop applies batched on the device). Runs in the
        loader workers."""

    def target(self, sample: Any, image: torch.Tensor) -> Any:
        """The sample's ground truth (`image`: its reference decoding, for checks). Runs in the workers."""

    def predict(self, adapter: Any, inputs: torch.Tensor, targets: list[Any], recipe: Recipe | None) -> list[Any]:
        """Per-image predictions on the host for same-shape model inputs (float `[B, 3, h, w]`) made by
        `recipe`, in the frame of their targets."""

    def score(self, predictions: list[Any], targets: list[Any]) -> np.ndarray:
        """Per-image sufficient statistics of the metric (`[B, ...]`); a None prediction (the cell's
        decoder could not read the file) scores as a failure."""

    def agreement(self, reference: list[Any], predictions: list[Any], targets: list[Any]) -> np.ndarray:
        """Per-image agreement with the reference's predictions, in [0, 1] (0 for None)."""

    def columns(self, predictions: list[Any], targets: list[Any]) -> dict[str, np.ndarray]:
        """Per-image record columns (what was predicted), for skew_records.parquet."""

    def reference_evaluator(self, class_names: list[str], bootstrap: int, seed: int) -> Any:
        """Scores the reference as `visionstress run` scores its clean pass: `update(sample_ids, targets,
        predictions)` per batch, then `row()`, the scorecard results row."""

    def statistics(self, reference: np.ndarray, scores: np.ndarray, agreement: np.ndarray, *, bootstrap: int,
                   seed: int, alpha: float) -> CellStatistics:
        """The cell against the reference on the same images (`reference`/`scores` stacked per image)."""

    def smallest_p(self, resamples: int) -> float | None:
        """The smallest p-value the paired test can give with `resamples` bootstrap resamples (None: no such
        floor), so the summary can say when too few resamples leave no cell able to be significant."""


class ClassificationSkew:
    """Top-1 per cell; agreement is the share of images whose top-1 class is the reference's (1 - flip
    rate); paired test: exact McNemar on top-1 correctness."""

    name = "classification"
    metric = "top1"
    knobs = tuple(KNOBS)
    catalogue = tuple(KNOBS)
    values: dict[str, tuple[str, ...]] = {}
    test = "exact McNemar on per-image top-1"
    interval = ("top1: Clopper-Pearson; change: Clopper-Pearson on the discordant images "
                "(95% each, not adjusted over the cells)")

    def smallest_p(self, resamples: int) -> float | None:
        return None  # exact McNemar: its limit is the number of images (see skew.run._detectable)

    def reference(self, config: Any) -> Recipe:
        return reference_recipe(config)

    def canonical(self, recipe: Recipe, reference: Recipe) -> Recipe:
        return recipe

    def adapter(self, loaded: Any, input_size: tuple[int, int] | None, device: torch.device, amp: bool,
                num_classes: int) -> Any:
        from visionstress.models import ClassifierAdapter, DataConfig

        # mean 0, std 1 and float inputs make the adapter's normalisation the identity, bit for bit
        identity = DataConfig(input_size=input_size, resize=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        return ClassifierAdapter(loaded, identity, device=device, amp=amp, num_classes=num_classes)

    def pixels(self, image: torch.Tensor, recipe: Recipe) -> torch.Tensor:
        return classification_pixels(image, recipe)

    def target(self, sample: Any, image: torch.Tensor) -> int:
        return int(sample.label)

    def predict(self, adapter: Any, inputs: torch.Tensor, targets: list[Any],
                recipe: Recipe | None = None) -> list[torch.Tensor]:
        return list(adapter.predict(inputs).logits.float().cpu())

    def score(self, predictions: list[Any], targets: list[Any]) -> np.ndarray:
        return np.array([p is not None and int(p.argmax()) == t for p, t in zip(predictions, targets)], bool)

    def agreement(self, reference: list[Any], predictions: list[Any], targets: list[Any]) -> np.ndarray:
        return np.array([float(p is not None and int(p.argmax()) == int(r.argmax()))
                         for r, p in zip(reference, predictions)])

    def columns(self, predictions: list[Any], targets: list[Any]) -> dict[str, np.ndarray]:
        prediction = [-1 if p is None else int(p.argmax()) for p in predictions]
        confidence = [math.nan if p is None else float(torch.softmax(p, 0).max()) for p in predictions]
        return {"prediction": np.array(prediction, np.int64), "confidence": np.array(confidence, np.float32),
                "correct": self.score(predictions, targets)}

    def reference_evaluator(self, class_names: list[str], bootstrap: int, seed: int) -> _ClassificationClean:
        return _ClassificationClean(class_names, bootstrap, seed)

    def statistics(self, reference: np.ndarray, scores: np.ndarray, agreement: np.ndarray, *, bootstrap: int,
                   seed: int, alpha: float) -> CellStatistics:
        paired = paired_binary(reference, scores, bootstrap=bootstrap, seed=seed, alpha=alpha)
        return CellStatistics(
            metrics={"top1": paired.value, "flip_rate": 1.0 - float(agreement.mean())},
            ci={} if paired.interval is None else {"top1": list(paired.interval)},
            delta={"top1": paired.delta}, delta_ci={"top1": list(paired.delta_interval)},
            p_value=paired.p_value, test="mcnemar",
            details={"reference_only": paired.reference_only, "cell_only": paired.cell_only},
        )


class _ClassificationClean:
    """The reference through the run's own ClassificationEvaluator, as its clean pass."""

    def __init__(self, class_names: list[str], bootstrap: int, seed: int) -> None:
        from visionstress.evaluators import ClassificationEvaluator

        self.evaluator = ClassificationEvaluator(len(class_names), class_names, bootstrap=bootstrap, seed=seed)

    def update(self, sample_ids: list[int], targets: list[Any], predictions: list[torch.Tensor]) -> None:
        self.evaluator.update_arrays("clean", 0, torch.tensor(sample_ids), torch.tensor(targets), torch.stack(predictions))

    def row(self) -> dict[str, Any]:
        return _clean_row(self.evaluator.finalize().rows[0])


class SegmentationSkew:
    """mIoU per cell, images fed at their own size as `visionstress run` feeds them (an `input_size` cell
    rescales them, and the logits are brought back to the mask's size bilinearly, as the adapter does
    for low-resolution outputs); agreement is the share of scored pixels whose class is the reference's;
    paired test: bootstrap over images of the mIoU difference."""

    name = "segmentation"
    metric = "mIoU"
    knobs = ("decoder", "resize_backend", "interpolation", "input_size", "channel_order", "normalization", "jpeg",
             "exif")
    catalogue = ("decoder", "input_size", "channel_order", "normalization", "jpeg", "exif")
    values: dict[str, tuple[str, ...]] = {}
    test = "paired bootstrap over images of the mIoU difference"
    interval = "mIoU and change: percentile bootstrap over images, the same resamples (95%, not adjusted over the cells)"

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)

    def smallest_p(self, resamples: int) -> float | None:
        return 2.0 / (resamples + 1) if resamples else None  # skew.stats.paired_bootstrap's share of resamples

    def reference(self, config: Any) -> Recipe:
        return reference_recipe(config, native_size=True)

    def canonical(self, recipe: Recipe, reference: Recipe) -> Recipe:
        if recipe.input_size is None and recipe.scale == 1.0:  # nothing is resized: the filter cannot matter
            return replace(recipe, resize_backend=reference.resize_backend, interpolation=reference.interpolation)
        return recipe

    def adapter(self, loaded: Any, input_size: tuple[int, int] | None, device: torch.device, amp: bool,
                num_classes: int) -> Any:
        from visionstress.models import DataConfig, SegmenterAdapter

        identity = DataConfig(resize=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        return SegmenterAdapter(loaded, identity, device=device, amp=amp, num_classes=num_classes)

    def pixels(self, image: torch.Tensor, recipe: Recipe) -> torch.Tensor:
        return native_pixels(image, recipe)

    def target(self, sample: Any, image: torch.Tensor) -> torch.Tensor:
        from visionstress.datasets import DatasetError, read_mask

        mask = read_mask(sample.mask_path)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DatasetError(f"{sample.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                               f"{sample.path} is {image.shape[2]}x{image.shape[1]} (width x height)")
        return mask

    def predict(self, adapter: Any, inputs: torch.Tensor, targets: list[Any],
                recipe: Recipe | None = None) -> list[torch.Tensor]:
        logits = adapter.predict(inputs).logits
        labels = []
        for z, mask in zip(logits, targets):
            if tuple(z.shape[-2:]) != tuple(mask.shape):
                z = F.interpolate(z[None], size=tuple(mask.shape), mode="bilinear", align_corners=False)[0]
            labels.append(z.argmax(0).cpu())
        return labels

    def score(self, predictions: list[Any], targets: list[Any]) -> np.ndarray:
        """`[B, 3, C]`: per image and class, pixels in the intersection, the ground truth, the prediction."""
        classes = self.num_classes
        out = np.zeros((len(targets), 3, classes), np.int64)
        for i, (pred, mask) in enumerate(zip(predictions, targets)):
            valid = mask != self.ignore_index
            gt = mask[valid]
            out[i, 1] = torch.bincount(gt, minlength=classes).numpy()
            if pred is not None:
                p = pred[valid]
                out[i, 2] = torch.bincount(p, minlength=classes).numpy()
                out[i, 0] = torch.bincount(gt[p == gt], minlength=classes).numpy()
        return out

    def agreement(self, reference: list[Any], predictions: list[Any], targets: list[Any]) -> np.ndarray:
        out = []
        for r, p, mask in zip(reference, predictions, targets):
            valid = mask != self.ignore_index
            out.append(0.0 if p is None else float((r[valid] == p[valid]).float().mean()) if valid.any() else 1.0)
        return np.array(out)

    def columns(self, predictions: list[Any], targets: list[Any]) -> dict[str, np.ndarray]:
        from visionstress.evaluators.segmentation import _metrics_from_totals

        counts = self.score(predictions, targets).astype(np.float64)
        per_image = _metrics_from_totals(counts[:, 0], counts[:, 1], counts[:, 2])
        return {"miou": per_image["mIoU"].astype(np.float32),
                "pixel_accuracy": per_image["pixel_accuracy"].astype(np.float32)}

    def reference_evaluator(self, class_names: list[str], bootstrap: int, seed: int) -> _SegmentationClean:
        return _SegmentationClean(class_names, self.ignore_index, bootstrap, seed)

    def statistics(self, reference: np.ndarray, scores: np.ndarray, agreement: np.ndarray, *, bootstrap: int,
                   seed: int, alpha: float) -> CellStatistics:
        from visionstress.evaluators.segmentation import _metrics_from_totals

        def metrics(totals: np.ndarray) -> dict[str, np.ndarray]:
            c = totals.shape[-1] // 3
            return _metrics_from_totals(totals[..., :c], totals[..., c:2 * c], totals[..., 2 * c:])

        paired = paired_bootstrap(reference.reshape(len(reference), -1), scores.reshape(len(scores), -1), metrics,
                                  ("mIoU", "pixel_accuracy"), bootstrap=bootstrap, seed=seed, alpha=alpha)
        return CellStatistics(
            metrics={**paired.values, "pixel_agreement": float(agreement.mean())}, ci=paired.intervals,
            delta=paired.deltas, delta_ci=paired.delta_intervals, p_value=paired.p_value,
            test="paired_bootstrap" if paired.p_value is not None else "none", details={})


class _SegmentationClean:
    """The reference through the run's own SegmentationEvaluator, as its clean pass (image by image:
    images of different sizes do not stack)."""

    def __init__(self, class_names: list[str], ignore_index: int, bootstrap: int, seed: int) -> None:
        from visionstress.evaluators import SegmentationEvaluator

        self.evaluator = SegmentationEvaluator(len(class_names), class_names, ignore_index=ignore_index,
                                               bootstrap=bootstrap, seed=seed)

    def update(self, sample_ids: list[int], targets: list[Any], predictions: list[torch.Tensor]) -> None:
        for sample_id, mask, labels in zip(sample_ids, targets, predictions):
            self.evaluator.update_arrays("clean", 0, torch.tensor([sample_id]), mask[None], SimpleNamespace(labels=labels[None]))

    def row(self) -> dict[str, Any]:
        return _clean_row(self.evaluator.finalize().rows[0])


@dataclass(frozen=True)
class AnnotatedImage:
    """A detection sample as the skew loop reads it: the image file (absolute path), its objects
    (`ObjectTargets`, xyxy in the image's own pixels) and its annotated (height, width), the frame
    every cell's boxes are mapped back to."""

    path: str
    objects: Any
    size: tuple[int, int]


@dataclass(frozen=True)
class Detections:
    """One image's detections in its original pixels (CPU): xyxy boxes, scores, category ids."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def detection_samples(dataset: Any) -> list[AnnotatedImage]:
    """The skew loop's samples of a loaded COCO dataset (visionstress.datasets.load_coco_dataset), with
    the objects exactly as `visionstress run` reads them."""
    from visionstress.datasets import DetectionImages

    images = DetectionImages(dataset)
    return [AnnotatedImage(str(Path(dataset.images_root) / s.path), images._targets(s), (s.height, s.width))
            for s in dataset.samples]


class DetectionSkew:
    """COCO AP per cell through the run's DetectionEvaluator. Images are fed at their own size as
    `visionstress run --task detection` feeds them (the model resizes them itself), or letterboxed into
    `canvas` as `--canvas` does; a `crop=letterbox` / `crop=squash` cell fits or stretches them into the
    canvas (or the cell's `input_size=HxW`), and every cell's boxes are mapped back to the original
    pixels before scoring. Agreement is the share of the reference's detections (score >= the score
    threshold) that the cell also finds: a detection of the same class, at or above the threshold, at IoU
    >= 0.5 (matched one to one, most confident first). Paired test: bootstrap over images of the AP
    difference, with `detection_statistics` (the function behind the run's AP and its interval)."""

    name = "detection"
    metric = "AP"
    knobs = ("decoder", "resize_backend", "interpolation", "crop", "input_size", "channel_order", "normalization",
             "jpeg", "exif")
    test = "paired bootstrap over images of the AP difference"
    interval = ("AP and change: percentile bootstrap over images, the same resamples (95%, not adjusted over the "
                "cells; the change's interval and p from the smoothed resampled differences)")
    reported = ("AP", "AP50", "AP75", "AR100", "miss_rate", "fp_per_image")
    match_iou = 0.5

    def __init__(self, categories: list[dict[str, Any]], *, canvas: tuple[int, int] | None = None,
                 label_map: dict[int, int] | None = None, postprocess: Any = None,
                 score_threshold: float = 0.5) -> None:
        self.categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]
        self.canvas = None if canvas is None else (int(canvas[0]), int(canvas[1]))
        self.label_map = label_map
        self.postprocess = postprocess
        self.score_threshold = float(score_threshold)
        # without a canvas, letterbox and squash have no size to fit into, and nothing is resized
        resized = () if self.canvas is None else ("resize_backend", "interpolation", "crop")
        self.catalogue = ("decoder", *resized, "input_size", "channel_order", "normalization", "jpeg", "exif")
        self.values = {"crop": ("letterbox", "squash")}

    def smallest_p(self, resamples: int) -> float | None:
        return None  # the smoothed bootstrap (comparison.statistics.bootstrap_test) has no floor

    def reference(self, config: Any) -> Recipe:
        zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        normalise = {} if config is None else {"mean": tuple(config.mean), "std": tuple(config.std),
                                               "channel_order": config.channel_order.lower()}
        # a model without a DataConfig takes [0, 1] pixels and normalises itself (torchvision's convention)
        base = Recipe(input_size=None, crop="none", interpolation="bilinear", mean=zero, std=one)
        base = replace(base, **normalise)
        return base if self.canvas is None else replace(base, input_size=self.canvas, crop="letterbox")

    def canonical(self, recipe: Recipe, reference: Recipe) -> Recipe:
        if recipe.crop == "center":
            raise SkewError("crop=center-F does not apply to detection (boxes are scored on the whole image); "
                            "use crop=letterbox or crop=squash")
        if recipe.crop in ("letterbox", "squash") and recipe.input_size is None:
            if self.canvas is None:
                raise SkewError(f"crop={recipe.crop} needs a size to fit the images into: add input_size=HxW to the "
                                "cell, or give --canvas HxW")
            size = tuple(max(16, round(s * recipe.scale)) for s in self.canvas)
            recipe = replace(recipe, input_size=size, scale=1.0)
        if recipe.crop == "none" and recipe.input_size is not None:  # a size without a crop stretches to it
            recipe = replace(recipe, crop="squash")
        if recipe.input_size is None and recipe.scale == 1.0:  # nothing is resized: the filter cannot matter
            return replace(recipe, resize_backend=reference.resize_backend, interpolation=reference.interpolation)
        return recipe

    def adapter(self, loaded: Any, input_size: tuple[int, int] | None, device: torch.device, amp: bool,
                num_classes: int) -> Any:
        from visionstress.models import DetectorAdapter

        # no data config: the loop feeds inputs already normalised, which the adapter passes through
        return DetectorAdapter(loaded, device=device, amp=amp, data_config=None, postprocess=self.postprocess,
                               label_map=self.label_map, categories=[c["id"] for c in self.categories])

    def pixels(self, image: torch.Tensor, recipe: Recipe) -> torch.Tensor:
        return detection_pixels(image, recipe)

    def target(self, sample: Any, image: torch.Tensor) -> AnnotatedImage:
        from visionstress.datasets import DatasetError

        height, width = (int(s) for s in image.shape[-2:])
        if (height, width) != tuple(sample.size):
            hint = " (EXIF orientation turned it?)" if (height, width) == tuple(sample.size)[::-1] else ""
            raise DatasetError(f"{sample.path}: decoded image is {width}x{height} but its annotations say "
                               f"{sample.size[1]}x{sample.size[0]}{hint}; its boxes would not match the pixels")
        return sample

    def predict(self, adapter: Any, inputs: torch.Tensor, targets: list[Any],
                recipe: Recipe | None = None) -> list[Detections]:
        from visionstress.datasets.batching import canvas_scale

        out = adapter.predict(inputs)
        frame = tuple(int(s) for s in inputs.shape[-2:])
        detections = []
        for boxes, scores, labels, target in zip(out.boxes, out.scores, out.labels, targets):
            boxes = boxes.float().cpu()
            height, width = target.size
            if recipe is not None and recipe.crop == "letterbox":  # as the run maps --canvas boxes back
                boxes = boxes / canvas_scale(height, width, frame)
            elif frame != (height, width):
                boxes = boxes * torch.tensor([width / frame[1], height / frame[0]] * 2, dtype=torch.float32)
            detections.append(Detections(boxes, scores.float().cpu(), labels.cpu()))
        return detections

    def score(self, predictions: list[Any], targets: list[Any]) -> np.ndarray:
        """An object array: per image, the run's detection record columns (COCO matches at area 'all'
        and the counts at the score threshold), from the DetectionEvaluator itself."""
        from visionstress.evaluators import DetectionEvaluator

        evaluator = DetectionEvaluator(self.categories, size_bins={}, score_threshold=self.score_threshold, bootstrap=0)
        found = [_or_nothing(p) for p in predictions]
        columns = evaluator.update_arrays(
            "clean", 0, torch.arange(len(targets)), [t.size for t in targets], [t.objects for t in targets],
            SimpleNamespace(boxes=[p.boxes for p in found], scores=[p.scores for p in found],
                            labels=[p.labels for p in found]))
        out = np.empty(len(targets), dtype=object)
        for i in range(len(targets)):
            out[i] = {name: columns[name][i] for name in _DETECTION_SCORES}
        return out

    def agreement(self, reference: list[Any], predictions: list[Any], targets: list[Any]) -> np.ndarray:
        """Per image, the share of the reference's confident detections the cell also finds (NaN where the
        reference has none: those images carry no weight in the row's pooled agreement)."""
        from torchvision.ops import box_iou

        out = []
        for r, p in zip(reference, predictions):
            keep = r.scores >= self.score_threshold
            boxes, labels, order = r.boxes[keep], r.labels[keep], torch.argsort(r.scores[keep], descending=True)
            if len(boxes) == 0:
                out.append(math.nan)
                continue
            if p is None:
                out.append(0.0)
                continue
            mine = p.scores >= self.score_threshold
            iou = box_iou(boxes, p.boxes[mine]) if bool(mine.any()) else torch.zeros((len(boxes), 0))
            iou[labels[:, None] != p.labels[mine][None, :]] = 0.0
            used = torch.zeros(iou.shape[1], dtype=torch.bool)
            matched = 0
            for i in order.tolist():
                candidates = torch.where(used, -1.0, iou[i])
                if candidates.numel() and float(candidates.max()) >= self.match_iou:
                    used[int(candidates.argmax())] = True
                    matched += 1
            out.append(matched / len(boxes))
        return np.array(out, dtype=np.float64)

    def columns(self, predictions: list[Any], targets: list[Any]) -> dict[str, np.ndarray]:
        records = self.score(predictions, targets)
        return {name: np.array([r[name] for r in records], np.int32) for name in ("num_pred", "tp", "fp", "fn")}

    def reference_evaluator(self, class_names: list[str], bootstrap: int, seed: int) -> _DetectionClean:
        return _DetectionClean(self.categories, self.score_threshold, bootstrap, seed)

    def statistics(self, reference: np.ndarray, scores: np.ndarray, agreement: np.ndarray, *, bootstrap: int,
                   seed: int, alpha: float) -> CellStatistics:
        from visionstress.comparison.statistics import bootstrap_test
        from visionstress.evaluators.bootstrap import percentile_interval, resample_weights
        from visionstress.evaluators.detection import detection_statistics

        ref_fn, cell_fn = (detection_statistics(_match_columns(x)) for x in (reference, scores))
        n = len(scores)
        ref_point, cell_point = ref_fn(np.ones((1, n))), cell_fn(np.ones((1, n)))
        values = {m: float(cell_point[m][0]) for m in self.reported}
        deltas = {m: values[m] - float(ref_point[m][0]) for m in self.reported}
        weight = np.array([r["num_pred"] for r in reference], dtype=np.float64)
        pooled = float(np.where(weight > 0, np.nan_to_num(agreement) * weight, 0).sum() / weight.sum()) \
            if weight.sum() else math.nan
        metrics = {**values, "detection_agreement": pooled}
        if bootstrap == 0:
            return CellStatistics(metrics, {}, deltas, {}, None, "none", {}, pooled)
        drawn: dict[str, list[np.ndarray]] = {m: [] for m in self.reported}
        differences: dict[str, list[np.ndarray]] = {m: [] for m in self.reported}
        for weights in resample_weights(n, bootstrap, seed):  # the run's draws: the reference's interval is its
            ref_m, cell_m = ref_fn(weights), cell_fn(weights)
            for m in self.reported:
                drawn[m].append(cell_m[m])
                differences[m].append(cell_m[m] - ref_m[m])
        ci = {m: list(percentile_interval(np.concatenate(drawn[m]), alpha)) for m in self.reported}
        tests = {m: bootstrap_test(np.concatenate(differences[m]), alpha) for m in self.reported}
        delta_ci = {m: list(t.interval) for m, t in tests.items() if t is not None}
        main = tests[self.metric]
        return CellStatistics(metrics, ci, deltas, delta_ci, None if main is None else main.p_value,
                              "none" if main is None else "paired_bootstrap", {}, pooled)


_DETECTION_SCORES = ("num_pred", "tp", "fp", "fn", "dt_category", "dt_score", "dt_match", "dt_ignore", "gt_category",
                     "gt_ignore")


def _or_nothing(prediction: Detections | None) -> Detections:
    """A cell whose decoder could not read the image found nothing in it."""
    if prediction is not None:
        return prediction
    return Detections(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64))


def _match_columns(records: np.ndarray) -> dict[str, Any]:
    """Per-image detection records (an object array of dicts, in image order) as the record columns
    `detection_statistics` reads."""
    return {name: [r[name] for r in records] for name in _DETECTION_SCORES}


class _DetectionClean:
    """The reference through the run's own DetectionEvaluator, as its clean pass (image by image: images of
    different sizes do not stack), boxes already in the original pixels."""

    def __init__(self, categories: list[dict[str, Any]], score_threshold: float, bootstrap: int, seed: int) -> None:
        from visionstress.evaluators import DetectionEvaluator

        self.evaluator = DetectionEvaluator(categories, score_threshold=score_threshold, bootstrap=bootstrap, seed=seed)

    def update(self, sample_ids: list[int], targets: list[Any], predictions: list[Detections]) -> None:
        self.evaluator.update_arrays("clean", 0, torch.tensor(sample_ids), [t.size for t in targets],
                                     [t.objects for t in targets],
                                     SimpleNamespace(boxes=[p.boxes for p in predictions],
                                                     scores=[p.scores for p in predictions],
                                                     labels=[p.labels for p in predictions]))

    def row(self) -> dict[str, Any]:
        return _clean_row(self.evaluator.finalize().rows[0])


def _clean_row(row: Any) -> dict[str, Any]:
    return {"perturbation": "clean", "family": "clean", "severity": 0, "metrics": row.metrics,
            "ci": {k: list(v) for k, v in row.ci.items()}}


SKEW_TASKS: dict[str, type] = {"classification": ClassificationSkew, "segmentation": SegmentationSkew,
                               "detection": DetectionSkew}


def get_skew_task(name: str, **settings: Any) -> SkewTask:
    """The task called `name`, configured with its `settings` (segmentation: `num_classes`, `ignore_index`;
    detection: `categories`, `canvas`, `label_map`, `postprocess`, `score_threshold`)."""
    if name not in SKEW_TASKS:
        raise SkewError(f"--task {name}: the skew matrix supports {', '.join(SKEW_TASKS)} so far")
    return SKEW_TASKS[name](**settings)
