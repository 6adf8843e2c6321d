"""Gates users can act on: pass, fail and inconclusive on constructed runs whose truth is known.

The runs are built directly as scorecards plus Parquet records (the runner's record schema), with every
scorecard metric computed from the records by the task's statistics function, so a comparison of them is
exactly what `visionstress compare` would do on real runs: the cases of issue 14 (a 12-image model whose
top-1 fell from 83.3% to 50.0%, an ECE that went from 18% to 38%), changed perturbation implementations,
and a pass scored on held-out images only.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import visionstress as vs
from visionstress.cli import app
from visionstress.comparison import CompareWarning, default_gates, parse_gate
from visionstress.evaluators import classification_statistics
from visionstress.records import RecordWriter
from visionstress.report.compare_html import render_compare_html
from visionstress.report.compare_view import comparison_markdown, gate_line
from visionstress.scorecard import Scorecard, environment_info

CLASSES = 4
QUICK = {"gaussian_noise": "noise", "defocus_blur": "blur", "brightness": "lighting", "rotation": "geometric",
         "random_occlusion": "occlusion"}
runner = CliRunner()


def _card(folder: Path, passes: dict[tuple[str, int], dict[str, np.ndarray]], labels: np.ndarray,
          versions: dict[str, int] | None = None, save: bool = True) -> Scorecard:
    """A classification scorecard and its records from per-pass `prediction` and `confidence` arrays (by
    sample id; a pass may hold only some ids, given as `ids`). Metrics come from the records."""
    folder.mkdir(parents=True, exist_ok=True)
    records, results = folder / "records.parquet", []
    clean_prediction = passes[("clean", 0)]["prediction"]
    with RecordWriter(records, "classification") as writer:
        for (name, severity), values in passes.items():
            ids = values.get("ids", np.arange(len(labels)))
            label, prediction, confidence = labels[ids], values["prediction"], values["confidence"]
            correct = prediction == label
            top5 = [[int(p)] + [c for c in range(CLASSES) if c != p] for p in prediction]
            flipped = [None] * len(ids) if name == "clean" else (prediction != clean_prediction[ids]).tolist()
            columns = {"sample_id": ids, "label": label, "prediction": prediction, "confidence": confidence,
                       "correct": correct, "top5": top5, "nll": np.where(correct, -np.log(confidence), 3.0),
                       "flipped": flipped}
            family = "clean" if name == "clean" else QUICK.get(name, "other")
            writer.write(columns, name, family, severity, [f"img{i}.png" for i in ids])
            stats = classification_statistics({k: v for k, v in columns.items() if k != "flipped" or name != "clean"})
            metrics = {m: float(v[0]) for m, v in stats(np.ones((1, len(ids)))).items()}
            results.append({"perturbation": name, "family": family, "severity": severity, "metrics": metrics,
                            "ci": {}})
    perturbations = {}
    for name, severity in passes:
        if name != "clean":
            entry = perturbations.setdefault(name, {"name": name, "severities": []})
            entry["severities"].append(severity)
            if versions and name in versions:
                entry["version"] = versions[name]
    card = Scorecard(task="classification", model={"spec": folder.name, "path": None, "sha256": None, "format": "x"},
                     dataset={"path": "constructed", "fingerprint": "c" * 64, "num_samples": len(labels),
                              "num_classes": CLASSES, "class_names": [f"c{i}" for i in range(CLASSES)], "skipped": []},
                     suite={"name": "quick", "seed": 0, "perturbations": list(perturbations.values())}, seed=0,
                     data_config={}, environment=environment_info("cpu"), results=results, records_path=str(records))
    if save and not versions:
        card.save(folder)
    return card


def _predictions(labels: np.ndarray, right: np.ndarray, confidence: float = 0.9) -> dict[str, np.ndarray]:
    """Right where `right`, else the next class; one confidence for every image."""
    return {"prediction": np.where(right, labels, (labels + 1) % CLASSES),
            "confidence": np.full(len(labels), confidence)}


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> tuple[Scorecard, Scorecard, Path]:
    """Issue 14's case: 12 images, clean top-1 83.3% -> 50.0% (4 images only the reference got right), and
    the quick suite's 15 perturbed cells about 30 points worse."""
    root = tmp_path_factory.mktemp("twelve")
    rng = np.random.default_rng(14)
    labels = np.arange(12) % CLASSES
    ref_clean = np.arange(12) < 10
    ref, cand = {("clean", 0): _predictions(labels, ref_clean)}, {("clean", 0): _predictions(labels, np.arange(12) < 6)}
    for name in QUICK:
        for severity in (1, 3, 5):
            right = np.zeros(12, bool)
            right[rng.choice(12, size=8, replace=False)] = True
            kept = right & (rng.random(12) < 0.55)
            ref[(name, severity)], cand[(name, severity)] = _predictions(labels, right), _predictions(labels, kept)
    return _card(root / "reference", ref, labels), _card(root / "candidate", cand, labels), root


def test_the_twelve_image_regression_fails_by_default(twelve):
    reference, candidate, _ = twelve
    comparison = vs.compare(reference, candidate, bootstrap=500)
    clean = comparison.cell("top1")
    assert (round(clean.old, 3), round(clean.new, 3)) == (0.833, 0.5)
    # one analysis: exact McNemar (4 discordant images, all one way) and its matching interval, which holds 0
    assert clean.test == "mcnemar" and clean.discordant == (4, 0) and clean.p_value == pytest.approx(0.125)
    assert clean.ci_delta[0] < 0 < clean.ci_delta[1]
    mpc = comparison.cell("top1", "mPC")
    # 11 of the 12 images lose under the suite, all of them: the exact randomisation p is 2 / 2**11, which
    # compare's p must be near (the bootstrap alone says 0: no resample of twelve images reaches no change)
    exact = exact_sign_flip_p(reference, candidate)
    assert exact == pytest.approx(2 / 2**11)
    assert mpc.delta < -0.2 and exact / 2 < mpc.p_value < exact * 2 and mpc.ci_delta[1] < 0
    [gate] = comparison.gates
    assert gate.spec == default_gates("classification")[0] == "top1:-1pp"
    assert gate.outcome == "fail" and not gate.passed and not comparison.passed
    assert "top1@mPC" in [c.key for c in gate.failures]
    verdict = next(v for v in gate.cells if v.cell is clean)
    assert verdict.outcome == "inconclusive" and "not significant" in verdict.reason
    assert verdict.mde > 0.3  # twelve images cannot see a one-point change
    assert {c.perturbation for c in [v.cell for v in gate.cells]} == {"clean", "mPC", *(f"mPC[{f}]" for f in
                                                                                      QUICK.values())}
    assert "top1@mPC" in gate.message and "MDE" in gate.message
    # the threshold of the issue's plugin test fails too
    assert not vs.compare(reference, candidate, gates=["top1:-5pp"], bootstrap=300).passed


def exact_sign_flip_p(reference: Scorecard, candidate: Scorecard) -> float:
    """The exact paired randomisation p-value of the change of mPC (top-1), from the records: every one of the
    2**n ways of exchanging each image's two outcomes between the runs."""
    per_image = []
    for card in (reference, candidate):
        frame = pd.read_parquet(card.records_path)
        perturbed = frame[frame["perturbation"] != "clean"]
        by_name = perturbed.groupby(["sample_id", "perturbation"])["correct"].mean().unstack()
        per_image.append(by_name.mean(axis=1).sort_index().to_numpy())
    change = per_image[1] - per_image[0]
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=len(change))))
    return float(np.mean(np.abs(signs @ change) >= abs(change.sum()) - 1e-12))


def test_an_inconclusive_gate_fails_unless_allowed_and_says_how_many_images(twelve):
    reference, candidate, _ = twelve
    comparison = vs.compare(reference, candidate, gates=["top1@clean:-1pp"], bootstrap=0)
    [gate] = comparison.gates
    assert gate.outcome == "inconclusive" and not gate.passed and not comparison.passed
    assert gate.inconclusive == [comparison.cell("top1")] and gate.failures == []
    assert "beyond the threshold but not significant" in gate.message
    needed = int(np.ceil(12 * (gate.mde / 0.01) ** 2))
    assert f"about {needed:,} images (instead of 12)" in gate.message
    assert gate.cells[0].p_adjusted == comparison.cell("top1").p_value  # Holm over the gate's one cell only
    with pytest.warns(CompareWarning, match="allowed"):
        allowed = vs.compare(reference, candidate, gates=["top1@clean:-1pp"], bootstrap=0, allow_inconclusive=True)
    assert allowed.passed and allowed.gates[0].outcome == "inconclusive"
    assert gate_line(allowed.gates[0]).startswith("INCONCLUSIVE (allowed) top1@clean:-1pp")


def test_cli_exit_codes_and_every_output_shows_threshold_and_mde(twelve, tmp_path):
    reference, candidate, root = twelve
    args = ["compare", str(root / "reference"), str(root / "candidate"), "--bootstrap", "200"]
    env = {"COLUMNS": "200"}
    result = runner.invoke(app, args, env=env)  # the default gates: mPC fails
    assert result.exit_code == 1, result.output
    assert "FAIL top1:-1pp" in result.output and "MDE" in result.output
    clean_only = args + ["--fail-on", "top1@clean:-1pp"]
    md, js, html = tmp_path / "c.md", tmp_path / "c.json", tmp_path / "c.html"
    result = runner.invoke(app, clean_only + ["--markdown", str(md), "--json", str(js), "--html", str(html)], env=env)
    assert result.exit_code == 1 and "INCONCLUSIVE top1@clean:-1pp" in result.output, result.output
    data = json.loads(js.read_text())
    [gate] = data["gates"]
    assert gate["outcome"] == "inconclusive" and gate["passed"] is False and gate["mde"] > 0.3
    assert gate["threshold"] == pytest.approx(-0.01) and gate["inconclusive"] == ["top1@clean"]
    assert "| `top1@clean:-1pp` | INCONCLUSIVE | -1.0 pp |" in md.read_text()
    page = html.read_text()
    assert "gate-inconclusive" in page and "MDE (80% power)" in page
    result = runner.invoke(app, clean_only + ["--allow-inconclusive"], env=env)
    assert result.exit_code == 0 and "INCONCLUSIVE (allowed)" in result.output, result.output
    result = runner.invoke(app, args + ["--no-gates"], env=env)
    assert result.exit_code == 0 and "PASS" not in result.output and "FAIL" not in result.output
    result = runner.invoke(app, args + ["--no-gates", "--fail-on", "top1:-1pp"], env=env)
    assert result.exit_code == 2


def _calibration(root: Path, n: int) -> tuple[Scorecard, Scorecard]:
    """Confidence 0.88 on every image; the reference right on 70% (ECE 18%), the candidate on 50% (ECE 38%),
    its right answers a subset of the reference's (paired images, as two versions of one model)."""
    labels = np.arange(n) % CLASSES
    order = np.random.default_rng(n).permutation(n)
    ref_right, cand_right = np.zeros(n, bool), np.zeros(n, bool)
    ref_right[order[:int(0.7 * n)]], cand_right[order[:int(0.5 * n)]] = True, True
    return (_card(root / f"ref{n}", {("clean", 0): _predictions(labels, ref_right, 0.88)}, labels, save=False),
            _card(root / f"cand{n}", {("clean", 0): _predictions(labels, cand_right, 0.88)}, labels, save=False))


def test_the_calibration_gate_catches_an_ece_rise(tmp_path):
    for n, outcomes in ((200, {"fail"}), (20, {"fail", "inconclusive"})):
        reference, candidate = _calibration(tmp_path, n)
        comparison = vs.compare(reference, candidate, gates=["ece:+5pp"], bootstrap=500)
        ece = comparison.cell("ece")
        assert (round(ece.old, 2), round(ece.new, 2)) == (0.18, 0.38)
        assert ece.test == "paired_bootstrap" and ece.ci_delta[0] <= ece.delta <= ece.ci_delta[1]
        [gate] = comparison.gates
        assert [v.cell.key for v in gate.cells] == ["ece@clean"]  # no summaries for ece: the clean pass
        assert gate.outcome in outcomes and not comparison.passed, (n, gate.message)


def test_a_changed_perturbation_is_not_a_model_regression(tmp_path):
    """The candidate's scorecard was written with a new fog implementation (v2) that lowers fog's top-1: its
    cells (and the summaries over them) are named, left out of the gates, and the comparison is not refused."""
    labels = np.arange(40) % CLASSES
    base = np.arange(40) < 30
    ref = {("clean", 0): _predictions(labels, base), ("fog", 1): _predictions(labels, base),
           ("brightness", 1): _predictions(labels, base)}
    cand = dict(ref)
    cand[("fog", 1)] = _predictions(labels, np.arange(40) < 10)
    reference = _card(tmp_path / "ref", ref, labels, versions={"fog": 1, "brightness": 1})
    candidate = _card(tmp_path / "cand", cand, labels, versions={"fog": 2, "brightness": 1})
    with pytest.warns(CompareWarning, match="fog: implementation changed, v1 -> v2"):
        comparison = vs.compare(reference, candidate, gates=["top1@*:-1pp", "top1:-1pp"], bootstrap=200)
    assert comparison.changed == {"fog": "implementation changed, v1 -> v2"}
    fog = comparison.cell("top1", "fog", 1)
    assert fog.changed and fog.significant  # the change is real and shown, just not blamed on the model
    assert comparison.cell("top1", "mPC").changed and not comparison.cell("top1", "mPC[lighting]").changed
    every, primary = comparison.gates
    assert every.outcome == "pass" and [c.key for c in every.excluded] == ["top1@fog/1"]
    assert {c.key for c in primary.excluded} == {"top1@mPC", "top1@mPC[other]"}
    assert comparison.passed and "perturbation changed" in comparison_markdown(comparison)
    assert "perturbation changed" in render_compare_html(comparison)
    # a reference written before versions were recorded: unknown, said so, also left out of the gates
    old = _card(tmp_path / "old", ref, labels, versions={"brightness": 1})
    with pytest.warns(CompareWarning, match="fog: implementation version unknown in the reference"):
        unknown = vs.compare(old, candidate, gates=["top1@*:-1pp"], bootstrap=0)
    assert unknown.passed and unknown.gates[0].excluded


def test_a_pass_on_held_out_images_is_paired_on_those_images(tmp_path):
    """An adversarial-patch-like pass scored on a third of the images is tested on exactly those, and the
    summaries over it are still paired resample by resample."""
    labels = np.arange(60) % CLASSES
    held_out = np.arange(0, 60, 3)
    base = np.arange(60) % 5 != 0
    ref = {("clean", 0): _predictions(labels, base), ("brightness", 1): _predictions(labels, base),
           ("patch", 1): {**_predictions(labels[held_out], base[held_out]), "ids": held_out}}
    cand = {**ref, ("patch", 1): {**_predictions(labels[held_out], np.zeros(20, bool)), "ids": held_out}}
    comparison = vs.compare(_card(tmp_path / "ref", ref, labels), _card(tmp_path / "cand", cand, labels),
                            gates=["top1@patch:-1pp", "top1@brightness:-1pp"], bootstrap=300)
    patch = comparison.cell("top1", "patch", 1)
    assert patch.test == "mcnemar" and patch.images == 20 and patch.discordant == (16, 0)
    assert comparison.cell("ece", "patch", 1).test == "paired_bootstrap"
    assert comparison.cell("top1", "mPC").test == "paired_bootstrap" and comparison.cell("top1", "mPC").significant
    assert [g.outcome for g in comparison.gates] == ["fail", "pass"]


def test_gates_refuse_what_the_comparison_lacks(twelve):
    reference, candidate, _ = twelve
    from visionstress.comparison import GateError

    with pytest.raises(GateError, match="summaries are computed for the main metric top1 only"):
        vs.compare(reference, candidate, gates=["ece@mPC:+1pp"], bootstrap=0)
    with pytest.raises(GateError, match=r"no summary 'mPC\[weather\]'; the summaries are mPC, rPC, mPC\[blur\]"):
        vs.compare(reference, candidate, gates=["top1@mPC[weather]:-1pp"], bootstrap=0)
    with pytest.raises(GateError, match="nll is not a fraction"):
        parse_gate("nll:+1pp")
    with pytest.raises(ValueError, match="gates must be a list"):
        vs.compare(reference, candidate, gates="top1:-1pp")


def test_a_change_in_the_seventh_digit_is_never_significant(tmp_path):
    """A model against its own ONNX export: every image's NLL a little lower, the same way on every image.
    That is rounding, not a change, however small its p would be; a real change of NLL still is one."""
    labels = np.arange(40) % CLASSES
    right = np.arange(40) % 4 != 0
    passes = {("clean", 0): _predictions(labels, right, 0.8)}
    exported = {("clean", 0): _predictions(labels, right, 0.8 + 1e-7)}
    worse = {("clean", 0): _predictions(labels, right, 0.7)}
    reference = _card(tmp_path / "model", passes, labels)
    rounding = vs.compare(reference, _card(tmp_path / "export", exported, labels), bootstrap=200).cell("nll")
    assert 0 < abs(rounding.delta) < 1e-6 and rounding.p_value == 1.0 and not rounding.significant
    real = vs.compare(reference, _card(tmp_path / "worse", worse, labels), bootstrap=200).cell("nll")
    assert real.delta > 0.1 and real.p_value < 0.01 and real.significant
