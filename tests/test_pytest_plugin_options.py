"""The plugin speaks every run option: ini keys, command-line options and marker keywords are generated
from the option declarations (proved with options declared by the test itself), library messages name
the plugin's spelling of a flag, and inconclusive regression gates fail unless allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin_projects import DEMO_DATA, DEMO_WEIGHTS, TINY_SUITE
from visionstress.options import Option, all_options, register_options, unregister_options
from visionstress.pytest_plugin.baselines import GateVerdict, regression_message
from visionstress.pytest_plugin.settings import translate_flags

pytest_plugins = ["pytester"]

PROBES = (
    Option("probe_level", int, None, "Probe level for the plugin's tests.", tasks=frozenset({"classification"}),
           minimum=0),
    Option("probe_file", Path, None, "A probe file."),
    Option("probe_switch", bool, False, "A probe switch."),
    Option("probe_tags", str, (), "Probe tags.", multiple=True),
)
"""Options declared only while a test runs: the plugin must pick them up without being told."""

RECORDING_RUN = """
import json

import pytest

import visionstress.runner

_run = visionstress.runner.run


def recording_run(**kwargs):
    # Log what the plugin passes to visionstress.run; the probe options exist only in this test.
    with open("run_arguments.json", "a") as log:
        log.write(json.dumps(kwargs, default=str) + "\\n")
    return _run(**{k: v for k, v in kwargs.items() if not k.startswith("probe_")})


@pytest.fixture(autouse=True)
def _record(monkeypatch):
    monkeypatch.setattr(visionstress.runner, "run", recording_run)
"""


@pytest.fixture
def probes():
    register_options(*PROBES)
    yield PROBES
    unregister_options(*(o.name for o in PROBES))


def _run_arguments(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "run_arguments.json").read_text().splitlines()]


def test_every_declared_option_is_an_ini_key_an_option_and_a_marker_keyword(pytester, probes):
    help_text = pytester.runpytest("--help").stdout.str()
    for option in all_options(exposed_only=True):
        flag = "--visionstress-" + option.name.replace("_", "-")
        assert flag in help_text and f"visionstress_{option.name}" in help_text, option.name
    assert "Probe level for the plugin's tests." in help_text
    assert "--visionstress-probe-switch, --no-visionstress-probe-switch" in help_text

    root = pytester.path.resolve()
    pytester.makefile(".yaml", tiny=TINY_SUITE)
    pytester.makeini(f"[pytest]\nvisionstress_suite = tiny.yaml\nvisionstress_limit = 12\n"
                     f"visionstress_bootstrap = 0\nvisionstress_probe_level = 3\nvisionstress_probe_file = sub/a.txt\n"
                     f"visionstress_probe_switch = yes\nvisionstress_probe_tags =\n    red\n    green\n")
    pytester.makeconftest(RECORDING_RUN)
    pytester.makepyfile(test_probe="""
        import pytest

        def test_session_settings(visionstress):
            visionstress.run()

        @pytest.mark.visionstress(probe_level=7, probe_file="other.txt", probe_tags="blue", min={"top1": 0.0})
        def test_marker_settings(visionstress_card):
            pass
    """)
    result = pytester.runpytest("-W", "error::pytest.PytestConfigWarning")  # no "Unknown config option"
    result.assert_outcomes(passed=2)
    session, marked = _run_arguments(root)
    assert session["probe_level"] == 3 and session["probe_switch"] is True
    assert session["probe_file"] == str(root / "sub" / "a.txt") and session["probe_tags"] == ["red", "green"]
    assert marked["probe_level"] == 7 and marked["probe_file"] == str(root / "other.txt")  # the ini's folder
    assert marked["probe_tags"] == ["blue"] and marked["probe_switch"] is True  # unset keys keep the ini's

    (root / "run_arguments.json").unlink()
    pytester.runpytest("--visionstress-probe-level", "5", "--no-visionstress-probe-switch",
                       "--visionstress-probe-tags", "x", "--visionstress-probe-tags", "y",
                       "-k", "session").assert_outcomes(passed=1, deselected=1)
    (cli,) = _run_arguments(root)
    assert cli["probe_level"] == 5 and cli["probe_switch"] is False and cli["probe_tags"] == ["x", "y"]

    bad = pytester.runpytest("--visionstress-probe-level", "-2")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--visionstress-probe-level must be at least 0, got -2" in bad.stderr.str()


def test_a_task_option_is_a_marker_keyword_checked_at_collection(pytester, probes):
    pytester.makepyfile(
        test_fine="import pytest\n@pytest.mark.visionstress(probe_level=2)\ndef test_fine(visionstress_card): pass\n",
        test_low="import pytest\n@pytest.mark.visionstress(probe_level=-1)\ndef test_low(visionstress_card): pass\n",
        test_kind="import pytest\n@pytest.mark.visionstress(probe_switch='maybe')\n"
                  "def test_kind(visionstress_card): pass\n",
    )
    result = pytester.runpytest("--collect-only", "--continue-on-collection-errors")
    output = result.stdout.str()
    assert "<Function test_fine>" in output
    assert "test_low.py::test_low: @pytest.mark.visionstress: probe_level= must be at least 0, got -1" in output
    assert "test_kind.py::test_kind: @pytest.mark.visionstress: probe_switch=: expected true or false, got 'maybe'" \
        in output


def test_library_flags_are_named_the_plugin_way():
    options = {o.name: o for o in (Option("class_names", Path, None), Option("limit", int, None))}
    message = "the model outputs 6 classes; pass --class-names FILE, or --limit 3 (--force is compare's)"
    assert translate_flags(message, options) == (
        "the model outputs 6 classes; pass --visionstress-class-names FILE, or --visionstress-limit 3 "
        "(--force is compare's)\n(in the ini file: visionstress_class_names, visionstress_limit)")
    assert translate_flags("nothing to translate (--force)", options) == "nothing to translate (--force)"


def test_a_run_error_tells_a_pytest_user_the_plugin_s_option(pytester, tmp_path):
    for name in sorted(p.name for p in DEMO_DATA.iterdir()):  # six class folders of unreadable images
        folder = pytester.path / "broken" / name
        folder.mkdir(parents=True)
        (folder / "a.png").write_bytes(b"not a png")
    pytester.makeini(f"[pytest]\nvisionstress_model = visionstress.models.demo:tiny_classifier\n"
                     f"visionstress_weights = {DEMO_WEIGHTS}\nvisionstress_data = broken\n")
    pytester.makepyfile("def test_run(visionstress):\n    visionstress.run()\n")
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "no image could be read (6 skipped); see the reasons with --visionstress-strict" in output
    assert "(in the ini file: visionstress_strict)" in output
    assert " --strict" not in output and "Traceback" not in output


INCONCLUSIVE_JUDGE = """
import pytest

from visionstress.pytest_plugin import baselines


def judge(reference, card, gates, alpha):
    # Stands in for compare's third outcome: the data cannot tell the summary gate's change from noise.
    with open("judged.log", "a") as log:
        log.write(repr(gates) + "\\n")
    return [baselines.GateVerdict("top1@clean:-1pp", "pass"),
            baselines.GateVerdict("top1@summary:-1pp", "inconclusive",
                                  ("  top1@summary:-1pp: top1@mPC -2.0 pp; 180 images needed to tell",))]


@pytest.fixture(autouse=True)
def _judge(monkeypatch):
    monkeypatch.setattr(baselines, "judge", judge)
"""


def test_inconclusive_gates_fail_unless_allowed_loudly(pytester):
    pytester.makefile(".yaml", tiny=TINY_SUITE)
    pytester.makeini(f"[pytest]\nvisionstress_suite = tiny.yaml\nvisionstress_limit = 12\nvisionstress_bootstrap = 0\n"
                     f"visionstress_model = visionstress.models.demo:tiny_classifier\n"
                     f"visionstress_weights = {DEMO_WEIGHTS}\nvisionstress_data = {DEMO_DATA}\n")
    pytester.makeconftest(INCONCLUSIVE_JUDGE)
    pytester.makepyfile(test_gates="""
        import pytest

        def test_default_gates(visionstress):
            visionstress.assert_no_regression(visionstress.run())

        @pytest.mark.visionstress(gates=None, allow_inconclusive=True)
        def test_allowed_by_the_marker(visionstress_card):
            pass
    """)
    pytester.runpytest("--visionstress-update-baselines").assert_outcomes(passed=2)

    failed = pytester.runpytest()
    failed.assert_outcomes(passed=1, failed=1)
    failed.stdout.fnmatch_lines([
        "*visionstress: inconclusive against the baseline tests/visionstress_baselines/*/tiny-* (alpha 0.05); it "
        "fails unless inconclusive gates are allowed (visionstress_allow_inconclusive = true, "
        "--visionstress-allow-inconclusive or the marker's allow_inconclusive=True):",
        "  top1@summary:-1pp: top1@mPC -2.0 pp; 180 images needed to tell",
    ])
    assert (pytester.path / "judged.log").read_text().split("\n")[:2] == ["None", "None"]  # the task's defaults

    for allowed in (pytester.runpytest("--visionstress-allow-inconclusive"),
                    pytester.runpytest("-o", "visionstress_allow_inconclusive=true")):
        allowed.assert_outcomes(passed=2)
        allowed.stdout.fnmatch_lines(["WARNING tests/visionstress_baselines/*/tiny-*: gate top1@summary:-1pp "
                                      "inconclusive, passed because inconclusive gates are allowed"])


def test_a_failed_gate_fails_whether_or_not_inconclusive_ones_are_allowed():
    verdicts = [GateVerdict("top1@clean:-1pp", "fail", ("  top1@clean:-1pp: top1@clean: 80.0% -> 60.0%",)),
                GateVerdict("top1@summary:-1pp", "inconclusive")]
    for allow in (False, True):
        message, warnings = regression_message(verdicts, "b", 0.05, allow)
        assert message.startswith("visionstress: significant regression against the baseline b (alpha 0.05):\n"
                                  "  top1@clean:-1pp: top1@clean: 80.0% -> 60.0%")
        assert ("inconclusive against the baseline" in message) is not allow
        assert len(warnings) == int(allow)
    assert regression_message([GateVerdict("top1@clean:-1pp", "pass")], "b", 0.05, False) == (None, [])
