"""What a task contributes to the skew matrix: the one narrow interface the loop talks to.

The loop (visionstress.skew.run) decodes, batches, runs the model and aggregates without knowing the
task. A task says which knobs apply to it, how a decoded image becomes the model's pixels under a
recipe, how the model's output becomes per-image predictions, how those are scored against the
targets, how they agree with the reference's, and the paired statistics of a cell against the
reference. Detection and segmentation plug in by implementing `SkewTask` and adding themselves to
`SKEW_TASKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from visionstress.skew.cells import KNOBS, Recipe
from visionstress.skew.preprocess import classification_pixels
from visionstress.skew.stats import paired_binary


@dataclass(frozen=True)
class CellStatistics:
    """A cell's row numbers: its metrics with intervals, the paired difference to the reference with
    its interval and p-value (not yet adjusted over cells), and the test that produced them."""

    metrics: dict[str, float]
    ci: dict[str, list[float]]
    delta: dict[str, float]
    delta_ci: dict[str, list[float]]
    p_value: float
    test: str
    details: dict[str, Any]


class SkewTask(Protocol):
    name: str
    metric: str  # the main metric, higher is better
    knobs: tuple[str, ...]  # the knobs that apply
    test: str  # the paired test, as the report names it
    interval: str  # how the metric's and the difference's intervals are computed

    def adapter(self, loaded: Any, input_size: tuple[int, int], device: torch.device, amp: bool,
                num_classes: int) -> Any:
        """The model behind `predict`, fed already-normalised float inputs of `input_size`."""

    def pixels(self, image: torch.Tensor, recipe: Recipe) -> torch.Tensor:
        """Decoded uint8 `[3, H, W]` -> the uint8 pixels the model sees under `recipe` (before the
        channel order and normalisation, which the loop applies batched on the device)."""

    def predict(self, adapter: Any, inputs: torch.Tensor) -> Any:
        """Per-image predictions on the host for a batch of model inputs (float `[B, 3, h, w]`)."""

    def score(self, predictions: Any, targets: torch.Tensor, valid: np.ndarray) -> np.ndarray:
        """Per-image sufficient statistics of the metric (`[B, ...]`); images a cell could not
        decode (`valid` False) score as failures."""

    def agreement(self, reference: Any, predictions: Any, valid: np.ndarray) -> np.ndarray:
        """Per-image agreement with the reference's predictions, in [0, 1]."""

    def columns(self, predictions: Any, valid: np.ndarray) -> dict[str, np.ndarray]:
        """Per-image record columns (what was predicted), for skew_records.parquet."""

    def reference_evaluator(self, class_names: list[str], bootstrap: int, seed: int) -> Any:
        """Scores the reference as `visionstress run` scores its clean pass: `update(sample_ids,
        targets, predictions)` per batch, then `row()`, the scorecard results row."""

    def statistics(self, reference: np.ndarray, scores: np.ndarray, agreement: np.ndarray, *, bootstrap: int,
                   seed: int, alpha: float) -> CellStatistics:
        """The cell against the reference on the same images (`reference`/`scores` stacked per image)."""


class ClassificationSkew:
    """Top-1 per cell; agreement is the share of images whose top-1 class is the reference's (1 - flip
    rate); paired test: exact McNemar on top-1 correctness."""

    name = "classification"
    metric = "top1"
    knobs = tuple(KNOBS)
    test = "exact McNemar on per-image top-1"
    interval = ("top1: percentile bootstrap over images; change: Clopper-Pearson on the discordant images "
                "(95% each, not adjusted over the cells)")

    def adapter(self, loaded: Any, input_size: tuple[int, int], device: torch.device, amp: bool,
                num_classes: int) -> Any:
        from visionstress.models import ClassifierAdapter, DataConfig

        # mean 0, std 1 and float inputs make the adapter's normalisation the identity, bit for bit
        identity = DataConfig(input_size=input_size, resize=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        return ClassifierAdapter(loaded, identity, device=device, amp=amp, num_classes=num_classes)

    def pixels(self, image: torch.Tensor, recipe: Recipe) -> torch.Tensor:
        return classification_pixels(image, recipe)

    def predict(self, adapter: Any, inputs: torch.Tensor) -> torch.Tensor:
        return adapter.predict(inputs).logits.float().cpu()

    def score(self, predictions: torch.Tensor, targets: torch.Tensor, valid: np.ndarray) -> np.ndarray:
        return (predictions.argmax(1).numpy() == targets.numpy()) & valid

    def agreement(self, reference: torch.Tensor, predictions: torch.Tensor, valid: np.ndarray) -> np.ndarray:
        return ((reference.argmax(1) == predictions.argmax(1)).numpy() & valid).astype(np.float64)

    def columns(self, predictions: torch.Tensor, valid: np.ndarray) -> dict[str, np.ndarray]:
        confidence, prediction = torch.softmax(predictions, 1).max(1)
        return {"prediction": np.where(valid, prediction.numpy(), -1),
                "confidence": np.where(valid, confidence.numpy(), np.nan).astype(np.float32)}

    def reference_evaluator(self, class_names: list[str], bootstrap: int, seed: int) -> _CleanPass:
        return _CleanPass(class_names, bootstrap, seed)

    def statistics(self, reference: np.ndarray, scores: np.ndarray, agreement: np.ndarray, *, bootstrap: int,
                   seed: int, alpha: float) -> CellStatistics:
        paired = paired_binary(reference, scores, bootstrap=bootstrap, seed=seed, alpha=alpha)
        flip_rate = 1.0 - float(agreement.mean())
        return CellStatistics(
            metrics={"top1": paired.value, "flip_rate": flip_rate},
            ci={} if paired.interval is None else {"top1": list(paired.interval)},
            delta={"top1": paired.delta}, delta_ci={"top1": list(paired.delta_interval)},
            p_value=paired.p_value, test="mcnemar",
            details={"reference_only": paired.reference_only, "cell_only": paired.cell_only},
        )


class _CleanPass:
    """The reference through the run's own ClassificationEvaluator, as its clean pass."""

    def __init__(self, class_names: list[str], bootstrap: int, seed: int) -> None:
        from visionstress.evaluators import ClassificationEvaluator

        self.evaluator = ClassificationEvaluator(len(class_names), class_names, bootstrap=bootstrap, seed=seed)

    def update(self, sample_ids: torch.Tensor, targets: torch.Tensor, predictions: torch.Tensor) -> None:
        self.evaluator.update("clean", 0, sample_ids, targets, predictions)

    def row(self) -> dict[str, Any]:
        row = self.evaluator.finalize().rows[0]
        return {"perturbation": "clean", "family": "clean", "severity": 0, "metrics": row.metrics,
                "ci": {k: list(v) for k, v in row.ci.items()}}


SKEW_TASKS: dict[str, SkewTask] = {"classification": ClassificationSkew()}


def get_skew_task(name: str) -> SkewTask:
    from visionstress.skew.cells import SkewError

    if name not in SKEW_TASKS:
        raise SkewError(f"--task {name}: the skew matrix supports {', '.join(SKEW_TASKS)} so far")
    return SKEW_TASKS[name]
