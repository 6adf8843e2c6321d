"""Oracle predictions for run-level tests: every prediction of a real `visionstress.run` replaced by one
built from the batch itself (e.g. the ground truth as the pass moved it), everything else unchanged."""

from __future__ import annotations

import visionstress.runner as runner_module
from visionstress.engine import stream_passes


def route_predictions(monkeypatch, make_prediction) -> None:
    """Route every prediction through `make_prediction(view, original)`: `view` is the batch as the pass
    perturbed it (targets moved), `original` the batch as loaded."""

    def patched(batches, passes, predict, consume, device, seed, timing, on_batch=None, on_pass=None):
        loaded = {}

        def remember(batch, extra):
            loaded["batch"] = batch.to(device)
            if on_batch is not None:
                on_batch(batch, extra)

        def oracle_consume(p, view, prediction):
            consume(p, view, make_prediction(view, loaded["batch"]))

        stream_passes(batches, passes, predict, oracle_consume, device, seed, timing, on_batch=remember,
                      on_pass=on_pass)

    monkeypatch.setattr(runner_module, "stream_passes", patched)


def geometric_suite_file(path, names, severities) -> None:
    """A suite of the geometric perturbations `names` at `severities`, plus brightness 5: a pass that
    moves nothing, where moved and unmoved targets must score alike."""
    items = "\n".join(f"  - {{name: {name}, severities: {list(severities)}}}" for name in names)
    path.write_text(f"name: geometric\nseed: 3\nperturbations:\n{items}\n  - {{name: brightness, severities: [5]}}\n")
