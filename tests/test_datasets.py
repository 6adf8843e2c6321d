"""Classification datasets: discovery and label mapping, robust decoding, resize/crop, batching, skips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from visionstress.datasets import (
    ClassificationImages,
    DatasetError,
    Sample,
    SkippedFile,
    dataset_fingerprint,
    iterate_batches,
    load_classification_samples,
    read_class_names,
)
from visionstress.models.data_config import DataConfig

SMALL = DataConfig(input_size=(16, 16), resize=20)


def _png(path: Path, color=(200, 30, 30), size=(24, 18)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """ImageFolder tree: classes out of alphabetical creation order, a nested image, decoys to ignore."""
    root = tmp_path / "val"
    _png(root / "dog" / "b.png")
    _png(root / "dog" / "a.png")
    _png(root / "cat" / "x.JPEG")  # upper-case extension, as ImageNet ships
    _png(root / "cat" / "nested" / "y.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    _png(root / ".ipynb_checkpoints" / "z.png")  # hidden folder: not a class
    _png(root / "dog" / ".hidden.png")
    return root


def _names(samples: list[Sample], root: Path) -> list[tuple[str, int]]:
    return [(Path(s.path).relative_to(root).as_posix(), s.label) for s in samples]


# ---------------------------------------------------------------- discovery and labels


def test_image_folder_sorted_classes_and_files(folder: Path):
    samples, names = load_classification_samples(folder)
    assert names == ["cat", "dog"]
    assert _names(samples, folder) == [
        ("cat/nested/y.png", 0),
        ("cat/x.JPEG", 0),
        ("dog/a.png", 1),
        ("dog/b.png", 1),
    ]


def test_image_folder_without_class_folders_says_so(tmp_path: Path):
    _png(tmp_path / "loose.png")
    with pytest.raises(DatasetError, match=r"no class folders.*loose\.png.*<class name>/<image>"):
        load_classification_samples(tmp_path)


def test_image_folder_one_level_too_high_names_the_folder_to_give(tmp_path: Path):
    for name in ("cat", "dog", "fox"):
        _png(tmp_path / "val" / name / "a.png")
    with pytest.raises(DatasetError, match=r"one class folder 'val'.*3 sub-folders \(cat, dog, fox\).*--data .*val"):
        load_classification_samples(tmp_path)
    samples, names = load_classification_samples(tmp_path / "val")
    assert names == ["cat", "dog", "fox"]
    assert load_classification_samples(tmp_path, class_names=["val"])[1] == ["val"]  # a named one-class subset


def test_one_class_folder_with_images_of_its_own_is_one_class(tmp_path: Path):
    _png(tmp_path / "stop_sign" / "a.png")
    _png(tmp_path / "stop_sign" / "day" / "b.png")
    _png(tmp_path / "stop_sign" / "night" / "c.png")
    samples, names = load_classification_samples(tmp_path)
    assert names == ["stop_sign"] and len(samples) == 3


def test_csv_list_relative_paths_and_index_labels(tmp_path: Path):
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "b.png")
    absolute = _png(tmp_path / "elsewhere" / "c.png")
    listing = tmp_path / "lists" / "val.csv"
    listing.parent.mkdir()
    listing.write_text(f"path,label,comment\n../imgs/a.png,2,x\n../imgs/b.png,0,y\n{absolute},1,z\n")
    with pytest.raises(DatasetError, match=r"val\.csv:2: path '\.\./imgs/a\.png' points outside the list's folder"):
        load_classification_samples(listing)
    samples, names = load_classification_samples(listing, allow_outside_paths=True)
    assert names == ["0", "1", "2"]
    assert [s.label for s in samples] == [2, 0, 1]
    assert all(Path(s.path).is_file() for s in samples)
    assert Path(samples[0].path) == listing.parent / "../imgs/a.png"
    assert Path(samples[2].path) == absolute


def test_json_list_with_name_labels(tmp_path: Path):
    _png(tmp_path / "data" / "a.png")
    _png(tmp_path / "data" / "b.png")
    listing = tmp_path / "data" / "list.json"
    listing.write_text(json.dumps([{"path": "a.png", "label": "zebra"}, {"path": "b.png", "label": "ant"}]))
    samples, names = load_classification_samples(listing)
    assert names == ["ant", "zebra"]  # sorted, as ImageFolder sorts folders
    assert [(Path(s.path).name, s.label) for s in samples] == [("a.png", 1), ("b.png", 0)]


def test_json_integer_and_digit_string_labels_are_indices(tmp_path: Path):
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([{"path": "a.png", "label": 3}, {"path": "b.png", "label": "1"}]))
    samples, names = load_classification_samples(listing)
    assert [s.label for s in samples] == [3, 1]
    assert names == ["0", "1", "2", "3"]


def test_mixed_names_and_indices_need_class_names(tmp_path: Path):
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\na.png,3\nb.png,cat\n")
    with pytest.raises(DatasetError, match=r"list\.csv: labels mix class indices.*--class-names"):
        load_classification_samples(listing)
    samples, names = load_classification_samples(listing, class_names=["a", "b", "c", "d", "cat"])
    assert [s.label for s in samples] == [3, 4]
    assert names == ["a", "b", "c", "d", "cat"]


def test_class_names_map_a_subset_of_classes_to_model_indices(tmp_path: Path, folder: Path):
    class_file = tmp_path / "classes.txt"
    class_file.write_text("fish\ndog\nbird\ncat\nhorse\n\n")  # trailing blank line is fine
    class_names = read_class_names(class_file)
    assert class_names == ["fish", "dog", "bird", "cat", "horse"]

    samples, names = load_classification_samples(folder, class_names=class_names)
    assert names == class_names
    assert _names(samples, folder) == [
        ("cat/nested/y.png", 3),
        ("cat/x.JPEG", 3),
        ("dog/a.png", 1),
        ("dog/b.png", 1),
    ]

    listing = tmp_path / "list.csv"
    listing.write_text("path,label\nval/dog/a.png,dog\nval/cat/x.JPEG,3\n")
    samples, names = load_classification_samples(listing, class_names=class_names)
    assert [s.label for s in samples] == [1, 3]
    assert names == class_names


def test_unknown_class_names_are_named(folder: Path, tmp_path: Path):
    with pytest.raises(DatasetError, match=r"class folders.*'dog' \(did you mean 'dogs'\?\) at .*dog"):
        load_classification_samples(folder, class_names=["cats", "dogs", "cat"])
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\na.png,cat\nb.png,wolf\n")
    with pytest.raises(DatasetError, match=r"list\.csv: labels: 1 name\(s\).*'wolf' at .*list\.csv:3"):
        load_classification_samples(listing, class_names=["cat", "dog"])


def test_label_outside_model_classes(tmp_path: Path):
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\na.png,1\nb.png,5\n")
    with pytest.raises(DatasetError, match=r"list\.csv:3: label 5 is outside the model's 3 classes"):
        load_classification_samples(listing, class_names=["a", "b", "c"])
    listing.write_text("path,label\na.png,-1\n")
    with pytest.raises(DatasetError, match=r"list\.csv:2: label -1 is negative"):
        load_classification_samples(listing)


def test_ambiguous_duplicate_class_name(tmp_path: Path):
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\na.png,crane\nb.png,2\n")
    names = ["crane", "heron", "crane"]  # the ImageNet list really has two "crane"s
    with pytest.raises(DatasetError, match=r"'crane' \(indices \[0, 2\]\).*use index labels"):
        load_classification_samples(listing, class_names=names)
    listing.write_text("path,label\na.png,heron\nb.png,2\n")  # unused duplicates are fine
    samples, _ = load_classification_samples(listing, class_names=names)
    assert [s.label for s in samples] == [1, 2]


def test_read_class_names_errors(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"missing\.txt: class-names file not found"):
        read_class_names(tmp_path / "missing.txt")
    gap = tmp_path / "gap.txt"
    gap.write_text("a\n\nb\n")
    with pytest.raises(DatasetError, match=r"gap\.txt:2: blank line"):
        read_class_names(gap)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match=r"empty\.txt: class-names file is empty"):
        read_class_names(empty)


def test_class_names_in_the_files_imagenet_ships(tmp_path: Path):
    """The ImageNet class lists people have: LOC_synset_mapping.txt ('n01440764 tench, Tinca tinca') and
    imagenet_class_index.json ({"0": ["n01440764", "tench"]}) give the WordNet ids ImageNet's folders are
    named by; a JSON list gives its strings. Anything else in a JSON file is refused, naming the entry."""
    synsets = tmp_path / "LOC_synset_mapping.txt"
    synsets.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert read_class_names(synsets) == ["n01440764", "n01443537"]
    index = tmp_path / "imagenet_class_index.json"
    index.write_text(json.dumps({"1": ["n01443537", "goldfish"], "0": ["n01440764", "tench"]}))
    assert read_class_names(index) == ["n01440764", "n01443537"]
    listed = tmp_path / "classes.json"
    listed.write_text(json.dumps(["cat", "dog"]))
    assert read_class_names(listed) == ["cat", "dog"]
    plain = tmp_path / "plain.txt"
    plain.write_text("n01440764\ngreat white shark\n")  # not every line a synset mapping: names as written
    assert read_class_names(plain) == ["n01440764", "great white shark"]
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"0": "a", "2": "c"}))
    with pytest.raises(DatasetError, match=r"gap\.json: .*indices 0\.\.1.*missing 1"):
        read_class_names(gap)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"0": {"name": "a"}}))
    with pytest.raises(DatasetError, match=r"bad\.json: entry '0'"):
        read_class_names(bad)


def test_empty_and_missing_datasets(tmp_path: Path):
    (tmp_path / "ds" / "cat").mkdir(parents=True)
    (tmp_path / "ds" / "cat" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetError, match=r"ds: dataset is empty"):
        load_classification_samples(tmp_path / "ds")
    header_only = tmp_path / "list.csv"
    header_only.write_text("path,label\n")
    with pytest.raises(DatasetError, match=r"list\.csv: dataset is empty"):
        load_classification_samples(header_only)
    empty_json = tmp_path / "list.json"
    empty_json.write_text("[]")
    with pytest.raises(DatasetError, match=r"list\.json: dataset is empty"):
        load_classification_samples(empty_json)
    with pytest.raises(DatasetError, match=r"nowhere: dataset not found"):
        load_classification_samples(tmp_path / "nowhere")
    other = tmp_path / "list.txt"
    other.write_text("a.png 1\n")
    with pytest.raises(DatasetError, match=r"list\.txt: unsupported dataset file"):
        load_classification_samples(other)


@pytest.mark.parametrize(
    ("suffix", "content", "message"),
    [
        (".csv", "file,label\na.png,1\n", r"lacks column\(s\) \['path'\]"),
        (".csv", "path,label\na.png,\n", r"list\.csv:2: empty label"),
        (".json", '{"path": "a.png", "label": 1}', r"expected a JSON list"),
        (".json", '[{"path": "a.png"}]', r"entry \[0\]: missing key\(s\) \['label'\]"),
        (".json", '[{"path": "a.png", "label": 1.5}]', r"entry \[0\]: 'label' must be a class index or a class name"),
        (".json", '[{"path": "a.png", "label": true}]', r"entry \[0\]: 'label' must be"),
        (".json", "[{", r"list\.json: cannot read the JSON list"),
    ],
)
def test_malformed_list_files(tmp_path: Path, suffix: str, content: str, message: str):
    listing = tmp_path / f"list{suffix}"
    listing.write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_classification_samples(listing)


def test_fingerprint_tracks_files_and_labels_not_location_or_order(folder: Path, tmp_path: Path):
    samples, _ = load_classification_samples(folder)
    reference = dataset_fingerprint(samples, folder)
    assert len(reference) == 64
    assert dataset_fingerprint(list(reversed(samples)), folder) == reference

    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert dataset_fingerprint(load_classification_samples(moved)[0], moved) == reference

    relabelled = [Sample(samples[0].path, 1 - samples[0].label), *samples[1:]]
    assert dataset_fingerprint(relabelled, folder) != reference
    assert dataset_fingerprint(samples[:-1], folder) != reference

    listing = tmp_path / "list.csv"
    listing.write_text("path,label\nval/dog/a.png,1\n")
    from_list, _ = load_classification_samples(listing)
    assert dataset_fingerprint(from_list, listing) == dataset_fingerprint(from_list, tmp_path)


# ---------------------------------------------------------------- decoding and resizing


def _decode_one(path: Path, config: DataConfig) -> torch.Tensor:
    image, label, index = ClassificationImages([Sample(str(path), 4)], config)[0]
    assert (label, index) == (4, 0)
    assert image.dtype == torch.uint8 and image.shape == (3, *config.input_size)
    return image


def test_exif_orientation_is_applied(tmp_path: Path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)  # left half red, right half blue as stored
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.png"
    Image.fromarray(stored).save(path, exif=exif)
    image = _decode_one(path, DataConfig(input_size=(40, 20), resize=None, interpolation="nearest"))
    # After a clockwise quarter turn the stored left half is on top.
    assert image[:, :20].tolist() == torch.tensor([255, 0, 0]).view(3, 1, 1).expand(3, 20, 20).tolist()
    assert image[:, 20:].tolist() == torch.tensor([0, 0, 255]).view(3, 1, 1).expand(3, 20, 20).tolist()


def _mode_images(tmp_path: Path) -> list[tuple[Path, tuple[int, int, int]]]:
    size = (12, 10)
    gray = Image.new("L", size, 100)
    rgba = Image.new("RGBA", size, (255, 0, 0, 0))  # fully transparent: composited onto white
    palette = Image.new("P", size, 0)
    palette.putpalette([10, 200, 30] + [0] * 765)
    deep = Image.fromarray(np.full(size[::-1], 32768, dtype=np.uint16))  # 16-bit grayscale, half range
    cmyk = Image.new("CMYK", size, (0, 255, 255, 0))  # pure red ink
    out = []
    for name, img, expected in [
        ("gray.png", gray, (100, 100, 100)),
        ("rgba.png", rgba, (255, 255, 255)),
        ("palette.png", palette, (10, 200, 30)),
        ("deep.png", deep, (128, 128, 128)),
        ("cmyk.jpg", cmyk, (255, 0, 0)),
    ]:
        img.save(tmp_path / name)
        out.append((tmp_path / name, expected))
    return out


def test_unusual_modes_decode_to_rgb(tmp_path: Path):
    config = DataConfig(input_size=(8, 8), resize=None)
    for path, expected in _mode_images(tmp_path):
        image = _decode_one(path, config)
        mean = image.float().mean(dim=(1, 2))
        assert torch.allclose(mean, torch.tensor(expected, dtype=torch.float32), atol=3), (path.name, mean)


@pytest.mark.parametrize(
    "config",
    [
        DataConfig(input_size=(24, 24), resize=28, interpolation="bilinear"),
        DataConfig(input_size=(24, 32), resize=30, interpolation="bicubic"),
        DataConfig(input_size=(20, 20), resize=24, interpolation="nearest"),
        DataConfig(input_size=(20, 28), resize=None, interpolation="bilinear"),
    ],
    ids=["bilinear", "bicubic-nonsquare", "nearest", "no-resize"],
)
def test_resize_crop_matches_torchvision_v2(tmp_path: Path, config: DataConfig):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(pixels).save(path)
    source = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    mode = v2.InterpolationMode(config.interpolation)
    if config.resize is None:
        reference = v2.Resize(list(config.input_size), interpolation=mode, antialias=True)(source)
    else:
        reference = v2.Compose(
            [v2.Resize(config.resize, interpolation=mode, antialias=True), v2.CenterCrop(list(config.input_size))]
        )(source)
    assert torch.equal(_decode_one(path, config), reference)


def test_imagenet_protocol_close_to_pil(tmp_path: Path):
    """Independent reference: the PIL Resize(shorter side) + centre crop the ImageNet-C images were made with."""
    yy, xx = np.mgrid[0:90, 0:120]
    pixels = np.stack([xx * 2, yy * 2, (xx + yy) % 256], axis=-1).astype(np.uint8)
    path = tmp_path / "ramp.png"
    Image.fromarray(pixels).save(path)
    ours = _decode_one(path, DataConfig(input_size=(48, 48), resize=60, interpolation="bilinear"))
    pil = Image.fromarray(pixels).resize((80, 60), Image.BILINEAR)
    pil = np.array(pil)[6:54, 16:64]
    diff = (ours.permute(1, 2, 0).int() - torch.from_numpy(pil).int()).abs()
    assert diff.max() <= 2


# ---------------------------------------------------------------- batching and skips


@pytest.fixture
def mixed(tmp_path: Path) -> list[Sample]:
    """Seven samples; the ones at index 2, 4 and 5 cannot be decoded (corrupt, missing, corrupt)."""
    samples = []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        if i in (2, 5):
            _corrupt(path)
        elif i != 4:
            _png(path, color=(i * 30, 0, 0))
        samples.append(Sample(str(path), label=i % 3))
    return samples


def _drain(dataset, batch_size, num_workers=0):
    return [(b.images, b.sample_ids.tolist(), b.labels.tolist(), s) for b, s in
            iterate_batches(dataset, batch_size, num_workers=num_workers)]


def test_unreadable_files_are_skipped_and_recorded(mixed: list[Sample]):
    dataset = ClassificationImages(mixed, SMALL)
    assert dataset[2] is None
    out = _drain(dataset, batch_size=3)
    assert [ids for _, ids, _, _ in out] == [[0, 1], [3], [6]]  # indices 4, 5 fill a batch alone: reported with 6
    assert [labels for _, _, labels, _ in out] == [[0, 1], [0], [0]]
    skipped = [s for _, _, _, batch_skips in out for s in batch_skips]
    assert [s.path for s in skipped] == [mixed[2].path, mixed[4].path, mixed[5].path]
    assert "not a readable image" in skipped[0].reason and "no such file" in skipped[1].reason
    assert all(isinstance(s, SkippedFile) and not s.reason.startswith(s.path) for s in skipped)
    images = out[0][0]
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 16, 16)
    assert int(images[1, 0, 8, 8]) == 30  # sample 1 is (30, 0, 0)


def test_trailing_unreadable_files_still_reported(mixed: list[Sample]):
    out = _drain(ClassificationImages(mixed[:6], SMALL), batch_size=2)
    assert [ids for _, ids, _, _ in out] == [[0, 1], [3], []]
    assert [s.path for s in out[-1][3]] == [mixed[4].path, mixed[5].path]
    assert out[-1][0].shape == (0, 3, 16, 16)


def test_workers_give_the_same_batches_and_reasons(mixed: list[Sample]):
    dataset = ClassificationImages(mixed, SMALL)
    serial, parallel = _drain(dataset, 2), _drain(dataset, 2, num_workers=2)
    assert [x[1:] for x in serial] == [x[1:] for x in parallel]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(serial, parallel))


def test_strict_raises_naming_the_file(mixed: list[Sample]):
    dataset = ClassificationImages(mixed, SMALL, strict=True)
    with pytest.raises(DatasetError, match=r"2\.png: not a readable image"):
        dataset[2]
    with pytest.raises(DatasetError, match=r"2\.png: not a readable image"):
        _drain(dataset, batch_size=4)
    with pytest.raises(DatasetError, match=r"^\S*2\.png: not a readable image") as info:
        _drain(dataset, batch_size=4, num_workers=1)
    assert "Traceback" not in str(info.value)


def test_batch_arguments_validated(mixed: list[Sample]):
    dataset = ClassificationImages(mixed, SMALL)
    with pytest.raises(DatasetError, match="batch_size"):
        next(iterate_batches(dataset, 0))
    with pytest.raises(DatasetError, match="num_workers"):
        next(iterate_batches(dataset, 2, num_workers=-1))
