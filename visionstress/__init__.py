"""visionstress: find where a vision model breaks before its users do."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visionstress.batch import Batch, ObjectTargets
    from visionstress.comparison import compare
    from visionstress.runner import RunError, RunInterrupted, run
    from visionstress.scorecard import Scorecard

__version__ = "0.2.0"
__all__ = ["Batch", "ObjectTargets", "RunError", "RunInterrupted", "Scorecard", "compare", "run", "__version__"]


def __getattr__(name: str) -> Any:
    # Everything public pulls in torch (and the run machinery the whole perturbation catalogue); load
    # it on first use so `import visionstress` stays cheap, e.g. for the pytest plugin at `pytest --help`.
    if name in ("Batch", "ObjectTargets"):
        from visionstress import batch

        return getattr(batch, name)
    if name in ("run", "RunError", "RunInterrupted"):
        from visionstress import runner

        return getattr(runner, name)
    if name == "compare":
        from visionstress.comparison import compare

        return compare
    if name == "Scorecard":
        from visionstress.scorecard import Scorecard

        return Scorecard
    raise AttributeError(f"module 'visionstress' has no attribute {name!r}")
