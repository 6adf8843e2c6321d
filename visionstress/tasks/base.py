"""What a task is: the seam between the one run loop and everything that differs by task.

A task module subclasses `Task` and registers one instance (`visionstress.tasks.register_task`). It
declares its options (visionstress.options) and metrics (visionstress.metrics) beside the code that uses
them, and answers the runner's few questions:

- `setup(options, device)` → `TaskRun`: the dataset (planned batches, sample paths, the scorecard's
  `dataset` entry), the loaded model, its adapter (`predict(images)`), the evaluator (the protocol of
  visionstress.evaluators.protocol) and the failure-gallery scorer;
- `record_fields()`: the Parquet columns its evaluator writes per image;
- `statistics(columns)`: its metrics for a matrix of image weights (intervals and paired tests);
- `summaries(...)` and `breakdowns(...)`: what its scorecard adds to the rows;
- `main_metric`, `secondary_metric`, `default_gates`, `demo()`.

Nothing here imports torch at module level: the pytest plugin reads task declarations when pytest starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np

    from visionstress.batch import Batch
    from visionstress.datasets import SkippedFile
    from visionstress.options import RunOptions

CLEAN = "clean"
StatFn = Callable[["np.ndarray"], dict[str, "np.ndarray"]]


class RunError(ValueError):
    """A run that cannot start: the message says which input is wrong and how."""


@dataclass
class RunDataset:
    """The run's images as the loop reads them.

    `images` plans and decodes batches (visionstress.datasets.batching.PlannedImages); `paths[i]` is
    sample i's file as records and the gallery show it (relative to the data root); `info` is the
    scorecard's `dataset` entry (without `num_samples` and `skipped`, which the run fills in);
    `class_names` name the model's outputs (or the dataset's categories).
    """

    images: Any
    paths: Sequence[str]
    info: dict[str, Any]
    class_names: list[str]
    root: Path

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class TaskRun:
    """What `Task.setup` returns: everything the loop needs for one run of this task."""

    dataset: RunDataset
    model: Any  # visionstress.models.LoadedModel
    adapter: Any  # predict(images) -> ClassifierOutput | DetectorOutput | SegmenterOutput
    evaluator: Any  # visionstress.evaluators.protocol
    gallery: GalleryScorer | None
    data_config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: Callable[[], list[str]] | None = None
    """Things the run noticed that the scorecard must say (e.g. predictions no category could take)."""


class GalleryScorer:
    """How bad each image's failure under a pass is, for the failure gallery (higher is worse).

    The loop calls `clean(batch, predictions, records)` for the clean pass of each batch, then
    `offer(gallery, key, batch, predictions, records, paths)` for each perturbed pass; subsets of the clean
    batch (a pass that scores only some images) are matched to their clean image by sample id.
    """

    def __init__(self) -> None:
        self._clean: dict[int, tuple[Any, ...]] = {}

    def clean(self, batch: Batch, predictions: Any, records: Mapping[str, Any]) -> None:
        self._clean = {int(s): (i, batch, predictions, records) for i, s in enumerate(batch.sample_ids.tolist())}

    def clean_of(self, batch: Batch) -> tuple[list[int], Any, Any, Mapping[str, Any]]:
        """Positions in the clean batch of `batch`'s samples, with the clean batch, predictions, records."""
        found = [self._clean[int(s)] for s in batch.sample_ids.tolist()]
        _, clean_batch, clean_predictions, clean_records = found[0]
        return [f[0] for f in found], clean_batch, clean_predictions, clean_records

    def offer(self, gallery: Any, key: Any, batch: Batch, predictions: Any, records: Mapping[str, Any],
              paths: Sequence[str]) -> None:
        raise NotImplementedError


class Task:
    """Base of the task modules; see the module docstring."""

    name: ClassVar[str]
    description: ClassVar[str]
    main_metric: ClassVar[str]
    secondary_metric: ClassVar[str]
    default_gates: ClassVar[tuple[str, ...]]

    def demo(self) -> dict[str, Any]:
        """`visionstress.run` keywords of this task's bundled demo (model, weights, data, name, ...)."""
        raise NotImplementedError

    def record_fields(self) -> list[Any]:
        """pyarrow fields of this task's per-image records, after the shared identity columns."""
        raise NotImplementedError

    def setup(self, options: RunOptions, device: Any, *, foreground: bool = False) -> TaskRun:
        """Load the dataset, the model, its adapter and the evaluator. With `foreground` (the suite has
        background or cue perturbations) batches carry object masks (`Batch.foreground`)."""
        raise NotImplementedError

    def statistics(self, columns: Mapping[str, Any]) -> StatFn:
        """The task's metrics for image weights `[r, n]` -> `{metric: [r]}` from one pass's record columns
        (sample-id order): one function behind every interval and every paired test."""
        raise NotImplementedError

    def compare_columns(self) -> list[str]:
        """The record columns `compare` reads to test two runs image by image (default: all of them)."""
        return [f.name for f in self.record_fields()]

    def mcnemar_outcomes(self, frame: Any) -> dict[str, Any]:
        """Per image, the yes/no outcome of each metric tested with the exact McNemar test (metric ->
        bool array); metrics not listed are tested with the paired bootstrap of `statistics`."""
        return {}

    def summaries(self, rows: Sequence[Any], families: Mapping[str, str], run: TaskRun,
                  options: RunOptions) -> dict[str, Any]:
        """The scorecard's robustness summary (task-neutral keys: clean, mpc, rpc, per family)."""
        from visionstress.evaluators import robustness_summary

        return robustness_summary(rows, families, self.main_metric)

    def breakdowns(self, results: Any, run: TaskRun, keep: set[str]) -> dict[str, Any]:
        """The scorecard's breakdowns from the evaluator's results; `keep` are the result keys
        ("clean@0", the worst cell, ...) whose large breakdowns (confusion, error types) are kept."""
        return {}

    def skew_inputs(self, run: TaskRun) -> tuple[list[Any], Any, dict[str, Any]]:
        """(samples, DataConfig, extra run_skew keywords) for `visionstress run --skew`
        (visionstress.skew.run_skew); tasks without a skew matrix raise."""
        raise RunError(f"--skew: task {self.name} has no preprocessing-skew matrix")

    def reliance_metric(self, options: Mapping[str, Any]) -> str:
        """The metric the background and cue summaries report (evaluators.reliance): the main one."""
        return self.main_metric

    def weighted_reliance_metric(self, columns: Mapping[str, Any], options: Mapping[str, Any],
                                 class_names: Sequence[str]) -> Callable[[Any], Any] | None:
        """`reliance_metric` of one pass's columns as a function of image weights `[r, n]` -> `[r]`; None:
        take it from `statistics`."""
        return None

    def chance(self, class_names: Sequence[str]) -> float | None:
        """The main metric of a model that guesses (what a background-only score is compared with); None
        where there is no such single number."""
        return None

    def check_labels(self, clean_records: Sequence[Mapping[str, Any]], run: TaskRun) -> str | None:
        """After the first clean batches: a message when the model's label numbering looks like it differs
        from the dataset's (visionstress.label_check), which stops the run; None when all is well."""
        return None

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


def worst_key(rows: Sequence[Any], metric: str, higher_is_better: bool = True) -> str | None:
    """The result key ("name@severity") of the worst perturbed row by `metric`, or None."""
    perturbed = [r for r in rows if r.severity > 0 and math.isfinite(r.metrics.get(metric, math.nan))]
    if not perturbed:
        return None
    pick = min if higher_is_better else max
    worst = pick(perturbed, key=lambda r: r.metrics[metric])
    return f"{worst.perturbation}@{int(worst.severity)}"


def relative_paths(paths: Sequence[str | Path], root: Path) -> list[str]:
    """Paths as records, scorecards and the gallery show them: relative to the data root when inside it
    (no machine paths in committed files), else as given."""
    root = Path(root)
    out = []
    for path in paths:
        try:
            out.append(Path(path).relative_to(root).as_posix())
        except ValueError:
            out.append(Path(path).as_posix())
    return out


def skipped_entries(skipped: Sequence[SkippedFile], root: Path) -> list[dict[str, str]]:
    return [{"path": p, "reason": s.reason} for s, p in zip(skipped, relative_paths([s.path for s in skipped], root))]


def import_callable(spec: str | Callable[..., Any] | None, flag: str) -> Callable[..., Any] | None:
    """A hook given as a callable or as "package.module:function" (`models.loading.import_attribute`)."""
    if spec is None or callable(spec):
        return spec
    from visionstress.models.loading import import_attribute

    return import_attribute(str(spec), f"{flag} {spec}", RunError)[1]
