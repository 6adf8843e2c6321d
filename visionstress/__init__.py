"""visionstress: find where a vision model breaks before its users do."""

from visionstress.batch import Batch, ObjectTargets

__version__ = "0.1.0"
__all__ = ["Batch", "ObjectTargets", "__version__"]
