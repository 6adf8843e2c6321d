"""visionstress's pytest plugin (registered through the pytest11 entry point): hooks and fixtures.

It lets a model repository gate its models on robustness the way it gates code on tests: a session
fixture evaluates the model (once per session, however many tests and xdist workers ask), helpers
assert metric thresholds and "no regression against the committed baseline", and a marker carries
per-test thresholds and settings. The plugin is loaded into every pytest run of any environment where
visionstress is installed, so it is inert until a test asks for a fixture: importing it loads neither
torch nor the run machinery, and it adds nothing to a run that does not use it.

The parts: `settings` (every run option as ini key, command-line option and marker keyword),
`marker`, `thresholds`, `baselines` (where they are filed, how they are written, the verdict) and
`session` (the fixture object and its cache).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from visionstress.pytest_plugin.marker import HELP, MarkerSpec, marker_spec
from visionstress.pytest_plugin.session import State, VisionStress
from visionstress.pytest_plugin.settings import Settings, add_options, resolve_settings
from visionstress.pytest_plugin.thresholds import MarkerError, fmt

if TYPE_CHECKING:
    from visionstress.scorecard import Scorecard

__all__ = ["MarkerError", "MarkerSpec", "Settings", "VisionStress"]

_STATE = pytest.StashKey[State]()
_MARK = pytest.StashKey["MarkerSpec | None"]()
_CARD = pytest.StashKey[tuple[VisionStress, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", HELP)


def pytest_sessionstart(session: pytest.Session) -> None:
    # Resolved here rather than at configure time so that a bad setting never breaks `pytest --help`.
    session.config.stash[_STATE] = State(resolve_settings(session.config))


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Any:
    result = yield
    items = result if isinstance(result, list) else [result]
    for item in items:
        if isinstance(item, pytest.Function):
            try:
                item.stash[_MARK] = marker_spec(item)
            except MarkerError as exc:
                raise collector.CollectError(f"{item.nodeid}: @pytest.mark.visionstress: {exc}") from None
    return result


@pytest.fixture(scope="session")
def visionstress(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> VisionStress:
    """Evaluate models with visionstress (`.run()`), assert thresholds (`.assert_metric()`) and check
    for regressions against committed baselines (`.baseline()`, `.assert_no_regression()`)."""
    config = request.config
    base = tmp_path_factory.getbasetemp()
    if hasattr(config, "workerinput"):
        base = base.parent  # xdist workers' temporary folders share the controller's session folder
    session_dir = base / "visionstress"
    session_dir.mkdir(exist_ok=True)
    return VisionStress(config, config.stash[_STATE], session_dir)


@pytest.fixture
def visionstress_card(request: pytest.FixtureRequest, visionstress: VisionStress) -> Scorecard:
    """The scorecard for this test's @pytest.mark.visionstress settings; the marker's min/max/gates
    are enforced after the test body, failing the test with every missed threshold listed."""
    spec = request.node.stash.get(_MARK, None)
    helper = visionstress.with_settings(spec.settings) if spec else visionstress
    card = helper.run()
    request.node.stash[_CARD] = (helper, card)
    return card


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    result = yield
    spec = item.stash.get(_MARK, None)
    checked = item.stash.get(_CARD, None)
    if spec is None or checked is None:
        return result
    helper, card = checked
    helper.enforce(card, spec)
    return result


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is not None and hasattr(session.config, "workeroutput"):
        session.config.workeroutput["visionstress"] = state.to_plain()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist controller: gather what the workers evaluated, wrote and warned about, for the summary."""
    state = node.config.stash.get(_STATE, None)
    sent = getattr(node, "workeroutput", {}).get("visionstress")
    if state is not None and sent:
        state.add_plain(sent)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or hasattr(config, "workerinput") or not (state.evaluations or state.baselines
                                                                or state.warnings):
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "visionstress")
    for e in state.evaluations.values():
        write(f"{e['spec']} on {e['dataset']} ({e['images']} images, fingerprint {e['fingerprint']}), "
              f"suite {e['suite']}")
        write(f"  clean {e['metric']} {fmt(e['clean'])}, mean under perturbation {fmt(e['mean'])}")
        write(f"  report: {e['report']}")
    for path in state.baselines:
        write(f"baseline written: {path}")
    for warning in state.warnings:
        write(f"WARNING {warning}", yellow=True, bold=True)

