"""Models: load a saved model safely, know its preprocessing, and wrap it for one task."""

from visionstress.models.adapters import (
    ClassifierAdapter,
    ClassifierOutput,
    DetectorAdapter,
    DetectorOutput,
    ModelOutputError,
    SegmenterAdapter,
    SegmenterOutput,
)
from visionstress.models.data_config import DataConfig, DataConfigError, resolve_data_config
from visionstress.models.label_map import COCO80_TO_COCO91, LabelMapError, resolve_label_map
from visionstress.models.loading import LoadedModel, ModelLoadError, UntrustedModelError, load_model

__all__ = [
    "COCO80_TO_COCO91",
    "ClassifierAdapter",
    "ClassifierOutput",
    "DataConfig",
    "DataConfigError",
    "DetectorAdapter",
    "DetectorOutput",
    "LabelMapError",
    "LoadedModel",
    "ModelLoadError",
    "ModelOutputError",
    "SegmenterAdapter",
    "SegmenterOutput",
    "UntrustedModelError",
    "load_model",
    "resolve_data_config",
    "resolve_label_map",
]
