"""Labelled image datasets for classification: discovery, label mapping, decoding and batching.

A dataset is either an ImageFolder tree (`root/<class>/<image>`) or a list file (`.csv` / `.json`
with `path,label`). Labels end up as indices in the *model's* class order: with `class_names`
(one name per model output, e.g. the 1000 ImageNet names), folder names and name labels are looked
up in it, so a dataset that holds a subset of the model's classes is scored against the right logits.

Images are decoded once per run (DESIGN §1) and brought to the model's input size with the
ImageNet-C protocol (shorter side to `resize`, centre crop to `input_size`) *before* any
perturbation, so perturbations act on exactly the pixels the model sees. Unreadable files are
skipped and reported, never fatal unless `strict`.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import os
import re
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from visionstress.batch import Batch
from visionstress.foreground import ForegroundError, pair_masks, read_foreground_mask
from visionstress.images import MAX_PIXELS, ImageReadError, display_path, read_image

if TYPE_CHECKING:  # only annotated here: keeps datasets importable without loading the model stack
    from visionstress.models.data_config import DataConfig

# torchvision's ImageFolder extensions, matched case-insensitively (ImageNet ships `.JPEG`).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
_INDEX_LABEL = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Sample:
    """One labelled image; `label` is an index in the returned class-name list (the model's order)."""

    path: str
    label: int

    @property
    def display_path(self) -> str:
        """`path` safe to print and to write to UTF-8 files (records, scorecard, report); see
        `visionstress.images.display_path`."""
        return display_path(self.path)


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the run because it could not be decoded; reported in the scorecard.
    `path` is the display form (`visionstress.images.display_path`), safe to write anywhere."""

    path: str
    reason: str


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message names the file or key and the problem."""


def read_image_or_skip(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> torch.Tensor | SkippedFile:
    """The decoded image, or a SkippedFile saying why it could not be decoded (or is over `max_pixels`).
    Never raised here, so that loader workers hand the reason back and a strict run raises it in the
    main process, where the message is not buried under a worker traceback."""
    try:
        return read_image(path, max_pixels=max_pixels)
    except (ImageReadError, Image.DecompressionBombError) as exc:
        shown = display_path(path)
        return SkippedFile(path=shown, reason=str(exc).removeprefix(f"{shown}: "))


class SkipsUnreadable(Dataset):
    """Base of datasets whose `load(index)` returns a sample or a SkippedFile: indexing hands the skip
    on (the batching reports it), or raises it as a DatasetError when `strict`."""

    strict: bool

    def load(self, index: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:
        item = self.load(index)
        if isinstance(item, SkippedFile) and self.strict:
            raise DatasetError(f"{item.path}: {item.reason}")
        return item


_SYNSET_LINE = re.compile(r"^(n\d{8})\s+\S")
"""A line of ImageNet's LOC_synset_mapping.txt: a WordNet id, then its words."""


def read_class_names(path: str | Path) -> list[str]:
    """Class names in model index order, one per line (line *i* is output *i*).

    Blank lines inside the list are rejected because they would silently shift every later index;
    trailing blank lines are ignored. Duplicate names are allowed (the ImageNet list has two
    "crane"s) and only become an error if a dataset refers to one by name. The lists ImageNet users
    have work as they are: LOC_synset_mapping.txt (every line a WordNet id and its words) and
    imagenet_class_index.json (`{"0": ["n01440764", "tench"], ...}`) give the WordNet ids, which name
    ImageNet's folders; a `.json` file may also be a list of names or `{"index": "name"}`.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: class-names file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read class names ({exc})") from exc
    if path.suffix.lower() == ".json":
        return _json_class_names(path, text)
    names = [line.strip() for line in text.splitlines()]
    synsets = [_SYNSET_LINE.match(name) for name in names if name]
    if synsets and all(synsets):
        names = [m.group(1) if m else "" for m in map(_SYNSET_LINE.match, names)]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise DatasetError(f"{path}: class-names file is empty (expected one class name per line)")
    for lineno, name in enumerate(names, start=1):
        if not name:
            raise DatasetError(f"{path}:{lineno}: blank line in the class list would shift every later class index")
    return names


def _json_class_names(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        keys = {}
        for key in data:
            if not re.fullmatch(r"\d+", str(key)):
                raise DatasetError(f"{path}: key {key!r} is not a class index; expected {{\"0\": name, ...}}")
            keys[int(key)] = key
        missing = sorted(set(range(len(keys))) - set(keys))
        if missing:
            raise DatasetError(f"{path}: keys must be the indices 0..{len(keys) - 1}, one per class; missing "
                               f"{', '.join(map(str, missing[:5]))}")
        data = [data[keys[i]] for i in range(len(keys))]
        labels = list(map(str, range(len(data))))
    elif isinstance(data, list):
        labels = list(map(str, range(len(data))))
    else:
        raise DatasetError(f"{path}: expected a list of class names or {{\"0\": name, ...}}, got {type(data).__name__}")
    names = []
    for label, entry in zip(labels, data):
        if isinstance(entry, list) and entry and isinstance(entry[0], str):
            entry = entry[0]  # imagenet_class_index.json: [WordNet id, words]
        if not isinstance(entry, str) or not entry.strip():
            raise DatasetError(f"{path}: entry {label!r} is not a class name ({entry!r})")
        names.append(entry.strip())
    if not names:
        raise DatasetError(f"{path}: class-names file is empty")
    return names


def load_classification_samples(
    data: str | Path, class_names: Sequence[str] | None = None, *, allow_outside_paths: bool = False
) -> tuple[list[Sample], list[str]]:
    """Discover the labelled images of `data` and return `(samples, class_names)`.

    `data` is an ImageFolder directory (one sub-folder per class, classes in sorted folder order,
    hidden folders and files ignored, images found recursively by extension) or a `.csv` / `.json`
    list of `path,label` (paths relative to the list file). A label that is an integer (or a string
    of digits) is a class index; any other label is a class name. A folder entry with an image
    extension that is not a readable file (a dangling or looping symbolic link, a directory called
    `x.png`) is listed like any image, so that the run records it as skipped with the reason.

    A list's paths must stay inside the list's folder (after `..` and symbolic links), as COCO file
    names must stay inside their images folder: a list from elsewhere cannot make a run read
    arbitrary files. `allow_outside_paths` lifts that for lists that deliberately point elsewhere.

    With `class_names` (the model's classes in index order), folder names and name labels are mapped
    to those indices and the returned names are `class_names`; a name not in it, or an index outside
    it, is a `DatasetError` naming the offenders. Without it, the classes are the sorted folder / label
    names, or `"0".."max label"` for index labels: the caller may widen that list to the model's
    output width, since a dataset need not contain every class.
    """
    path = Path(data)
    if class_names is not None:
        class_names = [str(name) for name in class_names]
        if not class_names:
            raise DatasetError("class_names is empty: give one name per model output")
    if path.is_dir():
        samples, names = _image_folder(path, class_names)
        if not samples:
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise DatasetError(f"{path}: dataset is empty (no {extensions} files in its class folders)")
        return samples, names
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            rows = _csv_rows(path)
        elif suffix == ".json":
            rows = _json_rows(path)
        else:
            raise DatasetError(
                f"{path}: unsupported dataset file (expected an ImageFolder directory, a .csv or a .json list)"
            )
        if not rows:
            raise DatasetError(f"{path}: dataset is empty (the list has no entries)")
        return _list_samples(path, rows, class_names, allow_outside_paths)
    raise DatasetError(f"{path}: dataset not found")


def dataset_fingerprint(samples: Sequence[Sample], root: str | Path) -> str:
    """SHA-256 (hex) of the sorted (path relative to `root`, label) pairs.

    Identifies *which* images with *which* labels were scored, independent of where the dataset lives
    and of listing order; it does not hash pixel content, which would mean reading every file twice.
    `root` may be the dataset directory or the list file itself (its folder is then the root).
    """
    root = Path(root)
    if root.is_file():
        root = root.parent
    entries = []
    for sample in samples:
        p = Path(sample.path)
        try:
            rel = p.relative_to(root).as_posix()
        except ValueError:
            rel = p.as_posix()
        entries.append(json.dumps([rel, int(sample.label)]))
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(entry.encode("utf-8") + b"\n")
    return digest.hexdigest()


class ClassificationImages(Dataset):
    """Decoded images at the model's input size, as `(uint8 [3, H, W], label, index)`.

    Resizing follows the ImageNet-C protocol with the model's `DataConfig`: the shorter side goes to
    `resize` and the centre `input_size` is cropped (or, with `resize=None`, the image is resized
    straight to `input_size`), antialiased, on uint8 tensors with torchvision's v2 kernels; mean/std
    normalisation is left to the adapter, after perturbation. An unreadable file yields `None`
    (`strict=False`) so the run goes on and reports it, or raises `DatasetError` (`strict=True`).

    With `masks` (a folder of object masks, see `visionstress.foreground.pair_masks`), items gain a
    fourth element, the object mask as bool `[H, W]`, resized and cropped exactly as the image
    (nearest neighbour): for the background and cue perturbations. Every image's mask is found
    before any work; a mask of another size than its image is an error naming the file.
    """

    def __init__(self, samples: Sequence[Sample], data_config: DataConfig, strict: bool = False,
                 masks: str | Path | None = None, *, max_pixels: int | None = MAX_PIXELS) -> None:
        self.samples = list(samples)
        self.data_config = data_config
        self.strict = strict
        self.max_pixels = max_pixels
        self._interpolation = InterpolationMode(data_config.interpolation)
        try:
            self.mask_paths = None if masks is None else pair_masks(
                [s.path for s in self.samples], masks,
                unreadable=lambda path: isinstance(read_image_or_skip(path, max_pixels), SkippedFile))
        except ForegroundError as exc:
            raise DatasetError(str(exc)) from None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | None:
        item = self.load(index)
        if isinstance(item, SkippedFile):
            if self.strict:
                raise DatasetError(f"{item.path}: {item.reason}")
            return None
        return item

    def shape(self, index: int) -> tuple[int, int]:
        """Every image is cropped to the model's input size."""
        return tuple(int(s) for s in self.data_config.input_size)

    def load(self, index: int) -> tuple[torch.Tensor, int, int] | SkippedFile:
        """The decoded sample, or why it could not be decoded (see `read_image_or_skip`)."""
        sample = self.samples[index]
        image = read_image_or_skip(sample.path, self.max_pixels)
        if isinstance(image, SkippedFile):
            return image
        if self.mask_paths is None:
            return self._resize_crop(image), sample.label, index
        try:
            mask = read_foreground_mask(self.mask_paths[index], tuple(image.shape[-2:]))
        except ForegroundError as exc:
            raise DatasetError(f"{exc} (image {sample.path})") from None
        foreground = self._resize_crop(mask[None].to(torch.uint8), InterpolationMode.NEAREST_EXACT)[0].bool()
        return self._resize_crop(image), sample.label, index, foreground

    def collate(self, items: list[tuple[Any, ...]]) -> Batch:
        """One batch of same-shape items; `foreground` when the items carry object masks."""
        if not items:
            none = torch.empty(0, dtype=torch.int64)
            return Batch(images=torch.empty((0, 3, *self.shape(0)), dtype=torch.uint8), sample_ids=none, labels=none)
        return Batch(images=torch.stack([item[0] for item in items]),
                     labels=torch.tensor([item[1] for item in items], dtype=torch.int64),
                     sample_ids=torch.tensor([item[2] for item in items], dtype=torch.int64),
                     foreground=torch.stack([item[3] for item in items]) if len(items[0]) > 3 else None)

    def _resize_crop(self, image: torch.Tensor, interpolation: InterpolationMode | None = None) -> torch.Tensor:
        interpolation = interpolation or self._interpolation
        antialias = interpolation not in (InterpolationMode.NEAREST, InterpolationMode.NEAREST_EXACT)
        size = [int(s) for s in self.data_config.input_size]
        if self.data_config.resize is None:
            return TF.resize(image, size, interpolation=interpolation, antialias=antialias)
        image = TF.resize(image, [int(self.data_config.resize)], interpolation=interpolation, antialias=antialias)
        return TF.center_crop(image, size)


def _image_folder(root: Path, class_names: list[str] | None) -> tuple[list[Sample], list[str]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = f" (found {len(loose)} images directly in it, e.g. {loose[0]!r})" if loose else ""
        raise DatasetError(
            f"{root}: no class folders{hint}; expected the ImageFolder layout {root}/<class name>/<image>"
        )
    folder_names = [p.name for p in folders]
    if class_names is None:
        _refuse_one_level_too_high(root, folders)
        names = folder_names
        index_of = {name: i for i, name in enumerate(names)}
    else:
        names = class_names
        found_at = {name: str(root / name) for name in folder_names}
        index_of = _name_index(class_names, found_at, what=f"{root}: class folders")
    samples = []
    for folder in folders:
        label = index_of[folder.name]
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
        samples.extend(Sample(path=str(p), label=label) for p in files)
    return samples, names


def _refuse_one_level_too_high(root: Path, folders: list[Path]) -> None:
    """A single class folder whose images all sit in sub-folders is the ImageFolder one level down
    (`--data data` holding `data/val/<class>/...`): read as one class, it would fail later on the model's
    output width, far from the cause."""
    if len(folders) != 1:
        return
    inner = folders[0]
    if any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in inner.iterdir()):
        return
    classes = sorted(p.name for p in inner.iterdir() if p.is_dir() and not p.name.startswith(".")
                     and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in p.rglob("*")))
    if len(classes) >= 2:
        shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
        raise DatasetError(f"{root}: one class folder {inner.name!r}, whose images are in {len(classes)} sub-folders "
                           f"({shown}); if those are the classes, give --data {inner}")


def _csv_rows(path: Path) -> list[tuple[str, str | int, str]]:
    """(path, raw label, location for messages) per data row."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [key for key in ("path", "label") if key not in header]
            if missing:
                raise DatasetError(
                    f"{path}: CSV header {header} lacks column(s) {missing}; expected a header row 'path,label'"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                where = f"{path}:{reader.line_num}"
                file, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if not file or not label:
                    raise DatasetError(f"{where}: empty {'path' if not file else 'label'} (row {dict(row)})")
                rows.append((file, label, where))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read the CSV list ({exc})") from exc
    return rows


def _json_rows(path: Path) -> list[tuple[str, str | int, str]]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"{path}: cannot read the JSON list ({exc})") from exc
    if not isinstance(entries, list):
        raise DatasetError(
            f"{path}: expected a JSON list of {{\"path\": ..., \"label\": ...}} objects, got {type(entries).__name__}"
        )
    rows = []
    for i, entry in enumerate(entries):
        where = f"{path}: entry [{i}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: expected an object with keys 'path' and 'label', got {reprlib.repr(entry)}")
        missing = [key for key in ("path", "label") if key not in entry]
        if missing:
            raise DatasetError(f"{where}: missing key(s) {missing}")
        file, label = entry["path"], entry["label"]
        if not isinstance(file, str) or not file.strip():
            raise DatasetError(f"{where}: 'path' must be a non-empty string, got {reprlib.repr(file)}")
        if isinstance(label, bool) or not isinstance(label, (int, str)) or label == "":
            raise DatasetError(f"{where}: 'label' must be a class index or a class name, got {reprlib.repr(label)}")
        rows.append((file.strip(), label.strip() if isinstance(label, str) else label, where))
    return rows


def _list_samples(
    list_file: Path, rows: list[tuple[str, str | int, str]], class_names: list[str] | None, allow_outside_paths: bool
) -> tuple[list[Sample], list[str]]:
    base = list_file.parent
    if not allow_outside_paths:
        for file, _, where in rows:
            if not is_inside(base / file, base):
                raise DatasetError(
                    f"{where}: path {display_path(file)!r} points outside the list's folder {base}; list paths must "
                    "be relative paths inside it (pass allow_outside_paths=True, --allow-outside-paths, for a list "
                    "that deliberately points elsewhere)"
                )
    parsed = [(file, _as_index(label), label, where) for file, label, where in rows]
    by_name = [(label, where) for _, index, label, where in parsed if index is None]
    by_index = [(index, where) for _, index, _, where in parsed if index is not None]
    for index, where in by_index:
        if index < 0:
            raise DatasetError(f"{where}: label {index} is negative; class indices start at 0")
    if class_names is not None:
        names = class_names
        for index, where in by_index:
            if index >= len(names):
                raise DatasetError(
                    f"{where}: label {index} is outside the model's {len(names)} classes (indices 0..{len(names) - 1})"
                )
        first_use: dict[str, str] = {}
        for label, where in by_name:
            first_use.setdefault(str(label), where)
        index_of = _name_index(names, first_use, what=f"{list_file}: labels")
    elif by_name and by_index:
        raise DatasetError(
            f"{list_file}: labels mix class indices ({by_index[0][1]}) and class names ({by_name[0][1]}); "
            "use one kind, or give the class names (--class-names) so names can be mapped to indices"
        )
    elif by_name:
        names = sorted({str(label) for label, _ in by_name})
        index_of = {name: i for i, name in enumerate(names)}
    else:
        names = [str(i) for i in range(max(index for index, _ in by_index) + 1)]
        index_of = {}
    samples = [
        Sample(path=str(base / file), label=index if index is not None else index_of[str(label)])
        for file, index, label, _ in parsed
    ]
    return samples, names


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path` lies inside `root` once `..` and symbolic links are resolved (an absolute `path`
    elsewhere, `../x` and a link out of `root` do not)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def _as_index(label: str | int) -> int | None:
    if isinstance(label, int):
        return label
    return int(label) if _INDEX_LABEL.fullmatch(label) else None


def _name_index(class_names: list[str], used: dict[str, str], what: str) -> dict[str, int]:
    """Model index of each name in `used` (name -> where it was found); unknown or ambiguous names are an error."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(class_names):
        positions.setdefault(name, []).append(i)
    unknown = [name for name in used if name not in positions]
    if unknown:
        shown = "; ".join(f"{_with_suggestion(name, positions)} at {used[name]}" for name in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise DatasetError(f"{what}: {len(unknown)} name(s) not among the model's class names: {shown}{more}")
    ambiguous = {name: positions[name] for name in used if len(positions[name]) > 1}
    if ambiguous:
        shown = ", ".join(f"{name!r} (indices {idx})" for name, idx in ambiguous.items())
        raise DatasetError(f"{what}: class name(s) appear more than once in the class names: {shown}; use index labels")
    return {name: positions[name][0] for name in used}


def _with_suggestion(name: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
