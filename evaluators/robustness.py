"""Robustness summaries: accuracy under perturbation, relative robustness, mCE / relative mCE, mPC / rPC.

Definitions (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions
and Perturbations", ICLR 2019, and Michaelis et al. 2019 for mPC/rPC), with E the top-1 error, c a
corruption, s a severity and B a baseline model:

- corruption error      CE_c  = sum_s E_{s,c} / sum_s B_{s,c}
- relative CE           rCE_c = sum_s (E_{s,c} - E_clean) / sum_s (B_{s,c} - B_clean)
- mCE, relative mCE     the means of CE_c and rCE_c over corruptions
- mPC                   the mean over corruptions of the mean accuracy over severities
- rPC                   mPC / clean accuracy

Values are ratios (1.0 = as bad as the baseline), not the paper's percentages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

CLEAN = "clean"

ALEXNET_SEVERITY_ERRORS: dict[str, tuple[float, float, float, float, float]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    "frost": (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    "fog": (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    "brightness": (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    "contrast": (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
"""AlexNet top-1 error on ImageNet-C per corruption at severities 1..5: the per-severity table that the
averages below summarise (as distributed with timm's `imagenetc_alexnet_error_rates_list`); used
when a suite runs only some severities, so that CE compares like with like."""

ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
    "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
"""The published AlexNet top-1 errors that normalise mCE, averaged over the five severities as
published: Hendrycks & Dietterich (ICLR 2019), ImageNet-C, as released with their evaluation code
(github.com/hendrycks/robustness) and reused verbatim by AugMix (Hendrycks et al., ICLR 2020)."""

ALEXNET_CLEAN_ERROR = 0.43478
"""AlexNet's clean ImageNet top-1 error for relative mCE: the torchvision AlexNet weights that the
ImageNet-C paper evaluated (top-1 accuracy 56.522%), i.e. the paper's 43.5% before rounding."""

ErrorTable = Mapping[str, Sequence[float] | Mapping[int, float]]
BaselineTable = Mapping[str, Sequence[float] | Mapping[int, float] | float]


def corruption_errors(rows: Iterable[Any], metric: str = "top1",
                      names: Iterable[str] | None = None) -> dict[str, dict[int, float]]:
    """`{perturbation: {severity: 1 - metric}}` from result rows (MetricRow objects or scorecard dicts),
    the clean row excluded; `names` keeps only those perturbations."""
    return {name: {s: 1.0 - v for s, v in values.items()} for name, values in _perturbed(rows, metric, names).items()}


def _perturbed(rows: Iterable[Any], metric: str, names: Iterable[str] | None = None) -> dict[str, dict[int, float]]:
    """`{perturbation: {severity: metric}}` of the perturbed rows."""
    keep = None if names is None else set(names)
    values: dict[str, dict[int, float]] = {}
    for name, severity, metrics in map(_row_fields, rows):
        if name != CLEAN and (keep is None or name in keep):
            values.setdefault(name, {})[severity] = _metric(metrics, metric, name, severity)
    return values


def mean_corruption_error(model_errors: ErrorTable, baseline_errors: BaselineTable) -> tuple[float, dict[str, float]]:
    """`(mCE, {corruption: CE})` over the corruptions of `model_errors`.

    Errors are given per severity, as a sequence (severities 1, 2, ... in order) or a mapping
    `{severity: error}`; a baseline may instead give one severity-averaged error per corruption (like
    `ALEXNET_ERRORS`), and then CE is the model's mean error over its severities divided by it. A
    per-severity baseline must cover every severity the model was run at.
    """
    ce = {name: _ratio_of_sums(name, _by_severity(errs), baseline_errors, 0.0, 0.0)
          for name, errs in _covered(model_errors, baseline_errors)}
    return float(np.mean(list(ce.values()))), ce


def relative_mce(model_errors: ErrorTable, model_clean_error: float, baseline_errors: BaselineTable,
                 baseline_clean_error: float) -> tuple[float, dict[str, float]]:
    """`(relative mCE, {corruption: relative CE})`: how much of the error is caused by the corruption,
    relative to how much it costs the baseline. A corruption that does not hurt the baseline
    (non-positive denominator) has an undefined relative CE: NaN, left out of the mean."""
    rce = {name: _ratio_of_sums(name, _by_severity(errs), baseline_errors, float(model_clean_error),
                                float(baseline_clean_error))
           for name, errs in _covered(model_errors, baseline_errors)}
    defined = [v for v in rce.values() if np.isfinite(v)]
    return (float(np.mean(defined)) if defined else float("nan")), rce


def mean_performance_under_corruption(accuracies: ErrorTable) -> float:
    """mPC: the mean over corruptions of the mean accuracy over severities (each corruption weighs the same,
    however many severities it was run at). Undefined (NaN) values are left out, as compare's summaries
    leave them out: detection's no_fg removes every object, so its AP is NaN and says nothing of the model.
    NaN when nothing is defined."""
    if not accuracies:
        raise ValueError("mean_performance_under_corruption: no corruption results")
    return _defined_mean([_defined_mean(list(_by_severity(v).values())) for v in accuracies.values()])


def _defined_mean(values: Sequence[float]) -> float:
    defined = [float(v) for v in values if np.isfinite(v)]
    return float(np.mean(defined)) if defined else float("nan")


def relative_performance(mpc: float, clean_accuracy: float) -> float:
    """rPC: mPC / clean accuracy (NaN when the clean accuracy is 0)."""
    return float(mpc) / float(clean_accuracy) if clean_accuracy > 0 else float("nan")


def robustness_summary(rows: Iterable[Any], families: Mapping[str, str], metric: str = "top1", *,
                       baseline_errors: BaselineTable | None = None, baseline_clean_error: float | None = None,
                       worst: int = 5) -> dict[str, Any]:
    """The headline numbers of a run, JSON-ready.

    `rows` are MetricRow objects or scorecard result dicts; `families` maps each perturbation to its
    family. Gives, in the main `metric` of the task (keys named for no task): `clean`, `mpc` (the mean
    under perturbation: over perturbations of the mean over severities), `rpc` (mpc / clean), the same per
    family (`per_family[f]["mpc"|"rpc"]`) and per perturbation (`mean`, `rpc`, `by_severity`), and the
    `worst` perturbation x severity cells with their drop from clean. With
    `baseline_errors` (e.g. `ALEXNET_SEVERITY_ERRORS` and `ALEXNET_CLEAN_ERROR` for the `imagenet-c`
    preset on an ImageNet model) it adds mCE and relative mCE over the perturbations the baseline covers.
    Values that cannot be defined (no perturbed rows, a clean accuracy of 0) are None.
    """
    rows = list(rows)
    clean = [_metric(m, metric, n, s) for n, s, m in map(_row_fields, rows) if n == CLEAN]
    if not clean:
        raise ValueError("robustness_summary: the rows hold no clean row (perturbation 'clean', severity 0)")
    clean_acc = clean[0]
    accuracy = _perturbed(rows, metric)
    missing = sorted(set(accuracy) - set(families))
    if missing:
        raise ValueError(f"robustness_summary: no family given for perturbation(s) {missing}")

    def relative(value: float | None) -> float | None:
        return None if value is None or clean_acc <= 0 else value / clean_acc

    per_perturbation = {
        name: {"family": families[name], "mean": _defined_mean(list(acc.values())),
               "rpc": relative(_defined_mean(list(acc.values()))),
               "by_severity": {str(s): acc[s] for s in sorted(acc)}}
        for name, acc in accuracy.items()
    }
    per_family: dict[str, dict[str, Any]] = {}
    for family in sorted({families[n] for n in accuracy}):
        names = [n for n in accuracy if families[n] == family]
        mean = mean_performance_under_corruption({n: accuracy[n] for n in names})
        per_family[family] = {"mpc": mean, "rpc": relative(mean), "perturbations": names}
    cells = sorted(((acc[s], name, s) for name, acc in accuracy.items() for s in acc if np.isfinite(acc[s])),
                   key=lambda c: (c[0], c[1], c[2]))
    mean_acc = mean_performance_under_corruption(accuracy) if accuracy else None
    summary: dict[str, Any] = {
        "metric": metric,
        "clean": clean_acc,
        "mpc": mean_acc,
        "rpc": relative(mean_acc),
        "per_family": per_family,
        "per_perturbation": per_perturbation,
        "worst": [{"perturbation": name, "family": families[name], "severity": s, metric: value,
                   "drop": clean_acc - value} for value, name, s in cells[:worst]],
    }
    if baseline_errors is not None:
        covered = {n: {s: 1.0 - a for s, a in acc.items()} for n, acc in accuracy.items() if n in baseline_errors}
        if covered:
            mce, ce = mean_corruption_error(covered, baseline_errors)
            summary.update(mce=mce, corruption_errors=ce, mce_perturbations=sorted(covered))
            if baseline_clean_error is not None:
                rel, _ = relative_mce(covered, 1.0 - clean_acc, baseline_errors, baseline_clean_error)
                summary["relative_mce"] = rel if np.isfinite(rel) else None
    return summary


def _covered(model_errors: ErrorTable, baseline_errors: BaselineTable):
    if not model_errors:
        raise ValueError("mCE: no corruption errors given")
    missing = sorted(set(model_errors) - set(baseline_errors))
    if missing:
        raise ValueError(f"mCE: the baseline has no errors for {missing}; "
                         f"it covers {sorted(baseline_errors)}")
    return model_errors.items()


def _by_severity(errors: Sequence[float] | Mapping[int, float]) -> dict[int, float]:
    if isinstance(errors, Mapping):
        table = {int(s): float(e) for s, e in errors.items()}
    else:
        table = {i + 1: float(e) for i, e in enumerate(errors)}
    if not table:
        raise ValueError("mCE: a corruption has no severities")
    return table


def _ratio_of_sums(name: str, model: dict[int, float], baseline_errors: BaselineTable,
                   model_clean: float, baseline_clean: float) -> float:
    base = baseline_errors[name]
    if isinstance(base, (int, float)):
        num = float(np.mean(list(model.values()))) - model_clean
        den = float(base) - baseline_clean
    else:
        table = _by_severity(base)
        absent = sorted(set(model) - set(table))
        if absent:
            raise ValueError(f"mCE: the baseline for {name!r} has no error at severity {absent}")
        num = sum(model[s] - model_clean for s in model)
        den = sum(table[s] - baseline_clean for s in model)
    return num / den if den > 0 else float("nan")


def _row_fields(row: Any) -> tuple[str, int, Mapping[str, float]]:
    if isinstance(row, Mapping):
        return str(row["perturbation"]), int(row["severity"]), row["metrics"]
    return str(row.perturbation), int(row.severity), row.metrics


def _metric(metrics: Mapping[str, float], metric: str, name: str, severity: int) -> float:
    if metric not in metrics:
        raise ValueError(f"robustness: row {name}@{severity} has no metric {metric!r} (has {sorted(metrics)})")
    return float(metrics[metric])
