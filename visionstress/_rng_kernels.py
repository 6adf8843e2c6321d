"""The fused CPU loops behind `visionstress.rng` (imported only when numba is), cached on disk.

`unit(stream_seed(keys, counter)[i], j)` equals `rng.uniform_field(keys, shape, counter)[i].flatten()[j]`
bit for bit, and `lowbias32` is `rng.hash32`; other kernels (glass blur's shuffle) call them to draw
inline. The per-sample keys and stream seeds are computed here too on the CPU: in torch ops they are
some two hundred elementwise calls on a [B] tensor, microseconds each, for every perturbation call.
Tests check every loop against the torch path.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from visionstress._numba import kernel
from visionstress.rng import _BELOW_ONE, _C1, _C2, _GOLDEN, _MASK31, _MASK32

_GOLDEN32 = np.uint32(_GOLDEN & _MASK32)
_LANE_MIXES = (_GOLDEN32, np.uint32((2 * _GOLDEN) & _MASK32))  # what `sample_keys` mixes into its two lanes

_MASK = np.uint64(0xFFFFFFFF)
_BELOW_ONE_64 = np.float64(_BELOW_ONE)

# Acklam's rational approximation of the inverse normal CDF (relative error < 1.2e-9, far below
# float32 resolution), used by the fused CPU loop; the torch path uses torch.special.ndtri.
_ACKLAM_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
             -3.066479806614716e01, 2.506628277459239e00)
_ACKLAM_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
             -1.328068155288572e01)
_ACKLAM_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
             4.374664141464968e00, 2.938163982698783e00)
_ACKLAM_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


@kernel(inline="always")
def lowbias32(x):  # pragma: no cover - compiled
    x = np.uint32(x ^ (x >> np.uint32(16)))
    x = np.uint32((np.uint64(x) * np.uint64(_C1)) & _MASK)
    x = np.uint32(x ^ (x >> np.uint32(15)))
    x = np.uint32((np.uint64(x) * np.uint64(_C2)) & _MASK)
    return np.uint32(x ^ (x >> np.uint32(16)))


@kernel()
def sample_key_rows(ids, mixes):  # pragma: no cover - compiled
    """`rng.sample_keys` of int64 `ids`; `mixes` (uint32) are the name code, severity and seed halves."""
    out = np.empty(ids.shape[0], np.int64)
    for i in range(ids.shape[0]):
        id_lo = np.uint32(ids[i] & _MASK32)
        id_hi = np.uint32((ids[i] >> 32) & _MASK32)
        key = np.int64(0)
        for lane in range(2):
            h = lowbias32(np.uint32(id_lo ^ _LANE_MIXES[lane]))
            h = lowbias32(np.uint32(h ^ id_hi))
            for m in range(mixes.shape[0]):
                h = lowbias32(np.uint32(h ^ mixes[m]))
            key = (key << np.int64(31)) | np.int64(h & np.uint32(_MASK31))
        out[i] = key
    return out


@kernel(inline="always")
def stream_seed_of(key, counter_mix):  # pragma: no cover - compiled
    """`rng.stream_seed` of one key; `counter_mix` is (counter * golden ratio) mod 2**32."""
    hi = np.uint32((key >> np.int64(31)) & _MASK31)
    lo = np.uint32(key & _MASK31)
    return lowbias32(np.uint32(lowbias32(np.uint32(hi ^ counter_mix)) ^ lo))


@kernel()
def stream_seeds(keys, counter_mix):  # pragma: no cover - compiled
    """`rng.stream_seed` of int64 `keys`, as uint32."""
    out = np.empty(keys.shape[0], np.uint32)
    for i in range(keys.shape[0]):
        out[i] = stream_seed_of(keys[i], np.uint32(counter_mix))
    return out


@kernel()
def sub_keys(keys, counter_mix):  # pragma: no cover - compiled
    """`rng.SampleRNG.key` of int64 `keys`."""
    out = np.empty(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        seed = stream_seed_of(keys[i], np.uint32(counter_mix))
        lo = lowbias32(np.uint32(seed ^ _GOLDEN32)) & np.uint32(_MASK31)
        out[i] = (np.int64(seed & np.uint32(_MASK31)) << np.int64(31)) | np.int64(lo)
    return out


@kernel(inline="always")
def unit(seed, j):  # pragma: no cover - compiled
    h = lowbias32(np.uint32(lowbias32(np.uint32(j)) ^ seed))
    return (np.float32(h >> np.uint32(8)) + np.float32(0.5)) * np.float32(1.0 / 16777216.0)


@kernel(inline="always")
def central_normal(p):  # pragma: no cover - compiled
    """Acklam's inverse normal CDF for 0.02425 <= p <= 0.97575: branch-free, so loops of it vectorise."""
    a, b = _ACKLAM_A, _ACKLAM_B
    q = p - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (
        ((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)


@kernel(inline="always")
def tail_normal(p):  # pragma: no cover - compiled
    """Acklam's inverse normal CDF for p below 0.02425 or above 0.97575 (1.0 read as the float below it)."""
    c, d = _ACKLAM_C, _ACKLAM_D
    p = min(p, _BELOW_ONE_64)
    q = np.sqrt(-2.0 * np.log(p if p < 0.5 else 1.0 - p))
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
        (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    return x if p < 0.5 else -x


@kernel(inline="always")
def is_tail(p):  # pragma: no cover - compiled
    return (p < 0.02425) | (p > 0.97575)  # no short cut: a branch here stops the loop vectorising


@kernel(parallel=True)
def uniform_rows(seeds, n):  # pragma: no cover - compiled
    """`[len(seeds), n]` uniforms, row i from stream seed `seeds[i]`."""
    out = np.empty((seeds.shape[0], n), np.float32)
    for i in prange(seeds.shape[0]):
        for j in range(n):
            out[i, j] = unit(seeds[i], j)
    return out


@kernel(parallel=True)
def normal_rows(seeds, n):  # pragma: no cover - compiled
    """`[len(seeds), n]` standard normals: the same uniforms through the inverse normal CDF. Each row in two
    passes: the central formula for every draw (vectorised), then the tails, under 5% of draws, for the
    positions the first pass collected. One branchy pass took twice as long; the values are the same."""
    out = np.empty((seeds.shape[0], n), np.float32)
    for i in prange(seeds.shape[0]):
        for j in range(n):
            out[i, j] = np.float32(central_normal(np.float64(unit(seeds[i], j))))
        tails = np.empty(n, np.int64)
        count = 0
        for j in range(n):
            tails[count] = j
            count += is_tail(np.float64(unit(seeds[i], j)))
        for t in range(count):
            out[i, tails[t]] = np.float32(tail_normal(np.float64(unit(seeds[i], tails[t]))))
    return out
