"""`compare` sets two scorecards' preprocessing-skew sections side by side: per shared cell, each model's
change from its own reference, the difference, and each model's agreement (JSON, Markdown, HTML, CLI)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import visionstress as vs
from visionstress.cli import app
from visionstress.comparison import CompareWarning
from visionstress.demo import demo_arguments
from visionstress.report.compare_html import render_compare_html
from visionstress.report.compare_view import comparison_markdown
from visionstress.scorecard import Scorecard
from visionstress.skew import skew

pytestmark = pytest.mark.filterwarnings("ignore:no paired tests:visionstress.comparison.CompareWarning")

LIMIT = 36
KNOBS = "channel_order,normalization,jpeg"


@pytest.fixture(scope="module")
def skews(tmp_path_factory):
    """`visionstress skew` of the demo classifier and of a copy with noisy first convolutions."""
    root = tmp_path_factory.mktemp("skews")
    demo = demo_arguments()
    state = load_file(demo["weights"])
    generator = torch.Generator().manual_seed(0)
    for name in ("0.weight", "4.weight"):
        w = state[name]
        state[name] = w + 0.7 * w.std() * torch.randn(w.shape, generator=generator)
    noisy = root / "noisy.safetensors"
    save_file(state, str(noisy))
    common = dict(model=demo["model"], data=demo["data"], limit=LIMIT, knobs=KNOBS, workers=0, bootstrap=0,
                  device="cpu")
    old = skew(weights=demo["weights"], out=root / "old", **common)
    new = skew(weights=noisy, out=root / "new", **common)
    return old, new, root


def test_compare_shows_each_models_change_per_cell_and_their_difference(skews):
    old, new, root = skews
    comparison = vs.compare(root / "old", root / "new", gates=())
    diff = comparison.skew
    assert diff is not None and diff.metric == "top1" and diff.task == "classification"
    assert {c.cell for c in diff.cells} == {r["cell"] for r in old.rows[1:]} == {r["cell"] for r in new.rows[1:]}
    assert diff.old_reference == old.row("reference")["metrics"]["top1"]
    assert diff.new_reference == new.row("reference")["metrics"]["top1"]
    for cell in diff.cells:
        a, b = old.row(cell.cell), new.row(cell.cell)
        assert (cell.old_delta, cell.new_delta) == (a["delta"]["top1"], b["delta"]["top1"])
        assert cell.difference == pytest.approx(b["delta"]["top1"] - a["delta"]["top1"])
        assert (cell.old_agreement, cell.new_agreement) == (a["agreement"], b["agreement"])
    bgr = diff.cell("channel_order=bgr")
    assert bgr.difference != 0 or bgr.old_agreement != bgr.new_agreement  # the two models really differ
    data = comparison.to_json()
    assert [c["cell"] for c in data["skew"]["cells"]] == [c.cell for c in diff.cells]
    json.dumps(data, allow_nan=False)


def test_markdown_html_and_cli_show_the_skew_table(skews):
    _, _, root = skews
    comparison = vs.compare(root / "old", root / "new", gates=())
    bgr = comparison.skew.cell("channel_order=bgr")
    markdown = comparison_markdown(comparison)
    assert "## Preprocessing skew (top1)" in markdown
    line = next(line for line in markdown.splitlines() if line.startswith("| `channel_order=bgr`"))
    assert f"{100 * bgr.difference:+.1f} pp" in line and f"{100 * bgr.new_agreement:.1f}%" in line
    html = render_compare_html(comparison)
    assert "Preprocessing skew (top1)" in html and "channel_order=bgr" in html
    result = CliRunner().invoke(app, ["compare", str(root / "old"), str(root / "new"), "--no-gates",
                                      "--json", str(root / "c.json")])
    assert result.exit_code == 0, result.output
    assert "preprocessing skew" in result.output and "jpeg=95" in result.output
    written = json.loads((root / "c.json").read_text())["skew"]
    assert written["metric"] == "top1" and "normalization=0-255" in [c["cell"] for c in written["cells"]]


def test_a_model_with_the_same_weights_has_no_skew_difference(skews):
    _, _, root = skews
    comparison = vs.compare(root / "old", root / "old", gates=())
    assert comparison.skew.cells and all(c.difference == 0 for c in comparison.skew.cells)
    assert "+0.0 pp |" in comparison_markdown(comparison).split("## Preprocessing skew")[1]


def test_only_one_skew_section_is_a_note_and_no_diff(skews):
    _, _, root = skews
    without = Scorecard.load(root / "new" / "scorecard.json")
    without.skew = {}
    with pytest.warns(CompareWarning, match="only the reference scorecard has a preprocessing-skew section"):
        comparison = vs.compare(root / "old", without, gates=())
    assert comparison.skew is None and comparison.to_json()["skew"] is None
    assert "Preprocessing skew" not in comparison_markdown(comparison)
    assert not math.isnan(comparison.cell("top1").old)
