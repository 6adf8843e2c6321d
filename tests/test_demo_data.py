"""The bundled demo (data/demo/shapes): reproducible from its script, internally consistent, and the
shipped classifier scores what its metadata says."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from visionstress.models.demo import DEMO_DATA_CONFIG, tiny_classifier

DATA = Path(__file__).resolve().parents[1] / "data"
SHAPES = DATA / "demo" / "shapes"


def _load_script(name: str):
    """data/ holds scripts, not a package: import one by path."""
    spec = importlib.util.spec_from_file_location(name, DATA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator():
    return _load_script("make_demo_dataset")


@pytest.fixture(scope="module")
def coco() -> dict:
    return json.loads((SHAPES / "val_instances.json").read_text())


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_generator_reproduces_shipped_files(generator, tmp_path):
    generator.write_dataset(tmp_path, per_class=2)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    assert len(written) == 2 * 2 * len(generator.CLASSES)  # image + mask each
    for rel in written:
        assert np.array_equal(_pixels(tmp_path / rel), _pixels(SHAPES / rel)), rel
    assert (tmp_path / "classes.txt").read_text() == (SHAPES / "classes.txt").read_text()


def test_samples_depend_only_on_split_and_index(generator):
    a, b = generator.render_sample("val", 17), generator.render_sample("val", 17)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.polygon == b.polygon
    images, labels = generator.render_split("train", 12)
    assert np.array_equal(images[7], generator.render_sample("train", 7).image.transpose(2, 0, 1))
    assert labels.tolist() == [i % len(generator.CLASSES) for i in range(12)]
    assert not np.array_equal(generator.render_sample("train", 3).image, generator.render_sample("val", 3).image)
    with pytest.raises(ValueError, match="split"):
        generator.render_sample("test", 0)


def test_train_backgrounds_correlate_with_class_and_val_backgrounds_do_not(generator, coco):
    train = [generator.render_sample("train", i) for i in range(300)]
    match = np.mean([s.background == s.label for s in train])
    assert match > 0.4  # the shortcut: chance is 1/6
    counts = np.zeros((len(generator.CLASSES), len(generator.BACKGROUNDS)), int)
    labels = {a["image_id"]: a["category_id"] - 1 for a in coco["annotations"]}
    for info in coco["images"]:
        counts[labels[info["id"]], generator.BACKGROUNDS.index(info["background"])] += 1
    assert (counts == counts[0, 0]).all()  # every class on every background equally often


def test_classes_match_folders_and_categories(coco):
    classes = (SHAPES / "classes.txt").read_text().split()
    assert classes == sorted(p.name for p in (SHAPES / "val").iterdir() if p.is_dir())
    assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == classes
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(classes) + 1))


def test_every_val_image_has_a_consistent_mask_and_annotation(coco):
    classes = (SHAPES / "classes.txt").read_text().split()
    files = sorted(str(p.relative_to(SHAPES)) for p in (SHAPES / "val").rglob("*.png"))
    assert files == sorted(i["file_name"] for i in coco["images"])
    by_image = {a["image_id"]: a for a in coco["annotations"]}
    assert len(by_image) == len(coco["annotations"]) == len(coco["images"])
    areas = []
    for info in coco["images"]:
        image = _pixels(SHAPES / info["file_name"])
        mask = _pixels(SHAPES / "val_masks" / f"{Path(info['file_name']).stem}.png")
        assert image.shape == (info["height"], info["width"], 3) and image.dtype == np.uint8
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        ann = by_image[info["id"]]
        label = classes.index(Path(info["file_name"]).parent.name)
        assert ann["category_id"] == label + 1 and ann["iscrowd"] == 0
        assert set(np.unique(mask).tolist()) <= {0, label + 1, 255}
        assert (mask == label + 1).any()
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= info["width"] and y + h <= info["height"]
        ys, xs = np.nonzero(mask == label + 1)
        assert x - 1 <= xs.min() and xs.max() <= x + w and y - 1 <= ys.min() and ys.max() <= y + h
        areas.append(ann["area"])
    assert min(areas) < 100 and max(areas) > 1000  # tiny objects and ones filling much of the image


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' numpy-2 copy= warning
def test_coco_annotations_load_with_pycocotools(coco):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    api = COCO(str(SHAPES / "val_instances.json"))
    assert len(api.getImgIds()) == len(coco["images"])
    for ann in api.loadAnns(api.getAnnIds())[:24]:
        info = api.loadImgs(ann["image_id"])[0]
        polygon = api.annToMask(ann)
        mask = _pixels(SHAPES / "val_masks" / f"{Path(info['file_name']).stem}.png")
        inside = mask == ann["category_id"]
        # the rasterised polygon covers the mask's sure pixels (the ignore band is the disputed edge)
        assert polygon[inside].mean() > 0.95
        assert abs(int(polygon.sum()) - ann["area"]) <= 0.25 * ann["area"] + 8


def test_demo_model_is_small_and_takes_any_size():
    model = tiny_classifier().eval()
    assert 50_000 <= sum(p.numel() for p in model.parameters()) <= 200_000
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 6)
        assert model(torch.zeros(1, 3, 40, 90)).shape == (1, 6)
    assert tiny_classifier(num_classes=3)(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    assert DEMO_DATA_CONFIG.input_size == (64, 64) and DEMO_DATA_CONFIG.resize is None


def test_shipped_classifier_reaches_its_documented_accuracy(coco):
    weights = SHAPES / "classifier.safetensors"
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    classes = (SHAPES / "classes.txt").read_text().split()
    assert meta["classes"].split(",") == classes
    assert json.loads(meta["data_config"]) == DEMO_DATA_CONFIG.to_dict()
    model = tiny_classifier(len(classes))
    model.load_state_dict(load_file(str(weights)))
    model.eval()

    images = np.stack([_pixels(SHAPES / i["file_name"]) for i in coco["images"]])
    labels = {a["image_id"]: a["category_id"] - 1 for a in coco["annotations"]}
    targets = torch.tensor([labels[i["id"]] for i in coco["images"]])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(DEMO_DATA_CONFIG.mean).view(1, 3, 1, 1)
    std = torch.tensor(DEMO_DATA_CONFIG.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        accuracy = float((model((x - mean) / std).argmax(1) == targets).float().mean())
    assert accuracy == pytest.approx(float(meta["val_top1"]), abs=2 / len(targets))  # float noise: 2 images
    assert 0.6 <= accuracy <= 0.95  # clearly above chance (1/6), clearly imperfect
