"""The bad-input corpus (issue 13): inputs a new user really produces, each with the outcome it must have.

Every case builds its input under tmp_path and names the call to try through a public entry point
(`vs.run` on tiny images, or the dataset / model loaders where no run is needed). The outcome is one of:
an error whose message holds given words (one line, naming the file or option), a recorded skip naming
the file with a reason (the rest of the run goes on), or success with a check. Case ids are
"13.<item of the issue>-<what>"; append new cases to CASES.
"""

from __future__ import annotations

import re

import json
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import visionstress as vs
from visionstress.datasets import (ClassificationImages, DetectionImages, SegmentationImages, iterate_batches,
                                   iterate_detection_batches, iterate_segmentation_batches,
                                   load_classification_samples, load_coco_dataset, load_segmentation_dataset)
from visionstress.images import MAX_PIXELS, PILLOW_MAX_PIXELS, read_image
from visionstress.models import DataConfig, load_model, resolve_data_config
from visionstress.models.label_map import resolve_label_map
from visionstress.suite import load_suite

CLASSIFIER = "visionstress.models.demo:tiny_classifier"
CONFIG = DataConfig(input_size=(16, 16), resize=None)


@dataclass(frozen=True)
class Read:
    """What a run or a dataset made of the input: how many files were listed, which were skipped and why."""

    listed: int
    skipped: list[dict[str, str]]  # {"path", "reason"}
    result: Any = None


@dataclass(frozen=True)
class Fails:
    """An error of type `kind` whose message holds every one of `words`."""

    words: tuple[str, ...]
    kind: type[BaseException] = ValueError


@dataclass(frozen=True)
class Skips:
    """Files (by name) listed but left out, each recorded with a reason holding the given words; the
    other `read` files are used."""

    reasons: dict[str, str]
    read: int


@dataclass(frozen=True)
class Works:
    """The call succeeds and `check(result)` holds."""

    check: Callable[[Any], None] = lambda result: None


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path], Callable[[], Any]]  # builds the input under tmp_path; returns the call to try
    expect: Fails | Skips | Works
    xfail: str | None = None  # strict: the mark must go once the fix lands
    marks: tuple[Any, ...] = field(default_factory=tuple)


# --- building inputs ---------------------------------------------------------------------------------


def _png(path: Path, size: tuple[int, int] = (16, 16), value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def _folder(root: Path, per_class: int = 2) -> Path:
    """A two-class ImageFolder of tiny images."""
    for c in ("a", "b"):
        for i in range(per_class):
            _png(root / c / f"{i}.png", value=60 + 80 * (c == "b"))
    return root


def _tiff(path: Path, array: np.ndarray) -> Path:
    """A single-channel TIFF in the mode Pillow gives the array's dtype (float32: F, int32: I, uint16: I;16)."""
    Image.fromarray(array).save(path)
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _deep(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def _coco(root: Path, annotations: list[dict], names: tuple[str, ...] = ("x.png",)) -> Path:
    for name in names:
        if not name.startswith(("/", "..")):
            _png(root / name, (8, 8))
    images = [{"id": i + 1, "file_name": name, "width": 8, "height": 8} for i, name in enumerate(names)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


def _crowd(counts: Any) -> dict:
    return {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 1,
            "segmentation": {"size": [8, 8], "counts": counts}}


# --- running them ------------------------------------------------------------------------------------


def _run(data: Path, **options: Any) -> Read:
    options = {"model": CLASSIFIER, "num_classes": 2, "suite": "quick", "out": data.parent / "out", **options}
    card = vs.run(data=data, bootstrap=0, workers=0, gallery=0, device="cpu", **options)
    return Read(card.dataset["num_listed"], card.dataset["skipped"], card)


def _read_classification(data: Path, **options: Any) -> Read:
    samples, _ = load_classification_samples(data)
    dataset = ClassificationImages(samples, CONFIG, **options)
    skipped = [s for _, batch_skips in iterate_batches(dataset, 4, 0) for s in batch_skips]
    return Read(len(samples), [{"path": s.path, "reason": s.reason} for s in skipped], samples)


def _decode(path: Path) -> Callable[[], torch.Tensor]:
    return lambda: read_image(path)


def _gray_level(level: int) -> Callable[[torch.Tensor], None]:
    def check(image: torch.Tensor) -> None:
        assert image.shape[0] == 3 and int(image.min()) == int(image.max()) == level, image.unique()

    return check


# --- the cases ---------------------------------------------------------------------------------------


def non_utf8_folder(tmp: Path) -> Path:
    root = _folder(tmp / "data")
    (root / "a" / "0.png").rename(root / "a" / os.fsdecode(b"\xff\xfe.png"))  # not UTF-8: Latin-1 or UTF-16
    return root


def non_utf8_names_are_read_and_shown_safely(tmp: Path) -> Callable[[], Any]:
    root = non_utf8_folder(tmp)
    broken = root / "b" / os.fsdecode(b"broken-\xe9.png")
    (root / "b" / "0.png").rename(broken)
    os.truncate(broken, 10)  # unreadable: its skip must name it safely
    return lambda: _read_classification(root)


def _non_utf8_checks(read: Read) -> None:
    shown = [sample.display_path for sample in read.result]
    assert any(name.endswith("a/\\xff\\xfe.png") for name in shown), shown
    for text in shown + [s["path"] + s["reason"] for s in read.skipped]:
        text.encode("utf-8")  # what records, the scorecard and the terminal need
    assert [s["path"].rsplit("/", 1)[-1] for s in read.skipped] == ["broken-\\xe9.png"]


def links_and_directories(tmp: Path) -> Callable[[], Any]:
    root = _folder(tmp / "data")
    os.symlink(tmp / "nowhere.png", root / "a" / "dangling.png")
    os.symlink(root / "a" / "loop2.png", root / "a" / "loop1.png")
    os.symlink(root / "a" / "loop1.png", root / "a" / "loop2.png")
    (root / "b" / "folder.png").mkdir()
    return lambda: _run(root)


def segmentation_links(tmp: Path) -> Callable[[], Any]:
    """A segmentation set whose images folder holds a dangling link and a looping one (with their masks)."""
    root = tmp / "seg"
    (root / "masks").mkdir(parents=True)
    for name in ("0", "1", "dangling", "loop"):
        Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(root / "masks" / f"{name}.png")
    for name in ("0", "1"):
        _png(root / "images" / f"{name}.png")
    os.symlink(tmp / "nowhere.png", root / "images" / "dangling.png")
    os.symlink(root / "images" / "loop.png", root / "images" / "loop.png")
    (root / "classes.txt").write_text("background\nthing\n")

    def read() -> Read:
        dataset = load_segmentation_dataset(root)
        skipped = [s for _, info in iterate_segmentation_batches(SegmentationImages(dataset), 4) for s in info.skipped]
        return Read(len(dataset.samples), [{"path": s.path, "reason": s.reason} for s in skipped])

    return read


def huge_png(tmp: Path) -> Callable[[], Any]:
    root = _folder(tmp / "data")
    Image.new("1", (13_000, 13_000)).save(root / "a" / "huge.png")  # 169 megapixels, 20 kB on disk
    return lambda: _run(root)


def pixel_limit_option(tmp: Path) -> Callable[[], Any]:
    root = _folder(tmp / "data")
    _png(root / "b" / "big.png", (20, 20))
    return lambda: _read_classification(root, max_pixels=300)


def list_file(tmp: Path, rows: list[tuple[str, int]], suffix: str = ".csv", **options: Any) -> Callable[[], Any]:
    root = tmp / "lists"
    _png(tmp / "outside.png")
    _png(root / "inside.png")
    path = root / f"val{suffix}"
    if suffix == ".csv":
        path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    else:
        path.write_text(json.dumps([{"path": p, "label": label} for p, label in rows]))
    return lambda: load_classification_samples(path, **options)


def _outside(tmp_rows: Callable[[Path], list[tuple[str, int]]], suffix: str = ".csv", **options: Any):
    return lambda tmp: list_file(tmp, tmp_rows(tmp), suffix, **options)


def coco_outside(tmp: Path, **options: Any) -> Callable[[], Any]:
    root = tmp / "ds"
    _png(tmp / "outside.png", (8, 8))
    path = _coco(root, [], names=("x.png", "../outside.png"))
    return lambda: load_coco_dataset(path, **options)


def deep_json(tmp: Path, reader: str) -> Callable[[], Any]:
    path = tmp / ("suite.yaml" if reader == "suite" else "deep.json")
    text = _deep(5_000) if reader == "suite" else _deep()
    path.write_text(text)
    if reader == "classification":
        return lambda: load_classification_samples(path)
    if reader == "detection":
        (tmp / "images").mkdir()
        return lambda: load_coco_dataset(path, tmp / "images")
    if reader == "label_map":
        return lambda: resolve_label_map(path, [{"id": 1, "name": "thing"}])
    if reader == "data_config":
        return lambda: resolve_data_config(None, str(path), {})
    return lambda: load_suite(path)


def nested_list_entry(tmp: Path) -> Callable[[], Any]:
    path = tmp / "val.json"
    path.write_text(json.dumps([json.loads(_deep(500))]))
    return lambda: load_classification_samples(path)


def list_with_link_out(tmp: Path) -> Callable[[], Any]:
    (tmp / "lists").mkdir()
    os.symlink(tmp / "outside.png", tmp / "lists" / "link.png")
    return list_file(tmp, [("link.png", 0)])


def deep_tiff_in_a_folder(tmp: Path) -> Callable[[], Any]:
    root = _folder(tmp / "data")
    _tiff(root / "a" / "deep.tif", np.full((16, 16), 70_000, np.int32))
    return lambda: _read_classification(root)


def garbage_rle(counts: Any) -> Callable[[Path], Callable[[], Any]]:
    return lambda tmp: (lambda path: lambda: load_coco_dataset(path))(_coco(tmp, [_crowd(counts)]))


def valid_rle_masks(tmp: Path) -> Callable[[], Any]:
    from pycocotools import mask as mask_utils

    mask = np.zeros((8, 8), np.uint8, order="F")
    mask[2:6, 1:4] = 1
    counts = mask_utils.encode(mask)["counts"].decode()
    path = _coco(tmp, [_crowd(counts), {**_crowd([10, 5, 3, 46]), "id": 8}])

    def load() -> Any:
        dataset = load_coco_dataset(path, with_masks=True)
        (batch, _), = list(iterate_detection_batches(DetectionImages(dataset, with_masks=True), 4))
        return batch.boxes[0].masks

    return load


def _masks_are(expected_pixels: list[int]) -> Callable[[Any], None]:
    def check(masks: torch.Tensor) -> None:
        assert [int(m.sum()) for m in masks] == expected_pixels

    return check


USER_MODELS = """
    from torch import nn

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x)

    def build():
        return UNet()
"""


def segmentation_factory(tmp: Path, through: str) -> Callable[[], Any]:
    (tmp / "vs_corpus_models.py").write_text(textwrap.dedent(USER_MODELS))  # imported from the current directory
    if through == "loader":
        return lambda: load_model("vs_corpus_models:build", task="segmentation", dataset_classes=3)
    root = tmp / "seg"
    (root / "masks").mkdir(parents=True)
    for i in range(2):
        _png(root / "images" / f"{i}.png")
        Image.fromarray(np.full((16, 16), i, np.uint8), mode="L").save(root / "masks" / f"{i}.png")
    (root / "classes.txt").write_text("background\nthing\nother\n")
    return lambda: vs.run(model="vs_corpus_models:build", data=root, task="segmentation", suite="quick",
                          bootstrap=0, workers=0, gallery=0, device="cpu", out=tmp / "out")


# --- the runner's items (issue 13: 1, 2, 4, 5, 6, 7, 14, 17) -------------------------------------------


def rerun_into_a_finished_run(tmp: Path) -> Callable[[], Any]:
    """Item 1: a second run into a folder holding a finished run is refused and the run is untouched."""
    data = _folder(tmp / "data")
    _run(data)
    before = (tmp / "out" / "records.parquet").read_bytes()

    def call() -> None:
        try:
            _run(data)
        finally:
            assert (tmp / "out" / "records.parquet").read_bytes() == before

    return call


def killed_journal_stays_readable(tmp: Path) -> Callable[[], Any]:
    """Item 2: what a run committed is readable after a kill at any moment: a part torn in the middle of
    its write is a `.tmp` file the journal never reads, and the committed parts resume."""
    data = _folder(tmp / "data", per_class=4)

    def call() -> Read:
        _run(data, batch_size=2)
        parts = tmp / "out" / "records.parts"
        (parts / "000-0000000099.parquet.tmp").write_bytes(b"PAR1 torn")  # a kill during a write
        (tmp / "out" / "scorecard.json").unlink()
        return _run(data, batch_size=2, resume=True)

    return call


def summary_markdown_of(tmp: Path) -> Callable[[], Any]:
    """Item 6: summary.md escapes a suite name with a backtick and raw HTML."""
    suite = tmp / "s.yaml"
    suite.write_text("name: 'x` <script>alert(1)</script>'\nperturbations: [brightness]\n")
    data = _folder(tmp / "data")
    return lambda: (_run(data, suite=str(suite)), (tmp / "out" / "summary.md").read_text())[1]


def _summary_is_inert(text: str) -> None:
    assert "<script>" not in text and "&lt;script&gt;" in text and "x\\`" in text, text


def progress_lines_off_a_terminal(tmp: Path) -> Callable[[], Any]:
    """Item 14: a run whose output is not a terminal prints plain progress lines with the known total
    from the start and no absurd first rate."""
    from typer.testing import CliRunner

    from visionstress.cli import app

    data = _folder(tmp / "data")
    return lambda: CliRunner().invoke(app, ["run", "--model", CLASSIFIER, "--num-classes", "2", "--data", str(data),
                                            "--suite", "quick", "--bootstrap", "0", "--workers", "0", "--out",
                                            str(tmp / "out")])


def _progress_is_plain(result: Any) -> None:
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("stressing:")]
    assert lines and lines[0].startswith("stressing: ") and "/64 predictions" in lines[0], result.output
    rates = [float(r.replace(",", "")) for line in lines for r in re.findall(r"([\d,.]+) img/s", line)]
    assert all(rate < 1e6 for rate in rates), lines


def locked_folder(tmp: Path) -> Callable[[], Any]:
    """Item 17: a second run on a folder in use refuses (the lock), instead of the last one winning."""
    from filelock import FileLock

    data = _folder(tmp / "data")
    (tmp / "out").mkdir()
    lock = FileLock(str(tmp / "out" / ".visionstress.lock"))
    lock.acquire()

    def call() -> None:
        try:
            _run(data)
        finally:
            lock.release()

    return call


CASES = [
    Case("13.1-rerun-into-a-finished-run", rerun_into_a_finished_run,
         Fails(("holds another run's files", "--resume continues it", "--overwrite replaces it"))),
    Case("13.2-killed-journal-stays-readable", killed_journal_stays_readable, Skips({}, 8)),
    Case("13.4-negative-seed-before-work", lambda tmp: (lambda d: lambda: _run(d, seed=-5))(_folder(tmp / "data")),
         Fails(("--seed", "-5", "a seed is a whole number"))),
    Case("13.5-suite-table-nan", lambda tmp: (lambda p: lambda: load_suite(p))(_write(
         tmp / "s.yaml", "perturbations:\n  - {name: gaussian_noise, table: [0.1, .nan, 0.3, 0.4, 0.5]}\n")),
         Fails(("s.yaml", "perturbations[0].table[1]", "nan"))),
    Case("13.6-summary-markdown-escaped", summary_markdown_of, Works(_summary_is_inert)),
    Case("13.7-out-is-a-file", lambda tmp: (lambda d, f: lambda: _run(d, out=f))(
         _folder(tmp / "data"), _write(tmp / "a-file", "x")), Fails(("a-file", "--out is an existing file"))),
    Case("13.14-progress-off-a-terminal", progress_lines_off_a_terminal, Works(_progress_is_plain)),
    Case("13.17-two-runs-one-folder", locked_folder, Fails(("another visionstress run is writing",))),
    Case("13.3-non-utf8-name", non_utf8_names_are_read_and_shown_safely, Works(_non_utf8_checks)),
    Case("13.3-non-utf8-name-run", lambda tmp: (lambda root: lambda: _run(root))(non_utf8_folder(tmp)),
         Works(lambda read: read.result.dataset["num_samples"] == 4)),
    Case("13.8-float-tiff-0-1", lambda tmp: _decode(_tiff(tmp / "f.tif", np.full((6, 5), 0.5, np.float32))),
         Works(_gray_level(128))),
    Case("13.8-float-tiff-0-255", lambda tmp: _decode(_tiff(tmp / "f.tif", np.full((6, 5), 200.0, np.float32))),
         Works(_gray_level(200))),
    Case("13.8-float-tiff-out-of-range",
         lambda tmp: _decode(_tiff(tmp / "f.tif", np.linspace(0, 1000, 30, dtype=np.float32).reshape(6, 5))),
         Fails(("f.tif", "float image with values from 0 to 1000", "expected 0-1"))),
    Case("13.8-float-tiff-nan", lambda tmp: _decode(_tiff(tmp / "f.tif", np.full((6, 5), np.nan, np.float32))),
         Fails(("f.tif", "NaN or infinite"))),
    Case("13.8-int32-tiff-above-65535",
         lambda tmp: _decode(_tiff(tmp / "i.tif", np.full((6, 5), 70_000, np.int32))),
         Fails(("i.tif", "32-bit integer image with values from 70000 to 70000", "convert it to 8 or 16 bits"))),
    Case("13.8-int32-tiff-16-bit-data",
         lambda tmp: _decode(_tiff(tmp / "i.tif", np.full((6, 5), 65_535, np.int32))), Works(_gray_level(255))),
    Case("13.8-int32-tiff-8-bit-data",
         lambda tmp: _decode(_tiff(tmp / "i.tif", np.full((6, 5), 200, np.int32))), Works(_gray_level(200))),
    Case("13.8-uint16-tiff-dark", lambda tmp: _decode(_tiff(tmp / "u.tif", np.full((6, 5), 200, np.uint16))),
         Works(_gray_level(1))),  # 200 of 65535: near black, as stored (no 8-bit guess for a declared 16-bit image)
    Case("13.8-int32-tiff-in-a-dataset", deep_tiff_in_a_folder,
         Skips({"deep.tif": "beyond the 16-bit range"}, read=4)),
    *[Case(f"13.9-deep-json-{reader}", lambda tmp, reader=reader: deep_json(tmp, reader),
           Fails(("deep.json" if reader != "suite" else "suite.yaml", "maximum recursion depth")))
      for reader in ("classification", "detection", "label_map", "data_config", "suite")],
    Case("13.9-nested-entry-in-a-list", nested_list_entry,
         Fails(("val.json: entry [0]: expected an object", "[[[[[[...]]]]]]"))),
    Case("13.10-links-and-directories", links_and_directories,
         Skips({"dangling.png": "dangling symbolic link (to ", "loop1.png": "symbolic link loop",
                "loop2.png": "symbolic link loop", "folder.png": "a directory, not an image file"}, read=4)),
    Case("13.10-segmentation-links", segmentation_links,
         Skips({"dangling.png": "dangling symbolic link", "loop.png": "symbolic link loop"}, read=2)),
    Case("13.11-list-dotdot-path", _outside(lambda tmp: [("inside.png", 0), ("../outside.png", 1)]),
         Fails(("val.csv:3", "'../outside.png' points outside the list's folder", "--allow-outside-paths"))),
    Case("13.11-list-absolute-path", _outside(lambda tmp: [(str(tmp / "outside.png"), 1)], ".json"),
         Fails(("val.json: entry [0]", "points outside the list's folder"))),
    Case("13.11-list-link-out", list_with_link_out,
         Fails(("val.csv:2", "'link.png' points outside"))),
    Case("13.11-list-outside-allowed",
         _outside(lambda tmp: [("inside.png", 0), ("../outside.png", 1), (str(tmp / "outside.png"), 1)],
                  allow_outside_paths=True),
         Works(lambda result: [Path(s.path).is_file() for s in result[0]] == [True] * 3)),
    Case("13.11-coco-outside", coco_outside, Fails(("annotations.json: image 2", "'../outside.png' points outside",
                                                    "--allow-outside-paths"))),
    Case("13.11-coco-outside-allowed", lambda tmp: coco_outside(tmp, allow_outside_paths=True),
         Works(lambda dataset: [s.path for s in dataset.samples] == ["x.png", "../outside.png"])),
    Case("13.12b-rle-garbage-counts", garbage_rle("not an RLE!"),
         Fails(("annotations.json: annotation 7", "'not an RLE!' is not a valid compressed RLE string"))),
    Case("13.12b-rle-counts-too-many-pixels", garbage_rle("P3"),
         Fails(("annotations.json: annotation 7", "cover 96 pixels, but its 8x8 image has 64"))),
    Case("13.12b-rle-list-too-few-pixels", garbage_rle([10, 20]),
         Fails(("annotation 7", "cover 30 pixels, but its 8x8 image has 64"))),
    Case("13.12b-rle-negative-run", garbage_rle([10, -5, 59]), Fails(("annotation 7", "negative run"))),
    Case("13.12b-rle-valid", valid_rle_masks, Works(_masks_are([12, 51]))),
    Case("13.13-huge-png", huge_png,
         Skips({"huge.png": "13000x13000 is 169,000,000 pixels, over the max_pixels limit of 100,000,000"}, read=4)),
    Case("13.13-max-pixels-option", pixel_limit_option, Skips({"big.png": "over the max_pixels limit of 300"}, read=4)),
    Case("13.16-segmentation-factory-without-arguments", lambda tmp: segmentation_factory(tmp, "loader"),
         Works(lambda loaded: loaded.format == "python" and loaded.num_classes is None)),
    Case("13.16-segmentation-factory-without-arguments-run", lambda tmp: segmentation_factory(tmp, "run"),
         Works(lambda card: card.dataset["num_samples"] == 2)),
    Case("13.16-explicit-num-classes-to-factory-without-it",
         lambda tmp: (lambda make: lambda: load_model("vs_corpus_models:build", task="segmentation", num_classes=3))(
             segmentation_factory(tmp, "loader")),
         Fails(("vs_corpus_models:build", "num_classes was given but build() takes no num_classes argument"))),
]


def _params() -> list[Any]:
    out = []
    for case in CASES:
        marks = list(case.marks)
        if case.xfail:
            marks.append(pytest.mark.xfail(reason=case.xfail, strict=True))
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


@pytest.mark.filterwarnings("ignore:.*random weights")
@pytest.mark.parametrize("case", _params())
def test_bad_input(case: Case, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs write nothing into the checkout; factories import from here
    monkeypatch.syspath_prepend(str(tmp_path))
    call = case.make(tmp_path)
    expect = case.expect
    if isinstance(expect, Fails):
        with pytest.raises(expect.kind) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and all(word in message for word in expect.words), message
        message.encode("utf-8")
        return
    result = call()
    if isinstance(expect, Works):
        assert expect.check(result) is not False, result
        return
    assert isinstance(result, Read), result
    reasons = {Path(s["path"]).name: s["reason"] for s in result.skipped}
    assert set(reasons) == set(expect.reasons), result.skipped
    for name, words in expect.reasons.items():
        assert words in reasons[name], (name, reasons[name])
    assert result.listed == expect.read + len(expect.reasons)
    if isinstance(result.result, vs.Scorecard):
        assert result.result.dataset["num_samples"] == expect.read


def test_pixel_limits_agree_with_the_declared_option():
    from visionstress.options import all_options

    option = {o.name: o for o in all_options()}["max_pixels"]
    assert (option.default, option.maximum) == (MAX_PIXELS, PILLOW_MAX_PIXELS)
    assert PILLOW_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
