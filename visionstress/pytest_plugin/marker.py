"""`@pytest.mark.visionstress(...)`: per-test thresholds, gates and settings, checked at collection.

The marker's keywords are `min`, `max`, `gates`, `alpha`, and every setting of the plugin under its
option name (`limit=`, `class_names=`, `allow_inconclusive=` ...), validated by the same declaration
as the ini key. A mistake is a collection error naming the test and the keyword, found before any
model is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from visionstress.options import OptionError
from visionstress.pytest_plugin.settings import config_base, converted, plugin_options
from visionstress.pytest_plugin.thresholds import MarkerError, Threshold, parse_threshold

CHECK_KEYWORDS = ("min", "max", "gates", "alpha")
HELP = ("visionstress(min={'top1': 0.7, 'top1@fog': 0.3, 'top1@fog/5': 0.1}, max={'ece': 0.15}, "
        "gates=['top1:-2pp'], alpha=0.05, suite='quick', ...): robustness thresholds for the visionstress_card "
        "fixture; gates=None checks the task's default regression gates; every visionstress_* setting "
        "(model, data, limit, class_names, ...) is also a keyword that overrides it for this test")


@dataclass(frozen=True)
class MarkerSpec:
    """A test's merged @pytest.mark.visionstress arguments, validated at collection.

    `regression` says whether the test checks against its baseline: `gates` were given (None: the
    task's default gates)."""

    minimums: tuple[Threshold, ...] = ()
    maximums: tuple[Threshold, ...] = ()
    regression: bool = False
    gates: tuple[str, ...] | None = None
    alpha: float = 0.05
    settings: dict[str, Any] = field(default_factory=dict)


def _parse(kwargs: dict[str, Any], base: Path) -> dict[str, Any]:
    """Validate one marker's keyword arguments; returns them normalised (thresholds parsed, settings
    converted, paths absolute)."""
    options = plugin_options()
    parsed: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in ("min", "max"):
            if not isinstance(value, dict):
                raise MarkerError(f"{key}= must be a dict like {{'top1': 0.7, 'top1@fog': 0.3}}, got {value!r}")
            parsed[key] = {k: parse_threshold(k, v, key) for k, v in value.items()}
        elif key == "gates":
            parsed[key] = _gates(value)
        elif key == "alpha":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise MarkerError(f"alpha= must be a number between 0 and 1, got {value!r}")
            parsed[key] = float(value)
        elif key in options:
            try:
                parsed[key] = converted(options[key], value, f"{key}=", base)
            except OptionError as exc:
                raise MarkerError(str(exc)) from None
        else:
            raise MarkerError(f"unknown keyword {key!r} (known: {', '.join((*CHECK_KEYWORDS, *options))})")
    return parsed


def _gates(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    gates = [value] if isinstance(value, str) else value
    if not isinstance(gates, (list, tuple)) or not all(isinstance(g, str) for g in gates):
        raise MarkerError(f"gates= must be a list of gate strings like ['top1:-2pp'] (or None for the task's "
                          f"defaults), got {value!r}")
    from visionstress.comparison import parse_gate

    for gate in gates:
        try:
            parse_gate(gate)
        except ValueError as exc:
            raise MarkerError(f"gates=: {exc}") from None
    return tuple(gates)


def marker_spec(item: pytest.Item) -> MarkerSpec | None:
    """Merge the item's visionstress markers, farthest first (module, class, function), so the closest
    wins key by key and `min`/`max` entries add up."""
    marks = list(item.iter_markers("visionstress"))
    if not marks:
        return None
    if "visionstress_card" not in item.fixturenames and any(m.name == "visionstress" for m in item.own_markers):
        raise MarkerError("it is read by the visionstress_card fixture, which this test does not use")
    merged: dict[str, Any] = {"min": {}, "max": {}}
    for mark in reversed(marks):
        if mark.args:
            raise MarkerError(f"takes keyword arguments only, got positional {mark.args!r}")
        for key, value in _parse(dict(mark.kwargs), config_base(item.config)).items():
            if key in ("min", "max"):
                merged[key].update(value)
            else:
                merged[key] = value
    regression = "gates" in merged
    return MarkerSpec(
        minimums=tuple(merged.pop("min").values()),
        maximums=tuple(merged.pop("max").values()),
        regression=regression,
        gates=merged.pop("gates", None),
        alpha=merged.pop("alpha", 0.05),
        settings=merged,
    )
