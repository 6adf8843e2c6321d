"""The one cell-selector grammar `metric[@scope[/severity]]`, shared by compare's gates and the pytest marker."""

from __future__ import annotations

import pytest

from visionstress.cells import CellError, CellSelector, parse_cell


@pytest.mark.parametrize("text, expected", [
    ("top1", CellSelector("top1")),
    ("top1@fog", CellSelector("top1", "fog")),
    ("top1@fog/3", CellSelector("top1", "fog", 3)),
    ("ece@*blur/5", CellSelector("ece", "*blur", 5)),
    ("AP@clean", CellSelector("AP", "clean")),
    ("mIoU@summary", CellSelector("mIoU", "summary")),
    ("top1@primary", CellSelector("top1", "primary")),
    ("top1@mPC", CellSelector("top1", "mPC")),
    ("top1@mPC[blur]", CellSelector("top1", "mPC[blur]")),
    (" top1@* ", CellSelector("top1", "*")),
])
def test_parse(text, expected):
    assert parse_cell(text) == expected
    assert parse_cell(str(expected)) == expected  # round trip


@pytest.mark.parametrize("text, message", [
    ("", "expected METRIC"),
    ("top1@", "expected METRIC"),
    ("top1@fog@3", "expected METRIC"),
    ("top1:fog", "expected METRIC"),
    ("top1@fog/0", "severity '0' is not an integer from 1 to 5"),
    ("top1@fog/x", "severity 'x' is not an integer from 1 to 5"),
    ("top1@clean/3", "not to clean"),
    ("top1@mPC/3", "not to mPC"),
    ("top1@summary/2", "not to summary"),
    (3, "expected a string"),
])
def test_bad_selectors_name_the_problem(text, message):
    with pytest.raises(CellError, match=message) as info:
        parse_cell(text)
    assert repr(text) in str(info.value)


CELLS = [  # (perturbation, severity, summary)
    ("clean", 0, False), ("fog", 1, False), ("fog", 3, False), ("motion_blur", 3, False), ("defocus_blur", 5, False),
    ("mPC", 0, True), ("rPC", 0, True), ("mPC[blur]", 0, True), ("mPC[weather]", 0, True),
]


def _selected(text: str, default: str) -> set[str]:
    selector = parse_cell(text)
    return {f"{p}/{s}" if s else p for p, s, summary in CELLS
            if selector.matches("top1", p, s, summary=summary, default=default)}


@pytest.mark.parametrize("text, default, expected", [
    ("top1", "clean", {"clean"}),  # the marker: no scope is the clean pass
    ("top1", "primary", {"clean", "mPC", "mPC[blur]", "mPC[weather]"}),  # gates: the primary endpoints
    ("top1@clean", "primary", {"clean"}),
    ("top1@*", "primary", {"fog/1", "fog/3", "motion_blur/3", "defocus_blur/5"}),  # every perturbed cell
    ("top1@*blur", "clean", {"motion_blur/3", "defocus_blur/5"}),
    ("top1@*/3", "clean", {"fog/3", "motion_blur/3"}),
    ("top1@fog/3", "clean", {"fog/3"}),
    ("top1@summary", "clean", {"mPC", "rPC", "mPC[blur]", "mPC[weather]"}),
    ("top1@mPC", "clean", {"mPC"}),
    ("top1@rPC", "clean", {"rPC"}),
    ("top1@mPC[blur]", "clean", {"mPC[blur]"}),
    ("top1@mPC[*]", "clean", {"mPC[blur]", "mPC[weather]"}),
    ("top1@primary", "clean", {"clean", "mPC", "mPC[blur]", "mPC[weather]"}),
])
def test_matches(text, default, expected):
    assert _selected(text, default) == expected


def test_matches_checks_the_metric():
    assert not parse_cell("top1@fog").matches("top5", "fog", 3)
    assert parse_cell("top5@fog").matches("top5", "fog", 3)
