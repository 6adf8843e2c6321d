"""Models: load a saved model safely, know its preprocessing, and wrap it for one task."""

from visionstress.models.adapters import ClassifierAdapter, ClassifierOutput, ModelOutputError
from visionstress.models.data_config import DataConfig, DataConfigError, resolve_data_config
from visionstress.models.loading import LoadedModel, ModelLoadError, UntrustedModelError, load_model

__all__ = [
    "ClassifierAdapter",
    "ClassifierOutput",
    "DataConfig",
    "DataConfigError",
    "LoadedModel",
    "ModelLoadError",
    "ModelOutputError",
    "UntrustedModelError",
    "load_model",
    "resolve_data_config",
]
