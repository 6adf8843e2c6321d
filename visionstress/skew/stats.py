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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from visionstress.evaluators.bootstrap import bootstrap_ci


@dataclass(frozen=True)
class PairedBinary:
    """A cell's per-image yes/no outcome against the reference's on the same images."""

    value: float  # the cell's rate (e.g. top-1)
    interval: tuple[float, float] | None  # its 95% bootstrap interval (None without resamples)
    delta: float  # cell minus reference
    delta_interval: tuple[float, float]  # Clopper-Pearson on the discordant pairs, as a difference
    p_value: float  # exact two-sided McNemar
    reference_only: int  # images right under the reference only
    cell_only: int  # images right under the cell only


def paired_binary(reference: np.ndarray, cell: np.ndarray, *, bootstrap: int, seed: int,
                  alpha: float = 0.05) -> PairedBinary:
    from scipy.stats import binomtest

    ref, hit = np.asarray(reference, bool), np.asarray(cell, bool)
    if ref.shape != hit.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"paired_binary: need two equal non-empty vectors, got {ref.shape} and {hit.shape}")
    n = ref.size
    values = hit.astype(np.float64)
    interval = None if bootstrap == 0 else bootstrap_ci(lambda idx: values[idx].mean(axis=1), n, bootstrap, seed,
                                                        alpha)
    reference_only, cell_only = int((ref & ~hit).sum()), int((~ref & hit).sum())
    discordant = reference_only + cell_only
    if discordant == 0:  # nothing differs: the paired difference is exactly zero
        p_value, delta_interval = 1.0, (0.0, 0.0)
    else:
        test = binomtest(cell_only, discordant, 0.5, alternative="two-sided")
        low, high = test.proportion_ci(confidence_level=1 - alpha, method="exact")
        share = discordant / n
        p_value, delta_interval = float(test.pvalue), (share * (2 * low - 1), share * (2 * high - 1))
    return PairedBinary(float(values.mean()), interval, (cell_only - reference_only) / n, delta_interval,
                        p_value, reference_only, cell_only)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error over the cells): the i-th smallest p-value times
    (m - i), made monotone and capped at 1."""
    order = np.argsort(np.asarray(p_values, dtype=np.float64), kind="stable")
    m = len(order)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted.tolist()
