"""Classification evaluators checked against scikit-learn, hand-built cases and the ImageNet-C definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visionstress.evaluators import (ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, ALEXNET_SEVERITY_ERRORS, METRICS,
                                     ClassificationEvaluator, balanced_accuracy, bootstrap_ci, brier_score,
                                     confusion_matrix, corruption_errors, expected_calibration_error, macro_f1,
                                     mean_corruption_error, mean_performance_under_corruption, most_confused_pairs,
                                     negative_log_likelihood, per_class_metrics, relative_mce,
                                     relative_performance, reliability_bins, robustness_summary)

K = 7
NAMES = [f"class{i}" for i in range(K)]


def _fake_model(n: int, k: int = K, seed: int = 0, skill: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (class k-1 never occurs, so 'present classes' conventions matter) and logits that favour them."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k - 1, (n,), generator=g)
    logits = torch.randn(n, k, generator=g) * 1.5
    logits[torch.arange(n), labels] += skill
    return labels, logits


def _feed(ev: ClassificationEvaluator, name: str, severity: int, labels, logits, batch: int = 32, order=None):
    order = torch.arange(len(labels)) if order is None else order
    columns = []
    for start in range(0, len(order), batch):
        ids = order[start:start + batch]
        columns.append(ev.update_arrays(name, severity, ids, labels[ids], logits[ids]))
    return columns


def _reference_brier(y: np.ndarray, probs: np.ndarray) -> float:
    """scikit-learn's multi-class Brier score (>= 1.7, unhalved); older versions only score binary problems."""
    import sklearn
    from sklearn.metrics import brier_score_loss

    if tuple(int(v) for v in sklearn.__version__.split(".")[:2]) < (1, 7):
        return float(((probs - np.eye(probs.shape[1])[y]) ** 2).sum(1).mean())
    return float(brier_score_loss(y, probs, labels=list(range(probs.shape[1]))))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_equal_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    labels, logits = _fake_model(400)
    ev = ClassificationEvaluator(K, NAMES, bootstrap=0)
    _feed(ev, "clean", 0, labels, logits)
    res = ev.finalize()
    row = res.rows[0]
    y, probs = labels.numpy(), torch.softmax(logits.double(), 1).numpy()
    pred = probs.argmax(1)
    everything = list(range(K))
    assert set(METRICS) - set(row.metrics) == {"flip_rate"}
    assert row.metrics["top1"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-12)
    assert row.metrics["top5"] == pytest.approx(sk.top_k_accuracy_score(y, probs, k=5, labels=everything), abs=1e-12)
    assert row.metrics["macro_f1"] == pytest.approx(sk.f1_score(y, pred, average="macro"), abs=1e-12)
    # the last class is predicted but never a label: sklearn warns and leaves it out, as we do
    assert (pred == K - 1).any()
    assert row.metrics["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred), abs=1e-12)
    assert row.metrics["nll"] == pytest.approx(sk.log_loss(y, probs, labels=everything), rel=1e-9)
    assert row.metrics["brier"] == pytest.approx(_reference_brier(y, probs), rel=1e-9)
    np.testing.assert_array_equal(res.confusion["clean@0"], sk.confusion_matrix(y, pred, labels=everything))

    p, r, f, s = sk.precision_recall_fscore_support(y, pred, labels=everything, zero_division=0)
    pc = per_class_metrics(res.confusion["clean@0"])
    np.testing.assert_allclose(pc.precision, p)
    np.testing.assert_allclose(pc.recall, r)
    np.testing.assert_allclose(pc.f1, f)
    np.testing.assert_array_equal(pc.support, s)
    for c, name in enumerate(NAMES):
        if s[c] or (pred == c).any():
            assert res.per_class["clean@0"][name] == pytest.approx(
                {"precision": p[c], "recall": r[c], "f1": f[c], "support": s[c]})
        else:
            assert name not in res.per_class["clean@0"]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_pure_metric_functions_equal_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    labels, logits = _fake_model(200, seed=3)
    y, probs = labels.numpy(), torch.softmax(logits.double(), 1).numpy()
    pred = probs.argmax(1)
    m = confusion_matrix(y, pred, K)
    assert macro_f1(m) == pytest.approx(sk.f1_score(y, pred, average="macro"))
    assert balanced_accuracy(m) == pytest.approx(sk.balanced_accuracy_score(y, pred))
    assert negative_log_likelihood(logits, labels) == pytest.approx(sk.log_loss(y, probs, labels=list(range(K))))
    assert brier_score(probs, y) == pytest.approx(_reference_brier(y, probs))


def test_top5_and_records_with_fewer_than_five_classes():
    labels, logits = _fake_model(20, k=3)
    ev = ClassificationEvaluator(3, ["a", "b", "c"], bootstrap=0)
    columns = _feed(ev, "clean", 0, labels, logits)[0]
    assert all(len(top) == 3 for top in columns["top5"])
    assert columns["flipped"] == [None] * 20
    assert set(columns) == {"sample_id", "label", "prediction", "confidence", "correct", "top5", "nll", "flipped"}
    assert ev.finalize().rows[0].metrics["top5"] == 1.0


def test_ece_on_a_hand_built_case():
    # 4 samples at confidence 0.9 (3 right) and 2 at 0.3 (1 right), 5 bins:
    # |0.75 - 0.9| * 4/6 + |0.5 - 0.3| * 2/6 = 0.1 + 0.0667 = 1/6
    conf = np.array([0.9, 0.9, 0.9, 0.9, 0.3, 0.3])
    correct = np.array([1, 1, 1, 0, 0, 1], bool)
    assert expected_calibration_error(conf, correct, bins=5) == pytest.approx(1 / 6)
    diagram = reliability_bins(conf, correct, bins=5)
    np.testing.assert_array_equal(diagram["count"], [0, 2, 0, 0, 4])
    np.testing.assert_allclose(diagram["accuracy"][[1, 4]], [0.5, 0.75])
    assert np.isnan(diagram["accuracy"][0])
    # bins are right-closed: 0.6 belongs to (0.4, 0.6], 1.0 to the last bin, 0 to the first
    np.testing.assert_array_equal(reliability_bins(np.array([0.0, 0.6, 1.0]), np.ones(3), bins=5)["count"],
                                  [1, 0, 1, 0, 1])
    assert expected_calibration_error(np.full(10, 0.7), np.arange(10) < 7, bins=15) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="confidence must lie in"):
        expected_calibration_error(np.array([1.5]), np.array([True]))


def test_evaluator_ece_matches_the_pure_function():
    labels, logits = _fake_model(300, seed=5)
    ev = ClassificationEvaluator(K, NAMES, ece_bins=10, bootstrap=0)
    columns = _feed(ev, "clean", 0, labels, logits, batch=300)[0]
    res = ev.finalize()
    expected = expected_calibration_error(torch.softmax(logits.double(), 1).max(1).values.numpy(),
                                          columns["correct"], bins=10)
    assert res.rows[0].metrics["ece"] == pytest.approx(expected, abs=1e-12)
    assert sum(res.calibration["clean@0"]["count"]) == 300 and len(res.calibration["clean@0"]["bin_edges"]) == 11


def test_flip_rate_against_the_clean_prediction():
    n = 10
    labels = torch.zeros(n, dtype=torch.long)
    clean = torch.zeros(n, K)
    clean[:, 0] = 5.0  # every clean prediction is class 0
    perturbed = clean.clone()
    perturbed[:3, 2] = 10.0  # samples 0-2 flip to class 2
    ev = ClassificationEvaluator(K, NAMES, bootstrap=200)
    _feed(ev, "clean", 0, labels, clean, batch=4)
    columns = _feed(ev, "fog", 3, labels, perturbed, batch=3, order=torch.arange(n).flip(0))
    flipped = {int(i): f for c in columns for i, f in zip(c["sample_id"], c["flipped"])}
    assert flipped == {i: i < 3 for i in range(n)}
    res = ev.finalize()
    assert "flip_rate" not in res.rows[0].metrics
    fog = res.row("fog", 3)
    assert fog.metrics["flip_rate"] == pytest.approx(0.3) and fog.metrics["top1"] == pytest.approx(0.7)
    low, high = fog.ci["flip_rate"]
    assert low <= 0.3 <= high
    assert res.most_confused["fog@3"][0] == ("class0", "class2", 3, 0)


def test_a_perturbed_pass_before_its_clean_pass_is_an_error():
    labels, logits = _fake_model(8)
    ev = ClassificationEvaluator(K, NAMES)
    _feed(ev, "clean", 0, labels[:4], logits[:4])
    with pytest.raises(ValueError, match=r"sample ids \[4, 5, 6, 7\] have no clean prediction"):
        ev.update_arrays("fog", 1, torch.arange(8), labels, logits)


def test_results_do_not_depend_on_batching_or_order():
    labels, logits = _fake_model(120, seed=1)
    noisy = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(9))
    runs = []
    for batch, order in ((7, torch.randperm(120, generator=torch.Generator().manual_seed(2))), (120, None)):
        ev = ClassificationEvaluator(K, NAMES, bootstrap=100, seed=4)
        _feed(ev, "clean", 0, labels, logits, batch, order)
        _feed(ev, "noise", 2, labels, noisy, batch, order)
        runs.append(ev.finalize())
    for a, b in zip(runs[0].rows, runs[1].rows):
        assert a.metrics == pytest.approx(b.metrics, abs=1e-12)
        assert a.ci.keys() == b.ci.keys() and all(a.ci[m] == pytest.approx(b.ci[m], abs=1e-12) for m in a.ci)


def test_confidence_intervals_contain_the_estimate_and_narrow_with_n():
    widths = []
    for n in (100, 2000):
        labels, logits = _fake_model(n, seed=n)
        ev = ClassificationEvaluator(K, NAMES, bootstrap=500, seed=0)
        _feed(ev, "clean", 0, labels, logits, batch=256)
        row = ev.finalize().rows[0]
        assert set(row.ci) == set(row.metrics)
        for name, (low, high) in row.ci.items():
            assert low <= row.metrics[name] <= high, name
        widths.append(row.ci["top1"][1] - row.ci["top1"][0])
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(20)


def test_bootstrap_ci_is_the_percentile_interval_of_shared_resamples():
    """Resamples arrive as image weights (multiplicities); they are the n-with-replacement draws of the
    seed, shared by every statistic of the call, and the interval is their percentile interval."""
    values = np.random.default_rng(0).normal(size=50)
    seen = []

    def stats(weights):
        seen.append(weights)
        return {"mean": weights @ values / weights.sum(1), "max": np.where(weights > 0, values, -np.inf).max(1)}

    ci = bootstrap_ci(stats, 50, 400, seed=7)
    weights = np.concatenate(seen)
    assert weights.shape == (400, 50) and (weights.sum(1) == 50).all() and (weights == np.round(weights)).all()
    idx = np.random.default_rng(7).integers(0, 50, size=(400, 50))  # the same draws, as indices
    assert ci["mean"] == pytest.approx(tuple(np.quantile(values[idx].mean(1), [0.025, 0.975])))
    assert ci["max"] == pytest.approx(tuple(np.quantile(values[idx].max(1), [0.025, 0.975])))
    assert bootstrap_ci(lambda w: {"mean": w @ values / 50}, 50, 400, seed=7)["mean"] == pytest.approx(ci["mean"])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(lambda w: {"mean": w @ values / 50}, 50, 10, seed=0, alpha=1.5)


def test_most_confused_pairs_are_sorted_and_skip_the_diagonal():
    m = np.array([[9, 1, 4], [4, 9, 0], [0, 2, 9]])
    assert most_confused_pairs(m, ["a", "b", "c"], top=3) == [("a", "c", 4), ("b", "a", 4), ("c", "b", 2)]


def test_alexnet_table_is_the_published_one():
    from visionstress.perturbations import IMAGENET_C

    assert tuple(ALEXNET_ERRORS) == IMAGENET_C == tuple(ALEXNET_SEVERITY_ERRORS)
    for name, errors in ALEXNET_SEVERITY_ERRORS.items():
        assert np.mean(errors) == pytest.approx(ALEXNET_ERRORS[name], abs=1e-6)
    # the published AlexNet mCE is 100% by construction, its clean error 43.5%
    mce, ce = mean_corruption_error({k: list(v) for k, v in ALEXNET_SEVERITY_ERRORS.items()}, ALEXNET_ERRORS)
    assert mce == pytest.approx(1.0) and all(v == pytest.approx(1.0) for v in ce.values())
    assert round(ALEXNET_CLEAN_ERROR * 100, 1) == 43.5


def test_mce_on_a_hand_built_table():
    model = {"gaussian_noise": [0.5, 0.6, 0.7, 0.8, 0.9], "fog": [0.2, 0.3, 0.4, 0.5, 0.6]}
    mce, ce = mean_corruption_error(model, ALEXNET_ERRORS)
    assert ce["gaussian_noise"] == pytest.approx(0.7 / 0.886428)
    assert ce["fog"] == pytest.approx(0.4 / 0.819324)
    assert mce == pytest.approx((0.7 / 0.886428 + 0.4 / 0.819324) / 2)
    # per-severity baseline: sums over the severities actually run
    partial, _ = mean_corruption_error({"fog": {1: 0.2, 5: 0.6}}, ALEXNET_SEVERITY_ERRORS)
    assert partial == pytest.approx(0.8 / (0.67474 + 0.945))
    rel, rce = relative_mce(model, 0.1, ALEXNET_ERRORS, ALEXNET_CLEAN_ERROR)
    assert rce["gaussian_noise"] == pytest.approx((0.7 - 0.1) / (0.886428 - ALEXNET_CLEAN_ERROR))
    assert rel == pytest.approx((rce["gaussian_noise"] + rce["fog"]) / 2)
    mpc = mean_performance_under_corruption({k: [1 - e for e in v] for k, v in model.items()})
    assert mpc == pytest.approx(1 - (0.7 + 0.4) / 2)
    assert relative_performance(mpc, 0.9) == pytest.approx(mpc / 0.9)
    with pytest.raises(ValueError, match=r"no errors for \['rotation'\]"):
        mean_corruption_error({"rotation": [0.5]}, ALEXNET_ERRORS)


def test_robustness_summary_from_rows():
    rows = [{"perturbation": "clean", "severity": 0, "metrics": {"top1": 0.8}}]
    table = {("fog", 1): 0.7, ("fog", 3): 0.5, ("snow", 1): 0.6, ("snow", 3): 0.2, ("rotation", 2): 0.4}
    rows += [{"perturbation": p, "severity": s, "metrics": {"top1": v}} for (p, s), v in table.items()]
    families = {"fog": "weather", "snow": "weather", "rotation": "geometric"}
    summary = robustness_summary(rows, families, baseline_errors=ALEXNET_SEVERITY_ERRORS,
                                 baseline_clean_error=ALEXNET_CLEAN_ERROR)
    assert summary["clean"] == 0.8
    assert summary["mpc"] == pytest.approx((0.6 + 0.4 + 0.4) / 3)
    assert summary["rpc"] == pytest.approx((1.4 / 3) / 0.8)
    assert summary["per_family"]["weather"]["mpc"] == pytest.approx(0.5)
    assert summary["per_family"]["geometric"]["rpc"] == pytest.approx(0.5)
    assert [(w["perturbation"], w["severity"]) for w in summary["worst"]] == [
        ("snow", 3), ("rotation", 2), ("fog", 3), ("snow", 1), ("fog", 1)]
    assert summary["worst"][0]["drop"] == pytest.approx(0.6)
    assert summary["mce_perturbations"] == ["fog", "snow"]
    expected_fog = (0.3 + 0.5) / (0.67474 + 0.84378)
    assert summary["corruption_errors"]["fog"] == pytest.approx(expected_fog)
    assert corruption_errors(rows, names=["fog"]) == {"fog": {1: pytest.approx(0.3), 3: pytest.approx(0.5)}}
    assert math.isfinite(summary["relative_mce"])
    with pytest.raises(ValueError, match="no family given"):
        robustness_summary(rows, {"fog": "weather"})



def test_robustness_summary_leaves_out_cells_whose_metric_is_undefined():
    """Detection's no_fg removes every object, so its AP is undefined (NaN): mPC is the mean over the
    perturbations that have a value, as compare's summaries compute it, not NaN for the whole run."""
    rows = [{"perturbation": "clean", "severity": 0, "metrics": {"AP": 0.8}}]
    table = {("no_fg", 1): math.nan, ("mixed_rand", 1): 0.6, ("rotation", 1): 0.4, ("rotation", 3): math.nan}
    rows += [{"perturbation": p, "severity": s, "metrics": {"AP": v}} for (p, s), v in table.items()]
    families = {"no_fg": "background", "mixed_rand": "background", "rotation": "rotation"}
    summary = robustness_summary(rows, families, "AP")
    assert summary["mpc"] == pytest.approx((0.6 + 0.4) / 2)
    assert summary["per_family"]["background"]["mpc"] == pytest.approx(0.6)
    assert summary["per_perturbation"]["rotation"]["mean"] == pytest.approx(0.4)
    assert math.isnan(summary["per_perturbation"]["no_fg"]["mean"])
    assert [(w["perturbation"], w["severity"]) for w in summary["worst"]] == [("rotation", 1), ("mixed_rand", 1)]
    only_undefined = robustness_summary(rows[:2], {"no_fg": "background"}, "AP")
    assert math.isnan(only_undefined["mpc"])


def test_evaluator_rows_feed_the_summary():
    labels, logits = _fake_model(60)
    ev = ClassificationEvaluator(K, NAMES, bootstrap=50)
    _feed(ev, "clean", 0, labels, logits)
    _feed(ev, "fog", 1, labels, logits * 0.2)
    res = ev.finalize()
    summary = robustness_summary(res.rows, {"fog": "weather"})
    assert summary["clean"] == res.rows[0].metrics["top1"]
    assert summary["per_perturbation"]["fog"]["by_severity"]["1"] == res.row("fog", 1).metrics["top1"]


@pytest.mark.parametrize("call, message", [
    (lambda ev, y, z: ev.update_arrays("clean", 0, torch.arange(4), y, z[:, :5]), r"logits must be \[B, 7\]"),
    (lambda ev, y, z: ev.update_arrays("clean", 0, torch.arange(4), y + 7, z), r"outside the model's 7 classes"),
    (lambda ev, y, z: ev.update_arrays("clean", 0, torch.arange(4), y, z * float("nan")), "NaN or inf"),
    (lambda ev, y, z: ev.update_arrays("clean", 2, torch.arange(4), y, z), "clean pass has severity 0"),
    (lambda ev, y, z: ev.update_arrays("clean", 0, torch.arange(3), y, z), "same non-zero length"),
    (lambda ev, y, z: ev.update_arrays("clean", 0, torch.tensor([0, 1, 1, 2]), y, z), "appears twice"),
    (lambda ev, y, z: (ev.update_arrays("clean", 0, torch.arange(4), y, z), ev.update_arrays("clean", 0, torch.arange(4), y, z)),
     "already had a clean pass"),
    (lambda ev, y, z: ev.finalize(), "no predictions"),
])
def test_bad_input_is_a_clear_error(call, message):
    labels, logits = _fake_model(4)
    with pytest.raises(ValueError, match=message):
        call(ClassificationEvaluator(K, NAMES), labels, logits)


def test_constructor_checks_the_class_names():
    with pytest.raises(ValueError, match="3 class names for 7 classes"):
        ClassificationEvaluator(K, ["a", "b", "c"])


def test_a_share_of_right_answers_has_the_exact_interval_even_at_100_percent():
    """Twelve images all right: the percentile bootstrap says [100%, 100%]; Clopper-Pearson says a true top-1
    as low as 73.5% fits them."""
    from scipy.stats import beta

    labels = np.arange(12) % K
    logits = np.full((12, K), -5.0)
    logits[np.arange(12), labels] = 5.0
    ev = ClassificationEvaluator(K, NAMES, bootstrap=200, seed=0)
    _feed(ev, "clean", 0, labels, logits, batch=12)
    row = ev.finalize().rows[0]
    assert row.metrics["top1"] == 1.0
    assert row.ci["top1"] == pytest.approx((float(beta.ppf(0.025, 12, 1)), 1.0))
    assert row.ci["top1"][0] == pytest.approx(0.735, abs=1e-3)


@pytest.mark.parametrize("k,n", [(0, 1), (0, 12), (5, 12), (11, 12), (97, 144), (9_000, 10_000), (1, 50_000)])
def test_exact_share_interval_is_scipys_exact_binomial_interval(k, n):
    from scipy.stats import binomtest

    from visionstress.evaluators.classification import exact_share_interval

    reference = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert exact_share_interval(k, n) == pytest.approx((reference.low, reference.high), abs=1e-12)
