"""No silent label mismatches: a model right in another numbering stops the run with the likely fix named;
a merely bad model does not; unknown detector labels are counted and reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import visionstress as vs
from visionstress.demo import demo_arguments
from visionstress.label_check import classification_mismatch, detection_mismatch
from visionstress.models.demo import tiny_classifier, tiny_detector

SUITE = "name: one\nperturbations:\n  - {name: brightness, severities: [1]}\n"
DEMO_PREPROCESSING = dict(input_size=64, resize=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
"""The demo classifier's own DataConfig (its weights metadata), which a factory wrapping it must be given."""
PERMUTATION = [2, 0, 1, 5, 3, 4]


def _classifier(transform):
    model = tiny_classifier()
    model.load_state_dict(load_file(demo_arguments()["weights"]))
    model.eval()

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return transform(self.inner(x))

    return Wrapped()


def shifted_classifier():
    """The demo classifier whose output i is the demo's class i - 1 (an off-by-one class list)."""
    return _classifier(lambda z: z.roll(1, dims=1))


def permuted_classifier():
    return _classifier(lambda z: z[:, PERMUTATION])


def _detector(relabel):
    model = tiny_detector()
    model.load_state_dict(load_file(demo_arguments("detection")["weights"]))
    model.eval()

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, images):
            return [{**d, "labels": relabel(d["labels"])} for d in self.inner(images)]

    return Wrapped()


def zero_based_detector():
    """The demo detector returning 0-based labels against the dataset's category ids 1..6."""
    return _detector(lambda labels: labels - 1)


def permuted_detector():
    lookup = torch.tensor([0] + [p + 1 for p in PERMUTATION])
    return _detector(lambda labels: lookup[labels])


def far_shifted_detector():
    """Labels no dataset category takes at all (COCO-80 indices against a subset's COCO ids look alike)."""
    return _detector(lambda labels: labels + 100)


def unknown_label_detector():
    return _detector(lambda labels: torch.where(labels == 1, torch.full_like(labels, 999), labels))


@pytest.fixture
def suite(tmp_path) -> Path:
    path = tmp_path / "one.yaml"
    path.write_text(SUITE)
    return path


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


@pytest.mark.parametrize("factory, expected", [
    ("shifted_classifier", r"follow predicted label = true label \+ 1; the model's output indices are shifted"),
    ("permuted_classifier", r"another order than the dataset's: give --class-names"),
])
def test_a_classifier_in_another_numbering_stops_the_run(tmp_path, suite, factory, expected):
    demo = demo_arguments()
    with pytest.raises(vs.RunError, match=expected):
        vs.run(f"test_label_check:{factory}", demo["data"], suite=str(suite), workers=0, bootstrap=0,
               out=tmp_path / "run", **DEMO_PREPROCESSING)
    card = vs.run(f"test_label_check:{factory}", demo["data"], suite=str(suite), workers=0, bootstrap=0,
                  out=tmp_path / "anyway", skip_label_check=True, limit=24, **DEMO_PREPROCESSING)
    assert card.metric("top1") < 0.2


@pytest.mark.parametrize("factory, expected", [
    ("zero_based_detector", r"carry the object's category \(label map: identity .*shifted: predicted label = true "
                            r"label - 1"),
    ("permuted_detector", r"the labels are permuted: model label -> dataset label"),
])
def test_a_detector_in_another_numbering_stops_the_run(tmp_path, suite, factory, expected):
    demo = demo_arguments("detection")
    with pytest.raises(vs.RunError, match=expected):
        vs.run(f"test_label_check:{factory}", demo["data"], task="detection", suite=str(suite), workers=0,
               bootstrap=0, out=tmp_path / "run")


def test_unknown_detector_labels_are_counted_and_reported(tmp_path, suite):
    demo = demo_arguments("detection")
    card = vs.run("test_label_check:unknown_label_detector", demo["data"], task="detection", suite=str(suite),
                  workers=0, bootstrap=0, out=tmp_path / "run", limit=48)
    assert card.data_config["unmapped_predictions"] > 0 and card.data_config["unmapped_labels"] == [999]
    assert any("label no dataset category takes (labels 999" in w for w in card.dataset["warnings"])
    assert card.data_config["label_map_source"].startswith("identity (assumed")


def test_a_bad_model_is_not_mistaken_for_a_numbering_problem():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 200)
    assert classification_mismatch(labels, rng.integers(0, 6, 200), [str(i) for i in range(6)]) is None
    assert classification_mismatch(labels, labels, [str(i) for i in range(6)]) is None
    boxes = [[10.0, 10.0, 30.0, 30.0]]
    images = [{"gt_boxes": boxes, "gt_labels": [int(g)], "pred_boxes": boxes, "pred_labels": [int(p)], "pred_scores": [0.9]}
              for g, p in zip(labels % 3 + 1, rng.integers(1, 4, 200))]
    assert detection_mismatch(images, [1, 2, 3], "identity") is None  # random labels on the right boxes


@pytest.mark.parametrize("task, factory", [("classification", "shifted_classifier"),
                                           ("detection", "zero_based_detector")])
def test_resuming_a_run_the_label_check_stopped_checks_again(tmp_path, suite, task, factory):
    """Small batches commit before the check decides: `--resume` must not skip it and finish the run with
    every label wrong (the check reads the committed clean records too)."""
    demo = demo_arguments(task)
    extra = DEMO_PREPROCESSING if task == "classification" else {}
    options = dict(task=task, suite=str(suite), workers=0, bootstrap=0, out=tmp_path / "run", batch_size=8,
                   **extra)
    with pytest.raises(vs.RunError, match="labels look mismatched"):
        vs.run(f"test_label_check:{factory}", demo["data"], **options)
    assert list((tmp_path / "run" / "records.parts").glob("*.parquet")), "no batch was committed before the check"
    with pytest.raises(vs.RunError, match="labels look mismatched"):
        vs.run(f"test_label_check:{factory}", demo["data"], resume=True, **options)


def test_a_detector_whose_labels_no_category_takes_stops_the_run(tmp_path, suite):
    """Unmapped detections are dropped before scoring, so the on-object check never sees them: a model in
    a numbering that misses every dataset id must still stop the run, not score AP 0 to the end."""
    demo = demo_arguments("detection")
    with pytest.raises(vs.RunError, match=r"detections so far carry labels no dataset category "
                                          r"takes \(labels 101, .*--label-map"):
        vs.run("test_label_check:far_shifted_detector", demo["data"], task="detection", suite=str(suite),
               workers=0, bootstrap=0, out=tmp_path / "run")
