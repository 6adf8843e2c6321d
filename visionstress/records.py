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
_IDENTITY_NAMES = frozenset(f.name for f in _IDENTITY)

def record_schema(task: str) -> pa.Schema:
    """The Parquet schema of one task's records: identity columns, then the task's own (declared by the
    task module: visionstress.tasks)."""
    from visionstress.tasks import get_task

    return pa.schema(_IDENTITY + list(get_task(task).record_fields()))


def _numpy(value: Any) -> Any:
    """Tensors (any device) to numpy; lists (of lists) stay Python lists."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def _column(values: Any, field: pa.Field) -> pa.Array:
    if field.name == "flipped":
        return _flipped(values, len(values))
    if pa.types.is_list(field.type):
        if isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype != object:
            # A regular [n, k] block (top-5 indices): offsets and flat values, without a Python list per row.
            offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32) * values.shape[1])
            return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), field.type.value_type),
                                            type=field.type)
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


def record_table(schema: pa.Schema, columns: Mapping[str, Sequence | np.ndarray], perturbation: str, family: str,
                 severity: int, paths: Sequence[str]) -> pa.Table:
    """One batch of one pass as a table of `schema`: evaluator columns plus the pass identity and paths.
    Raises ValueError naming the columns that do not fit."""
    fields = [f for f in schema if f.name not in _IDENTITY_NAMES]
    names = {f.name for f in fields}
    required = [f.name for f in fields if not f.nullable]
    unknown = sorted(set(columns) - names - {"sample_id"})
    missing = [c for c in ["sample_id", *required] if c not in columns]
    if unknown or missing:
        raise ValueError(f"record columns do not fit the schema: missing {missing or 'none'}, "
                         f"unexpected {unknown or 'none'}")
    n = len(paths)
    data = {name: _numpy(columns[name]) for name in columns}
    for name, values in data.items():
        if len(values) != n:
            raise ValueError(f"record column {name!r} has {len(values)} values for {n} paths")
    arrays = {
        "sample_id": pa.array(np.asarray(data["sample_id"], dtype=np.int64)),
        "path": pa.array([display_path(p) for p in paths], pa.string()),
        "perturbation": pa.array([perturbation] * n, pa.string()),
        "family": pa.array([family] * n, pa.string()),
        "severity": pa.array(np.full(n, severity, dtype=np.int8)),
    }
    for field in fields:
        arrays[field.name] = (_column(data[field.name], field) if field.name in data else pa.nulls(n, field.type))
    return pa.Table.from_pydict(arrays, schema=schema)


def display_path(path: Any) -> str:
    """A path as text that any UTF-8 writer accepts: undecodable bytes of a file name (kept by Python as
    surrogates) are shown as `\\xNN` escapes instead of failing the whole run."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class RecordWriter:
    """Appends per-sample records to a Parquet file, one row group per `write` (the schema of `task`).

    Use as a context manager so the file's footer is written even when the run fails part-way;
    a file whose writer was never closed cannot be read.
    """

    def __init__(self, path: str | Path, task: str = "classification", schema: pa.Schema | None = None) -> None:
        self.path = Path(path)
        self.schema = schema if schema is not None else record_schema(task)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
        self.rows_written = 0

    def write(self, columns: Mapping[str, Sequence | np.ndarray], perturbation: str, family: str, severity: int,
              paths: Sequence[str]) -> None:
        """Append one batch of one pass: evaluator columns plus the pass identity and the image paths."""
        if self._writer is None:
            raise ValueError(f"{self.path}: the record writer is closed")
        try:
            table = record_table(self.schema, columns, perturbation, family, severity, paths)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}") from None
        self.write_table(table)

    def write_table(self, table: pa.Table) -> None:
        if self._writer is None:
            raise ValueError(f"{self.path}: the record writer is closed")
        self._writer.write_table(table)
        self.rows_written += table.num_rows

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
