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


def demo_prepare_context(task: str, state_dir, options: dict | None = None, severities: tuple[int, ...] = (1, 2, 3, 4, 5),
                         limit: int | None = None, batch_size: int = 32, seed: int = 0):
    """A PrepareContext over the bundled demo of `task` (its tiny model, adapter and images; the first
    `limit` images), as a run builds one before its loop: every perturbation at `severities`, prepared
    state under `state_dir` (the run's `prepared/` folder)."""
    from pathlib import Path

    from visionstress.demo import demo_arguments
    from visionstress.models import (ClassifierAdapter, DetectorAdapter, SegmenterAdapter, load_model,
                                     resolve_data_config)
    from visionstress.options import resolve_options
    from visionstress.perturbations import PrepareContext

    args = demo_arguments(task)
    loaded = load_model(args["model"], weights=args["weights"], task=task)
    ids: tuple[int, ...] = ()
    if task == "classification":
        from visionstress.datasets import ClassificationImages, iterate_batches, load_classification_samples

        config, _ = resolve_data_config(loaded.data_config, None, {})
        samples, classes = load_classification_samples(Path(args["data"]), None)
        adapter = ClassifierAdapter(loaded, config)
        dataset = ClassificationImages(samples[:limit], config)
        batches = lambda: (b for b, _ in iterate_batches(dataset, batch_size, 0))  # noqa: E731
    elif task == "detection":
        from visionstress.datasets import DetectionImages, iterate_detection_batches, load_coco_dataset

        coco = load_coco_dataset(args["data"])
        coco.samples = coco.samples[:limit]
        adapter = DetectorAdapter(loaded, data_config=loaded.data_config)
        images = DetectionImages(coco)
        batches = lambda: (b for b, _ in iterate_detection_batches(images, batch_size, 0))  # noqa: E731
        classes = [c["name"] for c in coco.categories]
        ids = tuple(int(c["id"]) for c in coco.categories)
    else:
        from visionstress.datasets import SegmentationImages, iterate_segmentation_batches, load_segmentation_dataset

        data = load_segmentation_dataset(images=args["data"], masks=args["masks"], class_names=args["class_names"])
        data.samples = data.samples[:limit]
        config, _ = resolve_data_config(loaded.data_config, None, {})
        adapter = SegmenterAdapter(loaded, config, num_classes=len(data.class_names))
        images = SegmentationImages(data)
        batches = lambda: (b for b, _ in iterate_segmentation_batches(images, batch_size, 0))  # noqa: E731
        classes = list(data.class_names)
    from visionstress.perturbations import list_perturbations

    return PrepareContext(task=task, adapter=adapter, batches=batches,
                          severities={name: severities for name in list_perturbations()}, seed=seed,
                          device=torch.device("cpu"), options=resolve_options(task, options or {}),
                          state_dir=Path(state_dir), class_names=classes, log=lambda message: None, category_ids=ids)


_PREPARED_STATE = None  # a temporary folder for the prepared perturbations below, removed at exit


@functools.lru_cache(maxsize=None)
def ready_perturbation(name: str):
    """The registered perturbation, prepared first when it is model-aware (a patch fitted in two steps on the
    demo classifier), so registry-wide invariants cover the prepared kernel."""
    import tempfile
    from pathlib import Path

    from visionstress.perturbations import get_perturbation

    global _PREPARED_STATE
    p = get_perturbation(name)
    if p.kind != "model-aware":
        return p
    if _PREPARED_STATE is None:
        _PREPARED_STATE = tempfile.TemporaryDirectory(prefix="visionstress-prepared-")
    context = demo_prepare_context("classification", Path(_PREPARED_STATE.name), limit=40,
                                   options={"patch_steps": 2, "patch_batch_size": 8})
    return p.prepare(context)
