"""The HTML page of a comparison: one self-contained file (inline CSS, no scripts) to attach to a review.

Every cell is listed, but only the notable ones (clean, summaries, significant changes, cells that did
not pass a gate, changed perturbations) are open; the rest sit in a collapsed section, so a reviewer
sees what changed first and can still check that nothing else did. Strings from the scorecards are
escaped by jinja2's autoescaping.
"""

from __future__ import annotations

import functools

import jinja2

from visionstress.comparison import Comparison, ComparisonSet, threshold_text

from .compare_view import (PROBE, PROBE_CAPTION, display_rows, gate_mde, method_line, model_label, outcome_word,
                           skew_caption, skew_rows)

TEMPLATE = "compare.html.j2"


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("visionstress.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_compare_html(result: Comparison | ComparisonSet) -> str:
    """The page for one comparison, or several candidates each against the same reference."""
    comparisons = result.comparisons if isinstance(result, ComparisonSet) else [result]
    sections = []
    for c in comparisons:
        shown = display_rows(c, all_cells=False)
        listed = {(r.kind, r.name, r.metric) for r in shown}
        sections.append({
            "candidate": model_label(c.candidate), "candidate_source": c.candidate_source,
            "reference": model_label(c.reference), "reference_source": c.reference_source,
            "passed": c.passed, "has_gates": bool(c.gates),
            "gates": [{"spec": g.spec, "outcome": g.outcome, "word": outcome_word(g), "threshold": threshold_text(g),
                       "mde": gate_mde(g), "checked": g.checked, "message": g.message} for g in c.gates],
            "differences": c.differences, "notes": c.notes, "method": method_line(c),
            "dataset": c.reference.dataset.get("path"), "images": c.images or c.reference.dataset.get("num_samples"),
            "suite": c.reference.suite.get("name"), "seed": c.reference.seed,
            "summaries": [r for r in shown if r.kind == "summary"],
            "probes": [r for r in shown if r.kind == PROBE], "probe_caption": PROBE_CAPTION,
            "notable": [r for r in shown if r.kind == "cell"],
            "others": [r for r in display_rows(c, all_cells=True) if (r.kind, r.name, r.metric) not in listed],
            "skew": skew_rows(c), "skew_metric": None if c.skew is None else c.skew.metric,
            "skew_caption": skew_caption(c),
        })
    return _environment().get_template(TEMPLATE).render(sections=sections, passed=result.passed)
