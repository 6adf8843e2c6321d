"""The plugin's serving-parity assertion, used the way a model repository uses it (pytester): an identical
serving function passes, one that swaps channels fails naming the images, a broken one fails with its
problem rather than a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from plugin_projects import DEMO_DATA, DEMO_WEIGHTS

pytest_plugins = ["pytester"]

SERVING = '''
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as F


def identical(path):
    image = F.pil_to_tensor(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    return (F.resize(image, [64, 64], antialias=True).float() / 255 - 0.5) / 0.5


def swapped(path):
    return identical(path).flip(0)


def flat(path):
    return identical(path)[0]
'''

TESTS = '''
import serving


def test_identical(visionstress):
    result = visionstress.assert_serving_parity(serving=serving.identical)
    assert result.agreement == 1.0 and result.images == 24


def test_swapped(visionstress):
    visionstress.assert_serving_parity(serving=serving.swapped)


def test_swapped_by_name_with_a_threshold(visionstress):
    visionstress.assert_serving_parity(serving="serving:swapped", min_agreement=0.5)


def test_wrong_shape(visionstress):
    visionstress.assert_serving_parity(serving=serving.flat)


def test_detection_settings(visionstress):
    visionstress.assert_serving_parity(serving=serving.identical, task="detection")
'''


@pytest.fixture
def project(pytester):
    pytester.makeini(f"[pytest]\nvisionstress_model = visionstress.models.demo:tiny_classifier\n"
                     f"visionstress_weights = {DEMO_WEIGHTS}\nvisionstress_data = {DEMO_DATA}\n"
                     "visionstress_limit = 24\nvisionstress_device = cpu\nvisionstress_workers = 0\n")
    pytester.makepyfile(serving=SERVING, test_parity=TESTS)
    pytester.syspathinsert()
    return pytester


def test_assert_serving_parity_passes_fails_naming_images_and_reports_bad_serving(project):
    result = project.runpytest("-v")
    result.assert_outcomes(passed=2, failed=3)
    out = result.stdout.str()
    for name in ("test_identical", "test_swapped_by_name_with_a_threshold"):
        assert f"test_parity.py::{name} PASSED" in out
    swapped = _section(out, "test_swapped")
    assert "serving parity FAIL" in swapped and "swapped agrees with the reference on" in swapped
    named = re.findall(r"\S+\.png", swapped)
    assert named and all(Path(p).is_file() and Path(p).is_relative_to(DEMO_DATA) for p in named)
    assert "Traceback" not in swapped and "def test_swapped" not in swapped  # the message, not the code
    wrong = _section(out, "test_wrong_shape")
    assert "could not check serving parity" in wrong and "flat" in wrong and "expected [3, 64, 64]" in wrong
    assert "During handling" not in wrong
    assert "checks classification models; the settings say task=detection" in _section(out, "test_detection_settings")


def _section(output: str, test: str) -> str:
    """The failure report of one test in pytest's output."""
    match = re.search(rf"_+ {test} _+\n(.*?)(?=\n_+ \w+ _+\n|\n=+ short test summary)", output, re.S)
    assert match, output
    return match.group(1)
