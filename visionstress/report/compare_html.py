"""The HTML page of a comparison: one self-contained file (inline CSS, no scripts) to attach to a review.

Every cell is listed, but only the notable ones (clean, summaries, significant changes, gate
failures) are open; the rest sit in a collapsed section, so a reviewer sees what changed first and
can still check that nothing else did. Strings from the scorecards are escaped by jinja2's
autoescaping.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jinja2

if TYPE_CHECKING:
    from visionstress.comparison import Comparison

TEMPLATE = "compare.html.j2"


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("visionstress.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_compare_html(comparisons: Sequence[Comparison]) -> str:
    """The page for one or more comparisons (each candidate against the same reference)."""
    from visionstress.comparison import display_rows, gate_lines, model_label

    sections = []
    for c in comparisons:
        shown = display_rows(c, all_cells=False)
        listed = {(r.kind, r.perturbation, r.severity, r.metric) for r in shown}
        sections.append({
            "candidate": model_label(c.candidate), "candidate_source": c.candidate_source,
            "reference": model_label(c.reference), "reference_source": c.reference_source,
            "passed": c.passed, "has_gates": bool(c.gates), "gates": gate_lines(c),
            "differences": c.differences, "notes": c.notes, "alpha": c.alpha, "bootstrap": c.bootstrap,
            "dataset": c.reference.dataset.get("path"), "num_samples": c.reference.dataset.get("num_samples"),
            "suite": c.reference.suite.get("name"), "seed": c.reference.seed,
            "summaries": [r for r in shown if r.kind == "summary"],
            "notable": [r for r in shown if r.kind != "summary"],
            "others": [r for r in display_rows(c, all_cells=True)
                       if (r.kind, r.perturbation, r.severity, r.metric) not in listed],
        })
    return _environment().get_template(TEMPLATE).render(
        sections=sections, passed=all(c.passed for c in comparisons))
