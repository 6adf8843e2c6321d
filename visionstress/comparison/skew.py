"""Preprocessing skew across model versions: did the new model become more sensitive to a serving change?

Each scorecard's `skew` section (visionstress.skew) holds, per cell (`knob=value[,...]`), the change of
the task metric from that model's own reference preprocessing and the agreement with the reference's
predictions. For every cell present in both, the diff shows both changes and their difference (candidate
minus reference model: negative means the candidate loses more under that cell, e.g. it became more
sensitive to BGR input) and both agreements.

It is descriptive: the skew records hold per-image outcomes but not, for every task, the sufficient
statistics a paired test of a difference of differences needs, so no p-value is claimed and no gate
reads it. Each model's own test of its cell against its reference is shown beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SkewCellDiff:
    """One cell in both models: the cell's metric, its change from each model's reference, the difference
    of those changes (candidate - reference model), each model's agreement with its own reference's
    predictions and whether each model's change was significant (Holm over that model's cells)."""

    cell: str
    label: str | None
    old: float
    new: float
    old_delta: float
    new_delta: float
    difference: float
    old_agreement: float
    new_agreement: float
    old_significant: bool
    new_significant: bool


@dataclass
class SkewDiff:
    """The skew sections of two scorecards side by side (see the module docstring)."""

    task: str
    metric: str
    old_reference: float  # the metric under each model's reference preprocessing
    new_reference: float
    cells: list[SkewCellDiff]
    only_reference: list[str] = field(default_factory=list)  # cells only the reference model's section has
    only_candidate: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cell(self, name: str) -> SkewCellDiff:
        """A cell by its name (`channel_order=bgr`) or its label (`opencv-serving`)."""
        for c in self.cells:
            if name in (c.cell, c.label):
                return c
        raise KeyError(f"no skew cell {name!r} in both scorecards; shared: {', '.join(c.cell for c in self.cells)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare_skew(reference: Mapping[str, Any] | None, candidate: Mapping[str, Any] | None,
                 notes: list[str]) -> SkewDiff | None:
    """The diff of two `skew` sections, or None (with a note in `notes` when only one scorecard has one,
    or they measure different metrics)."""
    has = [isinstance(s, Mapping) and bool(s.get("rows")) for s in (reference, candidate)]
    if not any(has):
        return None
    if not all(has):
        notes.append(f"skew: only the {'reference' if has[0] else 'candidate'} scorecard has a preprocessing-skew "
                     "section; run both with --skew (or visionstress skew) to compare them")
        return None
    assert reference is not None and candidate is not None
    metric = str(reference.get("metric"))
    if candidate.get("metric") != metric or candidate.get("task") != reference.get("task"):
        notes.append(f"skew: not compared, the sections measure {reference.get('task')} {metric} and "
                     f"{candidate.get('task')} {candidate.get('metric')}")
        return None
    old_rows, new_rows = ({r["cell"]: r for r in s["rows"]} for s in (reference, candidate))
    out = SkewDiff(task=str(reference.get("task")), metric=metric,
                   old_reference=_value(old_rows.get("reference"), "metrics", metric),
                   new_reference=_value(new_rows.get("reference"), "metrics", metric), cells=[])
    for name, old in old_rows.items():
        new = new_rows.get(name)
        if name == "reference" or new is None:
            continue
        old_delta, new_delta = _value(old, "delta", metric), _value(new, "delta", metric)
        out.cells.append(SkewCellDiff(
            cell=name, label=old.get("label") or new.get("label"), old=_value(old, "metrics", metric),
            new=_value(new, "metrics", metric), old_delta=old_delta, new_delta=new_delta,
            difference=new_delta - old_delta, old_agreement=_number(old.get("agreement")),
            new_agreement=_number(new.get("agreement")), old_significant=bool(old.get("significant")),
            new_significant=bool(new.get("significant"))))
    out.only_reference = [n for n in old_rows if n not in new_rows]
    out.only_candidate = [n for n in new_rows if n not in old_rows]
    if reference.get("reference") != candidate.get("reference"):
        out.notes.append("the two models declare different reference preprocessing; each change is from the model's "
                         "own reference")
    if reference.get("images") != candidate.get("images"):
        out.notes.append(f"skew: the sections were scored on {reference.get('images')} and {candidate.get('images')} "
                         "images")
    return out


def _value(row: Mapping[str, Any] | None, part: str, metric: str) -> float:
    return math.nan if row is None else _number((row.get(part) or {}).get(metric))


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)
