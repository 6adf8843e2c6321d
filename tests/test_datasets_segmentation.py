"""Semantic segmentation datasets: pairing images with masks, reading masks as class indices, clear
errors for masks that cannot be right, and same-shape batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionstress.datasets import (
    DatasetError,
    SegmentationImages,
    SkippedFile,
    iterate_segmentation_batches,
    load_segmentation_dataset,
    read_mask,
)

SHAPES = Path(__file__).resolve().parents[1] / "data" / "demo" / "shapes"
CLASSES = ["background", "road", "car"]


def _image(path: Path, size=(12, 8), seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _mask(path: Path, values: np.ndarray, mode: str = "L") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        img = Image.fromarray(values.astype(np.uint8), mode="P")
        img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [7] * (256 * 3 - 9))  # colours unlike the indices
    elif mode == "I;16":
        img = Image.fromarray(values.astype(np.uint16))
    else:
        img = Image.fromarray(values.astype(np.uint8), mode=mode)
    img.save(path)
    return values


def _values(size=(12, 8), seed: int = 0, high: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (size[1], size[0]))


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """data/images (nested), data/masks with the same layout, data/classes.txt."""
    root = tmp_path / "data"
    for i, rel in enumerate(["b.jpg", "a.png", "city/c.png"]):
        _image(root / "images" / rel, seed=i)
        _mask(root / "masks" / Path(rel).with_suffix(".png"), _values(seed=i))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def test_voc_layout_pairs_by_relative_stem(voc: Path):
    dataset = load_segmentation_dataset(voc)
    assert dataset.images_root == voc / "images" and dataset.masks_root == voc / "masks"
    assert [(s.index, s.image_path, s.mask_path) for s in dataset.samples] == [
        (0, "a.png", "a.png"), (1, "b.jpg", "b.png"), (2, "city/c.png", "city/c.png")]
    assert dataset.class_names == CLASSES and dataset.ignore_index == 255
    images = SegmentationImages(dataset)
    for sample in dataset.samples:
        image, mask, index = images[sample.index]
        assert index == sample.index and image.dtype == torch.uint8 and image.shape == (3, 8, 12)
        assert mask.dtype == torch.int64 and mask.shape == (8, 12)
        assert np.array_equal(mask.numpy(), np.asarray(Image.open(voc / "masks" / sample.mask_path)))


def test_explicit_parts_override_and_bare_stem_fallback(tmp_path: Path, voc: Path):
    flat = tmp_path / "flat_masks"
    _mask(flat / "c.png", _values(seed=2))
    for name in ("a", "b"):
        _mask(flat / f"{name}.png", _values(seed=5))
    dataset = load_segmentation_dataset(voc, masks=flat, class_names=["x", "y", "z", "w"], ignore_index=-1)
    assert [s.mask_path for s in dataset.samples] == ["a.png", "b.png", "c.png"]
    assert dataset.class_names == ["x", "y", "z", "w"] and dataset.ignore_index == -1
    with pytest.raises(DatasetError, match="give a data folder or images, class_names"):
        load_segmentation_dataset(masks=flat)


def test_demo_segmentation_dataset():
    dataset = load_segmentation_dataset(images=SHAPES / "val", masks=SHAPES / "val_masks",
                                        class_names=SHAPES / "segmentation_classes.txt")
    assert len(dataset.samples) == 144 and dataset.class_names[0] == "background" and len(dataset.class_names) == 7
    assert dataset.samples[0].image_path == "circle/circle_000.png" and dataset.samples[0].mask_path == "circle_000.png"
    batches = list(iterate_segmentation_batches(SegmentationImages(dataset), 64))
    assert [len(b) for b, _ in batches] == [64, 64, 16]
    assert all(b.ignore_index == 255 and b.masks.shape == (len(b), 64, 64) for b, _ in batches)
    assert set(torch.cat([b.masks.unique() for b, _ in batches]).tolist()) == {0, 1, 2, 3, 4, 5, 6, 255}


def test_images_without_masks_are_listed_with_their_count(tmp_path: Path):
    for i in range(7):
        _image(tmp_path / "images" / f"img{i}.png")
    _mask(tmp_path / "masks" / "img2.png", _values())
    with pytest.raises(DatasetError) as err:
        load_segmentation_dataset(images=tmp_path / "images", masks=tmp_path / "masks", class_names=CLASSES)
    message = str(err.value)
    assert str(tmp_path / "images") in message and "6 image(s) have no mask" in message
    assert "img0.png, img1.png, img3.png, img4.png, img5.png ..." in message and "img6" not in message


@pytest.mark.parametrize(
    "images, masks, message",
    [
        (["x.png", "x.jpg"], ["x.png"], r"images \['x\.jpg', 'x\.png'\] share the stem 'x'"),
        (["x.png"], ["a/x.png", "b/x.png"], r"masks \['a/x\.png', 'b/x\.png'\] all match image x\.png"),
        (["a/x.png", "b/x.png"], ["x.png"],
         r"mask x\.png matches images \['a/x\.png', 'b/x\.png'\] by file stem alone"),
    ],
)
def test_ambiguous_stems(tmp_path: Path, images, masks, message):
    for rel in images:
        _image(tmp_path / "images" / rel)
    for rel in masks:
        _mask(tmp_path / "masks" / rel, _values())
    with pytest.raises(DatasetError, match=message):
        load_segmentation_dataset(images=tmp_path / "images", masks=tmp_path / "masks", class_names=CLASSES)


def test_bad_class_names_and_ignore_index(tmp_path: Path, voc: Path):
    with pytest.raises(DatasetError, match=r"ignore_index 1 is the index of class 'road'; it must lie outside 0\.\.2"):
        load_segmentation_dataset(voc, ignore_index=1)
    with pytest.raises(DatasetError, match="class-names file not found"):
        load_segmentation_dataset(voc, class_names=tmp_path / "none.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no images"):
        load_segmentation_dataset(images=tmp_path / "empty", masks=voc / "masks", class_names=CLASSES)
    with pytest.raises(DatasetError, match="masks folder not found"):
        load_segmentation_dataset(voc, masks=tmp_path / "nowhere")


@pytest.mark.parametrize("mode", ["L", "P", "I;16"])
def test_masks_are_read_as_indices_not_colours(tmp_path: Path, mode: str):
    values = _mask(tmp_path / "m.png", _values(high=3), mode)
    assert Image.open(tmp_path / "m.png").mode == mode
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == torch.int64 and np.array_equal(mask.numpy(), values)


def test_sixteen_bit_masks_keep_large_indices(tmp_path: Path):
    values = np.array([[0, 300], [1000, 65535]])
    _mask(tmp_path / "m.png", values, "I;16")
    assert read_mask(tmp_path / "m.png").tolist() == values.tolist()


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_masks_are_refused(voc: Path, mode: str):
    path = voc / "masks" / "a.png"
    Image.open(path).convert(mode).save(path)
    images = SegmentationImages(load_segmentation_dataset(voc))
    message = rf"masks/a\.png: colour-coded mask \(mode {mode}\); convert to class indices"
    with pytest.raises(DatasetError, match=message):
        images[0]


def test_mask_of_another_size(voc: Path):
    _mask(voc / "masks" / "a.png", _values(size=(10, 8)))
    images = SegmentationImages(load_segmentation_dataset(voc))
    with pytest.raises(DatasetError, match=r"masks/a\.png: mask is 10x8 but its image .*images/a\.png is 12x8"):
        images[0]


def test_values_outside_the_classes(voc: Path):
    values = _values()
    values[0, :7] = [3, 4, 5, 6, 7, 8, 255]
    _mask(voc / "masks" / "a.png", values)
    images = SegmentationImages(load_segmentation_dataset(voc))
    message = r"masks/a\.png: mask value\(s\) 3, 4, 5, 6, 7 and 1 more are not class indices: 3 classes"
    with pytest.raises(DatasetError, match=message):
        images[0]
    with pytest.raises(DatasetError, match=message):  # raised in a loader worker, reported as the user's message
        list(iterate_segmentation_batches(images, 2, workers=1))
    values[0, :6] = 0  # 255 is the ignore index
    _mask(voc / "masks" / "a.png", values)
    assert images[0][1][0, 6].item() == 255


def test_unreadable_files_are_skipped_or_strict(voc: Path):
    (voc / "masks" / "b.png").write_bytes(b"not a png")
    (voc / "images" / "city" / "c.png").write_bytes(b"not a png either")
    dataset = load_segmentation_dataset(voc)
    images = SegmentationImages(dataset)
    assert isinstance(images[1], SkippedFile) and images[1].path == str(voc / "masks" / "b.png")
    batches = list(iterate_segmentation_batches(images, 4))
    assert [b.sample_ids.tolist() for b, _ in batches if len(b)] == [[0]]
    expected = [str(voc / "masks" / "b.png"), str(voc / "images" / "city" / "c.png")]
    assert [s.path for _, info in batches for s in info.skipped] == expected
    with pytest.raises(DatasetError, match=r"masks/b\.png: not a readable mask"):
        SegmentationImages(dataset, strict=True)[1]


def test_shape_batches_hold_every_sample_once(tmp_path: Path):
    sizes = [(12, 8), (8, 12), (10, 10)]
    for i in range(10):
        size = sizes[i * 5 % 7 % 3]
        _image(tmp_path / "images" / f"{i}.png", size, seed=i)
        _mask(tmp_path / "masks" / f"{i}.png", _values(size, seed=i))
    images = SegmentationImages(load_segmentation_dataset(images=tmp_path / "images", masks=tmp_path / "masks",
                                                          class_names=CLASSES))
    for batch_size in (1, 3, 4, 10):
        seen = []
        for batch, info in iterate_segmentation_batches(images, batch_size):
            assert 1 <= len(batch) <= batch_size and info.skipped == [] and info.scales is None
            for i, sample_id in enumerate(batch.sample_ids.tolist()):
                image, mask, _ = images[sample_id]
                assert torch.equal(batch.images[i], image) and torch.equal(batch.masks[i], mask)
            seen.extend(batch.sample_ids.tolist())
        assert sorted(seen) == list(range(10))
