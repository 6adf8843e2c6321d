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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = "2.0"
SCHEMA_DIR = Path(__file__).parent / "schema"
SCHEMA_PATHS = {"1": SCHEMA_DIR / "scorecard-1.schema.json", "2": SCHEMA_DIR / "scorecard.schema.json"}
SCHEMA_PATH = SCHEMA_PATHS["2"]
SCORECARD_FILE = "scorecard.json"
SUMMARY_FILE = "summary.md"
CLEAN = "clean"

_V1_SUMMARY_KEYS = {"clean_accuracy": "clean", "mean_accuracy_under_perturbation": "mpc", "relative_robustness": "rpc"}
"""Version 1 named the task-neutral summaries after accuracy even when they held AP or mIoU."""
_V1_NESTED_KEYS = {"mean_accuracy": "mpc", "relative_robustness": "rpc"}
_HEADLINE_SUMMARIES = frozenset({"metric", "clean", "mpc", "rpc"})
"""Summaries the headline already states (computed from the rows), so they are not listed twice."""
_LEVELS = frozenset({"clean", "chance"})
"""Family-summary numbers that are levels, not changes: an interval holding 0 says nothing about them."""
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
    prepared: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    skew: dict[str, Any] = field(default_factory=dict)

    @property
    def main_metric(self) -> str:
        """The metric the task is judged by (top1, AP, mIoU, ...)."""
        return main_metric(self.task, self.summaries, self.results)

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
        for optional in ("prepared", "run", "skew"):
            if not data[optional]:
                del data[optional]
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
        if str(data["schema_version"]).split(".")[0] == "1":
            data = upgrade_v1(data)
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


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 scorecard in version-2 form: the summaries' task-neutral keys (v1 called the main
    metric's clean value, mean and ratio `clean_accuracy`, `mean_accuracy_under_perturbation` and
    `relative_robustness` even for AP or mIoU)."""
    summaries = {_V1_SUMMARY_KEYS.get(k, k): v for k, v in (data.get("summaries") or {}).items()}
    for group in ("per_family", "per_perturbation"):
        if isinstance(summaries.get(group), dict):
            summaries[group] = {name: ({_V1_NESTED_KEYS.get(k, "mean" if group == "per_perturbation" and k == "mpc"
                                                            else k): v for k, v in entry.items()}
                                       if isinstance(entry, dict) else entry)
                                for name, entry in summaries[group].items()}
            if group == "per_perturbation":
                for entry in summaries[group].values():
                    if isinstance(entry, dict) and "mpc" in entry:
                        entry["mean"] = entry.pop("mpc")
    return {**data, "schema_version": SCHEMA_VERSION, "summaries": summaries,
            "run": {**(data.get("run") or {}), "upgraded_from": data["schema_version"]}}


def main_metric(task: str, summaries: dict[str, Any] | None = None, results: list[dict[str, Any]] | None = None) -> str:
    """The task's main metric: from its task module, else what the summaries say, else the first metric."""
    try:
        from visionstress.tasks import get_task

        return get_task(task).main_metric
    except ValueError:
        if summaries and isinstance(summaries.get("metric"), str):
            return summaries["metric"]
        return next(iter(results[0]["metrics"])) if results else "top1"


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


@functools.lru_cache(maxsize=2)
def _validator(major: str = "2") -> Any:
    import jsonschema

    schema = json.loads(SCHEMA_PATHS[major].read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _pointer(parts: Any) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts) if parts else "/"


def validate_scorecard(data: Any, source: str) -> None:
    """Raise ScorecardError naming `source` and the JSON pointer of the first problem found."""
    import jsonschema

    version = data.get("schema_version") if isinstance(data, dict) else None
    major = version.split(".")[0] if isinstance(version, str) else SCHEMA_VERSION.split(".")[0]
    if major not in SCHEMA_PATHS:
        raise ScorecardError(f"{source}: scorecard schema version {version} is not readable by this visionstress "
                             f"(it reads {', '.join(f'{m}.x' for m in SCHEMA_PATHS)})")
    errors = list(_validator(major).iter_errors(data))
    if not errors:
        return
    first = jsonschema.exceptions.best_match(errors)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    raise ScorecardError(f"{source}: does not match the scorecard schema {major}.x at "
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

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md(text: Any) -> str:
    """User-supplied text (names, paths, reasons) made inert in Markdown and HTML: summary.md is meant to
    be posted as a pull-request comment, where a backtick or `<script>` in a suite name must stay text."""
    escaped = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", escaped).replace("\n", " ").replace("\r", " ")


def _fmt(value: float, metric: str, task: str) -> str:
    from visionstress.metrics import format_value

    return format_value(value, metric, task)


def _fmt_delta(value: float, metric: str, task: str) -> str:
    from visionstress.metrics import format_delta

    return format_delta(value, metric, task)


def _worst_lines(perturbed: Any, clean: float, metric: str, task: str) -> list[str]:
    """The cells that lost the most against clean (in the metric's direction), each marked when the clean
    value lies inside its 95% interval: on these images such a drop is not told from noise."""
    from visionstress.metrics import find_metric

    info = find_metric(metric, task)
    values = perturbed[metric].astype(float)
    loss = clean - values if info is None or info.higher_is_better else values - clean
    ranked = perturbed.assign(loss=loss)[loss > 0].sort_values(["loss", "perturbation", "severity"],
                                                               ascending=[False, True, True])
    lines = ["", "## Worst perturbations", ""]
    if ranked.empty:
        return lines + [f"No perturbed cell scored worse than clean on {metric}."]
    lines += [f"| perturbation | severity | {metric} | drop from clean | 95% CI of the cell |",
              "|---|---:|---:|---:|---|"]
    noise = 0
    for row in ranked.head(_WORST_SHOWN).itertuples(index=False):
        value = float(getattr(row, metric))
        low, high = (float(getattr(row, f"{metric}_ci_{end}", math.nan)) for end in ("low", "high"))
        interval = "–" if not (math.isfinite(low) and math.isfinite(high)) else \
            f"{_fmt(low, metric, task)} – {_fmt(high, metric, task)}"
        within = math.isfinite(low) and low <= clean <= high
        noise += within
        lines.append(f"| {md(row.perturbation)} | {row.severity} | {_fmt(value, metric, task)} | "
                     f"{_fmt_delta(row.loss, metric, task)} | {interval}{' (clean inside)' if within else ''} |")
    if noise:
        lines += ["", f"{noise} of these drops leave clean inside the cell's 95% interval: on these images they are "
                      "not told from noise (`visionstress compare` tests changes image by image)."]
    return lines


def _markdown(card: Scorecard) -> str:
    metric, task = card.main_metric, card.task
    frame = card.to_pandas()
    clean_rows = frame[frame.perturbation == CLEAN]
    perturbed = frame[frame.perturbation != CLEAN]
    clean = float(clean_rows[metric].iloc[0]) if len(clean_rows) else math.nan
    model, dataset = card.model, card.dataset
    lines = [f"# visionstress scorecard: {md(model.get('spec'))} on {md(dataset.get('path'))}", ""]

    ci = ""
    if f"{metric}_ci_low" in frame and len(clean_rows):
        low, high = clean_rows[f"{metric}_ci_low"].iloc[0], clean_rows[f"{metric}_ci_high"].iloc[0]
        ci = f" (95% CI {_fmt(low, metric, task)} – {_fmt(high, metric, task)})"
    lines.append(f"- **Clean {metric}: {_fmt(clean, metric, task)}**{ci}")
    if len(perturbed):
        mpc = card.summaries.get("mpc")
        mean = float(mpc) if isinstance(mpc, (int, float)) else float(perturbed.groupby("perturbation")[metric].mean().mean())
        defined = perturbed.dropna(subset=[metric]).perturbation.nunique()
        undefined = perturbed.perturbation.nunique() - defined
        left_out = f" ({undefined} left out: {metric} undefined, e.g. no object left)" if undefined else ""
        lines.append(f"- **Mean {metric} under perturbation (mPC): {_fmt(mean, metric, task)}** "
                     f"over {defined} perturbations{left_out}")
        if clean > 0:
            lines.append(f"- **Relative robustness (mPC / clean, rPC): {mean / clean:.3f}**")
    lines += _mce_lines(card)
    lines += [f"- {md(key)}: {value:.4g}" for key, value in _scalar_summaries(card.summaries)]
    lines += ["", f"Task {md(task)}; model {md(model.get('spec'))} (format {md(model.get('format'))}, sha256 "
              f"{md((model.get('sha256') or 'n/a')[:12])}); {dataset.get('num_samples')} images, "
              f"{dataset.get('num_classes')} classes (fingerprint {md(str(dataset.get('fingerprint'))[:12])}); "
              f"suite {md(card.suite.get('name'))}, seed {card.seed}; device {md(card.environment.get('device'))} "
              f"({md(card.environment.get('device_name'))}); created {md(card.created)}.", ""]

    if len(perturbed):
        severities = sorted(perturbed.severity.unique())
        lines += [f"## {metric} by perturbation and severity", "",
                  "| perturbation | family | " + " | ".join(str(s) for s in severities) + " | mean | vs clean |",
                  "|---|---|" + "---:|" * (len(severities) + 2)]
        for name, group in perturbed.groupby("perturbation", sort=False):
            by_severity = dict(zip(group.severity, group[metric]))
            cells = [_fmt(by_severity.get(s, math.nan), metric, task) for s in severities]
            mean = float(group[metric].mean())
            lines.append(f"| {md(name)} | {md(group.family.iloc[0])} | " + " | ".join(cells)
                         + f" | {_fmt(mean, metric, task)} | {_fmt_delta(mean - clean, metric, task)} |")
        lines += ["", "## Mean by family", "", f"| family | mPC ({metric}) |", "|---|---:|"]
        for family, group in perturbed.groupby("family", sort=True):
            value = group.groupby("perturbation")[metric].mean().mean()
            lines.append(f"| {md(family)} | {_fmt(float(value), metric, task)} |")
        lines += _family_summary_lines(card.summaries)
        lines += _worst_lines(perturbed, clean, metric, task)

    warnings = dataset.get("warnings") or []
    if warnings:
        lines += ["", f"## Warnings ({len(warnings)})", ""] + [f"- {md(w)}" for w in warnings[:_SKIPPED_SHOWN]]
    skipped = dataset.get("skipped") or []
    lines += ["", f"## Skipped files ({len(skipped)})", ""]
    if not skipped:
        lines.append("None: every image was read.")
    for item in skipped[:_SKIPPED_SHOWN]:
        lines.append(f"- {md(item['path'])}: {md(item['reason'])}")
    if len(skipped) > _SKIPPED_SHOWN:
        lines.append(f"- … and {len(skipped) - _SKIPPED_SHOWN} more (all listed in {SCORECARD_FILE})")
    if card.timing:
        lines += ["", "## Timing", "", ", ".join(f"{md(k)} {md(v)}" for k, v in card.timing.items())]
    return "\n".join(lines) + "\n"


MCE_MIN_IMAGES = 500
"""Below this many images per cell, an mCE (a ratio of error sums normalised by AlexNet's 50,000-image
errors) moves by several points from image to image; the summary says so rather than let it read as a
benchmark number."""


def _mce_lines(card: Scorecard) -> list[str]:
    """The mCE with what it is normalised by, per corruption, and a caveat when the set is small."""
    summaries = card.summaries
    if not isinstance(summaries.get("mce"), (int, float)):
        return []
    base = summaries.get("mce_baseline") or "a baseline"
    lines = [f"- **mCE: {100 * summaries['mce']:.1f}%** (corruption errors normalised by {md(base)}; 100% = as "
             f"robust as the baseline, lower is better)"]
    if isinstance(summaries.get("relative_mce"), (int, float)):
        lines.append(f"- relative mCE: {100 * summaries['relative_mce']:.1f}%")
    images = card.dataset.get("num_samples") or 0
    if images < MCE_MIN_IMAGES:
        lines.append(f"- caveat: {images} images are too few for mCE to mean much (its normalisation was measured "
                     f"on 50,000 ImageNet images; expect several points of noise below {MCE_MIN_IMAGES} images)")
    covered = _classes_with_images(card)
    classes = card.dataset.get("num_classes")
    if "AlexNet" in str(base) and covered is not None and isinstance(classes, int) and covered < classes:
        lines.append(f"- caveat: the images cover {covered} of the model's {classes} classes; AlexNet's errors "
                     f"were measured over all of them, so this mCE is not comparable with published ones")
    errors = summaries.get("corruption_errors") or {}
    if errors:
        lines += ["", "| corruption | CE |", "|---|---:|"]
        lines += [f"| {md(name)} | {100 * value:.1f}% |" for name, value in errors.items()
                  if isinstance(value, (int, float)) and math.isfinite(value)]
        lines.append("")
    return lines


def _classes_with_images(card: Scorecard) -> int | None:
    """How many classes have clean images (per-class support), or None when the scorecard does not say."""
    per_class = (card.breakdowns.get("per_class") or {}).get(f"{CLEAN}@0")
    if not isinstance(per_class, dict):
        return None
    return sum(1 for row in per_class.values() if isinstance(row, dict) and (row.get("support") or 0) > 0)


def _scalar_summaries(summaries: dict[str, Any]) -> list[tuple[str, float]]:
    """Numeric top-level summaries for the headline list (mCE has its own lines; the families' summaries,
    dicts, their own section)."""
    return [(key, float(value)) for key, value in summaries.items()
            if key not in _HEADLINE_SUMMARIES and key not in ("mce", "relative_mce") and _is_number(value)]


def _family_summary_lines(summaries: dict[str, Any]) -> list[str]:
    """A section per family summary (background reliance, cue conflict, patches...): each number with its
    95% interval where the summary has one (`<key>_ci`), so a gap that the images cannot tell from zero
    says so; counts and settings on one line."""
    lines = []
    skip = _HEADLINE_SUMMARIES | {"mce", "relative_mce", "corruption_errors", "per_family", "per_perturbation", "worst"}
    for family, summary in summaries.items():
        if family in skip or not isinstance(summary, dict):
            continue
        metric = summary.get("metric")
        lines += ["", f"## {md(family)} summary" + (f" ({md(metric)})" if isinstance(metric, str) else ""), ""]
        counts = []
        for key, value in summary.items():
            if not _is_number(value) or key.endswith("_ci"):
                continue
            if isinstance(value, (int, np.integer)):
                counts.append(f"{md(key)} {int(value)}")
                continue
            ci = summary.get(f"{key}_ci")
            interval = ""
            if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_is_number(v) for v in ci):
                inside = " (0 inside)" if ci[0] <= 0 <= ci[1] and key not in _LEVELS else ""
                interval = f" (95% CI {ci[0]:.4g} – {ci[1]:.4g}){inside}"
            lines.append(f"- {md(key)}: {value:.4g}{interval}")
        if counts:
            lines.append(f"- {', '.join(counts)}")
        if isinstance(summary.get("areas"), list):
            lines += _patch_area_lines(summary["areas"])
    return lines


def _patch_area_lines(areas: list[Any]) -> list[str]:
    """The adversarial family's rows, one per patch area: the metric clean, under the attack and under its
    random control, attack success, and the patch effect (control - attack), each with its 95% interval."""

    def cell(entry: Any) -> str:
        if not isinstance(entry, dict) or not _is_number(entry.get("value")):
            return "—"
        ci = entry.get("ci")
        interval = (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2
                    and all(_is_number(v) for v in ci) else "")
        return f"{entry['value']:.3f}{interval}"

    lines = ["", "| area | images | clean | adversarial_patch | random_patch | success (attack) | success (control) "
             "| effect |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in areas:
        if not isinstance(row, dict):
            continue
        attack, control = row.get("adversarial_patch") or {}, row.get("random_patch") or {}
        area = f"{100 * row['area']:g}%" if _is_number(row.get("area")) else f"severity {row.get('severity')}"
        lines.append(f"| {area} | {row.get('images')} | {cell(row.get('clean'))} | {cell(attack.get('metric'))} | "
                     f"{cell(control.get('metric'))} | {cell(attack.get('success'))} | {cell(control.get('success'))} "
                     f"| {cell(row.get('effect'))} |")
    return lines


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))
