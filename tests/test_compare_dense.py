"""compare on real detection and segmentation runs: the paired bootstrap over images uses the recorded
COCO matches and pixel counts, so a degraded model is caught and a repeated run changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import visionstress as vs
from visionstress.comparison import CompareWarning, IncomparableError
from visionstress.demo import demo_arguments

LIMIT = 48


def _noisy_copy(weights: str, out: Path, prefix: str) -> Path:
    """The demo weights with every convolution of the first encoder stage given noise of its own size."""
    state = load_file(weights)
    generator = torch.Generator().manual_seed(0)
    for name, w in state.items():
        if name.startswith(prefix) and w.ndim == 4:
            state[name] = w + w.std() * torch.randn(w.shape, generator=generator)
    path = out / "noisy.safetensors"
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module", params=["detection", "segmentation"])
def runs(request, tmp_path_factory):
    task = request.param
    root = tmp_path_factory.mktemp(f"compare-{task}")
    demo = demo_arguments(task)
    suite = root / "suite.yaml"
    suite.write_text("name: small\nseed: 0\nperturbations:\n  - {name: gaussian_noise, severities: [2, 4]}\n"
                     "  - {name: rotation, severities: [3]}\n")
    extra = {"masks": demo.get("masks"), "class_names": demo.get("class_names")} if task == "segmentation" else {}

    def run(name: str, weights: str) -> Path:
        vs.run(demo["model"], demo["data"], task=task, weights=weights, suite=str(suite), limit=LIMIT, workers=0,
               device="cpu", bootstrap=0, gallery=0, out=root / name, **extra)
        return root / name / "scorecard.json"

    noisy = _noisy_copy(demo["weights"], root, "encoder.stages.0" if task == "detection" else "encoder")
    return task, {"reference": run("reference", demo["weights"]), "same": run("same", demo["weights"]),
                  "degraded": run("degraded", str(noisy))}


def test_a_degraded_dense_model_is_a_significant_regression(runs):
    task, cards = runs
    metric = "AP" if task == "detection" else "mIoU"
    comparison = vs.compare(cards["reference"], cards["degraded"], gates=[f"{metric}:-2%"], bootstrap=200)
    clean = comparison.cell(metric)
    assert clean.test == "paired_bootstrap" and clean.delta < 0 and clean.significant, clean
    assert not comparison.passed and comparison.gates[0].failures


def test_the_same_dense_model_twice_changes_nothing(runs):
    task, cards = runs
    metric = "AP" if task == "detection" else "mIoU"
    comparison = vs.compare(cards["reference"], cards["same"], gates=[f"{metric}:-2%"], bootstrap=100)
    assert comparison.passed
    cells = [c for c in comparison.cells if c.metric == metric]
    assert len(cells) == 4  # clean and the suite's three cells
    assert all(c.delta == 0 and not c.significant for c in cells)


def _edited_copy(card: Path, out: Path, edit) -> Path:
    """A copy of a run's folder whose scorecard JSON `edit` changed in place."""
    import json
    import shutil

    shutil.copytree(card.parent, out)
    data = json.loads((out / "scorecard.json").read_text())
    edit(data)
    (out / "scorecard.json").write_text(json.dumps(data))
    return out / "scorecard.json"


def test_runs_whose_targets_or_thresholds_differ_are_refused(runs, tmp_path):
    """Boxes moved as enclosing boxes instead of inscribed ellipses are other ground truth under every
    geometric perturbation, and another --score-threshold redefines miss_rate: a model cannot be blamed
    for either."""
    task, cards = runs
    if task != "detection":
        pytest.skip("box moving and score thresholds are detection options")

    def enclosing(data):
        for item in data["suite"]["perturbations"]:
            if "box_method" in item:
                item["box_method"] = "enclosing"
        data["data_config"]["box_warp"] = "enclosing"

    def threshold(data):
        data["data_config"]["score_threshold"] = 0.3

    with pytest.raises(IncomparableError, match="rotation moves boxes as ellipse vs enclosing"):
        vs.compare(cards["reference"], _edited_copy(cards["same"], tmp_path / "enclosing", enclosing))
    with pytest.raises(IncomparableError, match="score threshold 0.5 vs 0.3"):
        vs.compare(cards["reference"], _edited_copy(cards["same"], tmp_path / "threshold", threshold))


def test_a_gate_on_a_metric_undefined_in_the_runs_does_not_pass(runs):
    """COCO's APl is undefined (NaN) on images with no large object, as every AP is on a set with no
    annotated object: a gate on it has nothing to judge and must not read as 'within the threshold'."""
    task, cards = runs
    if task != "detection":
        pytest.skip("size-bin APs are detection metrics")
    gate = vs.compare(cards["reference"], cards["same"], gates=["APl@clean:-1pp"], bootstrap=0).gates[0]
    assert gate.outcome == "inconclusive" and not gate.passed
    assert "APl is undefined in both runs" in gate.message
    with pytest.warns(CompareWarning, match="passes only because inconclusive gates are allowed"):
        allowed = vs.compare(cards["reference"], cards["same"], gates=["APl@clean:-1pp"], bootstrap=0,
                             allow_inconclusive=True)
    assert allowed.passed


def test_runs_whose_background_swaps_were_prepared_otherwise_are_refused(runs, tmp_path):
    """--mask-dilation and --background-classes change what a background swap pastes and removes (pixels
    and targets), so the same model scores differently: not a model change."""
    task, cards = runs
    if task != "segmentation":
        pytest.skip("one task is enough: the prepared settings are task-independent")

    def prepared(dilation, classes):
        def edit(data):
            data["prepared"] = {"rotation": {"mask_dilation": dilation, "settings": {"background_classes": classes}}}
        return edit

    reference = _edited_copy(cards["reference"], tmp_path / "reference", prepared(0, [0]))
    with pytest.raises(IncomparableError, match=r"rotation mask dilation 0 vs 3 \(--mask-dilation\)"):
        vs.compare(reference, _edited_copy(cards["same"], tmp_path / "dilated", prepared(3, [0])))
    with pytest.raises(IncomparableError, match=r"rotation background classes \[0\] vs \[0, 3\]"):
        vs.compare(reference, _edited_copy(cards["same"], tmp_path / "classes", prepared(0, [0, 3])))
    assert vs.compare(reference, _edited_copy(cards["same"], tmp_path / "same", prepared(0, [0])), bootstrap=0)
