"""Baselines survive a new model version, an older visionstress's layout, and a move to another machine."""

from __future__ import annotations

import json
import shutil

from plugin_projects import DEMO_DATA, DEMO_WEIGHTS, SHIFTED_MODEL, TINY_SUITE, report
from visionstress.records import read_records
from visionstress.scorecard import Scorecard

pytest_plugins = ["pytester"]

NO_REGRESSION = """
def test_no_regression(visionstress):
    visionstress.assert_no_regression(visionstress.run(bootstrap=20), gates=["top1:-1pp"])
"""


def _project(pytester, name: str | None, model: str, data: str = str(DEMO_DATA)) -> None:
    """A model repository: pyproject.toml (with a [project] name when given), the models and one test."""
    project = f'[project]\nname = "{name}"\nversion = "1.0"\n\n' if name else ""
    pytester.makefile(".toml", pyproject=project + "[tool.pytest.ini_options]\n"
                      f'visionstress_model = "{model}"\nvisionstress_weights = "{DEMO_WEIGHTS}"\n'
                      f'visionstress_data = "{data}"\nvisionstress_suite = "tiny.yaml"\nvisionstress_limit = "24"\n')
    pytester.makefile(".yaml", tiny=TINY_SUITE)
    pytester.makepyfile(shifted=SHIFTED_MODEL, test_regression=NO_REGRESSION)


def test_the_next_model_version_is_compared_with_the_last_baseline(pytester, monkeypatch):
    _project(pytester, "shapes-repo", "shifted:classifier")
    written = pytester.runpytest("--visionstress-update-baselines")
    written.assert_outcomes(passed=1)
    fingerprint = report(written.stdout.str()).dataset["fingerprint"][:12]
    folder = f"tests/visionstress_baselines/shapes-repo/tiny-{fingerprint}"  # the project's name, not the model's
    written.stdout.fnmatch_lines([f"baseline written: {folder}"])

    next_version = ("--visionstress-model", "shifted:classifier_v2")
    pytester.runpytest(*next_version).assert_outcomes(passed=1)
    monkeypatch.setenv("DEGRADE", "1")
    regressed = pytester.runpytest(*next_version)
    regressed.assert_outcomes(failed=1)
    regressed.stdout.fnmatch_lines([f"visionstress: significant regression against the baseline {folder} (alpha 0.05):"])

    renamed = pytester.runpytest(*next_version, "--visionstress-name", "shapes-v2")  # a name of its own
    renamed.assert_outcomes(failed=1)
    renamed.stdout.fnmatch_lines(["*visionstress: no baseline for shifted:classifier_v2 on dataset * with suite tiny "
                                  "under the name shapes-v2: tests/visionstress_baselines/shapes-v2/tiny-*"])


def test_baselines_of_the_old_layout_are_still_read(pytester, monkeypatch):
    _project(pytester, None, "shifted:classifier")
    written = pytester.runpytest("--visionstress-update-baselines")
    written.assert_outcomes(passed=1)
    leaf = f"tiny-{report(written.stdout.str()).dataset['fingerprint'][:12]}"
    baselines = pytester.path / "tests" / "visionstress_baselines"
    new, old = f"tests/visionstress_baselines/{pytester.path.name}/{leaf}", f"tests/visionstress_baselines/shifted-classifier/{leaf}"
    (baselines / "shifted-classifier").mkdir()
    shutil.move(pytester.path / new, pytester.path / old)  # as an older visionstress filed it: by model

    note = (f"baseline read from {old}, filed under the model's name by an older visionstress; "
            f"`pytest --visionstress-update-baselines` files it under {new}/")
    passed = pytester.runpytest()
    passed.assert_outcomes(passed=1)
    passed.stdout.fnmatch_lines([f"WARNING {note}"])
    monkeypatch.setenv("DEGRADE", "1")
    regressed = pytester.runpytest()
    regressed.assert_outcomes(failed=1)
    regressed.stdout.fnmatch_lines([f"visionstress: significant regression against the baseline {old} (alpha 0.05):",
                                    "*", f"({note})"])

    monkeypatch.delenv("DEGRADE")
    moved = pytester.runpytest("--visionstress-update-baselines")
    moved.assert_outcomes(passed=1)
    moved.stdout.fnmatch_lines([f"baseline written: {new}",
                                f"WARNING {old} (the old layout) is no longer read now that {new} exists: delete it"])


def test_committed_baselines_hold_no_machine_path(pytester):
    for folder in sorted(DEMO_DATA.iterdir()):  # a dataset inside the repository: two images per class
        (pytester.path / "data" / "val" / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:2]:
            shutil.copy(image, pytester.path / "data" / "val" / folder.name / image.name)
    _project(pytester, "portable", "shifted:classifier", data="data/val")
    written = pytester.runpytest("--visionstress-update-baselines")
    written.assert_outcomes(passed=1)
    card = report(written.stdout.str())
    assert card.dataset["path"] == "val"  # scorecards name the dataset folder, not where it lives

    folder = next((pytester.path / "tests" / "visionstress_baselines" / "portable").iterdir())
    machine = {str(pytester.path), str(pytester.path.resolve()), str(DEMO_WEIGHTS.parent)}
    for name in ("scorecard.json", "summary.md"):
        text = (folder / name).read_text(encoding="utf-8")
        assert not [m for m in machine if m in text], name
    data = json.loads((folder / "scorecard.json").read_text(encoding="utf-8"))
    assert data["records_path"] == "records.parquet" and data["dataset"]["path"] == "val"
    assert data["model"]["weights"] == "classifier.safetensors"  # outside the project: its name only
    paths = read_records(folder / "records.parquet")["path"]
    assert len(paths) == 12 * len(card.results)
    assert sorted(set(paths))[:2] == ["circle/circle_000.png", "circle/circle_001.png"]  # relative to the data root

    baseline = Scorecard.load(folder)
    assert baseline.records_path == str(folder / "records.parquet")
    compared = pytester.runpytest()  # the portable baseline still compares, image by image
    compared.assert_outcomes(passed=1)
    assert "no paired tests" not in compared.stdout.str()
