"""visionstress: find where a vision model breaks before its users do."""

from typing import Any

from visionstress.batch import Batch, ObjectTargets

__version__ = "0.1.0"
__all__ = ["Batch", "ObjectTargets", "Scorecard", "run", "__version__"]


def __getattr__(name: str) -> Any:
    # The run machinery pulls in the whole perturbation catalogue, datasets and evaluators; load it
    # on first use so `import visionstress` stays cheap.
    if name == "run":
        from visionstress.runner import run

        return run
    if name == "Scorecard":
        from visionstress.scorecard import Scorecard

        return Scorecard
    raise AttributeError(f"module 'visionstress' has no attribute {name!r}")
