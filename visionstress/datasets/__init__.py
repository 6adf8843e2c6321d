"""Datasets: discovering labelled images, decoding them once, and batching them for the engine."""

from visionstress.datasets.classification import (
    ClassificationImages,
    DatasetError,
    Sample,
    SkippedFile,
    dataset_fingerprint,
    iterate_batches,
    load_classification_samples,
    read_class_names,
)

__all__ = [
    "ClassificationImages",
    "DatasetError",
    "Sample",
    "SkippedFile",
    "dataset_fingerprint",
    "iterate_batches",
    "load_classification_samples",
    "read_class_names",
]
