"""Evaluators (imported as visionstress.evaluators): per-task metrics over perturbed batches.

Classification: `ClassificationEvaluator` streams per-sample records and finalizes to metric rows
with bootstrap intervals; the metric parts (calibration, confusion, robustness summaries, bootstrap)
are plain functions that can be used on their own. Each task has one statistics function
(`classification_statistics`, `detection_statistics`, `segmentation_statistics`): its metrics for
rows of image weights, used for the rows, their intervals and compare's paired tests alike.
"""

if __name__ != "visionstress.evaluators":  # the folder of the installed package, imported from a checkout's root
    raise ImportError(f"import visionstress.evaluators, not {__name__}: under a second name its registry and its "
                      "cached numba kernels would be a second, diverging copy")

from .bootstrap import bootstrap_ci
from .calibration import (brier_score, expected_calibration_error, negative_log_likelihood, per_sample_brier,
                          per_sample_nll, reliability_bins)
from .classification import (METRICS, ClassificationEvaluator, ClassificationResults, ConfusedPair, MetricRow,
                             classification_statistics, result_key)
from .confusion import (PerClassMetrics, balanced_accuracy, confusion_matrix, macro_f1, most_confused_pairs,
                        per_class_metrics, top_confusions)
from .robustness import (ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, ALEXNET_SEVERITY_ERRORS, corruption_errors,
                         mean_corruption_error, mean_performance_under_corruption, relative_mce,
                         relative_performance, robustness_summary)
from .coco_matching import MatchTableError, coco_metrics_from_matches
from .detection import (DEFAULT_SIZE_BINS, DetectionEvaluator, DetectionEvaluatorError, DetectionResults,
                        detection_statistics)
from .error_types import ERROR_TYPES
from .attack_success import adversarial_summary  # registers the adversarial family summary
from .segmentation import (SegmentationEvaluator, SegmentationInputError, SegmentationResults,
                           segmentation_metrics_from_counts, segmentation_statistics)
from .reliance import background_summary, cue_summary  # registers the background and cue family summaries

__all__ = [
    "ALEXNET_CLEAN_ERROR", "ALEXNET_ERRORS", "ALEXNET_SEVERITY_ERRORS", "METRICS", "ClassificationEvaluator",
    "ClassificationResults", "ConfusedPair", "MetricRow", "PerClassMetrics", "balanced_accuracy", "bootstrap_ci",
    "brier_score", "confusion_matrix", "corruption_errors", "expected_calibration_error", "macro_f1",
    "mean_corruption_error", "mean_performance_under_corruption", "most_confused_pairs", "negative_log_likelihood",
    "per_class_metrics", "per_sample_brier", "per_sample_nll", "relative_mce", "relative_performance",
    "reliability_bins", "result_key", "robustness_summary", "top_confusions", "classification_statistics",
    "DEFAULT_SIZE_BINS", "DetectionEvaluator", "DetectionEvaluatorError", "DetectionResults", "ERROR_TYPES",
    "adversarial_summary",
    "MatchTableError", "coco_metrics_from_matches", "detection_statistics",
    "SegmentationEvaluator", "SegmentationInputError", "SegmentationResults", "segmentation_metrics_from_counts",
    "background_summary", "cue_summary", "segmentation_statistics",
]
