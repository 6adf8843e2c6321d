"""The bundled demo: a tiny classifier, detector and segmenter on 144 rendered 64x64 images, so that
`visionstress run` with no arguments shows the whole product in seconds (data/demo/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_SUBDIR = Path("data") / "demo" / "shapes"


def demo_dir() -> Path:
    """Where the bundled demo lives: beside the package in a source checkout (editable install),
    else under the current directory (a wheel install run from a clone of the repository)."""
    candidates = [Path(__file__).resolve().parents[1] / DEMO_SUBDIR, Path.cwd() / DEMO_SUBDIR]
    for candidate in candidates:
        if (candidate / "classifier.safetensors").is_file():
            return candidate
    raise FileNotFoundError(
        "the bundled demo (data/demo/shapes) was not found beside the package or in the current directory; "
        "run from a clone of the visionstress repository, or regenerate it with `python data/make_demo_dataset.py "
        "&& python data/train_demo.py`"
    )


def demo_arguments(task: str = "classification") -> dict[str, Any]:
    """What `visionstress run` with no model and no data evaluates for `task`: `visionstress.run` keywords
    of the task's bundled demo (the same images for all three tasks)."""
    from visionstress.tasks import get_task

    return get_task(task).demo()
