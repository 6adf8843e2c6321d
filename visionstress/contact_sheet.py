"""A contact sheet: one image under each perturbation x severity, so a user can see what severities mean."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

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
    except (OSError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read COCO JSON ({exc})") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(f"{path}: not COCO-style detection JSON (missing or bad field {exc})") from exc
    return ObjectTargets(boxes=torch.tensor(boxes).reshape(-1, 4), labels=torch.tensor(labels, dtype=torch.int64)), categories


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _tile(images: torch.Tensor, targets: ObjectTargets | None, names: dict[int, str]) -> Image.Image:
    image = images
    if targets is not None and len(targets):
        labels = [names.get(int(label), str(int(label))) for label in targets.labels]
        image = draw_bounding_boxes(image, targets.boxes, labels=labels, colors="yellow", width=2)
    return Image.fromarray(image.permute(1, 2, 0).cpu().numpy())


def contact_sheet(image: torch.Tensor, perturbations: Sequence[str], severities: Sequence[int] = (1, 3, 5),
                  boxes: ObjectTargets | None = None, category_names: dict[int, str] | None = None,
                  seed: int = 0, device: str | torch.device = "cpu", max_side: int = 256,
                  prepared: Mapping[str, Perturbation] | None = None) -> Image.Image:
    """Grid image: a row per perturbation, a column per severity, the clean image first in each row.
    `prepared` supplies perturbations that carry state (e.g. fitted patches) by name."""
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
    batch = Batch(image.unsqueeze(0), boxes=None if boxes is None else [boxes.to(device)])
    for row, name in enumerate(perturbations):
        perturbation = (prepared or {}).get(name) or get_perturbation(name)
        for col, severity in enumerate(columns):
            out = perturbation(batch, severity=severity, seed=seed)
            tile = _tile(out.images[0], None if out.boxes is None else out.boxes[0], names)
            tile = tile.resize((tile_w, tile_h), Image.BILINEAR)
            x = _MARGIN + col * (tile_w + _MARGIN)
            y = _MARGIN + row * (tile_h + _LABEL_HEIGHT + _MARGIN)
            label = f"{name}  clean" if severity == 0 else f"{name}  s={severity}"
            draw.text((x, y + 2), label, fill="black", font=font)
            sheet.paste(tile, (x, y + _LABEL_HEIGHT))
    return sheet
