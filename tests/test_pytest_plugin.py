"""The pytest plugin, used the way a model repository uses it: test files run by pytester.

Runs are kept small (suite `quick`, or two cells where the suite is not the point; 24–48 demo images;
few bootstrap resamples). Most runs are inline,
so the compiled perturbation kernels are shared between them; the xdist run is a real subprocess, which
also proves the plugin is loaded by its entry point alone.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from plugin_projects import (DEMO_DATA, DEMO_WEIGHTS, QUICK_24, README, REPO, SHIFTED_MODEL, TINY_SUITE,
                             report, reports)
from visionstress.metrics import format_delta, format_value
from visionstress.records import read_records
from visionstress.scorecard import Scorecard

pytest_plugins = ["pytester"]


def test_importing_the_plugin_does_not_import_torch():
    # Every pytest run of an environment with visionstress loads the plugin and enumerates the options.
    code = ("import sys, visionstress.pytest_plugin.settings as s; assert s.plugin_options(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_options_and_marker_are_registered_and_a_plain_suite_is_untouched(pytester):
    help_text = pytester.runpytest("--help").stdout.str()
    for name in ("model", "weights", "data", "task", "suite", "device", "baseline-dir", "limit", "bootstrap", "out",
                 "update-baselines"):
        assert f"--visionstress-{name}" in help_text
    for key in ("visionstress_model", "visionstress_baseline_dir", "visionstress_out"):
        assert key in help_text
    assert "@pytest.mark.visionstress(min=" in pytester.runpytest("--markers").stdout.str()

    pytester.makepyfile("def test_plain():\n    assert True\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert "= visionstress =" not in result.stdout.str()


def test_settings_resolve_ini_then_command_line(pytester):
    pytester.makeini("[pytest]\nvisionstress_suite = quick\nvisionstress_limit = 24\nvisionstress_data = images\n"
                     "visionstress_baseline_dir = committed\nvisionstress_device = cpu\nvisionstress_bootstrap = 0\n")
    pytester.makepyfile(
        "import json\n"
        "def test_dump(visionstress):\n"
        "    s = visionstress.settings\n"
        "    data = {k: str(v) for k, v in s.run.items()}\n"
        "    data.update(baseline_dir=str(s.baseline_dir), update_baselines=str(s.update_baselines), name=s.name)\n"
        "    open('settings.json', 'w').write(json.dumps(data))\n"
    )
    root = pytester.path.resolve()
    pytester.runpytest().assert_outcomes(passed=1)
    ini = json.loads((root / "settings.json").read_text())
    assert ini["suite"] == "quick" and ini["limit"] == "24" and ini["device"] == "cpu" and ini["bootstrap"] == "0"
    assert ini["data"] == str(root / "images") and ini["baseline_dir"] == str(root / "committed")
    assert "model" not in ini and ini["update_baselines"] == "False"  # unset: visionstress.run's default
    assert ini["name"] == pytester.path.name  # no pyproject.toml: baselines are filed under the rootdir's name

    pytester.runpytest("--visionstress-limit", "30", "--visionstress-suite", "default",
                       "--visionstress-update-baselines").assert_outcomes(passed=1)
    cli = json.loads((root / "settings.json").read_text())
    assert cli["limit"] == "30" and cli["suite"] == "default" and cli["update_baselines"] == "True"
    assert cli["data"] == ini["data"] and cli["device"] == "cpu"
    result = pytester.runpytest("--visionstress-bootstrap", "many")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--visionstress-bootstrap: expected a whole number, got 'many'" in result.stderr.str()

    bad = pytester.runpytest("--visionstress-limit", "zero")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--visionstress-limit: expected a whole number, got 'zero'" in bad.stderr.str()
    bad = pytester.runpytest("--visionstress-limit", "0")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--visionstress-limit must be at least 1, got 0" in bad.stderr.str()

    bad = pytester.runpytest("--visionstress-name", "..")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--visionstress-name '..': a baseline name needs at least one letter or digit" in bad.stderr.str()

    pytester.makeini("[pytest]\nvisionstress_limit = -3\n")
    bad = pytester.runpytest()
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert f"visionstress_limit in {root / 'tox.ini'} must be at least 1, got -3" in bad.stderr.str()


def test_thresholds_pass_and_fail_with_readable_messages(pytester):
    pytester.makeini(QUICK_24)
    pytester.makepyfile(test_thresholds="""
        import pytest

        def test_clean_passes(visionstress):
            card = visionstress.run(bootstrap=20)
            assert card.suite["name"] == "quick" and card.dataset["num_samples"] == 24  # the ini's settings
            visionstress.assert_metric(card, "top1", at_least=0.5)
            assert visionstress.run(bootstrap=20) is card  # cached for the session

        def test_noise_fails(visionstress):
            visionstress.assert_metric(visionstress.run(bootstrap=20), "top1", perturbation="gaussian_noise",
                                       at_least=0.5)

        def test_misspelt_perturbation_fails(visionstress):
            visionstress.assert_metric(visionstress.run(bootstrap=20), "top1", perturbation="gausian_noise",
                                       at_least=0.1)

        @pytest.mark.visionstress(min={"top1": 0.5, "top1@brightness/1": 0.5}, max={"ece@b*": 0.9}, bootstrap=20)
        def test_marker_passes(visionstress_card):
            pass

        @pytest.mark.visionstress(min={"top1@rotation/5": 0.9}, max={"ece": 0.001}, bootstrap=20)
        def test_marker_fails_after_the_body(visionstress_card):
            assert visionstress_card.suite["name"] == "quick"
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=3)
    output = result.stdout.str()
    card = report(output)  # a single evaluation served all five tests

    def line(row, metric, op, bound):
        low, high = row["ci"][metric]
        return (f"  {metric} at {row['perturbation']} severity {row['severity']}: observed "
                f"{row['metrics'][metric]:.4f} (95% CI {low:.4f}-{high:.4f}), required {op} {bound:g}")

    noise = [r for r in card.results if r["perturbation"] == "gaussian_noise"]
    assert len(noise) == 3 and any(r["metrics"]["top1"] < 0.5 for r in noise)
    for row in noise:
        assert (line(row, "top1", ">=", 0.5) in output) == (row["metrics"]["top1"] < 0.5)
    assert "visionstress: visionstress.models.demo:tiny_classifier on" in output
    assert "top1 at gausian_noise: no such cell in the scorecard" in output

    rotation5 = next(r for r in card.results if r["perturbation"] == "rotation" and r["severity"] == 5)
    clean = next(r for r in card.results if r["perturbation"] == "clean")
    assert rotation5["metrics"]["top1"] < 0.9 and clean["metrics"]["ece"] > 0.001
    assert line(rotation5, "top1", ">=", 0.9) in output and line(clean, "ece", "<=", 0.001) in output

    summary = output[output.index("= visionstress ="):]
    assert f"suite quick" in summary and f"clean top1 {clean['metrics']['top1']:.4f}" in summary


def test_marker_errors_are_collection_errors_naming_test_and_key(pytester):
    pytester.makepyfile(
        test_typo="import pytest\n@pytest.mark.visionstress(mn={'top1': 0.5})\ndef test_typo(visionstress_card): pass\n",
        test_severity="import pytest\n@pytest.mark.visionstress(min={'top1@fog/9': 0.5})\n"
                      "def test_severity(visionstress_card): pass\n",
        test_bound="import pytest\nclass TestC:\n    pytestmark = pytest.mark.visionstress(max={'ece': 'low'})\n"
                   "    def test_bound(self, visionstress_card): pass\n",
        test_gate="import pytest\n@pytest.mark.visionstress(gates=['top1:1pp'])\ndef test_gate(visionstress_card): pass\n",
        test_unused="import pytest\n@pytest.mark.visionstress(min={'top1': 0.5})\ndef test_unused(visionstress): pass\n",
        test_fine="def test_fine(): pass\n",
    )
    result = pytester.runpytest("--continue-on-collection-errors")
    result.assert_outcomes(passed=1, errors=5)
    output = result.stdout.str()
    for message in (
        "test_typo.py::test_typo: @pytest.mark.visionstress: unknown keyword 'mn' (known: min, max, gates, alpha,",
        "test_severity.py::test_severity: @pytest.mark.visionstress: min['top1@fog/9']: cell 'top1@fog/9': "
        "severity '9' is not an integer from 1 to 5",
        "test_gate.py::test_gate: @pytest.mark.visionstress: gates=: gate 'top1:1pp': the threshold needs a sign",
        "test_unused.py::test_unused: @pytest.mark.visionstress: it is read by the visionstress_card fixture, "
        "which this test does not use",
        "test_bound.py::TestC::test_bound: @pytest.mark.visionstress: max['ece']: the bound must be a finite number, "
        "got 'low'",
    ):
        assert message in output


def test_baselines_missing_then_written_then_compared(pytester, monkeypatch):
    pytester.makefile(".yaml", tiny=TINY_SUITE)
    pytester.makeini(f"[pytest]\nvisionstress_suite = tiny.yaml\nvisionstress_limit = 100\n"
                     f"visionstress_model = shifted:classifier\nvisionstress_weights = {DEMO_WEIGHTS}\n"
                     f"visionstress_data = {DEMO_DATA}\n")
    pytester.makepyfile(shifted=SHIFTED_MODEL)
    pytester.makepyfile(test_regression="""
        def test_no_regression(visionstress):
            card = visionstress.run(bootstrap=20)
            assert card.dataset["num_samples"] == 24  # the command line's limit wins over the ini's 100
            visionstress.assert_no_regression(card, gates=["top1:-1pp"])
    """)
    args = ("--visionstress-limit", "24")

    missing = pytester.runpytest(*args)
    missing.assert_outcomes(failed=1)
    fingerprint = report(missing.stdout.str()).dataset["fingerprint"][:12]
    name = pytester.path.name  # no pyproject.toml with a [project] name: the rootdir's folder name
    folder = f"tests/visionstress_baselines/{name}/tiny-{fingerprint}"
    missing.stdout.fnmatch_lines([
        f"*visionstress: no baseline for shifted:classifier on dataset {fingerprint} with suite tiny under the "
        f"name {name}: {folder}/scorecard.json does not exist.",
        f"Create it with `pytest --visionstress-update-baselines` (it writes {folder}/), then commit that folder.",
    ])

    update = pytester.runpytest(*args, "--visionstress-update-baselines")
    update.assert_outcomes(passed=1)
    update.stdout.fnmatch_lines([f"baseline written: {folder}"])
    baseline = Scorecard.load(pytester.path / folder)
    assert sorted(p.name for p in (pytester.path / folder).iterdir()) == ["records.parquet", "scorecard.json",
                                                                          "summary.md"]
    assert Path(baseline.records_path) == (pytester.path / folder / "records.parquet").resolve()
    assert len(read_records(baseline.records_path)) == 24 * len(baseline.results)
    assert json.loads((pytester.path / folder / "scorecard.json").read_text())["records_path"] == "records.parquet"

    pytester.runpytest(*args).assert_outcomes(passed=1)  # the same model again: no regression

    monkeypatch.setenv("DEGRADE", "1")
    regressed = pytester.runpytest(*args)
    regressed.assert_outcomes(failed=1)
    old = baseline.metric("top1")
    new = report(regressed.stdout.str()).metric("top1")
    assert new < old - 0.5
    regressed.stdout.fnmatch_lines([
        f"visionstress: significant regression against the baseline {folder} (alpha 0.05):",
        f"  top1:-1pp: top1@clean: {format_value(old, 'top1')} -> {format_value(new, 'top1')} "
        f"({format_delta(new - old, 'top1')}, adjusted p *)",
    ])


def _readme_block(name: str, language: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- plugin-example:{name} -->\n```{language}\n(.*?)```\n<!-- plugin-example:end -->",
                      text, re.DOTALL)
    assert match, f"README.md has no plugin-example:{name} block"
    return match.group(1)


def test_readme_example_runs_green(pytester):
    (pytester.path / "data").symlink_to(REPO / "data")  # the example's paths are relative to the repository
    pytester.makefile(".toml", pyproject=_readme_block("pyproject", "toml") + 'visionstress_limit = "48"\n')
    tests = pytester.mkdir("tests")
    (tests / "test_robustness.py").write_text(_readme_block("tests", "python"), encoding="utf-8")

    written = pytester.runpytest("--visionstress-update-baselines")
    written.assert_outcomes(passed=6)
    written.stdout.fnmatch_lines(["baseline written: tests/visionstress_baselines/shapes/quick-*"])
    cards = {card.task: card for card in reports(written.stdout.str())}
    assert cards["classification"].dataset["num_samples"] == 48
    assert cards["detection"].dataset["num_samples"] == 12  # the marker's limit wins over the ini's
    assert len(list((pytester.path / "tests" / "visionstress_baselines" / "shapes").iterdir())) == 2
    pytester.runpytest().assert_outcomes(passed=6)  # compared with the baselines just written


def test_xdist_workers_share_one_evaluation(pytester):
    pytester.makefile(".yaml", tiny=TINY_SUITE)
    pytester.makeini("[pytest]\nvisionstress_suite = tiny.yaml\nvisionstress_limit = 24\n")
    pytester.makeconftest("""
        import os

        import visionstress.runner

        _run = visionstress.runner.run

        def counting_run(*args, **kwargs):
            with open("runs.log", "a") as log:
                log.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")
            return _run(*args, **kwargs)

        visionstress.runner.run = counting_run
    """)
    pytester.makepyfile(test_shared="""
        import os
        import time

        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_uses_the_shared_card(visionstress, i):
            card = visionstress.run(bootstrap=20)
            assert card.dataset["num_samples"] == 24
            with open(f"asked-{os.environ['PYTEST_XDIST_WORKER']}-{i}", "w"):
                pass
            time.sleep(0.2)  # let the other worker take its share of the tests
    """)
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=6)
    assert len((pytester.path / "runs.log").read_text().split()) == 1
    assert {p.name.split("-")[1] for p in pytester.path.glob("asked-*")} == {"gw0", "gw1"}
    report(result.stdout.str())  # the controller's summary shows the one evaluation the workers reported
