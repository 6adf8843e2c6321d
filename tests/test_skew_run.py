"""The skew loop end to end: the reference is `visionstress run`'s clean pass image by image, a BGR model
loses under RGB, each file is read once and decoded once per decoder, statistics, CLI, files and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import beta
from torch import nn
from typer.testing import CliRunner

import visionstress as vs
from conftest import natural_images_np
from visionstress.cli import app
from visionstress.datasets import load_classification_samples
from visionstress.demo import demo_dir
from visionstress.models import DataConfig, LoadedModel
from visionstress.records import read_records
from visionstress.scorecard import validate_scorecard
from visionstress.skew import SkewError, run_skew, skew
from visionstress.comparison.statistics import holm
from visionstress.skew.stats import paired_binary

DEMO_CLASSES = demo_dir() / "classes.txt"
OVERRIDES = {"input_size": "48", "resize": "56", "interpolation": "bicubic"}
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """12 photographs of assorted sizes in the demo's six class folders; every third carries an EXIF
    orientation tag, one is a BMP (which torchvision's decoder does not read)."""
    root = tmp_path_factory.mktemp("photo_folder")
    names = DEMO_CLASSES.read_text().split()
    photos = natural_images_np((160, 220))
    for i in range(12):
        folder = root / names[i % 6]
        folder.mkdir(exist_ok=True)
        array = photos[i % 3][i % 5:, : 220 - 7 * i]
        exif = Image.Exif()
        if i % 3 == 1:
            exif[0x0112] = 6
        if i == 11:
            Image.fromarray(array).save(folder / f"p{i:02d}.bmp")
        else:
            Image.fromarray(array).save(folder / f"p{i:02d}.jpg", quality=90, exif=exif)
    return root


def test_the_reference_reproduces_the_clean_pass_of_visionstress_run(photo_folder, tmp_path):
    common = dict(model="visionstress.models.demo:tiny_classifier", weights=demo_dir() / "classifier.safetensors",
                  data=photo_folder, class_names=DEMO_CLASSES, data_config_overrides=OVERRIDES, workers=0,
                  batch_size=8, bootstrap=50, seed=0, device="cpu")
    run_options = {k: v for k, v in common.items() if k != "data_config_overrides"} | OVERRIDES
    card = vs.run(**run_options, suite="quick", out=tmp_path / "run", gallery=0)
    result = skew(**common, knobs="none", out=tmp_path / "skew")
    clean = read_records(tmp_path / "run" / "records.parquet").query("perturbation == 'clean'").set_index("path")
    ours = pd.read_parquet(tmp_path / "skew" / "skew_records.parquet").query("cell == 'reference'").set_index("path")
    assert len(ours) == len(clean) == 12
    assert list(ours.loc[clean.index].prediction) == list(clean.prediction)
    np.testing.assert_allclose(ours.loc[clean.index].confidence, clean.confidence, rtol=0, atol=1e-6)
    run_clean = next(r for r in card.results if r["perturbation"] == "clean")
    assert result.clean_row["metrics"] == pytest.approx(run_clean["metrics"], abs=1e-9)
    assert result.clean_row["ci"]["top1"] == pytest.approx(run_clean["ci"]["top1"])
    reference = result.row("reference")
    assert reference["metrics"]["top1"] == pytest.approx(run_clean["metrics"]["top1"])
    assert reference["ci"]["top1"] == pytest.approx(run_clean["ci"]["top1"])  # the same bootstrap draws


def test_a_cell_that_cannot_decode_an_image_scores_it_wrong_and_lists_it(photo_folder, tmp_path):
    result = skew("visionstress.models.demo:tiny_classifier", photo_folder,
                  weights=demo_dir() / "classifier.safetensors", class_names=DEMO_CLASSES,
                  data_config_overrides=OVERRIDES, cells=["decoder=torchvision", "decoder=opencv"], workers=0,
                  bootstrap=0, out=tmp_path)
    row = result.row("decoder=torchvision")
    assert [Path(u["path"]).name for u in row["unreadable"]] == ["p11.bmp"]
    assert "torchvision cannot decode it" in row["unreadable"][0]["reason"]
    assert result.row("decoder=opencv")["unreadable"] == []
    bmp = result.paths.index(next(p for p in result.paths if p.endswith(".bmp")))
    assert result.records["decoder=torchvision"]["prediction"][bmp] == -1
    assert result.records["decoder=torchvision"]["agreement"][bmp] == 0


# --- a model built to expect BGR -----------------------------------------------------------------------------

class ExpectsBGR(nn.Module):
    """Built for BGR input: class 0 ("blue") when channel 0 (blue, in BGR) outweighs channel 2 (red)."""

    data_config = DataConfig(input_size=(32, 32), resize=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                             channel_order="BGR")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blue, red = x[:, 0].mean((1, 2)), x[:, 2].mean((1, 2))
        return torch.stack([blue - red, red - blue], 1)


def test_a_model_built_for_bgr_loses_accuracy_under_rgb(tmp_path):
    for i, array in enumerate(natural_images_np((40, 50)) * 4):
        tint = "blue" if i % 2 else "red"
        tinted = array.astype(np.float64) * 0.5
        tinted[..., 2 if tint == "blue" else 0] += 120
        folder = tmp_path / tint
        folder.mkdir(exist_ok=True)
        Image.fromarray(tinted.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    samples, names = load_classification_samples(tmp_path)
    loaded = LoadedModel(ExpectsBGR(), "ExpectsBGR", None, None, "python", ExpectsBGR.data_config, 2)
    result = run_skew(loaded, ExpectsBGR.data_config, samples, names, cells=["channel_order=rgb", "jpeg=90"],
                      workers=0, bootstrap=200)
    reference, rgb = result.row("reference"), result.row("channel_order=rgb")
    assert names == ["blue", "red"] and reference["metrics"]["top1"] == 1.0
    assert rgb["metrics"]["top1"] == 0.0 and rgb["agreement"] == 0.0
    assert rgb["significant"] and rgb["p_adjusted"] < 0.01 and rgb["delta_ci"]["top1"][1] < 0
    assert not result.row("jpeg=90")["significant"]
    assert result.section()["summary"]["knobs"][0]["worst_cell"] == "channel_order=rgb"


# --- cost -----------------------------------------------------------------------------------------------------

def test_each_image_is_read_once_and_decoded_once_per_decoder(photo_folder, monkeypatch):
    import cv2
    from PIL import Image as PILImage

    import visionstress.skew.decode as decode_module

    samples, _ = load_classification_samples(photo_folder, DEMO_CLASSES.read_text().split())
    samples = [s for s in samples if s.path.endswith(".jpg")]
    loaded = vs.models.load_model("visionstress.models.demo:tiny_classifier",
                                  weights=str(demo_dir() / "classifier.safetensors"))
    reads: dict[str, int] = {}
    calls = {"pil": 0, "opencv": 0, "torchvision": 0}
    read_bytes, pil_open, imdecode = Path.read_bytes, PILImage.open, cv2.imdecode
    tv_decode = decode_module.decode_image

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    def counting_read(self):
        reads[str(self)] = reads.get(str(self), 0) + 1
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", counting_read)
    monkeypatch.setattr(PILImage, "open", counted("pil", pil_open))
    monkeypatch.setattr(cv2, "imdecode", counted("opencv", imdecode))
    monkeypatch.setattr(decode_module, "decode_image", counted("torchvision", tv_decode))
    config = DataConfig(input_size=(48, 48), resize=56)
    cells = ["decoder=opencv", "decoder=torchvision", "exif=ignored", "resize_backend=pil", "interpolation=nearest",
             "crop=squash", "channel_order=bgr", "normalization=none", "resize_backend=opencv,interpolation=area"]
    result = run_skew(loaded, config, samples, DEMO_CLASSES.read_text().split(), cells=cells, workers=0,
                      batch_size=4, bootstrap=0)
    assert len(result.rows) == len(cells) + 1
    assert reads == {s.path: 1 for s in samples}
    assert calls == {"pil": len(samples), "opencv": len(samples), "torchvision": len(samples)}


# --- statistics -----------------------------------------------------------------------------------------------

def test_the_delta_interval_excludes_zero_exactly_when_mcnemar_is_significant():
    n = 200
    for reference_only in range(0, 30, 3):
        for cell_only in range(0, 30, 2):
            ref = np.zeros(n, bool)
            hit = np.zeros(n, bool)
            ref[:reference_only] = True
            hit[reference_only:reference_only + cell_only] = True
            ref[100:150] = hit[100:150] = True  # concordant right
            stats = paired_binary(ref, hit, bootstrap=0, seed=0)
            low, high = stats.delta_interval
            assert low <= stats.delta <= high
            assert (stats.p_value < 0.05) == (low > 0 or high < 0), (reference_only, cell_only, stats)
            assert stats.delta == pytest.approx((cell_only - reference_only) / n)


def test_the_delta_interval_is_clopper_pearson_on_the_discordant_images():
    ref = np.array([1] * 9 + [0] * 3 + [1] * 20 + [0] * 8, bool)
    hit = np.array([0] * 9 + [1] * 3 + [1] * 20 + [0] * 8, bool)
    stats = paired_binary(ref, hit, bootstrap=0, seed=0)
    k, d, n = 3, 12, len(ref)
    low, high = beta.ppf(0.025, k, d - k + 1), beta.ppf(0.975, k + 1, d - k)
    assert stats.delta_interval == pytest.approx((d / n * (2 * low - 1), d / n * (2 * high - 1)))
    assert (stats.reference_only, stats.cell_only) == (9, 3)
    assert stats.p_value == pytest.approx(2 * sum(__import__("math").comb(12, i) for i in range(4)) / 2 ** 12)


def test_holm():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


# --- checked before any work ------------------------------------------------------------------------------------

class FixedSize(nn.Module):
    """Accepts only 64x64 inputs (a flattening head)."""

    data_config = DataConfig(input_size=(64, 64), resize=None, mean=(0.5,) * 3, std=(0.5,) * 3)

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3 * 64 * 64, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def test_input_sizes_the_model_refuses(monkeypatch):
    from visionstress.skew import run as run_module

    samples, names = load_classification_samples(demo_dir() / "val")
    loaded = LoadedModel(FixedSize(), "FixedSize", None, None, "python", FixedSize.data_config, 6)
    with monkeypatch.context() as patch:
        patch.setattr(run_module._SkewImages, "__getitem__", lambda *a: pytest.fail("work started"))
        with pytest.raises(SkewError, match=r"cell input_size=x0.875: the model does not accept 56x56 inputs"):
            run_skew(loaded, FixedSize.data_config, samples, names, cells=["input_size=x0.875"], workers=0)
        with pytest.raises(SkewError, match=r"unknown knob 'colour'"):
            run_skew(loaded, FixedSize.data_config, samples, names, cells=["colour=rgb"], workers=0)
    result = run_skew(loaded, FixedSize.data_config, samples[:8], names, knobs="input_size,normalization",
                      workers=0, bootstrap=0)
    assert [r["cell"] for r in result.rows] == ["reference", "normalization=none", "normalization=imagenet",
                                                "normalization=0-255"]
    assert any("input_size=x1.143 left out: the model does not accept 73x73 inputs" in n for n in result.notes)


# --- the command and its files ------------------------------------------------------------------------------------

def test_visionstress_skew_on_the_demo_writes_scorecard_summary_records_and_report(tmp_path):
    out = tmp_path / "demo-skew"
    run = CliRunner().invoke(app, ["skew", "--limit", "12", "--bootstrap", "0", "--workers", "0", "--out", str(out),
                                   "--skew-knobs", "normalization,crop,combinations"])
    assert run.exit_code == 0, run.output
    assert "reference top1" in run.output and "top1 per preprocessing cell" in run.output
    data = json.loads((out / "scorecard.json").read_text())
    validate_scorecard({k: v for k, v in data.items() if k != "skew"}, "test")
    rows = data["skew"]["rows"]
    assert rows[0]["cell"] == "reference" and rows[0]["p_adjusted"] is None
    assert {"cell", "knobs", "metrics", "ci", "delta", "agreement", "p_adjusted"} <= set(rows[1])
    assert [r["label"] for r in rows if r["label"]] == ["opencv-serving", "opencv-rgb", "tensor-serving"]
    assert data["results"][0]["perturbation"] == "clean" and data["dataset"]["num_samples"] == 12
    records = pd.read_parquet(out / "skew_records.parquet")
    assert len(records) == 12 * len(rows) and set(records.cell) == {r["cell"] for r in rows}
    summary = (out / "summary.md").read_text()
    assert "## Cells (top1)" in summary and "`normalization=0-255`" in summary
    html = (out / "report.html").read_text()
    assert 'id="skew"' in html and "Preprocessing skew" in html and "normalization=0-255" in html
    assert html.count("data:image/png;base64") >= 1


def test_visionstress_skew_bad_input_exits_2_with_the_problem(tmp_path):
    bad_knob = CliRunner().invoke(app, ["skew", "--skew-knobs", "normalisation", "--out", str(tmp_path / "a")])
    assert bad_knob.exit_code == 2 and "did you mean 'normalization'" in bad_knob.output
    cells = tmp_path / "cells.yaml"
    cells.write_text("- interpolation=cubic\n")
    bad_cell = CliRunner().invoke(app, ["skew", "--skew-cells", str(cells), "--out", str(tmp_path / "b")])
    assert bad_cell.exit_code == 2 and "cells[0]: interpolation='cubic' is not a known value" in bad_cell.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_run_with_skew_adds_the_section_to_the_scorecard_and_report(tmp_path):
    card = vs.run(suite="quick", limit=24, bootstrap=0, workers=0, gallery=0, out=tmp_path, skew=True,
                  skew_knobs="channel_order")
    rows = card.skew["rows"]
    assert [r["cell"] for r in rows] == ["reference", "channel_order=bgr"]
    assert rows[0]["metrics"]["top1"] == pytest.approx(card.metric("top1"))  # the reference is the clean pass
    assert vs.Scorecard.load(tmp_path).skew["rows"][1]["cell"] == "channel_order=bgr"
    assert "channel_order=bgr" in (tmp_path / "report.html").read_text()


def test_the_summary_says_how_many_images_must_change_before_a_cell_can_be_significant():
    from visionstress.skew.outputs import detectable_line
    from visionstress.skew.run import _detectable

    rows = [{"cell": "reference", "p_value": None}] + [{"cell": f"c{i}", "p_value": 0.5} for i in range(3)]
    found = _detectable(rows, 0.05, "exact McNemar on per-image top-1", 12)
    # 2 / 2**6 = 0.031 is not below 0.05 / 3; 2 / 2**7 = 0.016 is
    assert found == {"images_changed": 7, "images": 12, "change": 7 / 12, "cells": 3}
    assert "at least 7 of the 12 images change one way (58.3 pp or more" in detectable_line(found)
    few = _detectable(rows, 0.05, "exact McNemar on per-image top-1", 5)
    assert few["change"] is None and "On 5 images no cell can be significant" in detectable_line(few)
    assert _detectable(rows, 0.05, "paired bootstrap over images of the AP difference", 12) is None
    assert detectable_line(None) is None
