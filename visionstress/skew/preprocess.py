"""Resizing with the named library and filter, the classification geometry, and the model input.

Every resize is the library's own call (`Image.resize`, `cv2.resize`, torchvision's `resize` with
and without antialias) on the decoded uint8 image; only the geometry (the target size, the centre
crop's offsets, letterbox padding) is shared, so two backends differ by their kernels alone. The
target size of a shorter-side resize follows torchvision (`long = int(short * long / short)`), which
is what the reference (`visionstress run`) does.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from visionstress.skew.cells import Recipe

_PIL = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
_OPENCV = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
           "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
_TORCHVISION = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
                "bicubic": InterpolationMode.BICUBIC}


def resize(image: torch.Tensor, size: tuple[int, int], backend: str, interpolation: str) -> torch.Tensor:
    """uint8 `[3, H, W]` resized to `size` (H, W) by `backend` with `interpolation`."""
    height, width = int(size[0]), int(size[1])
    if backend in ("torchvision", "torchvision-noaa"):
        return TF.resize(image, [height, width], interpolation=_TORCHVISION[interpolation],
                         antialias=backend == "torchvision")
    array = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    if backend == "pil":
        out = np.array(Image.fromarray(array).resize((width, height), resample=_PIL[interpolation]))
    else:
        out = cv2.resize(array, (width, height), interpolation=_OPENCV[interpolation])
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).contiguous()


def shorter_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(H, W) after resizing the shorter side to `short`, the longer one as torchvision computes it."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def classification_pixels(image: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """The decoded image brought to the model's input size as `recipe` says (uint8 `[3, h, w]`):
    squash, shorter side then centre crop, or letterbox (fit, centred on black as Pillow's ImageOps.pad
    does)."""
    height, width = (int(s) for s in image.shape[-2:])
    target = recipe.input_size
    if recipe.crop == "squash":
        return resize(image, target, recipe.resize_backend, recipe.interpolation)
    if recipe.crop == "center":
        resized = resize(image, shorter_side_size(height, width, int(recipe.resize)), recipe.resize_backend,
                         recipe.interpolation)
        return TF.center_crop(resized, list(target))
    # the size and placement of Pillow's ImageOps.pad (contain, then centre with round())
    if width / height > target[1] / target[0]:
        inner = (round(height / width * target[1]), target[1])
    elif width / height < target[1] / target[0]:
        inner = (target[0], round(width / height * target[0]))
    else:
        inner = target
    resized = resize(image, inner, recipe.resize_backend, recipe.interpolation)
    top, left = round((target[0] - inner[0]) * 0.5), round((target[1] - inner[1]) * 0.5)
    canvas = torch.zeros((image.shape[0], *target), dtype=torch.uint8)
    canvas[:, top:top + inner[0], left:left + inner[1]] = resized
    return canvas


def native_pixels(image: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """For tasks fed images at their own size: the decoded image, resized only when the recipe scales it
    or names a size."""
    if recipe.input_size is None and recipe.scale == 1.0:
        return image
    height, width = (int(s) for s in image.shape[-2:])
    size = recipe.input_size or (max(1, round(height * recipe.scale)), max(1, round(width * recipe.scale)))
    return resize(image, size, recipe.resize_backend, recipe.interpolation)


def detection_pixels(image: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """Detection: `letterbox` fits the image inside `input_size` and pads right and bottom with black, the
    geometry of `visionstress run --canvas` (so boxes map back by one scale); `squash` resizes straight
    to `input_size`; otherwise the image at its own size (resized only when the recipe scales it)."""
    if recipe.crop == "letterbox":
        from visionstress.datasets.batching import fitted_size

        (height, width), _ = fitted_size(tuple(image.shape[-2:]), recipe.input_size)
        canvas = torch.zeros((image.shape[0], *recipe.input_size), dtype=torch.uint8)
        canvas[:, :height, :width] = resize(image, (height, width), recipe.resize_backend, recipe.interpolation)
        return canvas
    if recipe.crop == "squash":
        return resize(image, recipe.input_size, recipe.resize_backend, recipe.interpolation)
    return native_pixels(image, recipe)


def model_input(pixels: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """float32 `[B, 3, H, W]` the model is fed: scaled to [0, 1] (unless 0-255), channels swapped for
    BGR, then (x - mean) / std; the same arithmetic as the adapter, so the reference is bit-identical."""
    x = pixels.to(torch.float32)
    if recipe.unit_scale:
        x = x.div_(255.0)
    if recipe.channel_order == "bgr":
        x = x.flip(1)
    mean = torch.tensor(recipe.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(recipe.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
