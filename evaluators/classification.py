"""The classification evaluator: streaming per-sample records in, metric rows with bootstrap intervals out.

The engine calls `update` once per batch and pass (the clean pass of a sample always before its
perturbed passes) and `finalize` once. Memory stays proportional to images x passes in a few
compact numeric arrays, never to logits: what a metric or its bootstrap needs is reduced per sample
as it arrives (correct, top-5 hit, confidence, label, prediction, NLL, Brier, flip), and the
confusion matrices, per-class scores and reliability bins are derived from those at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from visionstress.batch import Batch

from .bootstrap import StatFn, on_subset, row_estimates, subset_positions
from .calibration import bin_index, reliability_bins
from .protocol import PassKey, Update
from .confusion import (balanced_accuracy_from_counts, confusion_matrix, macro_f1_from_counts, per_class_metrics,
                        top_confusions)

CLEAN = "clean"
METRICS = ("top1", "top5", "macro_f1", "balanced_accuracy", "ece", "nll", "brier", "flip_rate")
"""Metric names of every row, in order; `flip_rate` is absent from the clean row (nothing to flip against)."""

TOP_K = 5
MOST_CONFUSED = 10
ECE_BINS = 15
"""The default calibration binning (see `calibration`)."""


def result_key(perturbation: str, severity: int) -> str:
    """The key of a pass in the breakdown dicts: `"name@severity"`, `"clean@0"` for the clean pass."""
    return f"{perturbation}@{int(severity)}"


@dataclass
class MetricRow:
    """One perturbation x severity (or the clean pass): point metrics and their 95% bootstrap intervals.

    A pass scored on a strict subset of the clean pass's images (an adversarial patch judged on
    held-out images) also carries `clean_same_images`: the clean metrics on exactly those images (and
    their intervals, from the same resamples as the row's), so its drop from clean is not confounded by
    which images were kept. None for every other row.
    """

    perturbation: str
    severity: int
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    clean_same_images: dict[str, float] | None = None
    clean_same_images_ci: dict[str, tuple[float, float]] = field(default_factory=dict)


def find_row(rows: list[MetricRow], perturbation: str, severity: int) -> MetricRow:
    """The row of one pass; KeyError naming the passes that exist when it was not run."""
    for r in rows:
        if r.perturbation == perturbation and r.severity == int(severity):
            return r
    raise KeyError(f"no result for {result_key(perturbation, severity)}; "
                   f"have {[result_key(r.perturbation, r.severity) for r in rows]}")


def by_sample_id(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-image arrays appended batch by batch, merged in sample-id order, so that passes over the same
    images line up (and resample alike) whatever the batching."""
    merged = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
    order = np.argsort(merged["sample_id"], kind="stable")
    return {name: values[order] for name, values in merged.items()}


class ConfusedPair(NamedTuple):
    """A frequent mistake under a pass, beside how often the same mistake happens on clean images."""

    true_name: str
    pred_name: str
    count: int
    clean_count: int


@dataclass
class ClassificationResults:
    """Everything `finalize` computes; the dict fields are keyed by `result_key` ("clean@0", "fog@3").

    `per_class[key][class_name]` holds precision, recall, f1 and support for the classes present in
    that pass's labels or predictions; `confusion[key]` is the `[K, K]` int64 matrix (rows true);
    `calibration[key]` holds the reliability diagram as JSON-ready lists (`bin_edges`, `accuracy`,
    `confidence`, `count`; accuracy and confidence are None in empty bins).
    """

    rows: list[MetricRow]
    per_class: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    confusion: dict[str, np.ndarray] = field(default_factory=dict)
    most_confused: dict[str, list[ConfusedPair]] = field(default_factory=dict)
    calibration: dict[str, dict[str, list]] = field(default_factory=dict)

    def row(self, perturbation: str, severity: int) -> MetricRow:
        """The row of one pass; KeyError naming what exists when it was not run."""
        return find_row(self.rows, perturbation, severity)


@dataclass
class _Pass:
    """Per-sample arrays of one pass, appended batch by batch."""

    chunks: list[dict[str, np.ndarray]] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        return by_sample_id(self.chunks)


class ClassificationEvaluator:
    """Streaming classification metrics for the clean pass and every perturbation x severity.

    `class_names` are in model index order (`len == num_classes`); `ece_bins` sets the calibration
    binning (see `visionstress.evaluators.calibration`); `bootstrap` resamples of the images give the
    95% percentile intervals (0 turns them off), drawn from `seed` so a run is reproducible and all
    rows over the same images are resampled identically.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str], ece_bins: int = 15, bootstrap: int = 1000,
                 seed: int = 0) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"ClassificationEvaluator: num_classes must be >= 1, got {num_classes}")
        if len(class_names) != int(num_classes):
            raise ValueError(f"ClassificationEvaluator: {len(class_names)} class names for {num_classes} classes")
        if int(ece_bins) < 1 or int(bootstrap) < 0:
            raise ValueError(f"ClassificationEvaluator: ece_bins must be >= 1 and bootstrap >= 0, "
                             f"got {ece_bins} and {bootstrap}")
        self.num_classes = int(num_classes)
        self.class_names = [str(n) for n in class_names]
        self.ece_bins = int(ece_bins)
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self._passes: dict[tuple[str, int], _Pass] = {}
        self._clean_prediction = np.full(0, -1, dtype=np.int64)  # indexed by sample id, -1 = not seen yet

    def update(self, key: PassKey, batch: Batch, predictions: Any) -> Update:
        """The evaluator protocol: score one batch of one pass (`predictions.logits`, on any device,
        against `batch.labels`); the per-sample reduction runs on the logits' device and reaches the host
        in one copy. Returns the record columns and the state chunk (for a run's journal)."""
        return self._score(key.perturbation, key.severity, batch.sample_ids, batch.labels, predictions.logits)

    def update_arrays(self, perturbation: str, severity: int, sample_ids: Tensor, labels: Tensor,
                      logits: Tensor) -> dict[str, np.ndarray | list]:
        """Reduce one batch of one pass given as plain arrays; return its per-sample record columns.

        Columns: `sample_id`, `label`, `prediction`, `confidence` (max softmax probability), `correct`,
        `top5` (`[n, min(5, K)]`, the top class indices), `nll`, and `flipped` (prediction differs
        from this sample's clean prediction; None on the clean pass).
        """
        return self._score(perturbation, severity, sample_ids, labels, logits).records

    def _score(self, perturbation: str, severity: int, sample_ids: Tensor, labels: Tensor, logits: Tensor) -> Update:
        where = f"ClassificationEvaluator.update({perturbation!r}, severity={severity})"
        ids, y, z = self._validate(where, perturbation, int(severity), sample_ids, labels, logits)
        chunk = self._reduce(z, y)
        pred = chunk["prediction"]
        flipped = self._flips(where, perturbation, ids, pred)
        chunk = {"sample_id": ids, **chunk,
                 "flipped": np.zeros(len(ids), bool) if flipped is None else flipped}
        self.absorb(perturbation, int(severity), chunk)
        records = {
            "sample_id": ids, "label": chunk["label"], "prediction": pred,
            "confidence": chunk["confidence"].astype(np.float32), "correct": chunk["correct"],
            "top5": chunk["top5"], "nll": chunk["nll"].astype(np.float32),
            "flipped": [None] * len(ids) if flipped is None else flipped.tolist(),
        }
        return Update(records, chunk)

    def _reduce(self, z: Tensor, y: Tensor) -> dict[str, np.ndarray]:
        """Per-sample values of one batch, computed where the logits are (float64) and copied to the host
        once: prediction, confidence, correctness, top-5 (hit and indices), NLL and Brier score."""
        z = z.to(torch.float64)
        y = y.to(z.device)
        log_probs = torch.log_softmax(z, dim=1)
        probs = log_probs.exp()
        confidence, prediction = probs.max(dim=1)
        top = torch.topk(z, min(TOP_K, self.num_classes), dim=1).indices
        nll = -log_probs.gather(1, y[:, None])[:, 0]
        brier = (probs.square().sum(dim=1) - 2 * probs.gather(1, y[:, None])[:, 0] + 1.0)
        packed = torch.cat([torch.stack([prediction.double(), confidence, (prediction == y).double(), nll, brier,
                                         (top == y[:, None]).any(dim=1).double(), y.double()], dim=1),
                            top.double()], dim=1).cpu().numpy()
        return {
            "label": packed[:, 6].astype(np.int64), "prediction": packed[:, 0].astype(np.int64),
            "confidence": packed[:, 1], "correct": packed[:, 2].astype(bool),
            "top5_correct": packed[:, 5].astype(bool), "nll": packed[:, 3], "brier": packed[:, 4],
            "top5": packed[:, 7:].astype(np.int64),
        }

    def absorb(self, perturbation: str, severity: int, chunk: dict[str, np.ndarray]) -> None:
        """Add one batch's state chunk of one pass (from `update`, or from a run's journal on resume)."""
        if perturbation == CLEAN:
            self._remember_clean(chunk["sample_id"], chunk["prediction"])
        self._passes.setdefault((perturbation, int(severity)), _Pass()).chunks.append(chunk)

    def finalize(self) -> ClassificationResults:
        """Metric rows (clean first, then passes in arrival order) with intervals, and the breakdowns."""
        if not self._passes:
            raise ValueError("ClassificationEvaluator.finalize: no predictions were given to update()")
        if (CLEAN, 0) not in self._passes:
            raise ValueError("ClassificationEvaluator.finalize: no clean pass (perturbation 'clean', severity 0)")
        keys = [(CLEAN, 0)] + [k for k in self._passes if k != (CLEAN, 0)]
        results = ClassificationResults(rows=[])
        clean_matrix, clean_data = None, None
        for name, severity in keys:
            key = result_key(name, severity)
            data = self._passes[(name, severity)].arrays()
            repeated = data["sample_id"][1:][np.diff(data["sample_id"]) == 0]
            if repeated.size:
                raise ValueError(f"ClassificationEvaluator.finalize: {key} received sample ids "
                                 f"{np.unique(repeated)[:10].tolist()} more than once")
            matrix = confusion_matrix(data["label"], data["prediction"], self.num_classes)
            clean_matrix = matrix if clean_matrix is None else clean_matrix
            clean_data = data if clean_data is None else clean_data
            results.rows.append(self._row(name, severity, data, clean_data))
            results.confusion[key] = matrix
            results.per_class[key] = self._per_class(matrix)
            results.most_confused[key] = [
                ConfusedPair(self.class_names[t], self.class_names[p], c, int(clean_matrix[t, p]))
                for t, p, c in top_confusions(matrix, MOST_CONFUSED)
            ]
            diagram = reliability_bins(data["confidence"], data["correct"], self.ece_bins)
            results.calibration[key] = {
                "bin_edges": diagram["bin_edges"].tolist(), "accuracy": _nullable(diagram["accuracy"]),
                "confidence": _nullable(diagram["confidence"]), "count": diagram["count"].tolist(),
            }
        return results

    def _row(self, name: str, severity: int, data: dict[str, np.ndarray], clean: dict[str, np.ndarray]) -> MetricRow:
        columns = dict(data) if name != CLEAN else {k: v for k, v in data.items() if k != "flipped"}
        n = len(data["sample_id"])
        metrics, ci = row_estimates(classification_statistics(columns, ece_bins=self.ece_bins), n, self.bootstrap,
                                    self.seed)
        ci = _exact_shares(metrics, ci, n)
        order = [m for m in METRICS if m in metrics]
        row = MetricRow(name, int(severity), {m: metrics[m] for m in order}, {m: ci[m] for m in order if m in ci})
        positions = subset_positions(data["sample_id"], clean["sample_id"])
        if positions is not None:
            clean_columns = {k: v for k, v in clean.items() if k != "flipped"}
            subset = on_subset(classification_statistics(clean_columns, ece_bins=self.ece_bins), positions,
                               len(clean["sample_id"]))
            values, intervals = row_estimates(subset, n, self.bootstrap, self.seed)
            intervals = _exact_shares(values, intervals, n)
            row.clean_same_images = {m: values[m] for m in METRICS if m in values}
            row.clean_same_images_ci = {m: intervals[m] for m in METRICS if m in intervals}
        return row

    def _per_class(self, matrix: np.ndarray) -> dict[str, dict[str, float]]:
        pc = per_class_metrics(matrix)
        shown = np.flatnonzero((pc.support + pc.predicted) > 0)
        return {self.class_names[c]: {"precision": float(pc.precision[c]), "recall": float(pc.recall[c]),
                                      "f1": float(pc.f1[c]), "support": int(pc.support[c])} for c in shown}

    def _flips(self, where: str, perturbation: str, ids: np.ndarray, pred: np.ndarray) -> np.ndarray | None:
        if perturbation == CLEAN:
            known = ids[ids < len(self._clean_prediction)]
            seen = known[self._clean_prediction[known] >= 0]
            if seen.size:
                raise ValueError(f"{where}: sample ids {seen[:10].tolist()} already had a clean pass")
            return None
        known = ids < len(self._clean_prediction)
        clean = np.full(len(ids), -1, dtype=np.int64)
        clean[known] = self._clean_prediction[ids[known]]
        if (clean < 0).any():
            raise ValueError(f"{where}: sample ids {ids[clean < 0][:10].tolist()} have no clean prediction yet; "
                             f"the clean pass of a sample must be given before its perturbed passes")
        return pred != clean

    def _remember_clean(self, ids: np.ndarray, pred: np.ndarray) -> None:
        if ids.size and ids.max() >= len(self._clean_prediction):
            grown = np.full(max(int(ids.max()) + 1, 2 * len(self._clean_prediction)), -1, dtype=np.int64)
            grown[: len(self._clean_prediction)] = self._clean_prediction
            self._clean_prediction = grown
        self._clean_prediction[ids] = pred

    def _validate(self, where: str, perturbation: str, severity: int, sample_ids: Tensor, labels: Tensor,
                  logits: Tensor) -> tuple[np.ndarray, Tensor, Tensor]:
        if perturbation == CLEAN and severity != 0:
            raise ValueError(f"{where}: the clean pass has severity 0")
        if severity < 0:
            raise ValueError(f"{where}: severity must be >= 0")
        z = torch.as_tensor(logits).detach()
        if z.ndim != 2 or z.shape[1] != self.num_classes:
            raise ValueError(f"{where}: logits must be [B, {self.num_classes}] (one column per class), "
                             f"got shape {tuple(z.shape)}")
        ids = torch.as_tensor(sample_ids).detach().to("cpu", torch.int64).reshape(-1).numpy()
        y = torch.as_tensor(labels).detach().to("cpu", torch.int64).reshape(-1)
        if not (len(ids) == len(y) == z.shape[0]) or len(ids) == 0:
            raise ValueError(f"{where}: sample_ids ({len(ids)}), labels ({len(y)}) and logits ({z.shape[0]}) "
                             f"must have the same non-zero length")
        if (ids < 0).any():
            raise ValueError(f"{where}: sample ids must be >= 0, got {ids[ids < 0][:10].tolist()}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"{where}: a sample id appears twice in one batch")
        bad = (y < 0) | (y >= self.num_classes)
        if bad.any():
            raise ValueError(f"{where}: labels {y[bad][:10].tolist()} are outside the model's "
                             f"{self.num_classes} classes")
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"{where}: logits contain NaN or inf")
        return ids, y, z


EXACT_SHARES = ("top1", "top5")
"""Shares of images answered right: their interval is Clopper-Pearson's, not the bootstrap's."""


def _exact_shares(metrics: Mapping[str, float], ci: dict[str, tuple[float, float]],
                  n: int) -> dict[str, tuple[float, float]]:
    """`ci` with the exact (Clopper-Pearson) 95% interval of each share of right answers. The percentile
    bootstrap of a share collapses at 0% and 100%: twelve images all right gave "100% [100%, 100%]", while
    twelve right of twelve is compatible with a true top-1 of 74%. Intervals are only replaced where the
    bootstrap gave one (`ci` is empty without resamples)."""
    out = dict(ci)
    for name in EXACT_SHARES:
        if name in ci and n > 0 and np.isfinite(metrics.get(name, np.nan)):
            out[name] = exact_share_interval(int(round(metrics[name] * n)), n)
    return out


def exact_share_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Clopper-Pearson interval at level 1 - alpha of a share of `k` images in `n`."""
    from scipy.special import betaincinv  # the beta quantile; scipy.stats would add half a second of import

    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha / 2))
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - alpha / 2))
    return low, high


def classification_statistics(columns: Mapping[str, Any], *, ece_bins: int = ECE_BINS) -> StatFn:
    """Every bootstrap-able classification metric of one pass, as a function of image weights.

    `columns` are the pass's per-image record columns in sample-id order: `label`, `prediction`,
    `confidence`, `correct`, `nll`, top-5 hits as `top5` (the top class indices per image) or
    `top5_correct`, and optionally `flipped` (flip_rate; absent, or null as on the clean pass, for
    none) and `brier` (the records cannot hold it: it needs every class probability). The result maps
    weights `[r, n]` (image multiplicities; a row of ones is the pass as it is) to `{metric: [r]}` for
    top1, top5, nll, flip_rate, brier (those given), macro_f1, balanced_accuracy and ece, all r rows at
    once: means are weighted sums over the total weight, and the class and confidence-bin counts behind
    macro-F1, balanced accuracy and ECE are one sparse product, so a thousand resamples cost a few
    matrix products. The evaluator's rows, their intervals and compare's paired bootstrap all use it.
    """
    from scipy import sparse

    label = np.asarray(columns["label"], dtype=np.int64)
    prediction = np.asarray(columns["prediction"], dtype=np.int64)
    correct = np.asarray(columns["correct"], dtype=np.float64)
    confidence = np.asarray(columns["confidence"], dtype=np.float64)
    n = len(label)
    if "top5_correct" in columns:
        top5 = np.asarray(columns["top5_correct"], dtype=np.float64)
    else:
        top = np.stack([np.asarray(v, dtype=np.int64) for v in columns["top5"]]) if n else np.zeros((0, 1))
        top5 = (top == label[:, None]).any(axis=1).astype(np.float64)
    means = {"top1": correct, "top5": top5, "nll": _floats(columns["nll"])}
    for name, column in (("flip_rate", "flipped"), ("brier", "brier")):
        values = _floats(columns[column]) if column in columns else None
        if values is not None and not np.isnan(values).any():
            means[name] = values
    mean_matrix = np.stack(list(means.values()), axis=1)  # [n, metrics]
    k = int(max(label.max(initial=0), prediction.max(initial=0))) + 1
    images, ones = np.arange(n), np.ones(n)

    def sums(index: np.ndarray, values: np.ndarray, size: int) -> sparse.csr_matrix:
        return sparse.csr_matrix((values, (index, images)), shape=(size, n))

    bins = bin_index(confidence, ece_bins)
    counts = sparse.vstack([sums(label, correct, k), sums(label, ones, k), sums(prediction, ones, k),
                            sums(bins, correct, ece_bins), sums(bins, confidence, ece_bins)]).tocsr()

    def stats(weights: np.ndarray) -> dict[str, np.ndarray]:
        weights = np.asarray(weights, dtype=np.float64)
        total = weights.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = dict(zip(means, (weights @ mean_matrix / total[:, None]).T))
            c = np.asarray(counts @ weights.T).T  # [r, 3k + 2 bins]
            tp, support, predicted = c[:, :k], c[:, k:2 * k], c[:, 2 * k:3 * k]
            hits, mass = c[:, 3 * k:3 * k + ece_bins], c[:, 3 * k + ece_bins:]
            out["macro_f1"] = macro_f1_from_counts(tp, support, predicted)
            out["balanced_accuracy"] = balanced_accuracy_from_counts(tp, support)
            # ECE = sum over bins |hits - confidence mass| / total weight (calibration.expected_calibration_error)
            out["ece"] = np.abs(hits - mass).sum(axis=1) / total
        return out

    return stats


def _floats(values: Any) -> np.ndarray:
    """A per-image column as float64, nulls (None, pandas NA) as NaN."""
    return pd.Series(values, dtype="Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _nullable(values: np.ndarray) -> list[float | None]:
    """Floats for JSON, None where a bin is empty (NaN is not JSON)."""
    return [None if np.isnan(v) else float(v) for v in values]
