"""Every perturbation's output is pinned to its implementation `version`.

A committed table (perturbation_versions.json) holds, per perturbation, its version and a fingerprint
of its output at every severity (seed 0) on a fixed small uint8 batch with boxes, instance masks and a
semantic mask. Changing what a perturbation outputs without bumping its `version` fails here, because
scorecards record versions and `compare` trusts them to tell an implementation change from a model
regression.

The fingerprint is a few integer sums of the uint8 output (plain and with pseudo-random signs) and of
the moved targets, compared with a small tolerance: float rounding that differs between machines can
flip a handful of values by one level, while any real change moves the signed sums by far more.

After a deliberate change: bump `version` where the perturbation is defined, then rewrite the table with
`python tests/test_perturbation_versions.py` (it refuses to record a changed output under an old version).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import visionstress as vs
from visionstress.perturbations import Perturbation, get_perturbation, list_perturbations
from visionstress.rng import hash32

TABLE = Path(__file__).with_name("perturbation_versions.json")
FIELDS = ("image_sum", "image_signed", "boxes", "box_sum", "box_signed", "area_sum",
          "semantic_sum", "semantic_signed", "instance_sum", "instance_signed")
H, W = 24, 32


def _tolerance(field: str) -> float:
    """How far a fingerprint field may move from float noise alone (a few values flipped by one level)."""
    if field.startswith("image"):
        return 12.0  # ~0.25% of the 4608 channel values off by one level
    if field.startswith("semantic"):
        return 3.0 * 6  # six nearest-neighbour pixels changing class (labels 0..3)
    if field.startswith("instance"):
        return 6.0
    if field == "boxes":
        return 0.0
    return 0.05  # box coordinates and areas, in pixels


def _signs(n: int) -> torch.Tensor:
    return (hash32(torch.arange(n, dtype=torch.int64)) & 1).to(torch.float64) * 2 - 1


def fingerprint_batch() -> vs.Batch:
    """Two 24x32 uint8 images built with integer arithmetic only (identical on every machine): a
    gradient, a bright rectangle, a dark disc and hashed texture, with two objects each (image 0 with
    instance masks, image 1 with boxes only), a semantic mask and a foreground mask."""
    ys = torch.arange(H).view(H, 1)
    xs = torch.arange(W).view(1, W)
    images = []
    for b in range(2):
        channels = []
        for c in range(3):
            base = 40 + 5 * xs + 4 * ys + 30 * c + 20 * b
            base = torch.where((xs >= 6) & (xs < 16) & (ys >= 4) & (ys < 12), base + 90, base)
            disc = (xs - 22 - b) ** 2 + (ys - 15) ** 2 <= 25
            base = torch.where(disc, base // 3, base)
            texture = hash32((ys * W + xs + 1000 * c + 5000 * b).to(torch.int64)) % 25 - 12
            channels.append((base + texture).clamp(0, 255))
        images.append(torch.stack(channels))
    images = torch.stack(images).to(torch.uint8)
    rect = (xs >= 6) & (xs < 16) & (ys >= 4) & (ys < 12)
    disc = (xs - 22) ** 2 + (ys - 15) ** 2 <= 25
    boxes = [
        vs.ObjectTargets(boxes=[[6.0, 4.0, 16.0, 12.0], [17.0, 10.0, 28.0, 21.0]], labels=[1, 2],
                         masks=torch.stack([rect, disc]), area=[80.0, 81.0]),
        vs.ObjectTargets(boxes=[[6.0, 4.0, 16.0, 12.0], [18.0, 10.0, 29.0, 21.0]], labels=[1, 2],
                         area=[80.0, 81.0]),
    ]
    semantic = (rect.long() + 2 * disc.long()).expand(2, H, W).clone()
    return vs.Batch(images, sample_ids=torch.tensor([3, 12]), labels=torch.tensor([0, 1]), boxes=boxes,
                    masks=semantic, foreground=(rect | disc).expand(2, H, W).clone())


def fingerprintable(p: Perturbation) -> bool:
    """Whether `p` can run on the fixed batch alone: not model-aware, and no prepare phase to fit."""
    return p.kind != "model-aware" and type(p).prepare is Perturbation.prepare


def builtin_names() -> list[str]:
    """The registered perturbations the table covers (names starting with `_` are test-only toys)."""
    return [n for n in list_perturbations() if not n.startswith("_") and fingerprintable(get_perturbation(n))]


def fingerprint(p: Perturbation) -> list[list[float]]:
    """One row of FIELDS per severity (seed 0), CPU."""
    batch = fingerprint_batch()
    if batch.target_kinds - p.targets:  # a perturbation that refuses some targets runs on the images alone
        batch = vs.Batch(batch.images, sample_ids=batch.sample_ids, foreground=batch.foreground)
    rows = []
    for severity in range(1, len(p.severities) + 1):
        out = p(batch, severity=severity, seed=0)
        pixels = out.images.to(torch.float64).flatten()
        row = [pixels.sum(), (pixels * _signs(pixels.numel())).sum()]
        if out.boxes is not None:
            coords = torch.cat([t.boxes.flatten() for t in out.boxes]).to(torch.float64)
            areas = torch.cat([t.area for t in out.boxes if t.area is not None]).to(torch.float64)
            instance = torch.cat([t.masks.flatten() for t in out.boxes if t.masks is not None]).to(torch.float64)
            row += [coords.numel() / 4, coords.sum(), (coords * _signs(coords.numel())).sum(), areas.sum()]
        else:
            instance = torch.zeros(0, dtype=torch.float64)
            row += [0, 0, 0, 0]
        semantic = torch.zeros(0) if out.masks is None else out.masks.flatten()
        semantic = torch.where(semantic == batch.ignore_index, 3, semantic).to(torch.float64)
        row += [semantic.sum(), (semantic * _signs(semantic.numel())).sum(),
                instance.sum(), (instance * _signs(instance.numel())).sum()]
        rows.append([round(float(v), 3) for v in row])
    return rows


def _dependency(p: Perturbation) -> dict[str, str]:
    """Third-party code a perturbation's output depends on, recorded beside its row."""
    from visionstress.perturbations.albumentations import AlbumentationsPerturbation

    if isinstance(p, AlbumentationsPerturbation):
        import albumentations

        return {"albumentations": albumentations.__version__}
    return {}


def _differences(recorded: list[list[float]], now: list[list[float]]) -> list[str]:
    if len(recorded) != len(now):
        return [f"{len(recorded)} severities recorded, {len(now)} now"]
    out = []
    for severity, (a, b) in enumerate(zip(recorded, now), start=1):
        for field, x, y in zip(FIELDS, a, b):
            if abs(x - y) > _tolerance(field):
                out.append(f"severity {severity} {field}: {x} recorded, {y} now")
    return out


def _load() -> dict:
    return json.loads(TABLE.read_text())


@pytest.mark.parametrize("name", builtin_names())
def test_output_matches_its_version(name):
    p = get_perturbation(name)
    table = _load()
    assert name in table, (f"{name} has no row in {TABLE.name}: run `python tests/test_perturbation_versions.py` "
                           f"to add it")
    row = table[name]
    for package, version in row.get("depends_on", {}).items():
        if _dependency(p).get(package) != version:
            pytest.skip(f"{name}'s row was recorded with {package} {version}")
    changed = _differences(row["fingerprint"], fingerprint(p))
    if row["version"] == p.version:
        assert not changed, (f"{name} (version {p.version}) changed its output: " + "; ".join(changed[:4])
                             + f". Bump `version` of {name} and update the table "
                               f"(`python tests/test_perturbation_versions.py`).")
    else:
        pytest.fail(f"{name} is version {p.version} but the table records version {row['version']}: "
                    f"update the table (`python tests/test_perturbation_versions.py`)")


def test_table_has_no_stale_rows():
    stale = sorted(set(_load()) - set(builtin_names()))
    assert not stale, f"rows for perturbations that are not registered: {stale}; rewrite the table"


def test_fingerprint_sees_a_small_change():
    """The check is not vacuous: one more percent of brightness moves the fingerprint past tolerance."""
    from visionstress.perturbations import PhotometricPerturbation

    def make(gain):
        return PhotometricPerturbation(lambda x, params, level: x * level, name="_fp", family="test",
                                       severities=(gain,) * 5, description="test")

    assert _differences(fingerprint(make(0.90)), fingerprint(make(0.90))) == []
    assert _differences(fingerprint(make(0.90)), fingerprint(make(0.91)))


def _format(table: dict) -> str:
    """JSON with one line per perturbation header and per severity, so diffs show what changed."""
    entries = []
    for name in sorted(table):
        row = table[name]
        head = {k: v for k, v in row.items() if k != "fingerprint"}
        lines = ",\n    ".join(json.dumps(r) for r in row["fingerprint"])
        entries.append(f' {json.dumps(name)}: {{{json.dumps(head)[1:-1]}, "fingerprint": [\n    {lines}]}}')
    return "{\n" + ",\n".join(entries) + "\n}\n"


def update_table() -> int:
    """Rewrite the table; refuse to record a changed output under an unchanged version."""
    old = _load() if TABLE.exists() else {}
    new, refused = {}, []
    for name in builtin_names():
        p = get_perturbation(name)
        rows = fingerprint(p)
        previous = old.get(name)
        if previous is not None and previous["version"] == p.version and previous.get("depends_on", {}) == _dependency(p):
            changed = _differences(previous["fingerprint"], rows)
            if changed:
                refused.append(f"{name}: output changed under version {p.version} ({changed[0]}); bump its `version`")
            new[name] = previous  # unchanged (or refused): keep the recorded row
            continue
        new[name] = {"version": p.version, **({"depends_on": _dependency(p)} if _dependency(p) else {}),
                     "fingerprint": rows}
    TABLE.write_text(_format(new))
    for line in refused:
        print(line, file=sys.stderr)
    return 1 if refused else 0


if __name__ == "__main__":
    raise SystemExit(update_table())
