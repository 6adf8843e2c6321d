"""What the pytest plugin's tests share: the demo's files, small suites and models for the model
repositories they build with pytester, and reading back the scorecards a run's summary points at."""

from __future__ import annotations

import re
from pathlib import Path

# pytester's inline runs drop the modules first imported during them; importing the run machinery here
# keeps it (and its compiled kernels) alive from one inline run to the next.
import visionstress.datasets  # noqa: F401
import visionstress.evaluators  # noqa: F401
import visionstress.models  # noqa: F401
import visionstress.perturbations  # noqa: F401
import visionstress.records  # noqa: F401
import visionstress.runner  # noqa: F401
from visionstress.scorecard import Scorecard

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DEMO_WEIGHTS = REPO / "data" / "demo" / "shapes" / "classifier.safetensors"
DEMO_DATA = REPO / "data" / "demo" / "shapes" / "val"
QUICK_24 = "[pytest]\nvisionstress_suite = quick\nvisionstress_limit = 24\n"
TINY_SUITE = "name: tiny\nperturbations:\n  - {name: brightness, severities: [3]}\n  - {name: rotation, severities: [3]}\n"
"""Two cheap cells, for the tests about baselines and xdist rather than about the suite."""

SHIFTED_MODEL = """
import os

from visionstress.models.demo import tiny_classifier


def classifier(num_classes=6):
    # The demo classifier, or with DEGRADE set one whose logits are noise: a regression (not a label
    # numbering problem, which the run would refuse before scoring).
    model = tiny_classifier(num_classes)
    if os.environ.get("DEGRADE"):
        import torch

        generator = torch.Generator().manual_seed(0)
        model.register_forward_hook(lambda module, inputs, out: torch.randn(out.shape, generator=generator))
    return model


def classifier_v2(num_classes=6):
    # The next version of the model: another spec, the same network.
    return classifier(num_classes)
"""


def reports(output: str) -> list[Scorecard]:
    """The scorecards the terminal summary points at."""
    return [Scorecard.load(path.strip()) for path in re.findall(r"^  report: (.+)$", output, re.MULTILINE)]


def report(output: str) -> Scorecard:
    """The scorecard the terminal summary points at (one evaluation expected)."""
    found = reports(output)
    assert len(found) == 1, output
    return found[0]
