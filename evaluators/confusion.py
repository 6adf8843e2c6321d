"""Class confusion: confusion matrices, the most-confused pairs, per-class P/R/F1, macro-F1, balanced accuracy.

Conventions follow scikit-learn so numbers can be checked against it: rows of the matrix are true
classes, columns predictions; an undefined precision or recall (no predictions of, or no samples
of, a class) counts as 0; macro-F1 averages over the classes present in the labels or the
predictions (scikit-learn's `labels=None`), so a dataset holding a subset of a 1000-class model's
classes is not diluted by the 990 classes it never shows; balanced accuracy is the mean recall over
the classes present in the labels.

The `*_from_counts` forms take per-class counts with any leading batch axes, which is how the
bootstrap computes the metric for a thousand resamples at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """`[K, K]` int64 counts, `matrix[true, predicted]`."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(preds, dtype=np.int64).reshape(-1)
    k = int(num_classes)
    if y.shape != p.shape:
        raise ValueError(f"confusion_matrix: {y.size} labels but {p.size} predictions")
    for name, v in (("labels", y), ("predictions", p)):
        if v.size and (v.min() < 0 or v.max() >= k):
            raise ValueError(f"confusion_matrix: {name} must lie in [0, {k}), got {v.min()}..{v.max()}")
    return np.bincount(y * k + p, minlength=k * k).reshape(k, k)


@dataclass(frozen=True)
class PerClassMetrics:
    """Per-class arrays of length K; `support` is the number of samples of the class."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    predicted: np.ndarray


def per_class_metrics(matrix: np.ndarray) -> PerClassMetrics:
    """Precision, recall and F1 of every class from a confusion matrix (undefined -> 0, as scikit-learn)."""
    m = _square(matrix)
    tp, support, predicted = np.diag(m), m.sum(axis=1), m.sum(axis=0)
    return PerClassMetrics(precision=_ratio(tp, predicted), recall=_ratio(tp, support),
                           f1=_ratio(2 * tp, support + predicted), support=support, predicted=predicted)


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in the labels or the predictions."""
    m = _square(matrix)
    return float(macro_f1_from_counts(np.diag(m), m.sum(axis=1), m.sum(axis=0)))


def balanced_accuracy(matrix: np.ndarray) -> float:
    """Mean recall over the classes present in the labels."""
    m = _square(matrix)
    return float(balanced_accuracy_from_counts(np.diag(m), m.sum(axis=1)))


def macro_f1_from_counts(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Macro-F1 over the last axis from true positives, supports and prediction counts per class."""
    tp, support, predicted = (np.asarray(a, dtype=np.float64) for a in (tp, support, predicted))
    present = (support + predicted) > 0
    f1 = _ratio(2 * tp, support + predicted)
    return (f1 * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def balanced_accuracy_from_counts(tp: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Balanced accuracy over the last axis from true positives and supports per class."""
    tp, support = np.asarray(tp, dtype=np.float64), np.asarray(support, dtype=np.float64)
    present = support > 0
    return (_ratio(tp, support) * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def most_confused_pairs(matrix: np.ndarray, class_names: Sequence[str], top: int = 10) -> list[tuple[str, str, int]]:
    """The `top` largest off-diagonal cells as `(true_name, predicted_name, count)`, largest first."""
    m = _square(matrix)
    if len(class_names) != m.shape[0]:
        raise ValueError(f"most_confused_pairs: {len(class_names)} class names for a {m.shape[0]}-class matrix")
    return [(str(class_names[t]), str(class_names[p]), c) for t, p, c in top_confusions(m, top)]


def top_confusions(matrix: np.ndarray, top: int = 10) -> list[tuple[int, int, int]]:
    """The `top` largest off-diagonal cells as `(true_index, predicted_index, count)`, largest first.

    Ties are broken by true then predicted class index so the list is deterministic; empty cells
    are never listed.
    """
    m = _square(matrix)
    k = m.shape[0]
    flat = np.where(np.eye(k, dtype=bool), 0, m).reshape(-1)
    nonzero = np.flatnonzero(flat)
    order = nonzero[np.lexsort((nonzero, -flat[nonzero]))][: max(int(top), 0)]
    return [(int(i // k), int(i % k), int(flat[i])) for i in order]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def _square(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion: expected a square [K, K] matrix, got shape {m.shape}")
    return m
