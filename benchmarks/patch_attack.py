"""How much the adversarial patch hurts the bundled demo models, beside its random control.

Until the run engine calls the prepare phase itself, this script does what a run of the `adversarial`
suite does: prepares both patch perturbations (fitting the adversarial patches on the demo model),
then scores the held-out images (those the patches were not fitted on) clean and under each patch:
top-1 for the classifier, COCO AP for the detector, mIoU for the segmenter.

    python benchmarks/patch_attack.py                      # classification
    python benchmarks/patch_attack.py --task detection --steps 300
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from visionstress.demo import demo_arguments
from visionstress.options import resolve_options
from visionstress.perturbations import PrepareContext, get_perturbation

NAMES = ("adversarial_patch", "random_patch")


def demo_context(task: str, state_root: Path, severities: tuple[int, ...], options: dict, device: str = "cpu",
                 batch_size: int = 64) -> PrepareContext:
    """A PrepareContext over the bundled demo of `task` (model, adapter, dataset), as a run would build it."""
    from visionstress.models import (ClassifierAdapter, DetectorAdapter, SegmenterAdapter, load_model,
                                     resolve_data_config)

    args = demo_arguments(task)
    loaded = load_model(args["model"], weights=args["weights"], task=task)
    dev = torch.device(device)
    if task == "classification":
        from visionstress.datasets import ClassificationImages, iterate_batches, load_classification_samples

        config, _ = resolve_data_config(loaded.data_config, None, {})
        samples, classes = load_classification_samples(Path(args["data"]), None)
        adapter = ClassifierAdapter(loaded, config, device=dev)
        dataset = ClassificationImages(samples, config)
        batches = lambda: (b for b, _ in iterate_batches(dataset, batch_size, 0))  # noqa: E731
        ids: tuple[int, ...] = ()
    elif task == "detection":
        from visionstress.datasets import DetectionImages, iterate_detection_batches, load_coco_dataset

        coco = load_coco_dataset(args["data"])
        adapter = DetectorAdapter(loaded, device=dev, data_config=loaded.data_config)
        images = DetectionImages(coco)
        batches = lambda: (b for b, _ in iterate_detection_batches(images, batch_size, 0))  # noqa: E731
        classes = [c["name"] for c in coco.categories]
        ids = tuple(int(c["id"]) for c in coco.categories)
    else:
        from visionstress.datasets import SegmentationImages, iterate_segmentation_batches, load_segmentation_dataset

        data = load_segmentation_dataset(images=args["data"], masks=args["masks"], class_names=args["class_names"])
        config, _ = resolve_data_config(loaded.data_config, None, {})
        adapter = SegmenterAdapter(loaded, config, device=dev, num_classes=len(data.class_names))
        images = SegmentationImages(data)
        batches = lambda: (b for b, _ in iterate_segmentation_batches(images, batch_size, 0))  # noqa: E731
        classes = list(data.class_names)
        ids = ()
    return PrepareContext(task=task, adapter=adapter, batches=batches, severities={n: severities for n in NAMES},
                          seed=0, device=dev,
                          options=resolve_options(task, options), state_dir=state_root, class_names=classes,
                          log=lambda message: None, category_ids=ids)


def evaluate(context: PrepareContext, prepared: dict, severities: tuple[int, ...]) -> dict[tuple[str, int], float]:
    """The main metric on the held-out images, clean (severity 0) and under each prepared patch."""
    from visionstress.evaluators import (DetectionEvaluator, coco_metrics_from_matches,
                                         segmentation_metrics_from_counts)

    scores: dict[tuple[str, int], list] = {}
    evaluator = None
    if context.task == "detection":
        categories = [{"id": i, "name": n} for i, n in zip(context.category_ids, context.class_names)]
        evaluator = DetectionEvaluator(categories, bootstrap=0)
    for batch in context.batches():
        keep = prepared[NAMES[0]].sample_filter(batch.sample_ids)
        batch = batch.select(torch.nonzero(keep).flatten())
        if not len(batch):
            continue
        passes = [("clean", 0, batch)] + [(n, s, prepared[n](batch, severity=s, seed=context.seed))
                                          for n in NAMES for s in severities]
        for name, severity, view in passes:
            with torch.inference_mode():
                out = context.adapter.predict(view.images)
            if context.task == "classification":
                value = (out.logits.argmax(1).cpu() == view.labels).tolist()
            elif context.task == "detection":
                sizes = [tuple(view.image_size)] * len(view)
                value = [evaluator.update(name, severity, view.sample_ids, sizes, view.boxes, out)]
            else:
                value = [_seg_counts(out.logits.argmax(1).cpu(), view.masks, view.ignore_index,
                                     context.adapter.num_classes)]
            scores.setdefault((name, severity), []).extend(value)
    result = {}
    for key, values in scores.items():
        if context.task == "classification":
            result[key] = float(np.mean(values))
        elif context.task == "detection":
            frame = {c: [v for part in values for v in part[c]] for c in values[0]}
            result[key] = coco_metrics_from_matches(frame)["AP"]
        else:
            inter, gt, pred = (np.concatenate([v[i] for v in values]) for i in range(3))
            result[key] = segmentation_metrics_from_counts(inter, gt, pred)["mIoU"]
    return result


def _seg_counts(pred: torch.Tensor, masks: torch.Tensor, ignore: int, classes: int):
    valid = masks != ignore
    inter = [[int(((p == c) & (m == c) & v).sum()) for c in range(classes)] for p, m, v in zip(pred, masks, valid)]
    gt = [[int(((m == c) & v).sum()) for c in range(classes)] for m, v in zip(masks, valid)]
    pr = [[int(((p == c) & v).sum()) for c in range(classes)] for p, v in zip(pred, valid)]
    return np.array(inter), np.array(gt), np.array(pr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="classification", choices=("classification", "detection", "segmentation"))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--severities", default="1,2,3,4,5")
    parser.add_argument("--target", default=None, help="patch_target (or patch_target_class for detection)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    severities = tuple(int(s) for s in args.severities.split(","))
    options = {k: v for k, v in {"patch_steps": args.steps, "patch_lr": args.lr}.items() if v is not None}
    if args.target is not None:
        options["patch_target_class" if args.task == "detection" else "patch_target"] = args.target
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        context = demo_context(args.task, Path(tmp) / "prepared", severities, options, args.device)
        start = time.perf_counter()
        prepared = {name: get_perturbation(name).prepare(context) for name in NAMES}
        fit_seconds = time.perf_counter() - start
        result = evaluate(context, prepared, severities)
    summary = prepared[NAMES[0]].prepared_summary()
    metric = {"classification": "top1", "detection": "AP", "segmentation": "mIoU"}[args.task]
    clean = result[("clean", 0)]
    print(f"{args.task} demo: {metric} on the held-out images, fitted in {fit_seconds:.1f}s "
          f"({summary.get('steps')} steps x batch {summary.get('batch_size')}, {summary.get('fit_images')} fit images)")
    print(f"clean {metric}: {clean:.3f}")
    print(f"{'area':>6} {'adversarial':>12} {'random':>8} {'drop adv':>9} {'drop rand':>10} {'ratio':>6}")
    for s in severities:
        area = get_perturbation(NAMES[0]).level(s)
        adv, rand = result[(NAMES[0], s)], result[(NAMES[1], s)]
        drop_adv, drop_rand = clean - adv, clean - rand
        ratio = drop_adv / drop_rand if drop_rand > 0 else float("inf")
        print(f"{100 * area:5.0f}% {adv:12.3f} {rand:8.3f} {drop_adv:9.3f} {drop_rand:10.3f} {ratio:6.1f}")


if __name__ == "__main__":
    main()
