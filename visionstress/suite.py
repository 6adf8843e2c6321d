"""Suites: which perturbations run at which severities, and the seed.

A suite is a preset (`quick`, `default`, `imagenet-c`) or a user file in YAML or TOML:

    name: my-suite
    seed: 0
    severities: [1, 3, 5]          # default for entries that give none (else 1..5)
    perturbations:
      - fog
      - "*_noise"                  # a glob over the registry
      - {name: rotation, severities: [1, 3]}
      - {name: gaussian_noise, table: [0.02, 0.04, 0.06, 0.08, 0.1]}   # your own five levels
      - {name: motion_blur, table: [{radius: 5, sigma: 2}, [10, 3], [15, 5], [15, 8], [20, 12]]}

The file is validated completely before any work starts, and every error names the file and the
offending key (`perturbations[2].severities[0]`, `perturbations[4].table[1].sigma`), because a typo
found after an hour-long run is an hour lost. A table's levels are checked field by field against the
ranges each perturbation declares, so NaN, infinity, negative or absurd values never reach a kernel.

A single-level perturbation (one variant, no graded strength) runs at severity 1: a suite-wide
`severities:` default applies to it only where it includes 1 (and otherwise it still runs its one
level), while an entry that asks it for another severity is an error.
"""

from __future__ import annotations

import difflib
import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from visionstress.perturbations import IMAGENET_C, LevelError, get_perturbation, list_perturbations

MAX_SEVERITY = 5
ALL_SEVERITIES = tuple(range(1, MAX_SEVERITY + 1))
SUITE_EXTENSIONS = (".yaml", ".yml", ".toml", ".json")
_TOP_KEYS = ("name", "seed", "severities", "perturbations")
_ITEM_KEYS = ("name", "severities", "table")


class SuiteError(ValueError):
    """A suite name or file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class SuiteItem:
    """One perturbation and the severities (1..5, or 1 for a single-level one; ascending, no repeats)
    it runs at.

    `table`, when given, replaces the perturbation's parameter table (the suite's "parameters"): as
    many levels as the built-in one, each checked by the perturbation's `parse_level` (so they are
    level objects the kernel reads, e.g. five noise standard deviations).
    """

    perturbation: str
    severities: tuple[int, ...]
    table: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Suite:
    """An ordered set of perturbations x severities plus the seed every random draw derives from."""

    name: str
    items: tuple[SuiteItem, ...]
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The suite as plain data (what the scorecard records; `Suite.from_mapping` reads it back)."""
        return {
            "name": self.name,
            "seed": self.seed,
            "perturbations": [
                {"name": i.perturbation, "severities": list(i.severities),
                 **({} if i.table is None else {"table": _plain(i.table)})}
                for i in self.items
            ],
        }

    @classmethod
    def from_mapping(cls, data: Any, source: str, default_name: str = "suite") -> Suite:
        """Validate suite data (from a file, or a scorecard's `suite`); errors start with `source`."""
        return _parse(data, source, default_name)

    def pairs(self) -> list[tuple[str, int]]:
        """Every (perturbation, severity) the suite runs, in order (the clean pass not included)."""
        return [(i.perturbation, s) for i in self.items for s in i.severities]


def _preset(name: str, perturbations: tuple[str, ...], severities: tuple[int, ...]) -> Suite:
    return Suite(name=name, items=tuple(SuiteItem(p, severities) for p in perturbations), seed=0)


PRESETS: dict[str, Suite] = {
    # One perturbation from each of five families, so a first look covers noise, blur, lighting,
    # geometry and occlusion in seconds on a CPU.
    "quick": _preset("quick", ("gaussian_noise", "defocus_blur", "brightness", "rotation", "random_occlusion"),
                     (1, 3, 5)),
    # Every registered family, one or two perturbations each, chosen among the cheaper kernels so the
    # bundled demo runs the whole preset in under a minute on two CPU cores.
    "default": _preset("default", (
        "brightness", "low_light",                 # lighting
        "gaussian_noise", "jpeg_compression",      # camera
        "defocus_blur", "motion_blur",             # blur
        "elastic_transform",                       # digital
        "fog", "snow",                             # weather
        "zoom_out", "low_resolution",              # scale
        "random_occlusion",                        # occlusion
        "rotation",                                # rotation
    ), ALL_SEVERITIES),
    # A universal patch fitted on the model at 1-20% of the image (or of each box), beside its random
    # control at the same placements: the gap between the two is the attack, not the occlusion. Not in
    # `default`: fitting takes minutes on a real model.
    "adversarial": _preset("adversarial", ("adversarial_patch", "random_patch"), ALL_SEVERITIES),
    # The 15 benchmark corruptions x 5 severities of Hendrycks & Dietterich (2019), the protocol mCE is
    # defined on.
    "imagenet-c": _preset("imagenet-c", tuple(IMAGENET_C), ALL_SEVERITIES),
    # The Backgrounds Challenge's variants (Xiao et al. 2020) on the run's own object masks; one level each.
    "backgrounds": _preset("backgrounds", ("only_fg", "no_fg", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next"),
                           (1,)),
    # Shape versus texture (Geirhos et al. 2019): the cue conflict, shape-only and texture-only views, and the
    # tile shuffle at every grid size.
    "cues": Suite(name="cues", seed=0, items=(
        SuiteItem("texture_fill", (1,)), SuiteItem("silhouette", (1,)), SuiteItem("edges", (1,)),
        SuiteItem("patch_shuffle", ALL_SEVERITIES))),
}
"""Presets. `backgrounds` and `cues` need object masks (`--masks` for classification); `cues`' texture_fill and
patch_shuffle cannot carry detection boxes, so for detection run their other members in a suite file."""


def load_suite(name_or_path: str | Path) -> Suite:
    """A preset by name, or a suite file (`.yaml`/`.yml`/`.toml`/`.json`) validated in full."""
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix.lower() not in SUITE_EXTENSIONS:
        close = difflib.get_close_matches(text, list(PRESETS), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise SuiteError(f"unknown suite {text!r}: not a preset ({', '.join(PRESETS)}) nor a suite file "
                         f"({'/'.join(SUITE_EXTENSIONS)}){hint}")
    if not path.is_file():
        raise SuiteError(f"{path}: suite file not found")
    return _parse(_read(path), str(path), default_name=path.stem)


def _read(path: Path) -> Any:
    raw = path.read_bytes()
    if path.suffix.lower() == ".toml":
        toml = _toml_module()
        try:
            return toml.loads(raw.decode("utf-8"))
        except (toml.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise SuiteError(f"{path}: not valid TOML: {exc}") from None
    import yaml  # JSON is a subset of YAML, so one parser covers both

    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError) as exc:
        raise SuiteError(f"{path}: not valid YAML: {exc}") from None


def _toml_module() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli
    except ImportError:
        raise SuiteError("reading TOML suites on Python < 3.11 needs the `tomli` package: pip install tomli; "
                         "or write the suite in YAML") from None
    return tomli


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "empty"}.get(type(value), type(value).__name__)


def _parse(data: Any, source: str, default_name: str) -> Suite:
    def fail(key: str, problem: str) -> SuiteError:
        return SuiteError(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")

    if not isinstance(data, Mapping):
        raise fail("", f"a suite must be a mapping with keys {', '.join(_TOP_KEYS)}, got {_type_name(data)}")
    _check_keys(data, _TOP_KEYS, "", fail)
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise fail("name", f"must be a non-empty string, got {name!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise fail("seed", f"must be a non-negative integer, got {seed!r}")
    default_severities = (_severities(data["severities"], "severities", fail) if "severities" in data
                          else ALL_SEVERITIES)
    if "perturbations" not in data:
        raise fail("perturbations", "missing: list the perturbations to run, e.g. perturbations: [fog, rotation]")
    entries = data["perturbations"]
    if not isinstance(entries, list) or not entries:
        raise fail("perturbations", f"must be a non-empty list, got {_type_name(entries)}")

    items: list[SuiteItem] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(entries):
        key = f"perturbations[{index}]"
        table = None
        own_key = None  # where the entry names severities for one perturbation: they must fit it
        if isinstance(entry, str):
            names, severities = _names(entry, key, fail), default_severities
        elif isinstance(entry, Mapping):
            _check_keys(entry, _ITEM_KEYS, key, fail)
            if "name" not in entry:
                raise fail(f"{key}.name", "missing: each perturbation mapping needs a name")
            if not isinstance(entry["name"], str):
                raise fail(f"{key}.name", f"must be a string, got {_type_name(entry['name'])}")
            names = _names(entry["name"], f"{key}.name", fail)
            severities = (_severities(entry["severities"], f"{key}.severities", fail) if "severities" in entry
                          else default_severities)
            if "severities" in entry and not _is_pattern(entry["name"]):
                own_key = f"{key}.severities"
            if "table" in entry:
                if len(names) != 1:
                    raise fail(f"{key}.table", "a custom table needs one perturbation name, not a pattern")
                table = _table(entry["table"], names[0], f"{key}.table", fail)
        else:
            raise fail(key, f"must be a perturbation name or a mapping {{name, severities}}, got {_type_name(entry)}")
        for perturbation in names:
            if perturbation in seen:
                raise fail(key, f"perturbation {perturbation!r} is already listed at {seen[perturbation]}; "
                                f"list each once with all its severities")
            seen[perturbation] = key
            items.append(SuiteItem(perturbation, _fit_severities(perturbation, severities, own_key, fail), table))
    return Suite(name=name, items=tuple(items), seed=seed)


def _check_keys(mapping: Mapping, allowed: tuple[str, ...], key: str, fail: Any) -> None:
    for k in mapping:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            where = f"{key}.{k}" if key else str(k)
            raise fail(where, f"unknown key; {hint}allowed keys are {', '.join(allowed)}")


def _names(text: str, key: str, fail: Any) -> list[str]:
    """A registered name, or a glob (`*_blur`) expanded over the registry."""
    if _is_pattern(text):
        matched = [n for n in list_perturbations() if fnmatch.fnmatchcase(n, text)]
        if not matched:
            raise fail(key, f"pattern {text!r} matches no registered perturbation; `visionstress list` shows them")
        return matched
    try:
        get_perturbation(text)
    except KeyError as exc:
        raise fail(key, str(exc.args[0])) from None
    return [text]


def _fit_severities(name: str, severities: tuple[int, ...], own_key: str | None, fail: Any) -> tuple[int, ...]:
    """The severities `name` runs at. Severities an entry gives for this perturbation by name (at
    `own_key`) must exist; a default (suite-wide, 1..5, or a pattern's) is cut to the levels the
    perturbation has, and a single-level perturbation always keeps its one level."""
    top = get_perturbation(name).max_severity
    beyond = [s for s in severities if s > top]
    if not beyond:
        return severities
    if own_key is not None:
        raise fail(own_key, f"{name!r} has a single level: its only severity is 1, got {beyond[0]}" if top == 1
                   else f"{name!r} has severities 1 to {top}, got {beyond[0]}")
    return tuple(s for s in severities if s <= top) or (1,)


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _table(value: Any, name: str, key: str, fail: Any) -> tuple[Any, ...]:
    """As many levels as the built-in table, each parsed and range-checked by the perturbation."""
    perturbation = get_perturbation(name)
    builtin = perturbation.severities
    if not isinstance(value, list) or len(value) != len(builtin):
        raise fail(key, f"must be a list of {len(builtin)} levels like the built-in {_plain(builtin)}, "
                        f"got {_type_name(value)}{'' if not isinstance(value, list) else f' of {len(value)}'}")
    levels = []
    for i, level in enumerate(value):
        try:
            levels.append(perturbation.parse_level(level))
        except LevelError as error:
            raise fail(f"{key}[{i}]{error.key}", error.problem) from None
        try:
            perturbation.check_level(levels[-1])
        except ValueError as exc:
            raise fail(f"{key}[{i}]", str(exc)) from None
    return tuple(levels)


def _plain(table: tuple[Any, ...]) -> list[Any]:
    """A table as plain data (what the scorecard records and `_table` reads back)."""
    return [list(level) if isinstance(level, tuple) else level for level in table]


def _severities(value: Any, key: str, fail: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise fail(key, f"must be a non-empty list of integers from 1 to {MAX_SEVERITY}, got {_type_name(value)}")
    for i, s in enumerate(value):
        if isinstance(s, bool) or not isinstance(s, int):
            raise fail(f"{key}[{i}]", f"severity must be an integer from 1 to {MAX_SEVERITY}, got {s!r}")
        if not 1 <= s <= MAX_SEVERITY:
            raise fail(f"{key}[{i}]", f"severity {s} is out of range: use 1 to {MAX_SEVERITY} "
                                      f"(the clean pass, severity 0, always runs)")
    if len(set(value)) != len(value):
        raise fail(key, f"repeats a severity: {value}")
    return tuple(sorted(value))
