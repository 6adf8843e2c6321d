"""The command line: list, show, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from visionstress.cli import app

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
runner = CliRunner()


def test_list_shows_the_catalogue_and_filters_by_family():
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "motion_blur" in result.output and "rotation" in result.output
    result = runner.invoke(app, ["list", "--family", "rotation"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "perspective" in result.output and "motion_blur" not in result.output
    result = runner.invoke(app, ["list", "--family", "nope"])
    assert result.exit_code == 2 and "no perturbation matches" in result.output


def test_list_shows_versions_named_levels_and_single_levels():
    from visionstress.cli import _levels_text
    from visionstress.perturbations import (Field, PhotometricPerturbation, get_perturbation, register_perturbation,
                                            unregister_perturbation)

    register_perturbation(PhotometricPerturbation(lambda x, params, level: x * level, name="_one_variant",
                                                  family="test", severities=(0.5,), fields=[Field("gain", 0, 1)],
                                                  description="test", version=3))
    try:
        result = runner.invoke(app, ["list", "--family", "test"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        row = next(line for line in result.output.splitlines() if "_one_variant" in line)
        assert "│ 3 │" in row  # the version (the levels column wraps on a narrow terminal: checked below)
        assert _levels_text(get_perturbation("_one_variant")) == "single level: 0.5"
        from visionstress.contact_sheet import contact_sheet

        image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
        sheet = contact_sheet(image, ["_one_variant", "brightness"], (1, 3, 5), max_side=32)
        assert sheet.size[1] > 2 * 32  # both rows drawn; the single-level row fills severity 1 only
    finally:
        unregister_perturbation("_one_variant")
    motion = _levels_text(get_perturbation("motion_blur"))
    assert motion.splitlines()[0] == "1: radius=10, sigma=3" and motion.splitlines()[4] == "5: radius=20, sigma=15"
    assert _levels_text(get_perturbation("gaussian_noise")) == "std: 0.08 | 0.12 | 0.18 | 0.26 | 0.38"
    result = runner.invoke(app, ["list", "motion_blur"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "(10, 3)" not in result.output
    result = runner.invoke(app, ["list"], env={"COLUMNS": "80"})
    assert "chromatic_aberration" in result.output  # names are never cut or folded


def test_show_writes_a_labelled_grid(tmp_path):
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["show", str(DEMO / "scene.png"), "-p", "rotation,brightness", "-s", "1,5",
                                 "-a", str(DEMO / "scene.json"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    grid = Image.open(out)
    # 2 rows (perturbations) x 3 columns (clean, s=1, s=5) of 256x192 tiles
    assert grid.width > 3 * 256 and grid.height > 2 * 192 and grid.height < 3 * 192


@pytest.mark.parametrize("args, message", [
    (["-p", "motion_blurr"], "did you mean"),
    (["-s", "0,7"], "from 1 to 5"),
    (["-p", "zzz*"], "no perturbation matches"),
])
def test_show_bad_options_get_clear_errors(tmp_path, args, message):
    result = runner.invoke(app, ["show", str(DEMO / "scene.png"), *args, "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and message in result.output


def test_show_corrupt_image_and_bad_annotations_name_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    result = runner.invoke(app, ["show", str(broken), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "broken.png" in result.output and "not a readable image" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "scene.png"}],
                               "annotations": [{"id": 9, "image_id": 1, "bbox": [0, 0, -3, 4], "category_id": 1}]}))
    result = runner.invoke(app, ["show", str(DEMO / "scene.png"), "-p", "rotation", "-a", str(bad),
                                 "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "bad.json" in result.output and "annotation 9" in result.output


def test_show_on_an_image_too_small_for_a_perturbation_names_both(tmp_path):
    """albumentations' RandomRain needs two rows for a streak: a 1x1 image is a clear error, not a traceback."""
    tiny = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (200, 40, 40)).save(tiny)
    result = runner.invoke(app, ["show", str(tiny), "-p", "rain", "-s", "5", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2, result.output
    assert "perturbation 'rain'" in result.output and "1x1 image" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["show", str(tiny), "-p", "brightness,rotation", "-o", str(tmp_path / "y.png")])
    assert result.exit_code == 0, result.output
