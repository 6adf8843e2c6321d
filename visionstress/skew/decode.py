"""Decoding a file's bytes with the libraries production code uses, each called as its users call it.

Every decoder returns uint8 RGB `[3, H, W]`. The differences between them are the point: OpenCV's
`IMREAD_COLOR` applies the EXIF orientation itself (unless `IMREAD_IGNORE_ORIENTATION`) and drops
alpha instead of compositing it; torchvision's `decode_image` ignores EXIF unless asked; Pillow's
path is `visionstress.images` (the reference), where orientation is a separate `exif_transpose`.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image

from visionstress.images import ImageReadError, pil_to_tensor

DECODERS = ("pil", "opencv", "torchvision")


def decode(data: bytes, decoder: str, exif: tuple[bool, ...], name: str) -> dict[bool, torch.Tensor | ImageReadError]:
    """The image in `data` decoded by `decoder`, once per EXIF setting in `exif` (True: orientation
    applied) where the library takes orientation as a decode flag, once in all for Pillow (where it is a
    transform of the decoded image). A failure is returned, not raised, per setting: one library
    refusing a file another reads is a finding, not a crash. `name` is the file the messages name."""
    if decoder == "pil":
        return _pil(data, exif, name)
    out: dict[bool, torch.Tensor | ImageReadError] = {}
    for applied in exif:
        try:
            out[applied] = _opencv(data, applied, name) if decoder == "opencv" else _torchvision(data, applied, name)
        except ImageReadError as exc:
            out[applied] = exc
    return out


def _pil(data: bytes, exif: tuple[bool, ...], name: str) -> dict[bool, torch.Tensor | ImageReadError]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return {applied: pil_to_tensor(ImageOps.exif_transpose(img) if applied else img, name)
                    for applied in exif}
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        error = exc if isinstance(exc, ImageReadError) else ImageReadError(f"{name}: Pillow cannot decode it ({exc})")
        return dict.fromkeys(exif, error)


def _opencv(data: bytes, exif: bool, name: str) -> torch.Tensor:
    flags = cv2.IMREAD_COLOR if exif else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        raise ImageReadError(f"{name}: OpenCV cannot decode it ({str(exc).strip().splitlines()[-1]})") from None
    if bgr is None or bgr.size == 0:
        raise ImageReadError(f"{name}: OpenCV cannot decode it (cv2.imdecode returned nothing)")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def _torchvision(data: bytes, exif: bool, name: str) -> torch.Tensor:
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for torchcodec's, still current
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                 apply_exif_orientation=exif)
    except (RuntimeError, ValueError) as exc:
        raise ImageReadError(f"{name}: torchvision cannot decode it ({str(exc).strip().splitlines()[0]})") from None
    if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16
        image = (image.to(torch.float64) / 257).round().to(torch.uint8)
    return image.contiguous()


def reencode_jpeg(image: torch.Tensor, quality: int) -> bytes:
    """`image` (uint8 `[3, H, W]`) saved as JPEG by Pillow at `quality` (its default chroma subsampling)."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()
