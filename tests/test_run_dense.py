"""Detection and segmentation end to end: targets that move with the pixels, metrics equal to the references.

The oracle tests replace only the *content* of the model's predictions (with the ground truth each pass
scored against, or with the unmoved ground truth); everything else — datasets, perturbations, the
runner's scoring, records, scorecard — is the real path.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import visionstress as vs
from oracle import geometric_suite_file, route_predictions
from visionstress.cli import app
from visionstress.demo import demo_dir
from visionstress.records import read_records

GEOMETRIC = ("rotation", "perspective", "zoom_in", "zoom_out", "elastic_transform", "lens_distortion")
LIMIT = 24


@pytest.fixture(scope="module")
def geometric_suite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "geometric.yaml"
    geometric_suite_file(path, GEOMETRIC, [3, 5])
    return path


@pytest.fixture(scope="module")
def one_pass_suite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "one.yaml"
    path.write_text("name: one\nperturbations:\n  - {name: gaussian_noise, severities: [3]}\n")
    return path


def _boxes_of(batch):
    from visionstress.models import DetectorOutput

    return DetectorOutput(boxes=[t.boxes.clone() for t in batch.boxes],
                          scores=[torch.ones(len(t)) for t in batch.boxes],
                          labels=[t.labels.clone() for t in batch.boxes])


def _logits_of(masks: torch.Tensor, num_classes: int, ignore_index: int):
    from visionstress.models import SegmenterOutput

    labels = masks.clone()
    labels[labels == ignore_index] = 0
    return SegmenterOutput(logits=torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * 10)


def _metric_by_pass(card, metric: str) -> dict[tuple[str, int], float]:
    return {(r["perturbation"], r["severity"]): r["metrics"][metric] for r in card.results}


def test_oracle_detector_scores_ap_1_under_every_geometric_perturbation(monkeypatch, tmp_path, geometric_suite):
    route_predictions(monkeypatch, lambda view, original: _boxes_of(view))
    card = vs.run(task="detection", suite=str(geometric_suite), out=tmp_path / "moved", limit=LIMIT, workers=0,
                  device="cpu", bootstrap=0)
    for key, ap in _metric_by_pass(card, "AP").items():
        assert ap == pytest.approx(1.0, abs=1e-12), key


def test_a_detector_returning_unmoved_ground_truth_does_not(monkeypatch, tmp_path, geometric_suite):
    route_predictions(monkeypatch, lambda view, original: _boxes_of(original))
    card = vs.run(task="detection", suite=str(geometric_suite), out=tmp_path / "unmoved", limit=LIMIT, workers=0,
                  device="cpu", bootstrap=0)
    ap = _metric_by_pass(card, "AP")
    assert ap[("clean", 0)] == pytest.approx(1.0) and ap[("brightness", 5)] == pytest.approx(1.0)
    for name in GEOMETRIC:
        assert ap[(name, 5)] < 0.95, name  # the targets really moved


def test_oracle_segmenter_scores_miou_1_and_unmoved_masks_do_not(monkeypatch, tmp_path, geometric_suite):
    card_args = dict(task="segmentation", suite=str(geometric_suite), limit=LIMIT, workers=0, device="cpu",
                     bootstrap=0)
    route_predictions(monkeypatch, lambda view, original: _logits_of(view.masks, 7, view.ignore_index))
    moved = vs.run(out=tmp_path / "moved", **card_args)
    for key, miou in _metric_by_pass(moved, "mIoU").items():
        assert miou == pytest.approx(1.0, abs=1e-12), key
    route_predictions(monkeypatch, lambda view, original: _logits_of(original.masks, 7, view.ignore_index))
    unmoved = _metric_by_pass(vs.run(out=tmp_path / "unmoved", **card_args), "mIoU")
    assert unmoved[("brightness", 5)] == pytest.approx(1.0)
    for name in GEOMETRIC:
        assert unmoved[(name, 5)] < 0.95, name


def _demo_detections(root: Path) -> tuple[list[dict], dict]:
    """The shipped demo detector run directly, outside the harness, on every val image."""
    from safetensors.torch import load_file

    from visionstress.models.demo import tiny_detector

    coco = json.loads((root / "val_instances.json").read_text())
    model = tiny_detector()
    model.load_state_dict(load_file(root / "detector.safetensors"))
    model.eval()
    results = []
    with torch.inference_mode():
        for info in coco["images"]:
            pixels = np.array(Image.open(root / info["file_name"]).convert("RGB"))
            image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
            out = model([image])[0]
            for box, s, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
                x0, y0, x1, y1 = box
                results.append({"image_id": info["id"], "category_id": int(label), "score": float(s),
                                "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return results, coco


def test_demo_detection_clean_metrics_equal_cocoeval_on_the_shipped_model(tmp_path, one_pass_suite):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root = demo_dir()
    card = vs.run(task="detection", suite=str(one_pass_suite), out=tmp_path / "det", workers=0, device="cpu",
                  bootstrap=0)
    detections, _ = _demo_detections(root)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "val_instances.json"))
        evaluation = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    clean = card.results[0]["metrics"]
    for name, expected in zip(names, evaluation.stats):
        if expected < 0:
            assert np.isnan(clean[name]), name
        else:
            assert clean[name] == pytest.approx(float(expected), abs=1e-6), name
    assert clean["AP"] > 0.3  # the demo detector works on clean images


def test_demo_segmentation_clean_miou_equals_a_numpy_confusion(tmp_path, one_pass_suite):
    from safetensors.torch import load_file

    from visionstress.models.demo import tiny_segmenter

    root = demo_dir()
    card = vs.run(task="segmentation", suite=str(one_pass_suite), out=tmp_path / "seg", workers=0, device="cpu",
                  bootstrap=0)
    model = tiny_segmenter()
    model.load_state_dict(load_file(root / "segmenter.safetensors"))
    model.eval()
    confusion = np.zeros((7, 7), dtype=np.int64)
    for path in sorted((root / "val").rglob("*.png")):
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255
        with torch.inference_mode():
            labels = model(((pixels - 0.5) / 0.5)[None]).argmax(1)[0].numpy()
        mask = np.asarray(Image.open(root / "val_masks" / path.name))
        valid = mask != 255
        confusion += np.bincount(mask[valid].astype(np.int64) * 7 + labels[valid], minlength=49).reshape(7, 7)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    miou = float(np.mean(tp[union > 0] / union[union > 0]))
    assert card.results[0]["metrics"]["mIoU"] == pytest.approx(miou, abs=1e-9)
    assert card.results[0]["metrics"]["pixel_accuracy"] == pytest.approx(tp.sum() / confusion.sum(), abs=1e-9)


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_cli_runs_the_demo_for_dense_tasks(task, tmp_path):
    result = CliRunner().invoke(app, ["run", "--task", task, "--suite", "quick", "--limit", "12", "--workers", "0",
                                      "--device", "cpu", "--bootstrap", "20", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    metric = "AP" if task == "detection" else "mIoU"
    assert f"clean {metric}" in result.output
    card = vs.Scorecard.load(tmp_path)
    assert card.task == task
    records = read_records(tmp_path / "records.parquet")
    assert len(records) == 12 * (1 + sum(len(i["severities"]) for i in card.suite["perturbations"]))
    if task == "detection":
        assert {"per_class_ap", "size", "error_types"} <= set(card.breakdowns)
        assert "clean@0" in card.breakdowns["error_types"]
    else:
        assert {"per_class_iou", "confusion", "region_recall"} <= set(card.breakdowns)


def test_detection_run_refuses_bad_annotations_with_the_file_named(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "a.png")
    annotations = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
                   "annotations": [{"id": 7, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5], "area": 25,
                                    "iscrowd": 0}],
                   "categories": [{"id": 1, "name": "thing"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    result = CliRunner().invoke(app, ["run", "--task", "detection", "--model", "visionstress.models.demo:tiny_detector",
                                      "--data", str(path), "--images", str(images), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "instances.json" in result.output and "7" in result.output and "99" in result.output



def test_a_detection_set_with_no_annotated_object_is_refused_before_any_work(tmp_path):
    """Every AP and AR is undefined without a single object: a run would print NaN for hours of GPU time."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32)).save(images / name)
    annotations = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32},
                              {"id": 2, "file_name": "b.png", "width": 32, "height": 32}],
                   "annotations": [{"id": 7, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1}],
                   "categories": [{"id": 1, "name": "thing"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    args = ["run", "--task", "detection", "--model", "visionstress.models.demo:tiny_detector", "--data", str(path),
            "--images", str(images), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "instances.json: none of the 2 images has an annotated object" in result.output
    assert not (tmp_path / "out" / "scorecard.json").exists()
    skewed = CliRunner().invoke(app, ["skew"] + args[1:], env={"COLUMNS": "300"})
    assert skewed.exit_code == 2 and "none of the 2 images has an annotated object" in skewed.output


def test_dense_only_options_are_refused_for_classification(tmp_path):
    with pytest.raises(ValueError, match=r"--canvas does not apply to --task classification \(it is for detection\)"):
        vs.run(canvas=(64, 64), out=tmp_path)


def _mixed_size_coco(root: Path) -> Path:
    """Six images of three sizes with one or two boxes each: a COCO dataset the runner must batch by shape."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i, (h, w) in enumerate([(48, 64), (64, 48), (48, 64), (80, 80), (64, 48), (80, 80)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        for _ in range(1 + i % 2):
            x, y = float(rng.uniform(0, w / 2)), float(rng.uniform(0, h / 2))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(1 + i % 2),
                                "bbox": [x, y, float(rng.uniform(8, w / 2)), float(rng.uniform(8, h / 2))],
                                "iscrowd": 0})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return path


@pytest.mark.parametrize("canvas", [None, (96, 128)])
def test_mixed_sizes_and_the_letterbox_canvas_map_predictions_back(monkeypatch, tmp_path, geometric_suite, canvas):
    """Predictions in the batch's pixels (the canvas when letterboxed) are scored in the original image's:
    the oracle keeps AP = 1, and the scorecard's clean row equals COCOeval on the original annotations."""
    data = _mixed_size_coco(tmp_path)
    route_predictions(monkeypatch, lambda view, original: _boxes_of(view))
    card = vs.run("visionstress.models.demo:tiny_detector", data, task="detection", suite=str(geometric_suite),
                  canvas=canvas, batch_size=4, workers=0, device="cpu", bootstrap=0, gallery=0, out=tmp_path / "out")
    assert card.dataset["num_samples"] == 6
    for key, ap in _metric_by_pass(card, "AP").items():
        assert ap == pytest.approx(1.0, abs=1e-12), key
    records = read_records(tmp_path / "out" / "records.parquet")
    clean = records[records.perturbation == "clean"].sort_values("sample_id")
    originals = json.loads(data.read_text())["annotations"]
    for sample_id, boxes in zip(clean.sample_id, clean.gt_boxes):
        expected = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                    for a in originals if a["image_id"] == sample_id + 1]
        np.testing.assert_allclose(np.stack(list(boxes)), np.array(expected), atol=1e-3)


def bare_segmenter(num_classes: int = 7):
    """The demo segmenter's architecture without the preprocessing the demo factory declares."""
    from visionstress.models.demo import tiny_segmenter

    model = tiny_segmenter(num_classes)
    model.__dict__.pop("data_config", None)
    return model


def test_a_segmenter_whose_preprocessing_nobody_declared_is_warned_about(tmp_path, one_pass_suite, monkeypatch):
    from visionstress.demo import demo_arguments

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    demo = demo_arguments("segmentation")
    common = dict(task="segmentation", masks=demo["masks"], class_names=demo["class_names"], suite=str(one_pass_suite),
                  limit=4, workers=0, device="cpu", bootstrap=0, skip_label_check=True)
    card = vs.run("test_run_dense:bare_segmenter", demo["data"], out=tmp_path / "assumed", **common)
    [warning] = card.dataset["warnings"]
    assert "the ImageNet defaults were assumed: ImageNet mean/std" in warning and "--mean/--std" in warning
    card = vs.run("test_run_dense:bare_segmenter", demo["data"], out=tmp_path / "chosen", mean=(0.5, 0.5, 0.5),
                  std=(0.5, 0.5, 0.5), **common)
    assert not card.dataset.get("warnings")
