"""Throughput of the skew matrix: cells x images per second end to end, beside the model alone.

Both sides make the same number of predictions on the same device: the model-only side runs the model
on one resident batch of reference inputs as many times as the matrix has cells (and batches), so the
ratio is what reading, decoding with every library, resizing per cell and scoring cost on top of it.

    python benchmarks/skew.py                                   # the bundled demo classifier, CPU
    python benchmarks/skew.py --model torchvision:resnet18 --images 128 --device cuda   # synthetic photos
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from _timing import model_only
from run_classification import demo_or_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model spec (default: the bundled demo classifier)")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--images", type=int, default=128, help="synthetic images when --model is given")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--knobs", default=None, help="--skew-knobs (default: every knob and combination)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args()
    from visionstress.allocator import keep_large_blocks

    keep_large_blocks()  # as every run sets it, before either side is timed (see visionstress/allocator.py)

    from visionstress.datasets import load_classification_samples
    from visionstress.models import load_model, resolve_data_config
    from visionstress.skew import cell_input, run_skew

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        spec, weights, data = demo_or_synthetic(args.model, args.weights, Path(tmp), args.images, 1000,
                                                args.image_size)
        loaded = load_model(spec, weights=weights)
        config, _ = resolve_data_config(loaded.data_config, None, {})
        samples, names = load_classification_samples(data)
        if args.model is not None:
            names = [str(i) for i in range(1000)]
        start = time.perf_counter()
        result = run_skew(loaded, config, samples, names, knobs=args.knobs, device=device, amp=args.amp,
                          batch_size=args.batch_size, workers=args.workers, bootstrap=0)
        end_to_end = time.perf_counter() - start
        cells, images = len(result.rows), len(result.paths)

        from visionstress.skew.tasks import ClassificationSkew

        adapter = ClassificationSkew().adapter(loaded, config.input_size, device, args.amp, len(names))
        batch = torch.stack([cell_input(s.path, None, config) for s in samples[: args.batch_size]]).to(device)
        calls = cells * -(-images // len(batch))
        seconds = model_only(adapter.predict, batch, calls, device)
        model_rate = calls * len(batch) / seconds

    rate = cells * images / end_to_end
    table = Table(title=f"{spec} · {cells} cells (reference included) x {images} images · batch {args.batch_size} · "
                        f"{args.workers} workers · {device}{' · bf16' if args.amp else ''}")
    for column in ("", "cells x images / s", "share of end-to-end time"):
        table.add_column(column)
    table.add_row("end to end (run_skew)", f"{rate:,.0f}", "100%")
    table.add_row("  of which waiting for decoded pixels", "", f"{100 * result.timing['data_seconds'] / end_to_end:.0f}%")
    table.add_row("  of which model", "", f"{100 * result.timing['model_seconds'] / end_to_end:.0f}%")
    table.add_row("model only (same number of predictions)", f"{model_rate:,.0f}", "")
    table.add_row("overhead (model only / end to end)", f"{model_rate / rate:.2f}x", "")
    Console().print(table)


if __name__ == "__main__":
    main()
