"""Detection and segmentation models: task-aware loading, the detector and segmenter adapters, label maps."""

from __future__ import annotations

import hashlib
import json
import sys
import types
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torchvision.models import detection, segmentation
from torchvision.ops import batched_nms, box_convert

from visionstress.models import (
    COCO80_TO_COCO91,
    DataConfig,
    DetectorAdapter,
    LabelMapError,
    LoadedModel,
    ModelLoadError,
    ModelOutputError,
    SegmenterAdapter,
    UntrustedModelError,
    load_model,
    resolve_label_map,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*random weights:UserWarning")

IMAGENET = DataConfig()  # mean/std of torchvision's segmentation weights


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def normalised(images: torch.Tensor, config: DataConfig) -> torch.Tensor:
    x = images.double() / 255.0
    if config.channel_order == "BGR":
        x = x[:, [2, 1, 0]]
    mean = torch.tensor(config.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float64).view(1, 3, 1, 1)
    return ((x - mean) / std).float()


# --- torchvision detectors -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frcnn7(tmp_path_factory):
    """An untrained 7-class fasterrcnn_mobilenet_v3_large_320_fpn, its state dict as .pth and
    .safetensors, the whole pickled module, and two 160x160 images."""
    torch.manual_seed(0)
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=7)
    model.eval()
    root = tmp_path_factory.mktemp("frcnn")
    torch.save(model.state_dict(), root / "frcnn.pth")
    save_file(model.state_dict(), str(root / "frcnn.safetensors"))
    torch.save(model, root / "frcnn_module.pth")
    images = torch.randint(0, 256, (2, 3, 160, 160), dtype=torch.uint8)
    return model, root, images


def test_torchvision_detector_round_trip(frcnn7):
    model, root, images = frcnn7
    spec = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
    for suffix, fmt in (("pth", "state_dict"), ("safetensors", "safetensors")):
        path = root / f"frcnn.{suffix}"
        loaded = load_model(spec, weights=str(path), task="detection")
        # the head width (7) comes from the checkpoint; the 91 COCO names do not fit it
        assert (loaded.format, loaded.sha256, loaded.num_classes, loaded.categories) == (fmt, sha256(path), 7, None)
        assert loaded.data_config is None and not loaded.module.training
        for a, b in zip(loaded.module.state_dict().values(), model.state_dict().values()):
            assert torch.equal(a, b)
    adapter = DetectorAdapter(loaded)
    out = adapter.predict(images)
    with torch.no_grad():
        expected = model([image.float() / 255 for image in images])
    assert len(out.boxes) == 2 and adapter.unmapped == 0
    for i in range(2):
        assert out.boxes[i].dtype == torch.float32 and out.scores[i].dtype == torch.float32
        assert out.labels[i].dtype == torch.int64 and len(out.boxes[i]) > 0
        torch.testing.assert_close(out.boxes[i], expected[i]["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(out.scores[i], expected[i]["scores"], atol=1e-5, rtol=1e-4)
        assert torch.equal(out.labels[i], expected[i]["labels"])
        assert out.boxes[i].min() >= 0 and out.boxes[i].max() <= 160


def test_pickled_detector_is_refused(frcnn7):
    _, root, _ = frcnn7
    path = root / "frcnn_module.pth"
    with pytest.raises(UntrustedModelError, match="frcnn_module.pth: is a pickle .* arbitrary code"):
        load_model(str(path), task="detection")
    with pytest.raises(UntrustedModelError, match="state dict"):
        load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", weights=str(path), task="detection")


def test_contradicting_num_classes_names_the_checkpoint_width(frcnn7):
    _, root, _ = frcnn7
    with pytest.raises(ModelLoadError, match=r"frcnn\.pth: .*head has 7 classes but num_classes=5.*--num-classes 7"):
        load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", weights=str(root / "frcnn.pth"),
                   num_classes=5, task="detection")


def test_untrained_detector_carries_coco_names_from_metadata():
    with pytest.warns(UserWarning, match="random weights"):
        loaded = load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", task="detection")
    assert (loaded.num_classes, loaded.format, loaded.data_config) == (91, "random-init", None)
    assert len(loaded.categories) == 91 and loaded.categories[1] == "person" and loaded.categories[90] == "toothbrush"


def test_anchor_head_width_is_read_from_the_checkpoint(tmp_path):
    """SSDlite's classification head has 6 anchors x classes rows: 5 classes must come back as 5, not 30."""
    torch.manual_seed(0)
    model = detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    save_file(model.state_dict(), str(tmp_path / "ssd.safetensors"))
    loaded = load_model("torchvision:ssdlite320_mobilenet_v3_large", weights=str(tmp_path / "ssd.safetensors"),
                        task="detection")
    assert loaded.num_classes == 5
    for a, b in zip(loaded.module.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_task_aware_name_errors():
    with pytest.raises(ModelLoadError, match="not a detection model"):
        load_model("torchvision:resnet18", task="detection")
    with pytest.raises(ModelLoadError, match="did you mean fasterrcnn_resnet50_fpn"):
        load_model("torchvision:fasterrcnn_resnet50", task="detection")
    with pytest.raises(ModelLoadError, match="keypoint detectors are not supported"):
        load_model("torchvision:keypointrcnn_resnet50_fpn", task="detection")
    with pytest.raises(ModelLoadError, match="not a segmentation model"):
        load_model("torchvision:retinanet_resnet50_fpn", task="segmentation")
    with pytest.raises(ModelLoadError, match="detection model; pass task='detection'"):
        load_model("torchvision:fasterrcnn_resnet50_fpn")
    with pytest.raises(ModelLoadError, match="timm models are classifiers"):
        load_model("timm:resnet50", task="segmentation")
    with pytest.raises(ModelLoadError, match="unknown task 'keypoints'"):
        load_model("torchvision:resnet18", task="keypoints")


def test_factory_detector_with_categories():
    def build():
        net = nn.Conv2d(3, 3, 1)
        net.categories = ["cat", "dog"]
        return net

    module = types.ModuleType("vs_test_det_factory")
    module.build = build
    module.build_plain = lambda: nn.Conv2d(3, 3, 1)
    module.categories = ["a", "b", "c"]
    sys.modules[module.__name__] = module
    try:
        assert load_model("vs_test_det_factory:build", task="detection").categories == ["cat", "dog"]
        assert load_model("vs_test_det_factory:build_plain", task="detection").categories == ["a", "b", "c"]
    finally:
        del sys.modules[module.__name__]


@pytest.mark.parametrize("task,shape,width", [
    ("classification", ["N", 6], 6), ("segmentation", ["N", 6, 8, 8], 6), ("detection", ["N", 100, 85], None),
])
def test_onnx_class_count_follows_the_task(tmp_path, monkeypatch, task, shape, width):
    """A raw YOLO output's last axis (4 + 1 + 80) is not a class count; a mask's class axis is 1."""
    path = tmp_path / "m.onnx"
    path.write_bytes(b"onnx")
    node = types.SimpleNamespace

    class FakeSession:
        def __init__(self, file, providers):
            pass

        def get_inputs(self):
            return [node(name="pixels", shape=["N", 3, 8, 8])]

        def get_outputs(self):
            return [node(name="out", shape=shape)]

    monkeypatch.setitem(sys.modules, "onnxruntime", types.SimpleNamespace(InferenceSession=FakeSession))
    assert load_model(str(path), task=task).num_classes == width


# --- the detector adapter on fake models ------------------------------------------------------------


class FakeDetector(nn.Module):
    """Returns `outputs` (torchvision convention) and records what it was called with."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs
        self.seen = None

    def forward(self, images):
        self.seen = images
        return self.outputs


def dets(boxes, scores=None, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    scores = torch.full((n,), 0.9) if scores is None else torch.tensor(scores, dtype=torch.float32)
    labels = torch.ones(n, dtype=torch.int64) if labels is None else torch.as_tensor(labels)
    return {"boxes": boxes, "scores": scores, "labels": labels}


def named(module, spec="my-detector"):
    return LoadedModel(module, spec, None, None, "python", None, None)


def test_detector_gets_a_list_of_unit_range_images_and_boxes_are_clipped():
    images = torch.randint(0, 256, (2, 3, 100, 120), dtype=torch.uint8)
    fake = FakeDetector([dets([[-5, -5, 500, 20], [10, 10, 30, 40]]), dets([])])
    out = DetectorAdapter(fake).predict(images)
    assert isinstance(fake.seen, list) and len(fake.seen) == 2
    assert fake.seen[0].shape == (3, 100, 120) and fake.seen[0].dtype == torch.float32
    torch.testing.assert_close(torch.stack(fake.seen), images.float() / 255)
    torch.testing.assert_close(out.boxes[0], torch.tensor([[0.0, 0.0, 120.0, 20.0], [10.0, 10.0, 30.0, 40.0]]))
    assert out.boxes[1].shape == (0, 4) and out.labels[1].shape == (0,)


def test_detector_data_config_normalises_before_the_model():
    images = torch.randint(0, 256, (1, 3, 32, 48), dtype=torch.uint8)
    config = DataConfig(mean=(0.1, 0.2, 0.3), std=(0.5, 0.4, 0.3), channel_order="BGR")
    fake = FakeDetector([dets([])])
    DetectorAdapter(fake, data_config=config).predict(images)
    torch.testing.assert_close(torch.stack(fake.seen), normalised(images, config))


@pytest.mark.parametrize(
    "outputs,match",
    [
        ({"boxes": torch.zeros(0, 4)}, r"my-detector: expected a list of 2 dicts .* got a dict"),
        ([dets([])], r"my-detector: expected a list of 2 dicts .* got a list of 1"),
        ([dets([]), {"bbox": torch.zeros(0, 4), "scores": torch.zeros(0)}],
         r"image 1's detections have no boxes, labels"),
        ([dets([]), {**dets([]), "boxes": torch.zeros(3)}], r"image 1: expected boxes \[M, 4\]"),
        ([dets([]), {**dets([[0, 0, 1, 1]]), "scores": torch.zeros(2)}], r"image 1: expected boxes \[M, 4\]"),
        ([dets([[0, 0, float("nan"), 1]]), dets([], [])], r"my-detector: 1 of 2 images got NaN or infinite boxes"),
        ([dets([[0, 0, 1, 1]], [float("inf")]), dets([[0, 0, 1, 1]], [float("nan")])], r"2 of 2 images got NaN"),
        ([dets([]), dets([[0, 0, 1, 1], [5, 5, 2, 9]])], r"image 1 has 1 boxes with negative width or height"),
        ([dets([]), dets([[0, 0, 1, 1]], labels=[0.5])], r"image 1: labels must be whole class indices"),
    ],
)
def test_detector_output_validation(outputs, match):
    adapter = DetectorAdapter(named(FakeDetector(outputs)))
    with pytest.raises(ModelOutputError, match=match):
        adapter.predict(torch.rand(2, 3, 16, 16))


def test_detector_failure_names_the_model():
    class Broken(nn.Module):
        def forward(self, images):
            raise RuntimeError("boom")

    with pytest.raises(ModelOutputError, match=r"broken-net: the model failed .*RuntimeError: boom"):
        DetectorAdapter(named(Broken(), "broken-net")).predict(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        DetectorAdapter(FakeDetector([])).predict(torch.rand(3, 8, 8))


def test_label_map_translates_and_counts_unmapped():
    fake = FakeDetector([dets([[0, 0, 1, 1]] * 4, labels=[0, 1, 2, 7]), dets([[0, 0, 1, 1]], labels=[-1])])
    adapter = DetectorAdapter(fake, label_map={0: 1, 2: 13})
    out = adapter.predict(torch.rand(2, 3, 8, 8))
    assert out.labels[0].tolist() == [1, 13] and len(out.boxes[0]) == len(out.scores[0]) == 2
    assert out.labels[1].tolist() == [] and adapter.unmapped == 3
    adapter.predict(torch.rand(2, 3, 8, 8))
    assert adapter.unmapped == 6  # counted over every batch


class RawYolo(nn.Module):
    """A YOLO-style head output: [B, N, 4 + 1 + K] with (cx, cy, w, h, objectness, class scores)."""

    def __init__(self, raw):
        super().__init__()
        self.raw = raw
        self.seen = None

    def forward(self, x):
        self.seen = x
        return self.raw


def decode(raw: torch.Tensor, images: torch.Tensor, threshold: float = 0.25) -> list[dict[str, torch.Tensor]]:
    """A user's decode + NMS, as it would be written for a YOLO model."""
    results = []
    for row in raw:
        class_scores, labels = row[:, 5:].max(1)
        scores = row[:, 4] * class_scores
        keep = scores > threshold
        boxes = box_convert(row[keep, :4], "cxcywh", "xyxy")
        scores, labels = scores[keep], labels[keep]
        kept = batched_nms(boxes, scores, labels, 0.5)
        results.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]})
    return results


def test_postprocess_hook_decodes_a_raw_yolo_tensor():
    k = 80
    raw = torch.zeros(2, 4, 4 + 1 + k)
    raw[0, 0, :5] = torch.tensor([20.0, 20.0, 10.0, 10.0, 0.9])
    raw[0, 0, 5 + 11] = 1.0  # stop sign
    raw[0, 1, :5] = torch.tensor([21.0, 20.0, 10.0, 10.0, 0.8])  # duplicate of the first: NMS removes it
    raw[0, 1, 5 + 11] = 1.0
    raw[0, 2, :5] = torch.tensor([50.0, 10.0, 20.0, 8.0, 0.7])
    raw[0, 2, 5 + 0] = 1.0  # person
    raw[1, 0, :5] = torch.tensor([5.0, 5.0, 4.0, 4.0, 0.6])
    raw[1, 0, 5 + 79] = 1.0  # toothbrush: not in this dataset
    fake = RawYolo(raw)
    label_map = resolve_label_map("coco80", [{"id": 1, "name": "person"}, {"id": 13, "name": "stop sign"}])
    adapter = DetectorAdapter(fake, postprocess=decode, label_map=label_map)
    images = torch.rand(2, 3, 64, 64)
    out = adapter.predict(images)
    assert fake.seen.shape == (2, 3, 64, 64)  # the batched tensor, not a list
    assert out.labels[0].tolist() == [13, 1] and out.labels[1].tolist() == []
    torch.testing.assert_close(out.boxes[0], torch.tensor([[15.0, 15.0, 25.0, 25.0], [40.0, 6.0, 60.0, 14.0]]))
    torch.testing.assert_close(out.scores[0], torch.tensor([0.9, 0.7]))
    assert adapter.unmapped == 1


def test_postprocess_failure_is_reported_as_such():
    def bad(raw, images):
        raise KeyError("anchors")

    with pytest.raises(ModelOutputError, match="postprocess failed"):
        DetectorAdapter(RawYolo(torch.zeros(1, 1, 6)), postprocess=bad).predict(torch.rand(1, 3, 8, 8))


# --- torchvision segmenters -------------------------------------------------------------------------


@pytest.mark.parametrize("name,aux", [("deeplabv3_mobilenet_v3_large", True), ("lraspp_mobilenet_v3_large", False)])
def test_torchvision_segmenter_round_trip(tmp_path, name, aux):
    torch.manual_seed(0)
    model = segmentation.__dict__[name](weights=None, weights_backbone=None, num_classes=5,
                                        **({"aux_loss": True} if aux else {})).eval()
    path = tmp_path / "seg.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_model(f"torchvision:{name}", weights=str(path), task="segmentation")
    assert (loaded.num_classes, loaded.format, loaded.categories) == (5, "safetensors", None)
    assert (getattr(loaded.module, "aux_classifier", None) is not None) == aux
    # the weights' published preset: ImageNet mean/std, evaluated at 520 pixels (not enforced)
    assert loaded.data_config == DataConfig((520, 520), 520, "bilinear")
    images = torch.randint(0, 256, (2, 3, 72, 96), dtype=torch.uint8)
    out = SegmenterAdapter(loaded, loaded.data_config).predict(images)
    assert out.logits.shape == (2, 5, 72, 96) and out.logits.dtype == torch.float32
    with torch.no_grad():
        expected = model(normalised(images, IMAGENET))["out"]
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(out.labels, expected.argmax(1))


def test_dataset_classes_size_only_an_untrained_head(tmp_path):
    """The dataset's class count is a default for a head built from scratch, never an override: the user's
    num_classes wins, and a checkpoint's head decides its own width."""
    name = "torchvision:lraspp_mobilenet_v3_large"
    assert load_model(name, task="segmentation", dataset_classes=4).num_classes == 4
    assert load_model(name, task="segmentation", num_classes=6, dataset_classes=4).num_classes == 6
    model = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    path = tmp_path / "seg.safetensors"
    save_file(model.state_dict(), str(path))
    assert load_model(name, weights=str(path), task="segmentation", dataset_classes=4).num_classes == 5


def test_fcn_returns_a_dict_with_out():
    with pytest.warns(UserWarning, match="random weights"):
        loaded = load_model("torchvision:fcn_resnet50", task="segmentation")
    assert loaded.num_classes == 21 and loaded.categories[0] == "__background__" and loaded.categories[15] == "person"
    out = SegmenterAdapter(loaded, loaded.data_config).predict(torch.rand(1, 3, 40, 56))
    assert out.logits.shape == (1, 21, 40, 56)


# --- the segmenter adapter on fake models -----------------------------------------------------------


class FakeSegmenter(nn.Module):
    def __init__(self, wrap, classes=4, stride=1, fill=None):
        super().__init__()
        self.wrap, self.classes, self.stride, self.fill = wrap, classes, stride, fill

    def forward(self, x):
        torch.manual_seed(1)
        b, _, h, w = x.shape
        logits = torch.randn(b, self.classes, h // self.stride, w // self.stride)
        if self.fill is not None:
            logits[0, 0, 0, 0] = self.fill
        if self.wrap == "dict":
            return OrderedDict(out=logits, aux=torch.full_like(logits, float("nan")))
        if self.wrap == "hf":
            return types.SimpleNamespace(logits=logits)
        return logits


@pytest.mark.parametrize("wrap", ["tensor", "dict", "hf"])
def test_segmenter_output_forms_and_upsampling(wrap):
    images = torch.rand(2, 3, 32, 48)
    out = SegmenterAdapter(FakeSegmenter(wrap, stride=4), IMAGENET).predict(images)
    raw = FakeSegmenter("tensor", stride=4)(images)
    expected = F.interpolate(raw, size=(32, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.logits, expected)


def test_segmenter_normalises_like_the_classifier():
    seen = {}

    def model(x):
        seen["x"] = x
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    images = torch.randint(0, 256, (1, 3, 20, 30), dtype=torch.uint8)
    config = DataConfig(mean=(0.1, 0.2, 0.3), std=(0.5, 0.4, 0.3), channel_order="BGR")
    SegmenterAdapter(model, config).predict(images)
    torch.testing.assert_close(seen["x"], normalised(images, config))


def test_segmenter_validation():
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(ModelOutputError, match=r"seg-net: 1 of 2 images got NaN or infinite logits"):
        SegmenterAdapter(named(FakeSegmenter("tensor", fill=float("nan")), "seg-net"), IMAGENET).predict(images)
    with pytest.raises(ModelOutputError, match="returned 4 class channels, but the dataset has 6 classes"):
        SegmenterAdapter(FakeSegmenter("tensor"), IMAGENET, num_classes=6).predict(images)
    with pytest.raises(ModelOutputError, match=r"a dict with keys aux"):
        SegmenterAdapter(lambda x: {"aux": x}, IMAGENET).predict(images)
    with pytest.raises(ModelOutputError, match=r"expected logits of shape \[2, num_classes, H, W\]"):
        SegmenterAdapter(lambda x: x.mean((2, 3)), IMAGENET).predict(images)
    adapter = SegmenterAdapter(FakeSegmenter("tensor", classes=3), IMAGENET)
    assert adapter.num_classes == 3  # fixed by a probe batch, then held
    adapter.model = FakeSegmenter("tensor", classes=5)
    with pytest.raises(ModelOutputError, match="returned 5 class channels, but the model has 3 classes"):
        adapter.predict(images)


# --- label maps -------------------------------------------------------------------------------------

COCO_SUBSET = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 13, "name": "stop sign"}]


def test_coco80_matches_torchvision_coco_categories():
    """torchvision's COCO names are indexed by category id, with N/A at the ids COCO does not use."""
    names = detection.FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    used = [i for i, name in enumerate(names) if name not in ("__background__", "N/A")]
    assert list(COCO80_TO_COCO91) == list(range(80)) and list(COCO80_TO_COCO91.values()) == used
    assert (COCO80_TO_COCO91[0], COCO80_TO_COCO91[79], COCO80_TO_COCO91[11]) == (1, 90, 13)
    assert (names[1], names[90], names[13]) == ("person", "toothbrush", "stop sign")


def test_preset_label_maps():
    assert resolve_label_map("coco80", COCO_SUBSET) == {0: 1, 2: 3, 11: 13}
    assert resolve_label_map("identity", COCO_SUBSET) is None
    assert resolve_label_map(None, COCO_SUBSET) is None
    with pytest.raises(LabelMapError, match="not COCO-numbered"):
        resolve_label_map("coco80", [{"id": 100, "name": "widget"}])


def test_label_map_files_and_dicts(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"0": 1, "1": "Car", "5": "stop sign"}))
    (tmp_path / "map.yaml").write_text("0: 1\n1: car\n")
    assert resolve_label_map(tmp_path / "map.json", COCO_SUBSET) == {0: 1, 1: 3, 5: 13}
    assert resolve_label_map(str(tmp_path / "map.yaml"), COCO_SUBSET) == {0: 1, 1: 3}
    assert resolve_label_map({2: "person"}, COCO_SUBSET) == {2: 1}
    (tmp_path / "bad.json").write_text(json.dumps({"0": 1, "1": 2}))
    with pytest.raises(LabelMapError, match=r"bad\.json: key '1': 2 is not a category id or name of the dataset"):
        resolve_label_map(tmp_path / "bad.json", COCO_SUBSET)
    (tmp_path / "names.yaml").write_text("0: bicycle\n")
    with pytest.raises(LabelMapError, match=r"names\.yaml: key 0: 'bicycle' is not a category"):
        resolve_label_map(tmp_path / "names.yaml", COCO_SUBSET)
    (tmp_path / "keys.yaml").write_text("person: 1\n")
    with pytest.raises(LabelMapError, match=r"keys\.yaml: key 'person': a model label must be a non-negative integer"):
        resolve_label_map(tmp_path / "keys.yaml", COCO_SUBSET)
    (tmp_path / "list.yaml").write_text("- 1\n- 3\n")
    with pytest.raises(LabelMapError, match=r"list\.yaml: expected a mapping"):
        resolve_label_map(tmp_path / "list.yaml", COCO_SUBSET)
    with pytest.raises(LabelMapError, match=r"nope\.json: label map file not found"):
        resolve_label_map(tmp_path / "nope.json", COCO_SUBSET)


def test_label_map_by_model_category_names():
    with pytest.warns(UserWarning, match="1 dataset categories have no model category.*stop sign"):
        mapping = resolve_label_map(None, COCO_SUBSET, ["background", "Person", "CAR"])
    assert mapping == {1: 1, 2: 3}
    # torchvision's COCO detectors: names indexed by COCO id, so the map is the identity on the subset
    names = detection.FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    assert resolve_label_map(None, COCO_SUBSET, names) == {1: 1, 3: 3, 13: 13}


def test_no_common_names_explains_the_numbering_trap():
    with pytest.raises(LabelMapError, match=r"share no name.*ids 1\.\.90 with gaps.*0\.\.79.*--label-map coco80"):
        resolve_label_map(None, COCO_SUBSET, ["class0", "class1"])



# --- CUDA -------------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_dense_adapters_on_cuda_with_and_without_amp(frcnn7, tmp_path):
    """Outputs come back float32 on the adapter's device, bf16 autocast included."""
    _, root, images = frcnn7
    detector = load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", weights=str(root / "frcnn.pth"),
                          task="detection")
    torch.manual_seed(0)
    model = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5).eval()
    with torch.no_grad():
        expected = model(normalised(images, IMAGENET))["out"]
    for amp in (False, True):
        out = DetectorAdapter(detector, device="cuda", amp=amp).predict(images)
        for tensors, dtype in ((out.boxes, torch.float32), (out.scores, torch.float32), (out.labels, torch.int64)):
            assert all(t.device.type == "cuda" and t.dtype == dtype for t in tensors)
        logits = SegmenterAdapter(model, IMAGENET, device="cuda", amp=amp).predict(images.cuda()).logits
        assert logits.device.type == "cuda" and logits.dtype == torch.float32 and logits.shape == (2, 5, 160, 160)
        tolerance = 0.1 if amp else 1e-2  # TF32 convolutions; bf16 keeps about three significant digits
        torch.testing.assert_close(logits.cpu(), expected, atol=tolerance, rtol=tolerance)


def test_segmenter_labels_are_the_argmax_computed_once():
    from visionstress.models import SegmenterOutput

    output = SegmenterOutput(torch.randn(2, 5, 8, 8))
    assert torch.equal(output.labels, output.logits.argmax(1))
    assert output.labels is output.labels  # the evaluator and the gallery share one argmax per pass
