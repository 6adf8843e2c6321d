"""Render the bundled shapes dataset (data/demo/shapes/) from code, deterministically.

Six classes of flat shapes on 64x64 RGB images, built so that the failures visionstress looks for
really happen on the demo model:

* look-alike pairs: circle/ellipse and square/rectangle differ only by aspect ratio, which a few
  pixels of a small, rotated object barely show (class confusion);
* object sizes spread log-uniformly from 9 to 54 pixels (small objects);
* six background textures. In the train split the background is the one tied to the class with
  probability `TRAIN_BACKGROUND_CORRELATION` (else a random one); in the val split every class is
  shown on every background equally often. A model that learns the shortcut loses accuracy on val, and a
  background swap exposes it.

Every sample is a pure function of (split, index): its randomness comes from
`numpy.random.default_rng([SEED, split, index])`, so any one image can be re-rendered alone and
the output bytes are the same on every run. The train split is rendered in memory by
`data/train_demo.py`; only the val split is written:

    val/<class>/<class>_<nnn>.png     the evaluation images (ImageFolder layout)
    val_masks/<class>_<nnn>.png       semantic masks: class index + 1 per pixel, 0 = background,
                                      255 = ignore (pixels the shape only partly covers)
    val_instances.json                COCO instances: one object per image, polygon masks
    classes.txt                       class names in model index order (= sorted folder names)
    segmentation_classes.txt          mask value order: background, then the classes

    python data/make_demo_dataset.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

OUT = Path(__file__).parent / "demo" / "shapes"
SEED = 2024
SIZE = 64  # images are SIZE x SIZE
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-averaged: anti-aliased edges and a coverage map
# Sorted, so that ImageFolder's alphabetical folder order is the model's class index order.
CLASSES = ("circle", "cross", "ellipse", "rectangle", "square", "triangle")
BACKGROUNDS = ("sky", "grass", "sand", "stripes", "checker", "night")  # class i's train background is i
TRAIN_BACKGROUND_CORRELATION = 0.4
VAL_PER_CLASS = 24  # a multiple of len(BACKGROUNDS): every (class, background) pair appears 4 times
MIN_OBJECT, MAX_OBJECT = 9.0, 54.0  # longest extent of an object, in pixels
ASPECT_RANGE = (1.3, 1.8)  # ellipse and rectangle: long side / short side
IGNORE = 255
SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class Sample:
    """One rendered image with its targets; `polygon` is [(x, y), ...] in pixel coordinates."""

    image: np.ndarray  # uint8 [SIZE, SIZE, 3]
    mask: np.ndarray  # uint8 [SIZE, SIZE]: class index + 1, 0 background, IGNORE on partial pixels
    label: int
    background: int
    size: float
    polygon: list[tuple[float, float]]


def _shape_outline(label: int, extent: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices [N, 2] of the class's shape centred at 0, longest extent `extent` pixels, unrotated."""
    name = CLASSES[label]
    half = extent / 2
    if name in ("circle", "ellipse"):
        minor = half / rng.uniform(*ASPECT_RANGE) if name == "ellipse" else half
        t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        return np.stack([half * np.cos(t), minor * np.sin(t)], 1)
    if name in ("square", "rectangle"):
        # the diagonal is the longest extent; a square's half-side is then half / sqrt(2)
        aspect = rng.uniform(*ASPECT_RANGE) if name == "rectangle" else 1.0
        w = half / math.sqrt(1 + 1 / aspect**2)
        h = w / aspect
        return np.array([(-w, -h), (w, -h), (w, h), (-w, h)])
    if name == "triangle":
        t = math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        r = extent / math.sqrt(3)  # equilateral: the side is the longest extent
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    # cross: a plus sign whose arms are a third of its width
    a, b = half / math.sqrt(2), half / (3 * math.sqrt(2))
    return np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b),
                     (-a, b), (-a, -b), (-b, -b)])


def _background(kind: int, rng: np.random.Generator) -> np.ndarray:
    """float [SIZE, SIZE, 3] in 0..255: one of six textures with jittered colours."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    jitter = rng.uniform(-18, 18, 3)
    name = BACKGROUNDS[kind]
    if name == "sky":
        top, bottom = np.array([90, 140, 220]), np.array([185, 215, 245])
        img = top + (bottom - top) * (y / (SIZE - 1))[..., None]
    elif name == "grass":
        img = np.array([70, 140, 55]) + rng.normal(0, 8, (SIZE, SIZE, 1)) * np.array([0.6, 1.0, 0.5])
    elif name == "sand":
        waves = 10 * np.sin(x / 5 + 0.8 * np.sin(y / 7) + rng.uniform(0, 6.3))[..., None]
        img = np.array([215, 190, 140]) + waves
    elif name == "stripes":
        period = rng.uniform(7, 11)
        stripe = (np.floor((x + y) / period) % 2)[..., None]
        img = np.array([125, 125, 130]) + 25 * stripe
    elif name == "checker":
        cell = int(rng.integers(6, 10))
        check = ((x // cell + y // cell) % 2)[..., None]
        img = np.array([160, 110, 145]) + np.array([-20, 25, -10]) * check
    else:  # night: dark blue with a few stars
        img = np.broadcast_to(np.array([25, 30, 70], np.float64), (SIZE, SIZE, 3)).copy()
        stars = rng.random((SIZE, SIZE)) < 0.02
        img[stars] = 230
    return np.broadcast_to(img + jitter, (SIZE, SIZE, 3))


def _object_colour(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour whose luminance differs clearly from the background's mean luminance."""
    weights = np.array([0.299, 0.587, 0.114])
    bg_luma = float(background.reshape(-1, 3).mean(0) @ weights)
    while True:
        colour = rng.uniform(0, 255, 3)
        if abs(colour @ weights - bg_luma) > 55:
            return colour


def render_sample(split: str, index: int) -> Sample:
    """Render sample `index` of `split` ("train" or "val") from its own random stream."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([SEED, SPLITS[split], index])
    label = index % len(CLASSES)
    if split == "val":
        # a Latin-square-like assignment: each class meets each background equally often
        background = (label + index // len(CLASSES)) % len(BACKGROUNDS)
    elif rng.random() < TRAIN_BACKGROUND_CORRELATION:
        background = label
    else:
        background = int(rng.integers(len(BACKGROUNDS)))
    extent = float(math.exp(rng.uniform(math.log(MIN_OBJECT), math.log(MAX_OBJECT))))
    outline = _shape_outline(label, extent, rng)
    angle = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    outline = outline @ rotation.T
    lo, hi = outline.min(0), outline.max(0)
    centre = np.array([rng.uniform(1 - lo[0], SIZE - 1 - hi[0]), rng.uniform(1 - lo[1], SIZE - 1 - hi[1])])
    polygon = [(float(px), float(py)) for px, py in np.round(outline + centre, 2)]

    canvas = Image.new("L", (SIZE * SUPERSAMPLE, SIZE * SUPERSAMPLE), 0)
    # pixel (i, j) covers [j, j+1) x [i, i+1); sub-pixel centres sit at (k + 0.5) / SUPERSAMPLE
    ImageDraw.Draw(canvas).polygon([(px * SUPERSAMPLE - 0.5, py * SUPERSAMPLE - 0.5) for px, py in polygon],
                                   fill=255)
    coverage = (np.asarray(canvas, np.float64) / 255).reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean((1, 3))

    bg = _background(background, rng)
    colour = _object_colour(bg, rng)
    shading = 1 + 0.12 * ((np.mgrid[0:SIZE, 0:SIZE][0] - centre[1]) / max(extent, 1))[..., None]
    image = bg * (1 - coverage[..., None]) + colour * shading * coverage[..., None]
    image = image + rng.normal(0, 4, image.shape)  # sensor-like grain for blur and compression to remove
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[coverage >= 0.5] = label + 1
    mask[(coverage > 0.25) & (coverage < 0.75)] = IGNORE
    return Sample(image, mask, label, background, extent, polygon)


def render_split(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [count, 3, SIZE, SIZE] and labels int64 [count] of the first `count` samples."""
    samples = [render_sample(split, i) for i in range(count)]
    images = np.stack([s.image for s in samples]).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images), np.array([s.label for s in samples], np.int64)


def val_stem(index: int) -> str:
    """File stem of val sample `index`: '<class>_<number within class>'."""
    return f"{CLASSES[index % len(CLASSES)]}_{index // len(CLASSES):03d}"


def _coco_annotation(sample: Sample, image_id: int) -> dict:
    xs, ys = [p[0] for p in sample.polygon], [p[1] for p in sample.polygon]
    x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))  # shoelace
    return {"id": image_id, "image_id": image_id, "category_id": sample.label + 1, "iscrowd": 0,
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "area": round(area, 2), "segmentation": [[c for p in sample.polygon for c in p]]}


def write_dataset(out: Path, per_class: int = VAL_PER_CLASS) -> None:
    """Write the val split, its masks, COCO instances and classes.txt under `out` (replacing them)."""
    for sub in ("val", "val_masks"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "val_masks").mkdir(parents=True)
    for name in CLASSES:
        (out / "val" / name).mkdir(parents=True)
    images, annotations = [], []
    for index in range(per_class * len(CLASSES)):
        sample = render_sample("val", index)
        stem, name = val_stem(index), CLASSES[sample.label]
        # optimize=False: zlib's default level keeps the bytes stable and the files small enough
        Image.fromarray(sample.image).save(out / "val" / name / f"{stem}.png")
        Image.fromarray(sample.mask).save(out / "val_masks" / f"{stem}.png")
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"val/{name}/{stem}.png", "width": SIZE, "height": SIZE,
                       "background": BACKGROUNDS[sample.background]})
        annotations.append(_coco_annotation(sample, image_id))
    coco = {
        "info": {"description": "visionstress demo shapes, val split (data/make_demo_dataset.py)",
                 "version": "1.0", "seed": SEED},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)],
    }
    (out / "val_instances.json").write_text(json.dumps(coco, separators=(",", ":")) + "\n")
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (out / "segmentation_classes.txt").write_text("\n".join(("background", *CLASSES)) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    parser.add_argument("--per-class", type=int, default=VAL_PER_CLASS, help="val images per class")
    args = parser.parse_args()
    write_dataset(args.out, args.per_class)
    print(f"wrote {args.per_class * len(CLASSES)} val images, masks, val_instances.json and classes.txt to {args.out}")


if __name__ == "__main__":
    main()
