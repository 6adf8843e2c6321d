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

RECORD_SCHEMA = pa.schema([
    pa.field("sample_id", pa.int64(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("perturbation", pa.string(), nullable=False),
    pa.field("family", pa.string(), nullable=False),
    pa.field("severity", pa.int8(), nullable=False),
    pa.field("label", pa.int64(), nullable=False),
    pa.field("prediction", pa.int64(), nullable=False),
    pa.field("confidence", pa.float32(), nullable=False),
    pa.field("correct", pa.bool_(), nullable=False),
    pa.field("top5", pa.list_(pa.int64()), nullable=False),
    pa.field("nll", pa.float32()),
    pa.field("flipped", pa.bool_()),  # null on the clean pass: there is nothing to flip from
])

_REQUIRED = ("sample_id", "label", "prediction", "confidence", "correct", "top5")
_OPTIONAL = ("nll", "flipped")


def _numpy(value: Any) -> Any:
    """Tensors (any device) and lists to numpy; lists of lists (top5) stay Python lists."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


class RecordWriter:
    """Appends per-sample records to a Parquet file, one row group per `write`.

    Use as a context manager so the file's footer is written even when the run fails part-way;
    a file whose writer was never closed cannot be read.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(str(self.path), RECORD_SCHEMA, compression="zstd")
        self.rows_written = 0

    def write(self, columns: Mapping[str, Sequence | np.ndarray], perturbation: str, family: str, severity: int,
              paths: Sequence[str]) -> None:
        """Append one batch of one pass: evaluator columns plus the pass identity and the image paths."""
        if self._writer is None:
            raise ValueError(f"{self.path}: the record writer is closed")
        unknown = sorted(set(columns) - set(_REQUIRED) - set(_OPTIONAL))
        missing = [c for c in _REQUIRED if c not in columns]
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
            "label": pa.array(np.asarray(data["label"], dtype=np.int64)),
            "prediction": pa.array(np.asarray(data["prediction"], dtype=np.int64)),
            "confidence": pa.array(np.asarray(data["confidence"], dtype=np.float32)),
            "correct": pa.array(np.asarray(data["correct"], dtype=bool)),
            "top5": pa.array([[int(k) for k in row] for row in data["top5"]], pa.list_(pa.int64())),
            "nll": (pa.array(np.asarray(data["nll"], dtype=np.float32)) if "nll" in data
                    else pa.nulls(n, pa.float32())),
            "flipped": _flipped(data.get("flipped"), n),
        }
        self._writer.write_table(pa.Table.from_pydict(arrays, schema=RECORD_SCHEMA))
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
