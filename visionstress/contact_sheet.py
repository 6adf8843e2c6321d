"""A contact sheet: one image under each perturbation x severity, so a user can see what severities mean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes

from visionstress.batch import Batch, ObjectTargets
from visionstress.perturbations import Perturbation, get_perturbation

_LABEL_HEIGHT = 18
_MARGIN = 6


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the problem."""


def read_coco_boxes(path: str | Path, image_name: str) -> tuple[ObjectTargets, dict[int, str]]:
    """Boxes (xyxy) and labels for `image_name` from a COCO-style JSON file, plus category names."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        images = {img["id"]: img for img in data["images"]}
        categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        matches = [i for i, img in images.items() if Path(img["file_name"]).name == image_name]
        if not matches:
            raise AnnotationError(f"{path}: no entry in 'images' has file_name {image_name!r}")
        anns = [a for a in data["annotations"] if a["image_id"] == matches[0]]
        boxes, labels = [], []
        for a in anns:
            x, y, w, h = (float(v) for v in a["bbox"])
            if w <= 0 or h <= 0:
                raise AnnotationError(f"{path}: annotation {a.get('id')} has non-positive size {a['bbox']}")
            boxes.append([x, y, x + w, y + h])
            labels.append(int(a["category_id"]))
    except AnnotationError:
        raise
    except (OSError, json.JSONDecodeError, RecursionError) as exc:
        raise AnnotationError(f"{path}: cannot read COCO JSON ({exc})") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(f"{path}: not COCO-style detection JSON (missing or bad field {exc})") from exc
    return ObjectTargets(boxes=torch.tensor(boxes).reshape(-1, 4), labels=torch.tensor(labels, dtype=torch.int64)), categories


def read_coco_foreground(path: str | Path, image_name: str, image: torch.Tensor) -> torch.Tensor:
    """The object pixels (bool `[H, W]`) of `image_name` in a COCO JSON: its polygons / RLE masks, GrabCut on
    the boxes of objects without one (not cached: one image)."""
    from visionstress.foreground import detection_foreground

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        ids = [img["id"] for img in data["images"] if Path(img["file_name"]).name == image_name]
        if not ids:
            raise AnnotationError(f"{path}: no entry in 'images' has file_name {image_name!r}")
        anns = [a for a in data["annotations"] if a["image_id"] == ids[0]]
        return detection_foreground(image, anns, cache_dir=None)
    except AnnotationError:
        raise
    except (OSError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read COCO JSON ({exc})") from exc
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise AnnotationError(f"{path}: not COCO-style annotations (missing or bad field {exc})") from exc


def prepare_on_image(names: Sequence[str], image: torch.Tensor, foreground: torch.Tensor | None,
                     boxes: ObjectTargets | None = None) -> tuple[list[Perturbation], dict[str, str]]:
    """The perturbations ready to draw on one image, and why the others cannot be.

    Perturbations that read object masks need `foreground`; those that take donors get a bank made of
    this one image, so a background swap pastes the objects onto their own inpainted background (a run's
    bank holds the whole dataset), and the cue conflict, which needs textures of two classes, is refused.
    Perturbations that cannot move boxes are refused when there are `boxes`.
    """
    from visionstress.perturbations.background import collect_bank

    ready, refused = [], {}
    bank = None
    for name in names:
        p = get_perturbation(name)
        if boxes is not None and "boxes" not in p.targets:
            refused[name] = "cannot move boxes"
            continue
        if p.needs_foreground:
            if foreground is None:
                refused[name] = "needs an object mask (--mask FILE, or --annotations)"
                continue
            if p.uses_bank and bank is None:
                batch = Batch(image[None], boxes=None if boxes is None else [boxes], foreground=foreground[None])
                bank = collect_bank([batch])
            try:
                p = p.with_bank(bank if p.uses_bank else None)
            except ValueError as exc:
                refused[name] = str(exc).removeprefix(f"{name}: ")
                continue
        ready.append(p)
    return ready, refused


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _tile(images: torch.Tensor, targets: ObjectTargets | None, names: dict[int, str]) -> Image.Image:
    image = images
    if targets is not None and len(targets):
        labels = [names.get(int(label), str(int(label))) for label in targets.labels]
        image = draw_bounding_boxes(image, targets.boxes, labels=labels, colors="yellow", width=2)
    return Image.fromarray(image.permute(1, 2, 0).cpu().numpy())


def contact_sheet(image: torch.Tensor, perturbations: Sequence[str | Perturbation], severities: Sequence[int] = (1, 3, 5),
                  boxes: ObjectTargets | None = None, category_names: dict[int, str] | None = None,
                  seed: int = 0, device: str | torch.device = "cpu", max_side: int = 256,
                  foreground: torch.Tensor | None = None) -> Image.Image:
    """Grid image: a row per perturbation, a column per severity, the clean image first in each row (a
    single-level perturbation fills only the column of severity 1).

    `perturbations` are names or Perturbation objects (e.g. from `prepare_on_image`); `foreground` (bool
    `[H, W]`) is the object mask for those that read one."""
    names = category_names or {}
    image = image.to(device)
    _, h, w = image.shape
    scale = min(1.0, max_side / max(h, w))
    tile_w, tile_h = max(1, round(w * scale)), max(1, round(h * scale))
    columns = [0, *severities]
    sheet = Image.new("RGB", (_MARGIN + len(columns) * (tile_w + _MARGIN),
                              _MARGIN + len(perturbations) * (tile_h + _LABEL_HEIGHT + _MARGIN)), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    batch = Batch(image.unsqueeze(0), boxes=None if boxes is None else [boxes.to(device)],
                  foreground=None if foreground is None else foreground[None].to(device))
    for row, item in enumerate(perturbations):
        perturbation = get_perturbation(item) if isinstance(item, str) else item
        name = perturbation.name
        for col, severity in enumerate(columns):
            if severity > perturbation.max_severity:  # a single-level perturbation: its other columns stay blank
                continue
            out = perturbation(batch, severity=severity, seed=seed)
            tile = _tile(out.images[0], None if out.boxes is None else out.boxes[0], names)
            tile = tile.resize((tile_w, tile_h), Image.BILINEAR)
            x = _MARGIN + col * (tile_w + _MARGIN)
            y = _MARGIN + row * (tile_h + _LABEL_HEIGHT + _MARGIN)
            label = f"{name}  clean" if severity == 0 else f"{name}  s={severity}"
            draw.text((x, y + 2), label, fill="black", font=font)
            sheet.paste(tile, (x, y + _LABEL_HEIGHT))
    return sheet
