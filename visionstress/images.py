"""Reading images from disk the way a careful data loader does, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageReadError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


def read_image(path: str | Path) -> torch.Tensor:
    """uint8 RGB `[3, H, W]`: EXIF orientation applied; grayscale, palette, RGBA, 16-bit and CMYK converted.

    Transparent pixels are composited onto white, which is how viewers show them.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img, dtype=np.float64)
                peak = 65535.0 if array.max() > 255 else 255.0
                img = Image.fromarray(np.round(array / peak * 255).astype(np.uint8), mode="L")
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, rgba)
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(f"{path}: image has zero size")
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
"""EXIF orientations that swap width and height (the image is stored rotated by 90 or 270 degrees)."""


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of the image `read_image` would return, from the file's header alone (no decoding):
    what batch planning needs. An unreadable header gives (0, 0), which groups the file apart."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return 0, 0
    return (width, height) if orientation in _TRANSPOSING_ORIENTATIONS else (height, width)
