"""One stress run's loop (DESIGN §1), the same for every task.

Each planned batch is decoded once, moved to the device once, and every perturbation x severity of the
suite runs on it while it is resident; the clean pass of a sample always comes first. The main thread
only perturbs and predicts; scoring (the evaluator's `update`, which copies to the host once per batch),
records and the failure gallery run on one host worker thread, in order, so the device is never kept
waiting for numpy, pycocotools or Parquet. A planned batch's records and evaluator state are committed to
the run's journal (visionstress.journal) when all its passes are scored: that is the checkpoint a killed
run resumes from, and what the shards of a distributed run are merged from.

A CUDA out-of-memory error in a perturbation or the model halves the batch and carries on; because every
random draw is per sample, the result is what a run started with the smaller batch gives.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from visionstress.batch import Batch
from visionstress.perturbations import Perturbation, get_perturbation

CLEAN = "clean"


@dataclass(frozen=True)
class Pass:
    """One perturbation x severity of the suite (or the clean pass); `table` overrides the
    perturbation's severity table when the suite gives its own."""

    perturbation: str
    family: str
    severity: int
    table: tuple[Any, ...] | None = None

    @property
    def key(self) -> str:
        """`name@severity`, the key of breakdowns and of the journal."""
        return f"{self.perturbation}@{self.severity}"


def suite_passes(suite: Any) -> list[Pass]:
    """The clean pass followed by every (perturbation, severity) of `suite`, in suite order."""
    passes = [Pass(CLEAN, CLEAN, 0)]
    for item in suite.items:
        family = get_perturbation(item.perturbation).family
        passes.extend(Pass(item.perturbation, family, s, item.table) for s in item.severities)
    return passes


def perturbation_for(p: Pass) -> Perturbation:
    """The registered perturbation, or a copy of it carrying the suite's own severity table."""
    perturbation = get_perturbation(p.perturbation)
    if p.table is None:
        return perturbation
    custom = copy.copy(perturbation)
    custom.severities = tuple(p.table)
    return custom


@dataclass
class RunTiming:
    """Where the time went, in seconds: reading+decoding (main thread waiting for the loader), perturbing,
    the model, scoring (on the host worker, overlapped with the others), and the batch sizes used."""

    data: float = 0.0
    perturb: float = 0.0
    model: float = 0.0
    score: float = 0.0
    total: float = 0.0
    images: int = 0
    predictions: int = 0
    batch_sizes: set[int] = field(default_factory=set)
    out_of_memory: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_seconds": round(self.total, 4),
            "data_seconds": round(self.data, 4),
            "perturb_seconds": round(self.perturb, 4),
            "model_seconds": round(self.model, 4),
            "score_seconds": round(self.score, 4),
            "images": self.images,
            "predictions": self.predictions,
            "predictions_per_second": round(self.predictions / self.total, 2) if self.total > 0 else 0.0,
            "batch_sizes": sorted(self.batch_sizes),
            "out_of_memory_retries": self.out_of_memory,
        }


class HostWorker:
    """One background thread running submitted jobs in order; an exception in a job is raised in the
    submitting thread at the next `submit` or at `close`, and stops the rest. `depth` bounds the jobs in
    flight (each holds a batch's device tensors).

    `inline` runs each job at once in the submitting thread instead: on the CPU there is no device to keep
    busy, and a second thread only competes with the model's and the perturbations' own threads (measured
    on the demo: perturbing took twice as long beside a scoring thread)."""

    def __init__(self, depth: int = 4, inline: bool = False) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._inline = inline
        self._thread = threading.Thread(target=self._work, name="visionstress-host", daemon=True)
        if not inline:
            self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # noqa: BLE001  (re-raised in the submitting thread)
                    self._error = exc

    def submit(self, job: Callable[[], None]) -> None:
        self._raise()
        if self._inline:
            job()
            return
        self._jobs.put(job)

    def close(self, raise_errors: bool = True) -> None:
        """Finish the queued jobs and stop the thread (re-raising a job's exception)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        if raise_errors:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower() and isinstance(
        exc, RuntimeError)


@dataclass
class Loop:
    """What one run's loop works with. `score(pass_index, view, predictions)` runs on the host worker;
    `perturbations` are the prepared ones by name; `batch_limit` is the largest batch the device took so
    far (halved on each out-of-memory error)."""

    passes: Sequence[Pass]
    perturbations: dict[str, Perturbation]
    predict: Callable[[torch.Tensor], Any]
    score: Callable[[int, Batch, Any], None]
    worker: HostWorker
    device: torch.device
    seed: int
    timing: RunTiming
    batch_limit: int
    sample_filters: dict[str, Callable[[torch.Tensor], torch.Tensor | None]] = field(default_factory=dict)

    def run_batch(self, batch: Batch) -> None:
        """Every pass on `batch` (already on the device), in chunks of at most `batch_limit`."""
        for start in range(0, len(batch), self.batch_limit):
            chunk = batch if len(batch) <= self.batch_limit else batch.select(slice(start, start + self.batch_limit))
            self._passes(chunk, 0)

    def _passes(self, batch: Batch, first: int) -> None:
        self.timing.batch_sizes.add(len(batch))
        host_ids = batch.sample_ids.cpu()
        for index in range(first, len(self.passes)):
            p = self.passes[index]
            try:
                view, predictions, events = self._one(p, batch, host_ids)
            except RuntimeError as exc:
                if not is_out_of_memory(exc) or len(batch) == 1:
                    raise
                self.timing.out_of_memory += 1
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.batch_limit = max(1, len(batch) // 2)
                half = (len(batch) + 1) // 2
                for part in (batch.select(slice(0, half)), batch.select(slice(half, len(batch)))):
                    self._passes(part, index)
                return
            if view is not None:
                self.worker.submit(lambda i=index, v=view, pr=predictions: self.score(i, v, pr))
                if events is not None:
                    self.worker.submit(lambda e=events: self._cuda_times(*e))

    def _one(self, p: Pass, batch: Batch, host_ids: torch.Tensor) -> tuple[Batch | None, Any, Any]:
        """Perturb and predict. On CUDA nothing here waits for the device: the time is measured with events
        that the host worker reads later; on the CPU with the wall clock."""
        cuda = self.device.type == "cuda"
        events = [torch.cuda.Event(enable_timing=True) for _ in range(3)] if cuda else None
        if events:
            events[0].record()
        t0 = time.perf_counter()
        view = batch
        if p.perturbation != CLEAN:
            perturbation = self.perturbations[p.perturbation]
            keep = perturbation.sample_filter(host_ids)
            if keep is not None:
                chosen = torch.nonzero(torch.as_tensor(keep, dtype=torch.bool).cpu()).reshape(-1)
                if chosen.numel() == 0:
                    return None, None, None
                if chosen.numel() < len(batch):
                    view = batch.select(chosen)
            if not perturbation.needs_foreground and view.foreground is not None:
                view = view.replace(foreground=None)
            view = perturbation(view, severity=p.severity, seed=self.seed)
        if events:
            events[1].record()
        t1 = time.perf_counter()
        predictions = self.predict(view.images)
        if events:
            events[2].record()
        else:
            self.timing.perturb += t1 - t0
            self.timing.model += time.perf_counter() - t1
        self.timing.predictions += len(view)
        return view, predictions, events

    def _cuda_times(self, start: Any, perturbed: Any, predicted: Any) -> None:
        predicted.synchronize()
        self.timing.perturb += start.elapsed_time(perturbed) / 1000.0
        self.timing.model += perturbed.elapsed_time(predicted) / 1000.0


def stream(batches: Iterator[tuple[int, list[Batch], list[Any]]], loop: Loop,
           on_batch_done: Callable[[int, list[Any]], None]) -> None:
    """Run `loop` over planned batches `(plan index, same-shape batches, skipped files)`; after each one,
    `on_batch_done(plan index, skipped)` is run on the host worker (after that batch's scoring)."""
    start = time.perf_counter()
    try:
        while True:
            t0 = time.perf_counter()
            try:
                index, parts, skipped = next(batches)
            except StopIteration:
                break
            loop.timing.data += time.perf_counter() - t0
            for part in parts:
                if len(part) == 0:
                    continue
                t1 = time.perf_counter()
                part = part.to(loop.device)
                loop.timing.data += time.perf_counter() - t1
                loop.timing.images += len(part)
                loop.run_batch(part)
            loop.worker.submit(lambda i=index, s=skipped: on_batch_done(i, s))
        loop.worker.close()
    finally:
        loop.worker.close(raise_errors=False)
        loop.timing.total += time.perf_counter() - start


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
