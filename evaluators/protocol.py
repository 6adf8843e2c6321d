"""The one evaluator protocol every task's evaluator follows, so the runner is one loop for every task.

    update(key, batch, predictions) -> Update     # one batch of one pass
    absorb(perturbation, severity, state)        # a state chunk again (resume, merging shards)
    finalize() -> results                         # rows (MetricRow) and breakdowns

`update` reduces on the predictions' device and copies to the host once; it returns the batch's
per-image record columns (what goes to Parquet) and its state chunk: the numbers `finalize` needs from
this batch, as plain numpy arrays keyed by name. A run writes the chunks to its journal beside the
records, so a killed run can be resumed, and the shards of a distributed run merged, by absorbing the
chunks into a fresh evaluator: `finalize` then sees exactly what it would have seen in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class PassKey(Protocol):
    """What an evaluator needs to know of a pass (visionstress.engine.Pass has more)."""

    perturbation: str
    severity: int


@dataclass
class Update:
    """One batch of one pass: `records` are the per-image record columns (`sample_id` first), `state` the
    chunk of evaluator state (flat `{name: numpy array}`, written to the journal as is)."""

    records: dict[str, Any]
    state: dict[str, Any]
