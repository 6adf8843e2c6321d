"""The `visionstress` fixture object: evaluate once per session, check thresholds, judge against baselines.

An evaluation takes minutes, so it is cached by its arguments for the whole session and, under
pytest-xdist, shared between workers: the first to take a file lock runs it and leaves the scorecard's
location for the others. What the terminal summary reports is kept as plain data, so workers can send
it to the controller.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pytest

from visionstress.pytest_plugin import baselines
from visionstress.pytest_plugin.marker import MarkerSpec
from visionstress.pytest_plugin.settings import Settings, translate_flags
from visionstress.pytest_plugin.thresholds import CLEAN, failure_header, main_metric, metric_problems

if TYPE_CHECKING:
    from visionstress.scorecard import Scorecard
    from visionstress.skew import ParityResult


@dataclass
class State:
    """What this pytest process knows: resolved settings, evaluated cards, and what the terminal
    summary reports (plain data, so xdist workers can send it to the controller)."""

    settings: Settings
    cards: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_plain(self) -> dict[str, Any]:
        return {"evaluations": self.evaluations, "baselines": self.baselines, "warnings": self.warnings}

    def add_plain(self, sent: dict[str, Any]) -> None:
        for key, summary in sent["evaluations"].items():
            self.evaluations.setdefault(key, summary)
        for name in ("baselines", "warnings"):
            own = getattr(self, name)
            own += [item for item in sent[name] if item not in own]


def _arguments_key(arguments: dict[str, Any]) -> str:
    text = json.dumps(arguments, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _evaluation_summary(card: Scorecard, report: Path) -> dict[str, Any]:
    """What the terminal summary says about one evaluation."""
    metric = main_metric(card)
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


def shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


_PARITY_ARGUMENTS = ("model", "data", "weights", "trust_model", "num_classes", "data_config", "class_names", "device",
                     "batch_size", "workers", "limit", "strict")
"""The run settings that say which model sees which images how; the rest (suite, bootstrap, ...) do not
concern serving parity."""
_DATA_CONFIG_ARGUMENTS = ("input_size", "resize", "interpolation", "mean", "std", "channel_order")


class VisionStress:
    """The `visionstress` session fixture: evaluate (cached), assert thresholds, compare with baselines.

    `settings` are the session's; a marker's settings give a sibling (`with_settings`) that shares the
    session's cache."""

    def __init__(self, config: pytest.Config, state: State, session_dir: Path,
                 settings: Settings | None = None) -> None:
        self._config = config
        self._state = state
        self._session_dir = session_dir
        self._settings = settings or state.settings

    @property
    def settings(self) -> Settings:
        return self._settings

    def with_settings(self, values: dict[str, Any]) -> VisionStress:
        return VisionStress(self._config, self._state, self._session_dir, self._settings.merged(values))

    def run(self, **overrides: Any) -> Scorecard:
        """Evaluate with the settings plus `overrides` (any `visionstress.run` keyword; `out` is then the
        report folder itself).

        Cached for the session by the resolved arguments, so many tests share one evaluation. Under
        pytest-xdist the workers share it too: the first to take the file lock runs and saves the
        scorecard; the others wait for the lock and load it.
        """
        arguments = {**self.settings.run, **overrides}
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
            report = root / f"{baselines.model_name(str(arguments.get('model') or 'demo'))}-{key[:8]}"
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

                try:  # a report folder of an earlier session is replaced: this session's evaluation is the one
                    card = run(**{"overwrite": not arguments.get("resume"), **arguments}, out=report)
                except ValueError as exc:  # the library's input errors: a message, not a traceback
                    message = translate_flags(
                        f"visionstress could not evaluate {arguments.get('model') or 'the demo'}: {exc}")
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
        problems = metric_problems(card, metric, at_least, at_most, perturbation, severity)
        if problems:
            pytest.fail(failure_header(card) + "\n".join(problems), pytrace=False)

    def assert_serving_parity(self, *, serving: Any = None, serving_model: Any = None, min_agreement: float = 1.0,
                              **overrides: Any) -> ParityResult:
        """Fail the test unless the user's serving path agrees with the model's declared preprocessing on
        at least `min_agreement` of the images, naming every disagreeing image file.

        `serving` is a function image path -> model input `[C, H, W]` (or "package.module:function"),
        `serving_model` an export of the same model (e.g. model.onnx); the model, weights, data and
        preprocessing are the settings plus `overrides`, as `run()` takes them
        (visionstress.skew.check_serving_parity; classification). Returns the ParityResult when it passes.
        """
        from visionstress.skew import check_serving_parity

        arguments = {**self.settings.run, **overrides}
        task = arguments.get("task") or "classification"
        if task != "classification":
            pytest.fail(f"visionstress: serving parity checks classification models; the settings say task={task}",
                        pytrace=False)
        parity = {k: arguments[k] for k in _PARITY_ARGUMENTS if arguments.get(k) is not None}
        config = {k: arguments.get(k) for k in _DATA_CONFIG_ARGUMENTS}
        try:
            result = check_serving_parity(serving=serving, serving_model=serving_model, min_agreement=min_agreement,
                                          data_config_overrides=config, **parity)
        except (ValueError, FileNotFoundError, ImportError) as exc:  # the library's input errors: a message
            problem = translate_flags(f"visionstress could not check serving parity: {exc}")
        else:
            problem = None if result.passed else result.message
        if problem is not None:  # failed outside the except block, so pytest shows no chained exception
            pytest.fail(problem, pytrace=False)
        return result

    def enforce(self, card: Scorecard, spec: MarkerSpec) -> None:
        """Check a marker's thresholds and gates, failing once with everything that was missed."""
        problems = []
        for t in spec.minimums:
            problems += metric_problems(card, t.metric, t.bound, None, t.perturbation, t.severity)
        for t in spec.maximums:
            problems += metric_problems(card, t.metric, None, t.bound, t.perturbation, t.severity)
        messages = [failure_header(card) + "\n".join(problems)] if problems else []
        if spec.regression:
            messages.append(self._regression_problem(card, spec.gates, spec.alpha, None) or "")
        message = "\n".join(m for m in messages if m)
        if message:
            pytest.fail(message, pytrace=False)

    def baseline(self, card: Scorecard) -> Scorecard:
        """The committed baseline for this card's name, dataset and suite.

        Missing: the test fails saying how to create it. With --visionstress-update-baselines the card
        becomes the baseline (written, records included) and is returned.
        """
        from visionstress.scorecard import Scorecard

        if self.settings.update_baselines:
            self._write_baseline(card)
        found = baselines.find_baseline(card, self.settings)
        if found is None:
            pytest.fail(self._missing_baseline(card), pytrace=False)
        try:
            return Scorecard.load(found[0])
        except ValueError as exc:
            pytest.fail(f"visionstress: cannot read the baseline: {exc}", pytrace=False)

    def assert_no_regression(self, card: Scorecard, *, gates: Sequence[str] | None = None, alpha: float = 0.05,
                             allow_inconclusive: bool | None = None) -> None:
        """Fail the test if `card` regressed against its baseline under `gates` (`visionstress.compare`'s
        gate syntax; None: the task's default gates, its main metric clean and under perturbation).

        A gate the data cannot decide fails too, unless inconclusive gates are allowed (here, or by the
        visionstress_allow_inconclusive setting). With --visionstress-update-baselines it writes the
        baseline instead and passes."""
        problem = self._regression_problem(card, gates, alpha, allow_inconclusive)
        if problem:
            pytest.fail(problem, pytrace=False)

    def _regression_problem(self, card: Scorecard, gates: Sequence[str] | None, alpha: float,
                            allow_inconclusive: bool | None) -> str | None:
        if self.settings.update_baselines:
            self._write_baseline(card)
            return None
        found = baselines.find_baseline(card, self.settings)
        if found is None:
            return self._missing_baseline(card)
        folder, legacy = found
        where = self._shown(folder)
        note = ""
        if legacy:
            advice = (f"baseline read from {where}, filed under the model's name by an older visionstress; "
                      "`pytest --visionstress-update-baselines` files it under "
                      f"{self._shown(baselines.baseline_folder(card, self.settings))}/")
            note = f"\n({advice})"
            self._warn(advice)
        reference = self.baseline(card)
        try:
            verdicts = baselines.judge(reference, card, gates, alpha)
        except ValueError as exc:
            return translate_flags(f"visionstress: cannot compare with the baseline {where}: {exc}") + note
        allow = self.settings.allow_inconclusive if allow_inconclusive is None else allow_inconclusive
        problem, warnings = baselines.regression_message(verdicts, where, alpha, allow)
        for warning in warnings:
            self._warn(warning)
        return None if problem is None else problem + note

    def _warn(self, text: str) -> None:
        if text not in self._state.warnings:
            self._state.warnings.append(text)

    def _shown(self, path: Path) -> str:
        return shown(path, self._config.rootpath)

    def _missing_baseline(self, card: Scorecard) -> str:
        folder = baselines.baseline_folder(card, self.settings)
        return (f"visionstress: no baseline for {card.model.get('spec')} on dataset "
                f"{str(card.dataset.get('fingerprint'))[:12]} with suite {card.suite.get('name')} under the name "
                f"{self.settings.name}: "
                f"{self._shown(folder / 'scorecard.json')} does not exist.\n"
                f"Create it with `pytest --visionstress-update-baselines` (it writes {self._shown(folder)}/), "
                "then commit that folder.")

    def _write_baseline(self, card: Scorecard) -> None:
        """Save the card as the baseline. Once per session and folder, under a lock, however many tests
        or workers ask."""
        from filelock import FileLock

        folder = baselines.baseline_folder(card, self.settings).resolve()
        written = self._session_dir / f"baseline-{hashlib.sha256(str(folder).encode()).hexdigest()[:16]}"
        with FileLock(str(written) + ".lock"):
            if not written.exists():
                baselines.write_baseline(card, folder, self._config.rootpath)
                written.touch()
        where = self._shown(folder)
        if where not in self._state.baselines:
            self._state.baselines.append(where)
        legacy = baselines.legacy_folder(card, self.settings)
        if legacy.resolve() != folder and (legacy / "scorecard.json").is_file():
            self._warn(f"{self._shown(legacy)} (the old layout) is no longer read now that {where} exists: "
                       "delete it")
