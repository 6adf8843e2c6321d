"""Per-sample records: one Parquet row per image per pass, written as the passes stream by.

Records make every aggregate in the scorecard checkable and every failure findable ("which images
did fog at severity 5 flip?") without holding the run in memory: each `write` appends one row group
and keeps nothing.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_IDENTITY = [
    pa.field("sample_id", pa.int64(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("perturbation", pa.string(), nullable=False),
    pa.field("family", pa.string(), nullable=False),
    pa.field("severity", pa.int8(), nullable=False),
]
"""Columns every task's records share: which image, under which pass."""

_BITS = pa.list_(pa.uint16())
_BOXES = pa.list_(pa.list_(pa.float32()))

TASK_FIELDS: dict[str, list[pa.Field]] = {
    "classification": [
        pa.field("label", pa.int64(), nullable=False),
        pa.field("prediction", pa.int64(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("top5", pa.list_(pa.int64()), nullable=False),
        pa.field("nll", pa.float32()),
        pa.field("flipped", pa.bool_()),  # null on the clean pass: there is nothing to flip from
    ],
    # Detection keeps, per image, COCOeval's own matching for area 'all' (bit t of dt_match/dt_ignore is
    # IoU threshold t of 0.50:0.05:0.95), so AP can be recomputed for any resample of images: that is what
    # makes a paired bootstrap between two runs exact. The top boxes are kept for the failure gallery.
    "detection": [
        pa.field("num_gt", pa.int32(), nullable=False),
        pa.field("num_pred", pa.int32(), nullable=False),
        pa.field("tp", pa.int32(), nullable=False),
        pa.field("fp", pa.int32(), nullable=False),
        pa.field("fn", pa.int32(), nullable=False),
        pa.field("dt_category", pa.list_(pa.int32()), nullable=False),
        pa.field("dt_score", pa.list_(pa.float64()), nullable=False),
        pa.field("dt_match", _BITS, nullable=False),
        pa.field("dt_ignore", _BITS, nullable=False),
        pa.field("gt_category", pa.list_(pa.int32()), nullable=False),
        pa.field("gt_ignore", pa.list_(pa.bool_()), nullable=False),
        pa.field("pred_boxes", _BOXES),
        pa.field("pred_scores", pa.list_(pa.float32())),
        pa.field("pred_labels", pa.list_(pa.int32())),
        pa.field("gt_boxes", _BOXES),
        pa.field("gt_labels", pa.list_(pa.int32())),
    ],
    # Per-class pixel counts per image: enough to recompute mIoU / Dice / accuracy for any resample.
    "segmentation": [
        pa.field("pixel_accuracy", pa.float32()),
        pa.field("miou", pa.float32()),
        pa.field("intersection", pa.list_(pa.int64()), nullable=False),
        pa.field("gt_pixels", pa.list_(pa.int64()), nullable=False),
        pa.field("pred_pixels", pa.list_(pa.int64()), nullable=False),
    ],
}


def record_schema(task: str) -> pa.Schema:
    """The Parquet schema of one task's records: identity columns, then the task's own."""
    if task not in TASK_FIELDS:
        raise ValueError(f"no record schema for task {task!r}; known: {', '.join(TASK_FIELDS)}")
    return pa.schema(_IDENTITY + TASK_FIELDS[task])


RECORD_SCHEMA = record_schema("classification")


def _numpy(value: Any) -> Any:
    """Tensors (any device) to numpy; lists (of lists) stay Python lists."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def _column(values: Any, field: pa.Field) -> pa.Array:
    if field.name == "flipped":
        return _flipped(values, len(values))
    if pa.types.is_list(field.type):
        return pa.array([_plain_list(v) for v in values], field.type)
    return pa.array(np.asarray(values), field.type, from_pandas=True)


def _plain_list(value: Any) -> Any:
    """A per-row list value (list, tuple, numpy array or tensor, possibly nested) as Python lists."""
    value = _numpy(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain_list(v) for v in value]
    return value


class RecordWriter:
    """Appends per-sample records of one task to a Parquet file, one row group per `write`.

    Use as a context manager so the file's footer is written even when the run fails part-way;
    a file whose writer was never closed cannot be read.
    """

    def __init__(self, path: str | Path, task: str = "classification") -> None:
        self.path = Path(path)
        self.schema = record_schema(task)
        self._fields = TASK_FIELDS[task]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
        self.rows_written = 0

    def write(self, columns: Mapping[str, Sequence | np.ndarray], perturbation: str, family: str, severity: int,
              paths: Sequence[str]) -> None:
        """Append one batch of one pass: evaluator columns plus the pass identity and the image paths."""
        if self._writer is None:
            raise ValueError(f"{self.path}: the record writer is closed")
        names = {f.name for f in self._fields}
        required = [f.name for f in self._fields if not f.nullable]
        unknown = sorted(set(columns) - names - {"sample_id"})
        missing = [c for c in ["sample_id", *required] if c not in columns]
        if unknown or missing:
            raise ValueError(f"{self.path}: record columns do not fit the schema: "
                             f"missing {missing or 'none'}, unexpected {unknown or 'none'}")
        n = len(paths)
        data = {name: _numpy(columns[name]) for name in columns}
        for name, values in data.items():
            if len(values) != n:
                raise ValueError(f"{self.path}: record column {name!r} has {len(values)} values for {n} paths")
        arrays = {
            "sample_id": pa.array(np.asarray(data["sample_id"], dtype=np.int64)),
            "path": pa.array([str(p) for p in paths], pa.string()),
            "perturbation": pa.array([perturbation] * n, pa.string()),
            "family": pa.array([family] * n, pa.string()),
            "severity": pa.array(np.full(n, severity, dtype=np.int8)),
        }
        for field in self._fields:
            arrays[field.name] = (_column(data[field.name], field) if field.name in data
                                  else pa.nulls(n, field.type))
        self._writer.write_table(pa.Table.from_pydict(arrays, schema=self.schema))
        self.rows_written += n

    def close(self) -> None:
        """Write the Parquet footer; idempotent."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _flipped(values: Any, n: int) -> pa.Array:
    """Nullable bools: None, or -1 (the evaluator's marker for the clean pass), becomes null."""
    if values is None:
        return pa.nulls(n, pa.bool_())
    out = []
    for v in (values.tolist() if isinstance(values, np.ndarray) else values):
        out.append(None if v is None or (not isinstance(v, bool) and v == -1) else bool(v))
    return pa.array(out, pa.bool_())


def read_records(path: str | Path) -> pd.DataFrame:
    """The records of a run as a DataFrame; `flipped` uses pandas' nullable boolean dtype."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: records file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a readable Parquet records file: {exc}") from None
    frame = table.to_pandas()
    if "flipped" in frame:
        frame["flipped"] = frame["flipped"].astype("boolean")
    return frame
