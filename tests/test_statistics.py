"""Statistics once: each task's statistics function on image weights, checked against independent routes
(COCOeval's accumulate replayed row by row, evaluators fed only the images in question, scipy), and the
paired tests of compare (interval and p-value from one analysis, minimum detectable effects that mean
80% power)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest, norm
from test_evaluators_classification import K, NAMES, _fake_model
from test_evaluators_classification import _feed as _feed_classification
from test_evaluators_detection import CASES, _categories, _dataset, _select
from test_evaluators_detection import _feed as _feed_detection
from test_evaluators_segmentation import C, _random_maps
from test_evaluators_segmentation import NAMES as SEG_NAMES
from test_evaluators_segmentation import _feed as _feed_segmentation

import visionstress.evaluators.coco_matching as coco_matching
from visionstress.comparison import bootstrap_test, images_needed, mcnemar_mde, mcnemar_test
from visionstress.comparison.statistics import exchange_p_value
from visionstress.evaluators import (ClassificationEvaluator, DetectionEvaluator, SegmentationEvaluator,
                                     classification_statistics, coco_metrics_from_matches, detection_statistics,
                                     segmentation_metrics_from_counts, segmentation_statistics)
from visionstress.evaluators.bootstrap import resample_weights
from visionstress.rng import numba_available


def _weights(n: int, seed: int) -> np.ndarray:
    """Unit weights, 40 bootstrap resamples, a 0/1 subset and doubled weights: every kind a caller uses."""
    rng = np.random.default_rng(seed)
    return np.vstack([np.ones(n), next(resample_weights(n, 40, seed)), (rng.random(n) < 0.4).astype(float),
                      np.full(n, 2.0)])


@pytest.mark.parametrize("path", ["compiled", "numpy"])
@pytest.mark.parametrize("case", list(CASES))
def test_resampled_coco_equals_the_replay_row_by_row(case, path, monkeypatch):
    """`detection_statistics` computes AP/AR for all rows of weights at once, visiting only true positives;
    `coco_metrics_from_matches` replays COCOeval's accumulate literally, one row at a time (and equals
    COCOeval itself with unit weights: test_evaluators_detection). They must agree to 1e-12."""
    if path == "compiled" and not numba_available():
        pytest.skip("numba is not installed")
    if path == "numpy":
        monkeypatch.setattr(coco_matching, "numba_available", lambda: False)
    params = CASES[case]
    ids, targets, preds = _dataset(**params)
    records = _feed_detection(DetectionEvaluator(_categories(params.get("k", 3)), bootstrap=0), "clean", 0, ids,
                              targets, preds)
    records = records.sample(frac=1.0, random_state=1)  # weights follow the rows, whatever their order
    weights = _weights(len(records), seed=len(case))
    fast = detection_statistics(records)(weights)
    assert len(weights) >= coco_matching._COMPILED_FROM  # so the compiled path is the one taken
    for i, w in enumerate(weights):
        reference = coco_metrics_from_matches(records, w)
        for name, value in reference.items():
            got = fast[name][i]
            assert (math.isnan(got) and math.isnan(value)) or abs(got - value) <= 1e-12, (name, i, got, value)


def test_detection_rows_come_from_the_statistics_function():
    ids, targets, preds = _dataset(seed=21, n=30, mode="noisy")
    ev = DetectionEvaluator(_categories(3), bootstrap=50, seed=2)
    records = _feed_detection(ev, "clean", 0, ids, targets, preds).sort_values("sample_id")
    row = ev.finalize().rows[0]
    point = detection_statistics(records)(np.ones((1, len(records))))
    for name in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100", "fp_per_image", "miss_rate"):
        assert row.metrics[name] == pytest.approx(float(point[name][0]), abs=1e-12), name
        low, high = row.ci[name]
        assert low <= row.metrics[name] <= high


def _subset_ids(n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=n // 3, replace=False))


def test_classification_subset_pass_carries_the_clean_metrics_on_its_images():
    """A pass scored on held-out images only (an adversarial patch) gets the clean metrics on exactly those
    images: the same as an evaluator given only those clean images, intervals included (same resamples)."""
    labels, logits = _fake_model(90, seed=3)
    noisy = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(4))
    held_out = torch.as_tensor(_subset_ids(90, 5))
    ev = ClassificationEvaluator(K, NAMES, bootstrap=200, seed=6)
    _feed_classification(ev, "clean", 0, labels, logits)
    _feed_classification(ev, "noise", 2, labels, noisy)
    _feed_classification(ev, "patch", 1, labels, noisy, order=held_out)
    rows = ev.finalize()
    alone = ClassificationEvaluator(K, NAMES, bootstrap=200, seed=6)
    _feed_classification(alone, "clean", 0, labels, logits, order=held_out)
    expected = alone.finalize().rows[0]
    patch = rows.row("patch", 1)
    assert patch.clean_same_images == pytest.approx(expected.metrics, abs=1e-12)
    assert patch.clean_same_images_ci.keys() == expected.ci.keys()
    for name, interval in expected.ci.items():
        assert patch.clean_same_images_ci[name] == pytest.approx(interval, abs=1e-12), name
    assert rows.row("noise", 2).clean_same_images is None and rows.row("clean", 0).clean_same_images is None


def test_detection_subset_pass_carries_the_clean_metrics_on_its_images():
    ids, targets, preds = _dataset(seed=22, n=36, mode="noisy")
    held_out = _subset_ids(36, 7)
    ev = DetectionEvaluator(_categories(3), bootstrap=60, seed=1)
    _feed_detection(ev, "clean", 0, ids, targets, preds)
    _feed_detection(ev, "patch", 1, ids, targets, preds, order=held_out)
    patch = ev.finalize().row("patch", 1)
    alone = DetectionEvaluator(_categories(3), bootstrap=60, seed=1)
    _feed_detection(alone, "clean", 0, ids[held_out], [targets[i] for i in held_out], _select(preds, held_out))
    expected = alone.finalize().rows[0]
    for name in ("AP", "AP50", "AR100", "fp_per_image", "miss_rate"):
        assert patch.clean_same_images[name] == pytest.approx(expected.metrics[name], abs=1e-12), name
        assert patch.clean_same_images_ci[name] == pytest.approx(expected.ci[name], abs=1e-12), name


def test_segmentation_subset_pass_carries_the_clean_metrics_on_its_images():
    gt, pred = _random_maps(n=12, seed=3)
    held_out = torch.as_tensor(_subset_ids(12, 2))
    ev = SegmentationEvaluator(C, SEG_NAMES, bootstrap=100, seed=3, boundary=False, region_bins={})
    _feed_segmentation(ev, "clean", 0, gt, pred)
    _feed_segmentation(ev, "patch", 1, gt, pred, order=held_out)
    patch = ev.finalize().row("patch", 1)
    alone = SegmentationEvaluator(C, SEG_NAMES, bootstrap=100, seed=3, boundary=False, region_bins={})
    _feed_segmentation(alone, "clean", 0, gt[held_out], pred[held_out])
    expected = alone.finalize().rows[0]
    assert patch.clean_same_images == pytest.approx({m: expected.metrics[m] for m in patch.clean_same_images})
    for name, interval in expected.ci.items():
        assert patch.clean_same_images_ci[name] == pytest.approx(interval, abs=1e-12), name


def test_segmentation_statistics_rows_equal_the_single_resample_function():
    gt, pred = _random_maps(n=10, seed=8)
    ev = SegmentationEvaluator(C, SEG_NAMES, bootstrap=0, boundary=False, region_bins={})
    columns = _feed_segmentation(ev, "clean", 0, gt, pred)
    counts = {name: np.concatenate([np.asarray(c[name]) for c in columns]) for name in
              ("intersection", "gt_pixels", "pred_pixels")}
    weights = _weights(10, seed=1)
    rows = segmentation_statistics(counts)(weights)
    for i, w in enumerate(weights):
        single = segmentation_metrics_from_counts(counts["intersection"], counts["gt_pixels"], counts["pred_pixels"], w)
        assert {m: rows[m][i] for m in single} == pytest.approx(single, abs=1e-12)


def test_classification_statistics_with_weights_equal_repeated_images():
    """Weight 2 is the image twice, weight 0 the image left out: the same as an evaluator fed that way."""
    labels, logits = _fake_model(30, seed=9)
    ev = ClassificationEvaluator(K, NAMES, bootstrap=0)
    columns = _feed_classification(ev, "clean", 0, labels, logits, batch=30)[0]
    weights = np.random.default_rng(0).integers(0, 3, size=30).astype(float)
    repeated = np.repeat(np.arange(30), weights.astype(int))
    again = ClassificationEvaluator(K, NAMES, bootstrap=0)
    _feed_classification(again, "clean", 0, labels[repeated], logits[repeated], batch=len(repeated))
    expected = again.finalize().rows[0].metrics
    got = classification_statistics({k: v for k, v in columns.items() if k != "flipped"})(weights[None, :])
    for name in ("top1", "top5", "macro_f1", "balanced_accuracy", "ece", "nll"):
        assert got[name][0] == pytest.approx(expected[name], abs=1e-6), name


# --- paired tests -------------------------------------------------------------------------------------

def test_mcnemar_interval_excludes_zero_exactly_when_p_is_below_alpha():
    checked = 0
    for n in (12, 40, 250):
        for b in range(0, min(n, 45) + 1):
            for c in range(0, min(n - b, 45) + 1):
                for alpha in (0.05, 0.01, 0.2):
                    result = mcnemar_test(b, c, n, alpha)
                    low, high = result.interval
                    assert (low > 0 or high < 0) == (result.p_value < alpha), (b, c, n, alpha)
                    assert low <= (c - b) / n <= high
                    checked += 1
                if b + c:
                    assert mcnemar_test(b, c, n, 0.05).p_value == pytest.approx(binomtest(c, b + c, 0.5).pvalue)
    assert checked > 9_000


def test_mcnemar_interval_is_the_clopper_pearson_interval_mapped_to_the_change():
    result = mcnemar_test(4, 0, 12, 0.05)  # the 12-image case: four images only the reference got right
    assert result.p_value == pytest.approx(0.125)
    upper = 1 - 0.025 ** (1 / 4)  # Clopper-Pearson upper bound for 0 of 4: 1 - (alpha/2)^(1/m)
    assert result.interval == pytest.approx((-4 / 12, 4 / 12 * (2 * upper - 1)))
    # the upper bound solves P(X <= 0; pi) = alpha / 2
    assert binom.cdf(0, 4, upper) == pytest.approx(0.025)


def test_bootstrap_interval_excludes_zero_exactly_when_p_is_below_alpha():
    rng = np.random.default_rng(0)
    for trial in range(300):
        size = int(rng.integers(20, 400))
        kind = trial % 3
        if kind == 0:
            deltas = rng.normal(rng.normal(0, 1), rng.uniform(0.1, 2), size)
        elif kind == 1:  # lumpy: few discordant images
            deltas = rng.integers(-3, 5, size) / 50.0
        else:
            deltas = rng.standard_t(3, size) * 0.1 + rng.normal(0, 0.2)
        for alpha in (0.05, 0.01, 0.1):
            result = bootstrap_test(deltas, alpha)
            low, high = result.interval
            assert (low > 0 or high < 0) == (result.p_value < alpha), (trial, alpha)
            assert low <= np.median(deltas) <= high or result.p_value < alpha


def test_exchange_p_value_is_the_randomisation_p_where_the_bootstrap_is_overconfident():
    rng = np.random.default_rng(3)
    change = np.zeros(20)
    change[:5] = -1.0  # five images of twenty change, all the same way: by chance with probability 2/32
    flips = np.where(rng.random((4000, 20)) < 0.5, -1.0, 1.0)
    assert exchange_p_value(change.mean(), (flips * change).mean(axis=1)) == pytest.approx(2 / 32, abs=0.012)
    resampled = change[rng.integers(0, 20, (4000, 20))].mean(axis=1)
    assert bootstrap_test(resampled, 0.05).p_value < 0.005  # why compare reports the larger of the two
    # nothing differs: p = 1; a change no exchange reaches: the normal tail, far below the floor 1 / (R + 1)
    assert exchange_p_value(0.0, np.zeros(100)) == 1.0
    large = np.concatenate([np.full(15, -1.0), np.zeros(5)])
    tail = exchange_p_value(large.mean(), (flips[:1000] * large).mean(axis=1))
    assert 0 < tail < 1 / 1001
    assert exchange_p_value(float("nan"), np.zeros(3)) is None


def test_the_reported_p_keeps_two_equally_good_models_apart_at_most_alpha_of_the_time():
    """Two classifiers of equal accuracy with independent errors, 20 images, the mean over five passes: the
    bootstrap alone calls them different in about 10% of trials at alpha = 5%; the p compare reports
    (the larger of the bootstrap's and the exchange test's) at most 5%."""
    rng = np.random.default_rng(11)
    bootstrap_only = reported = 0
    trials = 300
    for _ in range(trials):
        a, b = rng.random((2, 20, 5)) < 0.97
        change = (b.astype(np.float64) - a).mean(axis=1)
        boot = bootstrap_test(change[rng.integers(0, 20, (500, 20))].mean(axis=1), 0.05).p_value
        flips = np.where(rng.random((500, 20)) < 0.5, -1.0, 1.0)
        swap = exchange_p_value(change.mean(), (flips * change).mean(axis=1))
        bootstrap_only += boot < 0.05
        reported += max(boot, swap) < 0.05
    assert bootstrap_only / trials > 0.07
    assert reported / trials <= 0.05


def test_mcnemar_mde_has_eighty_percent_power():
    """Simulate the exact McNemar test at a change the size of the MDE: it is detected about 80% of the time
    (Connor's relation is a normal approximation, so allow a few points)."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(1)
    for n, psi in ((400, 0.15), (1500, 0.05)):
        discordant = int(round(n * psi))
        mde = mcnemar_mde(discordant // 2, discordant - discordant // 2, n, 0.05)
        p01, p10 = (psi + mde) / 2, (psi - mde) / 2
        counts = rng.multinomial(n, [p10, p01, 1 - psi], size=600)
        power = np.mean([binomtest(int(c), int(b + c), 0.5).pvalue < 0.05 if b + c else False
                         for b, c, _ in counts])
        assert 0.72 < power < 0.88, (n, psi, mde, power)
    assert mcnemar_mde(0, 0, 12, 0.05) == 0.0  # two runs that agree on every image
    assert math.isinf(mcnemar_mde(1, 1, 3, 0.05))  # three images cannot show anything at 5%


def test_images_needed_scales_with_the_square_of_the_mde():
    assert images_needed(12, 0.4, 0.01) == 12 * 40 ** 2
    assert images_needed(12, 0.005, 0.01) is None  # already powered
    assert images_needed(100, math.inf, 0.01) is None


def test_mde_of_the_bootstrap_is_the_normal_formula():
    from visionstress.comparison.statistics import bootstrap_mde

    assert bootstrap_mde(0.01, 0.05) == pytest.approx((norm.isf(0.025) + norm.ppf(0.8)) * 0.01)
    assert bootstrap_mde(0.0, 0.05) == 0.0
