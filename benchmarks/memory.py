"""Peak memory of a run does not grow with the dataset: the same run on 200 and on 2,000 images.

Each run is a fresh `python -m visionstress run` process on an ImageFolder made of the demo's images
(copied under new names, so the demo classifier and its classes apply), and its peak resident set size
is read from the operating system when it exits. Records stream to the journal and are merged pass by
pass, evaluators keep a few numbers per image, so the larger run may use only a little more.

    python benchmarks/memory.py                 # 200 and 2000 images, suite quick
    python benchmarks/memory.py --sizes 200 5000 --suite default
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def image_folder(root: Path, images: int) -> Path:
    """`images` demo images in their class folders, the demo's 144 repeated under new names."""
    from visionstress.demo import demo_dir

    sources = sorted((demo_dir() / "val").rglob("*.png"))
    for i in range(images):
        source = sources[i % len(sources)]
        target = root / source.parent.name / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return root


def peak_rss_of_run(data: Path, out: Path, suite: str, bootstrap: int) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one run in its own process (the demo model on `data`)."""
    from visionstress.demo import demo_arguments

    demo = demo_arguments()
    command = [sys.executable, "-m", "visionstress", "run", "--model", demo["model"], "--weights", demo["weights"],
               "--data", str(data), "--suite", suite, "--bootstrap", str(bootstrap), "--workers", "0",
               "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        raise RuntimeError("the peak of this run is hidden by an earlier, larger one: run the smaller size first")
    return after / 1024.0, seconds  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000], help="image counts, ascending")
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()

    table = Table(title=f"peak memory of `visionstress run` · demo classifier · suite {args.suite} · "
                        f"bootstrap {args.bootstrap}")
    for column in ("images", "peak RSS", "vs the first", "seconds"):
        table.add_column(column, justify="right")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for size in sorted(args.sizes):
            data = image_folder(Path(tmp) / f"data{size}", size)
            peak, seconds = peak_rss_of_run(data, Path(tmp) / f"out{size}", args.suite, args.bootstrap)
            first = first or peak
            table.add_row(f"{size:,}", f"{peak:,.0f} MiB", f"{100 * (peak / first - 1):+.1f}%", f"{seconds:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
