"""`visionstress.run`: a saved model, a dataset and a suite in; a Scorecard (and its files) out."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

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

TASKS = ("classification",)


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
    progress: Callable[[int, int], None] | None = None,
):
    """Stress `model` on `data` with `suite`; returns the Scorecard and writes it under `out`.

    With neither `model` nor `data`, runs the bundled demo (a tiny classifier on data/demo/shapes)
    and writes reports/demo/. `progress(done, total)` is called after every pass of every batch.
    """
    if task not in TASKS:
        raise RunError(f"task {task!r} is not supported yet; supported: {', '.join(TASKS)}")
    name = None
    if model is None and data is None:
        demo = demo_arguments()
        model, weights, data, name = demo["model"], demo["weights"], demo["data"], demo["name"]
    elif model is None or data is None:
        raise RunError("give both --model and --data, or neither to run the bundled demo")
    if batch_size < 1:
        raise RunError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise RunError(f"--limit must be at least 1, got {limit}")
    if bootstrap < 0:
        raise RunError(f"--bootstrap must be 0 (no intervals) or more resamples, got {bootstrap}")
    return _run_classification(
        model=str(model), data=Path(data), suite_name=suite, weights=weights, trust_model=trust_model,
        num_classes=num_classes,
        data_config=data_config, overrides=dict(data_config_overrides or {}), class_names=class_names,
        device=torch.device(device or default_device()), batch_size=batch_size, workers=workers, amp=amp,
        limit=limit, seed=seed, out=out, strict=strict, baseline=baseline, bootstrap=bootstrap, progress=progress,
        name=name,
    )


def _report_name(model: str, data: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(model.split(':')[-1]).stem}-{data.name}").strip("-")
    return f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _run_classification(*, model, data, suite_name, weights, trust_model, num_classes, data_config, overrides,
                        class_names, device, batch_size, workers, amp, limit, seed, out, strict, baseline,
                        bootstrap, progress, name):
    from visionstress.datasets import (ClassificationImages, dataset_fingerprint, iterate_batches,
                                       load_classification_samples, read_class_names)
    from visionstress.evaluators import ClassificationEvaluator, robustness_summary
    from visionstress.models import ClassifierAdapter, load_model, resolve_data_config
    from visionstress.records import RecordWriter
    from visionstress.scorecard import SCHEMA_VERSION, Scorecard, environment_info
    from visionstress.suite import load_suite

    suite = load_suite(suite_name)
    run_seed = suite.seed if seed is None else int(seed)
    passes = suite_passes(suite)

    loaded = load_model(model, weights=None if weights is None else str(weights), trust_model=trust_model,
                        num_classes=num_classes)
    config, config_source = resolve_data_config(loaded.data_config,
                                                None if data_config is None else str(data_config), overrides)
    names = read_class_names(class_names) if class_names is not None else None
    samples, class_list = load_classification_samples(data, names)
    if limit is not None:
        samples = samples[:limit]
    adapter = ClassifierAdapter(loaded, config, device=device, amp=amp)
    width = _output_width(adapter, config, device)
    if names is None and width > len(class_list) and class_list == [str(i) for i in range(len(class_list))]:
        # integer labels name model indices directly; the dataset need not contain the highest classes
        class_list = [str(i) for i in range(width)]
    if width != len(class_list):
        raise RunError(
            f"{model}: the model outputs {width} classes but the dataset has {len(class_list)} "
            f"({'from --class-names' if names is not None else 'one per class folder/label'}); pass --class-names "
            f"with the model's {width} class names in index order"
        )

    out_dir = Path(out) if out is not None else Path("reports") / (name or _report_name(model, data))
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / "records.parquet"
    dataset = ClassificationImages(samples, config, strict=strict)
    evaluator = ClassificationEvaluator(len(class_list), class_list, bootstrap=bootstrap, seed=run_seed)
    timing = RunTiming()
    skipped: list[Any] = []
    total = len(samples) * len(passes)
    done = 0

    def predict(images: torch.Tensor):
        with autocast_context(device, amp):
            return adapter.predict(images)

    host: dict[str, Any] = {}  # the current batch's ids, labels and paths, copied to the host once

    def on_batch(batch, batch_skipped) -> None:
        skipped.extend(batch_skipped)
        host["ids"], host["labels"] = batch.sample_ids.cpu(), batch.labels.cpu()
        host["paths"] = [samples[i].path for i in host["ids"].tolist()]

    with RecordWriter(records_path) as writer:
        def consume(p: Pass, batch, prediction) -> None:
            nonlocal done
            columns = evaluator.update(p.perturbation, p.severity, host["ids"], host["labels"],
                                       prediction.logits.float().cpu())
            writer.write(columns, perturbation=p.perturbation, family=p.family, severity=p.severity,
                         paths=host["paths"])
            done += len(batch)
            if progress is not None:
                progress(done, total)

        stream_passes(iterate_batches(dataset, batch_size, workers), passes, predict, consume, device, run_seed,
                      timing, on_batch=on_batch)
    if timing.images == 0:
        raise RunError(f"{data}: no image could be read ({len(skipped)} skipped); see the reasons with --strict")

    results = evaluator.finalize()
    families = {p.perturbation: p.family for p in passes}
    rows = [{"perturbation": r.perturbation, "family": families.get(r.perturbation, r.perturbation),
             "severity": r.severity, "metrics": r.metrics, "ci": {k: list(v) for k, v in r.ci.items()}}
            for r in results.rows]
    summaries = _summaries(results.rows, families, suite.name, len(class_list), baseline)
    card = Scorecard(
        schema_version=SCHEMA_VERSION,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        task="classification",
        model={"spec": model, "path": loaded.path, "sha256": loaded.sha256, "format": loaded.format,
               "weights": None if weights is None else str(weights)},
        dataset={"path": str(data), "fingerprint": dataset_fingerprint(samples, data),
                 "num_samples": timing.images, "num_listed": len(samples), "num_classes": len(class_list),
                 "class_names": list(class_list),
                 "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]},
        suite=suite.to_dict(),
        seed=run_seed,
        data_config={**config.to_dict(), "source": config_source},
        environment=environment_info(device),
        results=rows,
        summaries=summaries,
        breakdowns=_breakdowns(results),
        timing=timing.as_dict(),
        records_path=str(records_path.resolve()),
    )
    card.save(out_dir)
    return card


def _output_width(adapter, config, device: torch.device) -> int:
    """The model's number of outputs, from one forward pass on a grey image, before any real work."""
    h, w = config.input_size
    probe = torch.full((1, 3, h, w), 0.5, device=device)
    return int(adapter.predict(probe).logits.shape[1])


_MAX_CONFUSION_CLASSES = 100
"""Full confusion matrices are kept for at most this many classes (1000 classes x 76 passes would be
hundreds of MB of JSON); the most-confused pairs are kept always."""


def _breakdowns(results) -> dict[str, Any]:
    """Per-class metrics, confusion (clean and the worst cell), most-confused pairs and reliability
    bins; the scorecard converts numpy values when it saves."""
    from visionstress.evaluators import result_key

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
