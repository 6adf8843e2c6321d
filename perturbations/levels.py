"""Named, range-checked severity levels.

A perturbation declares the fields of its levels (`Field("sigma", 0, 1)`): a one-field level stays a
plain number (or, for a `many` field, a tuple of numbers), a several-field level becomes a `Level`, a
tuple whose values also have names. Kernels read levels exactly as before (`radius, sigma = level`),
while `visionstress list` can show `radius=10, sigma=3` and a suite file's own `table:` is checked per
field, so NaN, infinity, negative or absurd values are refused when the suite is loaded instead of
being scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


class LevelError(ValueError):
    """A level value that cannot be used: `key` is where inside the level ('' or '.sigma'), `problem` what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Field:
    """One named value of a severity level and the range the kernel accepts (inclusive).

    `integer` for counts and sizes in pixels; `many` for a field that is a non-empty list of values
    (zoom_blur's zoom factors).
    """

    name: str
    low: float
    high: float
    integer: bool = False
    many: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(f"field {self.name!r}: needs finite low <= high, got {self.low!r}, {self.high!r}")

    def check(self, value: Any, named: bool = False) -> Any:
        """`value` as the kernel reads it (int, float, or a tuple of them for `many`); LevelError otherwise,
        whose message names the field when `named` (the key does not: a one-field level)."""
        label = f" ({self.name})" if named else ""
        if self.many:
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence) or not value:
                raise LevelError("", f"must be {self._what(many=True)}{label}, got {value!r}")
            return tuple(self._number(v, f"[{i}]", label) for i, v in enumerate(value))
        return self._number(value, "", label)

    def _what(self, many: bool = False) -> str:
        noun = "integer" if self.integer else "number"
        span = f"from {self.low:g} to {self.high:g}"
        return f"a non-empty list of {noun}s {span}" if many else f"{'an' if self.integer else 'a'} {noun} {span}"

    def _number(self, value: Any, key: str, label: str) -> int | float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and self.low <= value <= self.high and (not self.integer or float(value).is_integer())
        if not ok:
            raise LevelError(key, f"must be {self._what()}{label}, got {value!r}")
        return int(value) if self.integer else value


class Level(tuple):
    """A several-value severity level: a tuple (kernels unpack it as before) whose values have names."""

    names: tuple[str, ...]

    def __new__(cls, values: Sequence[Any], names: Sequence[str]) -> Level:
        if len(values) != len(names):
            raise ValueError(f"Level: {len(values)} values for the fields {tuple(names)}")
        level = super().__new__(cls, values)
        level.names = tuple(names)
        return level

    def __getattr__(self, name: str) -> Any:
        try:
            return self[self.__dict__["names"].index(name)]
        except (KeyError, ValueError):
            raise AttributeError(f"Level has no field {name!r}") from None

    def __reduce__(self) -> tuple:
        return Level, (tuple(self), self.names)

    def __repr__(self) -> str:
        return "Level(" + ", ".join(f"{n}={v!r}" for n, v in zip(self.names, self)) + ")"


def make_level(fields: Sequence[Field], value: Any) -> Any:
    """`value` (a number, a list in field order, or a mapping by field name) as a checked level.

    One field: the checked value itself. Several: a `Level`. Raises LevelError naming the field.
    """
    if len(fields) == 1:
        field = fields[0]
        if isinstance(value, Mapping) and set(value) == {field.name}:
            value = value[field.name]
        return field.check(value, named=True)
    names = [f.name for f in fields]
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in names]
        missing = [n for n in names if n not in value]
        if unknown or missing:
            raise LevelError("", f"needs exactly the fields {', '.join(names)}"
                                 f"{'; unknown: ' + ', '.join(map(str, unknown)) if unknown else ''}"
                                 f"{'; missing: ' + ', '.join(missing) if missing else ''}")
        value = [value[n] for n in names]
    elif isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != len(fields):
        raise LevelError("", f"must be a list of {len(fields)} numbers ({', '.join(names)}) or a mapping "
                             f"{{{', '.join(names)}}}, got {value!r}")
    checked = []
    for field, v in zip(fields, value):
        try:
            checked.append(field.check(v))
        except LevelError as error:
            raise LevelError(f".{field.name}{error.key}", error.problem) from None
    return Level(checked, names)


def describe_level(level: Any, fields: Sequence[Field] | None) -> str:
    """A level for people: `radius=10, sigma=3`; a plain number for one-field levels; a class name for
    levels that are objects (albumentations transforms)."""
    if isinstance(level, Level):
        return ", ".join(f"{n}={_number(v)}" for n, v in zip(level.names, level))
    if isinstance(level, (tuple, list)):
        if fields is not None and len(fields) == 1 and fields[0].many and len(level) > 3:
            return f"{_number(level[0])}..{_number(level[-1])} ({len(level)} values)"
        return "(" + ", ".join(_number(v) for v in level) + ")"
    if isinstance(level, (int, float)):
        return _number(level)
    return type(level).__name__


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
