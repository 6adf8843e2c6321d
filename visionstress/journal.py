"""The run journal: per-sample records and evaluator state, committed one planned batch at a time.

A robustness run can take hours, so its records are its checkpoint. Each planned batch, once every pass
of it is scored, becomes one part in `records.parts/`: a Parquet file (one row group per pass, rows in
sample-id order; metadata: which passes, the files skipped, the images scored) and an `.npz` of the
evaluator's state chunks. Parts are written to a temporary name and renamed, the state first, so a part
that exists is complete: a kill at any moment loses at most the batches in flight.

Resuming replays the committed parts into a fresh evaluator and skips their batches; the shards of a
distributed run (one journal per rank, in one folder) are merged the same way. `finalize` always sees
the parts absorbed in one canonical order (by first sample id), so a resumed run, a run on any number of
ranks and an uninterrupted run compute their metrics from identical state. At the end the parts are
merged into `records.parquet`, pass by pass (rows sorted by sample id), holding one pass in memory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from visionstress.records import RecordWriter, record_table

PARTS_DIR = "records.parts"
PART_COMPRESSION = "snappy"
"""Parts are written inside the loop (inline on the CPU): zstd took 47 ms for a part of the demo (66 row
groups of 64 rows), snappy 15 ms for 5% more bytes. The merged `records.parquet` is zstd."""
_PART = re.compile(r"^(?P<rank>\d{3})-(?P<first>\d{10})\.parquet$")


class JournalError(ValueError):
    """A journal that cannot be read or resumed; the message names the file."""


@dataclass
class PartInfo:
    """What a committed part says about itself."""

    path: Path
    rank: int
    first: int
    passes: list[int]
    images: int
    skipped: list[dict[str, str]]


@dataclass
class Part:
    """One planned batch being scored: tables and state chunks per pass index, in arrival order."""

    first: int
    tables: dict[int, list[pa.Table]] = field(default_factory=dict)
    states: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    images: int = 0


class Journal:
    """The journal of one rank in `out_dir/records.parts` (see the module docstring)."""

    def __init__(self, out_dir: Path, schema: pa.Schema, passes: Sequence[Any], rank: int = 0) -> None:
        self.dir = Path(out_dir) / PARTS_DIR
        self.schema = schema
        self.passes = list(passes)
        self.rank = int(rank)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._open: dict[int, Part] = {}

    # --- writing ---------------------------------------------------------------------------------

    def add(self, first: int, pass_index: int, records: Mapping[str, Any], paths: Sequence[str],
            state: dict[str, Any]) -> None:
        """One scored batch of one pass of the planned batch whose first sample id is `first`."""
        p = self.passes[pass_index]
        part = self._open.setdefault(first, Part(first))
        table = record_table(self.schema, records, p.perturbation, p.family, p.severity, paths)
        part.tables.setdefault(pass_index, []).append(table)
        part.states.append((pass_index, state))
        if pass_index == 0:
            part.images += table.num_rows

    def commit(self, first: int, skipped: Sequence[Any]) -> None:
        """Write the planned batch `first` as a part (state, then records; each atomically)."""
        part = self._open.pop(first, None) or Part(first)
        stem = f"{self.rank:03d}-{first:010d}"
        arrays: dict[str, np.ndarray] = {}
        for number, (pass_index, state) in enumerate(part.states):
            for name, value in state.items():
                arrays[f"{number:06d}.{pass_index}/{name}"] = np.asarray(value)
        _atomic(self.dir / f"{stem}.npz", lambda f: np.savez(f, **arrays))
        order = sorted(part.tables)
        meta = {"rank": self.rank, "first": first, "passes": order, "images": part.images,
                "skipped": [{"path": str(s.path), "reason": s.reason} for s in skipped]}
        schema = self.schema.with_metadata({b"visionstress.part": json.dumps(meta).encode("utf-8")})

        def write(f: Any) -> None:
            with pq.ParquetWriter(f, schema, compression=PART_COMPRESSION) as writer:
                for pass_index in order:
                    table = pa.concat_tables(part.tables[pass_index])
                    writer.write_table(table.sort_by("sample_id").replace_schema_metadata(schema.metadata))

        _atomic(self.dir / f"{stem}.parquet", write)

    # --- reading ---------------------------------------------------------------------------------

    def parts(self, rank: int | None = None) -> list[PartInfo]:
        """Committed parts (of `rank`, or of every rank), in canonical order: by first sample id."""
        out = []
        for path in self.dir.iterdir():
            match = _PART.match(path.name)
            if match is None or (rank is not None and int(match["rank"]) != rank):
                continue
            if not path.with_suffix(".npz").is_file():
                raise JournalError(f"{path}: its state file {path.with_suffix('.npz').name} is missing")
            try:
                meta = json.loads(pq.read_schema(path).metadata[b"visionstress.part"])
            except (OSError, pa.ArrowInvalid, KeyError, json.JSONDecodeError, TypeError) as exc:
                raise JournalError(f"{path}: not a readable journal part ({exc}); delete it to rescore that "
                                   f"batch") from None
            out.append(PartInfo(path, int(meta["rank"]), int(meta["first"]), list(meta["passes"]), int(meta["images"]),
                                list(meta["skipped"])))
        return sorted(out, key=lambda p: (p.first, p.rank))

    def replay(self, absorb: Callable[[int, dict[str, np.ndarray]], None], parts: Sequence[PartInfo]) -> None:
        """Feed every state chunk of `parts` to `absorb(pass index, chunk)`, in the order they were made."""
        for part in parts:
            with np.load(part.path.with_suffix(".npz"), allow_pickle=False) as data:
                chunks: dict[str, dict[str, np.ndarray]] = {}
                for key in data.files:
                    head, name = key.split("/", 1)
                    chunks.setdefault(head, {})[name] = data[key]
            for head in sorted(chunks):
                absorb(int(head.split(".", 1)[1]), chunks[head])

    def records(self, parts: Sequence[PartInfo], pass_index: int) -> Iterator[dict[str, list[Any]]]:
        """The records of one pass in each of `parts` that has it, column by column, in canonical order
        (a resumed run re-checks its label numbering on the clean records it already committed)."""
        for part in parts:
            if pass_index in part.passes:
                table = pq.ParquetFile(part.path).read_row_group(part.passes.index(pass_index))
                yield table.to_pydict()

    def merge(self, target: Path, parts: Sequence[PartInfo]) -> int:
        """Write `records.parquet` from `parts`: pass by pass in suite order, rows by sample id. Returns rows."""
        files = [(part, pq.ParquetFile(part.path)) for part in parts]
        tmp = target.with_name(target.name + ".tmp")
        with RecordWriter(tmp, schema=self.schema) as writer:
            for pass_index in range(len(self.passes)):
                tables = [f.read_row_group(part.passes.index(pass_index)) for part, f in files
                          if pass_index in part.passes]
                if tables:
                    writer.write_table(pa.concat_tables(tables).sort_by("sample_id").replace_schema_metadata(None))
            rows = writer.rows_written
        os.replace(tmp, target)
        return rows


    def salvage(self, target: Path) -> int:
        """After a failure: `records.parquet` from the committed parts plus what the batches in flight
        had scored, so the user can see what ran (resume still rescores those batches). Returns rows."""
        tables = [pa.concat_tables(t).replace_schema_metadata(None)
                  for part in self._open.values() for t in part.tables.values()]
        rows = self.merge(target, self.parts(self.rank))
        if not tables:
            return rows
        merged = pq.read_table(target)
        combined = pa.concat_tables([merged] + [t.cast(merged.schema) for t in tables])
        tmp = target.with_name(target.name + ".tmp")
        pq.write_table(combined, tmp, compression="zstd")
        os.replace(tmp, target)
        return combined.num_rows


def _atomic(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def iter_todo(plan: Sequence[Sequence[int]], done: set[int]) -> Iterator[tuple[int, Sequence[int]]]:
    """(plan index, batch) of the planned batches whose first sample id has no committed part."""
    for index, batch in enumerate(plan):
        if batch[0] not in done:
            yield index, batch
