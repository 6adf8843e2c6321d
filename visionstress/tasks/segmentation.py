"""Semantic segmentation: everything that differs for segmenters, in one place.

Data: a folder with images/, masks/ (class-index PNGs, palette or grey) and classes.txt, or `--data/--images`,
`--masks` and `--class-names` given separately; images keep their resolution, masks move with geometric
perturbations (uncovered pixels become the ignore index). Model: a `SegmenterAdapter` (logits, or a dict
with "out"), upsampled to the image. Metrics: mIoU, pixel accuracy, Dice, boundary F1 and region recall by
size, from a confusion accumulated on the device (evaluators.segmentation).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from visionstress.metrics import Metric, register_metric
from visionstress.options import Option, register_options
from visionstress.tasks import register_task
from visionstress.tasks.base import CLEAN, GalleryScorer, RunDataset, RunError, Task, TaskRun, worst_key

NAME = "segmentation"
_ONLY = frozenset({NAME})

register_options(
    Option("ignore_index", int, 255, "Segmentation: mask value that is not scored.", tasks=_ONLY, minimum=0,
           group="data"),
)

for _name, _higher, _fraction, _unit, _test, _text in [
    ("mIoU", True, True, "fraction", "bootstrap", "mean intersection over union over classes"),
    ("pixel_accuracy", True, True, "fraction", "bootstrap", "share of scored pixels labelled right"),
    ("mDice", True, True, "fraction", "bootstrap", "mean Dice coefficient over classes"),
    ("boundary_f1", True, True, "fraction", "none", "class-agnostic boundary F-score"),
    ("region_recall_*", True, True, "fraction", "none",
     "pixel recall of connected ground-truth regions of one size bin"),
]:
    register_metric(Metric(_name, NAME, _higher, _fraction, _unit, _text, _test))

MAX_CONFUSION_CLASSES = 100


class SegmentationTask(Task):
    name = NAME
    description = "semantic segmentation: a class per pixel"
    main_metric = "mIoU"
    secondary_metric = "pixel_accuracy"
    default_gates = ("mIoU:-1pp",)

    def demo(self) -> dict[str, Any]:
        from visionstress.demo import demo_dir

        root = demo_dir()
        return {"model": "visionstress.models.demo:tiny_segmenter", "weights": str(root / "segmenter.safetensors"),
                "data": str(root / "val"), "masks": str(root / "val_masks"),
                "class_names": str(root / "segmentation_classes.txt"), "name": "demo-segmentation"}

    def record_fields(self) -> list[Any]:
        import pyarrow as pa

        # Per-class pixel counts per image: enough to recompute mIoU / Dice / accuracy for any resample.
        return [
            pa.field("pixel_accuracy", pa.float32()),
            pa.field("miou", pa.float32()),
            pa.field("intersection", pa.list_(pa.int64()), nullable=False),
            pa.field("gt_pixels", pa.list_(pa.int64()), nullable=False),
            pa.field("pred_pixels", pa.list_(pa.int64()), nullable=False),
        ]

    def setup(self, options: Any, device: Any, *, foreground: bool = False) -> TaskRun:
        from visionstress.datasets import SegmentationImages, load_segmentation_dataset
        from visionstress.evaluators import SegmentationEvaluator
        from visionstress.models import SegmenterAdapter, load_model
        from visionstress.tasks.classification import assumed_preprocessing, data_config

        data = Path(options.data)
        if options.masks is not None:  # --data is then the images folder
            dataset = load_segmentation_dataset(images=options.images or data, masks=options.masks,
                                                class_names=options.class_names, ignore_index=options.ignore_index)
        else:
            dataset = load_segmentation_dataset(data, images=options.images, class_names=options.class_names,
                                                ignore_index=options.ignore_index)
        if options.limit is not None:
            dataset.samples = dataset.samples[:options.limit]
        num = len(dataset.class_names)
        loaded = load_model(options.model, weights=None if options.weights is None else str(options.weights),
                            trust_model=options.trust_model, num_classes=options.num_classes, task=NAME,
                            dataset_classes=num)
        config, source = data_config(loaded.data_config, options)
        adapter = SegmenterAdapter(loaded, config, device=device, amp=options.amp, num_classes=num)
        evaluator = SegmentationEvaluator(num, dataset.class_names, ignore_index=dataset.ignore_index,
                                          bootstrap=options.bootstrap, seed=options.seed)
        info = {"path": data.name, "fingerprint": segmentation_fingerprint(dataset), "num_listed": len(dataset.samples),
                "num_classes": num, "class_names": list(dataset.class_names), "ignore_index": dataset.ignore_index}
        assumed = assumed_preprocessing(options.model, loaded.data_config, options, "ImageNet mean/std", "--mean/--std")
        if assumed:
            info["warnings"] = assumed
        paths = [s.display_path for s in dataset.samples]
        return TaskRun(
            dataset=RunDataset(SegmentationImages(dataset, strict=options.strict, max_pixels=options.max_pixels,
                                                  background_classes=_background(options, num) if foreground else None),
                               paths, info,
                               list(dataset.class_names), dataset.images_root),
            model=loaded, adapter=adapter, evaluator=evaluator, gallery=SegmentationGallery(dataset.ignore_index),
            data_config={**config.to_dict(), "source": source},
        )

    def statistics(self, columns: Mapping[str, Any]):
        from visionstress.evaluators.segmentation import segmentation_statistics

        return segmentation_statistics(columns)

    def reliance_metric(self, options: Mapping[str, Any]) -> str:
        """The mIoU over the object (non-background) classes: the background classes are what the
        background perturbations replace."""
        return "object_mIoU"

    def weighted_reliance_metric(self, columns: Mapping[str, Any], options: Mapping[str, Any],
                                 class_names: Sequence[str]):
        import warnings

        import numpy as np

        from visionstress.foreground import parse_background_classes

        background = parse_background_classes(options.get("background_classes") or "0")
        classes = np.array([c for c in range(len(class_names)) if c not in background], dtype=np.int64)
        inter, gt, pred = (np.asarray(columns[k], dtype=np.float64)[:, classes]
                           for k in ("intersection", "gt_pixels", "pred_pixels"))

        def object_miou(w: np.ndarray) -> np.ndarray:  # classes absent from both sides of a resample do not count
            i = w @ inter
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no object pixels: NaN
                return np.nanmean(i / (w @ gt + w @ pred - i), axis=1)

        return object_miou

    def compare_columns(self) -> list[str]:
        return ["intersection", "gt_pixels", "pred_pixels"]

    def skew_inputs(self, run: TaskRun) -> tuple[list[Any], Any, dict[str, Any]]:
        from types import SimpleNamespace

        from visionstress.models import DataConfig

        dataset = run.dataset.images.dataset
        samples = [SimpleNamespace(path=str(Path(dataset.images_root) / s.image_path),
                                   mask_path=str(Path(dataset.masks_root) / s.mask_path)) for s in dataset.samples]
        config = DataConfig.from_mapping({k: v for k, v in run.data_config.items() if k != "source"}, "the run")
        return samples, config, {"ignore_index": dataset.ignore_index}

    def breakdowns(self, results: Any, run: TaskRun, keep: set[str]) -> dict[str, Any]:
        worst = worst_key(results.rows, "mIoU")
        kept = {f"{CLEAN}@0"} | ({worst} if worst else set()) | keep
        return {"per_class_iou": results.per_class_iou,
                "confusion": {k: v for k, v in results.confusion.items()
                              if k in kept and v.shape[0] <= MAX_CONFUSION_CLASSES},
                "region_recall": results.region_recall}


def _background(options: Any, num_classes: int) -> tuple[int, ...]:
    from visionstress.foreground import ForegroundError, parse_background_classes

    try:
        return parse_background_classes(options.background_classes, num_classes)
    except ForegroundError as exc:
        raise RunError(f"--background-classes {options.background_classes!r}: {exc}") from None


def segmentation_fingerprint(dataset: Any) -> str:
    """SHA-256 of the sorted (image, mask, mask size in bytes) names and the class names."""
    entries = [json.dumps([s.image_path, s.mask_path, (Path(dataset.masks_root) / s.mask_path).stat().st_size])
               for s in dataset.samples] + [json.dumps(list(dataset.class_names))]
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(entry.encode("utf-8") + b"\n")
    return digest.hexdigest()


class SegmentationGallery(GalleryScorer):
    """A failure is a drop of the image's own mIoU from its clean pass; predicted label maps are overlaid."""

    def __init__(self, ignore_index: int) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def offer(self, gallery: Any, key: Any, batch: Any, predictions: Any, records: Mapping[str, Any],
              paths: Sequence[str]) -> None:
        import numpy as np
        import torch

        from visionstress.gallery import LabelMap

        positions, clean_batch, clean_predictions, clean_records = self.clean_of(batch)
        clean_miou = np.nan_to_num(np.asarray(clean_records["miou"], np.float64), nan=0.0)[positions]
        miou = np.nan_to_num(np.asarray(records["miou"], np.float64), nan=0.0)
        clean_labels, labels = clean_predictions.labels, predictions.labels

        def caption(i: int) -> str:
            return f"image mIoU {clean_miou[i]:.2f} → {miou[i]:.2f}"

        gallery.offer(perturbation=key.perturbation, severity=key.severity, sample_ids=batch.sample_ids, paths=paths,
                      scores=torch.from_numpy(clean_miou - miou), clean_images=clean_batch.images[positions],
                      perturbed_images=batch.images, captions=caption,
                      clean_overlays=lambda i: [LabelMap(clean_labels[positions[i]], self.ignore_index)],
                      perturbed_overlays=lambda i: [LabelMap(labels[i], self.ignore_index)])


register_task(SegmentationTask())
