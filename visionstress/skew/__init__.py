"""Preprocessing skew: the matrix of ways serving differs from training, and serving parity.

`skew(...)` (the `visionstress skew` command) scores a model under its declared preprocessing (the
reference cell) and under cells that change one knob of it (decoder, resize backend, interpolation,
crop, input size, channel order, normalisation, JPEG re-encoding, EXIF orientation) with the real
libraries; `run_skew(...)` does the same with an already-loaded model and dataset (`visionstress run
--skew`); `check_serving_parity(...)` compares the user's serving path with the reference.
"""

from visionstress.skew.cells import COMBINATIONS, KNOBS, Cell, Recipe, SkewError, parse_cell, read_cells_file
from visionstress.skew.parity import Disagreement, ParityResult
from visionstress.skew.run import SkewResult, cell_input, check_serving_parity, run_skew, skew
from visionstress.skew.tasks import CellStatistics, SkewTask

__all__ = ["COMBINATIONS", "KNOBS", "Cell", "CellStatistics", "Disagreement", "ParityResult", "Recipe", "SkewError",
           "SkewResult", "SkewTask", "cell_input", "check_serving_parity", "parse_cell", "read_cells_file", "run_skew", "skew"]
