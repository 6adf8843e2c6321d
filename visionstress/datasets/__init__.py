"""Datasets: discovering labelled images, decoding them once, and batching them for the engine."""

from visionstress.datasets.batching import (
    BatchInfo,
    Plan,
    iterate_batches,
    iterate_detection_batches,
    iterate_planned,
    iterate_segmentation_batches,
    load_planned,
    plan_batches,
)
from visionstress.datasets.classification import (
    ClassificationImages,
    DatasetError,
    Sample,
    SkippedFile,
    dataset_fingerprint,
    load_classification_samples,
    read_class_names,
)
from visionstress.datasets.detection import (
    AnnotationWarning,
    CocoDataset,
    DetectionImages,
    DetectionSample,
    load_coco_dataset,
)
from visionstress.datasets.segmentation import (
    SegmentationDataset,
    SegmentationImages,
    SegmentationSample,
    load_segmentation_dataset,
    read_mask,
)

__all__ = [
    "AnnotationWarning",
    "BatchInfo",
    "ClassificationImages",
    "CocoDataset",
    "DatasetError",
    "DetectionImages",
    "DetectionSample",
    "Sample",
    "SegmentationDataset",
    "SegmentationImages",
    "SegmentationSample",
    "SkippedFile",
    "dataset_fingerprint",
    "iterate_batches",
    "iterate_detection_batches",
    "iterate_segmentation_batches",
    "iterate_planned",
    "load_planned",
    "plan_batches",
    "Plan",
    "load_classification_samples",
    "load_coco_dataset",
    "load_segmentation_dataset",
    "read_class_names",
    "read_mask",
]
