"""The classification evaluator: streaming per-sample records in, metric rows with bootstrap intervals out.

The engine calls `update` once per batch and pass (the clean pass of a sample always before its
perturbed passes) and `finalize` once. Memory stays proportional to images x passes in a few
compact numeric arrays, never to logits: what a metric or its bootstrap needs is reduced per sample
as it arrives (correct, top-5 hit, confidence, label, prediction, NLL, Brier, flip), and the
confusion matrices, per-class scores and reliability bins are derived from those at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from visionstress.batch import Batch

from .bootstrap import bootstrap_ci
from .calibration import bin_index, reliability_bins
from .protocol import PassKey, Update
from .confusion import (balanced_accuracy_from_counts, confusion_matrix, macro_f1_from_counts, per_class_metrics,
                        top_confusions)

CLEAN = "clean"
METRICS = ("top1", "top5", "macro_f1", "balanced_accuracy", "ece", "nll", "brier", "flip_rate")
"""Metric names of every row, in order; `flip_rate` is absent from the clean row (nothing to flip against)."""

TOP_K = 5
MOST_CONFUSED = 10


def result_key(perturbation: str, severity: int) -> str:
    """The key of a pass in the breakdown dicts: `"name@severity"`, `"clean@0"` for the clean pass."""
    return f"{perturbation}@{int(severity)}"


@dataclass
class MetricRow:
    """One perturbation x severity (or the clean pass): point metrics and their 95% bootstrap intervals."""

    perturbation: str
    severity: int
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]


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
        `top5` (lists of the top min(5, K) class indices), `nll`, and `flipped` (prediction differs
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
            "top5": chunk["top5"].tolist(), "nll": chunk["nll"].astype(np.float32),
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
        clean_matrix = None
        for name, severity in keys:
            key = result_key(name, severity)
            data = self._passes[(name, severity)].arrays()
            repeated = data["sample_id"][1:][np.diff(data["sample_id"]) == 0]
            if repeated.size:
                raise ValueError(f"ClassificationEvaluator.finalize: {key} received sample ids "
                                 f"{np.unique(repeated)[:10].tolist()} more than once")
            matrix = confusion_matrix(data["label"], data["prediction"], self.num_classes)
            clean_matrix = matrix if clean_matrix is None else clean_matrix
            results.rows.append(self._row(name, severity, data))
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

    def _row(self, name: str, severity: int, data: dict[str, np.ndarray]) -> MetricRow:
        stats = self._statistics(data, name != CLEAN)
        metrics = {m: float(v[0]) for m, v in stats(np.arange(len(data["sample_id"]))[None, :]).items()}
        ci = {} if self.bootstrap == 0 else bootstrap_ci(stats, len(data["sample_id"]), self.bootstrap, self.seed)
        order = [m for m in METRICS if m in metrics]
        return MetricRow(name, int(severity), {m: metrics[m] for m in order}, {m: ci[m] for m in order if m in ci})

    def _statistics(self, data: dict[str, np.ndarray], with_flips: bool):
        """A function of a resample index matrix `[r, n]` -> every metric for each of the r resamples."""
        k, bins = self.num_classes, self.ece_bins
        label, pred, correct = data["label"], data["prediction"], data["correct"].astype(np.float64)
        confidence = data["confidence"].astype(np.float64)
        conf_bin = bin_index(confidence, bins)
        means = {"top1": correct, "top5": data["top5_correct"].astype(np.float64), "nll": data["nll"],
                 "brier": data["brier"].astype(np.float64)}
        if with_flips:
            means["flip_rate"] = data["flipped"].astype(np.float64)

        def stats(idx: np.ndarray) -> dict[str, np.ndarray]:
            r, n = idx.shape
            offset = np.arange(r)[:, None]
            out = {m: v[idx].mean(axis=1) for m, v in means.items()}

            def per_row(values: np.ndarray, size: int, weights: np.ndarray | None = None) -> np.ndarray:
                flat = (offset * size + values).reshape(-1)
                return np.bincount(flat, weights=None if weights is None else weights.reshape(-1),
                                   minlength=r * size).reshape(r, size)

            hit = correct[idx]
            tp = per_row(label[idx], k, hit)
            support = per_row(label[idx], k)
            predicted = per_row(pred[idx], k)
            out["macro_f1"] = macro_f1_from_counts(tp, support, predicted)
            out["balanced_accuracy"] = balanced_accuracy_from_counts(tp, support)
            b = conf_bin[idx]
            # ECE = sum over bins |hits - confidence mass| / n (calibration.expected_calibration_error)
            out["ece"] = np.abs(per_row(b, bins, hit) - per_row(b, bins, confidence[idx])).sum(axis=1) / n
            return out

        return stats

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


def _nullable(values: np.ndarray) -> list[float | None]:
    """Floats for JSON, None where a bin is empty (NaN is not JSON)."""
    return [None if np.isnan(v) else float(v) for v in values]
