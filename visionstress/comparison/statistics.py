"""The paired statistics of a comparison: one analysis per metric gives its interval, p-value and power.

Two runs of one suite on one dataset saw the same images, so every test is paired on the images.
A p-value below alpha always comes with an interval at level 1 - alpha that excludes 0; for McNemar
the two agree exactly, for the bootstrap-tested metrics the converse can fail on few images (below).

- Per-image yes/no metrics (top-1, top-5, flips): the exact McNemar test. Only the discordant images
  carry information: b that only the reference got right ("yes"), c only the candidate. Given
  m = b + c, c is Binomial(m, pi) and "no change" is pi = 1/2. The p-value is the central two-sided
  binomial p, 2 min(P(X <= c), P(X >= c)) under pi = 1/2 (for pi = 1/2 it is also the usual exact
  McNemar p), and the interval is the matching Clopper-Pearson interval for pi mapped to the change,
  delta = (m / n)(2 pi - 1): the Clopper-Pearson bound crosses 1/2 exactly when the tail probability
  crosses alpha / 2. (The interval treats the discordance m / n as fixed, as the conditional test does.)
- Metrics recomputed from the records (ECE, NLL, macro-F1, AP, mIoU, the summaries, ...): a paired
  bootstrap over images, whose resampled differences are smoothed with a Gaussian kernel before
  their percentile interval and p-value are read (`bootstrap_test`). The raw percentile p-value (the
  share of resamples beyond 0) cannot fall below 1 / R: with a few hundred resamples, Holm over a
  few dozen gated cells would then never find a large regression significant. The smoothed
  distribution has tails, so p keeps falling the further 0 lies from the resamples, while the
  interval stays the percentile interval of (nearly) the same distribution.
  On few images, and above all when few of them differ between the runs, the bootstrap is
  overconfident: five images of twenty that change the same way give it p = 0.0004, where exchanging
  the runs' records image by image shows that p = 2/32 (all five one way by chance). Two equally good
  classifiers on 20 images were told apart by it in 10% of trials at alpha = 5%. So the p-value
  reported is the larger of the bootstrap's and the exchange (randomisation) test's
  (`exchange_p_value`), which is exact however few the images: 0.6-3% of such trials, and a cell
  whose interval excludes 0 on such a set can still be "not significant".
- Minimum detectable effect (MDE): the smallest change a two-sided test at level alpha detects with
  80% power on these images. For McNemar, Connor's (1987) sample-size relation solved for the change,
  with the observed discordance; for the bootstrap, (z[1 - alpha/2] + z[power]) x the standard error
  of the resampled difference. Both are plug-in estimates from the observed variability: two runs
  that agree on every image have an MDE of 0 (nothing varies), which is why a model compared with
  itself passes a gate however few images there are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POWER = 0.8
"""The power at which minimum detectable effects are stated."""


@dataclass(frozen=True)
class PairedTest:
    """One paired analysis of a difference (candidate - reference): two-sided p-value and the interval
    at level 1 - alpha, which excludes 0 exactly when p < alpha."""

    p_value: float
    interval: tuple[float, float]


def mcnemar(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Exact two-sided McNemar p-value for paired yes/no outcomes; 1.0 when no pair is discordant."""
    a, b = np.asarray(reference, dtype=bool), np.asarray(candidate, dtype=bool)
    return mcnemar_test(int((a & ~b).sum()), int((~a & b).sum()), len(a), 0.05).p_value


def mcnemar_test(only_reference: int, only_candidate: int, n: int, alpha: float) -> PairedTest:
    """Exact McNemar p-value and the matching exact interval of the change in the share of "yes"
    (candidate - reference) over `n` paired images, `only_reference` / `only_candidate` of them
    discordant each way (see the module docstring)."""
    from scipy.stats import beta, binom

    c, m = int(only_candidate), int(only_reference) + int(only_candidate)
    if m == 0:
        return PairedTest(1.0, (0.0, 0.0))
    p_value = min(1.0, 2.0 * min(float(binom.cdf(c, m, 0.5)), float(binom.sf(c - 1, m, 0.5))))
    low = 0.0 if c == 0 else float(beta.ppf(alpha / 2, c, m - c + 1))
    high = 1.0 if c == m else float(beta.ppf(1 - alpha / 2, c + 1, m - c))
    scale = m / n
    return PairedTest(p_value, (scale * (2 * low - 1), scale * (2 * high - 1)))


def mcnemar_mde(only_reference: int, only_candidate: int, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest change in a yes/no share that an exact McNemar test at level `alpha` detects with
    `power` on `n` images, at the observed discordance psi = (b + c) / n: Connor (1987),
    n delta^2 = (z[1 - alpha/2] sqrt(psi) + z[power] sqrt(psi - delta^2))^2, solved for delta.
    0 when no image is discordant; inf when n is too small for any change to be significant."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    psi = (int(only_reference) + int(only_candidate)) / n
    if psi == 0:
        return 0.0
    z_a, z_b = float(norm.isf(alpha / 2)), float(norm.ppf(power))
    if n <= z_a ** 2:
        return math.inf

    def gap(delta: float) -> float:
        return math.sqrt(n) * delta - z_a * math.sqrt(psi) - z_b * math.sqrt(max(psi - delta * delta, 0.0))

    return float(brentq(gap, 0.0, math.sqrt(psi), xtol=1e-12))


def bootstrap_test(deltas: np.ndarray, alpha: float) -> PairedTest | None:
    """p-value and percentile interval of a difference from its paired bootstrap resamples, read from
    one smoothed distribution so that they agree (None when every resample is undefined).

    The smoothed distribution is the shrunk smoothed bootstrap (Silverman 1986, section 6.4.1): each
    resampled difference spread by a Gaussian kernel of Silverman's bandwidth, the centres shrunk
    towards their mean so the variance stays the bootstrap variance. With G its CDF, the interval is
    [G^-1(alpha/2), G^-1(1 - alpha/2)] and p = 2 min(G(0), 1 - G(0)), the smallest alpha at which
    that interval excludes 0. Resamples that all agree (two identical runs) give p = 1 for a
    difference of 0 and p = 0 otherwise, with the interval that single value.
    """
    from scipy.optimize import brentq
    from scipy.special import ndtr

    d = np.asarray(deltas, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    spread = float(np.std(d, ddof=1)) if d.size > 1 else 0.0
    if spread == 0.0:
        value = float(d[0])
        return PairedTest(1.0 if value == 0.0 else 0.0, (value, value))
    q75, q25 = np.percentile(d, [75, 25])
    scale = min(spread, (q75 - q25) / 1.349) if q75 > q25 else spread
    bandwidth = 0.9 * scale * d.size ** -0.2
    shrink = math.sqrt(1.0 + (bandwidth / spread) ** 2)
    mean = float(d.mean())
    centres, width = mean + (d - mean) / shrink, bandwidth / shrink

    def cdf(x: float) -> float:
        return float(ndtr((x - centres) / width).mean())

    at_zero = float(cdf(0.0))
    p_value = min(1.0, 2.0 * min(at_zero, 1.0 - at_zero))
    low, high = float(centres.min()) - 10 * width, float(centres.max()) + 10 * width
    interval = tuple(brentq(lambda x, level=level: cdf(x) - level, low, high, xtol=1e-15 * (high - low))
                     for level in (alpha / 2, 1 - alpha / 2))
    return PairedTest(p_value, (float(interval[0]), float(interval[1])))


EXCHANGE_TAIL = 10
"""Below this many exchanges at least as extreme as the observed difference, the exchange p-value is
read from the normal tail of the exchange distribution as well (see `exchange_p_value`)."""


def exchange_p_value(observed: float, exchanged: np.ndarray) -> float | None:
    """Two-sided p-value of a paired difference from the randomisation (exchange) test: under "no
    change", each image's two records are as likely to belong to either run, so the difference recomputed
    with each image's pair exchanged at random is distributed as the observed one. Unlike the bootstrap it
    stays exact on a few images and a few discordant ones: five images that change the same way give
    p = 2/32 here, and about 0.006 from the bootstrap.

    p = (1 + #{|exchanged| >= |observed|}) / (R + 1). Where fewer than `EXCHANGE_TAIL` exchanges reach the
    observed difference, that count says little and its floor 1 / (R + 1) would keep Holm over many cells
    from ever finding a large change, so the normal tail of the exchange distribution (centred on 0, its
    spread the exchanges') is taken when smaller. None when no exchange is defined."""
    from scipy.special import ndtr

    t = np.asarray(exchanged, dtype=np.float64)
    t = t[np.isfinite(t)]
    if t.size == 0 or not math.isfinite(observed):
        return None
    size = abs(float(observed))
    reached = int((np.abs(t) >= size * (1 - 1e-9) - 1e-12).sum())
    p = (1 + reached) / (t.size + 1)
    if reached < EXCHANGE_TAIL:
        spread = math.sqrt(float(np.mean(t * t)))
        normal = 2.0 * float(ndtr(-size / spread)) if spread > 0 else (0.0 if size > 0 else 1.0)
        p = min(p, normal)
    return min(1.0, p)


def bootstrap_mde(standard_error: float, alpha: float, power: float = POWER) -> float:
    """(z[1 - alpha/2] + z[power]) x the standard error of the resampled difference."""
    from scipy.stats import norm

    return (float(norm.isf(alpha / 2)) + float(norm.ppf(power))) * standard_error


def images_needed(n: int, mde: float, change: float) -> int | None:
    """About how many images would bring the MDE down to `change`: the MDE shrinks as 1 / sqrt(n), so
    n (MDE / change)^2. None when that cannot be said (no change to detect, or no finite MDE)."""
    if not (math.isfinite(mde) and change > 0) or mde <= change:
        return None
    return int(math.ceil(n * (mde / change) ** 2))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error control without independence assumptions)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()
