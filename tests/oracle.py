"""Oracle predictions for run-level tests: every prediction of a real `visionstress.run` replaced by one
built from the batch itself (e.g. the ground truth as the pass moved it), everything else unchanged."""

from __future__ import annotations

from visionstress.engine import Loop


def route_predictions(monkeypatch, make_prediction) -> None:
    """Route every prediction through `make_prediction(view, original)`: `view` is the batch as the pass
    perturbed it (targets moved), `original` the batch as loaded (on the device)."""
    one = Loop._one

    def patched(self, p, batch, host_ids):
        view, predictions, events = one(self, p, batch, host_ids)
        if view is None:
            return view, predictions, events
        original = batch if len(view) == len(batch) else batch.select(
            [i for i, s in enumerate(batch.sample_ids.tolist()) if s in set(view.sample_ids.tolist())])
        return view, make_prediction(view, original), events

    monkeypatch.setattr(Loop, "_one", patched)


def geometric_suite_file(path, names, severities) -> None:
    """A suite of the geometric perturbations `names` at `severities`, plus brightness 5: a pass that
    moves nothing, where moved and unmoved targets must score alike."""
    items = "\n".join(f"  - {{name: {name}, severities: {list(severities)}}}" for name in names)
    path.write_text(f"name: geometric\nseed: 3\nperturbations:\n{items}\n  - {{name: brightness, severities: [5]}}\n")
