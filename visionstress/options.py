"""Run options, each declared once: the CLI's `visionstress run` flags, `visionstress.run`'s keywords and
the pytest plugin's ini keys, command-line options and marker keywords are all generated from here.

A task (visionstress.tasks) or a perturbation family that needs a setting declares an `Option` with
the tasks it applies to; nothing else has to learn about it. Every value is checked before any work
starts (a typo found after an hour-long run is an hour lost), and a setting given to a task that does
not use it is an error naming the setting and the task rather than being silently ignored.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class OptionError(ValueError):
    """An option value that cannot be used; the message names the option (as the user spelt it) and why."""


@dataclass(frozen=True)
class Option:
    """One run setting.

    `kind` is the Python type of the value (str, int, float, bool or Path); `multiple` makes it a
    repeatable flag whose value is a tuple. `parse` turns a command-line or ini string into the value
    when a plain `kind(text)` is not enough (e.g. "640x640" into (640, 640)); `check` raises
    OptionError for a value that parses but cannot be used. `tasks` lists the tasks that use it (None:
    every task). `exposed` False keeps library-only settings (a progress callback) out of the CLI and the
    plugin. `group` orders `--help`.
    """

    name: str
    kind: type
    default: Any = None
    help: str = ""
    tasks: frozenset[str] | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    multiple: bool = False
    parse: Callable[[str], Any] | None = None
    check: Callable[[Any], None] | None = None
    short: str | None = None
    metavar: str | None = None
    group: str = "run"
    exposed: bool = True
    owner: str = "visionstress"

    @property
    def flag(self) -> str:
        """The command-line spelling, e.g. `--score-threshold`."""
        return "--" + self.name.replace("_", "-")

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    def convert(self, value: Any, where: str | None = None) -> Any:
        """`value` (a Python value, or a string from the command line or an ini file) as this option's
        type, validated; OptionError names `where` (default the flag)."""
        where = where or self.flag
        if value is None:
            return None
        if self.multiple:
            items = [value] if isinstance(value, (str, Path)) or not _iterable(value) else list(value)
            return tuple(self._one(item, where) for item in items)
        return self._one(value, where)

    def _one(self, value: Any, where: str) -> Any:
        if isinstance(value, str) and self.parse is not None:
            try:
                value = self.parse(value)
            except (TypeError, ValueError) as exc:
                raise OptionError(f"{where} {value!r}: {exc}") from None
        else:
            value = self._typed(value, where)
        if self.choices is not None and value not in self.choices:
            close = difflib.get_close_matches(str(value), list(self.choices), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise OptionError(f"{where} {value!r}: expected one of {', '.join(self.choices)}{hint}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise OptionError(f"{where}: expected a finite number, got {value!r}")
            if self.minimum is not None and value < self.minimum:
                raise OptionError(f"{where} must be at least {self.minimum:g}, got {value!r}")
            if self.maximum is not None and value > self.maximum:
                raise OptionError(f"{where} must be at most {self.maximum:g}, got {value!r}")
        if self.check is not None:
            try:
                self.check(value)
            except (TypeError, ValueError) as exc:
                raise OptionError(f"{where} {value!r}: {exc}") from None
        return value

    def _typed(self, value: Any, where: str) -> Any:
        kind = self.kind
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
                return _BOOLEANS[value.strip().lower()]
            raise OptionError(f"{where}: expected true or false, got {value!r}")
        if kind is int:
            if isinstance(value, bool):
                raise OptionError(f"{where}: expected a whole number, got {value!r}")
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                return int(value)
            raise OptionError(f"{where}: expected a whole number, got {value!r}")
        if kind is float:
            if isinstance(value, bool):
                raise OptionError(f"{where}: expected a number, got {value!r}")
            try:
                return float(value)
            except (TypeError, ValueError):
                raise OptionError(f"{where}: expected a number, got {value!r}") from None
        if kind is Path:
            if isinstance(value, (str, Path)) and str(value).strip():
                return Path(value)
            raise OptionError(f"{where}: expected a path, got {value!r}")
        if kind is str:
            if isinstance(value, Path) or type(value).__module__ == "torch":  # e.g. torch.device("cuda:1")
                return str(value)
            if isinstance(value, str):
                return value
            raise OptionError(f"{where}: expected text, got {type(value).__name__}")
        return value  # another type: `check` validates it


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return not isinstance(value, Mapping)


_OPTIONS: dict[str, Option] = {}


def register_options(*options: Option) -> None:
    """Declare options; a name declared twice raises (one keyword with two meanings would read differently
    per task: declare it once with every task that uses it)."""
    for option in options:
        known = _OPTIONS.get(option.name)
        if known is not None and known != option:
            raise ValueError(f"option {option.name!r} is already declared by {known.owner}")
        _OPTIONS[option.name] = option


def unregister_options(*names: str) -> None:
    """Remove options (for tests and user code that register temporary tasks)."""
    for name in names:
        _OPTIONS.pop(name, None)


def get_option(name: str) -> Option:
    try:
        return _OPTIONS[name]
    except KeyError:
        raise OptionError(f"unknown option {name!r}{_did_you_mean(name)}") from None


def all_options(task: str | None = None, *, exposed_only: bool = False) -> list[Option]:
    """Declared options (those of `task` when given), in declaration order."""
    _load_declarations()
    return [o for o in _OPTIONS.values()
            if (task is None or o.applies_to(task)) and (o.exposed or not exposed_only)]


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, list(_OPTIONS), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


@dataclass(frozen=True)
class RunOptions(Mapping[str, Any]):
    """Every declared option of one task with its resolved value (defaults filled in), read-only.

    `given` names the options the caller set explicitly, so a scorecard can record what the user chose
    apart from the defaults.
    """

    task: str
    values: Mapping[str, Any]
    given: frozenset[str] = field(default_factory=frozenset)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def replace(self, **changes: Any) -> RunOptions:
        return RunOptions(self.task, {**self.values, **changes}, self.given | frozenset(changes))


def resolve_options(task: str, given: Mapping[str, Any]) -> RunOptions:
    """Check and convert every given setting for `task`, fill in the defaults.

    Unknown names (with a did-you-mean), values of the wrong type or out of range, and settings the task
    does not use (given a value other than their default) raise OptionError before any work starts.
    """
    _load_declarations()
    values: dict[str, Any] = {}
    explicit = set()
    for name, value in given.items():
        option = get_option(name)
        converted = option.convert(value)
        if not option.applies_to(task):
            if converted is None or converted == option.default or (option.multiple and not converted):
                continue
            users = ", ".join(sorted(option.tasks or ()))
            raise OptionError(f"{option.flag} does not apply to --task {task} (it is for {users})")
        values[name] = converted
        explicit.add(name)
    for option in _OPTIONS.values():
        if option.applies_to(task) and option.name not in values:
            values[option.name] = option.default if not option.multiple else tuple(option.default or ())
    return RunOptions(task, values, frozenset(explicit))


def _load_declarations() -> None:
    """Options are declared by the modules that use them (tasks, perturbation families); make sure
    they are all imported before anyone enumerates or resolves options."""
    import visionstress.tasks  # noqa: F401  (registers the built-in tasks and their options)
