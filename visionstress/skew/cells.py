"""The skew matrix: the knobs in which serving can differ from training, their values, and cells.

A cell changes some knobs of the model's declared preprocessing (its `DataConfig`, which is the
reference cell) and is named `knob=value[,knob=value]` everywhere: scorecard, report, compare. A cell
resolves to a `Recipe`, the complete concrete preprocessing, so two spellings of the same thing (or a
cell that happens to equal the reference) are recognised before any image is read.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from visionstress.models.data_config import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SkewError(ValueError):
    """A skew setting that cannot be used; the message names the option or file and the problem."""


@dataclass(frozen=True)
class Knob:
    name: str
    values: tuple[str, ...]  # the catalogue: what the default matrix tries
    help: str


KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("decoder", ("pil", "opencv", "torchvision"),
         "the library that decodes the file: Pillow, cv2.imdecode (applies EXIF orientation itself), "
         "torchvision.io.decode_image"),
    Knob("resize_backend", ("pil", "opencv", "torchvision", "torchvision-noaa"),
         "the library that resizes: Image.resize, cv2.resize, torchvision's tensor resize with antialias, "
         "and without it (torchvision-noaa)"),
    Knob("interpolation", ("nearest", "bilinear", "bicubic", "area", "lanczos"),
         "the resize filter (area: OpenCV only; lanczos: Pillow and OpenCV)"),
    Knob("crop", ("center-0.875", "center-0.95", "center-1.0", "squash", "letterbox"),
         "center-F: shorter side to input/F then a centre crop; squash: straight to the input size; "
         "letterbox: fit inside it, aspect kept, centred on black"),
    Knob("input_size", ("x0.875", "x1.143"), "the input size scaled (xF), or N / HxW pixels"),
    Knob("channel_order", ("rgb", "bgr"), "the channel order fed to the model"),
    Knob("normalization", ("reference", "none", "imagenet", "half", "0-255"),
         "reference: the model's mean/std; none: [0, 1] fed directly; imagenet; half: mean = std = 0.5; "
         "0-255: unscaled pixels"),
    Knob("jpeg", ("none", "95", "75", "50"), "re-encode the decoded image as JPEG at this quality (Pillow)"),
    Knob("exif", ("applied", "ignored"), "whether the EXIF orientation tag is applied"),
)}

COMBINATIONS: dict[str, dict[str, str]] = {
    "opencv-serving": {"decoder": "opencv", "resize_backend": "opencv", "interpolation": "bilinear",
                       "channel_order": "bgr"},
    "opencv-rgb": {"decoder": "opencv", "resize_backend": "opencv", "interpolation": "bilinear"},
    "tensor-serving": {"decoder": "torchvision", "exif": "ignored", "resize_backend": "torchvision-noaa",
                       "interpolation": "bilinear"},
}
"""Named combinations common in production: an OpenCV service that forgets BGR -> RGB, the same with the
conversion, and a GPU tensor pipeline (torchvision.io's default ignores EXIF; F.interpolate has no antialias)."""

COMBINATIONS_KNOB = "combinations"
"""What `--skew-knobs` calls the named combinations."""

_SUPPORTED = {
    "pil": ("nearest", "bilinear", "bicubic", "lanczos"),
    "opencv": ("nearest", "bilinear", "bicubic", "area", "lanczos"),
    "torchvision": ("nearest", "bilinear", "bicubic"),
    "torchvision-noaa": ("nearest", "bilinear", "bicubic"),
}
"""Interpolations each resize backend really has (torchvision's tensor resize has no area or lanczos)."""


@dataclass(frozen=True)
class Recipe:
    """Concrete preprocessing: decode, (re-encode), resize, crop, channel order, normalisation.

    `crop` is "center" (shorter side to `resize`, then a centre crop of `input_size`), "squash",
    "letterbox", or "none" for tasks that feed the image at its own size (`input_size` None), which
    `scale` may then resize; `unit_scale` divides pixels by 255 before the mean/std, which are in the
    model's channel order (applied after the channel swap, as `DataConfig` says).
    """

    input_size: tuple[int, int] | None
    decoder: str = "pil"
    exif: bool = True
    jpeg: int | None = None
    resize_backend: str = "torchvision"
    interpolation: str = "bilinear"
    crop: str = "squash"
    resize: int | None = None
    channel_order: str = "rgb"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    unit_scale: bool = True
    scale: float = 1.0

    @property
    def source(self) -> tuple[str, bool, int | None]:
        """What decoding produces: images that share it are decoded once."""
        return (self.decoder, self.exif, self.jpeg)

    @property
    def pixels(self) -> tuple[Any, ...]:
        """What the uint8 model-sized pixels depend on: cells that share it differ only on the device."""
        return (self.source, self.resize_backend, self.interpolation, self.crop, self.resize, self.input_size,
                self.scale)

    def to_dict(self) -> dict[str, Any]:
        return {"decoder": self.decoder, "exif": "applied" if self.exif else "ignored",
                "jpeg": self.jpeg, "resize_backend": self.resize_backend, "interpolation": self.interpolation,
                "crop": self.crop, "resize": self.resize,
                "input_size": None if self.input_size is None else list(self.input_size), "size_scale": self.scale,
                "channel_order": self.channel_order, "mean": list(self.mean), "std": list(self.std),
                "pixel_scale": "1/255" if self.unit_scale else "0-255"}


@dataclass(frozen=True)
class Cell:
    """Some knobs set to values. `label` names a combination; `group` is the knob the default matrix
    varied ("combination" for the named ones, "custom" for cells from a file or the command line)."""

    knobs: tuple[tuple[str, str], ...]
    label: str | None = None
    group: str = "custom"

    @property
    def name(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.knobs)

    def __str__(self) -> str:
        return f"{self.label} ({self.name})" if self.label else self.name


def reference_recipe(config: DataConfig, native_size: bool = False) -> Recipe:
    """What the model declares, decoded and resized the way `visionstress run` does (Pillow with the
    EXIF orientation applied; torchvision's antialiased tensor resize). `native_size`: the task feeds
    images at their own size (segmentation), so only the decoding and normalisation apply."""
    if native_size:
        return Recipe(input_size=None, interpolation=config.interpolation, crop="none",
                      channel_order=config.channel_order.lower(), mean=tuple(config.mean), std=tuple(config.std))
    return Recipe(input_size=tuple(config.input_size), interpolation=config.interpolation,
                  crop="squash" if config.resize is None else "center", resize=config.resize,
                  channel_order=config.channel_order.lower(), mean=tuple(config.mean), std=tuple(config.std))


def reference_knobs(reference: Recipe, knobs: Sequence[str] = tuple(KNOBS)) -> dict[str, str]:
    """The reference's value of each of `knobs`, as a cell would spell it."""
    crop = reference.crop
    if crop == "center":
        crop = f"center-{_g(min(reference.input_size) / reference.resize)}"
    values = {"decoder": reference.decoder, "resize_backend": reference.resize_backend,
              "interpolation": reference.interpolation, "crop": crop, "input_size": "x1.0",
              "channel_order": reference.channel_order, "normalization": "reference",
              "jpeg": "none" if reference.jpeg is None else str(reference.jpeg),
              "exif": "applied" if reference.exif else "ignored"}
    return {k: values[k] for k in knobs}


# --- parsing ------------------------------------------------------------------------------------

def parse_cell(text: str, where: str = "cell") -> Cell:
    """`knob=value[,knob=value]` or a combination name; errors name `where` and suggest spellings."""
    text = str(text).strip()
    if text in COMBINATIONS:
        return combination(text)
    if not text:
        raise SkewError(f"{where}: empty cell; expected knob=value[,knob=value] or one of {', '.join(COMBINATIONS)}")
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        knob, sep, value = part.partition("=")
        if not sep:
            hint = _suggest(part, list(COMBINATIONS))
            raise SkewError(f"{where}: {part!r} is not knob=value{hint}; knobs: {', '.join(KNOBS)}; "
                            f"combinations: {', '.join(COMBINATIONS)}")
        pairs.append((knob.strip(), value.strip()))
    return make_cell(pairs, where)


def make_cell(pairs: Iterable[tuple[str, Any]], where: str, label: str | None = None, group: str = "custom") -> Cell:
    """A cell from (knob, value) pairs, values checked and spelt canonically, knobs in catalogue order."""
    values: dict[str, str] = {}
    for knob, value in pairs:
        knob = str(knob).strip().lower()
        if knob not in KNOBS:
            raise SkewError(f"{where}: unknown knob {knob!r}{_suggest(knob, list(KNOBS))}; knobs: {', '.join(KNOBS)}")
        if knob in values:
            raise SkewError(f"{where}: knob {knob!r} is given twice")
        values[knob] = _canonical(knob, value, where)
    if not values:
        raise SkewError(f"{where}: a cell needs at least one knob=value")
    return Cell(tuple((k, values[k]) for k in KNOBS if k in values), label=label, group=group)


def combination(name: str) -> Cell:
    return make_cell(COMBINATIONS[name].items(), f"combination {name}", label=name, group="combination")


def read_cells_file(path: str | Path) -> list[Cell]:
    """A YAML (or JSON) file of cells: a list, or a mapping with `cells:`, whose items are
    `knob=value[,...]` strings, combination names, or mappings `{knob: value, ...}` (with an optional
    `name:` label)."""
    path = Path(path)
    if not path.is_file():
        raise SkewError(f"{path}: skew cells file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SkewError(f"{path}: not a readable YAML file ({exc})") from None
    if isinstance(data, Mapping):
        unknown = [k for k in data if k != "cells"]
        if unknown:
            raise SkewError(f"{path}: unknown key {unknown[0]!r}; expected `cells:` (a list)")
        data = data.get("cells")
    if not isinstance(data, list) or not data:
        raise SkewError(f"{path}: expected a non-empty list of cells (or `cells:` holding one)")
    cells = []
    for i, item in enumerate(data):
        where = f"{path}: cells[{i}]"
        if isinstance(item, str):
            cells.append(parse_cell(item, where))
        elif isinstance(item, Mapping):
            label = item.get("name")
            if label is not None and not isinstance(label, str):
                raise SkewError(f"{where}: name must be a string, got {label!r}")
            cells.append(make_cell(((k, v) for k, v in item.items() if k != "name"), where, label=label))
        else:
            raise SkewError(f"{where}: expected 'knob=value' or a mapping of knobs, got {item!r}")
    return cells


def parse_knobs(text: str | Sequence[str] | None, allowed: Sequence[str],
                catalogue: Sequence[str] | None = None) -> list[str]:
    """`--skew-knobs`: comma-separated knob names (and `combinations`), `all` or `none`; None (the
    default) is the task's `catalogue` (default: every allowed knob) with the combinations."""
    choices = [*allowed, COMBINATIONS_KNOB]
    if text is None:
        return [*(allowed if catalogue is None else catalogue), COMBINATIONS_KNOB]
    names = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    if names == ["all"]:
        return choices
    if names == ["none"]:
        return []
    for name in names:
        if name not in choices:
            extra = "" if name not in KNOBS else " for this task"
            raise SkewError(f"--skew-knobs: unknown knob {name!r}{extra}{_suggest(name, choices)}; "
                            f"choose from {', '.join(choices)}, all or none")
    return [c for c in choices if c in names]


def _canonical(knob: str, value: Any, where: str) -> str:
    text = str(value).strip().lower()
    bad = SkewError(f"{where}: {knob}={value!r} is not a known value; "
                    f"{knob} takes {_value_forms(knob)}{_suggest(text, list(KNOBS[knob].values))}")
    if knob == "crop":
        if text in ("squash", "letterbox"):
            return text
        fraction = _number(text.removeprefix("center-")) if text.startswith("center-") else None
        if fraction is None or not 0 < fraction <= 1:
            raise bad
        return f"center-{_g(fraction)}"
    if knob == "input_size":
        if text.startswith("x"):
            factor = _number(text[1:])
            if factor is None or not 0.1 <= factor <= 10:
                raise bad
            return f"x{_g(factor)}"
        sides = text.split("x")
        if len(sides) in (1, 2) and all(s.isdigit() and int(s) > 0 for s in sides):
            return "x".join(str(int(s)) for s in sides)
        raise bad
    if knob == "jpeg":
        if text == "none":
            return text
        if text.isdigit() and 1 <= int(text) <= 100:
            return str(int(text))
        raise bad
    if text not in KNOBS[knob].values:
        raise bad
    return text


def _value_forms(knob: str) -> str:
    extra = {"crop": " (or center-F with 0 < F <= 1)", "input_size": " (or xF, N, HxW)", "jpeg": " (or 1-100)"}
    return ", ".join(KNOBS[knob].values) + extra.get(knob, "")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _g(value: float) -> str:
    """A factor as cells spell it: `1.0`, `0.875`, `1.143` (four significant digits)."""
    return f"{value:.1f}" if float(value).is_integer() else f"{value:.4g}"


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- resolution ---------------------------------------------------------------------------------

def resolve(cell: Cell, reference: Recipe) -> Recipe:
    """The reference with the cell's knobs applied. An input size keeps the reference's crop fraction
    (as timm does) unless the cell also sets `crop`; an interpolation the resize backend does not have
    is an error that says which backend has it."""
    knobs = dict(cell.knobs)
    recipe = reference
    if "input_size" in knobs and reference.input_size is None:
        value = knobs["input_size"]
        recipe = replace(recipe, scale=float(value[1:])) if value.startswith("x") else \
            replace(recipe, input_size=_input_size(value, (1, 1)))
    elif "input_size" in knobs:
        size = _input_size(knobs["input_size"], reference.input_size)
        resize = None
        if reference.crop == "center" and reference.resize is not None:
            resize = math.floor(min(size) / (min(reference.input_size) / reference.resize))
        recipe = replace(recipe, input_size=size, resize=resize)
    for knob, value in knobs.items():
        if knob == "decoder":
            recipe = replace(recipe, decoder=value)
        elif knob == "exif":
            recipe = replace(recipe, exif=value == "applied")
        elif knob == "jpeg":
            recipe = replace(recipe, jpeg=None if value == "none" else int(value))
        elif knob == "resize_backend":
            recipe = replace(recipe, resize_backend=value)
        elif knob == "interpolation":
            recipe = replace(recipe, interpolation=value)
        elif knob == "crop":
            if value.startswith("center-"):
                fraction = float(value.removeprefix("center-"))
                resize = None if recipe.input_size is None else math.floor(min(recipe.input_size) / fraction + 1e-9)
                recipe = replace(recipe, crop="center", resize=resize)  # no input size: the task refuses it
            else:
                recipe = replace(recipe, crop=value, resize=None)
        elif knob == "channel_order":
            recipe = replace(recipe, channel_order=value)
        elif knob == "normalization":
            recipe = replace(recipe, **_normalization(value, reference))
    if recipe.interpolation not in _SUPPORTED[recipe.resize_backend]:
        having = [b for b, modes in _SUPPORTED.items() if recipe.interpolation in modes]
        raise SkewError(f"cell {cell.name}: resize_backend={recipe.resize_backend} has no {recipe.interpolation} "
                        f"interpolation; add resize_backend={having[0]} (it has: {', '.join(having)})")
    return recipe


def _input_size(value: str, reference: tuple[int, int]) -> tuple[int, int]:
    if value.startswith("x"):
        factor = float(value[1:])
        return (max(1, round(reference[0] * factor)), max(1, round(reference[1] * factor)))
    sides = [int(s) for s in value.split("x")]
    return (sides[0], sides[-1])


def _normalization(value: str, reference: Recipe) -> dict[str, Any]:
    zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return {
        "reference": {"mean": reference.mean, "std": reference.std, "unit_scale": True},
        "none": {"mean": zero, "std": one, "unit_scale": True},
        "imagenet": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "unit_scale": True},
        "half": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "unit_scale": True},
        "0-255": {"mean": zero, "std": one, "unit_scale": False},
    }[value]


def default_cells(knobs: Sequence[str], reference: Recipe,
                  values: Mapping[str, Sequence[str]] | None = None) -> list[Cell]:
    """One cell per catalogue value of each knob in `knobs` other than the reference's own (plus the
    named combinations when `combinations` is among them). `values` replaces a knob's catalogue for a
    task where only some of its values apply (detection's crop: letterbox and squash). An interpolation
    the reference's resize backend lacks is tried with the first backend that has it, and the cell's
    name says so."""
    cells = []
    current = reference_knobs(reference)
    for knob in knobs:
        if knob == COMBINATIONS_KNOB:
            cells.extend(combination(name) for name in COMBINATIONS)
            continue
        for value in (values or {}).get(knob, KNOBS[knob].values):
            if value == current[knob]:
                continue
            pairs = [(knob, value)]
            if knob == "interpolation" and value not in _SUPPORTED[reference.resize_backend]:
                pairs.append(("resize_backend", next(b for b, m in _SUPPORTED.items() if value in m)))
            cells.append(make_cell(pairs, f"--skew-knobs {knob}", group=knob))
    return cells


@dataclass(frozen=True)
class Matrix:
    """The cells to run with their recipes, and why any asked-for cell was left out."""

    reference: Recipe
    cells: list[tuple[Cell, Recipe]]
    notes: list[str]


def build_matrix(reference: Recipe, cells: Sequence[Cell], allowed_knobs: Sequence[str],
                 canonical: Any = None) -> Matrix:
    """Resolve `cells`; a cell using a knob this task does not have is an error; cells equal to the
    reference or to an earlier cell are left out with a note (the reference row already shows them).
    `canonical(recipe, reference)` lets a task say which settings cannot matter to it (a resize filter
    where nothing is resized), so such cells are recognised as the reference."""
    seen: dict[Recipe, Cell] = {reference: Cell((), label="reference")}
    kept, notes = [], []
    for cell in cells:
        foreign = [k for k, _ in cell.knobs if k not in allowed_knobs]
        if foreign:
            raise SkewError(f"cell {cell.name}: knob {foreign[0]!r} does not apply to this task "
                            f"(it has {', '.join(allowed_knobs)})")
        recipe = resolve(cell, reference)
        if canonical is not None:
            try:
                recipe = canonical(recipe, reference)
            except SkewError as exc:
                raise SkewError(f"cell {cell.name}: {exc}") from None
        if recipe in seen:
            same = seen[recipe]
            notes.append(f"{cell} left out: same preprocessing as {'the reference' if same.label == 'reference' else same}")
            continue
        seen[recipe] = cell
        kept.append((cell, recipe))
    return Matrix(reference, kept, notes)
