"""Classification: everything that differs for image classifiers, in one place.

Data: an ImageFolder tree or a `.csv`/`.json` list of `path,label`, brought to the model's input size with
the ImageNet-C protocol (resize, centre-crop) before any perturbation. Model: anything
`visionstress.models.load_model` loads, wrapped in a `ClassifierAdapter` that normalises after the
perturbations. Metrics: top-1/top-5, calibration, per-class, confusion and flips (evaluators.classification);
the robustness summary adds mCE against a user's baseline scorecard or, for the `imagenet-c` preset on a
1000-class model, the published AlexNet errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from visionstress.metrics import Metric, register_metric
from visionstress.options import Option, register_options
from visionstress.tasks import register_task
from visionstress.tasks.base import CLEAN, GalleryScorer, RunDataset, RunError, Task, TaskRun, relative_paths, worst_key

NAME = "classification"
_ONLY = frozenset({NAME})
_PREPROCESSED = frozenset({"classification", "detection", "segmentation"})
"""Tasks whose adapter normalises pixels with a DataConfig (detection only when one is given)."""

def _triple(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ValueError("expected three comma-separated numbers, e.g. 0.485,0.456,0.406") from None


def _check_triple(value: Any) -> None:
    if isinstance(value, (str, bytes)) or len(value) != 3:
        raise ValueError("expected three numbers, one per channel")


register_options(
    Option("task", str, NAME, "What the model does: classification, detection or segmentation.", group="run"),
    Option("class_names", Path, None, "One class name per line, in model index order (classification; ImageNet's "
           "LOC_synset_mapping.txt or imagenet_class_index.json give the WordNet ids), or the mask values' names "
           "(segmentation).", tasks=frozenset({NAME, "segmentation"}), group="data"),
    Option("data_config", Path, None, "YAML/JSON preprocessing: input_size, resize, interpolation, mean, std, "
           "channel_order.", tasks=_PREPROCESSED, group="model"),
    Option("input_size", int, None, "Model input side in pixels.", tasks=_ONLY, minimum=1, group="model"),
    Option("resize", int, None, "Shorter side before the centre crop.", tasks=_ONLY, minimum=1, group="model"),
    Option("interpolation", str, None, "Resize interpolation.", tasks=_ONLY,
           choices=("bilinear", "bicubic", "nearest"), group="model"),
    Option("mean", tuple, None, "Per-channel mean on the 0-1 scale, e.g. 0.485,0.456,0.406.", tasks=_PREPROCESSED,
           parse=_triple, check=_check_triple, group="model"),
    Option("std", tuple, None, "Per-channel std on the 0-1 scale, e.g. 0.229,0.224,0.225.", tasks=_PREPROCESSED,
           parse=_triple, check=_check_triple, group="model"),
    Option("channel_order", str, None, "RGB or BGR.", tasks=_PREPROCESSED, parse=str.upper, choices=("RGB", "BGR"),
           group="model"),
    Option("baseline", Path, None, "A scorecard to normalise corruption errors by (mCE).", tasks=_ONLY,
           group="output"),
)

for _name, _higher, _fraction, _unit, _test, _text in [
    ("top1", True, True, "fraction", "mcnemar", "top-1 accuracy"),
    ("top5", True, True, "fraction", "mcnemar", "top-5 accuracy"),
    ("macro_f1", True, True, "fraction", "bootstrap", "F1 averaged over classes"),
    ("balanced_accuracy", True, True, "fraction", "bootstrap", "recall averaged over classes"),
    ("ece", False, True, "fraction", "bootstrap", "expected calibration error (15 equal-width bins)"),
    ("nll", False, False, "nats", "bootstrap", "mean negative log-likelihood of the true class"),
    ("brier", False, False, "score", "none", "mean Brier score (needs every class probability)"),
    ("flip_rate", False, True, "fraction", "mcnemar", "share of images whose prediction differs from the clean one"),
]:
    register_metric(Metric(_name, NAME, _higher, _fraction, _unit, _text, _test))

MAX_CONFUSION_CLASSES = 100
"""Full confusion matrices are kept for at most this many classes (1000 classes x 76 passes would be
hundreds of MB of JSON); the most-confused pairs are kept always."""


class ClassificationTask(Task):
    name = NAME
    description = "image classification: one label per image"
    main_metric = "top1"
    secondary_metric = "flip_rate"
    default_gates = ("top1:-1pp",)

    def demo(self) -> dict[str, Any]:
        from visionstress.demo import demo_dir

        root = demo_dir()
        return {"model": "visionstress.models.demo:tiny_classifier", "weights": str(root / "classifier.safetensors"),
                "data": str(root / "val"), "masks": str(root / "val_masks"), "name": "demo"}

    def record_fields(self) -> list[Any]:
        import pyarrow as pa

        return [
            pa.field("label", pa.int64(), nullable=False),
            pa.field("prediction", pa.int64(), nullable=False),
            pa.field("confidence", pa.float32(), nullable=False),
            pa.field("correct", pa.bool_(), nullable=False),
            pa.field("top5", pa.list_(pa.int64()), nullable=False),
            pa.field("nll", pa.float32()),
            pa.field("flipped", pa.bool_()),  # null on the clean pass: there is nothing to flip from
        ]

    def setup(self, options: Any, device: Any, *, foreground: bool = False) -> TaskRun:
        from visionstress.datasets import (ClassificationImages, dataset_fingerprint, load_classification_samples,
                                           read_class_names)
        from visionstress.evaluators import ClassificationEvaluator
        from visionstress.models import ClassifierAdapter, load_model

        data = Path(options.data)
        names = read_class_names(options.class_names) if options.class_names is not None else None
        samples, class_list = load_classification_samples(data, names, allow_outside_paths=options.allow_outside_paths)
        warnings = []
        if options.limit is not None:
            everything, samples = samples, samples[:options.limit]
            present, kept = sorted({s.label for s in everything}), sorted({s.label for s in samples})
            if len(kept) < len(present):
                shown = ", ".join(class_list[i] for i in kept[:5]) + (", ..." if len(kept) > 5 else "")
                warnings.append(f"--limit {options.limit} kept the first {len(samples)} of {len(everything)} images, "
                                f"which cover {len(kept)} of the dataset's {len(present)} classes ({shown})")
        loaded = load_model(options.model, weights=_str(options.weights), trust_model=options.trust_model,
                            num_classes=options.num_classes)
        config, source = data_config(loaded.data_config, options)
        warnings += assumed_preprocessing(options.model, loaded.data_config, options)
        adapter = ClassifierAdapter(loaded, config, device=device, amp=options.amp)
        width = adapter.num_classes
        if names is None and width > len(class_list) and class_list == [str(i) for i in range(len(class_list))]:
            # integer labels name model indices directly; the dataset need not contain the highest classes
            class_list = [str(i) for i in range(width)]
        if names is None and class_list == [str(i) for i in range(len(class_list))] and len(class_list) > width:
            first = next(s for s in samples if s.label >= width)
            raise RunError(f"{options.model}: label {first.label} of {first.path} is outside the model's {width} "
                           f"outputs (0..{width - 1}); index labels name model outputs, so check the label or the "
                           f"model")
        if width != len(class_list):
            raise RunError(
                f"{options.model}: the model outputs {width} classes but the dataset has {len(class_list)} "
                f"({'from --class-names' if names is not None else 'one per class folder/label'}); pass --class-names "
                f"with the model's {width} class names in index order"
            )
        root = data if data.is_dir() else data.parent
        info = {"path": data.name, "fingerprint": dataset_fingerprint(samples, data), "num_listed": len(samples),
                "num_classes": len(class_list), "class_names": list(class_list)}
        if warnings:
            info["warnings"] = warnings
        evaluator = ClassificationEvaluator(len(class_list), class_list, bootstrap=options.bootstrap,
                                            seed=options.seed)
        return TaskRun(
            dataset=RunDataset(ClassificationImages(samples, config, strict=options.strict,
                                                    masks=options.masks if foreground else None,
                                                    max_pixels=options.max_pixels),
                               relative_paths([s.display_path for s in samples], root), info, list(class_list), root),
            model=loaded, adapter=adapter, evaluator=evaluator, gallery=ClassificationGallery(class_list),
            data_config={**config.to_dict(), "source": source},
            extra={"outputs": lambda: adapter.outputs},
        )

    def statistics(self, columns: Mapping[str, Any]):
        from visionstress.evaluators.classification import classification_statistics

        return classification_statistics(columns)

    def weighted_reliance_metric(self, columns: Mapping[str, Any], options: Mapping[str, Any],
                                 class_names: Sequence[str]):
        """top-1 straight from the records' `correct` column (the reliance summaries resample many passes)."""
        import numpy as np

        correct = np.asarray(columns["correct"], dtype=np.float64)
        return lambda w: (w @ correct) / w.sum(1)

    def chance(self, class_names: Sequence[str]) -> float | None:
        return 1.0 / len(class_names) if class_names else None

    def compare_columns(self) -> list[str]:
        return ["label", "prediction", "confidence", "correct", "top5", "nll", "flipped"]

    def mcnemar_outcomes(self, frame: Any) -> dict[str, Any]:
        """Per image: correct (top1), a top-5 hit (top5) and, on perturbed passes, flipped (flip_rate)."""
        import numpy as np

        top = np.stack([np.asarray(v, dtype=np.int64) for v in frame["top5"]])
        out = {"top1": frame["correct"].to_numpy(dtype=bool),
               "top5": (top == frame["label"].to_numpy(dtype=np.int64)[:, None]).any(axis=1)}
        flipped = frame["flipped"]
        if not flipped.isna().any():
            out["flip_rate"] = flipped.to_numpy(dtype=bool)
        return out

    def summaries(self, rows: Sequence[Any], families: Mapping[str, str], run: TaskRun, options: Any) -> dict[str, Any]:
        """Robustness summary; mCE normalised by a user's baseline scorecard, or by the published AlexNet
        errors for the imagenet-c preset on a 1000-class (ImageNet) model."""
        from visionstress.evaluators import (ALEXNET_CLEAN_ERROR, ALEXNET_SEVERITY_ERRORS, corruption_errors,
                                             robustness_summary)
        from visionstress.scorecard import Scorecard

        if options.baseline is not None:
            base = Scorecard.load(options.baseline)
            base_errors = corruption_errors(base.results)
            if not set(base_errors) & {r.perturbation for r in rows if r.severity > 0}:
                raise RunError(f"{options.baseline}: the baseline scorecard shares no perturbation with this run")
            clean = next(r for r in base.results if r["perturbation"] == CLEAN)
            summary = robustness_summary(rows, families, baseline_errors=base_errors,
                                         baseline_clean_error=1.0 - float(clean["metrics"]["top1"]))
            summary["mce_baseline"] = Path(options.baseline).name
            return summary
        if options.suite == "imagenet-c" and len(run.dataset.class_names) == 1000:
            summary = robustness_summary(rows, families, baseline_errors=ALEXNET_SEVERITY_ERRORS,
                                         baseline_clean_error=ALEXNET_CLEAN_ERROR)
            summary["mce_baseline"] = "AlexNet (Hendrycks & Dietterich, 2019)"
            return summary
        return robustness_summary(rows, families)

    def skew_inputs(self, run: TaskRun) -> tuple[list[Any], Any, dict[str, Any]]:
        images = run.dataset.images
        return images.samples, images.data_config, {}

    def check_labels(self, clean_records: Sequence[Mapping[str, Any]], run: TaskRun) -> str | None:
        import numpy as np

        from visionstress.label_check import classification_mismatch

        labels = np.concatenate([np.asarray(r["label"]) for r in clean_records])
        predictions = np.concatenate([np.asarray(r["prediction"]) for r in clean_records])
        return classification_mismatch(labels, predictions, run.dataset.class_names)

    def breakdowns(self, results: Any, run: TaskRun, keep: set[str]) -> dict[str, Any]:
        """Per-class metrics, confusion (clean and the worst cell), most-confused pairs and reliability bins."""
        worst = worst_key(results.rows, "top1")
        kept = {f"{CLEAN}@0"} | ({worst} if worst else set()) | keep
        confusion = {k: m for k, m in results.confusion.items()
                     if k in kept and m.shape[0] <= MAX_CONFUSION_CLASSES}
        return {"per_class": results.per_class, "confusion": confusion, "most_confused": results.most_confused,
                "calibration": results.calibration}


class ClassificationGallery(GalleryScorer):
    """A failure is an image right on the clean pass and wrong under the perturbation; the more confident
    the wrong answer, the worse."""

    def __init__(self, class_names: Sequence[str]) -> None:
        super().__init__()
        self.class_names = list(class_names)

    def offer(self, gallery: Any, key: Any, batch: Any, predictions: Any, records: Mapping[str, Any],
              paths: Sequence[str]) -> None:
        import numpy as np
        import torch

        correct = np.asarray(records["correct"], bool)
        if correct.all():  # nothing wrong under the perturbation: no failure to offer
            return
        positions, clean_batch, _, clean_records = self.clean_of(batch)
        clean_correct = np.asarray(clean_records["correct"], bool)[positions]
        confidence = np.asarray(records["confidence"], np.float64)

        def caption(i: int) -> str:
            label, predicted = int(records["label"][i]), int(records["prediction"][i])
            return (f"{self.class_names[label]} → {self.class_names[predicted]} "
                    f"({100 * confidence[i]:.0f}% confident)")

        gallery.offer(perturbation=key.perturbation, severity=key.severity, sample_ids=batch.sample_ids, paths=paths,
                      scores=torch.from_numpy(confidence * (clean_correct & ~correct)),
                      clean_images=clean_batch.images[positions], perturbed_images=batch.images, captions=caption)


def data_config(base: Any, options: Any) -> tuple[Any, str]:
    """The run's DataConfig: the model's own, then --data-config, then the flags (later wins)."""
    from visionstress.models import resolve_data_config

    return resolve_data_config(base, _str(options.data_config), {name: options.get(name) for name in _FLAGS})


_FLAGS = ("input_size", "resize", "interpolation", "mean", "std", "channel_order")
"""The preprocessing flags, which override the model's config and --data-config."""


def assumed_preprocessing(model: Any, base: Any, options: Any,
                          assumed: str = "resize 256, centre crop 224, ImageNet mean/std",
                          flags: str = "--input-size/--resize/--mean/--std") -> list[str]:
    """A warning when nothing declared the preprocessing (`base`, the model's own config, is None, and no
    --data-config or flag was given): the ImageNet defaults were assumed, and a model trained otherwise
    loses accuracy for that reason alone, clean and perturbed alike, which no perturbation explains."""
    if base is not None or options.data_config is not None or any(options.get(f) is not None for f in _FLAGS):
        return []
    return [f"{model}: nothing declared its preprocessing (no weights metadata, --data-config or flags), so the "
            f"ImageNet defaults were assumed: {assumed}; if the model was trained otherwise, give --data-config "
            f"or {flags}"]


def _str(path: Any) -> str | None:
    return None if path is None else str(path)


register_task(ClassificationTask())
