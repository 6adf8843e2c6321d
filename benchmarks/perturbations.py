"""Throughput of the ImageNet-C corruptions: visionstress (batched torch) against imagecorruptions.

    python benchmarks/perturbations.py [--batch 32 --size 224 --device cpu --reps 3 --names motion_blur ...]

For each corruption and severity 1..5, visionstress perturbs one float32 batch of `--batch` natural
photographs (scikit-image's bundled photos, resized) and the reference (`imagecorruptions.corrupt`)
perturbs the same images one by one as uint8 HWC arrays, as it is used. The reference can be timed on
fewer images (`--reference-images`, its glass_blur is slow) and scaled. Warm-up runs are excluded; CUDA
timings synchronise. Prints one table with a TOTAL row (total images / total seconds on each side).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def natural_images(n: int, size: int) -> np.ndarray:
    import cv2
    from skimage import data

    names = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "hubble_deep_field",
             "colorwheel", "retina", "motorcycle_left", "logo", "page")
    photos = []
    for name in names:
        try:
            img = getattr(data, name)()
        except Exception:  # some photos need an optional download (pooch); skip them
            continue
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        img = img[..., :3]
        h, w = img.shape[:2]
        side = min(h, w)
        img = img[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
        photos.append(cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_AREA))
    out = []
    for i in range(n):  # cycle through the photos, flipped/rolled so images differ
        p = photos[i % len(photos)]
        k = i // len(photos)
        p = np.roll(p[:, ::-1] if k % 2 else p, shift=7 * k, axis=0)
        out.append(np.ascontiguousarray(p))
    return np.stack(out)


def time_visionstress(p, images: torch.Tensor, severity: int, reps: int) -> float:
    """Seconds per batch (median of `reps` after one warm-up)."""
    cuda = images.is_cuda
    p(images, severity=severity, seed=0)
    if cuda:
        torch.cuda.synchronize()
    times = []
    for r in range(reps):
        t = time.perf_counter()
        p(images, severity=severity, seed=r + 1)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def time_reference(name: str, images: np.ndarray, severity: int) -> float:
    """Seconds per image for imagecorruptions (one warm-up image excluded)."""
    from imagecorruptions import corrupt

    np.random.seed(0)
    corrupt(images[0], severity=severity, corruption_name=name)
    t = time.perf_counter()
    for img in images:
        corrupt(img, severity=severity, corruption_name=name)
    return (time.perf_counter() - t) / len(images)


def main(argv: list[str] | None = None) -> None:
    from visionstress.perturbations import IMAGENET_C, list_perturbations, get_perturbation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=3, help="timed visionstress runs per case (median)")
    parser.add_argument("--reference-images", type=int, default=8,
                        help="images the reference is timed on per case (its per-image time is scaled)")
    parser.add_argument("--no-reference", action="store_true", help="time visionstress only")
    parser.add_argument("--names", nargs="*", default=list(IMAGENET_C))
    args = parser.parse_args(argv)

    images_np = natural_images(args.batch, args.size)
    batch = torch.from_numpy(images_np).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    device = torch.device(args.device)
    on_device = batch.to(device)
    gpu = torch.cuda.is_available()
    gpu_batch = batch.cuda() if gpu else None
    registered = set(list_perturbations())
    ref_images = images_np[: max(1, min(args.reference_images, args.batch))]

    rows, skipped = [], []
    tot = {"vs": 0.0, "ref": 0.0, "gpu": 0.0, "n": 0}
    for name in args.names:
        if name not in registered:
            skipped.append(name)
            continue
        p = get_perturbation(name)
        vs_s = ref_s = gpu_s = 0.0
        for severity in range(1, 6):
            vs_s += time_visionstress(p, on_device, severity, args.reps)
            if gpu:
                gpu_s += time_visionstress(p, gpu_batch, severity, args.reps)
            if not args.no_reference:
                ref_s += time_reference(name, ref_images, severity) * args.batch
        n = 5 * args.batch
        tot["vs"] += vs_s
        tot["ref"] += ref_s
        tot["gpu"] += gpu_s
        tot["n"] += n
        rows.append((name, n / vs_s, n / ref_s if ref_s else float("nan"), n / gpu_s if gpu else None))
        print(f"  {name}: done", flush=True)
    n = tot["n"]
    if n:
        rows.append(("TOTAL", n / tot["vs"], n / tot["ref"] if tot["ref"] else float("nan"),
                     n / tot["gpu"] if gpu else None))

    title = (f"ImageNet-C throughput, severities 1-5, batch {args.batch} x {args.size}x{args.size}, "
             f"{args.device}, {torch.get_num_threads()} threads (reference timed on {len(ref_images)} images)")
    headers = ["corruption", f"visionstress {args.device} img/s", "reference img/s", "ratio"]
    if gpu:
        headers.append("visionstress cuda img/s")
    table = []
    for name, v, r, g in rows:
        line = [name, f"{v:,.0f}", f"{r:,.1f}", f"{v / r:,.1f}x" if r == r else "-"]
        if gpu:
            line.append(f"{g:,.0f}")
        table.append(line)
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for h in headers:
            t.add_column(h, justify="left" if h == "corruption" else "right")
        for i, line in enumerate(table):
            t.add_row(*line, end_section=(i == len(table) - 2))
        Console().print(t)
    except ImportError:
        print(title)
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
        for line in table:
            print("  ".join(c.rjust(w) for c, w in zip(line, widths)))
    if skipped:
        print(f"skipped (not registered yet): {', '.join(skipped)}")


if __name__ == "__main__":
    main()
