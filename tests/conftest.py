"""Shared fixtures: natural test photographs (scikit-image's bundled data) and small synthetic batches."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

REFERENCE_SIZE = (224, 288)  # (H, W): non-square on purpose, ImageNet-C scale


@functools.lru_cache(maxsize=None)
def natural_images_np(size: tuple[int, int] = REFERENCE_SIZE) -> tuple[np.ndarray, ...]:
    """Three public-domain photographs from scikit-image, resized to `size`, uint8 HWC RGB."""
    import cv2
    from skimage import data

    photos = (data.astronaut(), data.coffee(), data.chelsea())
    h, w = size
    return tuple(cv2.resize(p[..., :3], (w, h), interpolation=cv2.INTER_AREA) for p in photos)


def to_tensor(images_np: tuple[np.ndarray, ...]) -> torch.Tensor:
    """uint8 HWC arrays -> float [B, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.stack(images_np)).permute(0, 3, 1, 2).float() / 255.0


def to_numpy_uint8(images: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [0, 1] -> uint8 [B, H, W, 3], rounded as a PNG writer would."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@pytest.fixture(scope="session")
def natural_batch() -> torch.Tensor:
    return to_tensor(natural_images_np())


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
