"""The skew matrix for segmentation: the reference is `visionstress run --task segmentation`'s clean pass,
cells rescale with the named library, mIoU differences get a paired bootstrap, pixel agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import visionstress as vs
from visionstress.demo import demo_dir
from visionstress.evaluators.segmentation import segmentation_metrics_from_counts
from visionstress.models import DataConfig
from visionstress.skew import cell_input, skew
from visionstress.skew.stats import paired_bootstrap

LIMIT = 8


@pytest.fixture(scope="module")
def demo_skew(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    suite = out / "one.yaml"  # the clean pass is what is compared; one perturbed pass keeps the run short
    suite.write_text("name: one\nperturbations:\n  - {name: brightness, severities: [1]}\n")
    card = vs.run(task="segmentation", suite=str(suite), limit=LIMIT, workers=0, bootstrap=200, seed=0,
                  out=out / "run", gallery=0, device="cpu")
    result = skew(task="segmentation", limit=LIMIT, workers=0, bootstrap=200, seed=0, out=out / "skew",
                  knobs="input_size,normalization,channel_order,decoder,combinations")
    return card, result, out


def test_the_reference_is_the_clean_pass_of_a_segmentation_run(demo_skew):
    card, result, _ = demo_skew
    clean = next(r for r in card.results if r["perturbation"] == "clean")
    assert result.clean_row["metrics"] == pytest.approx(clean["metrics"], nan_ok=True)
    reference = result.row("reference")
    assert reference["metrics"]["mIoU"] == pytest.approx(clean["metrics"]["mIoU"])
    assert reference["ci"]["mIoU"] == pytest.approx(clean["ci"]["mIoU"])  # the same bootstrap draws
    assert reference["agreement"] == 1.0 and "crop" not in reference["knobs"]  # images keep their own size


def test_segmentation_cells(demo_skew):
    _, result, out = demo_skew
    names = [r["cell"] for r in result.rows]
    assert "input_size=x0.875" in names and "normalization=0-255" in names
    unscaled = result.row("normalization=0-255")
    assert unscaled["delta"]["mIoU"] < -0.1 and unscaled["agreement"] < 0.5 and unscaled["test"] == "paired_bootstrap"
    low, high = unscaled["delta_ci"]["mIoU"]
    assert low <= unscaled["delta"]["mIoU"] <= high < 0 and unscaled["p_value"] < 0.05
    # images are fed at their own size, so the resize filter of a cell that resizes nothing cannot matter
    assert any("opencv-rgb" in note and "same preprocessing as decoder=opencv" in note for note in result.notes)
    assert (out / "skew" / "report.html").read_text().count("mIoU") > 3


def test_an_input_size_cell_rescales_with_the_named_library():
    path = sorted((demo_dir() / "val").glob("*/*.png"))[0]
    config = DataConfig(input_size=(64, 64), resize=None, mean=(0.5,) * 3, std=(0.5,) * 3)
    rgb = np.asarray(Image.open(path).convert("RGB"))
    small = np.array(Image.fromarray(rgb).resize((56, 56), resample=Image.Resampling.BICUBIC))
    expected = (torch.from_numpy(small).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    got = cell_input(path, "input_size=x0.875,resize_backend=pil,interpolation=bicubic", config, task="segmentation")
    assert torch.equal(got, expected)
    native = (torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert torch.equal(cell_input(path, None, config, task="segmentation"), native)


def metrics(totals: np.ndarray) -> dict[str, np.ndarray]:
    c = totals.shape[-1] // 3
    inter, gt, pred = totals[..., :c], totals[..., c:2 * c], totals[..., 2 * c:]
    union = gt + pred - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0).sum(-1) / (union > 0).sum(-1)
    return {"mIoU": iou}


def test_paired_bootstrap_of_a_ratio_of_sums():
    rng = np.random.default_rng(1)
    gt = rng.integers(50, 100, (40, 3))
    reference = np.concatenate([gt - rng.integers(0, 10, (40, 3)), gt, gt], axis=1)
    worse = reference.copy()
    worse[:, :3] -= 20
    same = paired_bootstrap(reference, reference, metrics, ("mIoU",), bootstrap=300, seed=0)
    assert same.deltas["mIoU"] == 0 and same.delta_intervals["mIoU"] == [0, 0] and same.p_value == 1.0
    down = paired_bootstrap(reference, worse, metrics, ("mIoU",), bootstrap=300, seed=0)
    expected = segmentation_metrics_from_counts(worse[:, :3], worse[:, 3:6], worse[:, 6:])["mIoU"] - \
        segmentation_metrics_from_counts(reference[:, :3], reference[:, 3:6], reference[:, 6:])["mIoU"]
    assert down.deltas["mIoU"] == pytest.approx(expected)
    assert down.delta_intervals["mIoU"][1] < 0 and down.p_value == pytest.approx(2 / 301)
    assert paired_bootstrap(reference, worse, metrics, ("mIoU",), bootstrap=0, seed=0).p_value is None


def test_a_factory_without_num_classes_is_skewed_as_it_is_run(tmp_path, monkeypatch):
    """`def build(): ...` works for `visionstress run --task segmentation`, so it must for skew too: the
    dataset's class count is not forced on a factory that takes none."""
    (tmp_path / "plain_segmenter.py").write_text(
        "from visionstress.models.demo import tiny_segmenter\n\n\ndef build():\n    return tiny_segmenter()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    demo = vs.demo.demo_arguments("segmentation")
    result = skew(model="plain_segmenter:build", weights=demo["weights"], data=demo["data"], task="segmentation",
                  masks=demo["masks"], class_names=demo["class_names"], limit=2, workers=0, bootstrap=0,
                  knobs="channel_order", out=tmp_path / "skew", device="cpu")
    assert result.row("reference")["metrics"]["mIoU"] > 0


def test_too_few_resamples_for_any_significant_cell_is_said(tmp_path):
    """A bootstrap p-value is at least 2 / (resamples + 1); after Holm over the cells it can stay above
    alpha however large the change, and "0 cells significant" would then read as evidence of no skew."""
    result = skew(task="segmentation", limit=2, workers=0, bootstrap=20, seed=0, out=tmp_path / "skew",
                  knobs="channel_order", device="cpu")
    detectable = result.section()["summary"]["detectable"]
    assert detectable == {"resamples": 20, "smallest_p": pytest.approx(2 / 21), "cells": 1, "resamples_needed": 40}
    assert "With 20 bootstrap resamples no cell can be significant" in (tmp_path / "skew" / "summary.md").read_text()
    assert "--bootstrap 40 or more" in (tmp_path / "skew" / "summary.md").read_text()
    enough = skew(task="segmentation", limit=2, workers=0, bootstrap=40, seed=0, out=tmp_path / "enough",
                  knobs="channel_order", device="cpu")
    assert enough.section()["summary"]["detectable"] is None
