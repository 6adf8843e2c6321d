"""Behaviour of the weather and digital ImageNet-C corruptions (perturbations/weather.py, digital.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import visionstress as vs
from visionstress.perturbations import get_perturbation
from visionstress.perturbations import digital as D
from visionstress.perturbations import weather as W
from visionstress.rng import uniform_field


def _photo_like(b: int = 4, h: int = 40, w: int = 56, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, h // 8, w // 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * torch.rand(b, 3, h, w, generator=g)).clamp(0, 1)


def _colourfulness(x: torch.Tensor) -> float:
    return float((x.amax(dim=1) - x.amin(dim=1)).mean())


# --------------------------------------------------------------------------------------- saturate


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_saturate_matches_skimage_hsv_round_trip(severity):
    color = pytest.importorskip("skimage.color")
    x = _photo_like(2, 24, 20)
    x[0, :, :4, :4] = 0.5  # grey pixels: hue 0 in skimage, tinted red by a positive shift
    x[0, :, 4:6, :4] = 0.0  # black
    scale, shift = D.SATURATE[severity - 1]
    expected = []
    for img in x.permute(0, 2, 3, 1).double().numpy():
        hsv = color.rgb2hsv(img)
        hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)
        expected.append(color.hsv2rgb(hsv))
    expected = torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2).float()
    out = get_perturbation("saturate")(x, severity)
    torch.testing.assert_close(out, expected.clamp(0, 1), atol=2e-5, rtol=0)


def test_saturate_desaturates_then_oversaturates():
    x = _photo_like()
    p = get_perturbation("saturate")
    before = _colourfulness(x)
    assert _colourfulness(p(x, 2)) < 0.2 * before
    assert _colourfulness(p(x, 5)) > 1.5 * before
    # Value (max channel) is kept at every severity.
    for s in range(1, 6):
        torch.testing.assert_close(p(x, s).amax(dim=1), x.amax(dim=1), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------- fog


def test_plasma_fractal_range_determinism_and_smoothness():
    keys = torch.tensor([11, 22, 33])
    maps = W.plasma_fractal(keys, 64, 2.0)
    assert maps.shape == (3, 64, 64)
    torch.testing.assert_close(maps.amin(dim=(1, 2)), torch.zeros(3))
    torch.testing.assert_close(maps.amax(dim=(1, 2)), torch.ones(3))
    # Row i depends only on key i.
    torch.testing.assert_close(W.plasma_fractal(keys[1:2], 64, 2.0)[0], maps[1])
    assert not torch.equal(maps[0], maps[1])
    # A fractal, not white noise: neighbours are far closer than random pixel pairs.
    neighbour = (maps[:, :, 1:] - maps[:, :, :-1]).abs().mean()
    shuffled = maps.reshape(3, -1)[:, torch.randperm(64 * 64, generator=torch.Generator().manual_seed(0))]
    assert neighbour < 0.25 * (maps.reshape(3, -1) - shuffled).abs().mean()
    # Lower wibble decay keeps more fine detail (rougher map).
    rough = W.plasma_fractal(keys, 64, 1.4)
    assert (rough[:, :, 1:] - rough[:, :, :-1]).abs().mean() > neighbour


def test_fog_adds_haze_closed_form():
    x = 0.3 * _photo_like(3, 32, 48)
    x[:, :, 0, 0] = 1.0  # peak 1: the haze is not rescaled away
    p = get_perturbation("fog")
    out = p(vs.Batch(x), 3, seed=4)
    strength, decay = W.FOG[2]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    haze = (out.images * (peak + strength) / peak - x) / strength
    # The haze is the same grey in every channel, within [0, 1], and is the plasma fractal itself.
    torch.testing.assert_close(haze, haze[:, :1].expand_as(haze), atol=1e-5, rtol=0)
    plasma = W.plasma_fractal(out.params["key"], 64, decay)[:, None, :32, :48]
    torch.testing.assert_close(haze[:, :1], plasma, atol=1e-5, rtol=0)
    # Haze: brighter on average, and the scene's own detail (local contrast) is washed out.
    assert out.images.mean() > x.mean() + 0.1

    def detail(img):
        return float((img[..., 1:] - img[..., :-1]).abs().mean())

    assert detail(out.images) < 0.8 * detail(x)


# --------------------------------------------------------------------------------------- elastic


def test_elastic_field_matches_scipy_smoothing():
    ndimage = pytest.importorskip("scipy.ndimage")
    h, w = 40, 60
    p = get_perturbation("elastic_transform")
    batch = vs.Batch(_photo_like(2, h, w))
    params = p.sample_params(batch, 4, seed=1)
    warp = D.elastic_transform(params, D.ELASTIC_ALPHA[3], (h, w), torch.device("cpu"))
    field = warp.grid - D.pixel_centres((h, w), torch.device("cpu"))
    noise = (uniform_field(params["key"], (2, h, w), counter=1) * 2 - 1) * (h * 0.005)
    for i in range(2):
        for axis in range(2):
            expected = ndimage.gaussian_filter(noise[i, axis].double().numpy(), sigma=(0.01 * h, 0.01 * w),
                                               mode="reflect", truncate=3.0) * D.ELASTIC_ALPHA[3]
            np.testing.assert_allclose(field[i, ..., axis].numpy(), expected, atol=1e-4)
    assert field.abs().max() > 0.1


def test_elastic_moves_semantic_mask_with_image():
    h, w = 64, 80
    classes = torch.zeros(2, h, w, dtype=torch.long)
    classes[:, 10:40, 12:50] = 1
    classes[:, 30:60, 40:75] = 2
    palette = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    images = palette[classes].permute(0, 3, 1, 2).contiguous()
    batch = vs.Batch(images, masks=classes)
    out = get_perturbation("elastic_transform")(batch, 5, seed=3)
    decoded = (out.images[:, None] - palette[None, :, :, None, None]).abs().sum(dim=2).argmin(dim=1)
    moved = (out.masks != batch.masks).float().mean()
    assert moved > 0.005  # the mask really moved
    assert (decoded == out.masks).float().mean() > 0.98  # and agrees with the moved image
    assert (out.masks != batch.ignore_index).all()  # reflection padding leaves nothing uncovered


def test_elastic_boxes_follow_the_warp():
    h, w = 64, 64
    images = torch.zeros(1, 3, h, w)
    images[:, :, 20:40, 24:44] = 1.0
    target = vs.ObjectTargets(boxes=torch.tensor([[24.0, 20.0, 44.0, 40.0]]), labels=torch.tensor([1]))
    # The object fills its box, so the box moved as a filled rectangle (the enclosing method) covers it.
    out = get_perturbation("elastic_transform").with_box_method("enclosing")(vs.Batch(images, boxes=[target]), 5, seed=0)
    box = out.boxes[0].boxes[0]

    def extent(mask):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()

    solid, touched = extent(out.images[0, 0] > 0.5), extent(out.images[0, 0] > 1e-3)
    assert (box[:2] <= solid[:2] + 1).all() and (box[2:] >= solid[2:] - 1).all()  # covers the object
    assert (box[:2] >= touched[:2] - 1).all() and (box[2:] <= touched[2:] + 1).all()  # and no more
    assert not torch.equal(box, target.boxes[0])

# --------------------------------------------------------------------------------------- spatter


def test_spatter_water_brightens_with_pale_turquoise():
    x = 0.3 * _photo_like(4, 64, 64)
    for severity in (2, 3):
        out = get_perturbation("spatter")(x, severity, seed=2)
        added = out - x
        assert (added >= -1e-6).all()
        assert added.mean() > 0.002
        # R gains 175/238 of what G and B gain.
        wet = added[:, 1] > 1e-3
        ratio = added[:, 0][wet] / added[:, 1][wet]
        torch.testing.assert_close(ratio, torch.full_like(ratio, 175 / 238), atol=1e-3, rtol=0)
        torch.testing.assert_close(added[:, 1], added[:, 2])


def test_spatter_mud_paints_brown_blobs():
    x = _photo_like(4, 64, 64)
    out = get_perturbation("spatter")(x, 5, seed=2)
    changed = (out - x).abs().amax(dim=1) > 1e-6
    assert 0.02 < changed.float().mean() < 0.9
    # Where fully covered (m = 1 after softening) the colour is mud brown; elsewhere a mix towards it.
    mud = torch.tensor(W._MUD).view(1, 3, 1, 1)
    weight = ((x - out) / (x - mud)).mean(dim=1)  # m, per pixel
    assert (weight[changed] >= 0.8 - 1e-3).all() and (weight[changed] <= 1 + 1e-3).all()


def test_spatter_is_per_sample_deterministic():
    x = _photo_like(6, 40, 40)
    p = get_perturbation("spatter")
    for severity in (1, 4):
        full = p(vs.Batch(x, sample_ids=torch.arange(10, 16)), severity, seed=7).images
        alone = p(vs.Batch(x[3:4], sample_ids=torch.tensor([13])), severity, seed=7).images
        torch.testing.assert_close(alone[0], full[3], atol=1e-6, rtol=0)
        assert not torch.equal(full[0] - x[0], full[1] - x[1])


def test_spatter_water_stages_match_opencv():
    cv2 = pytest.importorskip("cv2")
    g = np.random.default_rng(0)
    liquid = np.zeros((48, 64), np.float32)
    yy, xx = np.mgrid[:48, :64]
    for _ in range(6):
        cy, cx, r = g.uniform(0, 48), g.uniform(0, 64), g.uniform(3, 9)
        liquid[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = g.uniform(0.69, 0.75)
    level8 = (liquid * 255).astype(np.uint8)
    ours = W._edges(torch.from_numpy(level8).float()[None, None])[0, 0].numpy()
    assert (ours == (cv2.Canny(level8, 50, 150) > 0)).mean() > 0.995
    levels = g.integers(3, 21, size=(48, 64)).astype(np.uint8)
    eq = W._equalize(torch.from_numpy(levels).float()[None, None])[0, 0].numpy()
    np.testing.assert_array_equal(eq, cv2.equalizeHist(levels))


# --------------------------------------------------------------------------------------- frost, snow


def test_frost_is_the_reference_blend_of_a_frost_texture():
    x = 0.2 * _photo_like(3, 48, 64)
    p = get_perturbation("frost")
    out = p(vs.Batch(x), 2, seed=0)
    a, b = W.FROST[1]
    texture = W.frost_texture(out.params["key"], (48, 64))
    torch.testing.assert_close(out.images, (a * x + b * texture).clamp(0, 1), atol=1e-6, rtol=0)
    grey = texture.mean(dim=1)
    assert abs(float(grey.mean()) - 0.6) < 0.05
    assert (texture[:, 2] >= texture[:, 0]).all()  # bluish
    assert out.images.mean() > x.mean() + 0.15  # frosted glass brightens a dark scene
    assert not torch.equal(texture[0], texture[1])


def test_snow_brightens_and_streaks_along_the_angle():
    x = 0.2 * _photo_like(2, 64, 64)
    p = get_perturbation("snow")
    for severity in (1, 3, 5):
        out = p(x, severity, seed=1)
        assert (out >= x - 1e-6).all()
        assert out.mean() > x.mean() + 0.05
    # On a black image the flakes alone remain (plus the whitening term 0.5 (1 - keep)): the snow
    # layer is blurred along the sampled angle, so it varies more across than along the streaks.
    black = torch.zeros(1, 3, 96, 96)
    params = {"key": torch.tensor([5]), "angle": torch.tensor([-90.0])}  # straight down the image
    flakes = p(black, 3, params=params)[0, 0] - 0.5 * (1 - W.SNOW[2][6])
    along = (flakes[1:] - flakes[:-1]).abs().mean()
    across = (flakes[:, 1:] - flakes[:, :-1]).abs().mean()
    assert across > 1.5 * along
