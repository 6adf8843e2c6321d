"""Calibration under shift: expected calibration error, reliability bins, NLL and Brier score.

A model that loses accuracy under a perturbation but stays confident is more dangerous than one
that knows it is unsure, so confidence quality is measured per perturbation and severity.

Binning (stated because ECE depends on it): `bins` equal-width bins over [0, 1] of the top-label
confidence; bin `i` holds confidences in `(edges[i], edges[i + 1]]` (the first bin also takes 0),
with `edges = numpy.linspace(0, 1, bins + 1)`, as in Guo et al. (2017). ECE is the sample-weighted
mean over non-empty bins of `|accuracy(bin) - mean confidence(bin)|` (L1, top-label).
"""

from __future__ import annotations

import numpy as np
import torch


def bin_edges(bins: int) -> np.ndarray:
    """The `bins + 1` equal-width edges over [0, 1]."""
    if int(bins) < 1:
        raise ValueError(f"calibration: bins must be >= 1, got {bins}")
    return np.linspace(0.0, 1.0, int(bins) + 1)


def bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each confidence under the right-closed convention of the module docstring."""
    edges = bin_edges(bins)
    conf = np.asarray(confidence, dtype=np.float64)
    return np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, len(edges) - 2)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE with `bins` equal-width bins over [0, 1] (right-closed), weighted by the fraction of samples per bin.

    Computed as `sum_b |sum_{i in b} correct_i - sum_{i in b} conf_i| / n`, which equals the weighted
    `|acc - conf|` form and is what the bootstrap vectorises.
    """
    conf, hit = _pair(confidence, correct)
    idx = bin_index(conf, bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    hit_sum = np.bincount(idx, weights=hit, minlength=bins)
    return float(np.abs(hit_sum - conf_sum).sum() / len(conf))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """The reliability diagram behind the ECE: `bin_edges` (`bins + 1`), and per bin the `accuracy`,
    mean `confidence` (NaN where the bin is empty) and sample `count`."""
    conf, hit = _pair(confidence, correct)
    idx = bin_index(conf, bins)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(idx, weights=hit, minlength=bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
    return {"bin_edges": bin_edges(bins), "accuracy": accuracy, "confidence": mean_conf, "count": count}


def per_sample_nll(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """`-log softmax(logits)[label]` per sample, in float64 from the logits (no probability clipping)."""
    z = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu", torch.int64)
    _check_logits(z, y)
    return (-torch.log_softmax(z, dim=1).gather(1, y[:, None])[:, 0]).numpy()


def negative_log_likelihood(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Mean NLL (cross-entropy) of the true labels, nats."""
    return float(per_sample_nll(logits, labels).mean())


def per_sample_brier(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """`sum_k (p_k - y_k)^2` per sample, with `y` the one-hot label: 0 for a confident right answer, 2 at worst."""
    p = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu", torch.int64)
    _check_logits(p, y, what="probs")
    onehot = torch.zeros_like(p).scatter_(1, y[:, None], 1.0)
    return ((p - onehot) ** 2).sum(dim=1).numpy()


def brier_score(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Multi-class Brier score: mean over samples of `sum_k (p_k - y_k)^2` (not halved)."""
    return float(per_sample_brier(probs, labels).mean())


def _pair(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    hit = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != hit.shape:
        raise ValueError(f"calibration: confidence has {conf.size} values but correct has {hit.size}")
    if conf.size == 0:
        raise ValueError("calibration: no samples")
    if not np.all((conf >= 0) & (conf <= 1)):
        raise ValueError("calibration: confidence must lie in [0, 1] (pass softmax probabilities, not logits)")
    return conf, hit


def _check_logits(z: torch.Tensor, y: torch.Tensor, what: str = "logits") -> None:
    if z.ndim != 2 or y.ndim != 1 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise ValueError(f"calibration: {what} must be [N, K] and labels [N] with N > 0, "
                         f"got {tuple(z.shape)} and {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= z.shape[1]):
        raise ValueError(f"calibration: labels must lie in [0, {z.shape[1]}), got {int(y.min())}..{int(y.max())}")
