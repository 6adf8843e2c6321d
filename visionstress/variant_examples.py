"""Example sheets for the background and cue probes: a few images under every variant, side by side.

"bg_gap = 12 pp" says that the background matters; the strip clean | only_fg | mixed_rand | ... says
what the model was shown. Each sheet is one PNG per image (saved beside the scorecard, listed in its
breakdowns) and is drawn with the same per-sample randomness as the run's passes, so it shows exactly
the images the model saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from visionstress.batch import Batch

EXAMPLES_DIR = "probes"
_LABEL_HEIGHT = 14
_GAP = 4


def _tile(image: torch.Tensor, side: int) -> np.ndarray:
    """uint8 HxWx3 with the longer side `side` (nearest when enlarging, so small images stay crisp)."""
    x = image.detach().float().cpu()
    if image.dtype == torch.uint8:
        x = x / 255.0
    x = x[:3] if x.shape[0] >= 3 else x[:1].expand(3, -1, -1)
    h, w = x.shape[-2:]
    scale = side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    mode = "nearest-exact" if scale >= 1 else "bilinear"
    kwargs = {} if mode == "nearest-exact" else {"align_corners": False, "antialias": True}
    x = F.interpolate(x[None], size=size, mode=mode, **kwargs)[0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def variant_examples(passes: Sequence[tuple[Any, int]], batch: Batch, seed: int, out_dir: str | Path,
                     count: int = 4, side: int = 96) -> list[dict[str, Any]]:
    """Write one sheet per image for up to `count` images of `batch` that every pass scores (a non-empty
    object mask), and return their descriptions for the scorecard's breakdowns.

    `passes` are (prepared perturbation, severity) pairs; the sheet shows the clean image, then each pass's
    output, labelled `name` (or `name/severity` for perturbations with several levels in the list).
    """
    if count <= 0 or len(batch) == 0:
        return []
    keep = torch.ones(len(batch), dtype=torch.bool)
    if batch.foreground is not None:
        keep &= batch.foreground.flatten(1).any(1).cpu()
    for perturbation, _ in passes:
        chosen = perturbation.sample_filter(batch.sample_ids)
        if chosen is not None:
            keep &= chosen.cpu()
    positions = torch.nonzero(keep).flatten()[:count].tolist()
    if not positions:
        return []
    chosen_batch = batch.select(positions)
    several = {p.name for p, _ in passes if sum(q.name == p.name for q, _ in passes) > 1}
    columns = [("clean", chosen_batch.images)]
    for perturbation, severity in passes:
        label = f"{perturbation.name}/{severity}" if perturbation.name in several else perturbation.name
        columns.append((label, perturbation(chosen_batch, severity=severity, seed=seed).images))
    folder = Path(out_dir) / EXAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=11)
    entries = []
    for row, sample_id in enumerate(chosen_batch.sample_ids.tolist()):
        tiles = [_tile(images[row], side) for _, images in columns]
        h, w = tiles[0].shape[:2]
        sheet = Image.new("RGB", (len(tiles) * (w + _GAP) - _GAP, h + _LABEL_HEIGHT), "white")
        draw = ImageDraw.Draw(sheet)
        for i, ((label, _), tile) in enumerate(zip(columns, tiles)):
            x = i * (w + _GAP)
            draw.text((x + 1, 1), label, fill="black", font=font)
            sheet.paste(Image.fromarray(tile), (x, _LABEL_HEIGHT))
        name = f"sample_{sample_id}.png"
        sheet.save(folder / name)
        entries.append({"sample_id": int(sample_id), "image": f"{EXAMPLES_DIR}/{name}",
                        "variants": [label for label, _ in columns]})
    return entries
