"""Percentile bootstrap intervals over images, computed on image weights and vectorised over resamples.

A metric computed on a few hundred images moves by whole points when the images change, so every
reported number carries an interval: resample the images with replacement, recompute, and take the
`alpha / 2` and `1 - alpha / 2` percentiles. A resample is represented by image *weights*, how often
each image was drawn (a multinomial count vector summing to n); a row of ones is the data as they
are. Weights rather than index lists are what every task's statistics function takes
(`classification_statistics`, `detection_statistics`, `segmentation_statistics`), because a metric
that is a ratio of sums (mIoU, AP, ECE) is then a few matrix products, and because the same weights
can be handed to two runs (compare's paired bootstrap) or padded with zeros to score a subset of
images (the clean metrics on the images a perturbation was scored on).

The weights are drawn from `seed` in the same order whatever the chunking, so two calls with the same
seed and image count see the same resamples: rows over the same images are paired resample by resample.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping

import numpy as np

MAX_CHUNK_ELEMENTS = 1 << 22
"""Resamples are drawn in chunks of at most this many (resample, image) weights (32 MiB of float64),
so that 1000 resamples of 50,000 images never sit in memory at once."""

Stats = Mapping[str, np.ndarray]
StatFn = Callable[[np.ndarray], Stats]
"""Image weights `[r, n]` -> `{metric: [r]}`: each metric under each row of weights."""


def resample_weights(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Multinomial image weights `[r, n]` (float64 counts, each row summing to n), chunk by chunk.

    Drawn as n uniform image indices per resample and counted, so chunking never changes the stream.
    """
    _check(n, resamples, 0.05)
    rng = np.random.default_rng(seed)
    rows = max(1, min(resamples, MAX_CHUNK_ELEMENTS // n))
    for start in range(0, resamples, rows):
        r = min(rows, resamples - start)
        drawn = rng.integers(0, n, size=(r, n)) + (np.arange(r) * n)[:, None]
        yield np.bincount(drawn.reshape(-1), minlength=r * n).reshape(r, n).astype(np.float64)


def bootstrap_ci(stat_fn: StatFn, n: int, resamples: int, seed: int,
                 alpha: float = 0.05) -> dict[str, tuple[float, float]]:
    """Percentile intervals at level `1 - alpha` of every statistic `stat_fn` returns.

    `stat_fn(weights)` receives image weights `[r, n]` (see `resample_weights`) and returns
    `{name: [r]}`. NaN statistics (an undefined metric on a degenerate resample) are ignored; an
    all-NaN statistic gets `(nan, nan)`.
    """
    _check(n, resamples, alpha)
    parts = [stat_fn(weights) for weights in resample_weights(n, resamples, seed)]
    return {name: percentile_interval(np.concatenate([p[name] for p in parts]), alpha) for name in parts[0]}


def point_estimate(stat_fn: StatFn, n: int) -> dict[str, float]:
    """Every statistic on the images as they are (weights all one)."""
    return {name: float(values[0]) for name, values in stat_fn(np.ones((1, n))).items()}


def on_subset(stat_fn: StatFn, positions: np.ndarray, n: int) -> StatFn:
    """`stat_fn` over n images, fed weights over a subset of them: `[r, len(positions)]` weights are
    placed at `positions` and every other image gets weight 0 (it is left out)."""
    positions = np.asarray(positions, dtype=np.int64)

    def subset(weights: np.ndarray) -> Stats:
        full = np.zeros((weights.shape[0], n))
        full[:, positions] = weights
        return stat_fn(full)

    return subset


def row_estimates(stat_fn: StatFn, n: int, resamples: int, seed: int) -> tuple[dict[str, float],
                                                                              dict[str, tuple[float, float]]]:
    """A metric row's point values and 95% intervals (none when `resamples` is 0) from one statistics
    function, so the number and its interval can never come from two different computations."""
    return point_estimate(stat_fn, n), ({} if resamples == 0 else bootstrap_ci(stat_fn, n, resamples, seed))


def subset_positions(ids: np.ndarray, clean_ids: np.ndarray) -> np.ndarray | None:
    """Where a pass's (sorted) sample ids sit among the clean pass's (sorted) ids, when they are a strict
    subset of them (a perturbation scored on some images only, e.g. an adversarial patch on held-out
    images); None otherwise."""
    if len(ids) >= len(clean_ids):
        return None
    positions = np.searchsorted(clean_ids, ids)
    inside = positions < len(clean_ids)
    if not inside.all() or not np.array_equal(clean_ids[positions], ids):
        return None
    return positions


def percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
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
