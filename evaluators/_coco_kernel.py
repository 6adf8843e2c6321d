"""The compiled walk over true positives behind `coco_matching.ResampledCoco` (imported only when numba is).

A module of its own so that numba can cache the compiled function on disk: the first bootstrap of a
process then loads it instead of spending a second or two compiling.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from visionstress._numba import kernel

_EPS = float(np.spacing(1))  # COCOeval's guard in tp / (tp + fp + eps)


@kernel(parallel=True)
def precision_sums(weights, npig, image, category_start, counted, pattern_of, run_bounds, run_position,
                   run_threshold, run_category, thresholds):  # pragma: no cover - compiled
    """`[r, T]`: per resample and IoU threshold, the sum over categories with ground truth and over the
    101 recall points of COCOeval's interpolated precision (see `ResampledCoco` for why it is this walk).

    `weights [r, n]` image weights; `npig [r, K]` weighted ground truth per category; `image [D]` each
    detection's image (category-major, by descending score); `category_start [K + 1]`; `counted [G, D]`
    1 where a detection is not ignored, one row per ignore pattern; `pattern_of [T]`; runs of true
    positives `run_bounds [S + 1]` into `run_position` (detection indices), with their `run_threshold`
    and `run_category`; `thresholds` the 101 recall points.
    """
    r, size, patterns, points = weights.shape[0], image.shape[0], counted.shape[0], thresholds.shape[0]
    longest = 0
    for s in range(run_threshold.shape[0]):
        longest = max(longest, run_bounds[s + 1] - run_bounds[s])
    sums = np.zeros((r, pattern_of.shape[0]))
    for row in prange(r):
        w = weights[row]
        total = np.empty((patterns, size))  # non-ignored weight up to each detection, within its category
        for g in range(patterns):
            for c in range(category_start.shape[0] - 1):
                acc = 0.0
                for d in range(category_start[c], category_start[c + 1]):
                    acc += w[image[d]] * counted[g, d]
                    total[g, d] = acc
        precision = np.empty(longest)
        reached = np.empty(longest, dtype=np.int64)
        for s in range(run_threshold.shape[0]):
            positives = npig[row, run_category[s]]
            if positives <= 0.0:
                continue
            g = pattern_of[run_threshold[s]]
            tp, m = 0.0, 0
            for j in range(run_bounds[s], run_bounds[s + 1]):
                d = run_position[j]
                wd = w[image[d]]
                if wd == 0.0:
                    continue  # left out of this resample: recall unchanged, precision below the last one
                tp += wd
                precision[m] = tp / (total[g, d] + _EPS)
                recall = tp / positives
                k = min(max(int(recall * (points - 1)), 0), points)  # the points are ~ i / 100; fix up exactly
                while k < points and thresholds[k] <= recall:
                    k += 1
                while k > 0 and thresholds[k - 1] > recall:
                    k -= 1
                reached[m] = k
                m += 1
            envelope, acc = 0.0, 0.0
            for j in range(m - 1, -1, -1):
                envelope = max(envelope, precision[j])
                acc += envelope * (reached[j] - (reached[j - 1] if j > 0 else 0))
            sums[row, run_threshold[s]] += acc
    return sums
