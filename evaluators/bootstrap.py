"""Percentile bootstrap confidence intervals over images, vectorised over resamples.

A metric computed on a few hundred images moves by whole points when the images change, so every
reported number carries an interval: resample the images with replacement, recompute, and take the
`alpha / 2` and `1 - alpha / 2` percentiles. The resample index matrix is drawn once per call and
shared by every statistic `stat_fn` returns, so the intervals of one row come from the same
resamples (and, with the same `seed` and image count, rows are paired resample by resample).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import overload

import numpy as np

MAX_CHUNK_ELEMENTS = 1 << 22
"""Resamples are evaluated in chunks of at most this many drawn indices (32 MiB of int64), so that
1000 resamples of 50,000 images do not materialise a 400 MB index matrix at once."""

Stats = Mapping[str, np.ndarray]


@overload
def bootstrap_ci(stat_fn: Callable[[np.ndarray], np.ndarray], n: int, resamples: int, seed: int,
                 alpha: float = 0.05) -> tuple[float, float]: ...


@overload
def bootstrap_ci(stat_fn: Callable[[np.ndarray], Stats], n: int, resamples: int, seed: int,
                 alpha: float = 0.05) -> dict[str, tuple[float, float]]: ...


def bootstrap_ci(stat_fn, n, resamples, seed, alpha=0.05):
    """Percentile bootstrap interval(s) at level `1 - alpha`.

    `stat_fn(indices)` receives an int64 matrix `[r, n]` (one resample of the `n` images per row) and
    returns the statistic for every row, `[r]`, or a mapping `{name: [r]}` for several statistics on
    the same resamples; the result is `(low, high)` or `{name: (low, high)}` accordingly. Resamples are
    passed in chunks (deterministically, for a given `n`) to bound memory. NaN statistics (an undefined
    metric on a degenerate resample) are ignored; an all-NaN statistic gets `(nan, nan)`.
    """
    _check(n, resamples, alpha)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, MAX_CHUNK_ELEMENTS // n))
    parts: list[np.ndarray | Stats] = []
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        parts.append(stat_fn(rng.integers(0, n, size=(rows, n))))
    if isinstance(parts[0], Mapping):
        return {name: _interval(np.concatenate([p[name] for p in parts]), alpha) for name in parts[0]}
    return _interval(np.concatenate(parts), alpha)


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice: reported as (nan, nan)
        low, high = np.nanquantile(np.asarray(values, dtype=np.float64), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _check(n: int, resamples: int, alpha: float) -> None:
    if int(n) < 1:
        raise ValueError(f"bootstrap: need at least one image to resample, got n={n}")
    if int(resamples) < 1:
        raise ValueError(f"bootstrap: resamples must be >= 1, got {resamples}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"bootstrap: alpha must be in (0, 1), got {alpha}")
