"""Each skew cell's model input equals what the named library produces when called directly, on real
photographs written as JPEG (some with an EXIF orientation tag) and PNG; and bad cells are refused."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from conftest import natural_images_np
from visionstress.models import DataConfig
from visionstress.skew import SkewError, cell_input, parse_cell, read_cells_file
from visionstress.skew.cells import build_matrix, default_cells, parse_knobs, reference_recipe

CONFIG = DataConfig(input_size=(96, 96), resize=110, interpolation="bilinear")
MEAN = torch.tensor(CONFIG.mean).view(3, 1, 1)
STD = torch.tensor(CONFIG.std).view(3, 1, 1)
ORIENTATIONS = (None, 6, 3)
# torchvision 0.29 deprecates its image decoders in favour of torchcodec's; they are still what is tested
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")  # none, "rotate 90 CW to view", "rotate 180"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list:
    """Three photographs (150x200) as JPEG, two carrying an EXIF orientation, and one as PNG."""
    root = tmp_path_factory.mktemp("photos")
    paths = []
    for i, (array, orientation) in enumerate(zip(natural_images_np((150, 200)), ORIENTATIONS)):
        path = root / f"photo{i}.jpg"
        exif = Image.Exif()
        if orientation is not None:
            exif[0x0112] = orientation
        Image.fromarray(array).save(path, quality=92, exif=exif)
        paths.append(path)
    png = root / "photo.png"
    Image.fromarray(natural_images_np((150, 200))[1]).save(png)
    return paths + [png]


def pil_decoded(path, exif: bool = True) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        return np.asarray((ImageOps.exif_transpose(img) if exif else img).convert("RGB"))


def chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).permute(2, 0, 1)


def normalised(pixels: torch.Tensor, mean=MEAN, std=STD, scale: float = 255.0) -> torch.Tensor:
    return (pixels.to(torch.float32).div_(scale) - mean) / std


def reference_geometry(image: torch.Tensor, interpolation=InterpolationMode.BILINEAR, antialias=True):
    return TF.center_crop(TF.resize(image, [110], interpolation=interpolation, antialias=antialias), [96, 96])


def crop_after(resized: np.ndarray) -> torch.Tensor:
    return TF.center_crop(chw(resized), [96, 96])


def short_side(array: np.ndarray, short: int = 110) -> tuple[int, int]:
    """(width, height) torchvision picks for a shorter-side resize, read from torchvision itself."""
    h, w = TF.resize(chw(array), [short]).shape[-2:]
    return w, h


def check(path, cell, expected: torch.Tensor) -> None:
    got = cell_input(path, cell, CONFIG)
    assert got.shape == expected.shape, (cell, got.shape, expected.shape)
    assert torch.equal(got, expected), f"{cell} on {path.name}: max diff {(got - expected).abs().max()}"


def test_reference_is_pillow_with_exif_then_torchvision_antialiased_resize_and_centre_crop(photos):
    for path in photos:
        expected = normalised(reference_geometry(chw(pil_decoded(path))))
        check(path, None, expected)
    assert cell_input(photos[1], None, CONFIG).shape == (3, 96, 96)


@pytest.mark.parametrize("decoder", ["opencv", "torchvision"])
def test_decoders_are_the_libraries_own_calls(photos, decoder):
    for path in photos:
        if decoder == "opencv":
            bgr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF itself
            decoded = chw(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        else:
            decoded = decode_image(read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        check(path, f"decoder={decoder}", normalised(reference_geometry(decoded)))


def test_exif_ignored_is_the_raw_orientation(photos):
    rotated = photos[1]
    raw = pil_decoded(rotated, exif=False)
    assert raw.shape[:2] == (150, 200) and pil_decoded(rotated).shape[:2] == (200, 150)  # the tag is there
    check(rotated, "exif=ignored", normalised(reference_geometry(chw(raw))))
    for decoder in ("opencv", "torchvision"):
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        expected = chw(cv2.cvtColor(cv2.imdecode(np.fromfile(rotated, np.uint8), flags), cv2.COLOR_BGR2RGB)) \
            if decoder == "opencv" else decode_image(read_file(str(rotated)), mode=ImageReadMode.RGB)
        check(rotated, f"decoder={decoder},exif=ignored", normalised(reference_geometry(expected)))


@pytest.mark.parametrize("interpolation,filter_", [("nearest", Image.Resampling.NEAREST),
                                                    ("bilinear", Image.Resampling.BILINEAR),
                                                    ("bicubic", Image.Resampling.BICUBIC),
                                                    ("lanczos", Image.Resampling.LANCZOS)])
def test_pil_resize_is_image_resize_with_the_named_filter(photos, interpolation, filter_):
    for path in photos[:2]:
        array = pil_decoded(path)
        resized = np.asarray(Image.fromarray(array).resize(short_side(array), resample=filter_))
        check(path, f"resize_backend=pil,interpolation={interpolation}", normalised(crop_after(resized)))


@pytest.mark.parametrize("interpolation,flag", [("nearest", cv2.INTER_NEAREST), ("bilinear", cv2.INTER_LINEAR),
                                                ("bicubic", cv2.INTER_CUBIC), ("area", cv2.INTER_AREA),
                                                ("lanczos", cv2.INTER_LANCZOS4)])
def test_opencv_resize_is_cv2_resize_with_the_named_flag(photos, interpolation, flag):
    for path in photos[:2]:
        array = pil_decoded(path)
        resized = cv2.resize(array, short_side(array), interpolation=flag)
        check(path, f"resize_backend=opencv,interpolation={interpolation}", normalised(crop_after(resized)))


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("antialias", [True, False])
def test_torchvision_resize_with_and_without_antialias(photos, interpolation, antialias):
    backend = "torchvision" if antialias else "torchvision-noaa"
    for path in photos[:2]:
        expected = reference_geometry(chw(pil_decoded(path)), InterpolationMode(interpolation), antialias)
        check(path, f"resize_backend={backend},interpolation={interpolation}", normalised(expected))


def test_the_cells_really_differ_from_the_reference(photos):
    """Guard against tests that pass because every cell is the reference. (Pillow's bilinear filter and
    torchvision's antialiased one are designed alike: they differ by one grey level here and there.)"""
    path = photos[1]
    reference = cell_input(path, None, CONFIG)
    for cell, least in (("resize_backend=torchvision-noaa", 0.05), ("interpolation=nearest", 0.05),
                        ("resize_backend=opencv", 0.05), ("resize_backend=pil", 0.004), ("exif=ignored", 0.5),
                        ("jpeg=50", 0.05)):
        assert (cell_input(path, cell, CONFIG) - reference).abs().max() > least, cell


def test_crops(photos):
    path = photos[0]
    image = chw(pil_decoded(path))
    check(path, "crop=squash", normalised(TF.resize(image, [96, 96], antialias=True)))
    check(path, "crop=center-1.0", normalised(TF.center_crop(TF.resize(image, [96], antialias=True), [96, 96])))
    check(path, "crop=center-0.95", normalised(TF.center_crop(TF.resize(image, [101], antialias=True), [96, 96])))
    padded = ImageOps.pad(Image.fromarray(pil_decoded(path)), (96, 96), method=Image.Resampling.BILINEAR,
                          color=(0, 0, 0))
    check(path, "crop=letterbox,resize_backend=pil", normalised(chw(np.asarray(padded))))


def test_input_size_keeps_the_crop_fraction(photos):
    path = photos[0]
    image = chw(pil_decoded(path))
    # 96 x 0.875 = 84; crop fraction 96/110 kept: shorter side floor(84 / (96/110)) = 96
    check(path, "input_size=x0.875", normalised(TF.center_crop(TF.resize(image, [96], antialias=True), [84, 84])))
    check(path, "input_size=72,crop=squash", normalised(TF.resize(image, [72, 72], antialias=True)))


def test_channel_order_and_normalizations(photos):
    path = photos[2]
    pixels = reference_geometry(chw(pil_decoded(path)))
    check(path, "channel_order=bgr", normalised(pixels.flip(0)))
    zero, one = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    check(path, "normalization=none", normalised(pixels, zero, one))
    check(path, "normalization=0-255", normalised(pixels, zero, one, scale=1.0))
    check(path, "normalization=half", normalised(pixels, torch.full((3, 1, 1), 0.5), torch.full((3, 1, 1), 0.5)))
    bgr = DataConfig(input_size=(96, 96), resize=110, channel_order="BGR", mean=(0.4, 0.45, 0.5), std=(0.2, 0.21, 0.22))
    mean, std = torch.tensor(bgr.mean).view(3, 1, 1), torch.tensor(bgr.std).view(3, 1, 1)
    assert torch.equal(cell_input(path, None, bgr), normalised(pixels.flip(0), mean, std))
    assert torch.equal(cell_input(path, "channel_order=rgb", bgr), normalised(pixels, mean, std))


@pytest.mark.parametrize("quality", [95, 50])
def test_jpeg_reencodes_the_decoded_image_with_pillow(photos, quality):
    for path in photos[1:]:
        buffer = io.BytesIO()
        Image.fromarray(pil_decoded(path)).save(buffer, format="JPEG", quality=quality)
        reencoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        check(path, f"jpeg={quality}", normalised(reference_geometry(chw(reencoded))))


# --- cells and their errors -----------------------------------------------------------------------------------

def test_cell_names_are_canonical():
    assert parse_cell(" Interpolation=BICUBIC , decoder=opencv ").name == "decoder=opencv,interpolation=bicubic"
    assert parse_cell("crop=center-1").name == "crop=center-1.0"
    assert parse_cell("input_size=224x192").name == "input_size=224x192"
    assert parse_cell("opencv-serving").label == "opencv-serving"
    assert parse_cell("opencv-serving").name == "decoder=opencv,resize_backend=opencv,interpolation=bilinear,channel_order=bgr"


@pytest.mark.parametrize("text,message", [
    ("decodr=pil", r"unknown knob 'decodr' \(did you mean 'decoder'\?\)"),
    ("interpolation=cubic", r"interpolation='cubic' is not a known value; interpolation takes nearest, bilinear, "
                            r"bicubic, area, lanczos \(did you mean 'bicubic'\?\)"),
    ("jpeg=101", r"jpeg='101' is not a known value"),
    ("crop=center-1.5", r"crop='center-1.5' is not a known value"),
    ("decoder=pil,decoder=opencv", r"knob 'decoder' is given twice"),
    ("opencv-servng", r"'opencv-servng' is not knob=value \(did you mean 'opencv-serving'\?\)"),
    ("", r"empty cell"),
])
def test_bad_cells_are_refused_with_what_to_write(text, message):
    with pytest.raises(SkewError, match=message):
        parse_cell(text, "--skew-cells")


def test_an_interpolation_the_backend_lacks_names_the_backend_that_has_it():
    reference = reference_recipe(CONFIG)
    with pytest.raises(SkewError, match=r"resize_backend=torchvision has no area interpolation; add "
                                        r"resize_backend=opencv"):
        build_matrix(reference, [parse_cell("interpolation=area")], ["interpolation", "resize_backend"])
    names = [c.name for c in default_cells(["interpolation"], reference)]
    assert names == ["interpolation=nearest", "interpolation=bicubic", "resize_backend=opencv,interpolation=area",
                     "resize_backend=pil,interpolation=lanczos"]


def test_cells_equal_to_the_reference_are_left_out_with_a_note():
    matrix = build_matrix(reference_recipe(CONFIG), [parse_cell("normalization=imagenet"), parse_cell("jpeg=75"),
                                                     parse_cell("jpeg=75")], ["normalization", "jpeg"])
    assert [c.name for c, _ in matrix.cells] == ["jpeg=75"]
    assert matrix.notes == ["normalization=imagenet left out: same preprocessing as the reference",
                            "jpeg=75 left out: same preprocessing as jpeg=75"]


def test_skew_knobs_and_cells_file(tmp_path):
    assert parse_knobs(None, ["decoder", "jpeg"]) == ["decoder", "jpeg", "combinations"]
    assert parse_knobs("jpeg, combinations", ["decoder", "jpeg"]) == ["jpeg", "combinations"]
    assert parse_knobs("none", ["decoder"]) == []
    with pytest.raises(SkewError, match=r"--skew-knobs: unknown knob 'normalisation' \(did you mean 'normalization'"):
        parse_knobs("normalisation", ["normalization"])
    good = tmp_path / "cells.yaml"
    good.write_text("cells:\n  - decoder=opencv\n  - {name: mobile, jpeg: 75, exif: ignored}\n  - opencv-serving\n")
    cells = read_cells_file(good)
    assert [c.name for c in cells][:2] == ["decoder=opencv", "jpeg=75,exif=ignored"] and cells[1].label == "mobile"
    bad = tmp_path / "bad.yaml"
    bad.write_text("- decoder=opencv\n- {resize: pil}\n")
    with pytest.raises(SkewError, match=r"bad.yaml: cells\[1\]: unknown knob 'resize'"):
        read_cells_file(bad)
    with pytest.raises(SkewError, match=r"missing.yaml: skew cells file not found"):
        read_cells_file(tmp_path / "missing.yaml")
