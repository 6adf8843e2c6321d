"""COCO detection datasets: validation with clear errors, targets equal to pycocotools', shape batching,
the canvas option, and ObjectTargets.area kept in step by geometric perturbations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

import visionstress as vs
from visionstress.datasets import (
    AnnotationWarning,
    DatasetError,
    DetectionImages,
    SkippedFile,
    iterate_detection_batches,
    load_coco_dataset,
)
from visionstress.perturbations import get_perturbation

SHAPES = Path(__file__).resolve().parents[1] / "data" / "demo" / "shapes"
pytestmark = pytest.mark.filterwarnings("ignore:.*copy keyword:DeprecationWarning")  # pycocotools on numpy 2


def _png(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    """A random RGB PNG of `size` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _ann(id: int, image_id: int, bbox, category_id: int = 1, **extra) -> dict:
    return {"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def _coco(root: Path, images: list[tuple[str, int, int]], annotations: list[dict], write_files: bool = True,
          categories=({"id": 1, "name": "cat"}, {"id": 3, "name": "dog"})) -> Path:
    """Write `root/annotations.json` for images [(file_name, width, height)] (and the image files)."""
    root.mkdir(parents=True, exist_ok=True)
    infos = [{"id": i + 1, "file_name": name, "width": w, "height": h} for i, (name, w, h) in enumerate(images)]
    if write_files:
        for i, (name, w, h) in enumerate(images):
            _png(root / name, (w, h), seed=i)
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": infos, "annotations": annotations, "categories": list(categories)}))
    return path


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """Two images, three objects (one crowd with an RLE mask), one image without objects."""
    from pycocotools import mask as mask_utils

    crowd = np.zeros((20, 30), dtype=np.uint8, order="F")
    crowd[5:15, 2:12] = 1
    rle = mask_utils.encode(crowd)
    rle = {"size": rle["size"], "counts": rle["counts"].decode()}
    anns = [
        _ann(10, 1, [2.0, 3.0, 10.5, 6.0], area=40.0, segmentation=[[2, 3, 12.5, 3, 12.5, 9, 2, 9]]),
        _ann(11, 1, [20.0, 1.0, 8.0, 12.0], category_id=3, area=50.0, segmentation=[[20, 1, 28, 1, 24, 13]]),
        _ann(12, 2, [2.0, 5.0, 10.0, 10.0], iscrowd=1, area=100.0, segmentation=rle),
    ]
    _coco(tmp_path / "ds", [("a.png", 32, 24), ("sub/b.png", 30, 20), ("c.png", 16, 16)], anns)
    return tmp_path / "ds"


# ---------------------------------------------------------------- loading and targets


def test_targets_equal_pycocotools(small: Path):
    from pycocotools.coco import COCO

    dataset = load_coco_dataset(small, with_masks=True)
    assert dataset.annotation_file == small / "annotations.json" and dataset.images_root == small
    assert [(s.index, s.image_id, s.path, s.width, s.height) for s in dataset.samples] == [
        (0, 1, "a.png", 32, 24), (1, 2, "sub/b.png", 30, 20), (2, 3, "c.png", 16, 16)]
    assert dataset.categories == [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
    assert dataset.warnings == []
    reference = COCO(str(small / "annotations.json"))  # independent load of the same file
    images = DetectionImages(dataset, with_masks=True)
    for sample in dataset.samples:
        image, targets, index = images[sample.index]
        assert index == sample.index
        assert image.dtype == torch.uint8 and image.shape == (3, sample.height, sample.width)
        expected = np.asarray(Image.open(small / sample.path).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(image.numpy(), expected)
        anns = reference.loadAnns(reference.getAnnIds(imgIds=sample.image_id))
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        torch.testing.assert_close(targets.boxes, torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4))
        assert targets.labels.tolist() == [a["category_id"] for a in anns]
        assert targets.iscrowd.tolist() == [bool(a.get("iscrowd", 0)) for a in anns]
        assert targets.area.tolist() == [a["area"] for a in anns]
        assert targets.ids.tolist() == list(range(len(anns)))
        assert targets.masks.shape == (len(anns), sample.height, sample.width)
        for mask, ann in zip(targets.masks, anns):
            assert np.array_equal(mask.numpy(), reference.annToMask(ann).astype(bool))
    assert DetectionImages(dataset)[0][1].masks is None


def test_directory_layouts_and_explicit_images_root(tmp_path: Path):
    nested = tmp_path / "nested"
    _coco(nested / "images", [("x.png", 8, 8)], [_ann(1, 1, [1, 1, 2, 2])])
    (nested / "images" / "annotations.json").rename(nested / "annotations.json")
    assert load_coco_dataset(nested).images_root == nested / "images"  # DIR/images when it exists
    json_file = _coco(tmp_path / "flat", [("x.png", 8, 8)], [_ann(1, 1, [1, 1, 2, 2])])
    assert load_coco_dataset(json_file).images_root == tmp_path / "flat"  # beside the JSON
    assert load_coco_dataset(nested / "annotations.json", images=nested / "images").samples[0].path == "x.png"
    with pytest.raises(DatasetError, match=r"no annotations\.json"):
        load_coco_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"images folder not found"):
        load_coco_dataset(json_file, images=tmp_path / "nowhere")


def test_missing_area_and_iscrowd_are_filled_in(tmp_path: Path):
    path = _coco(tmp_path, [("x.png", 20, 20)], [_ann(1, 1, [2, 2, 4, 5])])
    dataset = load_coco_dataset(path)
    ann = dataset.coco.anns[1]
    assert ann["area"] == 20.0 and ann["iscrowd"] == 0  # what COCOeval reads
    _, targets, _ = DetectionImages(dataset)[0]
    assert targets.area.tolist() == [20.0] and targets.iscrowd.tolist() == [False]


def test_demo_coco_dataset(tmp_path: Path):
    from pycocotools.coco import COCO

    dataset = load_coco_dataset(SHAPES / "val_instances.json")
    assert len(dataset.samples) == 144 and dataset.images_root == SHAPES
    assert [c["name"] for c in dataset.categories] == (SHAPES / "classes.txt").read_text().split()
    reference = COCO(str(SHAPES / "val_instances.json"))
    images = DetectionImages(dataset, with_masks=True)
    for i in (0, 77, 143):
        image, targets, _ = images[i]
        ann = reference.imgToAnns[dataset.samples[i].image_id][0]
        x, y, w, h = ann["bbox"]
        torch.testing.assert_close(targets.boxes, torch.tensor([[x, y, x + w, y + h]]))
        assert np.array_equal(targets.masks[0].numpy(), reference.annToMask(ann).astype(bool))
        assert targets.area.item() == pytest.approx(ann["area"])


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"annotations\.json: not a readable JSON file"),
        ("[1, 2]", r"annotations\.json: expected a COCO object.*got a JSON list"),
        ('{"images": [], "annotations": []}', r"annotations\.json: missing key\(s\) \['categories'\]"),
        ('{"images": {}, "annotations": [], "categories": []}',
         r"annotations\.json: 'images' must be a list, got dict"),
    ],
)
def test_malformed_json(tmp_path: Path, content: str, message: str):
    (tmp_path / "annotations.json").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_coco_dataset(tmp_path)


def test_wrongly_typed_entries_are_named(tmp_path: Path):
    path = _coco(tmp_path, [("x.png", 8, 8)], [_ann(4, 1, [1, 1, "2", 2])])
    with pytest.raises(DatasetError, match=r"annotations\.json: annotations\[0\] \(id 4\): 'bbox' must be"):
        load_coco_dataset(path)
    data = json.loads(path.read_text())
    data["images"][0]["width"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"images\[0\] \(id 1\): 'width' must be a positive integer"):
        load_coco_dataset(path)


@pytest.mark.parametrize("iscrowd", [0, 1])
@pytest.mark.parametrize("bbox", [[1, 1, 0, 3], [1, 1, 3, -2], [9, 2, 3, 3]])
def test_boxes_without_area_are_errors(tmp_path: Path, bbox, iscrowd):
    path = _coco(tmp_path, [("x.png", 8, 8)], [_ann(7, 1, bbox, iscrowd=iscrowd)])
    with pytest.raises(DatasetError, match=r"annotations\.json: annotation 7 \(image x\.png\): bbox .* has no area"):
        load_coco_dataset(path)


def test_boxes_sticking_out_are_clipped_with_a_warning(tmp_path: Path):
    anns = [_ann(1, 1, [-2, 3, 6, 4]), _ann(2, 1, [4, 4, 10, 10]), _ann(3, 1, [1, 1, 2, 2])]
    path = _coco(tmp_path, [("x.png", 12, 10)], anns)
    with pytest.warns(AnnotationWarning, match=r"annotation 1 \(image x\.png\): bbox \[-2, 3, 6, 4\] extends outside "
                                               r"the 12x10 image; clipped to \[0, 3, 4, 4\] \(and 1 more"):
        dataset = load_coco_dataset(path)
    assert len(dataset.warnings) == 2 and "annotation 2 " in dataset.warnings[1] and str(path) in dataset.warnings[1]
    _, targets, _ = DetectionImages(dataset)[0]
    assert targets.boxes.tolist() == [[0, 3, 4, 7], [4, 4, 12, 10], [1, 1, 3, 3]]
    assert [a["bbox"] for a in dataset.coco.loadAnns([1, 2])] == [[0, 3, 4, 4], [4, 4, 8, 6]]


def test_unknown_category_names_the_known_ids(tmp_path: Path):
    path = _coco(tmp_path, [("x.png", 8, 8)], [_ann(5, 1, [1, 1, 2, 2], category_id=2)])
    message = r"annotations\.json: annotation 5: unknown category_id 2 \(known ids: \[1, 3\]\)"
    with pytest.raises(DatasetError, match=message):
        load_coco_dataset(path)


def test_annotation_of_an_unlisted_image(tmp_path: Path):
    path = _coco(tmp_path, [("x.png", 8, 8)], [_ann(5, 9, [1, 1, 2, 2])])
    message = r"annotations\.json: annotation 5: image_id 9 is not among the file's images"
    with pytest.raises(DatasetError, match=message):
        load_coco_dataset(path)


def test_missing_image_files_are_listed_with_their_count(tmp_path: Path):
    names = [(f"img{i}.png", 8, 8) for i in range(8)]
    path = _coco(tmp_path, names, [], write_files=False)
    _png(tmp_path / "img3.png", (8, 8))
    with pytest.raises(DatasetError) as err:
        load_coco_dataset(path)
    message = str(err.value)
    assert str(path) in message and "7 image file(s) listed but not found" in message
    assert "img0.png, img1.png, img2.png, img4.png, img5.png ..." in message and "img6" not in message


@pytest.mark.parametrize("name", ["../outside.png", "sub/../../outside.png", "ABSOLUTE", "link.png"])
def test_file_names_outside_the_images_root_are_refused(tmp_path: Path, name: str):
    root = tmp_path / "ds"
    _png(tmp_path / "outside.png", (8, 8))
    root.mkdir()
    if name == "ABSOLUTE":
        name = str(tmp_path / "outside.png")
    if name == "link.png":
        os.symlink(tmp_path / "outside.png", root / "link.png")
    path = _coco(root, [(name, 8, 8)], [], write_files=False)
    with pytest.raises(DatasetError, match=r"annotations\.json: image 1: file_name .* points outside the images"):
        load_coco_dataset(path)


def test_rle_of_another_size(tmp_path: Path):
    rle = {"size": [8, 9], "counts": [0, 72]}
    path = _coco(tmp_path, [("x.png", 8, 8)], [_ann(6, 1, [1, 1, 2, 2], iscrowd=1, segmentation=rle)])
    with pytest.raises(DatasetError, match=r"annotations\.json: annotation 6: RLE segmentation size \[8, 9\] differs "
                                           r"from its image x\.png"):
        load_coco_dataset(path)


@pytest.mark.parametrize("what", ["image", "annotation"])
def test_duplicate_ids(tmp_path: Path, what: str):
    path = _coco(tmp_path, [("x.png", 8, 8), ("y.png", 8, 8)], [_ann(1, 1, [1, 1, 2, 2]), _ann(2, 2, [1, 1, 2, 2])])
    data = json.loads(path.read_text())
    data[f"{what}s"][1]["id"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=rf"annotations\.json: duplicate {what} id\(s\) \[1\]"):
        load_coco_dataset(path)


def test_instance_masks_need_a_segmentation(tmp_path: Path):
    path = _coco(tmp_path, [("x.png", 8, 8)], [_ann(3, 1, [1, 1, 2, 2])])
    dataset = load_coco_dataset(path)  # fine for boxes
    for make in (lambda: load_coco_dataset(path, with_masks=True), lambda: DetectionImages(dataset, with_masks=True)):
        with pytest.raises(DatasetError, match=r"annotations\.json: annotation 3: no 'segmentation'"):
            make()


def test_image_of_another_size_than_the_json_says(tmp_path: Path):
    path = _coco(tmp_path, [("x.png", 8, 6)], [_ann(1, 1, [1, 1, 2, 2])], write_files=False)
    _png(tmp_path / "x.png", (6, 8))
    images = DetectionImages(load_coco_dataset(path))
    message = r"x\.png: decoded image is 6x8 but .*annotations\.json says 8x6 \(image id 1\) \(EXIF orientation"
    with pytest.raises(DatasetError, match=message):
        images[0]
    with pytest.raises(DatasetError, match=message):  # from a loader worker too, as the user's message
        list(iterate_detection_batches(images, 2, workers=1))


def test_unreadable_images_are_skipped_or_strict(tmp_path: Path):
    path = _coco(tmp_path, [("a.png", 8, 8), ("bad.png", 8, 8), ("c.png", 8, 8)], [_ann(1, 1, [1, 1, 2, 2])])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dataset = load_coco_dataset(path)
    skipped = DetectionImages(dataset)[1]
    assert isinstance(skipped, SkippedFile) and skipped.path == str(tmp_path / "bad.png")
    assert "not a readable image" in skipped.reason
    batches = list(iterate_detection_batches(DetectionImages(dataset), 3))
    assert [b.sample_ids.tolist() for b, _ in batches] == [[0, 2]]
    assert batches[0][1].skipped == [skipped]
    with pytest.raises(DatasetError, match=r"bad\.png: not a readable image"):
        DetectionImages(dataset, strict=True)[1]
    with pytest.raises(DatasetError, match=r"bad\.png: not a readable image"):
        list(iterate_detection_batches(DetectionImages(dataset, strict=True), 3))


def test_trailing_skips_come_with_an_empty_batch(tmp_path: Path):
    path = _coco(tmp_path, [("a.png", 8, 8), ("bad.png", 8, 8)], [])
    (tmp_path / "bad.png").write_bytes(b"junk")
    batches = list(iterate_detection_batches(DetectionImages(load_coco_dataset(path)), 1))
    assert [len(b) for b, _ in batches] == [1, 0]
    assert [s.path for s in batches[1][1].skipped] == [str(tmp_path / "bad.png")]
    assert batches[1][0].boxes == []


# ---------------------------------------------------------------- shape batching and canvas


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> DetectionImages:
    """11 images of 3 sizes, interleaved, each with one object."""
    root = tmp_path_factory.mktemp("mixed")
    sizes = [(16, 12), (12, 16), (20, 20)]
    images = [(f"{i:02d}.png", *sizes[(i * 7) % 5 % 3]) for i in range(11)]
    path = _coco(root, images, [_ann(i + 1, i + 1, [1.5, 2.0, 6.0, 5.0], area=20.0) for i in range(11)])
    return DetectionImages(load_coco_dataset(path))


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 5, 11, 20])
def test_shape_batches_hold_every_sample_once(mixed: DetectionImages, batch_size: int):
    seen = []
    for batch, info in iterate_detection_batches(mixed, batch_size):
        assert 1 <= len(batch) <= batch_size and info.skipped == [] and info.scales is None
        for i, sample_id in enumerate(batch.sample_ids.tolist()):
            sample = mixed.dataset.samples[sample_id]
            assert batch.image_size == (sample.height, sample.width)
            image, targets, _ = mixed[sample_id]
            assert torch.equal(batch.images[i], image) and torch.equal(batch.boxes[i].boxes, targets.boxes)
        seen.extend(batch.sample_ids.tolist())
    assert sorted(seen) == list(range(11))


def test_workers_and_the_plan_keep_every_sample_once(mixed: DetectionImages):
    from visionstress.datasets import load_planned, plan_batches

    def ids(batches):
        return [b.sample_ids.tolist() for b, _ in batches]

    plan = plan_batches(mixed, 4)  # decided from the JSON sizes alone: one planned batch in memory at a time
    assert sorted(sum(map(list, plan), [])) == list(range(11)) and max(map(len, plan)) <= 4
    assert all(len({mixed.shape(i) for i in batch}) == 1 for batch in plan)
    loaded = [[b.sample_ids.tolist() for b in batches] for batches, _ in load_planned(mixed, plan)]
    assert loaded == [[list(batch)] for batch in plan]
    assert plan_batches(mixed, 4, indices=[3, 5, 7]) == [tuple(b) for b in plan_batches(mixed, 4, [3, 5, 7])]
    assert ids(iterate_detection_batches(mixed, 3, workers=2)) == ids(iterate_detection_batches(mixed, 3))
    with pytest.raises(DatasetError, match="batch_size must be a positive integer"):
        next(iterate_detection_batches(mixed, 0))
    with pytest.raises(DatasetError, match=r"canvas must be \(height, width\)"):
        next(iterate_detection_batches(mixed, 2, canvas=(10,)))


def test_canvas_scales_and_maps_back_exactly(small: Path):
    canvas = (40, 50)
    images = DetectionImages(load_coco_dataset(small), with_masks=True)
    batches = list(iterate_detection_batches(images, 8, canvas=canvas))
    assert len(batches) == 1
    batch, info = batches[0]
    assert batch.images.shape == (3, 3, *canvas) and info.scales.dtype == torch.float32
    for i, sample_id in enumerate(batch.sample_ids.tolist()):
        image, targets, _ = images[sample_id]
        h, w = image.shape[-2:]
        scale = min(canvas[0] / h, canvas[1] / w)
        assert info.scales[i].item() == pytest.approx(scale)
        size = [round(h * scale), round(w * scale)]
        assert max(size[0] - canvas[0], size[1] - canvas[1]) == 0  # one side fills the canvas
        resized = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        assert torch.equal(batch.images[i, :, : size[0], : size[1]], resized)
        assert batch.images[i, :, size[0]:].sum() == 0 and batch.images[i, :, :, size[1]:].sum() == 0
        moved = batch.boxes[i]
        torch.testing.assert_close(moved.boxes / info.scales[i], targets.boxes)
        torch.testing.assert_close(moved.area / info.scales[i] ** 2, targets.area)
        assert moved.masks.shape == (len(targets), *canvas) and not moved.masks[:, size[0]:].any()
        back = TF.resize(moved.masks[:, : size[0], : size[1]].to(torch.uint8), [h, w],
                         interpolation=InterpolationMode.NEAREST_EXACT).bool()
        assert torch.equal(back, targets.masks) or (back == targets.masks).float().mean() > 0.97


# ---------------------------------------------------------------- ObjectTargets.area under perturbations


def _area_batch(with_masks: bool) -> vs.Batch:
    h, w = 64, 80
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 26:38, 34:46] = True  # a centred 12x12 square
    masks[1, 2:10, 3:9] = True  # near the corner: partly rotated out of frame
    targets = vs.ObjectTargets(boxes=torch.tensor([[34.0, 26.0, 46.0, 38.0], [3.0, 2.0, 9.0, 10.0]]),
                               labels=torch.tensor([1, 2]), masks=masks if with_masks else None,
                               area=torch.tensor([144.0, 48.0]))
    return vs.Batch(torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)), boxes=[targets])


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_rotation_keeps_area_consistent(severity: int):
    out = get_perturbation("rotation")(_area_batch(with_masks=True), severity=severity, seed=3)
    targets = out.boxes[0]
    assert targets.area.tolist() == targets.masks.flatten(1).sum(1).float().tolist()
    assert targets.area[0].item() == pytest.approx(144.0, rel=0.2)  # the square stays in frame

    out = get_perturbation("rotation")(_area_batch(with_masks=False), severity=severity, seed=3)
    targets = out.boxes[0]
    assert targets.ids[0] == 0 and targets.area[0].item() == pytest.approx(144.0, rel=1e-4)  # rotation keeps area
    if len(targets) == 2:  # the corner object loses the part of its box pushed out of frame
        assert 0 < targets.area[1].item() <= 48.0 + 1e-3


def test_zoom_scales_area_by_the_square_of_the_factor():
    batch = _area_batch(with_masks=False)
    batch.boxes[0] = batch.boxes[0].keep(torch.tensor([True, False]))
    out = get_perturbation("zoom_out")(batch, severity=2, seed=0)
    factor = out.params["scale"][0].item()
    assert factor < 1 and out.boxes[0].area.item() == pytest.approx(144.0 * factor**2, rel=1e-4)


@pytest.mark.parametrize("name", ["rotation", "elastic_transform", "lens_distortion", "zoom_in", "gaussian_noise",
                                  "random_occlusion", "object_occlusion"])
def test_area_is_optional_and_follows_every_kind_of_perturbation(name: str):
    batch = _area_batch(with_masks=False)
    no_area = batch.replace(boxes=[vs.ObjectTargets(boxes=t.boxes, labels=t.labels) for t in batch.boxes])
    p = get_perturbation(name)
    assert all(t.area is None for t in p(no_area, severity=3, seed=1).boxes)
    out = p(batch, severity=3, seed=1).boxes[0]
    assert out.area is not None and out.area.shape == (len(out),)
    if p.kind != "geometric":
        assert torch.equal(out.area, batch.boxes[0].area)


def test_area_is_kept_by_keep_to_and_target_dicts():
    targets = vs.ObjectTargets(boxes=torch.tensor([[0.0, 0, 2, 2], [1, 1, 4, 4]]), labels=[1, 2], area=[3, 9])
    assert targets.area.dtype == torch.float32
    assert targets.keep(torch.tensor([False, True])).area.tolist() == [9.0]
    assert targets.to("cpu").area.tolist() == [3.0, 9.0]
    batch = vs.Batch(torch.zeros(1, 3, 4, 4), boxes=[{"boxes": targets.boxes, "labels": [1, 2], "area": [3, 9]}])
    assert batch.boxes[0].area.tolist() == [3.0, 9.0]
    with pytest.raises(ValueError, match="2 boxes but 1 areas"):
        vs.ObjectTargets(boxes=targets.boxes, labels=[1, 2], area=[3])
    assert vs.ObjectTargets(boxes=targets.boxes, labels=[1, 2]).keep(torch.tensor([True, False])).area is None


def test_albumentations_geometric_perturbations_keep_area():
    A = pytest.importorskip("albumentations")
    from visionstress.perturbations import unregister_perturbation
    from visionstress.perturbations.albumentations import albumentations_perturbation

    p = albumentations_perturbation("_test_shrink", "test", [A.Affine(scale=0.5, p=1.0)] * 5, "half size",
                                    kind="geometric")
    try:
        out = p(_area_batch(with_masks=False), severity=1, seed=0).boxes[0]
        assert out.area[0].item() == pytest.approx(144.0 * 0.25, rel=0.02)  # scaled with its box
        out = p(_area_batch(with_masks=True), severity=1, seed=0).boxes[0]
        assert out.area.tolist() == out.masks.flatten(1).sum(1).float().tolist()
    finally:
        unregister_perturbation("_test_shrink")
