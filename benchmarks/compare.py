"""Time of `visionstress compare` on a detection run: the paired bootstrap of COCO AP, old path vs new.

    python benchmarks/compare.py [--images 500 --categories 80 --resamples 1000 --old-resamples 2]

Builds two synthetic detection runs the way the runner writes them (Parquet records with COCO match
columns, one pass per cell of the default suite: clean + 65 perturbation x severity cells) on
`--images` images: objects of `--categories` classes (a few frequent, most rare, like COCO), a hit
per object with an IoU that decides its match bits at the ten thresholds, false positives around
them, up to 100 detections per image, the candidate a little worse than the reference. Then it times:

- new: `compare(reference, candidate, bootstrap=R)` end to end (records read, every cell of both runs
  resampled with `detection_statistics`, McNemar, summaries, gates), with the compiled kernel and,
  with `--numpy`, with its numpy fallback (timed on fewer resamples and scaled);
- old: what compare did before (one `coco_metrics_from_matches(frame, w)` per resample, cell and run,
  which rebuilds and replays the match table each time), timed on `--old-resamples` resamples and
  scaled linearly to R (it is linear: one identical call per resample).

Prints one table, wall and CPU seconds (CPU counts every thread of the compiled kernel); the numbers
depend on the machine and its load, so run it on a quiet one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def synthetic_run(folder: Path, images: int, categories: int, quality: float, seed: int):
    """A detection scorecard (in memory) and its records file for the default suite."""
    from visionstress.evaluators import detection_statistics
    from visionstress.evaluators.coco_matching import IOU_THRESHOLDS
    from visionstress.perturbations import get_perturbation
    from visionstress.records import RecordWriter
    from visionstress.scorecard import Scorecard
    from visionstress.suite import load_suite

    suite = load_suite("default")
    passes = [("clean", 0)] + list(suite.pairs())
    frequency = 1.0 / np.arange(1, categories + 1)
    frequency /= frequency.sum()
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    with RecordWriter(folder / "records.parquet", "detection") as writer:
        for index, (name, severity) in enumerate(passes):
            scene = np.random.default_rng(1000 + index)  # the same objects in both runs
            model = np.random.default_rng(seed * 7919 + index)
            difficulty = 0.05 * severity
            columns: dict[str, list] = {c: [] for c in ("sample_id", "num_gt", "num_pred", "tp", "fp", "fn",
                                                        "dt_category", "dt_score", "dt_match", "dt_ignore",
                                                        "gt_category", "gt_ignore")}
            for image in range(images):
                gt = scene.choice(categories, size=int(scene.integers(1, 15)), p=frequency)
                hit = model.random(len(gt)) < quality - difficulty
                iou = np.clip(model.normal(0.75 - difficulty, 0.12, len(gt)), 0.3, 0.99)
                fps = int(model.integers(5, 60))
                category = np.concatenate([gt[hit], model.choice(categories, size=fps, p=frequency)])
                score = np.concatenate([model.beta(5, 2, hit.sum()), model.beta(1.5, 4, fps)])
                match = np.zeros(len(category), np.uint16)
                for t, threshold in enumerate(IOU_THRESHOLDS):
                    match[:hit.sum()] |= (iou[hit] >= threshold).astype(np.uint16) << t
                order = np.argsort(-score, kind="stable")[:100]
                category, score, match = category[order], score[order], match[order]
                tp = int(((match & 1) > 0)[score >= 0.5].sum())
                values = {"sample_id": image, "num_gt": len(gt), "num_pred": int((score >= 0.5).sum()), "tp": tp,
                          "fp": int((score >= 0.5).sum()) - tp, "fn": len(gt) - tp, "dt_category": category,
                          "dt_score": score, "dt_match": match, "dt_ignore": np.zeros(len(category), np.uint16),
                          "gt_category": gt, "gt_ignore": np.zeros(len(gt), bool)}
                for key, value in values.items():
                    columns[key].append(value)
            family = "clean" if name == "clean" else get_perturbation(name).family
            writer.write(columns, name, family, severity, [f"{i}.jpg" for i in range(images)])
            stats = detection_statistics(pd.DataFrame(columns))(np.ones((1, images)))
            results.append({"perturbation": name, "family": family, "severity": severity, "ci": {},
                            "metrics": {m: float(v[0]) for m, v in stats.items()}})
    card = Scorecard(task="detection", model={"spec": folder.name}, seed=0, data_config={}, environment={},
                     dataset={"path": "synthetic", "fingerprint": "d" * 64, "num_samples": images},
                     suite=suite.to_dict(), results=results, records_path=str(folder / "records.parquet"))
    return card, passes


def old_path(reference, candidate, passes, images: int, resamples: int) -> tuple[float, float]:
    """Wall and CPU seconds for `resamples` resamples of every cell of both runs, the way compare did it."""
    from visionstress.evaluators import coco_metrics_from_matches
    from visionstress.evaluators.bootstrap import resample_weights
    from visionstress.records import read_records

    frames = []
    for card in (reference, candidate):
        records = read_records(card.records_path)
        frames.append({key: part.sort_values("sample_id") for key, part in records.groupby(["perturbation",
                                                                                            "severity"])})
    start, cpu = time.perf_counter(), time.process_time()
    for weights in resample_weights(images, resamples, 0):
        for key in passes:
            for frame in frames:
                [coco_metrics_from_matches(frame[key], w) for w in weights]
    return time.perf_counter() - start, time.process_time() - cpu


def timed_compare(reference, candidate, resamples: int) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) of one `compare`."""
    import visionstress as vs

    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vs.compare(reference, candidate, bootstrap=resamples)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--categories", type=int, default=80)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--old-resamples", type=int, default=2, help="0: do not time the old path.")
    parser.add_argument("--numpy", action="store_true", help="Also time the numpy fallback (no numba).")
    args = parser.parse_args()

    import visionstress.evaluators.coco_matching as coco_matching

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        reference, passes = synthetic_run(Path(tmp) / "reference", args.images, args.categories, 0.8, seed=1)
        candidate, _ = synthetic_run(Path(tmp) / "candidate", args.images, args.categories, 0.78, seed=2)
        built = time.perf_counter() - start
        detections = pd.read_parquet(reference.records_path, columns=["dt_category"])["dt_category"].map(len).sum()
        print(f"{args.images} images, {len(passes)} passes, {args.categories} categories, "
              f"{detections / len(passes) / args.images:.1f} detections per image per pass "
              f"(two runs built in {built:.1f} s)")
        timed_compare(reference, candidate, 20)  # load (or compile) the kernel once, as any later call finds it
        rows = [("new, compiled kernel", args.resamples, timed_compare(reference, candidate, args.resamples))]
        if args.numpy:
            original = coco_matching.numba_available
            coco_matching.numba_available = lambda: False
            try:
                few = max(20, args.resamples // 20)
                rows.append(("new, numpy fallback", few, timed_compare(reference, candidate, few)))
            finally:
                coco_matching.numba_available = original
        if args.old_resamples:
            rows.append(("old (per-resample replay)", args.old_resamples,
                         old_path(reference, candidate, passes, args.images, args.old_resamples)))
    print(f"\n| path | resamples timed | wall s | CPU s | wall s for {args.resamples} resamples |")
    print("|---|---:|---:|---:|---:|")
    for name, resamples, (wall, cpu) in rows:
        scaled = f"{wall * args.resamples / resamples:,.1f}" + ("" if resamples == args.resamples else " (scaled)")
        print(f"| {name} | {resamples} | {wall:.1f} | {cpu:.1f} | {scaled} |")


if __name__ == "__main__":
    main()
