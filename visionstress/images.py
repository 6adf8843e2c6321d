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
            return pil_to_tensor(ImageOps.exif_transpose(img), path)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc


def pil_to_tensor(img: Image.Image, name: str | Path) -> torch.Tensor:
    """A loaded Pillow image as uint8 RGB `[3, H, W]`, converted as `read_image` does (no orientation
    change: callers decide about EXIF); `name` is the file the messages name."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        img = Image.fromarray(np.round(array / peak * 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(f"{name}: image has zero size")
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()
