"""A model's preprocessing (`DataConfig`): what the adapter and the dataset must do so pixels match training.

Robustness numbers are only meaningful when the clean images are prepared exactly as the model
expects; a wrong mean/std or crop silently costs accuracy that would then be blamed on the
perturbations. So the config is explicit, validated, recorded in the scorecard, and its origin
(weights metadata, a file, CLI flags) is reported beside it.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CHANNEL_ORDERS = ("RGB", "BGR")
_KEYS = ("input_size", "resize", "crop_pct", "interpolation", "mean", "std", "channel_order")


class DataConfigError(ValueError):
    """A preprocessing setting that cannot be used; the message names where it came from and the key."""


@dataclass(frozen=True)
class DataConfig:
    """Classification preprocessing, ImageNet-C protocol: resize the shorter side, centre-crop, normalise.

    `mean` and `std` are on the [0, 1] pixel scale and in the model's channel order (they are applied
    after the RGB -> BGR swap when `channel_order` is "BGR"), which is how Caffe-era configs list them.
    """

    input_size: tuple[int, int] = (224, 224)  # (H, W) the model sees
    resize: int | None = 256  # shorter side before the centre crop; None: resize straight to input_size
    interpolation: str = "bilinear"  # bilinear | bicubic | nearest
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"  # or "BGR"

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists, not tuples) that `from_mapping` reads back unchanged."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], source: str) -> DataConfig:
        """Defaults overlaid with `d`; errors name `source` (a file, "flags", ...) and the offending key."""
        config, _ = _overlay(cls(), d, source)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> DataConfig:
        """Read a YAML or JSON file with any of the keys input_size, resize, interpolation, mean, std,
        channel_order (and crop_pct, timm's crop fraction, as an alternative to resize)."""
        return cls.from_mapping(_read_mapping(path), str(path))


def resolve_data_config(
    base: DataConfig | None, file: str | Path | None, overrides: Mapping[str, Any]
) -> tuple[DataConfig, str]:
    """The config to use and a sentence saying where each part came from.

    Precedence: `overrides` (CLI flags; a None value means "flag not given") > `file` > `base` (the
    model's weights metadata) > the ImageNet defaults. Each layer only replaces the keys it names, so
    `--mean` alone keeps the weights' crop. When a layer changes `input_size` without naming `resize`,
    the crop fraction of the layer below is kept (as timm does with crop_pct), so asking a 224/256
    model for 320 pixels resizes to 365 rather than cropping beyond the image.
    """
    config = base if base is not None else DataConfig()
    parts = ["model weights metadata" if base is not None else "defaults (ImageNet mean/std, resize 256, crop 224)"]
    if file is not None:
        config, keys = _overlay(config, _read_mapping(file), str(file))
        parts.append(f"file {file} ({', '.join(keys) or 'no keys'})")
    given = {k: v for k, v in overrides.items() if v is not None}
    if given:
        config, keys = _overlay(config, given, "flags")
        parts.append(f"flags ({', '.join(keys)})")
    return config, "; overridden by ".join(parts)


def read_mapping_file(path: str | Path, what: str, expected: str, error: type[ValueError],
                      missing_hint: str = "") -> Mapping[Any, Any]:
    """A YAML or JSON file (by suffix) that must hold a mapping; `error` names the file and the problem:
    `{path}: {what} file not found{missing_hint}`, not readable, or `expected {expected}`."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} file not found{missing_hint}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError, RecursionError) as exc:
        raise error(f"{path}: not a readable YAML/JSON {what} ({exc})") from exc
    if not isinstance(data, Mapping):
        raise error(f"{path}: expected {expected}, got {type(data).__name__}")
    return data


def _read_mapping(path: str | Path) -> Mapping[str, Any]:
    return read_mapping_file(path, "data config", f"a mapping with keys {', '.join(_KEYS)}", DataConfigError)


def _overlay(config: DataConfig, d: Mapping[str, Any], source: str) -> tuple[DataConfig, list[str]]:
    """`config` with the keys of `d` parsed and applied; returns the new config and the keys applied."""
    unknown = [k for k in d if k not in _KEYS]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, _KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(_KEYS)}"
        raise DataConfigError(f"{source}: unknown data config key {key!r}{hint}")
    if "resize" in d and "crop_pct" in d:
        raise DataConfigError(f"{source}: give either 'resize' or 'crop_pct', not both")
    changes: dict[str, Any] = {}
    for key, value in d.items():
        changes[key] = _PARSERS[key](value, f"{source}: {key}")
    if "crop_pct" in changes:
        size = changes.get("input_size", config.input_size)
        changes["resize"] = math.floor(min(size) / changes.pop("crop_pct"))
    elif "input_size" in changes and "resize" not in changes and config.resize is not None:
        crop_fraction = min(config.input_size) / config.resize
        changes["resize"] = math.floor(min(changes["input_size"]) / crop_fraction)
    try:
        return replace(config, **changes), list(d)
    except DataConfigError as exc:
        raise DataConfigError(f"{source}: {exc}") from None


def _validate(c: DataConfig) -> None:
    """Normalise spellings (lists -> tuples, case) in place on the frozen instance and check ranges."""
    set_ = object.__setattr__
    set_(c, "input_size", _parse_size(c.input_size, "input_size"))
    if c.resize is not None:
        set_(c, "resize", _parse_positive_int(c.resize, "resize"))
        if c.resize < min(c.input_size):
            raise DataConfigError(
                f"resize={c.resize} is smaller than the crop {c.input_size[0]}x{c.input_size[1]}: the centre "
                "crop would leave the image (use resize >= the shorter crop side, or resize: null)"
            )
    set_(c, "interpolation", _parse_choice(c.interpolation, "interpolation", INTERPOLATIONS, str.lower))
    set_(c, "channel_order", _parse_choice(c.channel_order, "channel_order", CHANNEL_ORDERS, str.upper))
    set_(c, "mean", _parse_triple(c.mean, "mean", allow_zero=True))
    set_(c, "std", _parse_triple(c.std, "std", allow_zero=False))


def _fail(where: str, message: str) -> DataConfigError:
    return DataConfigError(f"{where} {message}")


def _split(value: Any) -> Any:
    """CLI flags arrive as strings like "0.5,0.5,0.5" or "224"; files give numbers and lists."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").split(",") if p.strip()]
        return parts[0] if len(parts) == 1 else parts
    return value


def _parse_positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise _fail(where, f"must be a positive integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(where, f"must be a positive integer, got {value!r}") from None
    if not number.is_integer() or number <= 0:
        raise _fail(where, f"must be a positive integer, got {value!r}")
    return int(number)


def _parse_size(value: Any, where: str) -> tuple[int, int]:
    value = _split(value)
    if isinstance(value, (list, tuple)):
        if len(value) == 3:  # timm writes (C, H, W)
            value = value[1:]
        if len(value) != 2:
            raise _fail(where, f"must be an integer or [height, width], got {value!r}")
        return (_parse_positive_int(value[0], where), _parse_positive_int(value[1], where))
    side = _parse_positive_int(value, where)
    return (side, side)


def _parse_resize(value: Any, where: str) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        return None
    return _parse_positive_int(_split(value), where)


def _parse_crop_pct(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(where, f"must be a number in (0, 1], got {value!r}") from None
    if not 0 < number <= 1:
        raise _fail(where, f"must be a number in (0, 1], got {value!r}")
    return number


def _parse_choice(value: Any, where: str, choices: tuple[str, ...], norm: Any) -> str:
    if not isinstance(value, str) or norm(value.strip()) not in choices:
        raise _fail(where, f"must be one of {', '.join(choices)}, got {value!r}")
    return norm(value.strip())


def _parse_triple(value: Any, where: str, allow_zero: bool) -> tuple[float, float, float]:
    value = _split(value)
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise _fail(where, f"must be three numbers (one per channel), got {value!r}")
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise _fail(where, f"must be three numbers (one per channel), got {value!r}") from None
    if any(not math.isfinite(n) for n in numbers):
        raise _fail(where, f"must be finite, got {value!r}")
    if any(n > 1.0 for n in numbers):
        raise _fail(
            where, f"{value!r} looks like the 0-255 scale; give it on the [0, 1] pixel scale (divide by 255)"
        )
    if not allow_zero and any(n <= 0 for n in numbers):
        raise _fail(where, f"must be positive, got {value!r}")
    return numbers  # type: ignore[return-value]


_PARSERS = {
    "input_size": _parse_size,
    "resize": _parse_resize,
    "crop_pct": _parse_crop_pct,
    "interpolation": lambda v, w: _parse_choice(v, w, INTERPOLATIONS, str.lower),
    "mean": lambda v, w: _parse_triple(v, w, allow_zero=True),
    "std": lambda v, w: _parse_triple(v, w, allow_zero=False),
    "channel_order": lambda v, w: _parse_choice(v, w, CHANNEL_ORDERS, str.upper),
}
