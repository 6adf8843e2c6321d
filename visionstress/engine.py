"""One stress run: the image-major loop of DESIGN §1.

Each batch is decoded once, moved to the device once, and every perturbation x severity of the suite
runs on it while it is resident; the clean pass of a sample always comes first, so flip rates can
be computed as the perturbed passes stream by. Per-sample records go to Parquet as they are
produced; only compact per-sample arrays and confusion matrices stay in memory.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from visionstress.batch import Batch
from visionstress.perturbations import Perturbation, get_perturbation

CLEAN = "clean"


def demo_dir() -> Path:
    """The bundled demo's `shapes/` folder: inside the installed package (`visionstress/demo_data`, a wheel
    install) or in the source checkout beside it (`data/demo`, an editable install), whatever the
    current directory. pyproject.toml maps data/demo into the wheel as the `visionstress.demo_data`
    package, so both layouts hold the same files."""
    package = Path(__file__).resolve().parent
    candidates = [package / "demo_data" / "shapes", package.parent / "data" / "demo" / "shapes"]
    for candidate in candidates:
        if (candidate / "classifier.safetensors").is_file():
            return candidate
    raise FileNotFoundError(
        f"the bundled demo was not found (looked in {' and '.join(map(str, candidates))}); reinstall visionstress, "
        "or in a source checkout regenerate it with `python data/make_demo_dataset.py && python data/train_demo.py`"
    )


@dataclass(frozen=True)
class Pass:
    """One perturbation x severity of the suite (or the clean pass); `table` overrides the
    perturbation's severity table when the suite gives its own."""

    perturbation: str
    family: str
    severity: int
    table: tuple[Any, ...] | None = None


def suite_passes(suite: Any) -> list[Pass]:
    """The clean pass followed by every (perturbation, severity) of `suite`, in suite order."""
    passes = [Pass(CLEAN, CLEAN, 0)]
    for item in suite.items:
        family = get_perturbation(item.perturbation).family
        passes.extend(Pass(item.perturbation, family, s, item.table) for s in item.severities)
    return passes


def perturbation_for(p: Pass) -> Perturbation:
    """The registered perturbation, or a copy of it carrying the suite's own severity table."""
    perturbation = get_perturbation(p.perturbation)
    if p.table is None:
        return perturbation
    custom = copy.copy(perturbation)
    custom.severities = tuple(p.table)
    return custom


@dataclass
class RunTiming:
    """Where the time went, in seconds: reading+decoding, perturbing, model forward."""

    data: float = 0.0
    perturb: float = 0.0
    model: float = 0.0
    total: float = 0.0
    images: int = 0
    predictions: int = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "total_seconds": round(self.total, 4),
            "data_seconds": round(self.data, 4),
            "perturb_seconds": round(self.perturb, 4),
            "model_seconds": round(self.model, 4),
            "images": self.images,
            "predictions": self.predictions,
            "predictions_per_second": round(self.predictions / self.total, 2) if self.total > 0 else 0.0,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stream_passes(
    batches: Iterator[tuple[Batch, Any]],
    passes: Sequence[Pass],
    predict: Callable[[torch.Tensor], Any],
    consume: Callable[[Pass, Batch, Any], None],
    device: torch.device,
    seed: int,
    timing: RunTiming,
    on_batch: Callable[[Batch, Any], None] | None = None,
    on_pass: Callable[[int], None] | None = None,
) -> None:
    """Run every pass on every batch, image-major: each batch goes to the device once.

    `on_batch(batch, extra)` sees each batch as loaded (on the host); `consume(pass, batch,
    prediction)` receives the (moved) targets with each prediction, so geometric perturbations are
    scored against the targets they produced.
    """
    perturbations = {p.perturbation: perturbation_for(p) for p in passes if p.perturbation != CLEAN}
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        try:
            batch, extra = next(batches)
        except StopIteration:
            break
        if on_batch is not None:  # before the move: what it reads stays on the host
            on_batch(batch, extra)
        batch = batch.to(device)
        timing.data += time.perf_counter() - t0
        if len(batch) == 0:  # every file of this batch was unreadable; its skips are recorded above
            continue
        timing.images += len(batch)
        for p in passes:
            t2 = time.perf_counter()
            view = batch if p.perturbation == CLEAN else perturbations[p.perturbation](batch, severity=p.severity, seed=seed)
            _sync(device)
            t3 = time.perf_counter()
            prediction = predict(view.images)
            _sync(device)
            t4 = time.perf_counter()
            timing.perturb += t3 - t2
            timing.model += t4 - t3
            timing.predictions += len(batch)
            consume(p, view, prediction)
            if on_pass is not None:
                on_pass(len(batch))
    timing.total += time.perf_counter() - start


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast_context(device: torch.device, amp: bool):
    """bf16 autocast when asked for (CUDA, or CPU where bf16 is supported); otherwise a no-op."""
    if not amp:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def demo_arguments(task: str = "classification") -> dict[str, Any]:
    """What `visionstress run` with no model and no data evaluates for `task`: the bundled demo (the same
    images for all three tasks, with their class labels, COCO boxes or class-index masks)."""
    root = demo_dir()
    if task == "detection":
        return {"model": "visionstress.models.demo:tiny_detector", "weights": str(root / "detector.safetensors"),
                "data": str(root / "val_instances.json"), "name": "demo-detection"}
    if task == "segmentation":
        return {"model": "visionstress.models.demo:tiny_segmenter", "weights": str(root / "segmenter.safetensors"),
                "data": str(root / "val"), "masks": str(root / "val_masks"),
                "class_names": str(root / "segmentation_classes.txt"), "name": "demo-segmentation"}
    return {
        "model": "visionstress.models.demo:tiny_classifier",
        "weights": str(root / "classifier.safetensors"),
        "data": str(root / "val"),
        "name": "demo",
    }
