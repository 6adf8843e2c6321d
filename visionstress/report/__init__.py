"""Rendering of scorecards: the self-contained HTML report (and its screenshot)."""
