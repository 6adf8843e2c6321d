"""visionstress's pytest plugin (registered through the pytest11 entry point).

It lets a model repository gate its models on robustness the way it gates code on tests: a session
fixture evaluates the model (once per session, however many tests and xdist workers ask), helpers
assert metric thresholds and "no significant regression against the committed baseline", and a
marker carries per-test thresholds. The plugin is loaded into every pytest run of any environment
where visionstress is installed, so it is inert until a test asks for a fixture: importing it loads
neither torch nor the run machinery, and it adds nothing to a run that does not use it. Storage
(visionstress.scorecard), comparison (visionstress.comparison) and rendering live in their own modules.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import pytest

if TYPE_CHECKING:
    from visionstress.scorecard import Scorecard

CLEAN = "clean"
DEFAULT_BASELINE_DIR = "tests/visionstress_baselines"
DEFAULT_GATES = ("top1:-1pp",)

_SETTINGS_HELP = {
    "model": "model to evaluate: a file, torchvision:NAME, timm:NAME or package.module:factory "
             "(default: the bundled demo classifier)",
    "weights": "weights file for the model (.pth, .pt or .safetensors)",
    "data": "dataset: an image folder or a .csv/.json list",
    "task": "classification, detection or segmentation (default: classification)",
    "suite": "suite preset (quick, default, imagenet-c) or a YAML/TOML suite file (default: default)",
    "device": "torch device, e.g. cpu or cuda (default: cuda when available)",
    "baseline_dir": f"folder of committed baseline scorecards (default: {DEFAULT_BASELINE_DIR})",
    "limit": "evaluate only the first N images",
    "bootstrap": "bootstrap resamples for the confidence intervals (default 1000; 0 for none, the fastest)",
    "out": "folder the run reports are written into, one subfolder per evaluation "
           "(default: pytest's temporary directory)",
}
_PATH_SETTINGS = frozenset({"weights", "data", "baseline_dir", "out"})
_SPEC_OR_PATH_SETTINGS = frozenset({"model", "suite"})
"""A model spec or suite preset name is kept as given unless it names an existing file."""

_MARKER_RUN_KEYS = {"model": str, "weights": str, "data": str, "task": str, "suite": str, "device": str,
                    "limit": int, "seed": int, "bootstrap": int}
_MARKER_CHECK_KEYS = ("min", "max", "gates", "alpha")
_MARKER_HELP = ("visionstress(min={'top1': 0.7, 'top1@fog': 0.3, 'top1@fog/5': 0.1}, max={'ece': 0.15}, "
                "gates=['top1:-2pp'], alpha=0.05, suite='quick', ...): robustness thresholds for the "
                "visionstress_card fixture; "
                "run settings (model, weights, data, task, suite, device, limit, seed, bootstrap) override the "
                "visionstress_* options for this test")


class MarkerError(ValueError):
    """A malformed @pytest.mark.visionstress: reported as a collection error naming the test and key."""


# --- settings --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """The visionstress_* options after resolution: command line over ini, paths made absolute.

    Paths from the command line are relative to the directory pytest was started in; paths from the
    ini file (and from the marker) are relative to the ini file's folder, so a committed configuration
    works from any working directory.
    """

    model: str | None = None
    weights: str | None = None
    data: str | None = None
    task: str | None = None
    suite: str | None = None
    device: str | None = None
    baseline_dir: Path = Path(DEFAULT_BASELINE_DIR)
    limit: int | None = None
    bootstrap: int | None = None
    out: Path | None = None
    update_baselines: bool = False

    def run_arguments(self) -> dict[str, Any]:
        """The `visionstress.run` keyword arguments these settings fix (unset ones keep run's defaults)."""
        names = ("model", "weights", "data", "task", "suite", "device", "limit", "bootstrap")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def _config_base(config: pytest.Config) -> Path:
    return config.inipath.parent if config.inipath is not None else config.rootpath


def _resolve_value(name: str, value: str, base: Path) -> str:
    if name in _PATH_SETTINGS:
        return str((base / os.path.expanduser(value)).resolve())
    if name in _SPEC_OR_PATH_SETTINGS and (base / value).exists():
        return str((base / value).resolve())
    return value


def _resolve_settings(config: pytest.Config) -> Settings:
    values: dict[str, Any] = {}
    for name in _SETTINGS_HELP:
        raw = config.getoption(f"visionstress_{name}")
        source, base = f"--visionstress-{name.replace('_', '-')}", config.invocation_params.dir
        if raw is None:
            raw = config.getini(f"visionstress_{name}")
            source, base = f"visionstress_{name} in {config.inipath or 'the ini file'}", _config_base(config)
        raw = str(raw).strip() if raw is not None else ""
        if not raw:
            continue
        if name == "limit":
            if not raw.isdigit() or int(raw) < 1:
                raise pytest.UsageError(f"{source}: expected a positive whole number of images, got {raw!r}")
            values[name] = int(raw)
        elif name == "bootstrap":
            if not raw.isdigit():
                raise pytest.UsageError(f"{source}: expected a whole number of resamples (0 for none), got {raw!r}")
            values[name] = int(raw)
        elif name in ("baseline_dir", "out"):
            values[name] = Path(_resolve_value(name, raw, base))
        else:
            values[name] = _resolve_value(name, raw, base)
    values.setdefault("baseline_dir", (config.rootpath / DEFAULT_BASELINE_DIR).resolve())
    return Settings(**values, update_baselines=bool(config.getoption("visionstress_update_baselines")))


# --- marker ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    """One `min`/`max` entry of the marker: `metric[@perturbation-glob[/severity]]` and its bound."""

    metric: str
    perturbation: str
    severity: int | None
    bound: float


@dataclass(frozen=True)
class MarkerSpec:
    """A test's merged @pytest.mark.visionstress arguments, validated at collection."""

    minimums: tuple[Threshold, ...] = ()
    maximums: tuple[Threshold, ...] = ()
    gates: tuple[str, ...] = ()
    alpha: float = 0.05
    run: dict[str, Any] = field(default_factory=dict)


_TARGET = re.compile(r"^(?P<metric>[^@/\s]+)(?:@(?P<perturbation>[^@/\s]+)(?:/(?P<severity>[^@/\s]*))?)?$")


def _parse_target(key: Any, bound: Any, name: str) -> Threshold:
    """`metric[@perturbation[/severity]]`, the cell syntax of visionstress.compare's gates."""
    where = f"{name}[{key!r}]"
    match = _TARGET.match(key) if isinstance(key, str) else None
    if match is None:
        raise MarkerError(f"{where}: the key is not METRIC[@PERTURBATION[/SEVERITY]], e.g. 'top1', "
                          "'top1@fog' or 'top1@fog/3'")
    metric, perturbation, severity = match.group("metric", "perturbation", "severity")
    if severity is not None and (not severity.isdigit() or not 1 <= int(severity) <= 5):
        raise MarkerError(f"{where}: the severity must be a whole number from 1 to 5")
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
        raise MarkerError(f"{where}: the bound must be a finite number, got {bound!r}")
    return Threshold(metric, perturbation or CLEAN, None if severity is None else int(severity), float(bound))


def _parse_marker(kwargs: dict[str, Any], base: Path) -> dict[str, Any]:
    """Validate one marker's keyword arguments; returns them normalised (thresholds parsed, paths absolute)."""
    parsed: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in ("min", "max"):
            if not isinstance(value, dict):
                raise MarkerError(f"{key}= must be a dict like {{'top1': 0.7, 'top1@fog': 0.3}}, got {value!r}")
            parsed[key] = {k: _parse_target(k, v, key) for k, v in value.items()}
        elif key == "gates":
            gates = [value] if isinstance(value, str) else value
            if not isinstance(gates, (list, tuple)) or not all(isinstance(g, str) for g in gates):
                raise MarkerError(f"gates= must be a list of gate strings like ['top1:-2pp'], got {value!r}")
            from visionstress.comparison import parse_gate

            for gate in gates:
                try:
                    parse_gate(gate)
                except ValueError as exc:
                    raise MarkerError(f"gates=: {exc}") from None
            parsed[key] = tuple(gates)
        elif key == "alpha":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise MarkerError(f"alpha= must be a number between 0 and 1, got {value!r}")
            parsed[key] = float(value)
        elif key in _MARKER_RUN_KEYS:
            parsed[key] = _parse_run_value(key, value, base)
        else:
            known = ", ".join((*_MARKER_CHECK_KEYS, *_MARKER_RUN_KEYS))
            raise MarkerError(f"unknown keyword {key!r} (known: {known})")
    return parsed


def _parse_run_value(key: str, value: Any, base: Path) -> Any:
    if _MARKER_RUN_KEYS[key] is int:
        lowest = 1 if key == "limit" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise MarkerError(f"{key}= must be a whole number of at least {lowest}, got {value!r}")
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise MarkerError(f"{key}= must be a non-empty string, got {value!r}")
    return _resolve_value(key, value, base)


def _marker_spec(item: pytest.Item) -> MarkerSpec | None:
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
        for key, value in _parse_marker(dict(mark.kwargs), _config_base(item.config)).items():
            if key in ("min", "max"):
                merged[key].update(value)
            else:
                merged[key] = value
    return MarkerSpec(
        minimums=tuple(merged.pop("min").values()),
        maximums=tuple(merged.pop("max").values()),
        gates=merged.pop("gates", ()),
        alpha=merged.pop("alpha", 0.05),
        run=merged,
    )


# --- session state ---------------------------------------------------------------------------------

@dataclass
class _State:
    """What this pytest process knows: resolved settings, evaluated cards, and what the terminal
    summary reports (plain data, so xdist workers can send it to the controller)."""

    settings: Settings
    cards: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: list[str] = field(default_factory=list)


_STATE = pytest.StashKey[_State]()
_MARK = pytest.StashKey["MarkerSpec | None"]()
_CARD = pytest.StashKey[tuple["VisionStress", Any]]()


def _arguments_key(arguments: dict[str, Any]) -> str:
    text = json.dumps(arguments, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x"


def _model_name(spec: str) -> str:
    """A model's name without the machine: a file path keeps only its file name."""
    if "/" in spec or "\\" in spec:
        spec = re.split(r"[\\/]", spec.rstrip("/\\"))[-1]
    return _slug(spec)


def _main_metric(card: Scorecard) -> str:
    from visionstress.scorecard import MAIN_METRIC

    return MAIN_METRIC.get(card.task) or next(iter(card.results[0]["metrics"]))


def _evaluation_summary(card: Scorecard, report: Path) -> dict[str, Any]:
    """What the terminal summary says about one evaluation, as plain data an xdist worker can send."""
    metric = _main_metric(card)
    clean = [r["metrics"].get(metric) for r in card.results if r["perturbation"] == CLEAN]
    perturbed = [float(r["metrics"][metric]) for r in card.results
                 if r["perturbation"] != CLEAN and r["metrics"].get(metric) is not None
                 and math.isfinite(r["metrics"][metric])]
    return {
        "spec": card.model.get("spec"),
        "dataset": card.dataset.get("path"),
        "images": card.dataset.get("num_samples"),
        "fingerprint": str(card.dataset.get("fingerprint"))[:12],
        "suite": card.suite.get("name"),
        "metric": metric,
        "clean": float(clean[0]) if clean and clean[0] is not None else math.nan,
        "mean": sum(perturbed) / len(perturbed) if perturbed else math.nan,
        "report": str(report),
    }


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


# --- the fixture object ----------------------------------------------------------------------------

class VisionStress:
    """The `visionstress` session fixture: evaluate (cached), assert thresholds, compare with baselines."""

    def __init__(self, config: pytest.Config, state: _State, session_dir: Path) -> None:
        self._config = config
        self._state = state
        self._session_dir = session_dir

    @property
    def settings(self) -> Settings:
        return self._state.settings

    def run(self, **overrides: Any) -> Scorecard:
        """Evaluate with the visionstress_* settings plus `overrides` (any `visionstress.run` keyword).

        Cached for the session by the resolved arguments, so many tests share one evaluation. Under
        pytest-xdist the workers share it too: the first to take the file lock runs and saves the
        scorecard; the others wait for the lock and load it.
        """
        arguments = {**self.settings.run_arguments(), **overrides}
        key = _arguments_key(arguments)
        if key not in self._state.cards and key not in self._state.errors:
            self._evaluate(key, arguments)
        if key in self._state.errors:
            pytest.fail(self._state.errors[key], pytrace=False)
        return self._state.cards[key]

    def _evaluate(self, key: str, arguments: dict[str, Any]) -> None:
        from filelock import FileLock

        from visionstress.scorecard import Scorecard

        arguments = dict(arguments)
        report = arguments.pop("out", None)
        if report is None:
            root = self.settings.out or self._session_dir / "reports"
            report = root / f"{_model_name(str(arguments.get('model') or 'demo'))}-{key[:8]}"
        report = Path(report)
        done, failed = self._session_dir / f"{key}.done", self._session_dir / f"{key}.error"
        with FileLock(str(self._session_dir / f"{key}.lock")):
            if failed.exists():
                self._state.errors[key] = failed.read_text(encoding="utf-8")
                return
            if done.exists():
                card = Scorecard.load(done.read_text(encoding="utf-8"))
            else:
                from visionstress.runner import run

                try:
                    card = run(**arguments, out=report)
                except ValueError as exc:  # the library's input errors: a message, not a traceback
                    message = f"visionstress could not evaluate {arguments.get('model') or 'the demo'}: {exc}"
                    failed.write_text(message, encoding="utf-8")
                    self._state.errors[key] = message
                    return
                done.write_text(str(report), encoding="utf-8")
        self._state.cards[key] = card
        self._state.evaluations[key] = _evaluation_summary(card, report)

    def assert_metric(self, card: Scorecard, metric: str, *, at_least: float | None = None,
                      at_most: float | None = None, perturbation: str = CLEAN,
                      severity: int | None = None) -> None:
        """Fail the test unless `metric` is within bounds in every matching cell.

        `perturbation` is a name or a glob (`"*"` is every cell, the clean one included); `severity`
        None means every severity of it. Cells where the metric is undefined (NaN, e.g. flip rate on
        the clean pass) are not judged, but at least one judged cell must match, so a misspelt
        perturbation fails rather than passing vacuously.
        """
        if at_least is None and at_most is None:
            raise TypeError("assert_metric needs at_least=, at_most= or both")
        problems = self._metric_problems(card, metric, at_least, at_most, perturbation, severity)
        if problems:
            pytest.fail(self._failure_header(card) + "\n".join(problems), pytrace=False)

    def _enforce(self, card: Scorecard, spec: MarkerSpec) -> None:
        """Check a marker's thresholds and gates, failing once with everything that was missed."""
        problems = []
        for t in spec.minimums:
            problems += self._metric_problems(card, t.metric, t.bound, None, t.perturbation, t.severity)
        for t in spec.maximums:
            problems += self._metric_problems(card, t.metric, None, t.bound, t.perturbation, t.severity)
        messages = [self._failure_header(card) + "\n".join(problems)] if problems else []
        if spec.gates:
            messages.append(self._regression_problem(card, spec.gates, spec.alpha) or "")
        message = "\n".join(m for m in messages if m)
        if message:
            pytest.fail(message, pytrace=False)

    def _failure_header(self, card: Scorecard) -> str:
        return (f"visionstress: {card.model.get('spec')} on {card.dataset.get('path')} "
                f"(suite {card.suite.get('name')}) misses its thresholds:\n")

    def _metric_problems(self, card: Scorecard, metric: str, at_least: float | None, at_most: float | None,
                         perturbation: str, severity: int | None) -> list[str]:
        where = perturbation if severity is None else f"{perturbation} severity {severity}"
        cells = [r for r in card.results if fnmatch.fnmatchcase(r["perturbation"], perturbation)
                 and (severity is None or int(r["severity"]) == severity)]
        if not cells:
            have = ", ".join(sorted({f"{r['perturbation']}@{r['severity']}" for r in card.results}))
            return [f"  {metric} at {where}: no such cell in the scorecard (it has {have})"]
        lacking = [r for r in cells if metric not in r["metrics"]]
        if lacking:
            return [f"  {metric} at {where}: no such metric; the rows have {', '.join(lacking[0]['metrics'])}"]
        judged = [r for r in cells if r["metrics"][metric] is not None and math.isfinite(r["metrics"][metric])]
        if not judged:
            return [f"  {metric} at {where}: undefined (NaN) in every matching cell"]
        problems = []
        for row in judged:
            value = float(row["metrics"][metric])
            for ok, op, bound in ((at_least is None or value >= at_least, ">=", at_least),
                                  (at_most is None or value <= at_most, "<=", at_most)):
                if ok:
                    continue
                low, high = row.get("ci", {}).get(metric, (None, None))
                ci = "" if low is None or high is None else f" (95% CI {_fmt(low)}-{_fmt(high)})"
                problems.append(f"  {metric} at {row['perturbation']} severity {row['severity']}: observed "
                                f"{_fmt(value)}{ci}, required {op} {bound:g}")
        return problems

    def baseline(self, card: Scorecard) -> Scorecard:
        """The committed baseline for this card's model, dataset and suite.

        Missing: the test fails saying how to create it. With --visionstress-update-baselines the card
        becomes the baseline (written, records included) and is returned.
        """
        from visionstress.scorecard import Scorecard

        folder = self._baseline_folder(card)
        if self.settings.update_baselines:
            self._write_baseline(card, folder)
        elif not (folder / "scorecard.json").is_file():
            pytest.fail(self._missing_baseline(card, folder), pytrace=False)
        try:
            return Scorecard.load(folder)
        except ValueError as exc:
            pytest.fail(f"visionstress: cannot read the baseline: {exc}", pytrace=False)

    def assert_no_regression(self, card: Scorecard, *, gates: Sequence[str] = DEFAULT_GATES,
                             alpha: float = 0.05) -> None:
        """Fail the test if `card` regresses significantly against its baseline under `gates`
        (`visionstress.compare`'s gate syntax and paired tests, Holm-adjusted). With
        --visionstress-update-baselines it writes the baseline instead and passes."""
        problem = self._regression_problem(card, gates, alpha)
        if problem:
            pytest.fail(problem, pytrace=False)

    def _regression_problem(self, card: Scorecard, gates: Iterable[str], alpha: float) -> str | None:
        folder = self._baseline_folder(card)
        if self.settings.update_baselines:
            self._write_baseline(card, folder)
            return None
        if not (folder / "scorecard.json").is_file():
            return self._missing_baseline(card, folder)
        from visionstress.comparison import compare, format_p
        from visionstress.metrics import format_delta, format_value

        reference = self.baseline(card)
        try:
            comparison = compare(reference, card, gates=list(gates), alpha=alpha)
        except ValueError as exc:
            return f"visionstress: cannot compare with the baseline {self._shown(folder)}: {exc}"
        if comparison.passed:
            return None
        lines = [f"visionstress: significant regression against the baseline {self._shown(folder)} "
                 f"(alpha {alpha:g}):"]
        for gate in comparison.gates:
            for cell in gate.failures:
                p = "untested" if cell.test == "none" else f"adjusted p {format_p(cell.p_adjusted)}"
                lines.append(f"  {gate.spec}: {cell.key}: {format_value(cell.old, cell.metric)} -> "
                             f"{format_value(cell.new, cell.metric)} ({format_delta(cell.delta, cell.metric)}, {p})")
        return "\n".join(lines)

    def _baseline_folder(self, card: Scorecard) -> Path:
        """baseline_dir/<model name>/<suite>-<dataset fingerprint, 12 hex>: what was tested, not where."""
        name = _model_name(str(card.model.get("spec") or "model"))
        suite = _slug(str(card.suite.get("name") or "suite"))
        return self.settings.baseline_dir / name / f"{suite}-{str(card.dataset.get('fingerprint'))[:12]}"

    def _shown(self, path: Path) -> str:
        return _shown(path, self._config.rootpath)

    def _missing_baseline(self, card: Scorecard, folder: Path) -> str:
        return (f"visionstress: no baseline for {card.model.get('spec')} on dataset "
                f"{str(card.dataset.get('fingerprint'))[:12]} with suite {card.suite.get('name')}: "
                f"{self._shown(folder / 'scorecard.json')} does not exist.\n"
                f"Create it with `pytest --visionstress-update-baselines` (it writes {self._shown(folder)}/), "
                "then commit that folder.")

    def _write_baseline(self, card: Scorecard, folder: Path) -> None:
        """Save the card as the baseline, its records copied beside it so paired comparisons work later.
        Once per session and folder, under a lock, however many tests or workers ask."""
        from filelock import FileLock

        folder = folder.resolve()
        written = self._session_dir / f"baseline-{hashlib.sha256(str(folder).encode()).hexdigest()[:16]}"
        with FileLock(str(written) + ".lock"):
            if not written.exists():
                folder.mkdir(parents=True, exist_ok=True)
                records = folder / "records.parquet"
                source = Path(card.records_path) if card.records_path else None
                if source is not None and source.is_file():
                    if source.resolve() != records:
                        shutil.copyfile(source, records)
                    card = dataclasses.replace(card, records_path=str(records))
                else:
                    records.unlink(missing_ok=True)
                    card = dataclasses.replace(card, records_path=None)
                card.save(folder)
                written.touch()
        shown = self._shown(folder)
        if shown not in self._state.baselines:
            self._state.baselines.append(shown)


# --- hooks and fixtures ----------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("visionstress", "visionstress robustness tests")
    for name, help_text in _SETTINGS_HELP.items():
        group.addoption(f"--visionstress-{name.replace('_', '-')}", dest=f"visionstress_{name}", default=None,
                        metavar=name.upper(), help=f"{help_text}; overrides the visionstress_{name} ini key")
        parser.addini(f"visionstress_{name}", help_text, default=None)
    group.addoption("--visionstress-update-baselines", action="store_true", dest="visionstress_update_baselines",
                    default=False, help="write (overwrite) the baselines the tests compare against, then pass")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)


def pytest_sessionstart(session: pytest.Session) -> None:
    # Resolved here rather than at configure time so that a bad setting never breaks `pytest --help`.
    session.config.stash[_STATE] = _State(_resolve_settings(session.config))


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Any:
    result = yield
    items = result if isinstance(result, list) else [result]
    for item in items:
        if isinstance(item, pytest.Function):
            try:
                item.stash[_MARK] = _marker_spec(item)
            except MarkerError as exc:
                raise collector.CollectError(f"{item.nodeid}: @pytest.mark.visionstress: {exc}") from None
    return result


@pytest.fixture(scope="session")
def visionstress(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> VisionStress:
    """Evaluate models with visionstress (`.run()`), assert thresholds (`.assert_metric()`) and check
    for regressions against committed baselines (`.baseline()`, `.assert_no_regression()`)."""
    config = request.config
    base = tmp_path_factory.getbasetemp()
    if hasattr(config, "workerinput"):
        base = base.parent  # xdist workers' temporary folders share the controller's session folder
    session_dir = base / "visionstress"
    session_dir.mkdir(exist_ok=True)
    return VisionStress(config, config.stash[_STATE], session_dir)


@pytest.fixture
def visionstress_card(request: pytest.FixtureRequest, visionstress: VisionStress) -> Scorecard:
    """The scorecard for this test's @pytest.mark.visionstress run settings; the marker's min/max/gates
    are enforced after the test body, failing the test with every missed threshold listed."""
    spec = request.node.stash.get(_MARK, None)
    card = visionstress.run(**(spec.run if spec else {}))
    request.node.stash[_CARD] = (visionstress, card)
    return card


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    result = yield
    spec = item.stash.get(_MARK, None)
    checked = item.stash.get(_CARD, None)
    if spec is None or checked is None:
        return result
    helper, card = checked
    helper._enforce(card, spec)
    return result


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is not None and hasattr(session.config, "workeroutput"):
        session.config.workeroutput["visionstress"] = {"evaluations": state.evaluations,
                                                       "baselines": state.baselines}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist controller: gather what the workers evaluated and wrote, for the terminal summary."""
    state = node.config.stash.get(_STATE, None)
    sent = getattr(node, "workeroutput", {}).get("visionstress")
    if state is None or not sent:
        return
    for key, summary in sent["evaluations"].items():
        state.evaluations.setdefault(key, summary)
    state.baselines += [b for b in sent["baselines"] if b not in state.baselines]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or hasattr(config, "workerinput") or not (state.evaluations or state.baselines):
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "visionstress")
    for e in state.evaluations.values():
        write(f"{e['spec']} on {e['dataset']} ({e['images']} images, fingerprint {e['fingerprint']}), "
              f"suite {e['suite']}")
        write(f"  clean {e['metric']} {_fmt(e['clean'])}, mean under perturbation {_fmt(e['mean'])}")
        write(f"  report: {e['report']}")
    for path in state.baselines:
        write(f"baseline written: {path}")
