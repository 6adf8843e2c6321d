"""Detection: everything that differs for object detectors (and instance segmentation), in one place.

Data: a COCO instances JSON (images beside it or under `--images`) read with pycocotools; images keep
their full resolution (the model resizes as it normally would) or are letterboxed into `--canvas`.
Model: torchvision detectors, factories, or a raw model plus `--postprocess`; labels are mapped to the
dataset's category ids (by name, a file, `coco80`, or identity). Metrics: COCO AP/AR exactly as COCOeval,
size bins, TIDE error types, occlusion (evaluators.detection); mask AP with `--instance-masks`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from visionstress.metrics import Metric, register_metric
from visionstress.options import Option, register_options
from visionstress.tasks import register_task
from visionstress.tasks.base import (CLEAN, GalleryScorer, RunDataset, RunError, Task, TaskRun, import_callable,
                                     worst_key)

NAME = "detection"
_ONLY = frozenset({NAME})


def _canvas(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise ValueError("expected HEIGHTxWIDTH, e.g. 640x640") from None
    return height, width


def _check_canvas(value: Any) -> None:
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 16 for v in value)):
        raise ValueError("both sides must be whole numbers of at least 16 pixels")


def _size_bin(text: str) -> tuple[str, float, float]:
    name, _, bounds = text.partition("=")
    low, _, high = bounds.partition(":")
    try:
        return name, float(low), float(high)
    except ValueError:
        raise ValueError("expected NAME=MIN:MAX in px², e.g. tiny=0:256") from None


def _check_size_bin(value: Any) -> None:
    try:
        name, low, high = value
    except (TypeError, ValueError):
        raise ValueError("expected (name, min, max) or NAME=MIN:MAX") from None
    if not str(name).isidentifier() or not 0 <= float(low) < float(high):
        raise ValueError("needs a name (letters, digits, _) and 0 <= MIN < MAX")


register_options(
    Option("images", Path, None, "Detection: images root of a COCO JSON (default: beside it). Segmentation: the "
           "images folder.", tasks=frozenset({NAME, "segmentation"}), group="data"),
    Option("canvas", tuple, None, "Letterbox every image into HxW (e.g. 640x640); predictions are mapped back.",
           tasks=_ONLY, parse=_canvas, check=_check_canvas, metavar="HxW", group="data"),
    Option("label_map", str, None, "Model label -> dataset category id: a JSON/YAML file, 'coco80' or 'identity' "
           "(default: by name when the model knows its categories).", tasks=_ONLY, group="model"),
    Option("postprocess", str, None, "package.module:function turning the raw model output into torchvision's "
           "list of dicts.", tasks=_ONLY, group="model"),
    Option("score_threshold", float, 0.5, "Score for false detections per image and miss rate.", tasks=_ONLY,
           minimum=0.0, maximum=1.0, group="output"),
    Option("size_bin", tuple, (), "Extra object-size bin NAME=MIN:MAX in px² (e.g. tiny=0:256); repeatable.",
           tasks=_ONLY, multiple=True, parse=_size_bin, check=_check_size_bin, metavar="NAME=MIN:MAX", group="output"),
    Option("box_warp", str, "ellipse", "How a geometric perturbation moves a box without an instance mask: as the "
           "ellipse inscribed in it (tight under rotation, as albumentations' 'ellipse') or as the box enclosing its "
           "moved corners (grows with the angle). Objects with masks take the box of the moved mask.",
           tasks=_ONLY, choices=("ellipse", "enclosing"), group="run"),
    Option("instance_masks", bool, False, "Also score instance masks (mask AP, COCO segm) for models that return "
           "masks, e.g. maskrcnn.", tasks=_ONLY, group="output"),
)

_COCO = [("AP", "AP@[.50:.95]"), ("AP50", "AP@.50"), ("AP75", "AP@.75"), ("APs", "AP, small objects"),
         ("APm", "AP, medium objects"), ("APl", "AP, large objects"), ("AR1", "AR, 1 detection per image"),
         ("AR10", "AR, 10 detections"), ("AR100", "AR, 100 detections"), ("ARs", "AR, small objects"),
         ("ARm", "AR, medium objects"), ("ARl", "AR, large objects")]
_BOOTSTRAPPED = {"AP", "AP50", "AP75", "AR1", "AR10", "AR100"}
for _name, _text in _COCO:
    register_metric(Metric(_name, NAME, True, True, "fraction", f"COCO {_text}",
                           "bootstrap" if _name in _BOOTSTRAPPED else "none"))
    register_metric(Metric(f"segm_{_name}", NAME, True, True, "fraction", f"COCO mask {_text}", "none"))
for _name, _higher, _fraction, _unit, _test, _text in [
    ("AP_*", True, True, "fraction", "none", "AP@[.50:.95] of a user size bin"),
    ("recall_*", True, True, "fraction", "none", "AR100 of a user size bin"),
    ("fp_per_image", False, False, "detections per image", "bootstrap",
     "false detections per image at the score threshold"),
    ("miss_rate", False, True, "fraction", "bootstrap", "share of objects not found at the score threshold"),
    ("objects_dropped", False, False, "objects", "none",
     "ground-truth objects a geometric perturbation moved out of frame"),
]:
    register_metric(Metric(_name, NAME, _higher, _fraction, _unit, _text, _test))


class DetectionTask(Task):
    name = NAME
    description = "object detection: boxes with classes and scores, COCO metrics"
    main_metric = "AP"
    secondary_metric = "miss_rate"
    default_gates = ("AP:-1pp",)

    def demo(self) -> dict[str, Any]:
        from visionstress.demo import demo_dir

        root = demo_dir()
        return {"model": "visionstress.models.demo:tiny_detector", "weights": str(root / "detector.safetensors"),
                "data": str(root / "val_instances.json"), "name": "demo-detection"}

    def record_fields(self) -> list[Any]:
        import pyarrow as pa

        bits, boxes = pa.list_(pa.uint16()), pa.list_(pa.list_(pa.float32()))
        # Per image, COCOeval's own matching for area 'all' (bit t of dt_match/dt_ignore is IoU threshold t of
        # 0.50:0.05:0.95), so AP can be recomputed for any resample of images: that is what makes a paired
        # bootstrap between two runs exact. The top boxes are kept for the failure gallery.
        return [
            pa.field("num_gt", pa.int32(), nullable=False),
            pa.field("num_pred", pa.int32(), nullable=False),
            pa.field("tp", pa.int32(), nullable=False),
            pa.field("fp", pa.int32(), nullable=False),
            pa.field("fn", pa.int32(), nullable=False),
            pa.field("dt_category", pa.list_(pa.int32()), nullable=False),
            pa.field("dt_score", pa.list_(pa.float64()), nullable=False),
            pa.field("dt_match", bits, nullable=False),
            pa.field("dt_ignore", bits, nullable=False),
            pa.field("gt_category", pa.list_(pa.int32()), nullable=False),
            pa.field("gt_ignore", pa.list_(pa.bool_()), nullable=False),
            pa.field("pred_boxes", boxes),
            pa.field("pred_scores", pa.list_(pa.float32())),
            pa.field("pred_labels", pa.list_(pa.int32())),
            pa.field("gt_boxes", boxes),
            pa.field("gt_labels", pa.list_(pa.int32())),
        ]

    def setup(self, options: Any, device: Any, *, foreground: bool = False) -> TaskRun:
        from visionstress.datasets import DetectionImages, load_coco_dataset
        from visionstress.datasets.batching import OnCanvas, canvas_scale
        from visionstress.evaluators import DetectionEvaluator
        from visionstress.models import DetectorAdapter, load_model, resolve_label_map
        from visionstress.tasks.classification import data_config

        if options.instance_masks and options.canvas:
            raise RunError("--instance-masks cannot be combined with --canvas: masks are scored at each image's own "
                           "size; drop --canvas (the model resizes images itself)")
        data = Path(options.data)
        dataset = load_coco_dataset(data, options.images, with_masks=options.instance_masks,
                                    allow_outside_paths=options.allow_outside_paths)
        if options.limit is not None:
            dataset.samples = dataset.samples[:options.limit]
        dataset.require_objects()
        loaded = load_model(options.model, weights=None if options.weights is None else str(options.weights),
                            trust_model=options.trust_model, num_classes=options.num_classes, task=NAME)
        mapping, mapping_source = resolve_label_map(options.label_map, dataset.categories, loaded.categories), \
            _mapping_source(options.label_map, loaded.categories)
        config, config_source = loaded.data_config, "the model"
        if any(options.get(k) is not None for k in ("data_config", "mean", "std", "channel_order")):
            config, config_source = data_config(loaded.data_config, options)
        adapter = DetectorAdapter(loaded, device=device, amp=options.amp, data_config=config,
                                  postprocess=import_callable(options.postprocess, "--postprocess"),
                                  label_map=mapping, categories=[int(c["id"]) for c in dataset.categories])
        samples = dataset.samples
        canvas = options.canvas
        from visionstress.foreground import default_cache_dir

        images = DetectionImages(dataset, with_masks=options.instance_masks, strict=options.strict,
                                 foreground=foreground, foreground_cache=options.foreground_cache or default_cache_dir(),
                                 max_pixels=options.max_pixels)
        planned = images if canvas is None else OnCanvas(images, canvas)

        def letterbox(ids: list[int]) -> tuple[list[tuple[int, int]], list[float]]:
            sizes = [(samples[i].height, samples[i].width) for i in ids]
            return sizes, [canvas_scale(h, w, canvas) for h, w in sizes]

        size_bins = {name: (lo, hi) for name, lo, hi in options.size_bin} or None
        evaluator = DetectionEvaluator(dataset.categories, size_bins=size_bins, score_threshold=options.score_threshold,
                                       bootstrap=options.bootstrap, seed=options.seed, masks=options.instance_masks,
                                       letterbox=None if canvas is None else letterbox)
        class_names = [c["name"] for c in dataset.categories]
        info = {"path": data.name, "fingerprint": coco_fingerprint(dataset), "num_listed": len(samples),
                "num_classes": len(class_names), "class_names": class_names,
                "category_ids": [int(c["id"]) for c in dataset.categories], "warnings": list(dataset.warnings)}
        if foreground:
            info["foreground"] = {"images": images.foreground_sources()}
        names = {int(c["id"]): str(c["name"]) for c in dataset.categories}
        return TaskRun(
            dataset=RunDataset(planned, [s.display_path for s in samples], info, class_names, dataset.images_root),
            model=loaded, adapter=adapter, evaluator=evaluator,
            gallery=DetectionGallery(names, options.score_threshold),
            data_config={"canvas": list(canvas) if canvas else None, "score_threshold": options.score_threshold,
                         "box_warp": options.box_warp,
                         "instance_masks": options.instance_masks,
                         "label_map": None if mapping is None else {str(k): v for k, v in mapping.items()},
                         "label_map_source": mapping_source,
                         **({} if config is None else {**config.to_dict(), "source": config_source})},
            extra={"unmapped_predictions": lambda: adapter.unmapped,
                   "unmapped_labels": lambda: sorted(adapter.unmapped_labels)},
            warnings=lambda: _unmapped_warning(adapter, mapping_source),
        )

    def statistics(self, columns: Mapping[str, Any]):
        from visionstress.evaluators.detection import detection_statistics

        return detection_statistics(columns)

    def compare_columns(self) -> list[str]:
        return ["dt_category", "dt_score", "dt_match", "dt_ignore", "gt_category", "gt_ignore", "tp", "fp", "fn"]

    def skew_inputs(self, run: TaskRun) -> tuple[list[Any], Any, dict[str, Any]]:
        from visionstress.datasets.batching import OnCanvas
        from visionstress.skew.tasks import detection_samples

        images = run.dataset.images
        dataset = (images.images if isinstance(images, OnCanvas) else images).dataset
        canvas = run.data_config.get("canvas")
        adapter = run.adapter
        settings = {"categories": dataset.categories, "canvas": None if canvas is None else tuple(canvas),
                    "label_map": adapter.label_map, "postprocess": adapter.postprocess,
                    "score_threshold": run.data_config["score_threshold"]}
        return detection_samples(dataset), adapter.data_config, {"task_settings": settings}

    def check_labels(self, clean_records: Sequence[Mapping[str, Any]], run: TaskRun) -> str | None:
        from visionstress.label_check import detection_mismatch

        images = [{name: record[name][i] for name in ("gt_boxes", "gt_labels", "pred_boxes", "pred_labels", "pred_scores")}
                  for record in clean_records for i in range(len(record["gt_boxes"]))]
        source = run.data_config["label_map_source"]
        mismatch = detection_mismatch(images, run.dataset.info["category_ids"], source)
        if mismatch is not None:
            return mismatch
        return _unmapped_mismatch(run.adapter, sum(len(image["pred_labels"]) for image in images), source)

    def breakdowns(self, results: Any, run: TaskRun, keep: set[str]) -> dict[str, Any]:
        worst = worst_key(results.rows, "AP")
        kept = {f"{CLEAN}@0"} | ({worst} if worst else set()) | keep
        return {"per_class_ap": results.per_class_ap, "size": results.size,
                "error_types": {k: v for k, v in results.error_types.items() if k in kept},
                "occlusion": results.occlusion}


def _unmapped_mismatch(adapter: Any, mapped: int, mapping_source: str) -> str | None:
    """The adapter drops detections whose label no dataset category takes, so the on-object check never
    sees them: when every detection so far was dropped under an assumed identity map, the numbering is
    wrong, not the model. A model that shares a class with the dataset keeps a mapped detection and passes
    (a model scored on a few of its classes drops most detections by design); a map by name or given by
    the user is left alone."""
    from visionstress.label_check import MIN_EVIDENCE

    dropped = getattr(adapter, "unmapped", 0)
    if not mapping_source.startswith("identity") or dropped < MIN_EVIDENCE or mapped > 0:
        return None
    shown = ", ".join(str(label) for label in sorted(adapter.unmapped_labels))
    return (f"labels look mismatched: {dropped} detections so far carry labels no dataset "
            f"category takes (labels {shown}) and none carries one that does (label map: {mapping_source}); "
            "the model's label numbering differs from the dataset's category ids: pass --label-map (coco80 for "
            "contiguous COCO indices 0..79, or a file {model_label: category_id}) (--skip-label-check runs anyway)")


def _unmapped_warning(adapter: Any, mapping_source: str) -> list[str]:
    if not adapter.unmapped:
        return []
    shown = ", ".join(str(label) for label in sorted(adapter.unmapped_labels))
    return [f"{adapter.unmapped} detections had a label no dataset category takes (labels {shown}; label map: "
            f"{mapping_source}) and were not scored; check --label-map"]


def _mapping_source(label_map: Any, categories: Any) -> str:
    """How model labels were matched to dataset categories, in words for the scorecard."""
    if label_map is None:
        return "by category name" if categories else "identity (assumed: the model names no categories)"
    text = str(label_map)
    return text if text in ("coco80", "identity") else f"file {Path(text).name}"


def coco_fingerprint(dataset: Any) -> str:
    """SHA-256 of the sorted (file name, its annotations) of the scored images: which images with which
    boxes, independent of where the dataset lives or of id numbering."""
    import hashlib

    entries = []
    for sample in dataset.samples:
        anns = dataset.coco.imgToAnns.get(sample.image_id, [])
        objects = sorted([int(a["category_id"]), [round(float(v), 2) for v in a["bbox"]], int(a.get("iscrowd", 0))]
                         for a in anns)
        entries.append(json.dumps([sample.path, objects]))
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(entry.encode("utf-8") + b"\n")
    return digest.hexdigest()


class DetectionGallery(GalleryScorer):
    """A failure is a drop of the image's score-weighted F1 from its clean pass: a detection that vanishes
    (0.9 -> nothing) is worse than one that dips just under the threshold (0.51 -> 0.49). An image whose
    objects all left the frame (zoom, rotation) has nothing to find, and any low-score detection would
    make its score-weighted F1 0: there only the F1 at the score threshold counts (a confident false
    detection)."""

    def __init__(self, names: Mapping[int, str], threshold: float) -> None:
        super().__init__()
        self.names = dict(names)
        self.threshold = threshold

    def offer(self, gallery: Any, key: Any, batch: Any, predictions: Any, records: Mapping[str, Any],
              paths: Sequence[str]) -> None:
        import numpy as np
        import torch

        positions, clean_batch, clean_predictions, clean_records = self.clean_of(batch)
        clean_f1, clean_soft = f1(clean_records)[positions], soft_f1(clean_records)[positions]
        now_f1, now_soft = f1(records), soft_f1(records)

        def caption(i: int) -> str:
            return (f"F1@0.5 {clean_f1[i]:.2f} → {now_f1[i]:.2f}, score-weighted {clean_soft[i]:.2f} → "
                    f"{now_soft[i]:.2f} ({records['fn'][i]} missed, {records['fp'][i]} false)")

        emptied = (np.asarray(records["num_gt"]) == 0) & (np.asarray(clean_records["num_gt"])[positions] > 0)
        drop = np.where(emptied, clean_f1 - now_f1, clean_soft - now_soft)
        gallery.offer(perturbation=key.perturbation, severity=key.severity, sample_ids=batch.sample_ids, paths=paths,
                      scores=torch.from_numpy(drop), clean_images=clean_batch.images[positions],
                      perturbed_images=batch.images, captions=caption,
                      clean_overlays=self._overlays(clean_batch, clean_predictions, positions),
                      perturbed_overlays=self._overlays(batch, predictions, list(range(len(batch)))))

    def _overlays(self, batch: Any, predictions: Any, positions: Sequence[int]):
        """Gallery overlays: ground truth (green) and detections above the threshold (red), in the batch's
        pixels."""
        from visionstress.gallery import Boxes

        def overlays(i: int):
            j = positions[i]
            keep = predictions.scores[j] >= self.threshold
            return [Boxes(batch.boxes[j].boxes.cpu(), [self.names.get(int(c), str(int(c))) for c in batch.boxes[j].labels]),
                    Boxes(predictions.boxes[j][keep].float().cpu(),
                          [self.names.get(int(c), str(int(c))) for c in predictions.labels[j][keep]],
                          scores=predictions.scores[j][keep].float().cpu())]

        return overlays


def f1(records: Mapping[str, Any]):
    """Per-image F1 at the score threshold (IoU 0.5): 1 for an image with nothing to find and nothing found."""
    import numpy as np

    tp, fp, fn = (np.asarray(records[k], np.float64) for k in ("tp", "fp", "fn"))
    return _ratio(2 * tp, 2 * tp + fp + fn)


def soft_f1(records: Mapping[str, Any]):
    """Per-image F1 at IoU 0.5 with every detection counted by its score instead of a threshold."""
    import numpy as np

    out = []
    for num_gt, scores, match, ignore in zip(records["num_gt"], records["dt_score"], records["dt_match"],
                                             records["dt_ignore"]):
        scores = np.asarray(scores, np.float64)
        matched = (np.asarray(match, np.uint16) & 1).astype(bool)
        ignored = (np.asarray(ignore, np.uint16) & 1).astype(bool)
        tp = scores[matched & ~ignored].sum()
        fp = scores[~matched & ~ignored].sum()
        out.append(_ratio(np.float64(2 * tp), np.float64(tp + fp + num_gt)))
    return np.asarray(out, np.float64)


def _ratio(numerator: Any, denominator: Any) -> Any:
    import numpy as np

    return np.divide(numerator, denominator, out=np.ones_like(numerator), where=denominator > 0)


register_task(DetectionTask())
