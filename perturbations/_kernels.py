"""The compiled CPU loops of the perturbations (imported only when numba is), cached on disk.

Each equals the torch path its perturbation uses on other devices (float32 rounding aside); tests check
every one against it. Kept in one module so numba can cache them (see `visionstress._numba`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from visionstress._numba import kernel
from visionstress._rng_kernels import lowbias32

@kernel(parallel=True)
def separable(x, ky, kx, iy, ix):  # pragma: no cover - compiled
    """Correlate `[N, H, W]` planes with `ky` down the columns and `kx` along the rows (`filters.separable_filter`)."""
    # x [N, H, W]; iy / ix map padded row / column positions to source indices (borders folded in).
    n, h, w = x.shape
    ny, nx = ky.shape[0], kx.shape[0]
    out = np.empty_like(x)
    for p in prange(n):
        tmp = np.empty((h, w), np.float32)
        row = np.empty(w + nx - 1, np.float32)
        for y in range(h):
            for j in range(w + nx - 1):
                row[j] = x[p, y, ix[j]]
            t_row = tmp[y]
            k0 = kx[0]
            for i in range(w):
                t_row[i] = k0 * row[i]
            for t in range(1, nx):
                kt = kx[t]
                for i in range(w):
                    t_row[i] += kt * row[i + t]
        for y in range(h):
            o = out[p, y]
            src = tmp[iy[y]]
            k0 = ky[0]
            for i in range(w):
                o[i] = k0 * src[i]
            for t in range(1, ny):
                src = tmp[iy[y + t]]
                kt = ky[t]
                for i in range(w):
                    o[i] += kt * src[i]
    return out


@kernel(parallel=True)
def correlate(x, k, iy, ix, mirrored):  # pragma: no cover - compiled
    """Correlate `[N, H, W]` planes directly with one 2-D kernel `k` (`filters.filter2d`), nonzero taps only."""
    # mirrored: k's rows a and kh - 1 - a are equal, so their source rows are summed first.
    n, h, w = x.shape
    kh, kw = k.shape
    wp = w + kw - 1
    out = np.empty_like(x)
    for p in prange(n):
        pad = np.empty((h + kh - 1, wp), np.float32)
        for y in range(h + kh - 1):
            for j in range(wp):
                pad[y, j] = x[p, iy[y], ix[j]]
        pair = np.empty(wp, np.float32)
        for y in range(h):
            o = out[p, y]
            o[:] = 0
            for a in range((kh + 1) // 2 if mirrored else kh):
                if mirrored and a != kh - 1 - a:
                    top, bottom = pad[y + a], pad[y + kh - 1 - a]
                    for j in range(wp):
                        pair[j] = top[j] + bottom[j]
                    src = pair
                else:
                    src = pad[y + a]
                for b in range(kw):
                    kv = k[a, b]
                    if kv != 0:
                        for i in range(w):
                            o[i] += kv * src[i + b]
    return out


@kernel(parallel=True)
def correlate_taps(x, ty, tx, wt, top, left, iy, ix):  # pragma: no cover - compiled
    """A sparse correlation with per-sample taps and replicated borders (`filters._taps_numba`)."""
    # iy / ix: source row / column of each position of the replicate-padded plane.
    b, c, h, w = x.shape
    hp, wp = iy.shape[0], ix.shape[0]
    out = np.empty_like(x)
    for job in prange(b * c):
        i, ch = job // c, job % c
        pad = np.empty((hp, wp), np.float32)
        for y in range(hp):
            for j in range(wp):
                pad[y, j] = x[i, ch, iy[y], ix[j]]
        o = np.empty(w, np.float32)
        for y in range(h):  # row by row, all taps, so the accumulator stays in L1
            o[:] = 0.0
            for t in range(ty.shape[1]):
                wv = wt[i, t]
                if wv == 0.0:
                    continue
                ox = left + tx[i, t]
                src = pad[top + ty[i, t] + y, ox : ox + w]  # a slice: range indices vectorise
                for xx in range(w):
                    o[xx] += wv * src[xx]
            out[i, ch, y] = o
    return out


@kernel(parallel=True)
def zoom_sum(x, top, y0, y1, wy, left, width, x0, x1, wx):  # pragma: no cover - compiled
    """zoom blur: every layer interpolated and summed row by row in one pass over each image plane
    (no zoomed copies are materialised)."""
    n, h, w = x.shape
    layers = top.shape[0]
    out = np.empty_like(x)
    for p in prange(n):
        img = x[p]
        acc = np.empty(w, np.float32)
        row = np.empty(w, np.float32)
        for y in range(h):
            acc[:] = img[y]
            for f in range(layers):
                cw = width[f]
                r0 = img[top[f] + y0[f, y], left[f] : left[f] + cw]
                r1 = img[top[f] + y1[f, y], left[f] : left[f] + cw]
                b = wy[f, y]
                a = np.float32(1.0) - b
                for j in range(cw):
                    row[j] = a * r0[j] + b * r1[j]
                for xx in range(w):
                    c = wx[f, xx]
                    acc[xx] += (np.float32(1.0) - c) * row[x0[f, xx]] + c * row[x1[f, xx]]
            o = out[p, y]
            for xx in range(w):
                o[xx] = acc[xx] / np.float32(layers + 1)
    return out


@kernel(parallel=True)
def glass_shuffle(x, seeds, partial, delta, threshold):  # pragma: no cover - compiled
    """glass blur's shuffle: the same integer hash as `rng.uniform_field` evaluated inline (no noise fields
    are materialised), all steps' source maps composed per sample, every channel gathered once."""
    b, c, h, w = x.shape
    steps = seeds.shape[1]
    span = 2 * delta
    lo, hi_y, hi_x = delta + 1, h - delta, w - delta
    out = np.empty_like(x)
    for i in prange(b):
        ys = np.empty(h * w, np.int32)
        xs = np.empty(h * w, np.int32)
        for y in range(h):
            for xx in range(w):
                ys[y * w + xx] = y
                xs[y * w + xx] = xx
        # out_S[p] = x[src_1(src_2(... src_S(p)))]: apply the last step's map first, branch-free.
        for st in range(steps - 1, -1, -1):
            seed = seeds[i, st]
            always = partial[st] == 0
            for p in range(h * w):
                yy = ys[p]
                xc = xs[p]
                # uniform_field(key, (h, w), counter=st)[yy, xc] * 2**24, as rng computes it.
                bits = lowbias32(np.uint32(lowbias32(np.uint32(yy * w + xc)) ^ seed))
                q = np.int32(np.float32(np.float32(bits >> np.uint32(8)) + np.float32(0.5)))
                take = (yy >= lo) & (yy <= hi_y) & (xc >= lo) & (xc <= hi_x) & (always | ((q >> 20) < threshold))
                t = np.int32(take)
                ys[p] = yy + t * ((((q & 1023) * span) >> 10) - delta)
                xs[p] = xc + t * (((((q >> 10) & 1023) * span) >> 10) - delta)
        for ch in range(c):
            src = x[i, ch]
            dst = out[i, ch]
            for y in range(h):
                for xx in range(w):
                    p = y * w + xx
                    dst[y, xx] = src[ys[p], xs[p]]
    return out


@kernel(parallel=True)
def poisson_search(x, u, cdf, guide, width, buckets, top):  # pragma: no cover - compiled
    """shot noise's inverse-CDF search (`camera._poisson_search_torch`) as one parallel loop: the torch
    version makes ~10 passes over the batch, which dominate on the CPU. `top` is the top 8-bit level (255)."""
    out = np.empty(x.shape[0], np.float32)
    for i in prange(x.shape[0]):
        # float32 clamp, scale and round-half-even, exactly as the torch path computes the level
        level = np.int64(np.rint(np.float32(min(max(x[i], np.float32(0.0)), np.float32(1.0))) * top))
        bucket = min(np.int64(u[i] * np.float32(buckets)), buckets - 1)
        k = guide[level * buckets + bucket]
        base = level * width
        while u[i] > cdf[base + k]:
            k += 1
        out[i] = k
    return out
