"""The statistics of a skew cell against the reference: one paired analysis per cell, Holm over cells.

Every image is seen by the reference and by the cell, so the comparison is paired. For a yes/no
per-image outcome (top-1 correct) the exact test is McNemar's: given the discordant images (right
under one preprocessing only), the number the cell gets right is Binomial(discordant, 1/2) under no
difference. The interval of the difference comes from the same analysis: Clopper-Pearson on that
binomial, scaled by discordant / n. Because Binomial(d, 1/2) is symmetric, the two-sided exact p-value
is twice the smaller tail, which is exactly the test the Clopper-Pearson interval inverts: the 95%
interval excludes 0 if and only if p < 0.05 (tested). The metric's own interval is the percentile
bootstrap over images that `visionstress run` uses, with the same draws, so the reference row's
interval equals the run's clean-pass interval.

`paired_binary` is the one place these are computed, so that it can be switched to the project's
shared paired statistics without touching the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from visionstress.comparison.statistics import mcnemar_test
from visionstress.evaluators.bootstrap import bootstrap_ci
from visionstress.evaluators.classification import exact_share_interval


@dataclass(frozen=True)
class PairedBinary:
    """A cell's per-image yes/no outcome against the reference's on the same images."""

    value: float  # the cell's rate (e.g. top-1)
    interval: tuple[float, float] | None  # its exact (Clopper-Pearson) interval (None without resamples)
    delta: float  # cell minus reference
    delta_interval: tuple[float, float]  # Clopper-Pearson on the discordant pairs, as a difference
    p_value: float  # exact two-sided McNemar
    reference_only: int  # images right under the reference only
    cell_only: int  # images right under the cell only


def paired_binary(reference: np.ndarray, cell: np.ndarray, *, bootstrap: int, seed: int,
                  alpha: float = 0.05) -> PairedBinary:
    ref, hit = np.asarray(reference, bool), np.asarray(cell, bool)
    if ref.shape != hit.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"paired_binary: need two equal non-empty vectors, got {ref.shape} and {hit.shape}")
    n = ref.size
    values = hit.astype(np.float64)
    interval = None if bootstrap == 0 else exact_share_interval(int(hit.sum()), n, alpha)  # as the run's top-1
    reference_only, cell_only = int((ref & ~hit).sum()), int((~ref & hit).sum())
    test = mcnemar_test(reference_only, cell_only, n, alpha)  # compare's test: p and interval agree
    p_value, delta_interval = test.p_value, test.interval
    return PairedBinary(float(values.mean()), interval, (cell_only - reference_only) / n, delta_interval,
                        p_value, reference_only, cell_only)


@dataclass(frozen=True)
class PairedBootstrap:
    """A cell's count-based metrics against the reference's on the same images, by bootstrap."""

    values: dict[str, float]
    intervals: dict[str, list[float]]  # empty without resamples
    deltas: dict[str, float]
    delta_intervals: dict[str, list[float]]
    p_value: float | None  # for the first metric's difference; None without resamples


def paired_bootstrap(reference: np.ndarray, cell: np.ndarray, metrics: Callable[[np.ndarray], dict[str, np.ndarray]],
                     names: Sequence[str], *, bootstrap: int, seed: int, alpha: float = 0.05) -> PairedBootstrap:
    """Metrics that are ratios of sums over images (mIoU): `reference` and `cell` are per-image counts
    `[n, k]` and `metrics(totals [..., k])` turns summed counts into `{name: value}`. Each resample draws
    image multiplicities once and applies them to both sides (the same draws as `visionstress run`'s
    intervals, so the reference's interval is the run's), giving percentile intervals for the cell's
    metrics and their differences; the p-value of the first metric's difference is the two-sided
    bootstrap one, 2 x the smaller share of resampled differences on either side of 0 (+1 smoothed), the
    test the percentile interval inverts."""
    ref, hit = (np.asarray(x, dtype=np.float64) for x in (reference, cell))
    n, k = ref.shape
    ref_point, cell_point = metrics(ref.sum(axis=0)), metrics(hit.sum(axis=0))
    values = {m: float(cell_point[m]) for m in names}
    deltas = {m: values[m] - float(ref_point[m]) for m in names}
    if bootstrap == 0:
        return PairedBootstrap(values, {}, deltas, {}, None)
    stacked = np.concatenate([ref, hit], axis=1)
    resampled: list[np.ndarray] = []

    def stats(weights: np.ndarray) -> dict[str, np.ndarray]:
        totals = weights @ stacked
        ref_m, cell_m = metrics(totals[:, :k]), metrics(totals[:, k:])
        out = {m: cell_m[m] for m in names} | {f"delta {m}": cell_m[m] - ref_m[m] for m in names}
        resampled.append(out[f"delta {names[0]}"])
        return out

    ci = bootstrap_ci(stats, n, bootstrap, seed, alpha)
    differences = np.concatenate(resampled)
    differences = differences[np.isfinite(differences)]
    count = len(differences)
    below, above = (int((differences <= 0).sum()) + 1) / (count + 1), (int((differences >= 0).sum()) + 1) / (count + 1)
    return PairedBootstrap(values, {m: list(ci[m]) for m in names}, deltas,
                           {m: list(ci[f"delta {m}"]) for m in names}, min(1.0, 2 * min(below, above)))
