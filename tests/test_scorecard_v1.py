"""Version-1 scorecards (and the plugin baselines committed with them) still load and compare.

The fixture was written by visionstress before schema 2 (tests/fixtures/scorecard-v1/README.md): the demo
classifier on 48 demo images with the quick suite.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import visionstress as vs
from visionstress.scorecard import SCHEMA_VERSION, Scorecard

FIXTURE = Path(__file__).parent / "fixtures" / "scorecard-v1"


def test_a_version_1_scorecard_loads_with_task_neutral_summaries(tmp_path):
    card = Scorecard.load(FIXTURE)
    assert card.schema_version == SCHEMA_VERSION and card.run["upgraded_from"] == "1.0"
    assert {"clean", "mpc", "rpc"} <= set(card.summaries) and "clean_accuracy" not in card.summaries
    assert card.summaries["clean"] == pytest.approx(card.metric("top1"))
    family = next(iter(card.summaries["per_family"].values()))
    assert {"mpc", "rpc"} <= set(family)
    assert Path(card.records_path) == FIXTURE / "records.parquet"
    card.save(tmp_path)  # re-saved as version 2, valid against the new schema
    assert Scorecard.load(tmp_path).schema_version == SCHEMA_VERSION


@pytest.mark.filterwarnings("ignore:.*implementation version unknown")
def test_a_version_1_baseline_compares_with_a_version_2_run(tmp_path):
    baseline = tmp_path / "baseline"
    shutil.copytree(FIXTURE, baseline)
    card = vs.run(suite="quick", limit=48, bootstrap=100, workers=0, out=tmp_path / "run")
    comparison = vs.compare(baseline, card)
    assert comparison.reference.schema_version == SCHEMA_VERSION
    clean = comparison.cell("top1")
    assert clean.old == pytest.approx(clean.new) and clean.test == "mcnemar"  # the same model, image by image
    # the old scorecard does not record its perturbations' versions: compare says so and gates only what it can
    assert any("version" in note for note in comparison.notes)
    assert comparison.passed
