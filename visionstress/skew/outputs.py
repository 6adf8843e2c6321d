"""The files of a skew run: scorecard.json (the reference as the clean row, plus a `skew` section),
summary.md, report.html and skew_records.parquet (one row per image and cell).

The scorecard (with its `skew` section) is validated against the scorecard schema; summary.md is the skew
table rather than the run summary, so the files are written here rather than through `Scorecard.save`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

SKEW_RECORDS_FILE = "skew_records.parquet"


def skew_scorecard(result: Any) -> dict[str, Any]:
    """The scorecard dict of a skew run: a one-row scorecard (the reference, scored as `visionstress run`
    scores its clean pass) with the `skew` section beside it."""
    from visionstress.scorecard import SCHEMA_VERSION, Scorecard, environment_info, validate_scorecard

    extra = result.extra
    card = Scorecard(
        schema_version=SCHEMA_VERSION, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        task=result.task, model=extra["model"],
        dataset={**extra["dataset"], "skipped": [{"path": s.path, "reason": s.reason} for s in result.skipped]},
        suite={"name": "skew", "seed": extra["seed"], "perturbations": []}, seed=extra["seed"],
        data_config=extra["data_config"], environment=environment_info(extra["device"]), results=[result.clean_row],
        timing=result.timing, records_path=None, skew=result.section(),
    )
    data = {k: v for k, v in card.to_dict().items() if v or k not in ("prepared", "run")}
    validate_scorecard(data, "skew scorecard")
    return data


def write_skew(result: Any, out_dir: str | Path) -> Path:
    """Write the four files into `out_dir`; returns the scorecard's path."""
    from visionstress.report.html import render_report
    from visionstress.scorecard import Scorecard

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = skew_scorecard(result)
    target = out_dir / "scorecard.json"
    _write(target, json.dumps(data, indent=2, allow_nan=False) + "\n")
    _write(out_dir / "summary.md", skew_markdown(data))
    records = skew_records(result)
    records.to_parquet(out_dir / SKEW_RECORDS_FILE, index=False)
    card = Scorecard(**data)
    _write(out_dir / "report.html", render_report(card, out_dir))
    return target


def skew_records(result: Any) -> pd.DataFrame:
    """One row per image and cell: path, cell, then the task's columns (classification: prediction,
    confidence, correct; segmentation: the image's mIoU and pixel accuracy; detection: detections at the
    score threshold and tp, fp, fn) and the agreement with the reference's prediction."""
    from visionstress.tasks.base import relative_paths

    paths = relative_paths(result.paths, result.extra["root"]) if "root" in result.extra else result.paths
    frames = []
    for cell, columns in result.records.items():
        frame = pd.DataFrame({"path": paths, "cell": cell})
        for name, values in columns.items():
            frame[name] = values
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def fmt(value: Any, percent: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100 * value:.1f}%" if percent else f"{value:.3g}"


def fmt_delta(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100 * value:+.1f} pp"


def fmt_interval(pair: Any, delta: bool = False) -> str:
    if not pair or any(v is None for v in pair):
        return "–"
    f = fmt_delta if delta else fmt
    return f"{f(pair[0])} – {f(pair[1])}"


def fmt_p(value: Any) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def detectable_line(detectable: dict[str, Any] | None) -> str | None:
    """What the number of images allows, in one sentence (None when the test gives no such count)."""
    if not detectable:
        return None
    if "resamples" in detectable:
        adjusted = min(1.0, detectable["smallest_p"] * detectable["cells"])
        return (f"With {detectable['resamples']} bootstrap resamples no cell can be significant: the smallest p "
                f"is {detectable['smallest_p']:.3f}, {adjusted:.3f} after Holm over {detectable['cells']} cells; "
                f"rerun with --bootstrap {detectable['resamples_needed']} or more.")
    k, n, cells = detectable["images_changed"], detectable["images"], detectable["cells"]
    if detectable["change"] is None:
        return (f"On {n} images no cell can be significant (Holm over {cells} cells needs at least {k} images "
                "changing one way): the deltas show a direction, not evidence.")
    return (f"A cell is significant only if at least {k} of the {n} images change one way "
            f"({fmt_delta(detectable['change']).lstrip('+')} or more, Holm over {cells} cells); smaller changes "
            "cannot be told from noise on this set.")


def skew_markdown(data: dict[str, Any]) -> str:
    """The human summary of a skew scorecard."""
    skew = data["skew"]
    metric = skew["metric"]
    rows = skew["rows"]
    reference = rows[0]
    lines = [f"# visionstress skew: {data['model']['spec']} on {data['dataset']['path']}", ""]
    lines.append(f"- **Reference {metric}: {fmt(reference['metrics'][metric])}** (95% CI "
                 f"{fmt_interval(reference['ci'].get(metric))}) on {skew['images']} images, preprocessing: "
                 + ", ".join(f"{k}={v}" for k, v in reference["knobs"].items()))
    significant = skew["summary"]["significant"]
    lines.append(f"- **{len(significant)} of {len(rows) - 1} cells change {metric} significantly** "
                 f"({skew['test']}, alpha {skew['alpha']})" + (": " + ", ".join(f"`{c}`" for c in significant)
                                                                  if significant else ""))
    line = detectable_line(skew["summary"].get("detectable"))
    if line:
        lines.append(f"- {line}")
    parity = skew.get("parity")
    if parity:
        lines.append(f"- **Serving parity {'PASS' if parity['passed'] else 'FAIL'}**: `{parity['serving']}` agrees on "
                     f"{fmt(parity['agreement'])} of {parity['images']} images (minimum "
                     f"{fmt(parity['min_agreement'])}); largest logit difference {parity['max_logit_diff']:.3g}")
    lines += ["", f"## Cells ({metric})", "",
              f"| cell | {metric} | 95% CI | delta | delta 95% CI | agreement | p (Holm) | significant |",
              "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for row in rows:
        name = f"{row['label']} (`{row['cell']}`)" if row.get("label") else f"`{row['cell']}`"
        lines.append(f"| {name} | {fmt(row['metrics'][metric])} | {fmt_interval(row['ci'].get(metric))} | "
                     f"{fmt_delta(row['delta'][metric])} | {fmt_interval(row['delta_ci'].get(metric), True)} | "
                     f"{fmt(row['agreement'])} | {fmt_p(row['p_adjusted'])} | {'yes' if row['significant'] else ''} |")
    lines += ["", "## Knobs ranked by their worst cell", "", "| knob | worst cell | delta | p (Holm) |",
              "|---|---|---:|---:|"]
    for knob in skew["summary"]["knobs"]:
        lines.append(f"| {knob['knob']} | `{knob['worst_cell']}` | {fmt_delta(knob['delta'])} | "
                     f"{fmt_p(knob['p_adjusted'])} |")
    unreadable = [(r["cell"], u) for r in rows for u in r["unreadable"]]
    if unreadable:
        lines += ["", "## Images a cell's decoder could not read (scored as wrong)", ""]
        lines += [f"- `{cell}`: `{u['path']}`: {u['reason']}" for cell, u in unreadable[:50]]
    if skew["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in skew["notes"]]
    if parity and parity["disagreements"]:
        lines += ["", "## Serving parity: disagreeing images", "", "| image | reference | serving | max logit diff |",
                  "|---|---|---|---:|"]
        lines += [f"| `{d['path']}` | {d['reference']} | {d['serving']} | {d['max_logit_diff']:.3g} |"
                  for d in parity["disagreements"][:100]]
    skipped = data["dataset"].get("skipped") or []
    lines += ["", f"## Skipped files ({len(skipped)})", ""]
    lines += [f"- `{s['path']}`: {s['reason']}" for s in skipped[:20]] or ["None: every image was read."]
    return "\n".join(lines) + "\n"
