"""Harness overhead of a detection run: end-to-end images/s beside model-only images/s.

A torchvision detector (random weights: nothing is downloaded) on a synthetic COCO dataset of smooth
random images with boxes. Both sides see the same images on the same device: the model-only side runs
the adapter on one resident batch as many times as the suite has passes, so the ratio is what
decoding, perturbing (targets moved with the pixels), COCO scoring and record writing cost on top of
the model.

    python benchmarks/run_detection.py                                   # CPU, quick suite
    python benchmarks/run_detection.py --device cuda --images 512 --batch-size 32 --suite default
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from _timing import model_only


def synthetic_coco(root: Path, images: int, size: int, categories: int = 10) -> Path:
    """Smooth random images with 1-6 boxes each, as a COCO instances JSON beside an images folder."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries, annotations = [], []
    for i in range(images):
        base = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((size, size), Image.BILINEAR).save(root / "images" / f"{i}.jpg", quality=90)
        entries.append({"id": i + 1, "file_name": f"images/{i}.jpg", "width": size, "height": size})
        for _ in range(int(rng.integers(1, 7))):
            w, h = rng.uniform(8, size / 2, 2)
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(rng.integers(1, categories + 1)), "bbox": [x, y, w, h],
                                "area": float(w * h), "iscrowd": 0})
    coco = {"images": entries, "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}"} for c in range(1, categories + 1)]}
    path = root / "instances.json"
    path.write_text(json.dumps(coco))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision:fasterrcnn_mobilenet_v3_large_320_fpn")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true")
    args = parser.parse_args()
    from visionstress.allocator import keep_large_blocks

    keep_large_blocks()  # as every run sets it, before either side is timed (see visionstress/allocator.py)

    import visionstress as vs
    from visionstress.datasets import DetectionImages, load_coco_dataset
    from visionstress.engine import suite_passes
    from visionstress.models import DetectorAdapter, load_model
    from visionstress.suite import load_suite

    device = torch.device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_coco(Path(tmp) / "data", args.images, args.image_size)
        passes = len(suite_passes(load_suite(args.suite)))
        loaded = load_model(args.model, task="detection", num_classes=11)
        start = time.perf_counter()
        card = vs.run(args.model, data, task="detection", num_classes=11, suite=args.suite,
                      batch_size=args.batch_size, workers=args.workers, device=device, amp=args.amp,
                      out=Path(tmp) / "out", bootstrap=0, label_map="identity")
        end_to_end = time.perf_counter() - start

        adapter = DetectorAdapter(loaded, device=device, amp=args.amp, data_config=loaded.data_config)
        dataset = DetectionImages(load_coco_dataset(data))
        batch = torch.stack([dataset[i][0] for i in range(min(args.batch_size, len(dataset)))]).to(device)
        model_rate = passes * len(batch) / model_only(adapter.predict, batch, passes, device)

    predictions = card.timing["predictions"]
    table = Table(title=f"{args.model} (random weights) · suite {args.suite} ({passes} passes) · {args.images} "
                        f"images {args.image_size}² · batch {args.batch_size} · {device}{' · bf16' if args.amp else ''}")
    for column in ("", "images/s", "share of end-to-end time"):
        table.add_column(column)
    rate = predictions / end_to_end
    table.add_row("end to end (vs.run, every pass scored with COCOeval)", f"{rate:,.1f}", "100%")
    for part in ("data", "perturb", "model"):
        table.add_row(f"  of which {part}", "", f"{100 * card.timing[f'{part}_seconds'] / end_to_end:.0f}%")
    table.add_row("model only (same images)", f"{model_rate:,.1f}", "")
    table.add_row("harness overhead (model only / end to end)", f"{model_rate / rate:.2f}x", "")
    Console().print(table)


if __name__ == "__main__":
    main()
