"""Classification end to end: a saved model, a dataset, a suite -> a scorecard that can be trusted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import visionstress as vs
from visionstress.cli import app
from visionstress.records import read_records
from visionstress.scorecard import Scorecard

QUICK_LIMIT = 24


@pytest.fixture(scope="module")
def demo_card(tmp_path_factory) -> Scorecard:
    out = tmp_path_factory.mktemp("demo")
    return vs.run(suite="quick", out=out, limit=QUICK_LIMIT, workers=0, batch_size=16, device="cpu")


def _suite_passes(card: Scorecard) -> int:
    return 1 + sum(len(item["severities"]) for item in card.suite["perturbations"])


def test_demo_run_writes_a_valid_scorecard_and_records(demo_card, tmp_path):
    out = Path(demo_card.records_path).parent
    loaded = Scorecard.load(out / "scorecard.json")
    assert loaded.task == "classification" and loaded.dataset["num_samples"] == QUICK_LIMIT
    assert (out / "summary.md").is_file()
    records = read_records(out / "records.parquet")
    assert len(records) == QUICK_LIMIT * _suite_passes(demo_card)
    assert set(records.columns) >= {"sample_id", "path", "perturbation", "severity", "label", "prediction",
                                    "confidence", "correct", "top5"}
    assert (records[records.perturbation == "clean"].severity == 0).all()


def test_reported_metrics_equal_an_independent_computation_from_the_records(demo_card):
    records = read_records(Path(demo_card.records_path).parent / "records.parquet")
    for row in demo_card.results:
        part = records[(records.perturbation == row["perturbation"]) & (records.severity == row["severity"])]
        assert len(part) == QUICK_LIMIT
        assert row["metrics"]["top1"] == pytest.approx(float((part.prediction == part.label).mean()), abs=1e-9)
        top5 = np.mean([label in list(top) for label, top in zip(part.label, part.top5)])
        assert row["metrics"]["top5"] == pytest.approx(top5, abs=1e-9)
        low, high = row["ci"]["top1"]
        assert low <= row["metrics"]["top1"] <= high
        if row["perturbation"] != "clean":
            clean = records[records.perturbation == "clean"].set_index("sample_id").prediction
            flips = (part.set_index("sample_id").prediction != clean.loc[part.sample_id].values).mean()
            assert row["metrics"]["flip_rate"] == pytest.approx(float(flips), abs=1e-9)


def test_same_seed_same_scorecard_metrics(demo_card, tmp_path):
    again = vs.run(suite="quick", out=tmp_path, limit=QUICK_LIMIT, workers=0, batch_size=7, device="cpu")
    assert [r["metrics"]["top1"] for r in again.results] == [r["metrics"]["top1"] for r in demo_card.results]


def _image_folder(root: Path, classes: int = 3, per_class: int = 2, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def _tiny_suite(tmp_path: Path) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text("name: tiny\nseed: 3\nperturbations:\n"
                    "  - {name: brightness, severities: [2], table: [0.1, 0.9, 0.3, 0.4, 0.5]}\n  - rotation\n")
    return path


def test_torchvision_state_dict_runs(tmp_path):
    from torchvision.models import resnet18

    weights = tmp_path / "r18.pth"
    torch.save(resnet18(num_classes=3).state_dict(), weights)
    data = _image_folder(tmp_path / "data")
    card = vs.run("torchvision:resnet18", data, weights=weights, suite=str(_tiny_suite(tmp_path)), workers=0,
                  input_size=32, resize=36, out=tmp_path / "out", device="cpu")
    assert len(card.results) == 1 + 1 + 5
    assert card.model["sha256"] and card.data_config["input_size"] == [32, 32]
    assert Scorecard.load(tmp_path / "out").suite["perturbations"][0]["table"][1] == 0.9


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_exported_archive_runs_only_when_trusted(tmp_path):
    archive = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(_Tiny().eval(), (torch.rand(2, 3, 32, 32),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), archive)
    data = _image_folder(tmp_path / "data")
    overrides = {"input_size": 32, "resize": 32}
    with pytest.raises(ValueError, match="trust"):
        vs.run(str(archive), data, suite=str(_tiny_suite(tmp_path)), workers=0, **overrides,
               out=tmp_path / "refused", device="cpu")
    card = vs.run(str(archive), data, suite=str(_tiny_suite(tmp_path)), trust_model=True, workers=0,
                  **overrides, out=tmp_path / "out", device="cpu", batch_size=2)
    assert card.model["format"]


class _Softmaxed(_Tiny):
    def forward(self, x):
        return super().forward(x).softmax(dim=1)


def test_a_model_that_outputs_probabilities_gets_the_calibration_of_its_logits(tmp_path):
    """Deployed models often end in a softmax; taking its output for logits would apply softmax twice and
    report a flattened confidence: every calibration number wrong. Probabilities are recognised and scored
    as such, and the scorecard says which the model returned."""
    data = _image_folder(tmp_path / "data", per_class=4)
    cards = {}
    for name, model in (("logits", _Tiny()), ("probabilities", _Softmaxed())):
        torch.manual_seed(0)
        model.load_state_dict(_Tiny().state_dict())
        archive = tmp_path / f"{name}.pt2"
        torch.export.save(torch.export.export(model.eval(), (torch.rand(2, 3, 32, 32),),
                                              dynamic_shapes=({0: torch.export.Dim("batch")},)), archive)
        cards[name] = vs.run(str(archive), data, suite=str(_tiny_suite(tmp_path)), trust_model=True, workers=0,
                             input_size=32, resize=32, out=tmp_path / name, device="cpu", batch_size=5,
                             bootstrap=0, skip_label_check=True)
        assert cards[name].data_config["outputs"] == name
    for a, b in zip(cards["logits"].results, cards["probabilities"].results, strict=True):
        for metric in ("top1", "ece", "nll", "brier"):
            assert b["metrics"][metric] == pytest.approx(a["metrics"][metric], abs=1e-5), (a["perturbation"], metric)


def test_a_limit_that_cuts_off_whole_classes_says_so(tmp_path):
    """--limit keeps the first images, and an ImageFolder lists them class by class: a quick look at 4 of 12
    images sees two of three classes, which the scorecard and summary say rather than let pass as the set."""
    data = _image_folder(tmp_path / "data", per_class=4)
    common = dict(suite=str(_tiny_suite(tmp_path)), workers=0, input_size=32, resize=32, device="cpu", bootstrap=0,
                  skip_label_check=True)
    card = vs.run("torchvision:resnet18", data, weights=_r18_3(tmp_path), limit=6, out=tmp_path / "cut", **common)
    assert card.dataset["warnings"] == ["--limit 6 kept the first 6 of 12 images, which cover 2 of the "
                                        "dataset's 3 classes (class0, class1)"]
    assert "--limit 6 kept the first 6" in (tmp_path / "cut" / "summary.md").read_text()
    card = vs.run("torchvision:resnet18", data, weights=_r18_3(tmp_path), limit=12, out=tmp_path / "all", **common)
    assert not card.dataset.get("warnings")


def tiny_factory():
    """A model factory that declares no preprocessing (no weights metadata, as most users' factories)."""
    return _Tiny()


def test_preprocessing_nobody_declared_is_a_warning(tmp_path, monkeypatch):
    """A factory without a data config runs on the ImageNet defaults: the scorecard and summary say that it was
    an assumption; a flag that sets any of it means the user chose, and the warning goes."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    data = _image_folder(tmp_path / "data")
    common = dict(suite=str(_tiny_suite(tmp_path)), workers=0, device="cpu", bootstrap=0, skip_label_check=True)
    card = vs.run("test_run_classification:tiny_factory", data, out=tmp_path / "assumed", **common)
    [warning] = card.dataset["warnings"]
    assert "nothing declared its preprocessing" in warning and "resize 256, centre crop 224" in warning
    assert "nothing declared its preprocessing" in (tmp_path / "assumed" / "summary.md").read_text()
    card = vs.run("test_run_classification:tiny_factory", data, out=tmp_path / "chosen", input_size=32, resize=32,
                  **common)
    assert not card.dataset.get("warnings")


def _r18_3(tmp_path: Path) -> Path:
    from torchvision.models import resnet18

    weights = tmp_path / "r18_3.pth"
    if not weights.exists():
        torch.save(resnet18(num_classes=3).state_dict(), weights)
    return weights


def test_output_width_mismatch_is_refused_before_work(tmp_path):
    from torchvision.models import resnet18

    weights = tmp_path / "r18.pth"
    torch.save(resnet18(num_classes=5).state_dict(), weights)
    data = _image_folder(tmp_path / "data")
    with pytest.raises(ValueError, match="outputs 5 classes but the dataset has 3"):
        vs.run("torchvision:resnet18", data, weights=weights, workers=0, out=tmp_path / "out",
               input_size=32, resize=32, device="cpu")
    assert not (tmp_path / "out" / "records.parquet").exists()


def test_corrupt_image_is_skipped_and_recorded(tmp_path):
    from torchvision.models import resnet18

    weights = tmp_path / "r18.pth"
    torch.save(resnet18(num_classes=3).state_dict(), weights)
    data = _image_folder(tmp_path / "data")
    (data / "class1" / "broken.png").write_bytes(b"not a png")
    card = vs.run("torchvision:resnet18", data, weights=weights, suite=str(_tiny_suite(tmp_path)), workers=0,
                  input_size=32, resize=32, out=tmp_path / "out", device="cpu")
    assert [Path(s["path"]).name for s in card.dataset["skipped"]] == ["broken.png"]
    records = read_records(tmp_path / "out" / "records.parquet")
    assert len(records) == 6 * (1 + 1 + 5)


def test_cli_run_on_the_demo(tmp_path):
    result = CliRunner().invoke(app, ["run", "--suite", "quick", "--limit", "8", "--workers", "0",
                                      "--device", "cpu", "--out", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "clean" in result.output and (tmp_path / "scorecard.json").is_file()
    card = json.loads((tmp_path / "scorecard.json").read_text())
    assert card["dataset"]["num_samples"] == 8


def test_cli_run_without_bootstrap_has_no_intervals(tmp_path):
    result = CliRunner().invoke(app, ["run", "--suite", "quick", "--limit", "8", "--workers", "0", "--device", "cpu",
                                      "--bootstrap", "0", "--out", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "scorecard.json").read_text())
    assert all(row["ci"] == {} for row in card["results"]) and "nan" not in result.output


def test_cli_run_bad_inputs_get_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is reports/<name> under the working folder
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--model", "torchvision:resnet18"])
    assert result.exit_code == 2 and "--data" in result.output
    result = runner.invoke(app, ["run", "--model", "nope.module:factory", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "error" in result.output
    assert not list((tmp_path / "reports").glob("*")), "a run that failed before writing left its folder behind"


def test_cli_run_names_a_device_it_cannot_use(tmp_path):
    data = _image_folder(tmp_path / "data")
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--model", "torchvision:resnet18", "--data", str(data), "--device", "gpu"])
    assert result.exit_code == 2 and "--device gpu: not a torch device" in result.output
    if not torch.cuda.is_available():
        result = runner.invoke(app, ["run", "--model", "torchvision:resnet18", "--data", str(data), "--device", "cuda"])
        assert result.exit_code == 2 and "--device cuda: CUDA is not available" in result.output, result.output


def nan_after_two_calls():
    """A factory whose model turns to NaN on its third forward pass (a diverged checkpoint)."""

    class Diverging(_Tiny):
        calls = 0

        def forward(self, x):
            Diverging.calls += 1
            out = super().forward(x)
            return out * float("nan") if Diverging.calls > 2 else out

    return Diverging()


def test_model_returning_nan_is_a_clear_error_and_keeps_the_records(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    data = _image_folder(tmp_path / "data")
    with pytest.raises(RuntimeError, match="NaN"):
        vs.run("test_run_classification:nan_after_two_calls", data, suite=str(_tiny_suite(tmp_path)), workers=0,
               input_size=32, resize=32, out=tmp_path / "out", device="cpu")
    records = read_records(tmp_path / "out" / "records.parquet")  # what ran before the failure is kept, readable
    assert len(records) == 6  # the probe call, then the clean pass of all six images, then the NaN


def test_cli_preprocessing_flags_reach_the_data_config(tmp_path):
    """--mean/--std strings go to DataConfig, which parses and validates them (errors name the flag)."""
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--suite", "quick", "--limit", "4", "--workers", "0", "--device", "cpu",
                                 "--mean", "0.4,0.4,0.4", "--std", "0.6,0.6,0.6", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "scorecard.json").read_text())["data_config"]
    assert config["mean"] == [0.4, 0.4, 0.4] and config["std"] == [0.6, 0.6, 0.6] and "flags" in config["source"]
    result = runner.invoke(app, ["run", "--suite", "quick", "--limit", "4", "--mean", "0.5,x",
                                 "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--mean '0.5,x'" in result.output
