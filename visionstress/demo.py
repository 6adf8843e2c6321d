"""The bundled demo: a tiny classifier, detector and segmenter on 144 rendered 64x64 images, so that
`visionstress run` with no arguments shows the whole product in seconds (data/demo/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

def demo_dir() -> Path:
    """The bundled demo's `shapes/` folder: inside the installed package (`visionstress/demo_data`, a wheel
    install) or in the source checkout beside it (`data/demo`, an editable install), whatever the
    current directory. pyproject.toml maps data/demo into the wheel as the `visionstress.demo_data`
    package, so both layouts hold the same files."""
    package = Path(__file__).resolve().parent
    candidates = [package / "demo_data" / "shapes", package.parent / "data" / "demo" / "shapes"]
    for candidate in candidates:
        if (candidate / "classifier.safetensors").is_file():
            return candidate
    raise FileNotFoundError(
        f"the bundled demo was not found (looked in {' and '.join(map(str, candidates))}); reinstall visionstress, "
        "or in a source checkout regenerate it with `python data/make_demo_dataset.py && python data/train_demo.py`"
    )


def demo_arguments(task: str = "classification") -> dict[str, Any]:
    """What `visionstress run` with no model and no data evaluates for `task`: `visionstress.run` keywords
    of the task's bundled demo (the same images for all three tasks)."""
    from visionstress.tasks import get_task

    return get_task(task).demo()
