"""The task seam: a fourth task is one module and one registration. This one (image-level regression: how
bright is the image) runs end to end through the CLI and `compare` with nothing else changed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from visionstress.batch import Batch
from visionstress.cli import app
from visionstress.evaluators.bootstrap import row_estimates
from visionstress.evaluators.classification import MetricRow
from visionstress.evaluators.protocol import Update
from visionstress.metrics import Metric, register_metric
from visionstress.tasks import get_task, register_task, unregister_task
from visionstress.tasks.base import RunDataset, Task, TaskRun

SIZE = 32


class BrightImages:
    """PNG files in a folder; the target of an image is its mean intensity in [0, 1]."""

    strict = False

    def __init__(self, root: Path) -> None:
        self.files = sorted(root.glob("*.png"))

    def __len__(self) -> int:
        return len(self.files)

    def shape(self, index: int) -> tuple[int, int]:
        return SIZE, SIZE

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = np.array(Image.open(self.files[index]).convert("RGB").resize((SIZE, SIZE)))
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), index

    def collate(self, items: list[tuple[torch.Tensor, int]]) -> Batch:
        if not items:
            return Batch(torch.empty((0, 3, SIZE, SIZE), dtype=torch.uint8), sample_ids=torch.empty(0, dtype=torch.int64))
        return Batch(torch.stack([i[0] for i in items]), sample_ids=torch.tensor([i[1] for i in items]))

    def target(self, index: int) -> float:
        return float(self.load(index)[0].float().mean() / 255.0)


class BrightnessEvaluator:
    """Mean absolute error of the predicted brightness, per pass, through the evaluator protocol."""

    def __init__(self, images: BrightImages, bootstrap: int, seed: int) -> None:
        self.targets = np.array([images.target(i) for i in range(len(images))])
        self.bootstrap, self.seed = bootstrap, seed
        self.passes: dict[tuple[str, int], list[dict[str, np.ndarray]]] = {}

    def update(self, key: Any, batch: Batch, predictions: Any) -> Update:
        ids = batch.sample_ids.cpu().numpy()
        predicted = predictions.values.detach().float().cpu().numpy()
        chunk = {"sample_id": ids, "abs_error": np.abs(predicted - self.targets[ids])}
        self.absorb(key.perturbation, key.severity, chunk)
        return Update({"sample_id": ids, "target": self.targets[ids].astype(np.float32),
                       "prediction": predicted.astype(np.float32), "abs_error": chunk["abs_error"]}, chunk)

    def absorb(self, perturbation: str, severity: int, chunk: Mapping[str, np.ndarray]) -> None:
        self.passes.setdefault((perturbation, int(severity)), []).append(dict(chunk))

    def finalize(self) -> SimpleNamespace:
        rows = []
        for (name, severity), chunks in sorted(self.passes.items(), key=lambda kv: kv[0][0] != "clean"):
            columns = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
            point, ci = row_estimates(statistics(columns), len(columns["abs_error"]), self.bootstrap, self.seed)
            rows.append(MetricRow(name, severity, point, ci))
        return SimpleNamespace(rows=rows)


def statistics(columns: Mapping[str, Any]):
    errors = np.asarray(columns["abs_error"], np.float64)
    return lambda weights: {"mae": weights @ errors / weights.sum(axis=1)}


class BrightnessTask(Task):
    name = "brightness"
    description = "image-level regression: the mean intensity of the image"
    main_metric = "mae"
    secondary_metric = "mae"
    default_gates = ("mae:+0.02",)

    def record_fields(self) -> list[Any]:
        import pyarrow as pa

        return [pa.field("target", pa.float32()), pa.field("prediction", pa.float32()),
                pa.field("abs_error", pa.float64())]

    def setup(self, options: Any, device: Any) -> TaskRun:
        from visionstress.models import load_model

        images = BrightImages(Path(options.data))
        loaded = load_model(options.model)
        model = loaded.module.to(device)

        def predict(pixels: torch.Tensor) -> SimpleNamespace:
            with torch.inference_mode():
                return SimpleNamespace(values=model(pixels.to(device).float() / 255.0))

        info = {"path": Path(options.data).name, "fingerprint": "bright-" + str(len(images)),
                "num_listed": len(images), "num_classes": 1, "class_names": ["brightness"]}
        return TaskRun(dataset=RunDataset(images, [f.name for f in images.files], info, ["brightness"],
                                          Path(options.data)),
                       model=loaded, adapter=SimpleNamespace(predict=predict),
                       evaluator=BrightnessEvaluator(images, options.bootstrap, options.seed), gallery=None,
                       data_config={"input_size": [SIZE, SIZE]})

    def statistics(self, columns: Mapping[str, Any]):
        return statistics(columns)


class MeanModel(torch.nn.Module):
    def __init__(self, bias: float = 0.0) -> None:
        super().__init__()
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3)) + self.bias


def mean_model() -> torch.nn.Module:
    return MeanModel()


def biased_model() -> torch.nn.Module:
    return MeanModel(bias=0.05)


@pytest.fixture
def brightness_task(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    register_metric(Metric("mae", "brightness", False, False, "intensity", "mean absolute error", "bootstrap"))
    register_task(BrightnessTask())
    yield get_task("brightness")
    unregister_task("brightness")


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


def test_a_fourth_task_runs_through_the_cli_and_compare(brightness_task, images, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: light\nperturbations:\n  - {name: brightness, severities: [1, 3]}\n"
                     "  - {name: gaussian_noise, severities: [2]}\n")
    runner = CliRunner()
    outs = {}
    for name in ("mean_model", "biased_model"):
        outs[name] = tmp_path / name
        result = runner.invoke(app, ["run", "--task", "brightness", "--model", f"test_task_seam:{name}", "--data",
                                     str(images), "--suite", str(suite), "--bootstrap", "200", "--workers", "0",
                                     "--out", str(outs[name])], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "mae by perturbation and severity" in result.output
    from visionstress.scorecard import Scorecard

    card = Scorecard.load(outs["mean_model"])
    assert card.task == "brightness" and card.metric("mae") == pytest.approx(0.0, abs=1e-6)
    assert card.metric("mae", "brightness", 3) > 0.05  # brightening moves the prediction, not the target
    assert card.summaries["metric"] == "mae" and card.summaries["mpc"] > 0
    result = runner.invoke(app, ["compare", str(outs["mean_model"]), str(outs["biased_model"]), "--fail-on",
                                 "mae:+0.01"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output  # a 0.05 bias is a significant regression of the clean mae
    result = runner.invoke(app, ["compare", str(outs["mean_model"]), str(outs["mean_model"])], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output


def test_a_flag_the_task_does_not_use_is_refused_before_any_work(brightness_task, images, tmp_path):
    result = CliRunner().invoke(app, ["run", "--task", "brightness", "--model", "test_task_seam:mean_model",
                                      "--data", str(images), "--canvas", "64x64", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "--canvas does not apply to --task brightness (it is for detection)" in result.output
    assert not (tmp_path / "x").exists()


def test_a_hook_that_cannot_be_imported_is_a_run_error_naming_the_flag():
    from visionstress.tasks.base import RunError, import_callable

    with pytest.raises(RunError, match=r"--postprocess os:nope: os has no attribute 'nope' \(did you mean"):
        import_callable("os:nope", "--postprocess")
    with pytest.raises(RunError, match="--postprocess os: expected package.module:function"):
        import_callable("os", "--postprocess")
    assert import_callable("os.path:join", "--postprocess") is __import__("os").path.join
