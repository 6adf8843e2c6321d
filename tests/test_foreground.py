"""Object masks from each task's own annotations: classification mask folders (cropped exactly as the
image), COCO instance masks and GrabCut (cached), segmentation class masks; the checks and the run's
up-front refusal when a suite needs masks nobody gave."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from visionstress.datasets import (ClassificationImages, DatasetError, DetectionImages, SegmentationImages,
                                   iterate_batches, iterate_detection_batches, iterate_segmentation_batches,
                                   load_classification_samples, load_coco_dataset, load_segmentation_dataset)
from visionstress.demo import demo_dir
from visionstress.foreground import (ForegroundError, check_foreground_source, grabcut_box, grabcut_foreground,
                                     pair_masks, read_foreground_mask)
from visionstress.models.data_config import DataConfig
from visionstress.perturbations import get_perturbation

pytestmark = pytest.mark.filterwarnings("ignore:.*copy keyword:DeprecationWarning")  # pycocotools on numpy 2


def _disk_image(h: int, w: int, cy: float, cx: float, r: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A red disk on a noisy blue-green background: (uint8 RGB [H, W, 3], bool mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    background = np.array([30, 120, 160]) + rng.normal(0, 12, (h, w, 3))
    image = np.where(mask[..., None], np.array([220, 40, 40]) + rng.normal(0, 8, (h, w, 3)), background)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _classification(root: Path, sizes=((40, 36), (30, 44))) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    for i, (h, w) in enumerate(sizes):
        image, mask = _disk_image(h, w, h / 2 + 3, w / 2 - 4, 9, seed=i)
        (images / "thing").mkdir(parents=True, exist_ok=True)
        (masks / "thing").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(images / "thing" / f"img{i}.jpg")
        Image.fromarray(mask.astype(np.uint8) * 7).save(masks / "thing" / f"img{i}.png")  # any non-zero value
    return images, masks


def test_classification_masks_are_resized_and_cropped_exactly_as_their_images(tmp_path):
    images, masks = _classification(tmp_path)
    samples, _ = load_classification_samples(images)
    config = DataConfig(input_size=(24, 24), resize=28)
    batch, _ = next(iterate_batches(ClassificationImages(samples, config, masks=masks), 4))
    assert batch.foreground.shape == (2, 24, 24) and batch.foreground.dtype == torch.bool
    for i, sample in enumerate(samples):
        mask = torch.from_numpy(np.asarray(Image.open(masks / "thing" / f"{Path(sample.path).stem}.png")) > 0)
        expected = TF.center_crop(TF.resize(mask[None].to(torch.uint8), [28], InterpolationMode.NEAREST_EXACT), [24, 24])
        assert torch.equal(batch.foreground[i], expected[0].bool())
        red = (batch.images[i, 0].int() - batch.images[i, 2].int()) > 60  # the disk, as the image shows it
        iou = (red & batch.foreground[i]).sum() / (red | batch.foreground[i]).sum()
        assert iou > 0.85


def test_masks_are_found_by_stem_in_class_folders_or_flat(tmp_path):
    images, masks = _classification(tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in (masks / "thing").iterdir():
        (flat / path.name).write_bytes(path.read_bytes())
    samples, _ = load_classification_samples(images)
    assert [p.name for p in pair_masks([s.path for s in samples], flat)] == ["img0.png", "img1.png"]
    (flat / "other").mkdir()
    (flat / "other" / "img0.png").write_bytes((flat / "img0.png").read_bytes())
    with pytest.raises(ForegroundError, match="several masks match"):
        pair_masks([s.path for s in samples], flat)


def test_mask_problems_name_the_file(tmp_path):
    images, masks = _classification(tmp_path)
    samples, _ = load_classification_samples(images)
    config = DataConfig(input_size=(24, 24), resize=28)
    (masks / "thing" / "img1.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) have no mask.*img1.jpg"):
        ClassificationImages(samples, config, masks=masks)
    Image.fromarray(np.ones((10, 10), np.uint8)).save(masks / "thing" / "img1.png")
    dataset = ClassificationImages(samples, config, masks=masks)
    with pytest.raises(DatasetError, match=r"img1.png: mask is 10x10 but its image is 44x30"):
        dataset[1]
    (masks / "thing" / "img1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"img1.png: not a readable mask image"):
        dataset[1]
    with pytest.raises(DatasetError, match="masks folder not found"):
        ClassificationImages(samples, config, masks=tmp_path / "nowhere")


def test_an_unreadable_image_needs_no_mask(tmp_path):
    """A corrupt file is skipped and listed like in any run; demanding a mask for it would stop the run."""
    images, masks = _classification(tmp_path)
    (images / "thing" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    samples, _ = load_classification_samples(images)
    batch, skipped = next(iterate_batches(ClassificationImages(samples, DataConfig(input_size=(24, 24), resize=28),
                                                               masks=masks), 4))
    assert batch.foreground.shape == (2, 24, 24)
    assert [Path(s.path).name for s in skipped] == ["broken.jpg"]
    (images / "thing" / "img9.jpg").write_bytes((images / "thing" / "img0.jpg").read_bytes())
    samples, _ = load_classification_samples(images)
    with pytest.raises(DatasetError, match=r"1 image\(s\) have no mask.*img9.jpg"):  # a readable one still does
        ClassificationImages(samples, DataConfig(input_size=(24, 24), resize=28), masks=masks)


def test_transparent_cutouts_use_their_alpha(tmp_path):
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., :3] = 200  # colour everywhere: only alpha says where the object is
    rgba[2:4, 3:6, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    mask = read_foreground_mask(tmp_path / "cut.png", (6, 8))
    assert mask.sum() == 6 and mask[2:4, 3:6].all()


def test_grabcut_finds_the_object_in_its_box():
    image, truth = _disk_image(80, 96, 40, 50, 16)
    found = grabcut_box(image, [50 - 20, 40 - 20, 50 + 20, 40 + 20])
    iou = (found & truth).sum() / (found | truth).sum()
    assert iou > 0.85
    assert np.array_equal(found, grabcut_box(image, [30, 20, 70, 60]))  # OpenCV's RNG reseeded: repeatable
    tiny = grabcut_box(image, [10, 10, 12, 11])  # too small to model: the whole box
    assert tiny.sum() == 2 and tiny[10, 10:12].all()


def test_grabcut_masks_are_cached_by_image_content(tmp_path, monkeypatch):
    image, _ = _disk_image(60, 70, 30, 35, 12)
    pixels = torch.from_numpy(image).permute(2, 0, 1)
    boxes = torch.tensor([[20.0, 15, 50, 45]])
    first = grabcut_foreground(pixels, boxes, tmp_path)
    assert len(list(tmp_path.glob("*.png"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("GrabCut ran again although the mask was cached")

    monkeypatch.setattr("visionstress.foreground.grabcut_box", fail)
    assert torch.equal(grabcut_foreground(pixels, boxes, tmp_path), first)
    with pytest.raises(AssertionError, match="ran again"):  # other pixels: another key
        grabcut_foreground(pixels.flip(-1), boxes, tmp_path)


def _coco(root: Path) -> Path:
    """Two images: one object with a polygon, one with a box only (GrabCut), and an image without objects."""
    root.mkdir(parents=True, exist_ok=True)
    first, _ = _disk_image(48, 64, 24, 40, 10, seed=1)
    second, _ = _disk_image(48, 64, 20, 20, 9, seed=2)
    Image.fromarray(first).save(root / "a.png")
    Image.fromarray(second).save(root / "b.png")
    polygon = [4, 4, 20, 4, 20, 16, 4, 16]  # a 16 x 12 rectangle drawn as a polygon
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 16, 12], "segmentation": [polygon]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [28, 12, 24, 24]},
    ]
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
              {"id": 2, "file_name": "b.png", "width": 64, "height": 48}]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


def test_detection_foreground_from_polygons_and_grabcut(tmp_path):
    dataset = load_coco_dataset(_coco(tmp_path / "coco"))
    images = DetectionImages(dataset, foreground=True, foreground_cache=tmp_path / "cache")
    assert images.foreground_sources() == {"instance_masks": 0, "grabcut": 0, "instance_masks_and_grabcut": 1,
                                           "no_objects": 1}
    batches = list(iterate_detection_batches(images, batch_size=4))
    batch = batches[0][0]
    fg = batch.foreground[list(batch.sample_ids).index(0)]
    assert fg[4:16, 4:20].all() and fg[4:16, 4:20].sum() == 16 * 12  # the polygon, rasterised by pycocotools
    _, disk = _disk_image(48, 64, 24, 40, 10, seed=1)
    found = fg.numpy() & ~np.pad(np.ones((12, 16), bool), ((4, 32), (4, 44)))
    assert (found & disk).sum() / (found | disk).sum() > 0.8  # GrabCut inside the second box
    assert not batch.foreground[list(batch.sample_ids).index(1)].any()  # no objects, no foreground
    assert len(list((tmp_path / "cache").glob("*.png"))) == 1


def test_detection_foreground_follows_the_canvas(tmp_path):
    dataset = load_coco_dataset(_coco(tmp_path / "coco"))
    images = DetectionImages(dataset, foreground=True, foreground_cache=tmp_path / "cache")
    plain = next(iterate_detection_batches(images, batch_size=4))[0]
    canvas, info = next(iterate_detection_batches(images, batch_size=4, canvas=(32, 32)))
    assert canvas.foreground.shape == (2, 32, 32)
    expected = TF.resize(plain.foreground[:, None].to(torch.uint8), [24, 32], InterpolationMode.NEAREST_EXACT)[:, 0]
    assert torch.equal(canvas.foreground[:, :24], expected.bool()) and not canvas.foreground[:, 24:].any()
    assert info.scales.tolist() == [0.5, 0.5]


def test_segmentation_foreground_is_every_class_but_the_background_ones(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "images" / "x.png")
    values = np.array([[0, 1, 2, 3, 255, 0, 1, 2]] * 6, np.uint8)
    Image.fromarray(values).save(tmp_path / "masks" / "x.png")
    (tmp_path / "classes.txt").write_text("sky\ncar\nroad\nperson\n")
    dataset = load_segmentation_dataset(tmp_path)
    batch = next(iterate_segmentation_batches(SegmentationImages(dataset), 2, background_classes=(0, 2)))[0]
    assert batch.foreground[0, 0].tolist() == [False, True, False, True, False, False, True, False]
    plain = next(iterate_segmentation_batches(SegmentationImages(dataset), 2))[0]
    assert plain.foreground is None


def test_a_suite_that_needs_masks_stops_before_any_work_without_them(tmp_path):
    suite = [get_perturbation(n) for n in ("gaussian_noise", "mixed_rand", "silhouette", "patch_shuffle")]
    with pytest.raises(ForegroundError, match=r"mixed_rand, silhouette need object masks: pass --masks DIR"):
        check_foreground_source("classification", {"masks": None}, suite)
    assert check_foreground_source("classification", {"masks": None}, suite[:1] + suite[3:]) is None
    assert "mask files in" in check_foreground_source("classification", {"masks": str(tmp_path)}, suite)
    assert "GrabCut" in check_foreground_source("detection", {}, suite)
    assert "every class but 0" in check_foreground_source("segmentation", {"background_classes": "0"}, suite, 3)
    with pytest.raises(ForegroundError, match=r"--background-classes '0,5': \[5\] are not class indices"):
        check_foreground_source("segmentation", {"background_classes": "0,5"}, suite, 3)


def test_the_demo_has_masks_for_every_image():
    root = demo_dir()
    samples, _ = load_classification_samples(root / "val")
    config = DataConfig(input_size=(64, 64), resize=None)
    dataset = ClassificationImages(samples, config, masks=root / "val_masks")
    assert len(dataset.mask_paths) == len(samples) == 144
    for index in (0, 77, 143):
        image, label, _, fg = dataset[index]
        assert fg.any() and not fg.all()
    coco = load_coco_dataset(root / "val_instances.json")
    assert DetectionImages(coco, foreground=True).foreground_sources()["instance_masks"] == 144
