"""The plugin's settings: every run option as an ini key, a command-line option and a marker keyword.

Nothing here lists run options by hand. Each option declared in visionstress.options (by a task, a
perturbation family, or the shared ones) becomes `visionstress_<name>` in the ini file,
`--visionstress-<flag>` on the command line and `<name>=` on the marker, parsed and validated by its
own declaration, so an option added to `visionstress run` reaches pytest users without touching the
plugin. The plugin adds the few settings only it has (where baselines live and what they are called,
whether inconclusive gates pass).

Relative paths are resolved where the user wrote them: from the ini file's folder for ini and marker
values (a committed configuration works from any working directory), from the directory pytest was
started in for the command line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from visionstress.options import Option, OptionError, all_options

DEFAULT_BASELINE_DIR = "tests/visionstress_baselines"
INI_PREFIX = "visionstress_"


def _has_a_letter_or_digit(value: str) -> None:
    if not re.search(r"[A-Za-z0-9]", value):
        raise ValueError("a baseline name needs at least one letter or digit")


PLUGIN_OPTIONS = (
    Option("out", Path, None, "folder the run reports are written into, one subfolder per evaluation "
           "(default: pytest's temporary directory)", group="plugin"),
    Option("baseline_dir", Path, Path(DEFAULT_BASELINE_DIR),
           f"folder of committed baseline scorecards (default: {DEFAULT_BASELINE_DIR})", group="plugin"),
    Option("name", str, None, "what the baselines are filed under, so the next version of a model is compared "
           "with the last (default: the project's name in pyproject.toml, else the rootdir's folder name)",
           check=_has_a_letter_or_digit, group="plugin"),
    Option("allow_inconclusive", bool, False, "let regression gates that the data cannot decide pass (with a "
           "warning in the summary) instead of failing", group="plugin"),
)
NOT_RUN_ARGUMENTS = frozenset({"out", "baseline_dir", "name", "allow_inconclusive"})
"""Plugin settings that are not passed to visionstress.run (`out` is the folder of report folders)."""


def plugin_options() -> dict[str, Option]:
    """Every setting the plugin speaks, by name: the exposed run options, then the plugin's own settings (the
    plugin's `out` holds one report folder per evaluation, replacing the run's)."""
    options = {o.name: o for o in all_options(exposed_only=True)}
    options.update((o.name, o) for o in PLUGIN_OPTIONS if o.name in NOT_RUN_ARGUMENTS)
    return options


def ini_key(name: str) -> str:
    return INI_PREFIX + name


def command_line_flag(option: Option) -> str:
    return "--visionstress-" + option.flag[2:]


def add_options(parser: pytest.Parser) -> None:
    """Register every setting as an ini key and a command-line option (help text from its declaration)."""
    group = parser.getgroup("visionstress", "visionstress robustness tests")
    for name, option in plugin_options().items():
        text = option.help + (f" One of: {', '.join(option.choices)}." if option.choices else "")
        parser.addini(ini_key(name), text, type="linelist" if option.multiple else "string", default=None)
        extra: dict[str, Any] = {"action": "append"} if option.multiple else {}
        if option.kind is bool and not option.multiple:
            extra = {"action": argparse.BooleanOptionalAction}
        else:
            extra["metavar"] = option.metavar or name.upper()
        group.addoption(command_line_flag(option), dest=ini_key(name), default=None,
                        help=f"{text} Overrides the {ini_key(name)} ini key.".replace("%", "%%"), **extra)
    group.addoption("--visionstress-update-baselines", action="store_true", dest="visionstress_update_baselines",
                    default=False, help="write (overwrite) the baselines the tests compare against, then pass")


@dataclass(frozen=True)
class Settings:
    """The settings after resolution: command line over ini, values converted, paths absolute.

    `run` holds only the visionstress.run arguments the user set, so unset ones keep run's defaults.
    """

    run: Mapping[str, Any] = field(default_factory=dict)
    out: Path | None = None
    baseline_dir: Path = Path(DEFAULT_BASELINE_DIR)
    name: str = "project"
    allow_inconclusive: bool = False
    update_baselines: bool = False

    def merged(self, values: Mapping[str, Any]) -> Settings:
        """These settings with `values` (already converted, e.g. a marker's) laid over them."""
        own = {k: v for k, v in values.items() if k in NOT_RUN_ARGUMENTS}
        run = {k: v for k, v in values.items() if k not in NOT_RUN_ARGUMENTS}
        return replace(self, run={**self.run, **run}, **own)


def config_base(config: pytest.Config) -> Path:
    """The folder ini (and marker) paths are relative to."""
    return config.inipath.parent if config.inipath is not None else config.rootpath


def converted(option: Option, value: Any, where: str, base: Path) -> Any:
    """`value` (an ini/command-line string or a marker's Python value) as the option's validated value,
    with paths made absolute from `base`. A str option whose value names an existing file (a model
    file, a suite file) becomes that file's path; otherwise it is kept as given (a spec, a preset)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    result = option.convert(value, where)
    if option.multiple:
        return tuple(_localised(option, item, base) for item in result)
    return _localised(option, result, base)


def _localised(option: Option, value: Any, base: Path) -> Any:
    if isinstance(value, Path):
        return (base / value.expanduser()).resolve()
    if (option.kind is str and option.name not in NOT_RUN_ARGUMENTS and isinstance(value, str)
            and (base / value).is_file()):
        return str((base / value).resolve())
    return value


def resolve_settings(config: pytest.Config) -> Settings:
    """Read every setting from the command line, else the ini file; a bad value is a usage error naming
    the option as the user wrote it (`--visionstress-limit`, `visionstress_limit in pytest.ini`)."""
    values: dict[str, Any] = {}
    for name, option in plugin_options().items():
        raw = config.getoption(ini_key(name))
        where, base = command_line_flag(option), config.invocation_params.dir
        if raw is None:
            raw = config.getini(ini_key(name))
            where, base = f"{ini_key(name)} in {config.inipath or 'the ini file'}", config_base(config)
        if isinstance(raw, str):
            raw = raw.strip()
        if raw is None or (isinstance(raw, (str, list)) and not raw):
            continue
        try:
            values[name] = converted(option, raw, where, base)
        except OptionError as exc:
            raise pytest.UsageError(str(exc)) from None
    values.setdefault("baseline_dir", (config.rootpath / DEFAULT_BASELINE_DIR).resolve())
    values.setdefault("name", project_name(config.rootpath))
    return Settings(update_baselines=bool(config.getoption("visionstress_update_baselines"))).merged(values)


def project_name(root: Path) -> str:
    """`[project] name` of the rootdir's pyproject.toml, else the rootdir's folder name: a repository's
    baselines stay filed under one name whichever model version it currently ships."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        data = {}
    name = data.get("project", {}).get("name") if isinstance(data.get("project"), dict) else None
    return name if isinstance(name, str) and name.strip() else root.name


_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")


def translate_flags(message: str, options: Mapping[str, Option] | None = None) -> str:
    """The library's message with `visionstress run` flags spelt the plugin's way.

    A pytest user told to "pass --class-names" has no such option; they have `--visionstress-class-names`
    and the ini key `visionstress_class_names`. Flags that are no setting of the plugin are left alone.
    """
    options = plugin_options() if options is None else options
    by_flag = {o.flag[2:]: o for o in options.values()}
    keys: list[str] = []

    def spelt(match: re.Match[str]) -> str:
        option = by_flag.get(match.group(1))
        if option is None:
            return match.group(0)
        if ini_key(option.name) not in keys:
            keys.append(ini_key(option.name))
        return command_line_flag(option)

    translated = _FLAG.sub(spelt, message)
    if keys:
        translated += f"\n(in the ini file: {', '.join(keys)})"
    return translated
