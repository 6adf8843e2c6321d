"""How a comparison is shown: display rows (shared by the terminal table, Markdown and HTML), the gate
lines and the Markdown page.

Every value is formatted by the metric registry (`visionstress.metrics`), so a fraction reads as a
percentage and its change in percentage points wherever it appears. This module imports
`visionstress.comparison`; the comparison package never imports the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from visionstress.cells import CLEAN, SUMMARY
from visionstress.comparison import BACKGROUND_GAP, Comparison, ComparisonSet, GateResult, format_p, threshold_text
from visionstress.metrics import find_metric, format_delta, format_value
from visionstress.scorecard import Scorecard

_MARK = {"fail": "✗", "inconclusive": "?"}
PROBE = "probe"
PROBE_CAPTION = ("bg_gap: the metric under mixed_same (the object on another image of its class's background) "
                 "minus under mixed_rand (on a random image's background), Xiao et al. 2020; a larger gap leans "
                 "more on the background. texture_fill shape_bias: shape decisions / (shape + texture decisions) "
                 "on cue-conflict images, Geirhos et al. 2019. Paired bootstrap over the shared images; "
                 "descriptive, no gate reads them.")


@dataclass
class DisplayRow:
    """A compared cell as every output shows it: formatted values, significance and gate marks.

    `tone` is "better" or "worse" for a significant change (by the metric's direction), "" otherwise;
    `gate` lists the gates this cell failed (✗) or left inconclusive (?); `changed` says why its
    perturbation differs between the runs.
    """

    kind: str
    name: str
    perturbation: str
    severity: str
    metric: str
    old: str
    new: str
    delta: str
    ci: str
    p: str
    p_adjusted: str
    mde: str
    test: str
    significant: str
    gate: str
    tone: str
    changed: str


def model_label(card: Scorecard) -> str:
    """How a run is named in the outputs: its model spec and weights file."""
    weights = card.model.get("weights")
    return f"{card.model.get('spec')}" + (f" ({Path(weights).name})" if weights else "")


def display_rows(comparison: Comparison, all_cells: bool = False) -> list[DisplayRow]:
    """Summaries, the background gap (kind "probe"), then cells: the clean ones and those that changed
    significantly, are gated with a non-passing outcome or whose perturbation changed (every cell with
    `all_cells`)."""
    task = comparison.reference.task
    marks: dict[int, list[str]] = {}
    for gate in comparison.gates:
        for verdict in gate.cells:
            if verdict.outcome in _MARK:
                marks.setdefault(id(verdict.cell), []).append(f"{_MARK[verdict.outcome]} {gate.spec}")
    rows = []
    for kind, cells in ((SUMMARY, comparison.summaries), (PROBE, comparison.probes), ("cell", comparison.cells)):
        for c in cells:
            notable = kind != "cell" or c.perturbation == CLEAN or c.significant or id(c) in marks or c.changed
            if not (all_cells or notable):
                continue
            tone = ""
            info = find_metric(c.metric, task)
            if c.significant and math.isfinite(c.delta) and c.delta != 0 and info is not None:
                # a larger background gap is more reliance on the background, whatever the metric's direction
                tone = ("worse" if c.delta > 0 else "better") if c.perturbation == BACKGROUND_GAP else \
                    ("worse" if info.worse(c.delta) else "better")
            ratio = c.perturbation == "rPC"  # a ratio of the main metric, not the metric itself
            value = (lambda v: "–" if not math.isfinite(v) else f"{v:.3f}") if ratio else \
                (lambda v: format_value(v, c.metric, task))
            delta = (lambda v: "–" if v is None or not math.isfinite(v) else f"{v:+.3f}") if ratio else \
                (lambda v: format_delta(v, c.metric, task))
            ci = "–" if c.ci_delta is None else f"{delta(c.ci_delta[0])} … {delta(c.ci_delta[1])}"
            name = c.perturbation if kind != "cell" or c.perturbation == CLEAN else f"{c.perturbation}@{c.severity}"
            rows.append(DisplayRow(
                kind=kind, name=name, perturbation=c.perturbation, severity="" if kind != "cell" else str(c.severity),
                metric=c.metric, old=value(c.old), new=value(c.new), delta=delta(c.delta), ci=ci, p=format_p(c.p_value),
                p_adjusted=format_p(c.p_adjusted), mde="–" if c.mde is None else delta(c.mde).lstrip("+"),
                test=c.test, significant="untested" if c.significant is None else ("✓" if c.significant else ""),
                gate=", ".join(marks.get(id(c), [])), tone=tone, changed="perturbation changed" if c.changed else ""))
    return rows


@dataclass
class SkewRow:
    """A preprocessing-skew cell in both models, formatted: the cell's metric in each, each model's change
    from its own reference, the difference of the changes, each model's agreement with its reference.
    Nothing is marked better or worse: no test across models stands behind the difference."""

    cell: str
    old: str
    new: str
    old_delta: str
    new_delta: str
    difference: str
    old_agreement: str
    new_agreement: str


def skew_rows(comparison: Comparison) -> list[SkewRow]:
    """The cells of both skew sections, the candidate's largest extra loss first."""
    diff = comparison.skew
    if diff is None:
        return []
    task, metric = diff.task, diff.metric

    rows = []
    for c in sorted(diff.cells, key=lambda c: c.difference if math.isfinite(c.difference) else math.inf):
        rows.append(SkewRow(
            cell=f"{c.label} ({c.cell})" if c.label else c.cell, old=format_value(c.old, metric, task),
            new=format_value(c.new, metric, task),
            old_delta=format_delta(c.old_delta, metric, task) + ("*" if c.old_significant else ""),
            new_delta=format_delta(c.new_delta, metric, task) + ("*" if c.new_significant else ""),
            difference=format_delta(c.difference, metric, task), old_agreement=_percent(c.old_agreement),
            new_agreement=_percent(c.new_agreement)))
    return rows


def skew_caption(comparison: Comparison) -> str:
    """What the skew table shows, with each model's reference value and the cells only one side has."""
    diff = comparison.skew
    if diff is None:
        return ""
    task, metric = diff.task, diff.metric
    old, new = format_value(diff.old_reference, metric, task), format_value(diff.new_reference, metric, task)
    parts = [f"Each model's change of {metric} from its own reference preprocessing ({old} → {new}) under "
             f"each cell, and the difference of the changes "
             f"(candidate − reference model: negative means the candidate loses more under that cell); * marks a "
             f"change significant in that model's own skew run. Descriptive: no test across models."]
    if diff.only_reference:
        parts.append(f"Only in the reference model's run: {', '.join(diff.only_reference)}.")
    if diff.only_candidate:
        parts.append(f"Only in the candidate's run: {', '.join(diff.only_candidate)}.")
    parts += [f"Note: {n}." for n in diff.notes]
    return " ".join(parts)


def _percent(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{100 * value:.1f}%"


def outcome_word(gate: GateResult) -> str:
    """PASS, FAIL, INCONCLUSIVE or, when inconclusive gates are allowed, INCONCLUSIVE (allowed)."""
    word = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}[gate.outcome]
    return word + (" (allowed)" if gate.outcome == "inconclusive" and gate.allowed else "")


def gate_line(gate: GateResult) -> str:
    """`PASS|FAIL|INCONCLUSIVE spec: why`, with the threshold and the minimum detectable effect."""
    return f"{outcome_word(gate)} {gate.spec}: {gate.message}"


def gate_lines(comparison: Comparison) -> list[str]:
    """One verdict line per gate."""
    return [gate_line(g) for g in comparison.gates]


def comparison_markdown(result: Comparison | ComparisonSet, all_cells: bool = False) -> str:
    """A review-ready summary per candidate: verdict, gates (threshold and MDE), summaries, then the clean
    cells and those that changed significantly or did not pass a gate (every cell with `all_cells`)."""
    comparisons = result.comparisons if isinstance(result, ComparisonSet) else [result]
    return "\n".join(_markdown(c, all_cells) for c in comparisons)


def _markdown(comparison: Comparison, all_cells: bool) -> str:
    ref, cand = comparison.reference, comparison.candidate
    verdict = "PASSED" if comparison.passed else "FAILED"
    count = len(comparison.gates)
    lines = [f"# visionstress compare: {model_label(cand)} vs {model_label(ref)}", "",
             f"**{verdict}**" + (f" ({count} gate{'s' if count != 1 else ''})" if count else " (no gates)"), "",
             f"- reference: `{comparison.reference_source}`: {model_label(ref)}, sha256 "
             f"`{str(ref.model.get('sha256') or 'n/a')[:12]}`, created {ref.created}",
             f"- candidate: `{comparison.candidate_source}`: {model_label(cand)}, sha256 "
             f"`{str(cand.model.get('sha256') or 'n/a')[:12]}`, created {cand.created}",
             f"- {comparison.images or ref.dataset.get('num_samples')} paired images of {ref.dataset.get('path')}, "
             f"suite {ref.suite.get('name')}, seed {ref.seed}; {method_line(comparison)}"]
    for difference in comparison.differences:
        lines.append(f"- compared despite: {difference}")
    for note in comparison.notes:
        lines.append(f"- note: {note}")
    if comparison.gates:
        lines += ["", "## Gates", "", "| gate | outcome | threshold | MDE (80% power) | cells | why |",
                  "|---|---|---:|---:|---:|---|"]
        for g in comparison.gates:
            lines.append(f"| `{g.spec}` | {outcome_word(g)} | {threshold_text(g)} | {gate_mde(g)} | {g.checked} | "
                         f"{_escape(g.message)} |")
    rows = display_rows(comparison, all_cells)
    header = ["| {} | metric | old | new | Δ | CI of Δ | p | p (Holm) | MDE | test | significant | gate |",
              "|---|---|---:|---:|---:|---|---:|---:|---:|---|---|---|"]
    summary_rows = [r for r in rows if r.kind == SUMMARY]
    if summary_rows:
        lines += ["", "## Summaries", "", header[0].format("summary"), header[1]]
        lines += [_md_row(r) for r in summary_rows]
    probe_rows = [r for r in rows if r.kind == PROBE]
    if probe_rows:
        lines += ["", "## Background reliance", "", PROBE_CAPTION, "", header[0].format("probe"), header[1]]
        lines += [_md_row(r) for r in probe_rows]
    cell_rows = [r for r in rows if r.kind == "cell"]
    hidden = len(comparison.cells) - len(cell_rows)
    title = "All cells" if all_cells else "Clean, and the cells that changed significantly or did not pass a gate"
    lines += ["", f"## {title}", "", header[0].format("cell"), header[1]]
    lines += [_md_row(r) for r in cell_rows]
    if hidden:
        lines += ["", f"{hidden} other cells show no significant change (all of them: `--all`, or the JSON)."]
    skew = skew_rows(comparison)
    if skew:
        metric = comparison.skew.metric
        lines += ["", f"## Preprocessing skew ({metric})", "", skew_caption(comparison), "",
                  f"| cell | {metric} old | {metric} new | Δ from reference, old | Δ from reference, new | difference | "
                  "agreement old | agreement new |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| `{r.cell}` | {r.old} | {r.new} | {r.old_delta} | {r.new_delta} | {r.difference} | "
                  f"{r.old_agreement} | {r.new_agreement} |" for r in skew]
    return "\n".join(lines) + "\n"


def method_line(comparison: Comparison) -> str:
    """How significance and power were decided, in one sentence."""
    return (f"paired tests (exact McNemar for per-image yes/no metrics, {comparison.bootstrap} paired bootstrap "
            f"resamples otherwise); significant: Holm-adjusted p < {comparison.alpha:g} over the cells of each "
            f"metric (a gate: over its own cells); MDE: the smallest change detectable at that level with 80% power")


def gate_mde(gate: GateResult) -> str:
    """The gate's largest minimum detectable effect, in the metric's units."""
    if gate.mde is None:
        return "–"
    return "∞" if math.isinf(gate.mde) else format_delta(gate.mde, gate.metric).lstrip("+")


def _md_row(r: DisplayRow) -> str:
    mark = {"better": " ▲", "worse": " ▼"}.get(r.tone, "")
    name = r.name + (" (perturbation changed)" if r.changed else "")
    return (f"| {name} | {r.metric} | {r.old} | {r.new} | {r.delta}{mark} | {r.ci} | {r.p} | {r.p_adjusted} | "
            f"{r.mde} | {r.test} | {r.significant} | {r.gate} |")


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
