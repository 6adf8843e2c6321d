"""`visionstress.run`: a saved model, a dataset and a suite in; a Scorecard (and its files) out."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from visionstress.evaluators.classification import result_key
from visionstress.gallery import Boxes, FailureGallery, LabelMap
from visionstress.engine import (
    CLEAN,
    Pass,
    RunTiming,
    autocast_context,
    default_device,
    demo_arguments,
    stream_passes,
    suite_passes,
)

TASKS = ("classification", "detection", "segmentation")


class RunError(ValueError):
    """A run that cannot start: the message says which input is wrong and how."""


def run(
    model: str | None = None,
    data: str | Path | None = None,
    *,
    task: str = "classification",
    suite: str = "default",
    weights: str | Path | None = None,
    trust_model: bool = False,
    num_classes: int | None = None,
    data_config: str | Path | None = None,
    data_config_overrides: Mapping[str, Any] | None = None,
    class_names: str | Path | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    workers: int = 2,
    amp: bool = False,
    limit: int | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    strict: bool = False,
    baseline: str | Path | None = None,
    bootstrap: int = 1000,
    images: str | Path | None = None,
    masks: str | Path | None = None,
    ignore_index: int = 255,
    canvas: tuple[int, int] | None = None,
    label_map: str | Path | Mapping[int, int] | None = None,
    postprocess: str | Callable[..., Any] | None = None,
    score_threshold: float = 0.5,
    size_bins: Mapping[str, tuple[float, float]] | None = None,
    instance_masks: bool = False,
    gallery: int = 12,
    progress: Callable[[int, int], None] | None = None,
):
    """Stress `model` on `data` with `suite`; returns the Scorecard and writes it under `out`.

    With neither `model` nor `data`, runs the bundled demo for `task` (a tiny classifier, detector or
    segmenter on data/demo/shapes) and writes reports/demo[-task]/. `progress(done, total)` is called
    after every pass of every batch.

    Detection: `data` is a COCO instances JSON (images under `images`, else beside it) or a folder
    holding annotations.json; `label_map` maps model labels to dataset category ids (a file, a dict,
    "coco80"; by default by category name when the model knows its names, else identity);
    `postprocess` (a callable or "package.module:function") turns a raw model output into torchvision's
    list of dicts; `canvas=(H, W)` letterboxes every image into one size and maps predictions back;
    `instance_masks` also scores the model's instance masks against the annotations' segmentations
    (mask AP, COCOeval "segm", as `segm_*` row metrics) for models that return masks, e.g. maskrcnn.
    Segmentation: `data` is a folder with images/, masks/ and classes.txt, or give `images`, `masks` and
    `class_names` separately; mask pixels equal to `ignore_index` are not scored.
    `gallery` is how many of the worst failures are kept as clean/perturbed thumbnails for the report.
    """
    if task not in TASKS:
        raise RunError(f"task {task!r} is not supported yet; supported: {', '.join(TASKS)}")
    name = None
    if model is None and data is None:
        demo = demo_arguments(task)
        model, weights, data, name = demo["model"], demo["weights"], demo["data"], demo["name"]
        masks = demo.get("masks", masks)
        class_names = demo.get("class_names", class_names)
    elif model is None or data is None:
        raise RunError("give both --model and --data, or neither to run the bundled demo")
    if batch_size < 1:
        raise RunError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise RunError(f"--limit must be at least 1, got {limit}")
    if bootstrap < 0:
        raise RunError(f"--bootstrap must be 0 (no intervals) or more resamples, got {bootstrap}")
    if gallery < 0:
        raise RunError(f"--gallery must be 0 (none) or more images, got {gallery}")
    if not 0.0 <= score_threshold <= 1.0:
        raise RunError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    if task != "detection" and (canvas or label_map or postprocess or instance_masks):
        raise RunError("--canvas, --label-map, --postprocess and --instance-masks apply to --task detection only")
    if instance_masks and canvas:
        raise RunError("--instance-masks cannot be combined with --canvas: masks are scored at each image's own "
                       "size; drop --canvas (the model resizes images itself)")
    common = dict(
        model=str(model), data=Path(data), suite_name=suite, weights=weights, trust_model=trust_model,
        num_classes=num_classes, device=torch.device(device or default_device()), batch_size=batch_size,
        workers=workers, amp=amp, limit=limit, seed=seed, out=out, strict=strict, bootstrap=bootstrap,
        progress=progress, name=name, gallery_size=gallery,
    )
    if task == "detection":
        return _run_detection(**common, images=images, label_map=label_map, postprocess=postprocess,
                              canvas=canvas, score_threshold=score_threshold, size_bins=size_bins,
                              instance_masks=instance_masks)
    if task == "segmentation":
        return _run_segmentation(**common, images=images, masks=masks, class_names=class_names,
                                 ignore_index=ignore_index, data_config=data_config,
                                 overrides=dict(data_config_overrides or {}))
    return _run_classification(**common, data_config=data_config, overrides=dict(data_config_overrides or {}),
                               class_names=class_names, baseline=baseline)


def _report_name(model: str, data: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(model.split(':')[-1]).stem}-{data.name}").strip("-")
    return f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _prepare(suite_name: str, seed: int | None, out: str | Path | None, name: str | None, model: str, data: Path):
    """The suite, its passes, the run's seed and the output folder (created)."""
    from visionstress.suite import load_suite

    suite = load_suite(suite_name)
    run_seed = suite.seed if seed is None else int(seed)
    out_dir = Path(out) if out is not None else Path("reports") / (name or _report_name(model, data))
    out_dir.mkdir(parents=True, exist_ok=True)
    return suite, run_seed, suite_passes(suite), out_dir


def _stream(task: str, batches, passes: list[Pass], predict, score, *, device: torch.device, seed: int,
            out_dir: Path, total: int, progress, on_batch) -> tuple[RunTiming, Path]:
    """Run every pass on every batch, writing `score(pass, batch, prediction) -> (columns, paths)` to the
    records as it goes; returns the timing and the records path."""
    from visionstress.records import RecordWriter

    timing = RunTiming()
    records_path = out_dir / "records.parquet"
    done = 0
    with RecordWriter(records_path, task) as writer:
        def consume(p: Pass, batch, prediction) -> None:
            nonlocal done
            columns, paths = score(p, batch, prediction)
            writer.write(columns, perturbation=p.perturbation, family=p.family, severity=p.severity, paths=paths)
            done += len(batch)
            if progress is not None:
                progress(done, total)

        stream_passes(batches, passes, predict, consume, device, seed, timing, on_batch=on_batch)
    return timing, records_path


def _rows(metric_rows, passes: list[Pass]) -> list[dict[str, Any]]:
    families = _families(passes)
    return [{"perturbation": r.perturbation, "family": families.get(r.perturbation, r.perturbation),
             "severity": r.severity, "metrics": r.metrics, "ci": {k: list(v) for k, v in r.ci.items()}}
            for r in metric_rows]


def _families(passes: list[Pass]) -> dict[str, str]:
    return {p.perturbation: p.family for p in passes}


def _scorecard(*, task: str, model: str, loaded, weights, dataset: dict[str, Any], suite, seed: int,
               data_config: dict[str, Any], device: torch.device, rows, summaries, breakdowns, timing: RunTiming,
               records_path: Path, out_dir: Path):
    """Assemble, save (scorecard.json + summary.md + report.html) and return the run's Scorecard."""
    from visionstress.scorecard import SCHEMA_VERSION, Scorecard, environment_info

    card = Scorecard(
        schema_version=SCHEMA_VERSION,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        task=task,
        model={"spec": model, "path": loaded.path, "sha256": loaded.sha256, "format": loaded.format,
               "weights": None if weights is None else str(weights)},
        dataset=dataset,
        suite=suite.to_dict(),
        seed=seed,
        data_config=data_config,
        environment=environment_info(device),
        results=rows,
        summaries=summaries,
        breakdowns=breakdowns,
        timing=timing.as_dict(),
        records_path=str(records_path.resolve()),
    )
    card.save(out_dir)
    from visionstress.report import write_report

    write_report(card, out_dir)
    return card


def _run_classification(*, model, data, suite_name, weights, trust_model, num_classes, data_config, overrides,
                        class_names, device, batch_size, workers, amp, limit, seed, out, strict, baseline,
                        bootstrap, progress, name, gallery_size):
    from visionstress.datasets import (ClassificationImages, dataset_fingerprint, iterate_batches,
                                       load_classification_samples, read_class_names)
    from visionstress.evaluators import ClassificationEvaluator
    from visionstress.models import ClassifierAdapter, load_model, resolve_data_config

    suite, run_seed, passes, out_dir = _prepare(suite_name, seed, out, name, model, data)
    loaded = load_model(model, weights=None if weights is None else str(weights), trust_model=trust_model,
                        num_classes=num_classes)
    config, config_source = resolve_data_config(loaded.data_config,
                                                None if data_config is None else str(data_config), overrides)
    names = read_class_names(class_names) if class_names is not None else None
    samples, class_list = load_classification_samples(data, names)
    if limit is not None:
        samples = samples[:limit]
    adapter = ClassifierAdapter(loaded, config, device=device, amp=amp)
    width = adapter.num_classes
    if names is None and width > len(class_list) and class_list == [str(i) for i in range(len(class_list))]:
        # integer labels name model indices directly; the dataset need not contain the highest classes
        class_list = [str(i) for i in range(width)]
    if width != len(class_list):
        raise RunError(
            f"{model}: the model outputs {width} classes but the dataset has {len(class_list)} "
            f"({'from --class-names' if names is not None else 'one per class folder/label'}); pass --class-names "
            f"with the model's {width} class names in index order"
        )

    dataset = ClassificationImages(samples, config, strict=strict)
    evaluator = ClassificationEvaluator(len(class_list), class_list, bootstrap=bootstrap, seed=run_seed)
    skipped: list[Any] = []
    host: dict[str, Any] = {}  # the current batch's ids, labels and paths, copied to the host once

    def on_batch(batch, batch_skipped) -> None:
        skipped.extend(batch_skipped)
        host["ids"], host["labels"] = batch.sample_ids.cpu(), batch.labels.cpu()
        host["paths"] = [samples[i].path for i in host["ids"].tolist()]

    def predict(images: torch.Tensor):
        with autocast_context(device, amp):
            return adapter.predict(images)

    gallery = FailureGallery(size=gallery_size)

    def score(p: Pass, batch, prediction):
        columns = evaluator.update(p.perturbation, p.severity, host["ids"], host["labels"],
                                   prediction.logits.float().cpu())
        correct, confidence = np.asarray(columns["correct"], bool), np.asarray(columns["confidence"], np.float64)
        if p.perturbation == CLEAN:
            host["clean_images"], host["clean_correct"] = batch.images, correct
        else:  # a failure: right on the clean image, wrong here; the more confident, the worse
            def caption(i: int) -> str:
                label, predicted = int(columns["label"][i]), int(columns["prediction"][i])
                return f"{class_list[label]} → {class_list[predicted]} ({100 * confidence[i]:.0f}% confident)"

            gallery.offer(perturbation=p.perturbation, severity=p.severity, sample_ids=host["ids"],
                          paths=_relative(host["paths"], data), scores=torch.from_numpy(confidence * (host["clean_correct"] & ~correct)),
                          clean_images=host["clean_images"], perturbed_images=batch.images, captions=caption)
        return columns, host["paths"]

    timing, records_path = _stream("classification", iterate_batches(dataset, batch_size, workers), passes, predict,
                                   score, device=device, seed=run_seed, out_dir=out_dir,
                                   total=len(samples) * len(passes), progress=progress, on_batch=on_batch)
    _check_read(timing, data, skipped)
    results = evaluator.finalize()
    rows = _rows(results.rows, passes)
    return _scorecard(
        task="classification", model=model, loaded=loaded, weights=weights,
        dataset={"path": str(data), "fingerprint": dataset_fingerprint(samples, data),
                 "num_samples": timing.images, "num_listed": len(samples), "num_classes": len(class_list),
                 "class_names": list(class_list), "skipped": _skipped(skipped)},
        suite=suite, seed=run_seed, data_config={**config.to_dict(), "source": config_source}, device=device,
        rows=rows, summaries=_summaries(results.rows, _families(passes), suite.name, len(class_list), baseline),
        breakdowns={**_breakdowns(results), "gallery": gallery.save(out_dir)}, timing=timing,
        records_path=records_path, out_dir=out_dir,
    )


def _relative(paths: list[str], root: Path) -> list[str]:
    """Paths as the gallery captions show them: relative to the dataset root when inside it."""
    out = []
    for path in paths:
        try:
            out.append(Path(path).relative_to(root).as_posix())
        except ValueError:
            out.append(str(path))
    return out


def _f1(columns: dict[str, Any]) -> np.ndarray:
    """Per-image F1 at the score threshold (IoU 0.5): 1 for an image with nothing to find and nothing found."""
    tp, fp, fn = (np.asarray(columns[k], np.float64) for k in ("tp", "fp", "fn"))
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _soft_f1(columns: dict[str, Any]) -> np.ndarray:
    """Per-image F1 at IoU 0.5 with every detection counted by its score instead of a threshold.

    Ranks the gallery: a detection that vanishes (0.9 -> nothing) is a worse failure than one that dips
    just under the score threshold (0.51 -> 0.49), which the thresholded F1 cannot tell apart."""
    out = []
    for num_gt, scores, match, ignore in zip(columns["num_gt"], columns["dt_score"], columns["dt_match"],
                                             columns["dt_ignore"]):
        scores = np.asarray(scores, np.float64)
        matched = (np.asarray(match, np.uint16) & 1).astype(bool)
        ignored = (np.asarray(ignore, np.uint16) & 1).astype(bool)
        tp = scores[matched & ~ignored].sum()
        fp = scores[~matched & ~ignored].sum()
        out.append(_ratio(np.float64(2 * tp), np.float64(tp + fp + num_gt)))
    return np.asarray(out, np.float64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.ones_like(numerator), where=denominator > 0)


def _box_overlays(targets, prediction, names: dict[int, str], threshold: float, scales):
    """Gallery overlays for image i: its ground truth (green) and its detections above the threshold (red),
    in the batch's pixels (letterboxed ones scaled back onto the canvas)."""
    def overlays(i: int):
        scale = 1.0 if scales is None else float(scales[i])
        keep = prediction.scores[i] >= threshold
        return [Boxes(targets[i].boxes * scale, [names.get(int(c), str(int(c))) for c in targets[i].labels]),
                Boxes(prediction.boxes[i][keep] * scale,
                      [names.get(int(c), str(int(c))) for c in prediction.labels[i][keep]],
                      scores=prediction.scores[i][keep])]

    return overlays


def _check_read(timing: RunTiming, data: Path, skipped: list[Any]) -> None:
    if timing.images == 0:
        raise RunError(f"{data}: no image could be read ({len(skipped)} skipped); see the reasons with --strict")


def _skipped(skipped: list[Any]) -> list[dict[str, str]]:
    return [{"path": s.path, "reason": s.reason} for s in skipped]


def _run_detection(*, model, data, suite_name, weights, trust_model, num_classes, device, batch_size, workers, amp,
                   limit, seed, out, strict, bootstrap, progress, name, images, label_map, postprocess, canvas,
                   score_threshold, size_bins, instance_masks, gallery_size):
    from visionstress.datasets import DetectionImages, iterate_detection_batches, load_coco_dataset
    from visionstress.evaluators import DetectionEvaluator, robustness_summary
    from visionstress.models import DetectorAdapter, load_model, resolve_label_map

    suite, run_seed, passes, out_dir = _prepare(suite_name, seed, out, name, model, data)
    dataset = load_coco_dataset(data, images)
    if limit is not None:
        dataset.samples = dataset.samples[:limit]
    loaded = load_model(model, weights=None if weights is None else str(weights), trust_model=trust_model,
                        num_classes=num_classes, task="detection")
    mapping = resolve_label_map(label_map, dataset.categories, loaded.categories)
    adapter = DetectorAdapter(loaded, device=device, amp=amp, data_config=loaded.data_config,
                              postprocess=_callable(postprocess), label_map=mapping)
    evaluator = DetectionEvaluator(dataset.categories, size_bins=size_bins, score_threshold=score_threshold,
                                   bootstrap=bootstrap, seed=run_seed, masks=instance_masks)
    samples = dataset.samples
    names = {int(c["id"]): str(c["name"]) for c in dataset.categories}
    gallery = FailureGallery(size=gallery_size)
    skipped: list[Any] = []
    host: dict[str, Any] = {}

    def on_batch(batch, info) -> None:
        skipped.extend(info.skipped)
        host["ids"] = batch.sample_ids.cpu()
        host["paths"] = [samples[i].path for i in host["ids"].tolist()]
        host["sizes"] = [(samples[i].height, samples[i].width) for i in host["ids"].tolist()]
        host["scales"] = None if info.scales is None else info.scales.cpu()

    def score(p: Pass, batch, prediction):
        targets = [t.to("cpu") for t in batch.boxes]
        prediction = _detections_to_host(prediction)
        if host["scales"] is not None:  # letterboxed: back to the original image's pixels
            targets, prediction = _unscale(targets, prediction, host["scales"])
        columns = evaluator.update(p.perturbation, p.severity, host["ids"], host["sizes"], targets, prediction)
        f1, soft = _f1(columns), _soft_f1(columns)
        if p.perturbation == CLEAN:
            host["clean"] = (batch.images, targets, prediction, f1, soft)
        else:  # a failure: the image's score-weighted F1 dropped from the clean pass
            clean_images, clean_targets, clean_prediction, clean_f1, clean_soft = host["clean"]

            def caption(i: int) -> str:
                return (f"F1@0.5 {clean_f1[i]:.2f} → {f1[i]:.2f}, score-weighted {clean_soft[i]:.2f} → "
                        f"{soft[i]:.2f} ({columns['fn'][i]} missed, {columns['fp'][i]} false)")

            gallery.offer(perturbation=p.perturbation, severity=p.severity, sample_ids=host["ids"],
                          paths=host["paths"], scores=torch.from_numpy(clean_soft - soft),
                          clean_images=clean_images, perturbed_images=batch.images, captions=caption,
                          clean_overlays=_box_overlays(clean_targets, clean_prediction, names, score_threshold,
                                                       host["scales"]),
                          perturbed_overlays=_box_overlays(targets, prediction, names, score_threshold,
                                                           host["scales"]))
        return columns, host["paths"]

    batches = iterate_detection_batches(DetectionImages(dataset, with_masks=instance_masks, strict=strict), batch_size,
                                        workers, canvas=canvas)
    timing, records_path = _stream("detection", batches, passes, adapter.predict, score, device=device,
                                   seed=run_seed, out_dir=out_dir, total=len(samples) * len(passes),
                                   progress=progress, on_batch=on_batch)
    _check_read(timing, data, skipped)
    results = evaluator.finalize()
    class_names = [c["name"] for c in dataset.categories]
    worst = _worst_key(results.rows, "AP")
    keep = {result_key(CLEAN, 0), worst} - {None}
    return _scorecard(
        task="detection", model=model, loaded=loaded, weights=weights,
        dataset={"path": str(data), "fingerprint": _coco_fingerprint(dataset), "num_samples": timing.images,
                 "num_listed": len(samples), "num_classes": len(class_names), "class_names": class_names,
                 "category_ids": [int(c["id"]) for c in dataset.categories], "skipped": _skipped(skipped),
                 "warnings": list(dataset.warnings)},
        suite=suite, seed=run_seed,
        data_config={"canvas": list(canvas) if canvas else None, "score_threshold": score_threshold,
                     "instance_masks": instance_masks,
                     "label_map": None if mapping is None else {str(k): v for k, v in mapping.items()},
                     "unmapped_predictions": adapter.unmapped,
                     **({} if loaded.data_config is None else loaded.data_config.to_dict())},
        device=device, rows=_rows(results.rows, passes),
        summaries=robustness_summary(results.rows, _families(passes), "AP"),
        breakdowns={"per_class_ap": results.per_class_ap, "size": results.size,
                    "error_types": {k: v for k, v in results.error_types.items() if k in keep},
                    "occlusion": results.occlusion, "gallery": gallery.save(out_dir)},
        timing=timing, records_path=records_path, out_dir=out_dir,
    )


def _run_segmentation(*, model, data, suite_name, weights, trust_model, num_classes, device, batch_size, workers,
                      amp, limit, seed, out, strict, bootstrap, progress, name, images, masks, class_names,
                      ignore_index, data_config, overrides, gallery_size):
    from visionstress.datasets import SegmentationImages, iterate_segmentation_batches, load_segmentation_dataset
    from visionstress.evaluators import SegmentationEvaluator, robustness_summary
    from visionstress.models import SegmenterAdapter, load_model, resolve_data_config

    suite, run_seed, passes, out_dir = _prepare(suite_name, seed, out, name, model, data)
    if masks is not None:  # --data is then the images folder
        images = images or data
        dataset = load_segmentation_dataset(images=images, masks=masks, class_names=class_names,
                                            ignore_index=ignore_index)
    else:
        dataset = load_segmentation_dataset(data, images=images, class_names=class_names, ignore_index=ignore_index)
    if limit is not None:
        dataset.samples = dataset.samples[:limit]
    num = len(dataset.class_names)
    loaded = load_model(model, weights=None if weights is None else str(weights), trust_model=trust_model,
                        num_classes=num_classes or num, task="segmentation")
    config, config_source = resolve_data_config(loaded.data_config,
                                                None if data_config is None else str(data_config), overrides)
    adapter = SegmenterAdapter(loaded, config, device=device, amp=amp, num_classes=num)
    evaluator = SegmentationEvaluator(num, dataset.class_names, ignore_index=dataset.ignore_index,
                                      bootstrap=bootstrap, seed=run_seed)
    samples = dataset.samples
    skipped: list[Any] = []
    host: dict[str, Any] = {}

    def on_batch(batch, info) -> None:
        skipped.extend(info.skipped)
        host["ids"] = batch.sample_ids.cpu()
        host["paths"] = [samples[i].image_path for i in host["ids"].tolist()]

    gallery = FailureGallery(size=gallery_size)

    def score(p: Pass, batch, prediction):
        columns = evaluator.update(p.perturbation, p.severity, host["ids"], batch.masks, prediction)
        miou = np.nan_to_num(np.asarray(columns["miou"], np.float64), nan=0.0)
        labels = prediction.labels
        if p.perturbation == CLEAN:
            host["clean"] = (batch.images, labels, miou)
        else:  # a failure: the image's own mIoU dropped from the clean pass
            clean_images, clean_labels, clean_miou = host["clean"]

            def caption(i: int) -> str:
                return f"image mIoU {clean_miou[i]:.2f} → {miou[i]:.2f}"

            gallery.offer(perturbation=p.perturbation, severity=p.severity, sample_ids=host["ids"],
                          paths=_relative(host["paths"], dataset.images_root), scores=torch.from_numpy(clean_miou - miou),
                          clean_images=clean_images, perturbed_images=batch.images, captions=caption,
                          clean_overlays=lambda i: [LabelMap(clean_labels[i], dataset.ignore_index)],
                          perturbed_overlays=lambda i: [LabelMap(labels[i], dataset.ignore_index)])
        return columns, host["paths"]

    batches = iterate_segmentation_batches(SegmentationImages(dataset, strict=strict), batch_size, workers)
    timing, records_path = _stream("segmentation", batches, passes, adapter.predict, score, device=device,
                                   seed=run_seed, out_dir=out_dir, total=len(samples) * len(passes),
                                   progress=progress, on_batch=on_batch)
    _check_read(timing, data, skipped)
    results = evaluator.finalize()
    worst = _worst_key(results.rows, "mIoU")
    keep = {result_key(CLEAN, 0), worst} - {None}
    return _scorecard(
        task="segmentation", model=model, loaded=loaded, weights=weights,
        dataset={"path": str(data), "fingerprint": _segmentation_fingerprint(dataset),
                 "num_samples": timing.images, "num_listed": len(samples), "num_classes": num,
                 "class_names": list(dataset.class_names), "ignore_index": dataset.ignore_index,
                 "skipped": _skipped(skipped)},
        suite=suite, seed=run_seed, data_config={**config.to_dict(), "source": config_source}, device=device,
        rows=_rows(results.rows, passes),
        summaries=robustness_summary(results.rows, _families(passes), "mIoU"),
        breakdowns={"per_class_iou": results.per_class_iou,
                    "confusion": {k: v for k, v in results.confusion.items()
                                  if k in keep and v.shape[0] <= _MAX_CONFUSION_CLASSES},
                    "region_recall": results.region_recall, "gallery": gallery.save(out_dir)},
        timing=timing, records_path=records_path, out_dir=out_dir,
    )


def _worst_key(rows, metric: str) -> str | None:
    perturbed = [r for r in rows if r.severity > 0 and math.isfinite(r.metrics.get(metric, math.nan))]
    if not perturbed:
        return None
    worst = min(perturbed, key=lambda r: r.metrics[metric])
    return result_key(worst.perturbation, worst.severity)


def _callable(spec: str | Callable[..., Any] | None) -> Callable[..., Any] | None:
    """A post-processing hook given as a callable or as "package.module:function"."""
    if spec is None or callable(spec):
        return spec
    import importlib

    module_name, _, attr = str(spec).partition(":")
    if not attr:
        raise RunError(f"--postprocess {spec!r}: expected package.module:function")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RunError(f"--postprocess {spec!r}: cannot import it ({exc})") from None
    if not callable(fn):
        raise RunError(f"--postprocess {spec!r}: not a function")
    return fn


def _detections_to_host(prediction):
    return replace(prediction, boxes=[b.float().cpu() for b in prediction.boxes],
                   scores=[s.float().cpu() for s in prediction.scores],
                   labels=[lab.cpu() for lab in prediction.labels])


def _unscale(targets, prediction, scales: torch.Tensor):
    """Letterboxed coordinates back to the original image's: boxes / scale, areas / scale²."""
    factors = scales.tolist()
    moved = [replace(t, boxes=t.boxes / s, area=None if t.area is None else t.area / (s * s))
             for t, s in zip(targets, factors)]
    return moved, replace(prediction, boxes=[b / s for b, s in zip(prediction.boxes, factors)])


def _coco_fingerprint(dataset) -> str:
    """SHA-256 of the sorted (file name, its annotations) of the scored images: which images with which
    boxes, independent of where the dataset lives or of id numbering."""
    entries = []
    for sample in dataset.samples:
        anns = dataset.coco.imgToAnns.get(sample.image_id, [])
        objects = sorted([int(a["category_id"]), [round(float(v), 2) for v in a["bbox"]], int(a.get("iscrowd", 0))]
                         for a in anns)
        entries.append(json.dumps([sample.path, objects]))
    return _digest(entries)


def _segmentation_fingerprint(dataset) -> str:
    """SHA-256 of the sorted (image, mask, mask size in bytes) names and the class names."""
    entries = [json.dumps([s.image_path, s.mask_path, (Path(dataset.masks_root) / s.mask_path).stat().st_size])
               for s in dataset.samples]
    return _digest(entries + [json.dumps(list(dataset.class_names))])


def _digest(entries: list[str]) -> str:
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(entry.encode("utf-8") + b"\n")
    return digest.hexdigest()


_MAX_CONFUSION_CLASSES = 100
"""Full confusion matrices are kept for at most this many classes (1000 classes x 76 passes would be
hundreds of MB of JSON); the most-confused pairs are kept always."""


def _breakdowns(results) -> dict[str, Any]:
    """Per-class metrics, confusion (clean and the worst cell), most-confused pairs and reliability
    bins; the scorecard converts numpy values when it saves."""
    perturbed = [r for r in results.rows if r.severity > 0]
    worst = min(perturbed, key=lambda r: r.metrics["top1"]) if perturbed else None
    keep = [result_key(CLEAN, 0)] + ([] if worst is None else [result_key(worst.perturbation, worst.severity)])
    confusion = {k: results.confusion[k] for k in keep
                 if k in results.confusion and results.confusion[k].shape[0] <= _MAX_CONFUSION_CLASSES}
    return {
        "per_class": results.per_class,
        "confusion": confusion,
        "most_confused": results.most_confused,
        "calibration": results.calibration,
    }


def _summaries(rows, families: dict[str, str], suite_name: str, num_classes: int,
               baseline: str | Path | None) -> dict[str, Any]:
    """Robustness summary; mCE normalised by a user's baseline scorecard, or by the published AlexNet
    errors for the imagenet-c preset on a 1000-class (ImageNet) model."""
    from visionstress.evaluators import (ALEXNET_CLEAN_ERROR, ALEXNET_SEVERITY_ERRORS, corruption_errors,
                                         robustness_summary)
    from visionstress.scorecard import Scorecard

    if baseline is not None:
        base = Scorecard.load(baseline)
        base_rows = base.results
        base_errors = corruption_errors(base_rows)
        if not set(base_errors) & {r.perturbation for r in rows if r.severity > 0}:
            raise RunError(f"{baseline}: the baseline scorecard shares no perturbation with this run")
        clean = next(r for r in base_rows if r["perturbation"] == CLEAN)
        summary = robustness_summary(rows, families, baseline_errors=base_errors,
                                     baseline_clean_error=1.0 - float(clean["metrics"]["top1"]))
        summary["mce_baseline"] = str(baseline)
        return summary
    if suite_name == "imagenet-c" and num_classes == 1000:
        summary = robustness_summary(rows, families, baseline_errors=ALEXNET_SEVERITY_ERRORS,
                                     baseline_clean_error=ALEXNET_CLEAN_ERROR)
        summary["mce_baseline"] = "AlexNet (Hendrycks & Dietterich, 2019)"
        return summary
    return robustness_summary(rows, families)
