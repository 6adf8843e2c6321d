"""Fidelity to ImageNet-C: structural similarity to the clean image matches the reference's.

For each of the 19 corruptions and each severity, the mean SSIM between clean and corrupted natural
photographs must be within TOLERANCE of what the reference implementation (`imagecorruptions-imaug`,
the maintained fork of Hendrycks & Dietterich's code) gives on the same photographs. Exceptions are
listed with their reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from visionstress.perturbations import IMAGENET_C, IMAGENET_C_EXTRA, get_perturbation, list_perturbations

from conftest import natural_images_np, to_numpy_uint8, to_tensor

imagecorruptions = pytest.importorskip("imagecorruptions")
metrics = pytest.importorskip("skimage.metrics")

TOLERANCE = 0.05
EXCEPTIONS: dict[str, tuple[float, str]] = {}
"""name -> (tolerance, why this corruption cannot match the reference more closely)."""


def mean_ssim(clean: np.ndarray, corrupted: np.ndarray) -> float:
    return float(np.mean([
        metrics.structural_similarity(a, b, channel_axis=2, data_range=255) for a, b in zip(clean, corrupted)
    ]))


def reference_corrupt(images: tuple[np.ndarray, ...], name: str, severity: int) -> np.ndarray:
    np.random.seed(1234)
    out = [np.uint8(np.clip(imagecorruptions.corrupt(img, severity=severity, corruption_name=name), 0, 255))
           for img in images]
    return np.stack(out)


def test_all_imagenet_c_corruptions_registered():
    assert set(IMAGENET_C) | set(IMAGENET_C_EXTRA) <= set(list_perturbations())
    assert set(IMAGENET_C) | set(IMAGENET_C_EXTRA) == set(imagecorruptions.get_corruption_names("all"))


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET_C + IMAGENET_C_EXTRA)
def test_ssim_matches_reference(name):
    images = natural_images_np()
    clean = np.stack(images)
    tolerance = EXCEPTIONS.get(name, (TOLERANCE, ""))[0]
    perturbation = get_perturbation(name)
    batch = to_tensor(images)
    rows = []
    for severity in range(1, 6):
        ours = mean_ssim(clean, to_numpy_uint8(perturbation(batch, severity=severity, seed=0)))
        ref = mean_ssim(clean, reference_corrupt(images, name, severity))
        rows.append((severity, ours, ref))
    worst = max(abs(o - r) for _, o, r in rows)
    table = "\n".join(f"  severity {s}: ours {o:.3f}  reference {r:.3f}  diff {o - r:+.3f}" for s, o, r in rows)
    assert worst <= tolerance, f"{name}: mean SSIM differs from imagecorruptions by up to {worst:.3f} (> {tolerance}):\n{table}"
