"""The failure gallery: the few images a run broke worst, kept as small clean/perturbed thumbnails.

A number says *that* a model fails under fog; a picture says *why* (the object vanished, the box
slid off, the texture changed). The runner offers every batch of every pass; almost all offers are
rejected on the device by comparing the batch's failure scores with the current threshold, so the
gallery costs one small host transfer per offer, and only the handful of images that can still make
it into the gallery are resized (on the device) and copied to the host.

Selection: worst failure first (highest score), at most `per_perturbation` entries per
perturbation, each sample at most once (its worst failure), `size` entries in all. Ties are broken
by perturbation, severity and sample id, so the gallery does not depend on batch size or order.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

GALLERY_DIR = "gallery"
TRUTH_COLOUR = (40, 200, 60)
PREDICTION_COLOUR = (230, 40, 40)
LABEL_MAP_ALPHA = 0.5


@dataclass(frozen=True)
class Boxes:
    """Boxes to draw on a thumbnail, xyxy in the full-size image's pixels.

    Without `scores` they are ground truth (drawn green, captioned with `names`); with `scores` they
    are predictions (drawn red, captioned `name 0.87`).
    """

    boxes: Tensor  # [N, 4]
    names: Sequence[str]  # one caption per box
    scores: Tensor | None = None  # [N]


@dataclass(frozen=True)
class LabelMap:
    """A semantic label map `[H, W]` of class indices, alpha-blended over the thumbnail with one fixed
    palette colour per class; `ignore_index` pixels stay transparent."""

    labels: Tensor
    ignore_index: int = 255


Overlay = Union[Boxes, LabelMap]
OverlayFn = Callable[[int], Sequence[Overlay]]
"""Called with the batch position of an image that made it into the gallery; returns what to draw on
it. A function rather than data so that overlays are only built for the few images kept."""


@dataclass
class GalleryEntry:
    """One failure: the clean and perturbed thumbnails (uint8 HxWx3, overlays drawn) and why it is here."""

    sample_id: int
    path: str
    perturbation: str
    severity: int
    caption: str
    score: float
    clean: np.ndarray
    perturbed: np.ndarray

    def _rank(self) -> tuple[float, str, int, int]:
        return (-self.score, self.perturbation, self.severity, self.sample_id)


class FailureGallery:
    """Collects the worst failures of a run (see the module docstring for the selection rule).

    `thumbnail` is the longer side of each thumbnail in pixels (aspect ratio kept; smaller images
    are kept at their size).
    """

    def __init__(self, size: int = 12, per_perturbation: int = 2, thumbnail: int = 160) -> None:
        if size < 0 or per_perturbation < 1 or thumbnail < 8:
            raise ValueError(f"FailureGallery: size must be >= 0 (0: no gallery), per_perturbation >= 1 and "
                             f"thumbnail >= 8, "
                             f"got {size}, {per_perturbation} and {thumbnail}")
        self.size = int(size)
        self.per_perturbation = int(per_perturbation)
        self.thumbnail = int(thumbnail)
        # Per perturbation, the best `size` candidates with distinct samples, best first. That many is
        # enough: in the final selection a candidate can only be passed over because its perturbation
        # is full or its sample was taken by another selected entry, and at most `size` are selected.
        self._kept: dict[str, list[GalleryEntry]] = {}

    def offer(self, *, perturbation: str, severity: int, sample_ids: Tensor, paths: Sequence[str],
              scores: Tensor, clean_images: Tensor, perturbed_images: Tensor, captions: Callable[[int], str],
              clean_overlays: OverlayFn | None = None, perturbed_overlays: OverlayFn | None = None) -> None:
        """Consider one batch of one pass.

        `scores` `[B]` say how bad each image's failure is (higher is worse; zero, negative or NaN is
        not a failure). `clean_images` / `perturbed_images` are `[B, C, H, W]` uint8 or float in
        [0, 1] on any device; `captions(i)` and the overlay functions are called only for the batch
        positions `i` that are kept.
        """
        scores = scores.detach().reshape(-1)
        scores = scores if scores.is_floating_point() else scores.float()
        n = scores.shape[0]
        lengths = {"sample_ids": sample_ids.reshape(-1).shape[0], "paths": len(paths),
                   "clean_images": clean_images.shape[0], "perturbed_images": perturbed_images.shape[0]}
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"FailureGallery.offer({perturbation}@{severity}): {n} scores but "
                             + ", ".join(f"{v} {k}" for k, v in wrong.items()))
        if n == 0 or self.size == 0:
            return
        kept = self._kept.setdefault(perturbation, [])
        floor = kept[-1].score if len(kept) >= self.size else 0.0
        # Ties with the floor may still win on the tie-break, hence >= (settled exactly on the host).
        ids = sample_ids.reshape(-1)
        masked = torch.where((scores > 0) & (scores >= floor), scores, -torch.inf)
        # The batch's best `size`, ranked like the gallery: score descending, then sample id.
        by_id = torch.argsort(ids, stable=True)
        best = by_id[torch.argsort(masked[by_id], descending=True, stable=True)][: self.size]
        chosen = best[torch.isfinite(masked[best])]
        if chosen.numel() == 0:
            return
        positions = chosen.cpu().tolist()
        chosen_scores = scores[chosen].double().cpu().tolist()
        chosen_ids = ids[chosen].cpu().tolist()
        clean = self._thumbnails(clean_images[chosen], positions, clean_overlays)
        perturbed = self._thumbnails(perturbed_images[chosen], positions, perturbed_overlays)
        for j, i in enumerate(positions):
            entry = GalleryEntry(sample_id=int(chosen_ids[j]), path=str(paths[i]), perturbation=perturbation,
                                 severity=int(severity), caption=captions(i), score=float(chosen_scores[j]),
                                 clean=clean[j], perturbed=perturbed[j])
            self._admit(kept, entry)

    def _admit(self, kept: list[GalleryEntry], entry: GalleryEntry) -> None:
        same = next((e for e in kept if e.sample_id == entry.sample_id), None)
        if same is not None:
            if same._rank() <= entry._rank():
                return
            kept.remove(same)
        kept.append(entry)
        kept.sort(key=GalleryEntry._rank)
        del kept[self.size:]

    def entries(self) -> list[GalleryEntry]:
        """The gallery, worst first: at most `per_perturbation` per perturbation, one per sample."""
        candidates = sorted((e for kept in self._kept.values() for e in kept), key=GalleryEntry._rank)
        chosen: list[GalleryEntry] = []
        per_perturbation: dict[str, int] = {}
        samples: set[int] = set()
        for entry in candidates:
            if len(chosen) == self.size:
                break
            if entry.sample_id in samples or per_perturbation.get(entry.perturbation, 0) >= self.per_perturbation:
                continue
            chosen.append(entry)
            samples.add(entry.sample_id)
            per_perturbation[entry.perturbation] = per_perturbation.get(entry.perturbation, 0) + 1
        return chosen

    def save(self, directory: str | Path) -> list[dict]:
        """Write `gallery/NN_clean.png` and `gallery/NN_perturbed.png` under `directory` (files of an
        earlier gallery there are removed first) and return the scorecard's `gallery` entries, image
        paths relative to `directory`."""
        folder = Path(directory) / GALLERY_DIR
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            if re.fullmatch(r"\d+_(clean|perturbed)\.png", old.name):
                old.unlink()
        out = []
        for number, entry in enumerate(self.entries(), start=1):
            names = {}
            for kind, pixels in (("clean", entry.clean), ("perturbed", entry.perturbed)):
                name = f"{number:02d}_{kind}.png"
                Image.fromarray(pixels).save(folder / name)
                names[kind] = f"{GALLERY_DIR}/{name}"
            out.append({"sample_id": entry.sample_id, "path": entry.path, "perturbation": entry.perturbation,
                        "severity": entry.severity, "caption": entry.caption,
                        "clean_image": names["clean"], "perturbed_image": names["perturbed"]})
        return out

    def _thumbnails(self, images: Tensor, positions: list[int], overlays: OverlayFn | None) -> list[np.ndarray]:
        """Resize on the device, copy the small result to the host, then draw the overlays there."""
        if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
            raise ValueError(f"FailureGallery: images must be [B, C, H, W] with 1, 3 or 4 channels, "
                             f"got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        scale = min(1.0, self.thumbnail / max(h, w))  # never enlarged: that adds pixels, not detail
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = images[:, :3]
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if size != (h, w) or x.dtype != torch.uint8:  # uint8 images kept at their size are their own thumbnail
            x = x.float() / (255.0 if x.dtype == torch.uint8 else 1.0)
            if size != (h, w):
                x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
            x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = x.permute(0, 2, 3, 1).cpu().numpy()
        if overlays is None:
            return list(pixels)
        return [_draw(pixels[j], overlays(i), (size[0] / h, size[1] / w)) for j, i in enumerate(positions)]


def _draw(pixels: np.ndarray, overlays: Sequence[Overlay], scale: tuple[float, float]) -> np.ndarray:
    """Label maps first (blended underneath), then boxes on top; ground truth before predictions."""
    for overlay in overlays:
        if isinstance(overlay, LabelMap):
            pixels = _blend(pixels, overlay)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=10)
    sy, sx = scale
    ordered = sorted((o for o in overlays if isinstance(o, Boxes)), key=lambda o: o.scores is not None)
    for overlay in ordered:
        colour = TRUTH_COLOUR if overlay.scores is None else PREDICTION_COLOUR
        boxes = overlay.boxes.detach().reshape(-1, 4).float().cpu().tolist()
        scores = None if overlay.scores is None else overlay.scores.detach().reshape(-1).float().cpu().tolist()
        if len(overlay.names) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
            raise ValueError(f"FailureGallery: {len(boxes)} boxes but {len(overlay.names)} names"
                             + ("" if scores is None else f" and {len(scores)} scores"))
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            box = (x0 * sx, y0 * sy, max(x0 * sx, x1 * sx - 1), max(y0 * sy, y1 * sy - 1))
            draw.rectangle(box, outline=colour, width=2)
            text = str(overlay.names[k]) if scores is None else f"{overlay.names[k]} {scores[k]:.2f}"
            left, top, right, bottom = draw.textbbox((box[0] + 2, box[1] + 1), text, font=font)
            draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
            draw.text((box[0] + 2, box[1] + 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def _blend(pixels: np.ndarray, overlay: LabelMap) -> np.ndarray:
    h, w = pixels.shape[:2]
    labels = overlay.labels.detach()
    if labels.ndim != 2:
        raise ValueError(f"FailureGallery: a label map must be [H, W], got {tuple(labels.shape)}")
    small = F.interpolate(labels[None, None].float(), size=(h, w), mode="nearest")[0, 0].long().cpu().numpy()
    shown = small != overlay.ignore_index
    colours = PALETTE[np.mod(small, len(PALETTE))]
    out = pixels.astype(np.float32)
    out[shown] = (1 - LABEL_MAP_ALPHA) * out[shown] + LABEL_MAP_ALPHA * colours[shown]
    return out.round().astype(np.uint8)


def _palette(n: int = 256) -> np.ndarray:
    """Distinct colours per class index: the bits of index + 1 spread over the high bits of R, G and B
    (the PASCAL VOC palette shifted by one, so no class is black: 0 dark red, 1 dark green ...)."""
    colours = np.zeros((n, 3), dtype=np.float32)
    for c in range(n):
        value, shift = c + 1, 7
        while value:
            for channel in range(3):
                colours[c, channel] += ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return colours


PALETTE = _palette()
