"""Invariants every registered perturbation must keep, generated from the registry.

In the manner of torchvision's `check_kernel` and kornia's `CommonTests`: a perturbation added to the
registry is tested here without anyone writing a test for it.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import natural_images_np

import visionstress as vs
from visionstress.perturbations import (Field, PhotometricPerturbation, get_perturbation, list_perturbations,
                                        register_perturbation, unregister_perturbation)

from conftest import ready_perturbation


def _fade_to_grey(images: torch.Tensor, params: dict[str, torch.Tensor], level: float) -> torch.Tensor:
    return torch.lerp(images, params["grey"].view(-1, 1, 1, 1).expand_as(images), level)


SINGLE_LEVEL = PhotometricPerturbation(
    _fade_to_grey, name="_single_level_toy", family="test", severities=(0.5,), fields=[Field("mix", 0, 1)],
    sample=lambda rng, level, batch: {"grey": rng.uniform(0.2, 0.8)},
    description="A single-level toy: the image halfway to a per-sample grey (registered only while this module runs).")
"""Single-level perturbations (one variant, severity 1 only) must keep every invariant too."""

NAMES = [*(n for n in list_perturbations() if not get_perturbation(n).needs_foreground), SINGLE_LEVEL.name]
"""Perturbations that work on bare images, and the single-level toy. Those that read object masks (the
background family, silhouette, texture_fill) refuse bare images; test_background.py checks the same
invariants on them with masks and a prepared bank."""


@pytest.fixture(autouse=True, scope="module")
def _registered_toy():
    register_perturbation(SINGLE_LEVEL)
    yield
    unregister_perturbation(SINGLE_LEVEL.name)


def _at(name: str, severity: int) -> int:
    """`severity`, or the perturbation's top one when it has fewer levels (single-level ones: 1)."""
    return min(severity, get_perturbation(name).max_severity)

NON_MONOTONE: dict[str, str] = {
    "saturate": "ImageNet-C's table desaturates at severities 1-2 (x0.3, x0.1) and oversaturates at 3-5 (x2..x20)",
    "spatter": "ImageNet-C switches from water (severities 1-3) to mud (4-5), a different kind of damage",
    "glass_blur": "ImageNet-C gives severity 3 three shuffling rounds and severity 4 two (the reference falls too)",
    "frost": "ImageNet-C lowers the image weight 0.7 -> 0.65 from severity 3 to 4 with the frost weight fixed at 0.7; "
             "the reference's distortion falls there too (0.290 -> 0.278 on our test photos)",
    "fog": "ImageNet-C's severities 3 and 4 differ only in fractal smoothness, less than the per-sample haze varies; "
           "the reference is flat there (0.189 -> 0.185 on our test photos)",
    "patch_shuffle": "every tile moves at every grid size (a cyclic permutation), so each pixel differs from the "
                     "clean one as much as two unrelated places do at every k; severity shrinks the tiles, leaving "
                     "less shape, which a mean pixel difference cannot see",
}
"""Perturbations whose distortion legitimately does not grow with severity, and why."""

SLACK = 1.02  # distortion at s+1 may be up to 2% below distortion at s (sampling noise, clipping)


def _synthetic(b: int = 8, h: int = 48, w: int = 64, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A smooth image with edges and texture, so blurs, noise and warps all have something to change."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, 1, w)
    phase = torch.rand(b, channels, 1, 1, generator=g) * 6.28
    base = 0.5 + 0.25 * torch.sin(12 * xs + phase) * torch.cos(9 * ys + phase)
    square = ((xs > 0.3) & (xs < 0.6) & (ys > 0.25) & (ys < 0.7)).float() * 0.3
    texture = 0.1 * torch.rand(b, channels, h, w, generator=g)
    return (base + square + texture).clamp(0, 1)


def _batch_with_targets(b: int = 8, h: int = 48, w: int = 64) -> vs.Batch:
    images = _synthetic(b, h, w)
    boxes = []
    for i in range(b):
        box = torch.tensor([[10.0 + i, 8.0, 30.0 + i, 30.0], [35.0, 20.0, 60.0, 44.0]])
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, 8:30, 10 + i : 30 + i] = True
        masks[1, 20:44, 35:60] = True
        boxes.append(vs.ObjectTargets(boxes=box, labels=torch.tensor([1, 2]), masks=masks))
    semantic = torch.zeros(b, h, w, dtype=torch.long)
    semantic[:, 8:30, 10:30] = 1
    semantic[:, 20:44, 35:60] = 2
    return vs.Batch(images, sample_ids=torch.arange(100, 100 + b), labels=torch.arange(b) % 3,
                    boxes=boxes, masks=semantic)


def _is_random(name: str) -> bool:
    p = get_perturbation(name)
    return bool(p.sample_params(vs.Batch(_synthetic(2)), severity=_at(name, 3), seed=0))


def test_mask_readers_refuse_bare_images():
    for name in set(list_perturbations()) - set(NAMES):
        with pytest.raises(ValueError, match="needs object masks"):
            get_perturbation(name)(_synthetic(2), severity=1)


def test_registry_has_the_catalogue():
    expected = {
        "random_occlusion", "object_occlusion", "zoom_in", "zoom_out", "low_resolution", "rotation", "perspective",
        "brightness", "contrast", "gamma", "white_balance", "shadow", "glare", "low_light",
        "gaussian_blur", "defocus_blur", "motion_blur", "zoom_blur", "glass_blur",
        "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "jpeg_compression", "pixelate",
        "chromatic_aberration", "vignetting", "lens_distortion",
        "snow", "frost", "fog", "spatter", "saturate", "elastic_transform",
        "only_fg", "no_fg", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next",
        "patch_shuffle", "silhouette", "edges", "texture_fill",
    }
    missing = expected - set(list_perturbations())
    assert not missing, f"catalogue names not registered: {sorted(missing)}"


@pytest.mark.parametrize("name", NAMES)
def test_metadata_complete(name):
    p = get_perturbation(name)
    assert p.family and p.description and len(p.severities) in (1, 5) and p.max_severity == len(p.severities)
    assert p.kind in ("photometric", "geometric", "data-aware", "model-aware")
    assert isinstance(p.version, int) and p.version >= 1


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_device_kept_and_input_untouched(name, dtype):
    images = _synthetic(4)
    if dtype == torch.uint8:
        images = (images * 255).round().to(torch.uint8)
    before = images.clone()
    out = ready_perturbation(name)(images, severity=_at(name, 3), seed=0)
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    assert torch.equal(images, before), f"{name} modified its input in place"
    if dtype == torch.float32:
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output_other_seed_other_output(name):
    images = _synthetic(4)
    p = ready_perturbation(name)
    s = _at(name, 4)
    a, b = p(images, severity=s, seed=7), p(images, severity=s, seed=7)
    assert torch.equal(a, b), f"{name} is not deterministic for a fixed seed"
    if _is_random(name):
        c = p(images, severity=s, seed=8)
        assert not torch.equal(a, c), f"{name} draws parameters but ignores the seed"


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name):
    """A sample perturbed alone equals the same sample inside a batch of 8, at another position."""
    p = ready_perturbation(name)
    batch = vs.Batch(_synthetic(8), sample_ids=torch.arange(40, 48))
    s = _at(name, 3)
    full = p(batch, severity=s, seed=3)
    reordered = batch.select([5, 0, 1, 2, 3, 4, 6, 7])
    shuffled = p(reordered, severity=s, seed=3)
    alone = p(batch.select([5]), severity=s, seed=3)
    torch.testing.assert_close(alone.images[0], full.images[5], atol=1e-5, rtol=0)
    torch.testing.assert_close(shuffled.images[0], full.images[5], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_identity(name):
    images = _synthetic(2)
    assert torch.equal(ready_perturbation(name)(images, severity=0, seed=0), images)


@pytest.mark.parametrize("name", NAMES)
def test_params_replay(name):
    p = ready_perturbation(name)
    batch = vs.Batch(_synthetic(4), sample_ids=torch.tensor([3, 9, 27, 81]))
    first = p(batch, severity=_at(name, 2), seed=11)
    replayed = p(batch, severity=_at(name, 2), seed=999, params=first.params)
    assert torch.equal(first.images, replayed.images)


@pytest.mark.parametrize("name", NAMES)
def test_distortion_grows_with_severity(name, natural_batch):
    """Mean absolute difference from the clean image is non-decreasing in severity (2% slack); a
    single-level perturbation must at least change the image."""
    if name in NON_MONOTONE:
        pytest.skip(NON_MONOTONE[name])
    p = ready_perturbation(name)
    batch = vs.Batch(natural_batch, sample_ids=torch.arange(len(natural_batch)))
    distortion = [float((p(batch, severity=s, seed=0).images - natural_batch).abs().mean())
                  for s in range(1, p.max_severity + 1)]
    assert distortion[0] > 0, f"{name} at severity 1 does not change the image"
    for s in range(len(distortion) - 1):
        assert distortion[s + 1] * SLACK >= distortion[s], (
            f"{name}: distortion falls from severity {s + 1} to {s + 2}: "
            + ", ".join(f"{d:.4f}" for d in distortion)
        )


@pytest.mark.parametrize("size", [(16, 16), (37, 53)])
@pytest.mark.parametrize("name", NAMES)
def test_tiny_and_non_square_images(name, size):
    images = _synthetic(2, *size)
    for severity in sorted({1, ready_perturbation(name).max_severity}):
        out = ready_perturbation(name)(images, severity=severity, seed=0)
        assert out.shape == images.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_grayscale_and_rgba(name):
    p = ready_perturbation(name)
    gray = _synthetic(2, channels=1)
    out = p(gray, severity=_at(name, 3), seed=0)
    assert out.shape == gray.shape
    rgba = torch.cat([_synthetic(2), torch.linspace(0, 1, 64).expand(2, 1, 48, 64)], dim=1)
    out = p(rgba, severity=_at(name, 3), seed=0)
    assert out.shape == rgba.shape
    if p.kind == "photometric":
        assert torch.equal(out[:, 3], rgba[:, 3]), f"{name} changed the alpha channel"


@pytest.mark.parametrize("name", NAMES)
def test_targets_carried_or_refused(name):
    p = ready_perturbation(name)
    batch = _batch_with_targets()
    if batch.target_kinds - p.targets:
        with pytest.raises(ValueError, match="cannot carry"):
            p(batch, severity=_at(name, 3), seed=0)
        return
    out = p(batch, severity=_at(name, 3), seed=0)
    assert out.masks.shape == batch.masks.shape and out.labels.tolist() == batch.labels.tolist()
    for before, after in zip(batch.boxes, out.boxes):
        assert len(after) + after.dropped == len(before)
        assert after.masks.shape[1:] == before.masks.shape[1:]
        if len(after):
            assert (after.boxes[:, 2:] > after.boxes[:, :2]).all()
            assert after.boxes.min() >= 0 and float(after.boxes[:, 2].max()) <= 64 and float(after.boxes[:, 3].max()) <= 48
    if p.kind == "photometric":
        assert torch.equal(out.masks, batch.masks)
        for before, after in zip(batch.boxes, out.boxes):
            assert torch.equal(before.boxes, after.boxes) and torch.equal(before.masks, after.masks)


@functools.lru_cache(maxsize=None)
def _sample_photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's two sample photographs (china.jpg, flower.jpg; 427 x 640), uint8 HWC."""
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)


@functools.lru_cache(maxsize=None)
def _photo_crops(count: int = 64, side: int = 32) -> torch.Tensor:
    """`count` float crops `[count, 3, side, side]` of natural photographs (scikit-learn's two and the
    three of conftest), each photo reduced to 96 x 128 first so a small crop still holds real structure."""
    import cv2

    photos = [cv2.resize(p, (128, 96), interpolation=cv2.INTER_AREA) for p in (*_sample_photos(), *natural_images_np())]
    crops = [photos[k % len(photos)][(13 * k) % (96 - side + 1):][:side, (29 * k) % (128 - side + 1):][:, :side]
             for k in range(count)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


FINITE_SEEDS = (0, 7, 2024)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_finite_and_in_range_on_natural_photos(name):
    """Every output value is finite and in [0, 1] (float input), over 192 sample ids x 3 seeds x every
    severity on crops of natural photographs (issue 13, item 15: a NaN pixel slipped through before)."""
    p = ready_perturbation(name)
    images = _photo_crops()
    foreground = torch.zeros(len(images), 32, 32, dtype=torch.bool)
    foreground[:, 8:24, 10:22] = True
    for round_, seed in enumerate(FINITE_SEEDS):
        batch = vs.Batch(images, sample_ids=torch.arange(len(images)) + len(images) * round_, foreground=foreground)
        for severity in range(1, p.max_severity + 1):
            out = p(batch, severity=severity, seed=seed).images
            bad = ~torch.isfinite(out) | (out < 0) | (out > 1)
            if bad.any():
                first = int(batch.sample_ids[bad.flatten(1).any(dim=1)][0])
                pytest.fail(f"{name} severity {severity} seed {seed}: {int(bad.sum())} values non-finite or outside "
                            f"[0, 1], the first in sample id {first}")


def test_low_light_reported_nan_case():
    """The reported case: low_light at severity 5, seed 7, sample id 102 on 224-px crops of scikit-learn's
    sample photos gave a NaN pixel (a uniform draw of exactly 1.0 fed to the inverse normal CDF)."""
    crops = [photo[y : y + 224, x : x + 224] for photo in _sample_photos()
             for y, x in ((0, 0), (0, 416), (203, 0), (203, 416))]
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    out = get_perturbation("low_light")(vs.Batch(images, sample_ids=torch.full((8,), 102)), severity=5, seed=7)
    assert torch.isfinite(out.images).all()


# ---- registry behaviour ---------------------------------------------------------------------------


def test_unknown_name_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean.*motion_blur"):
        get_perturbation("motion_blurr")


@pytest.mark.parametrize("severity", [-1, 6, 2.5, True, "3"])
def test_severity_out_of_range_says_valid_range(severity):
    with pytest.raises(ValueError, match="from 0 to 5"):
        get_perturbation("brightness")(_synthetic(1), severity=severity)


@pytest.mark.parametrize("severity", [2, 3, 5])
def test_single_level_perturbation_refuses_other_severities(severity):
    p = get_perturbation(SINGLE_LEVEL.name)
    assert p.max_severity == 1 and p.level(1) == 0.5
    with pytest.raises(ValueError, match=r"'_single_level_toy' has a single level: its severity is 1 \(or 0"):
        p(_synthetic(1), severity=severity)
    with pytest.raises(ValueError, match="single level"):
        p.level(severity)


def test_a_perturbation_needs_five_levels_or_one():
    with pytest.raises(ValueError, match="needs 5 severity levels .or a single one., got 3"):
        PhotometricPerturbation(lambda x, params, level: x, name="_three", family="test", severities=(1, 2, 3),
                                description="test")


def test_list_filters_by_family_and_pattern():
    assert set(list_perturbations(family="blur")) >= {"gaussian_blur", "defocus_blur", "motion_blur"}
    assert all(n.endswith("blur") for n in list_perturbations(pattern="*blur"))
    assert list_perturbations(pattern="zzz*") == []


def test_duplicate_registration_raises():
    from visionstress.perturbations import register_perturbation

    with pytest.raises(ValueError, match="already registered"):
        register_perturbation(get_perturbation("rotation"))


def test_unsupported_channel_count_is_refused():
    with pytest.raises(ValueError, match="1 .grayscale., 3 .RGB. or 4 .RGBA."):
        get_perturbation("brightness")(torch.rand(1, 2, 16, 16), severity=1)


def test_custom_perturbation_refuses_targets_it_cannot_move():
    from visionstress.perturbations import PhotometricPerturbation, register_perturbation, unregister_perturbation

    p = register_perturbation(PhotometricPerturbation(lambda x, params, level: x * level, name="_test_dim",
                                                      family="test", severities=(0.9, 0.8, 0.7, 0.6, 0.5),
                                                      description="test", targets=frozenset({"labels"})))
    try:
        with pytest.raises(ValueError, match="cannot carry boxes"):
            p(_batch_with_targets(), severity=1)
    finally:
        unregister_perturbation("_test_dim")
