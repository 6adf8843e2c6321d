"""A dataset where background and class are correlated, hand-made models that read one cue each, and a
driver that runs background / cue perturbations and their family summaries on them.

Every class has its own object shape, its own object colour and its own background colour, so each
model below is right on clean images while reading only one cue:

- `BackgroundReader` looks at the image border (the background) only;
- `ColourReader` counts the pixels of each object colour (the object, by its colour and texture);
- `ShapeReader` measures the silhouette of the non-white pixels (aspect ratio and fill): it reads shape
  on white-background stimuli (silhouettes, cue conflicts) only.

The models take images in [0, 1] (a DataConfig with mean 0 and std 1) and return logits, so the same
test can later run through `visionstress.run`. `drive` stands in for the engine until it lands:
prepare -> sample filter -> perturb -> predict -> records -> family summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

CLASSES = ("disk", "square", "tall", "wide")  # sorted: ImageFolder's class order
BACKGROUNDS = np.array([[40, 90, 200], [60, 170, 60], [200, 170, 110], [120, 120, 140]], np.float64)
OBJECTS = np.array([[230, 40, 40], [250, 220, 30], [40, 220, 230], [170, 40, 200]], np.float64)
SIZE = 32
BORDER = 3  # objects never touch this many pixels at the edge: the background reader's territory


def _shape_mask(cls: int, rng: np.random.Generator) -> np.ndarray:
    h = w = SIZE
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    name = CLASSES[cls]
    if name == "disk":
        half_w = half_h = rng.uniform(6, 8)
    elif name == "square":
        half_w = half_h = rng.uniform(5, 7)
    elif name == "tall":
        half_w, half_h = rng.uniform(3, 4), rng.uniform(10, 11.5)
    else:
        half_w, half_h = rng.uniform(10, 11.5), rng.uniform(3, 4)
    lo_x, lo_y = BORDER + half_w + 1, BORDER + half_h + 1
    cx, cy = rng.uniform(lo_x, w - lo_x), rng.uniform(lo_y, h - lo_y)
    if name == "disk":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= half_w ** 2
    return (np.abs(xx - cx) <= half_w) & (np.abs(yy - cy) <= half_h)


def render(cls: int, index: int, background: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB image [H, W, 3], bool mask [H, W]) of one sample; background defaults to the class's."""
    rng = np.random.default_rng([7, cls, index])
    mask = _shape_mask(cls, rng)
    bg = BACKGROUNDS[cls if background is None else background]
    image = bg + rng.normal(0, 6, (SIZE, SIZE, 1))
    stripes = ((np.arange(SIZE)[None, :] // 2) % 2)[..., None] * 20.0  # a texture inside the object
    image = np.where(mask[..., None], OBJECTS[cls] - stripes, image)
    return np.clip(image, 0, 255).round().astype(np.uint8), mask


def write_dataset(root: Path, per_class: int = 10) -> tuple[Path, Path]:
    """An ImageFolder (`root/images/<class>/<class>_NN.png`) and its masks (`root/masks/<class>_NN.png`)."""
    images, masks = root / "images", root / "masks"
    for cls, name in enumerate(CLASSES):
        (images / name).mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image, mask = render(cls, i)
            Image.fromarray(image).save(images / name / f"{name}_{i:02d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{name}_{i:02d}.png")
    return images, masks


def _nearest(features: torch.Tensor, prototypes: np.ndarray) -> torch.Tensor:
    """Logits: minus the distance of each feature row to each prototype."""
    return -torch.cdist(features.double(), torch.as_tensor(prototypes, dtype=torch.float64)).float()


class BackgroundReader(nn.Module):
    """The mean colour of the image's border, matched to the class backgrounds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        border = torch.ones(x.shape[-2:], dtype=torch.bool, device=x.device)
        border[BORDER:-BORDER, BORDER:-BORDER] = False
        return _nearest(x[:, :, border].mean(-1) * 255, BACKGROUNDS)


class ColourReader(nn.Module):
    """How many pixels are near each class's object colour (within the texture's stripes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.permute(0, 2, 3, 1).reshape(len(x), -1, 3).double() * 255
        objects = torch.as_tensor(OBJECTS, dtype=torch.float64)
        near = (torch.cdist(pixels, objects[None].expand(len(x), -1, -1)) < 40).sum(1)
        return near.float() + 1e-3 * torch.arange(len(OBJECTS), 0, -1, dtype=torch.float32)


SHAPE_PROTOTYPES = np.array([[0.0, np.pi / 4], [0.0, 1.0], [-np.log(3.0), 1.0], [np.log(3.0), 1.0]])
"""(log aspect ratio, fill of the bounding box) of the four shapes, in class order."""


class ShapeReader(nn.Module):
    """The silhouette of the pixels that are not white: its aspect ratio and how it fills its box."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for image in x:
            ink = image.min(0).values < 0.9
            if not ink.any():
                features.append(torch.zeros(2))
                continue
            rows, cols = torch.nonzero(ink.any(1)).flatten(), torch.nonzero(ink.any(0)).flatten()
            h, w = float(rows[-1] - rows[0] + 1), float(cols[-1] - cols[0] + 1)
            features.append(torch.tensor([np.log(w / h), float(ink.sum()) / (h * w)]))
        return _nearest(torch.stack(features) * torch.tensor([1.0, 3.0]), SHAPE_PROTOTYPES * np.array([1.0, 3.0]))


DATA_CONFIG: dict[str, Any] = {"input_size": (SIZE, SIZE), "resize": None, "mean": (0.0, 0.0, 0.0),
                               "std": (1.0, 1.0, 1.0)}


def first_batch(images: Path, masks: Path, batch_size: int = 8):
    """The dataset's first batch with its object masks, as the engine would load it."""
    from visionstress.datasets import ClassificationImages, iterate_batches, load_classification_samples
    from visionstress.models.data_config import DataConfig

    samples, _ = load_classification_samples(images)
    return next(iterate_batches(ClassificationImages(samples, DataConfig(**DATA_CONFIG), masks=masks), batch_size))[0]


def drive(model: nn.Module, images: Path, masks: Path, passes: Sequence[tuple[str, int]], tmp: Path, *,
          seed: int = 0, bootstrap: int = 200, options: dict[str, Any] | None = None, batch_size: int = 7):
    """Run `passes` ((perturbation, severity) after the clean pass) like the engine will, and return
    (records DataFrame, prepared perturbations, SummaryContext)."""
    from visionstress.datasets import ClassificationImages, iterate_batches, load_classification_samples
    from visionstress.family_summaries import SummaryContext
    from visionstress.models.data_config import DataConfig
    from visionstress.perturbations import PrepareContext, get_perturbation

    samples, class_names = load_classification_samples(images)
    dataset = ClassificationImages(samples, DataConfig(**DATA_CONFIG), masks=masks)
    options = {"mask_dilation": 0, **(options or {})}

    def batches():
        return (batch for batch, _ in iterate_batches(dataset, batch_size))

    context = PrepareContext(task="classification", adapter=None, batches=batches, severities=(1,), seed=seed,
                             device=torch.device("cpu"), options=options, state_dir=tmp / "state",
                             class_names=class_names, log=lambda message: None)
    prepared = {name: get_perturbation(name).prepare(context) for name, _ in passes}
    rows = []
    model.eval()
    for batch in batches():
        for name, severity in [("clean", 0), *passes]:
            view, family = batch, "clean"
            if name != "clean":
                p = prepared[name]
                keep = p.sample_filter(batch.sample_ids)
                view = batch if keep is None else batch.select(torch.nonzero(keep).flatten())
                if len(view) == 0:
                    continue
                view, family = p(view, severity=severity, seed=seed), p.family
            with torch.no_grad():
                prediction = model(view.images.float() / 255.0).argmax(1)
            for sid, label, pred in zip(view.sample_ids.tolist(), view.labels.tolist(), prediction.tolist()):
                rows.append({"sample_id": sid, "path": samples[sid].path, "perturbation": name, "family": family,
                             "severity": severity, "label": label, "prediction": pred, "correct": label == pred})
    records = pd.DataFrame(rows)
    summary_context = SummaryContext(
        task="classification", records=records, rows=[], statistics=None, main_metric="top1",
        class_names=class_names, bootstrap=bootstrap, seed=seed,
        prepared={name: p.prepared_summary() for name, p in prepared.items()}, options=options, breakdowns={})
    return records, prepared, summary_context
