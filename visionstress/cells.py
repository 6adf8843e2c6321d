"""The one grammar for naming cells of a scorecard: `metric[@scope[/severity]]`.

A scorecard is a table of metrics by pass (the clean pass, each perturbation x severity) plus the
robustness summaries of the main metric (mPC, rPC, mPC per family). Compare's gates
(`top1@*blur:-2pp`) and the pytest marker's bounds (`min={'top1@fog/3': 0.5}`) both need to say which
of those cells they mean; they parse it here, so the two never drift apart.

Scope:
- absent: the caller decides (`default=`): the marker means the clean pass, compare's gates mean
  the primary endpoints;
- `clean`: the clean pass;
- `primary`: the pre-declared primary endpoints, the clean pass, mPC and mPC of each family;
- `summary`: every summary (mPC, rPC, mPC[family]);
- a summary name, `mPC`, `rPC` or `mPC[family]` (`mPC[*]`: every family's);
- anything else: a glob over perturbation names (`*` is every perturbation, never the clean pass),
  optionally at one severity `/1` .. `/5`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

CLEAN = "clean"
PRIMARY = "primary"
SUMMARY = "summary"
SUMMARY_NAMES = ("mPC", "rPC")
"""Summary cells are named `mPC`, `rPC` and `mPC[family]`."""
SCOPE_WORDS = (CLEAN, PRIMARY, SUMMARY)

_CELL = re.compile(r"^(?P<metric>[^@:/\s]+)(?:@(?P<scope>[^@:/\s]+)(?:/(?P<severity>[^@:/\s]*))?)?$")


class CellError(ValueError):
    """A cell selector that does not parse; the message quotes it and says what is wrong."""


@dataclass(frozen=True)
class CellSelector:
    """A parsed `metric[@scope[/severity]]`; `scope` is None when the text gave none."""

    metric: str
    scope: str | None = None
    severity: int | None = None

    def __str__(self) -> str:
        scope = "" if self.scope is None else f"@{self.scope}"
        return f"{self.metric}{scope}" + ("" if self.severity is None else f"/{self.severity}")

    @property
    def is_summary_scope(self) -> bool:
        """Whether the scope names summaries only (`summary`, `mPC`, `rPC[...]`, ...)."""
        return self.scope == SUMMARY or _summary_name(self.scope)

    def matches(self, metric: str, perturbation: str, severity: int = 0, *, summary: bool = False,
                default: str = CLEAN) -> bool:
        """Whether the cell `metric` of `perturbation` at `severity` is selected; a summary cell passes
        `summary=True` with its name (`mPC`, `mPC[blur]`) as `perturbation`. `default` is the scope to
        use when the selector has none (a scope word, a summary name or a glob)."""
        if metric != self.metric:
            return False
        scope = self.scope if self.scope is not None else default
        if scope == CLEAN:
            return not summary and perturbation == CLEAN
        if scope == PRIMARY:
            return (perturbation == CLEAN) if not summary else (perturbation == "mPC" or
                                                                 perturbation.startswith("mPC["))
        if scope == SUMMARY:
            return summary
        if _summary_name(scope):
            if not summary:
                return False
            return perturbation.startswith("mPC[") if scope == "mPC[*]" else perturbation == scope
        if summary or perturbation == CLEAN:
            return False
        return fnmatch.fnmatchcase(perturbation, scope) and (self.severity is None or severity == self.severity)


def parse_cell(text: str) -> CellSelector:
    """Parse `metric[@scope[/severity]]` (see the module docstring); CellError says what is wrong."""
    if not isinstance(text, str):
        raise CellError(f"cell {text!r}: expected a string METRIC[@SCOPE[/SEVERITY]], e.g. 'top1@fog/3'")
    match = _CELL.match(text.strip())
    if match is None:
        raise CellError(f"cell {text!r}: expected METRIC[@SCOPE[/SEVERITY]], e.g. 'top1', 'top1@fog/3', "
                        f"'top1@*blur' or 'top1@mPC'")
    metric, scope, severity_text = match.group("metric", "scope", "severity")
    severity = None
    if severity_text is not None:
        if scope in SCOPE_WORDS or _summary_name(scope):
            raise CellError(f"cell {text!r}: a severity applies to a perturbation, not to {scope}")
        if not severity_text.isdigit() or not 1 <= int(severity_text) <= 5:
            raise CellError(f"cell {text!r}: severity {severity_text!r} is not an integer from 1 to 5")
        severity = int(severity_text)
    return CellSelector(metric, scope, severity)


def _summary_name(scope: str | None) -> bool:
    return scope is not None and (scope in SUMMARY_NAMES or (scope.startswith("mPC[") and scope.endswith("]")))
