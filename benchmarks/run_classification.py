"""Harness overhead of a classification run: end-to-end predictions/s beside model-only forward/s.

Both sides see the same batches on the same device: the model-only side runs the adapter on the
resident clean batch as many times as the suite has passes, so the ratio is what decoding,
perturbing, scoring and record writing cost on top of the model.

    python benchmarks/run_classification.py                       # the bundled demo model, CPU
    python benchmarks/run_classification.py --model torchvision:resnet50 --images 512 \\
        --batch-size 256 --amp --device cuda                      # random weights, synthetic images
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from _timing import model_only


def synthetic_folder(root: Path, images: int, classes: int, size: int) -> Path:
    """An ImageFolder of smooth random images (decoding cost like real photographs of that size)."""
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class{i % classes:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((size, size), Image.BILINEAR).save(folder / f"{i}.jpg", quality=90)
    return root


def demo_or_synthetic(model: str | None, weights: str | None, root: Path, images: int, classes: int,
                      size: int) -> tuple[str, str | None, Path]:
    """(model spec, weights, data folder): the bundled demo when `model` is None, else `model` on a
    synthetic folder written under `root`."""
    from visionstress.demo import demo_arguments

    if model is None:
        demo = demo_arguments()
        return demo["model"], demo["weights"], Path(demo["data"])
    return model, weights, synthetic_folder(root / "data", images, classes, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model spec (default: the bundled demo classifier)")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--images", type=int, default=256, help="synthetic images when --model is given")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--suite", default="default")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args()
    from visionstress.allocator import keep_large_blocks

    keep_large_blocks()  # as every run sets it, before either side is timed (see visionstress/allocator.py)

    import visionstress as vs
    from visionstress.datasets import ClassificationImages, load_classification_samples
    from visionstress.engine import suite_passes
    from visionstress.models import ClassifierAdapter, load_model, resolve_data_config
    from visionstress.suite import load_suite

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        spec, weights, data = demo_or_synthetic(args.model, args.weights, Path(tmp), args.images, args.classes,
                                                args.image_size)
        loaded = load_model(spec, weights=weights)
        config, _ = resolve_data_config(loaded.data_config, None, {})
        samples, _ = load_classification_samples(data)
        passes = len(suite_passes(load_suite(args.suite)))

        warm_up = warm_up_perturbations(load_suite(args.suite), device)
        start = time.perf_counter()
        card = vs.run(spec, data, weights=weights, suite=args.suite, batch_size=args.batch_size,
                      workers=args.workers, device=device, amp=args.amp, out=Path(tmp) / "out")
        end_to_end = time.perf_counter() - start
        predictions = card.timing["predictions"]
        loop = card.timing["total_seconds"]

        adapter = ClassifierAdapter(loaded, config, device=device, amp=args.amp)
        dataset = ClassificationImages(samples[: args.batch_size], config)
        batch = torch.stack([dataset[i][0] for i in range(len(dataset))]).to(device)
        seconds = model_only(adapter.predict, batch, passes, device)
        model_rate = passes * len(batch) / seconds

    table = Table(title=f"{spec} · suite {args.suite} ({passes} passes) · {len(samples)} images · "
                        f"batch {args.batch_size} · {device}{' · bf16' if args.amp else ''}")
    for column in ("", "predictions/s", "share of end-to-end time"):
        table.add_column(column)
    rate, loop_rate = predictions / end_to_end, predictions / loop
    table.add_row("end to end (vs.run: setup, loop, intervals, files)", f"{rate:,.0f}", "100%")
    table.add_row("  the loop (decode, perturb, predict, score)", f"{loop_rate:,.0f}", f"{100 * loop / end_to_end:.0f}%")
    for part in ("data", "perturb", "model"):
        table.add_row(f"    of which {part}", "", f"{100 * card.timing[f'{part}_seconds'] / end_to_end:.0f}%")
    table.add_row("    scoring (a host thread beside the GPU; inline on the CPU)", "",
                  f"{100 * card.timing['score_seconds'] / end_to_end:.0f}%")
    table.add_row("model only (same batches)", f"{model_rate:,.0f}", "")
    table.add_row("harness overhead in the loop (model only / loop)", f"{model_rate / loop_rate:.2f}x", "")
    table.add_row("whole run (model only / end to end)", f"{model_rate / rate:.2f}x", "")
    Console().print(table)
    Console().print(f"each perturbation called once before the run (numba kernels loaded from the on-disk cache, "
                  f"or compiled the first time): {warm_up:.1f} s")


def warm_up_perturbations(suite, device: torch.device) -> float:
    """Call every perturbation of `suite` once on a small batch, so the loop's times are steady state (the
    first call of a numba kernel loads it from the disk cache, or compiles it: seconds)."""
    from visionstress.engine import perturbation_for, suite_passes

    start = time.perf_counter()
    images = torch.rand(2, 3, 32, 32, device=device)
    for p in suite_passes(suite)[1:]:
        perturbation_for(p)(images, severity=p.severity, seed=0)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
