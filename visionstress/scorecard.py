"""The scorecard: the versioned, self-describing result of one robustness run.

`scorecard.json` records what was tested (model identity and hash, dataset fingerprint, suite,
seed, preprocessing, environment) beside what broke (one row per perturbation x severity), so two
scorecards can be compared months apart and a number can always be traced to its inputs. It is
validated against the shipped JSON Schema both when written and when read: a scorecard that was
hand-edited or produced by another version fails loudly, at the JSON pointer of the problem, rather
than as a KeyError deep inside a comparison.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).parent / "schema" / "scorecard.schema.json"
SCORECARD_FILE = "scorecard.json"
SUMMARY_FILE = "summary.md"
CLEAN = "clean"

MAIN_METRIC = {"classification": "top1", "detection": "AP", "segmentation": "mIoU"}
"""The metric the Markdown summary tabulates, per task (higher is better for each)."""

_FRACTION_METRICS = frozenset({
    "top1", "top5", "macro_f1", "balanced_accuracy", "ece", "flip_rate",
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl", "miss_rate",
    "mIoU", "pixel_accuracy", "mDice", "boundary_f1", "region_recall_small", "region_recall_medium",
    "region_recall_large", "AP_tiny", "recall_tiny",
    *(f"segm_{m}" for m in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")),
})
_HEADLINE_SUMMARIES = frozenset({"clean_accuracy", "mean_accuracy_under_perturbation", "relative_robustness"})
"""Summaries the headline already states (computed from the rows), so they are not listed twice."""
_SKIPPED_SHOWN = 20
_WORST_SHOWN = 5


class ScorecardError(ValueError):
    """A scorecard that cannot be written or read; the message names the file and the JSON pointer."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(kw_only=True)
class Scorecard:
    """One run's result. `results` rows are `{perturbation, family, severity, metrics, ci}`, the clean
    pass being `clean`/`clean`/0; metric values that are undefined (flip rate on the clean pass) are
    NaN in memory and null in JSON."""

    schema_version: str = SCHEMA_VERSION
    created: str = field(default_factory=_now)
    task: str
    model: dict[str, Any]
    dataset: dict[str, Any]
    suite: dict[str, Any]
    seed: int
    data_config: dict[str, Any]
    environment: dict[str, Any]
    results: list[dict[str, Any]]
    summaries: dict[str, Any] = field(default_factory=dict)
    breakdowns: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    records_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: numpy values and tuples converted, non-finite floats as None."""
        return {f.name: _plain(getattr(self, f.name), f.name) for f in dataclasses.fields(self)}

    def save(self, directory: str | Path) -> Path:
        """Validate, then write `scorecard.json` and `summary.md` into `directory`; returns the JSON path.

        A records path inside `directory` is stored relative to it, so a report folder can be moved
        or committed as a whole.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / SCORECARD_FILE
        data = self.to_dict()
        if data["records_path"] is not None:
            records = Path(data["records_path"])
            if records.is_absolute():
                try:
                    data["records_path"] = records.relative_to(directory.resolve()).as_posix()
                except ValueError:
                    pass  # outside the report folder: keep the absolute path
        validate_scorecard(data, str(target))
        _write_text(target, json.dumps(data, indent=2, allow_nan=False) + "\n")
        _write_text(directory / SUMMARY_FILE, self.to_markdown())
        return target

    @classmethod
    def load(cls, path: str | Path) -> Scorecard:
        """Read and validate a scorecard (`scorecard.json`, or the report folder that holds one)."""
        path = Path(path)
        if path.is_dir():
            path = path / SCORECARD_FILE
        if not path.is_file():
            raise ScorecardError(f"{path}: scorecard file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ScorecardError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        except UnicodeDecodeError as exc:
            raise ScorecardError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
        validate_scorecard(data, str(path))
        known = {f.name for f in dataclasses.fields(cls)}
        card = cls(**{k: v for k, v in data.items() if k in known})  # later minor versions may add fields
        for row in card.results:
            row["metrics"] = {k: _float(v) for k, v in row["metrics"].items()}
            row["ci"] = {k: [_float(v) for v in pair] for k, pair in row["ci"].items()}
        if card.records_path is not None and not Path(card.records_path).is_absolute():
            card.records_path = str(path.parent / card.records_path)
        return card

    def to_pandas(self) -> pd.DataFrame:
        """One row per result: perturbation, family, severity, one column per metric, then
        `<metric>_ci_low` / `<metric>_ci_high`."""
        metric_names: list[str] = []
        ci_names: list[str] = []
        for row in self.results:
            metric_names += [m for m in row["metrics"] if m not in metric_names]
            ci_names += [m for m in row.get("ci", {}) if m not in ci_names]
        records = []
        for row in self.results:
            record: dict[str, Any] = {"perturbation": row["perturbation"], "family": row["family"],
                                      "severity": int(row["severity"])}
            record.update({m: _float(row["metrics"].get(m)) for m in metric_names})
            for m in ci_names:
                low, high = row.get("ci", {}).get(m, (None, None))
                record[f"{m}_ci_low"], record[f"{m}_ci_high"] = _float(low), _float(high)
            records.append(record)
        columns = (["perturbation", "family", "severity"] + metric_names
                   + [f"{m}_ci_{end}" for m in ci_names for end in ("low", "high")])
        return pd.DataFrame.from_records(records, columns=columns)

    def metric(self, name: str, perturbation: str = CLEAN, severity: int = 0) -> float:
        """One metric value, e.g. `card.metric("top1")` (clean) or `card.metric("top1", "fog", 3)`."""
        for row in self.results:
            if row["perturbation"] == perturbation and int(row["severity"]) == severity:
                if name not in row["metrics"]:
                    raise KeyError(f"no metric {name!r} in the {perturbation}@{severity} row; it has "
                                   f"{', '.join(row['metrics'])}")
                return _float(row["metrics"][name])
        have = sorted({r["perturbation"] for r in self.results})
        raise KeyError(f"no result for {perturbation}@{severity}; the scorecard has {', '.join(have)}")

    def to_markdown(self) -> str:
        """The human summary written beside the JSON: headline, results table, worst cases, skipped files."""
        return _markdown(self)


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file so an interrupted save never leaves a half-written scorecard."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _plain(value: Any, where: str) -> Any:
    """JSON-ready copy of `value`; `where` (a dotted key path) names the culprit of an unstorable value."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return _plain(value.tolist(), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), where)
    raise ScorecardError(f"scorecard key {where}: cannot store a {type(value).__name__} in JSON")


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _pointer(parts: Any) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts) if parts else "/"


def validate_scorecard(data: Any, source: str) -> None:
    """Raise ScorecardError naming `source` and the JSON pointer of the first problem found."""
    import jsonschema

    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(version, str) and version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ScorecardError(f"{source}: scorecard schema version {version} is not readable by this visionstress "
                             f"(it reads {SCHEMA_VERSION.split('.')[0]}.x)")
    errors = list(_validator().iter_errors(data))
    if not errors:
        return
    first = jsonschema.exceptions.best_match(errors)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    raise ScorecardError(f"{source}: does not match the scorecard schema {SCHEMA_VERSION} at "
                         f"{_pointer(first.absolute_path)}: {first.message}{more}")


def environment_info(device: Any) -> dict[str, Any]:
    """Versions and hardware that can change a result: recorded so a difference can be explained."""
    import torch

    import visionstress

    try:
        import torchvision

        torchvision_version: str | None = torchvision.__version__
    except ImportError:
        torchvision_version = None
    dev = torch.device(device)
    if dev.type == "cuda":
        device_name = torch.cuda.get_device_name(dev)
    else:
        device_name = platform.processor() or platform.machine() or dev.type
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision_version,
        "numpy": np.__version__,
        "visionstress": visionstress.__version__,
        "device": str(dev),
        "device_name": device_name,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
    }


# --- Markdown summary ---------------------------------------------------------------------------

def _fmt(value: float, metric: str) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{100 * value:.1f}%" if metric in _FRACTION_METRICS else f"{value:.3f}"


def _fmt_delta(value: float, metric: str) -> str:
    """A difference, in percentage points for fraction metrics so it reads against the percentages."""
    if not math.isfinite(value):
        return "–"
    return f"{100 * value:+.1f} pp" if metric in _FRACTION_METRICS else f"{value:+.3f}"


def _markdown(card: Scorecard) -> str:
    metric = MAIN_METRIC.get(card.task) or next(iter(card.results[0]["metrics"]))
    frame = card.to_pandas()
    clean_rows = frame[frame.perturbation == CLEAN]
    perturbed = frame[frame.perturbation != CLEAN]
    clean = float(clean_rows[metric].iloc[0]) if len(clean_rows) else math.nan
    model, dataset = card.model, card.dataset
    lines = [f"# visionstress scorecard: {model.get('spec')} on {dataset.get('path')}", ""]

    ci = ""
    if f"{metric}_ci_low" in frame and len(clean_rows):
        low, high = clean_rows[f"{metric}_ci_low"].iloc[0], clean_rows[f"{metric}_ci_high"].iloc[0]
        ci = f" (95% CI {_fmt(low, metric)} – {_fmt(high, metric)})"
    lines.append(f"- **Clean {metric}: {_fmt(clean, metric)}**{ci}")
    if len(perturbed):
        mean = float(perturbed[metric].mean())
        lines.append(f"- **Mean {metric} under perturbation: {_fmt(mean, metric)}** "
                     f"over {len(perturbed)} perturbation × severity runs")
        if clean > 0:
            lines.append(f"- **Relative robustness (perturbed / clean): {mean / clean:.3f}**")
    for key, value in _scalar_summaries(card.summaries):
        lines.append(f"- {key}: {value:.4g}")
    lines += ["", f"Task {card.task}; model `{model.get('spec')}` (format {model.get('format')}, sha256 "
              f"`{(model.get('sha256') or 'n/a')[:12]}`); {dataset.get('num_samples')} images, "
              f"{dataset.get('num_classes')} classes (fingerprint `{str(dataset.get('fingerprint'))[:12]}`); "
              f"suite `{card.suite.get('name')}`, seed {card.seed}; device {card.environment.get('device')} "
              f"({card.environment.get('device_name')}); created {card.created}.", ""]

    if len(perturbed):
        severities = sorted(perturbed.severity.unique())
        lines += [f"## {metric} by perturbation and severity", "",
                  "| perturbation | family | " + " | ".join(str(s) for s in severities) + " | mean | vs clean |",
                  "|---|---|" + "---:|" * (len(severities) + 2)]
        for name, group in perturbed.groupby("perturbation", sort=False):
            by_severity = dict(zip(group.severity, group[metric]))
            cells = [_fmt(by_severity.get(s, math.nan), metric) for s in severities]
            mean = float(group[metric].mean())
            lines.append(f"| {name} | {group.family.iloc[0]} | " + " | ".join(cells)
                         + f" | {_fmt(mean, metric)} | {_fmt_delta(mean - clean, metric)} |")
        lines += ["", "## Mean by family", "", f"| family | mean {metric} |", "|---|---:|"]
        for family, group in perturbed.groupby("family", sort=True):
            lines.append(f"| {family} | {_fmt(float(group[metric].mean()), metric)} |")
        worst = perturbed.sort_values([metric, "perturbation", "severity"]).head(_WORST_SHOWN)
        lines += ["", "## Worst perturbations", "", f"| perturbation | severity | {metric} | drop from clean |",
                  "|---|---:|---:|---:|"]
        for row in worst.itertuples(index=False):
            value = float(getattr(row, metric))
            lines.append(f"| {row.perturbation} | {row.severity} | {_fmt(value, metric)} | {_fmt_delta(clean - value, metric)} |")

    skipped = dataset.get("skipped") or []
    lines += ["", f"## Skipped files ({len(skipped)})", ""]
    if not skipped:
        lines.append("None: every image was read.")
    for item in skipped[:_SKIPPED_SHOWN]:
        lines.append(f"- `{item['path']}`: {item['reason']}")
    if len(skipped) > _SKIPPED_SHOWN:
        lines.append(f"- … and {len(skipped) - _SKIPPED_SHOWN} more (all listed in {SCORECARD_FILE})")
    if card.timing:
        lines += ["", "## Timing", "", ", ".join(f"{k} {v}" for k, v in card.timing.items())]
    return "\n".join(lines) + "\n"


def _scalar_summaries(summaries: dict[str, Any]) -> list[tuple[str, float]]:
    """Numeric summaries (e.g. mCE) at the top level or one level down, for the headline list."""
    out = []
    for key, value in summaries.items():
        if key in _HEADLINE_SUMMARIES:
            continue
        if isinstance(value, dict):
            out += [(f"{key}.{k}", float(v)) for k, v in value.items() if _is_number(v)]
        elif _is_number(value):
            out.append((key, float(value)))
    return out


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))
