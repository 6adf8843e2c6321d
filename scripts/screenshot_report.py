"""Screenshot an HTML report with headless Chromium: `python scripts/screenshot_report.py REPORT.html OUT.png`.

Chromium's `--screenshot` captures the window, not the page, so the window is made tall (`--height`)
and the empty page background below the content is cropped off afterwards. The report needs no
JavaScript and loads nothing from the network, so a plain headless load renders it completely.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
MARGIN = 24


class ScreenshotError(RuntimeError):
    """No browser, or the browser failed; the message says which and why."""


def find_browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise ScreenshotError(f"no headless browser found: install one of {', '.join(BROWSERS)} "
                          f"(Debian/Ubuntu: apt-get install chromium)")


def screenshot(report: Path, out: Path, width: int = 1280, height: int = 6000, timeout: float = 120,
               palette: bool = False) -> Path:
    """Render `report` at `width` pixels wide into `out` (PNG), cropped below the content; `palette`
    stores 256 colours, about a third of the bytes, for a screenshot that is committed."""
    report = Path(report).resolve()
    if not report.is_file():
        raise ScreenshotError(f"{report}: no such report file")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    browser = find_browser()
    with tempfile.TemporaryDirectory(prefix="visionstress-chromium-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={out}",
                   "--virtual-time-budget=5000", report.as_uri()]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ScreenshotError(f"{browser} did not finish within {timeout:g} s") from None
    if result.returncode != 0 or not out.is_file():
        raise ScreenshotError(f"{browser} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    _finish(out, palette)
    return out


def _finish(path: Path, palette: bool) -> None:
    """Cut the rows below the content that are all the colour of the bottom-left corner (the page)."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    background = pixels[-1, 0]
    content = np.flatnonzero((pixels != background).any(axis=(1, 2)))
    if content.size and content[-1] + 1 + MARGIN < pixels.shape[0]:
        pixels = pixels[: content[-1] + 1 + MARGIN]
    image = Image.fromarray(pixels)
    if palette:
        image = image.quantize(256, method=Image.Quantize.MEDIANCUT, kmeans=1)  # one k-means pass: truer colours
    image.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the report.html to capture")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels (default 1280)")
    parser.add_argument("--height", type=int, default=6000,
                        help="window height in pixels; the page below it is cut off (default 6000)")
    parser.add_argument("--palette", action="store_true", help="256-colour PNG, about a third of the size")
    args = parser.parse_args(argv)
    try:
        path = screenshot(args.report, args.out, args.width, args.height, palette=args.palette)
    except ScreenshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
