"""Committed baselines: where they are filed, how they are written, and the verdict against one.

A baseline is filed under `<baseline_dir>/<name>/<suite>-<dataset fingerprint>/`: the name the user
chose (default: the project), what was tested and on which images, never the model spec, so the next
version of a model is compared with the last instead of finding "no baseline". Folders written by
the first layout (`<model name>/<suite>-<fingerprint>`) are still read when the new one is missing.

A baseline is committed and read on other machines, so it holds no path of the machine that wrote
it: dataset and per-image paths are relative to the data root, the records file relative to the
baseline folder, other paths relative to the project (or, outside it, reduced to their file name).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionstress.pytest_plugin.settings import Settings

if TYPE_CHECKING:
    from visionstress.scorecard import Scorecard

RECORDS_FILE = "records.parquet"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x"


def model_name(spec: str) -> str:
    """A model's name without the machine: a file path keeps only its file name."""
    if "/" in spec or "\\" in spec:
        spec = re.split(r"[\\/]", spec.rstrip("/\\"))[-1]
    return slug(spec)


def _leaf(card: Scorecard) -> str:
    return f"{slug(str(card.suite.get('name') or 'suite'))}-{str(card.dataset.get('fingerprint'))[:12]}"


def baseline_folder(card: Scorecard, settings: Settings) -> Path:
    """`<baseline_dir>/<name>/<suite>-<dataset fingerprint, 12 hex>`: what was tested, not by which model
    or where."""
    return settings.baseline_dir / slug(settings.name) / _leaf(card)


def legacy_folder(card: Scorecard, settings: Settings) -> Path:
    """Where the first layout filed this card's baseline: under the model's name."""
    return settings.baseline_dir / model_name(str(card.model.get("spec") or "model")) / _leaf(card)


def find_baseline(card: Scorecard, settings: Settings) -> tuple[Path, bool] | None:
    """The folder holding this card's baseline and whether it is a legacy one; None when there is none."""
    for folder, legacy in ((baseline_folder(card, settings), False), (legacy_folder(card, settings), True)):
        if (folder / "scorecard.json").is_file():
            return folder, legacy
    return None


# --- writing ---------------------------------------------------------------------------------------

def write_baseline(card: Scorecard, folder: Path, project: Path) -> None:
    """Save `card` as the baseline in `folder`: its records copied beside it (so later comparisons are
    paired image by image) and every path made portable."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    roots = _roots(card, project)
    records = folder / RECORDS_FILE
    source = Path(card.records_path) if card.records_path else None
    if source is not None and source.is_file():
        _write_records(source, records, roots)
        card = dataclasses.replace(card, records_path=str(records))
    else:
        records.unlink(missing_ok=True)
        card = dataclasses.replace(card, records_path=None)
    fields = {f.name: _portable(getattr(card, f.name), roots) for f in dataclasses.fields(card)
              if f.name != "records_path"}
    dataclasses.replace(card, **fields).save(folder)


def _roots(card: Scorecard, project: Path) -> list[str]:
    """Absolute path prefixes to cut, most specific first: the data root (a list file's folder), then
    the project. Both spellings of each (as given and symlinks resolved) are cut."""
    roots: list[Path] = []
    data = card.dataset.get("path")
    if isinstance(data, str) and os.path.isabs(data):
        data_root = Path(data)
        roots.append(data_root.parent if data_root.is_file() else data_root)
    roots.append(project)
    prefixes = [str(p).rstrip("/\\") + os.sep for root in roots for p in (root, root.resolve())]
    return list(dict.fromkeys(prefixes))


_ABSOLUTE = re.compile(r"^(?:/|[A-Za-z]:[\\/])(?:.*[\\/])?")
"""Everything up to the last separator of an absolute path: what is left is its file name."""


def portable_text(text: str, roots: Sequence[str]) -> str:
    """`text` with the machine's path prefixes cut (also inside a message); a value that is an absolute
    path outside them keeps only its name."""
    for prefix in roots:
        text = text.replace(prefix, "")
    return _ABSOLUTE.sub("", text)


def _portable(value: Any, roots: Sequence[str]) -> Any:
    if isinstance(value, str):
        return portable_text(value, roots)
    if isinstance(value, dict):
        return {k: _portable(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, roots) for v in value]
    if isinstance(value, tuple):
        items = [_portable(v, roots) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # a namedtuple keeps its type
    return value


def _write_records(source: Path, target: Path, roots: Sequence[str]) -> None:
    """Copy the records with their `path` column made portable (written aside, then moved into place,
    so the source may be the target)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    if "path" in table.column_names:
        index = table.column_names.index("path")
        column = table.column("path")
        for prefix in roots:
            column = pc.replace_substring(column, prefix, "")
        column = pc.replace_substring_regex(column, _ABSOLUTE.pattern, "")
        table = table.set_column(index, table.schema.field(index), pa.chunked_array(column))
    partial = target.with_name(target.name + ".partial")
    pq.write_table(table, partial)
    os.replace(partial, target)


# --- the verdict -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GateVerdict:
    """One regression gate against the baseline: `outcome` is pass, fail (regressed beyond the threshold,
    with evidence) or inconclusive (the data cannot tell); `details` are the lines that say why."""

    spec: str
    outcome: str
    details: tuple[str, ...] = ()


def judge(reference: Scorecard, card: Scorecard, gates: Sequence[str] | None, alpha: float) -> list[GateVerdict]:
    """Compare `card` with its baseline under `gates` (None: the task's default gates, its primary endpoints):
    the one place the plugin speaks visionstress.compare's API. Raises ValueError when the two cannot be
    compared."""
    from visionstress.comparison import compare, format_p
    from visionstress.metrics import format_delta, format_value

    comparison = compare(reference, card, gates=None if gates is None else list(gates), alpha=alpha,
                         allow_inconclusive=True)  # the plugin decides about inconclusive gates itself
    verdicts = []
    for gate in comparison.gates:
        details = [f"  {gate.spec}: {gate.message}"] if gate.message else []
        for cell in gate.failures + gate.inconclusive:
            p = "untested" if cell.test == "none" else f"adjusted p {format_p(cell.p_adjusted)}"
            details.append(f"  {gate.spec}: {cell.key}: {format_value(cell.old, cell.metric)} -> "
                           f"{format_value(cell.new, cell.metric)} ({format_delta(cell.delta, cell.metric)}, {p})")
        verdicts.append(GateVerdict(gate.spec, gate.outcome, tuple(details)))
    return verdicts


def regression_message(verdicts: Sequence[GateVerdict], shown: str, alpha: float,
                       allow_inconclusive: bool) -> tuple[str | None, list[str]]:
    """(the failure message, or None when the test passes; warnings for inconclusive gates let pass).

    An inconclusive gate fails unless allowed: a gate that cannot tell a regression from noise has not
    shown the model is fine."""
    failed = [v for v in verdicts if v.outcome == "fail"]
    undecided = [v for v in verdicts if v.outcome == "inconclusive"]
    warnings = []
    if undecided and allow_inconclusive:
        warnings = [f"{shown}: gate {v.spec} inconclusive, passed because inconclusive gates are allowed"
                    + "".join(f"\n{line}" for line in v.details) for v in undecided]
        undecided = []
    if not failed and not undecided:
        return None, warnings
    lines = []
    if failed:
        lines.append(f"visionstress: significant regression against the baseline {shown} (alpha {alpha:g}):")
        lines += [line for v in failed for line in v.details]
    if undecided:
        lines.append(f"visionstress: inconclusive against the baseline {shown} (alpha {alpha:g}); "
                     "it fails unless inconclusive gates are allowed (visionstress_allow_inconclusive = true, "
                     "--visionstress-allow-inconclusive or the marker's allow_inconclusive=True):")
        lines += [f"  {v.spec}: inconclusive" if not v.details else "\n".join(v.details) for v in undecided]
    return "\n".join(lines), warnings
