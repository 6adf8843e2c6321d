"""The skew matrix for detection: the reference is `visionstress run --task detection`'s clean pass (at the
images' own size and letterboxed with --canvas), every cell's boxes are mapped back to the original
pixels, agreement matches the reference's confident detections, AP differences get a paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import visionstress as vs
from visionstress.batch import ObjectTargets
from visionstress.cli import app
from visionstress.comparison.statistics import bootstrap_test
from visionstress.skew import SkewError, skew
from visionstress.skew.cells import build_matrix, parse_cell
from visionstress.skew.preprocess import model_input
from visionstress.skew.run import _SkewImages
from visionstress.skew.tasks import AnnotatedImage, Detections, DetectionSkew, get_skew_task

LIMIT = 12
CATEGORIES = [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "one.yaml"  # the clean pass is compared; one perturbed pass is enough
    path.write_text("name: one\nperturbations:\n  - {name: brightness, severities: [1]}\n")
    return path


@pytest.fixture(scope="module")
def demo_skew(suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("det")
    card = vs.run(task="detection", suite=str(suite), limit=LIMIT, workers=0, bootstrap=200, seed=0,
                  out=out / "run", gallery=0, device="cpu")
    result = skew(task="detection", limit=LIMIT, workers=0, bootstrap=200, seed=0, out=out / "skew", device="cpu",
                  knobs="input_size,normalization,channel_order,decoder,combinations")
    return card, result, out


def test_the_reference_is_the_clean_pass_of_a_detection_run(demo_skew):
    card, result, _ = demo_skew
    clean = next(r for r in card.results if r["perturbation"] == "clean")
    assert result.clean_row["metrics"] == pytest.approx(clean["metrics"], nan_ok=True)
    assert result.clean_row["ci"].keys() == clean["ci"].keys()
    assert all(result.clean_row["ci"][m] == pytest.approx(clean["ci"][m]) for m in clean["ci"])
    reference = result.row("reference")
    assert reference["metrics"]["AP"] == pytest.approx(clean["metrics"]["AP"])
    assert reference["ci"]["AP"] == pytest.approx(clean["ci"]["AP"])  # detection_statistics on the run's draws
    assert reference["metrics"]["miss_rate"] == pytest.approx(clean["metrics"]["miss_rate"])
    assert reference["agreement"] == 1.0 and reference["knobs"]["crop"] == "none"  # images keep their own size


def test_detection_cells_and_their_paired_bootstrap(demo_skew):
    _, result, out = demo_skew
    names = [r["cell"] for r in result.rows]
    assert "input_size=x0.875" in names and "channel_order=bgr" in names and "crop=letterbox" not in names
    unscaled = result.row("normalization=0-255")
    assert unscaled["delta"]["AP"] < -0.3 and unscaled["agreement"] < 0.3 and unscaled["test"] == "paired_bootstrap"
    low, high = unscaled["delta_ci"]["AP"]
    assert low <= unscaled["delta"]["AP"] <= high < 0 and unscaled["p_value"] < 0.05 and unscaled["significant"]
    for row in result.rows[1:]:  # p and interval come from one analysis: the interval excludes 0 iff p < alpha
        if row["p_value"] is not None and row["delta_ci"]:
            excludes = row["delta_ci"]["AP"][0] > 0 or row["delta_ci"]["AP"][1] < 0
            assert excludes == (row["p_value"] < 0.05), row["cell"]
    # the default preprocessing of a self-normalising detector is [0, 1] pixels: normalization=none is it
    assert any("normalization=none" in note and "the reference" in note for note in result.notes)
    assert any("opencv-rgb" in note and "same preprocessing as decoder=opencv" in note for note in result.notes)
    records = __import__("pandas").read_parquet(out / "skew" / "skew_records.parquet")
    assert set(records["cell"]) == set(names) and {"tp", "fp", "fn", "num_pred", "agreement"} <= set(records)
    assert (out / "skew" / "report.html").read_text().count("AP") > 3


def test_the_ap_difference_is_tested_on_the_same_resamples():
    """A cell that loses half the reference's true positives: its AP drop, interval and p-value are
    what `bootstrap_test` gives on the paired resampled differences of detection_statistics."""
    from visionstress.evaluators.bootstrap import resample_weights
    from visionstress.evaluators.detection import detection_statistics

    task = DetectionSkew(CATEGORIES)
    targets = [_annotated(f"{i}.png", [[10, 10, 40, 40]], [1], (64, 64)) for i in range(30)]
    hit = Detections(torch.tensor([[10.0, 10, 40, 40]]), torch.tensor([0.9]), torch.tensor([1]))
    miss = Detections(torch.tensor([[0.0, 0, 5, 5]]), torch.tensor([0.9]), torch.tensor([1]))
    reference = task.score([hit] * 30, targets)
    cell = task.score([hit] * 15 + [miss] * 15, targets)
    agreement = task.agreement([hit] * 30, [hit] * 15 + [miss] * 15, targets)
    stats = task.statistics(reference, cell, agreement, bootstrap=300, seed=3, alpha=0.05)
    assert stats.metrics["AP"] < 1.0 and stats.delta["AP"] == pytest.approx(stats.metrics["AP"] - 1.0)
    assert stats.agreement == pytest.approx(0.5) and stats.metrics["detection_agreement"] == pytest.approx(0.5)
    ref_fn = detection_statistics({k: [r[k] for r in reference] for k in reference[0]})
    cell_fn = detection_statistics({k: [r[k] for r in cell] for k in cell[0]})
    deltas = np.concatenate([cell_fn(w)["AP"] - ref_fn(w)["AP"] for w in resample_weights(30, 300, 3)])
    expected = bootstrap_test(deltas, 0.05)
    assert stats.p_value == pytest.approx(expected.p_value) and stats.delta_ci["AP"] == pytest.approx(expected.interval)
    assert stats.p_value < 0.05 and stats.delta_ci["AP"][1] < 0


def _annotated(path, boxes, labels, size):
    objects = ObjectTargets(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            labels=torch.tensor(labels, dtype=torch.int64),
                            iscrowd=torch.zeros(len(labels), dtype=torch.bool))
    return AnnotatedImage(path, objects, size)


def test_agreement_matches_confident_detections_of_the_same_class_one_to_one():
    task = DetectionSkew(CATEGORIES)
    reference = Detections(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [0, 0, 60, 60]]),
                           torch.tensor([0.9, 0.8, 0.7, 0.3]), torch.tensor([1, 1, 2, 1]))
    cell = Detections(torch.tensor([[0.0, 0, 10, 11], [0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30]]),
                      torch.tensor([0.9, 0.9, 0.9, 0.2]), torch.tensor([1, 1, 1, 1]))
    # box 1: matched (IoU 0.91, then its twin is left over); box 2: the cell's box there scores 0.2; box 3:
    # the cell's box there is another class; box 4 scores 0.3, under the threshold, so it is not counted
    assert task.agreement([reference], [cell], [None]).tolist() == [pytest.approx(1 / 3)]
    assert task.agreement([reference], [None], [None]).tolist() == [0.0]
    nothing = Detections(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert math.isnan(task.agreement([nothing], [cell], [None])[0])  # no weight in the pooled agreement


class _Extent(nn.Module):
    """Detects one object: the extent of the input's non-black pixels (so letterbox padding is not in it)."""

    def forward(self, images):
        out = []
        for x in images:
            ys, xs = torch.nonzero(x.abs().sum(0) > 0, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
            out.append({"boxes": box, "scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.int64)})
        return out


@pytest.mark.parametrize("canvas, cell", [
    (None, None), (None, "input_size=x0.875"), (None, "input_size=48x100"), (None, "crop=letterbox,input_size=96x128"),
    ((96, 128), None), ((96, 128), "crop=squash"), ((96, 128), "input_size=x1.143"),
    ((96, 128), "resize_backend=opencv,interpolation=area"),
])
def test_boxes_are_mapped_back_to_the_original_pixels(canvas, cell, tmp_path):
    """Whatever the cell does to the geometry, a box around the whole image comes back as the image's
    own frame: a wrong mapping (letterbox taken for squash, x and y swapped) moves it by whole pixels."""
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((50, 70, 3), 128, np.uint8)).save(path)
    task = get_skew_task("detection", categories=CATEGORIES, canvas=canvas)
    reference = task.reference(None)
    recipe = reference
    if cell is not None:
        recipe = build_matrix(reference, [parse_cell(cell)], task.knobs, task.canonical).cells[0][1]
    sample = _annotated(str(path), [[0, 0, 70, 50]], [1], (50, 70))
    item = _SkewImages([sample], [recipe], reference, task)[0]
    pixels = item[1][recipe.pixels]
    adapter = task.adapter(_Extent(), recipe.input_size, torch.device("cpu"), False, 2)
    (found,) = task.predict(adapter, model_input(pixels[None], recipe), [item[2]], recipe)
    assert found.boxes[0].tolist() == pytest.approx([0, 0, 70, 50], abs=1.5)
    if recipe.crop == "letterbox":  # fitted as --canvas fits it (the width, here): at the top, black below
        assert pixels[:, -1].sum() == 0 and pixels[:, 0, -1].tolist() == [128] * 3


def test_the_letterbox_reference_is_the_clean_pass_of_a_canvas_run_with_skew(suite, tmp_path):
    card = vs.run(task="detection", suite=str(suite), limit=8, workers=0, bootstrap=100, seed=0, out=tmp_path,
                  gallery=0, device="cpu", canvas=(96, 128), skew=True, skew_knobs="crop,interpolation")
    clean = next(r for r in card.results if r["perturbation"] == "clean")
    rows = {r["cell"]: r for r in card.skew["rows"]}
    assert card.skew["task"] == "detection" and card.skew["metric"] == "AP"
    assert rows["reference"]["knobs"]["crop"] == "letterbox"
    assert rows["reference"]["metrics"]["AP"] == pytest.approx(clean["metrics"]["AP"])
    assert rows["reference"]["ci"]["AP"] == pytest.approx(clean["ci"]["AP"])
    assert "crop=squash" in rows and "crop=letterbox" not in rows and "interpolation=nearest" in rows
    assert rows["interpolation=nearest"]["agreement"] < 1.0  # 64 -> 96 pixels: the filter matters here
    assert "Preprocessing skew" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("cell, message", [
    ("crop=center-0.875", "crop=center-F does not apply to detection"),
    ("crop=letterbox", "add input_size=HxW to the cell, or give --canvas"),
])
def test_detection_cells_that_cannot_be_made_are_refused_naming_the_cell(cell, message):
    task = get_skew_task("detection", categories=CATEGORIES)
    with pytest.raises(SkewError, match=f"cell {cell}: .*{message}"):
        build_matrix(task.reference(None), [parse_cell(cell)], task.knobs, task.canonical)


def test_visionstress_skew_task_detection_on_the_demo(tmp_path):
    out = tmp_path / "skew"
    result = CliRunner().invoke(app, ["skew", "--task", "detection", "--limit", "6", "--bootstrap", "0", "--workers",
                                      "0", "--device", "cpu", "--skew-knobs", "channel_order", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "reference AP" in result.output and "AP per preprocessing cell" in result.output
    card = vs.Scorecard.load(out / "scorecard.json")
    assert card.task == "detection" and [r["cell"] for r in card.skew["rows"]] == ["reference", "channel_order=bgr"]
    assert card.results[0]["perturbation"] == "clean" and (out / "summary.md").is_file()
    bad = CliRunner().invoke(app, ["skew", "--task", "detection", "--canvas", "64", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--canvas" in bad.output


def test_settings_of_other_tasks_are_refused_for_detection(tmp_path):
    with pytest.raises(SkewError, match="--masks and --class-names do not apply to --task detection"):
        skew(task="detection", class_names=tmp_path / "names.txt", out=tmp_path / "a")
    with pytest.raises(SkewError, match="--canvas and --label-map apply to --task detection"):
        skew(task="classification", canvas=(64, 64), out=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
