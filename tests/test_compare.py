"""`visionstress compare` / `vs.compare`: paired tests between two runs, refusals, and regression gates."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.stats import binom
from typer.testing import CliRunner

import visionstress as vs
from visionstress.cli import app
from visionstress.comparison import (Comparison, ComparisonSet, CompareWarning, Gate, GateError, IncomparableError,
                                     bootstrap_test, holm, parse_gate)
from visionstress.demo import demo_arguments
from visionstress.evaluators import classification_statistics
from visionstress.records import read_records
from visionstress.report.compare_view import display_rows
from visionstress.report.compare_view import comparison_markdown, gate_lines
from visionstress.scorecard import Scorecard

PER_CLASS = 8  # 48 images: enough for a clear McNemar result, small enough for a fast module
runner = CliRunner()


def _run(data: Path, out: Path, weights=None, suite: str = "quick") -> Path:
    demo = demo_arguments()
    vs.run(model=demo["model"], weights=weights or demo["weights"], data=data, suite=suite, out=out, bootstrap=0,
           workers=0, batch_size=64, device="cpu")
    return out / "scorecard.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Scorecards of the demo classifier on a 48-image slice of the demo set: the reference, the same run
    again, a copy with noisy conv weights, a copy with float noise on every weight, a different suite, and a
    dataset with one image removed."""
    root = tmp_path_factory.mktemp("compare")
    demo = demo_arguments()
    data = root / "val"
    for folder in sorted(Path(demo["data"]).iterdir()):
        (data / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:PER_CLASS]:
            shutil.copy(image, data / folder.name / image.name)
    smaller = root / "val_minus_one"
    shutil.copytree(data, smaller)
    next((smaller / "circle").iterdir()).unlink()

    state = load_file(demo["weights"])
    generator = torch.Generator().manual_seed(0)
    for name in ("0.weight", "4.weight"):  # the first two convolutions
        w = state[name]
        state[name] = w + w.std() * torch.randn(w.shape, generator=generator)
    noisy = root / "noisy.safetensors"
    save_file(state, str(noisy))
    state = load_file(demo["weights"])
    for name, w in state.items():  # float noise: a millionth of each tensor's spread, no prediction changes
        if w.is_floating_point() and w.numel() > 1:
            state[name] = w + 1e-6 * w.std() * torch.randn(w.shape, generator=generator)
    float_noise = root / "float_noise.safetensors"
    save_file(state, str(float_noise))

    suite = root / "suite.yaml"
    suite.write_text("name: quick\nseed: 0\nperturbations:\n  - {name: gaussian_noise, severities: [1, 2, 3]}\n")
    return {
        "reference": _run(data, root / "reference"),
        "same": _run(data, root / "same"),
        "degraded": _run(data, root / "degraded", weights=noisy),
        "float_noise": _run(data, root / "float_noise", weights=float_noise),
        "other_suite": _run(data, root / "other_suite", suite=str(suite)),
        "other_data": _run(smaller, root / "other_data"),
    }


def _mcnemar_reference(ref: pd.DataFrame, cand: pd.DataFrame) -> float:
    """Exact two-sided McNemar from the binomial CDF (an independent route to scipy's binomtest)."""
    a = ref.sort_values("sample_id").correct.to_numpy()
    b = cand.sort_values("sample_id").correct.to_numpy()
    only_ref, only_cand = int((a & ~b).sum()), int((~a & b).sum())
    return min(1.0, 2 * binom.cdf(min(only_ref, only_cand), only_ref + only_cand, 0.5))


def _clean(records: pd.DataFrame) -> pd.DataFrame:
    return records[records.perturbation == "clean"]


# --- real runs ------------------------------------------------------------------------------------

def test_degraded_model_top1_drop_is_significant(runs):
    comparison = vs.compare(runs["reference"], runs["degraded"], gates=["top1:-1pp"], bootstrap=300)
    assert isinstance(comparison, Comparison)
    ref, cand = Scorecard.load(runs["reference"]), Scorecard.load(runs["degraded"])
    cell = comparison.cell("top1")
    assert (cell.old, cell.new) == (ref.metric("top1"), cand.metric("top1"))
    assert cell.delta < -0.2 and cell.test == "mcnemar" and cell.significant is True
    expected = _mcnemar_reference(_clean(read_records(ref.records_path)), _clean(read_records(cand.records_path)))
    assert cell.p_value == pytest.approx(expected, rel=1e-9)
    assert cell.p_value <= cell.p_adjusted <= 1.0  # Holm over the 10 top1 cells
    low, high = cell.ci_delta
    assert low <= cell.delta <= high < 0
    mpc = comparison.cell("top1", "mPC")
    assert mpc.old == pytest.approx(ref.summaries["mpc"])
    assert mpc.test == "paired_bootstrap" and mpc.ci_delta is not None
    assert comparison.cell("brier").test == "none" and comparison.cell("brier").significant is None
    gate = comparison.gates[0]
    assert not comparison.passed and not gate.passed and cell in gate.failures
    assert all(c.significant and c.delta < -0.01 for c in gate.failures)


def test_resampled_metrics_with_unit_weights_are_the_scorecard_metrics(runs):
    """The bootstrap recomputes each metric from the records; with every image once it must give the
    evaluator's values, or the intervals and p-values would describe a different number."""
    card = Scorecard.load(runs["degraded"])
    records = read_records(card.records_path)
    for row in card.results:
        frame = records[(records.perturbation == row["perturbation"]) & (records.severity == row["severity"])]
        stats = classification_statistics(frame.sort_values("sample_id"))(np.ones((1, len(frame))))
        for metric, value in row["metrics"].items():
            if metric in stats:
                assert stats[metric][0] == pytest.approx(value, abs=1e-6), (row["perturbation"], metric)


def test_cli_gate_exits_1_and_writes_the_reports(runs, tmp_path):
    md, js, html = tmp_path / "c.md", tmp_path / "c.json", tmp_path / "c.html"
    result = runner.invoke(app, ["compare", str(runs["reference"]), str(runs["degraded"]), "--fail-on", "top1:-1pp",
                                 "--bootstrap", "200", "--markdown", str(md), "--json", str(js), "--html", str(html)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "FAIL top1:-1pp" in result.output and "top1@clean" in result.output
    data = json.loads(js.read_text())
    assert data["passed"] is False and data["gates"][0]["failures"]
    clean = next(c for c in data["cells"] if c["perturbation"] == "clean" and c["metric"] == "top1")
    assert clean["significant"] is True and clean["test"] == "mcnemar"
    assert "**FAILED**" in md.read_text() and "top1:-1pp" in md.read_text()
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "failed" in page and "mPC" in page


def test_same_model_same_seed_nothing_is_significant(runs, tmp_path):
    comparison = vs.compare(runs["reference"], runs["same"], bootstrap=200)
    tested = [c for c in comparison.cells + comparison.summaries if c.test != "none"]
    assert len(tested) > 50
    assert all(c.delta == 0 and c.p_value == 1.0 and c.significant is False for c in tested)
    result = runner.invoke(app, ["compare", str(runs["reference"]), str(runs["same"]), "--fail-on", "top1:-1pp",
                                 "--fail-on", "ece@*:+2pp", "--bootstrap", "100"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "PASS top1:-1pp" in result.output


def test_the_same_model_twice_passes_the_default_gates(runs):
    comparison = vs.compare(runs["reference"], runs["same"], bootstrap=200)
    assert [g.spec for g in comparison.gates] == ["top1:-1pp"] and comparison.passed
    [gate] = comparison.gates
    assert gate.outcome == "pass" and gate.checked == 2 + len({c.perturbation for c in comparison.summaries
                                                               if c.perturbation.startswith("mPC[")})
    assert gate.mde == 0.0  # the runs agree on every image: nothing varies, any change would show


def test_float_noise_that_changes_no_prediction_passes(runs):
    ref, cand = (read_records(Scorecard.load(runs[k]).records_path).sort_values(["perturbation", "severity",
                                                                                  "sample_id"])
                 for k in ("reference", "float_noise"))
    assert (ref.prediction.to_numpy() == cand.prediction.to_numpy()).all()  # what makes this case "no change"
    assert not np.array_equal(ref.confidence.to_numpy(), cand.confidence.to_numpy())  # but the weights did move
    comparison = vs.compare(runs["reference"], runs["float_noise"], bootstrap=200)
    assert comparison.passed and [g.outcome for g in comparison.gates] == ["pass"]
    assert comparison.cell("top1").p_value == 1.0 and comparison.cell("top1", "mPC").delta == 0
    assert vs.compare(runs["reference"], runs["float_noise"], gates=["ece:+1pp", "nll@*:+0.05"], bootstrap=200).passed


def test_several_candidates_give_a_comparison_set(runs):
    result = vs.compare(runs["reference"], runs["same"], runs["degraded"], gates=["top1@clean:-5pp"], bootstrap=0)
    assert isinstance(result, ComparisonSet) and len(result.comparisons) == 2
    assert [c.passed for c in result.comparisons] == [True, False] and not result.passed
    json.dumps(result.to_json(), allow_nan=False)
    assert result.comparisons[1].cell("top1").significant  # McNemar needs no bootstrap
    assert result.comparisons[1].cell("nll").test == "none"


def test_different_suite_is_refused_naming_the_difference_and_force_compares_shared_cells(runs):
    with pytest.raises(IncomparableError) as info:
        vs.compare(runs["reference"], runs["other_suite"])
    message = str(info.value)
    assert "gaussian_noise severities [1, 3, 5] vs [1, 2, 3]" in message
    assert "only the reference runs defocus_blur, brightness, rotation, random_occlusion" in message
    assert "dataset" not in message and "seed" not in message
    result = runner.invoke(app, ["compare", str(runs["reference"]), str(runs["other_suite"])], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "gaussian_noise severities" in result.output

    forced = vs.compare(runs["reference"], runs["other_suite"], force=True, bootstrap=100)
    assert {(c.perturbation, c.severity) for c in forced.cells} == {("clean", 0), ("gaussian_noise", 1),
                                                                    ("gaussian_noise", 3)}
    assert any("severities" in d for d in forced.differences)
    assert "compared despite" in comparison_markdown(forced)
    assert forced.cell("top1").p_value == 1.0  # same model, same images: paired and unchanged


def test_different_dataset_is_refused_and_forced_cells_are_untested(runs):
    difference = r"dataset fingerprint \w{8}… vs \w{8}… \(.*val vs .*val_minus_one\)"
    with pytest.raises(IncomparableError, match=difference):
        vs.compare(runs["reference"], runs["other_data"])
    with pytest.warns(CompareWarning, match="datasets differ"):
        forced = vs.compare(runs["reference"], runs["other_data"], force=True, gates=["top1@clean:+0pp"])
    assert all(c.test == "none" and c.significant is None for c in forced.cells + forced.summaries)
    assert forced.cell("top1").delta != 0
    # with no test, a gate judges the difference alone and says so
    gate = forced.gates[0]
    assert gate.passed == (forced.cell("top1").delta <= 0)


def test_missing_records_warn_and_gates_use_the_delta_alone(runs, tmp_path):
    folder = tmp_path / "no_records"
    folder.mkdir()
    shutil.copy(runs["degraded"], folder / "scorecard.json")  # records.parquet left behind
    with pytest.warns(CompareWarning, match="records"):
        comparison = vs.compare(runs["reference"], folder, gates=["top1@clean:-1pp"])
    assert comparison.cell("top1").test == "none" and comparison.cell("top1").significant is None
    assert not comparison.passed
    assert "untested" in gate_lines(comparison)[0]


def test_gate_naming_an_unknown_metric_or_perturbation_is_refused(runs):
    with pytest.raises(GateError, match="no metric 'AP'.*top1, top5"):
        vs.compare(runs["reference"], runs["same"], gates=["AP:-1pp"], bootstrap=0)
    with pytest.raises(GateError, match="'fgo' matches no compared perturbation.*gaussian_noise"):
        vs.compare(runs["reference"], runs["same"], gates=["top1@fgo:-1pp"], bootstrap=0)
    result = runner.invoke(app, ["compare", str(runs["reference"]), str(runs["same"]), "--fail-on", "top1"])
    assert result.exit_code == 2 and "top1" in result.output and "expected METRIC" in result.output


def test_cli_help_renders():
    result = runner.invoke(app, ["compare", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "METRIC[@PERTURBATION[/SEVERITY]]:THRESHOLD" in result.output


# --- gate specs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("top1:-1pp", Gate("top1:-1pp", "top1", None, None, -0.01, False)),
    ("ece:+2pp", Gate("ece:+2pp", "ece", None, None, 0.02, False)),
    ("AP:-2%", Gate("AP:-2%", "AP", None, None, -0.02, True)),
    ("nll:+0.05", Gate("nll:+0.05", "nll", None, None, 0.05, False)),
    ("top1@*blur:-3pp", Gate("top1@*blur:-3pp", "top1", "*blur", None, -0.03, False)),
    ("top1@fog/5:-10pp", Gate("top1@fog/5:-10pp", "top1", "fog", 5, -0.1, False)),
    ("top1@clean:-.5pp", Gate("top1@clean:-.5pp", "top1", "clean", None, -0.005, False)),
    ("mIoU@summary:-1pp", Gate("mIoU@summary:-1pp", "mIoU", "summary", None, -0.01, False)),
])
def test_parse_gate(spec, expected):
    gate = parse_gate(spec)
    assert gate.threshold == pytest.approx(expected.threshold)
    assert (gate.spec, gate.metric, gate.scope, gate.severity, gate.relative) == \
        (expected.spec, expected.metric, expected.scope, expected.severity, expected.relative)


@pytest.mark.parametrize("spec, message", [
    ("top1", "expected METRIC"),
    ("top1-1pp", "expected METRIC"),
    ("top1:1pp", "needs a sign"),
    ("top1:-1ppx", "not a signed number"),
    ("top1:-one", "not a signed number"),
    ("top1@fog/9:-1pp", "severity '9' is not an integer from 1 to 5"),
    ("top1@summary/3:-1pp", "not to summary"),
    ("nll:+2pp", "nll is not a fraction"),
    ("top1@:-1pp", "expected METRIC"),
])
def test_bad_gate_specs_name_the_problem(spec, message):
    with pytest.raises(GateError, match=message) as info:
        parse_gate(spec)
    assert repr(spec) in str(info.value)


def test_gate_thresholds_follow_the_sign_and_unit():
    from visionstress.comparison import CellComparison

    def cell(old: float, new: float, metric: str = "top1") -> CellComparison:
        return CellComparison("fog", 3, metric, old, new, new - old)

    drop = parse_gate("top1:-1pp")
    assert drop.exceeded(cell(0.80, 0.78)) and not drop.exceeded(cell(0.73, 0.72))  # exactly 1 pp is allowed
    assert not drop.exceeded(cell(0.70, 0.90))
    rise = parse_gate("ece:+2pp")
    assert rise.exceeded(cell(0.05, 0.08, "ece")) and not rise.exceeded(cell(0.08, 0.05, "ece"))
    relative = parse_gate("top1:-10%")
    assert relative.exceeded(cell(0.50, 0.44)) and not relative.exceeded(cell(0.50, 0.46))
    assert not drop.exceeded(cell(math.nan, 0.5))
    assert parse_gate("top1@*blur/3:-1pp").covers(CellComparison("motion_blur", 3, "top1", 0, 0, 0), False)
    assert not parse_gate("top1@*blur/3:-1pp").covers(CellComparison("motion_blur", 5, "top1", 0, 0, 0), False)
    assert not parse_gate("top1@*:-1pp").covers(CellComparison("clean", 0, "top1", 0, 0, 0), False)
    # no scope: the primary endpoints, clean, mPC and mPC per family (not rPC, not the perturbed cells)
    assert parse_gate("top1:-1pp").covers(CellComparison("mPC", 0, "top1", 0, 0, 0), True)
    assert parse_gate("top1:-1pp").covers(CellComparison("mPC[blur]", 0, "top1", 0, 0, 0), True)
    assert parse_gate("top1:-1pp").covers(CellComparison("clean", 0, "top1", 0, 0, 0), False)
    assert not parse_gate("top1:-1pp").covers(CellComparison("rPC", 0, "top1", 0, 0, 0), True)
    assert not parse_gate("top1:-1pp").covers(CellComparison("fog", 3, "top1", 0, 0, 0), False)


# --- statistics ------------------------------------------------------------------------------------

def test_holm_adjustment():
    # sorted p: 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_bootstrap_test_reads_p_and_interval_from_one_distribution():
    same = bootstrap_test(np.zeros(100), 0.05)  # identical runs
    assert same.p_value == 1.0 and same.interval == (0.0, 0.0)
    constant = bootstrap_test(np.full(200, 0.1), 0.05)  # every resample the same non-zero difference
    assert constant.p_value == 0.0 and constant.interval == (0.1, 0.1)
    rng = np.random.default_rng(0)
    wide = rng.normal(0.0, 1.0, 1000)
    result = bootstrap_test(wide, 0.05)
    assert result.interval == pytest.approx(tuple(np.quantile(wide, [0.025, 0.975])), abs=0.15)
    assert 0.5 < result.p_value <= 1.0
    # no 1/R floor: a difference 5 standard errors from 0 is far below 1/200 even with 200 resamples
    assert bootstrap_test(rng.normal(0.5, 0.1, 200), 0.05).p_value < 1e-5
    assert bootstrap_test(np.full(10, np.nan), 0.05) is None
    assert bootstrap_test(np.r_[np.full(5, np.nan), np.zeros(5)], 0.05).p_value == 1.0  # NaN resamples drop out


# --- detection and segmentation, on synthetic records ------------------------------------------------

def _dense_card(tmp_path: Path, name: str, task: str, rows: list[dict], records: pd.DataFrame) -> Scorecard:
    path = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pandas(records, preserve_index=False), path)
    return Scorecard(task=task, model={"spec": name}, dataset={"path": "synthetic", "fingerprint": "f" * 64,
                                                                "num_samples": 60},
                     suite={"name": "s", "seed": 0, "perturbations": [{"name": "fog", "severities": [1, 3]}]},
                     seed=0, data_config={}, environment={}, results=rows, records_path=str(path))


def _dense_records(values: dict[tuple[str, int], np.ndarray], columns) -> pd.DataFrame:
    frames = []
    for (perturbation, severity), per_image in values.items():
        n = len(per_image)
        frame = pd.DataFrame({"sample_id": np.arange(n), "path": [f"{i}.png" for i in range(n)],
                              "perturbation": perturbation, "family": "weather" if perturbation != "clean" else "clean",
                              "severity": np.int8(severity)})
        for name, make in columns.items():
            frame[name] = [make(v) for v in per_image]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_detection_branch_bootstraps_with_the_evaluator_function(tmp_path):
    """Synthetic match records (one object per image, a matched detection in 80% of the reference's images,
    60% of those kept in the candidate's): AP is recomputed by `detection_statistics`, the function the
    evaluator's rows come from."""
    from visionstress.evaluators import detection_statistics

    rng = np.random.default_rng(0)
    keys = [("clean", 0), ("fog", 1), ("fog", 3)]
    good = {k: rng.random(60) < 0.8 for k in keys}
    bad = {k: v & (rng.random(60) < 0.6) for k, v in good.items()}
    columns = {"dt_category": lambda v: [1, 1], "dt_score": lambda v: [0.9, 0.8],
               "dt_match": lambda v: [1023 * int(v), 0], "dt_ignore": lambda v: [0, 0], "gt_category": lambda v: [1],
               "gt_ignore": lambda v: [False], "tp": lambda v: int(v), "fp": lambda v: 2 - int(v),
               "fn": lambda v: 1 - int(v)}

    def card(name, values):
        records = _dense_records(values, columns)
        rows = []
        for p, s in keys:
            frame = records[(records.perturbation == p) & (records.severity == s)]
            metrics = {m: float(v[0]) for m, v in detection_statistics(frame)(np.ones((1, 60))).items()}
            rows.append({"perturbation": p, "family": "weather" if p != "clean" else "clean", "severity": s,
                         "ci": {}, "metrics": metrics})
        return _dense_card(tmp_path, name, "detection", rows, records)

    reference, same, worse = card("ref", good), card("same", good), card("worse", bad)
    comparison = vs.compare(reference, worse, gates=["AP@clean:-5pp", "AP@*:-5pp", "AP@summary:-5pp"],
                            bootstrap=300)
    ap = comparison.cell("AP")
    assert ap.test == "paired_bootstrap" and ap.significant and ap.delta < -0.1
    assert ap.ci_delta[0] <= ap.delta <= ap.ci_delta[1] < 0
    assert comparison.cell("AP", "mPC").significant and not comparison.passed
    assert [c.key for c in comparison.gates[0].failures] == ["AP@clean"]
    assert [c.key for c in comparison.gates[1].failures] == ["AP@fog/1", "AP@fog/3"]
    assert "AP@mPC" in [c.key for c in comparison.gates[2].failures]
    assert all(g.outcome == "fail" for g in comparison.gates)
    unchanged = vs.compare(reference, same, bootstrap=100)
    assert all(c.p_value == 1.0 and not c.significant for c in unchanged.cells + unchanged.summaries
               if c.test != "none")
    assert unchanged.passed and [g.spec for g in unchanged.gates] == ["AP:-1pp"]  # the task's default gate


def test_segmentation_branch_bootstraps_with_the_evaluator_function(tmp_path):
    from visionstress.evaluators import segmentation_metrics_from_counts

    rng = np.random.default_rng(1)
    keys = [("clean", 0), ("fog", 1), ("fog", 3)]
    gt = rng.integers(50, 100, size=(60, 3))

    def counts(quality: float) -> dict[tuple[str, int], np.ndarray]:
        out = {}
        for k in keys:
            inter = (gt * rng.uniform(quality - 0.1, quality, size=gt.shape)).astype(np.int64)
            pred = inter + rng.integers(0, 20, size=gt.shape)
            out[k] = np.stack([inter, gt, pred], axis=1)  # [60, 3 kinds, 3 classes]
        return out

    columns = {"intersection": lambda v: v[0].tolist(), "gt_pixels": lambda v: v[1].tolist(),
               "pred_pixels": lambda v: v[2].tolist()}

    def card(name, values):
        records = _dense_records(values, columns)
        rows = [{"perturbation": p, "family": "weather" if p != "clean" else "clean", "severity": s, "ci": {},
                 "metrics": segmentation_metrics_from_counts(*(values[(p, s)][:, i] for i in range(3)))}
                for p, s in keys]
        return _dense_card(tmp_path, name, "segmentation", rows, records)

    good = counts(0.9)
    comparison = vs.compare(card("ref", good), card("worse", counts(0.7)), gates=["mIoU@fog:-5pp"], bootstrap=200)
    miou = comparison.cell("mIoU", "fog", 3)
    assert miou.test == "paired_bootstrap" and miou.significant and miou.delta < -0.1
    assert comparison.cell("mIoU", "rPC").test == "paired_bootstrap"
    assert [c.key for c in comparison.gates[0].failures] == ["mIoU@fog/1", "mIoU@fog/3"]
    unchanged = vs.compare(card("a", good), card("b", good), bootstrap=100)
    assert all(c.p_value == 1.0 for c in unchanged.cells if c.test != "none")


# --- the background gap, compared ----------------------------------------------------------------------

def _classification_card(tmp_path: Path, name: str, predictions: dict[tuple[str, int], np.ndarray],
                         labels: np.ndarray | None = None, **fields) -> Scorecard:
    """A classification scorecard with its records, from the predictions per pass (label 0 unless given)."""
    frames, rows = [], []
    for (perturbation, severity), prediction in predictions.items():
        n = len(prediction)
        label = np.zeros(n, dtype=np.int64) if labels is None else labels
        right = prediction == label
        family = "clean" if perturbation == "clean" else "background"
        frames.append(pd.DataFrame({
            "sample_id": np.arange(n), "path": [f"{i}.png" for i in range(n)], "perturbation": perturbation,
            "family": family, "severity": np.int8(severity), "label": label, "prediction": prediction,
            "confidence": 0.9, "correct": right, "top5": [[int(p), 7, 8, 9, 10] for p in prediction],
            "nll": np.where(right, 0.1, 2.3),
            "flipped": pd.array([None] * n if perturbation == "clean" else ~right, dtype="boolean")}))
        rows.append({"perturbation": perturbation, "severity": severity, "ci": {}, "family": family,
                     "metrics": {"top1": float(right.mean())}})
    path = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False), path)
    suite = {"name": "probes", "seed": 0,
             "perturbations": [{"name": p, "severities": [s]} for p, s in predictions if p != "clean"]}
    return Scorecard(task="classification", model={"spec": name}, seed=0, data_config={}, environment={},
                     dataset={"path": "synthetic", "fingerprint": "f" * 64, "num_samples": n},
                     suite=suite, results=rows, records_path=str(path), **fields)


def test_compare_tests_the_background_gap_of_both_runs(tmp_path):
    """A model that reads the background (right on mixed_same, near chance on mixed_rand) against one that
    reads the object: compare reports each run's bg_gap and the paired change, which no gate reads."""
    from visionstress.report.compare_html import render_compare_html
    from visionstress.report.compare_view import comparison_markdown

    rng = np.random.default_rng(3)
    n = 200
    clean = rng.random(n) < 0.9
    background_reader = {("clean", 0): clean, ("mixed_same", 1): clean & (rng.random(n) < 0.95),
                         ("mixed_rand", 1): rng.random(n) < 0.3}
    object_reader = {("clean", 0): clean, ("mixed_same", 1): clean & (rng.random(n) < 0.9),
                     ("mixed_rand", 1): clean & (rng.random(n) < 0.85)}
    background_reader, object_reader = ({k: np.where(v, 0, 1) for k, v in right.items()}  # label 0
                                        for right in (background_reader, object_reader))
    reference = _classification_card(tmp_path, "background_reader", background_reader)
    candidate = _classification_card(tmp_path, "object_reader", object_reader)
    comparison = vs.compare(reference, candidate, bootstrap=300)
    gap = comparison.cell("top1", "bg_gap")
    expected_old, expected_new = ((run[("mixed_same", 1)] == 0).mean() - (run[("mixed_rand", 1)] == 0).mean()
                                  for run in (background_reader, object_reader))
    assert gap.old == pytest.approx(expected_old) and gap.new == pytest.approx(expected_new)
    assert gap.test == "paired_bootstrap" and gap.significant and gap.ci_delta[1] < 0 < expected_old - expected_new
    assert gap.ci_delta[0] <= gap.delta <= gap.ci_delta[1]
    assert all("bg_gap" not in v.cell.key for g in comparison.gates for v in g.cells)  # descriptive: never gated
    assert comparison.to_json()["probes"][0]["perturbation"] == "bg_gap"
    assert "## Background reliance" in comparison_markdown(comparison) and "Background reliance" in \
        render_compare_html(comparison)
    row = next(r for r in display_rows(comparison) if r.kind == "probe")
    assert row.name == "bg_gap" and row.tone == "better"  # the candidate leans less on the background
    reverse = next(r for r in display_rows(vs.compare(candidate, reference, bootstrap=300)) if r.kind == "probe")
    assert reverse.tone == "worse"
    same = vs.compare(reference, _classification_card(tmp_path, "again", background_reader), bootstrap=100)
    assert same.cell("top1", "bg_gap").delta == 0 and same.cell("top1", "bg_gap").p_value == 1.0


def test_compare_tests_the_shape_bias_of_both_runs(tmp_path):
    """On the cue-conflict pass, a model that decides by shape (the image's own class) against one that
    decides by texture (the class of the texture donor, recomputed from the prepared bank as the cue
    summary does): shape bias 1 -> 0, significant, from the same paired resamples as every other cell."""
    from visionstress.evaluators.reliance import texture_classes

    rng = np.random.default_rng(5)
    n = 90
    labels = rng.integers(0, 3, n)
    members = {"sample_ids": list(range(0, n, 2)), "classes": [int(labels[i]) for i in range(0, n, 2)]}
    texture = texture_classes(0, 1, np.arange(n), labels, members)
    assert (texture != labels).all()  # every image is a cue conflict: the donor is of another class
    prepared = {"texture_fill": {"texture_members": members}}

    def card(name, prediction, bias):
        return _classification_card(tmp_path, name, {("clean", 0): labels, ("texture_fill", 1): prediction},
                                    labels=labels, prepared=prepared, summaries={"cue": {"shape_bias": bias}})

    shape_model, texture_model = card("shape", labels, 1.0), card("texture", texture, 0.0)
    comparison = vs.compare(shape_model, texture_model, bootstrap=200)
    bias = comparison.cell("shape_bias", "texture_fill", 1)
    assert (bias.old, bias.new, bias.delta) == (1.0, 0.0, -1.0)
    assert bias.test == "paired_bootstrap" and bias.significant and bias.ci_delta == (-1.0, -1.0)
    assert next(r for r in display_rows(comparison) if r.kind == "probe" and r.name == "texture_fill").tone == "worse"
    same = vs.compare(shape_model, card("shape_again", labels, 1.0), bootstrap=100)
    assert same.cell("shape_bias", "texture_fill", 1).p_value == 1.0
