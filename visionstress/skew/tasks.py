"""What a task contributes to the skew matrix: the one narrow interface the loop talks to.

The loop (visionstress.skew.run) reads, decodes, batches, runs the model and aggregates without knowing
the task. A task says which knobs apply to it, how a decoded image becomes the model's pixels under a
recipe, what its per-image target is, how the model's output becomes per-image predictions, how those
are scored, how they agree with the reference's, and the paired statistics of a cell against the
reference. Classification and segmentation implement `SkewTask`; detection plugs in the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from visionstress.skew.cells import KNOBS, Recipe, SkewError, reference_recipe
from visionstress.skew.preprocess import classification_pixels, native_pixels
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


class SkewTask(Protocol):
    name: str
    metric: str  # the main metric, higher is better
    knobs: tuple[str, ...]  # the knobs that apply
    catalogue: tuple[str, ...]  # the knobs the default matrix varies
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

    def predict(self, adapter: Any, inputs: torch.Tensor, targets: list[Any]) -> list[Any]:
        """Per-image predictions on the host for same-shape model inputs (float `[B, 3, h, w]`), in the
        frame of their targets."""

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


class ClassificationSkew:
    """Top-1 per cell; agreement is the share of images whose top-1 class is the reference's (1 - flip
    rate); paired test: exact McNemar on top-1 correctness."""

    name = "classification"
    metric = "top1"
    knobs = tuple(KNOBS)
    catalogue = tuple(KNOBS)
    test = "exact McNemar on per-image top-1"
    interval = ("top1: percentile bootstrap over images; change: Clopper-Pearson on the discordant images "
                "(95% each, not adjusted over the cells)")

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

    def predict(self, adapter: Any, inputs: torch.Tensor, targets: list[Any]) -> list[torch.Tensor]:
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
    test = "paired bootstrap over images of the mIoU difference"
    interval = "mIoU and change: percentile bootstrap over images, the same resamples (95%, not adjusted over the cells)"

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)

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

    def predict(self, adapter: Any, inputs: torch.Tensor, targets: list[Any]) -> list[torch.Tensor]:
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


def _clean_row(row: Any) -> dict[str, Any]:
    return {"perturbation": "clean", "family": "clean", "severity": 0, "metrics": row.metrics,
            "ci": {k: list(v) for k, v in row.ci.items()}}


SKEW_TASKS: dict[str, type] = {"classification": ClassificationSkew, "segmentation": SegmentationSkew}


def get_skew_task(name: str, **settings: Any) -> SkewTask:
    """The task called `name`, configured with its `settings` (segmentation: `num_classes`, `ignore_index`)."""
    if name not in SKEW_TASKS:
        raise SkewError(f"--task {name}: the skew matrix supports {', '.join(SKEW_TASKS)} so far")
    return SKEW_TASKS[name](**settings)
