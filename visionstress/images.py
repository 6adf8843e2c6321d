"""Reading images from disk the way a careful data loader does, with errors that name the file."""

from __future__ import annotations

import contextlib

import errno
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


class ImageReadError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


MAX_PIXELS = 100_000_000
"""Default decoding limit (width x height). Pillow only warns below about 179 million pixels; a run that
decodes such an image in every loader worker can take gigabytes before anyone notices, so larger images
are skipped (and recorded) unless the caller raises the limit."""

PILLOW_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
"""Pillow refuses to open images beyond this (a decompression bomb), whatever `max_pixels` says."""


def display_path(path: str | os.PathLike[str]) -> str:
    """`path` as text that can be printed and written to UTF-8 files (JSON, Parquet, HTML).

    A file name that is not valid UTF-8 reaches Python with lone surrogates ('\\udcff'), which open()
    accepts but every UTF-8 encoder refuses; its undecodable bytes are shown as `\\xff` escapes instead.
    Valid names are returned unchanged."""
    text = os.fspath(path)
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system produced, e.g. from a JSON "\\ud800"
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def missing_reason(path: Path) -> str:
    """Why `path` is not a readable file: a dangling or looping symbolic link, a directory, or absent."""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a loop this way
            return "symbolic link loop"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "symbolic link loop"
            return f"dangling symbolic link (to {display_path(os.readlink(path))})"
    if path.is_dir():
        return "a directory, not an image file"
    return "no such file"


def _to_8bit(img: Image.Image, path: Path) -> Image.Image:
    """Deep grayscale (16/32-bit integer, 32-bit float) as 8-bit L, scaled by the range the data is in.

    Float images are 0-1 (or 0-255 when their values exceed 1). 16-bit modes are scaled by their
    declared white, 65535. Mode I (32-bit) declares no white: values up to 255 are 8-bit data (what
    Pillow writes for a numpy int array), up to 65535 16-bit data; anything wider, or negative, has no
    standard white level and is refused rather than wrapped around or clipped.
    """
    array = np.asarray(img, dtype=np.float64)
    where = display_path(path)
    if img.mode == "F":
        if not np.isfinite(array).all():
            raise ImageReadError(f"{where}: float image holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 255:
            raise ImageReadError(f"{where}: float image with values from {low:g} to {high:g}; expected 0-1 "
                                 "(or 0-255): rescale it")
        white = 1.0 if high <= 1 else 255.0
    elif img.mode == "I":
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 65535:
            raise ImageReadError(f"{where}: 32-bit integer image with values from {low:g} to {high:g}, beyond "
                                 "the 16-bit range, has no standard white level; convert it to 8 or 16 bits")
        white = 255.0 if high <= 255 else 65535.0
    else:  # I;16, I;16B, I;16L, I;16N
        white = 65535.0
    return Image.fromarray(np.round(array / white * 255).astype(np.uint8), mode="L")


def read_image(path: str | Path, *, max_pixels: int | None = MAX_PIXELS) -> torch.Tensor:
    """uint8 RGB `[3, H, W]`: EXIF orientation applied; grayscale, palette, RGBA, 16/32-bit, float and
    CMYK converted.

    Transparent pixels are composited onto white, which is how viewers show them. An image of more
    than `max_pixels` (None: Pillow's own limit) is refused from its header, before it is decoded.
    """
    path = Path(path)
    try:
        with open_image(path, max_pixels) as img:
            return pil_to_tensor(ImageOps.exif_transpose(img), path)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{display_path(path)}: not a readable image ({exc})") from exc


@contextlib.contextmanager
def open_image(path: Path, max_pixels: int | None) -> Iterator[Image.Image]:
    """The image file opened and loaded, after its header passed the `max_pixels` limit (an image or a mask
    of more pixels is refused before it is decoded); ImageReadError names the file. Pillow's own
    decompression-bomb warning is silenced: `max_pixels` decides here."""
    if not path.is_file():
        raise ImageReadError(f"{display_path(path)}: {missing_reason(path)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        opened = Image.open(path)
    with opened as img:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageReadError(f"{display_path(path)}: {width}x{height} is {width * height:,} pixels, over the "
                                 f"max_pixels limit of {max_pixels:,} (raise --max-pixels to decode it)")
        img.load()
        yield img


def pil_to_tensor(img: Image.Image, name: str | Path) -> torch.Tensor:
    """A loaded Pillow image as uint8 RGB `[3, H, W]`, converted as `read_image` does (no orientation
    change: callers decide about EXIF); `name` is the file the messages name."""
    if img.mode in ("F", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        img = _to_8bit(img, Path(name))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(f"{display_path(name)}: image has zero size")
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
