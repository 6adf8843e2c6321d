"""Segmentation evaluator checked against scikit-learn, a scipy boundary reference and hand-built masks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from visionstress.evaluators import (SegmentationEvaluator, SegmentationInputError,
                                     segmentation_metrics_from_counts)

C = 5
NAMES = [f"class{i}" for i in range(C)]
IGNORE = 255


def _random_maps(n: int = 6, h: int = 40, w: int = 56, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """GT with ignore pixels and a blocky prediction that is right most of the time; class C-1 never appears."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, C - 1, (n, 1, h // 4, w // 4), generator=g).float()
    gt = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    pred = torch.where(torch.rand(n, h, w, generator=g) < 0.75, gt, torch.randint(0, C - 1, (n, h, w), generator=g))
    gt[torch.rand(n, h, w, generator=g) < 0.1] = IGNORE
    return gt, pred


def _labels(pred: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(labels=pred, logits=None)


def _feed(ev, name, severity, gt, pred, batch=4, order=None, as_logits=False):
    order = torch.arange(len(gt)) if order is None else order
    columns = []
    for start in range(0, len(order), batch):
        ids = order[start:start + batch]
        p = pred[ids]
        out = SimpleNamespace(logits=torch.nn.functional.one_hot(p, C).permute(0, 3, 1, 2).float()) if as_logits \
            else _labels(p)
        columns.append(ev.update_arrays(name, severity, ids, gt[ids], out))
    return columns


@pytest.mark.parametrize("as_logits", [False, True])
def test_metrics_equal_scikit_learn(as_logits):
    sk = pytest.importorskip("sklearn.metrics")
    gt, pred = _random_maps()
    ev = SegmentationEvaluator(C, NAMES, bootstrap=0)
    _feed(ev, "clean", 0, gt, pred, as_logits=as_logits)
    res = ev.finalize()
    valid = gt != IGNORE
    y, p = gt[valid].numpy(), pred[valid].numpy()
    labels = list(range(C))
    np.testing.assert_array_equal(res.confusion["clean@0"], sk.confusion_matrix(y, p, labels=labels))
    jaccard = sk.jaccard_score(y, p, labels=labels, average=None, zero_division=0)
    dice = sk.f1_score(y, p, labels=labels, average=None, zero_division=0)
    iou = np.array([res.per_class_iou["clean@0"][n] for n in NAMES])
    present = np.isin(labels, np.union1d(y, p))
    assert not present[-1] and np.isnan(iou[-1])  # class C-1 is absent from GT and prediction
    np.testing.assert_allclose(iou[present], jaccard[present])
    row = res.row("clean", 0)
    assert row.metrics["mIoU"] == pytest.approx(jaccard[present].mean())
    assert row.metrics["mDice"] == pytest.approx(dice[present].mean())
    assert row.metrics["pixel_accuracy"] == pytest.approx(sk.accuracy_score(y, p))


def test_per_image_counts_and_metrics_from_counts_agree_with_finalize():
    sk = pytest.importorskip("sklearn.metrics")
    gt, pred = _random_maps()
    ev = SegmentationEvaluator(C, NAMES, bootstrap=0)
    columns = _feed(ev, "clean", 0, gt, pred, batch=4)
    res = ev.finalize()
    row, matrix = res.row("clean", 0), res.confusion["clean@0"]
    inter = np.concatenate([np.array(c["intersection"]) for c in columns])
    gt_px = np.concatenate([np.array(c["gt_pixels"]) for c in columns])
    pred_px = np.concatenate([np.array(c["pred_pixels"]) for c in columns])
    assert inter.shape == (len(gt), C)
    np.testing.assert_array_equal(inter.sum(0), np.diag(matrix))
    np.testing.assert_array_equal(gt_px.sum(0), matrix.sum(1))
    np.testing.assert_array_equal(pred_px.sum(0), matrix.sum(0))
    for weights in (None, np.full(len(gt), 2)):
        metrics = segmentation_metrics_from_counts(inter, gt_px, pred_px, weights)
        for name in ("mIoU", "pixel_accuracy", "mDice"):
            assert metrics[name] == pytest.approx(row.metrics[name], rel=1e-12)
    # records columns read back as a sequence of per-image arrays work too
    assert segmentation_metrics_from_counts(list(inter), list(gt_px), list(pred_px))["mIoU"] == \
        pytest.approx(row.metrics["mIoU"])
    # per-image columns: the image alone, IoU averaged over the classes in its GT or prediction
    first = columns[0]
    valid = gt[0] != IGNORE
    y, p = gt[0][valid].numpy(), pred[0][valid].numpy()
    seen = np.union1d(y, p)
    assert first["pixel_accuracy"][0] == pytest.approx(sk.accuracy_score(y, p), rel=1e-6)
    assert first["miou"][0] == pytest.approx(sk.jaccard_score(y, p, labels=seen, average="macro"), rel=1e-6)
    assert first["sample_id"].tolist() == [0, 1, 2, 3]


def test_resample_weights_change_the_metrics_like_repeated_images():
    gt, pred = _random_maps(n=3)
    ev = SegmentationEvaluator(C, NAMES, bootstrap=0)
    cols = _feed(ev, "clean", 0, gt, pred, batch=3)[0]
    weighted = segmentation_metrics_from_counts(cols["intersection"], cols["gt_pixels"], cols["pred_pixels"],
                                                [2, 0, 1])
    repeated = SegmentationEvaluator(C, NAMES, bootstrap=0)
    repeated.update_arrays("clean", 0, [0, 1], gt[[0, 0]], _labels(pred[[0, 0]]))
    repeated.update_arrays("clean", 0, [2], gt[[2]], _labels(pred[[2]]))
    expected = repeated.finalize().row("clean", 0).metrics
    for name in weighted:
        assert weighted[name] == pytest.approx(expected[name], rel=1e-12)


def _scene() -> torch.Tensor:
    """200 x 200: background 0, a large square of 1, a medium square of 2, a tiny square of 3, ignore strip."""
    gt = torch.zeros(1, 200, 200, dtype=torch.long)
    gt[0, 20:130, 20:130] = 1  # 110^2 = 12100 px: large
    gt[0, 140:190, 140:190] = 2  # 50^2 = 2500 px: medium
    gt[0, 10:16, 170:176] = 3  # 36 px: small
    gt[0, :, 196:] = IGNORE
    return gt


def test_perfect_prediction_scores_one():
    gt = _scene()
    ev = SegmentationEvaluator(C, NAMES, bootstrap=0)
    ev.update_arrays("clean", 0, [0], gt, _labels(torch.where(gt == IGNORE, 4, gt)))  # ignored pixels: any prediction
    res = ev.finalize()
    m = res.row("clean", 0).metrics
    assert m["mIoU"] == 1 and m["pixel_accuracy"] == 1 and m["mDice"] == 1 and m["boundary_f1"] == 1
    assert m["region_recall_small"] == m["region_recall_medium"] == m["region_recall_large"] == 1
    assert list(m) == ["mIoU", "pixel_accuracy", "mDice", "boundary_f1", "region_recall_small",
                       "region_recall_medium", "region_recall_large"]
    # background is one region of 40000 - 12100 - 2500 - 36 - 800 (ignore strip) px: large
    assert res.region_recall["clean@0"] == {"small": {"recall": 1.0, "num_regions": 1},
                                            "medium": {"recall": 1.0, "num_regions": 1},
                                            "large": {"recall": 1.0, "num_regions": 2}}
    assert math.isnan(res.per_class_iou["clean@0"]["class4"])


def test_shifted_prediction_lowers_boundary_f1_and_missed_tiny_region_only_small_recall():
    gt = _scene()
    ev = SegmentationEvaluator(C, NAMES, bootstrap=0)
    perfect = gt.clamp(max=C - 1)
    ev.update_arrays("clean", 0, [0], gt, _labels(perfect))
    ev.update_arrays("shift", 1, [0], gt, _labels(torch.roll(perfect, shifts=6, dims=2)))
    missed = perfect.clone()
    missed[0, 10:16, 170:176] = 0
    ev.update_arrays("miss", 1, [0], gt, _labels(missed))
    res = ev.finalize()
    # the radius is round(0.0075 * 283) = 2 px; a 6 px shift puts the vertical edges out of tolerance
    assert res.row("shift", 1).metrics["boundary_f1"] < 0.9
    miss = res.row("miss", 1).metrics
    assert miss["region_recall_small"] == 0
    assert miss["region_recall_medium"] == 1 and miss["region_recall_large"] == 1
    assert [r.perturbation for r in res.rows] == ["clean", "shift", "miss"]


def test_region_recall_is_pixel_weighted_and_eight_connected():
    gt = torch.zeros(1, 120, 120, dtype=torch.long)
    gt[0, 0:25, 0:25] = 1  # two 625 px squares touching at a corner: one 8-connected region of 1250 px
    gt[0, 25:50, 25:50] = 1
    gt[0, 80:90, 80:90] = 2  # 100 px, half of it predicted right
    gt[0, 60:70, 0:10] = 2  # 100 px, with 40 px of ignore inside: a 60 px region, all right
    gt[0, 60:64, 0:10] = IGNORE
    pred = gt.clamp(max=C - 1).clone()
    pred[0, 80:85, 80:90] = 0
    ev = SegmentationEvaluator(C, NAMES, bootstrap=0, boundary=False,
                               region_bins={"small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2),
                                            "everything": (0, math.inf)})
    ev.update_arrays("clean", 0, [0], gt, _labels(pred))
    res = ev.finalize()
    bins = res.region_recall["clean@0"]
    assert bins["small"] == {"recall": pytest.approx((50 + 60) / (100 + 60)), "num_regions": 2}
    assert bins["medium"] == {"recall": 1.0, "num_regions": 1}
    background = 120 * 120 - 1250 - 100 - 100
    assert bins["everything"]["num_regions"] == 4
    assert bins["everything"]["recall"] == pytest.approx((background + 1250 + 50 + 60) / (background + 1250 + 160))
    assert "boundary_f1" not in res.row("clean", 0).metrics


def _reference_boundary_f1(gt: np.ndarray, pred: np.ndarray, ignore: int, tolerance: float) -> float:
    """The same class-agnostic BF score from scipy.ndimage filters, image by image, counts summed."""
    ndimage = pytest.importorskip("scipy.ndimage")
    counts = np.zeros(4)
    for g, p in zip(gt, pred):
        valid = g != ignore
        radius = max(1, round(tolerance * math.hypot(*g.shape)))

        def edges(labels):
            hi = ndimage.maximum_filter(np.where(valid, labels, -1), size=3, mode="constant", cval=-1)
            lo = ndimage.minimum_filter(np.where(valid, labels, 10 ** 6), size=3, mode="constant", cval=10 ** 6)
            return valid & ((hi != labels) | (lo != labels))

        ge, pe = edges(g), edges(p)
        square = np.ones((2 * radius + 1, 2 * radius + 1), bool)
        near_g, near_p = ndimage.binary_dilation(ge, square), ndimage.binary_dilation(pe, square)
        counts += [(pe & near_g).sum(), pe.sum(), (ge & near_p).sum(), ge.sum()]
    precision, recall = counts[0] / counts[1], counts[2] / counts[3]
    return 2 * precision * recall / (precision + recall)


def test_boundary_f1_equals_scipy_reference():
    gt, pred = _random_maps(n=4, h=64, w=80, seed=3)
    for tolerance in (0.0075, 0.05):
        ev = SegmentationEvaluator(C, NAMES, bootstrap=0, boundary_tolerance=tolerance, region_bins={})
        _feed(ev, "clean", 0, gt, pred, batch=3)
        got = ev.finalize().row("clean", 0).metrics["boundary_f1"]
        assert got == pytest.approx(_reference_boundary_f1(gt.numpy(), pred.numpy(), IGNORE, tolerance))


def test_results_do_not_depend_on_batching_and_intervals_are_seeded():
    gt, pred = _random_maps(n=10)

    def run(batch, order):
        ev = SegmentationEvaluator(C, NAMES, bootstrap=200, seed=1)
        _feed(ev, "clean", 0, gt, pred, batch=batch, order=order)
        return ev.finalize()

    a, b = run(4, None), run(3, torch.randperm(10, generator=torch.Generator().manual_seed(0)))
    assert a.rows == b.rows
    row = a.row("clean", 0)
    assert set(row.ci) == {"mIoU", "pixel_accuracy", "mDice"}
    for name, (lo, hi) in row.ci.items():
        assert lo <= row.metrics[name] <= hi and lo < hi


def test_bad_inputs_raise_clear_errors():
    gt, pred = _random_maps(n=2)
    ev = SegmentationEvaluator(C, NAMES, bootstrap=0)
    with pytest.raises(SegmentationInputError, match="must not predict the ignore index"):
        ev.update_arrays("clean", 0, [0, 1], gt, _labels(torch.where(gt == IGNORE, IGNORE, pred)))
    with pytest.raises(SegmentationInputError, match=r"predicted labels \[5\] are outside the 5 classes"):
        ev.update_arrays("clean", 0, [0, 1], gt, _labels(torch.full_like(pred, 5)))
    with pytest.raises(SegmentationInputError, match=r"mask values \[7\]"):
        ev.update_arrays("clean", 0, [0, 1], torch.full_like(gt, 7), _labels(pred))
    with pytest.raises(SegmentationInputError, match="shaped like the masks"):
        ev.update_arrays("clean", 0, [0, 1], gt, _labels(pred[:, :10]))
    with pytest.raises(SegmentationInputError, match=r"logits must be float \(2, 5, 40, 56\)"):
        ev.update_arrays("clean", 0, [0, 1], gt, SimpleNamespace(logits=torch.zeros(2, 3, 40, 56)))
    with pytest.raises(SegmentationInputError, match="`labels`.*or `logits`"):
        ev.update_arrays("clean", 0, [0, 1], gt, pred)
    with pytest.raises(ValueError, match="2 sample ids for 1 masks"):
        ev.update_arrays("clean", 0, [0, 1], gt[:1], _labels(pred[:1]))
    with pytest.raises(ValueError, match="ignore_index 3 is one of the 5 classes"):
        SegmentationEvaluator(C, NAMES, ignore_index=3)
    with pytest.raises(ValueError, match="region bin 'x'"):
        SegmentationEvaluator(C, NAMES, region_bins={"x": (10, 5)})
    with pytest.raises(ValueError, match="no predictions"):
        ev.finalize()
    ev.update_arrays("clean", 0, [0, 1], gt, _labels(pred))
    ev.update_arrays("clean", 0, [1], gt[:1], _labels(pred[:1]))
    with pytest.raises(ValueError, match=r"clean@0 received sample ids \[1\] more than once"):
        ev.finalize()
    with pytest.raises(ValueError, match="must have the same"):
        segmentation_metrics_from_counts(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="weights must be 2"):
        segmentation_metrics_from_counts(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3)), [1, 1, 1])


def test_all_ignored_image_gives_nan_image_metrics():
    gt = torch.full((1, 8, 8), IGNORE)
    ev = SegmentationEvaluator(C, NAMES, bootstrap=10)
    cols = ev.update_arrays("clean", 0, [0], gt, _labels(torch.zeros(1, 8, 8, dtype=torch.long)))
    assert math.isnan(cols["miou"][0]) and math.isnan(cols["pixel_accuracy"][0])
    assert cols["gt_pixels"] == [[0] * C]
    m = ev.finalize().row("clean", 0).metrics
    assert math.isnan(m["mIoU"]) and math.isnan(m["region_recall_small"]) and m["boundary_f1"] == 1


@pytest.mark.cuda
def test_cpu_and_cuda_agree():
    gt, pred = _random_maps(n=8, h=64, w=80, seed=5)

    def run(device):
        ev = SegmentationEvaluator(C, NAMES, bootstrap=50)
        _feed(ev, "clean", 0, gt.to(device), pred.to(device), batch=3)
        _feed(ev, "rotation", 2, gt.to(device), torch.roll(pred, 3, dims=1).to(device), batch=5, as_logits=True)
        return ev.finalize()

    cpu, gpu = run("cpu"), run("cuda")
    assert cpu.rows == gpu.rows
    for key in cpu.confusion:
        np.testing.assert_array_equal(cpu.confusion[key], gpu.confusion[key])
    assert cpu.region_recall == gpu.region_recall
