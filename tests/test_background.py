"""Background swaps and the shape-versus-texture probe (issue 11): the perturbations, the bank, the
summaries on hand-made models, and object masks from each task's annotations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import visionstress as vs
from visionstress.evaluators.reliance import background_summary, cue_summary, texture_classes
from visionstress.perturbations import get_perturbation, list_perturbations
from visionstress.perturbations.background import (BANK_FILE, BackgroundBank, choose_donors, collect_bank,
                                                   dilate, object_boxes, tile_fill)

import reliance_data as rd

BACKGROUND = ("only_fg", "no_fg", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")
FOREGROUND_NEEDING = sorted(n for n in list_perturbations() if get_perturbation(n).needs_foreground)
ALL_PASSES = [(n, 1) for n in BACKGROUND] + [("patch_shuffle", 3), ("silhouette", 1), ("edges", 1),
                                             ("texture_fill", 1)]


# ---- the summaries on models that read one cue each ---------------------------------------------------


@pytest.fixture(scope="module")
def correlated(tmp_path_factory):
    """Background and class fully correlated: every class on its own background colour."""
    return rd.write_dataset(tmp_path_factory.mktemp("correlated"), per_class=8)


def test_background_reader_has_the_largest_gap_and_fails_on_the_object_alone(correlated, tmp_path):
    records, _, context = rd.drive(rd.BackgroundReader(), *correlated, ALL_PASSES[:6], tmp_path)
    summary = background_summary(context)
    chance = summary["chance"]
    assert summary["clean"] == 1.0 and summary["mixed_same"] == 1.0
    # the gap's maximum is mixed_same (1) minus what a random background gives (chance)
    assert summary["bg_gap"] >= 1.0 - chance - 0.15
    assert summary["bg_gap_ci"][0] > 0.4 and summary["bg_gap_ci"][0] <= summary["bg_gap"] <= summary["bg_gap_ci"][1]
    assert abs(summary["only_fg"] - chance) <= 0.1
    assert summary["only_bg_t"] == 1.0 and summary["no_fg"] == 1.0  # the background alone suffices
    assert summary["only_bg_t_above_chance"] == pytest.approx(1.0 - chance)
    assert summary["mixed_next"] == 0.0  # always the next class's background
    assert set(records["perturbation"]) == {"clean", *BACKGROUND}


def test_object_reader_has_no_gap_and_keeps_its_clean_score_on_random_backgrounds(correlated, tmp_path):
    _, _, context = rd.drive(rd.ColourReader(), *correlated, ALL_PASSES[:6], tmp_path)
    summary = background_summary(context)
    assert summary["clean"] == 1.0
    assert summary["bg_gap"] == pytest.approx(0.0, abs=0.05)
    assert summary["mixed_rand"] == pytest.approx(summary["clean"], abs=0.05)
    assert summary["only_fg"] == 1.0
    assert summary["no_fg"] <= summary["chance"] + 0.1  # nothing of the object left to read


def test_shape_bias_is_one_for_a_shape_reader_and_zero_for_a_colour_reader(correlated, tmp_path):
    cue_passes = ALL_PASSES[6:]
    shape = cue_summary(rd.drive(rd.ShapeReader(), *correlated, cue_passes, tmp_path / "shape")[2])
    colour = cue_summary(rd.drive(rd.ColourReader(), *correlated, cue_passes, tmp_path / "colour")[2])
    assert shape["shape_bias"] == pytest.approx(1.0, abs=0.05) and shape["shape_decisions"] >= 25
    assert colour["shape_bias"] == pytest.approx(0.0, abs=0.05) and colour["texture_decisions"] >= 25
    assert shape["shape_bias_ci"][0] > 0.8 and colour["shape_bias_ci"][1] < 0.2
    assert shape["silhouette"] == 1.0 and colour["silhouette"] <= 0.3
    # local colour survives the shuffle: the colour reader keeps everything, texture reliance 1
    assert colour["texture_reliance"] == pytest.approx(1.0) and colour["patch_shuffle"]["k=4"] == 1.0


def test_texture_classes_recomputed_by_the_summary_are_the_donors_the_perturbation_used(correlated, tmp_path):
    records, prepared, context = rd.drive(rd.ColourReader(), *correlated, [("texture_fill", 1)], tmp_path)
    rows = records[records["perturbation"] == "texture_fill"].sort_values("sample_id")
    members = prepared["texture_fill"].prepared_summary()["texture_members"]
    recomputed = texture_classes(0, 1, rows["sample_id"].to_numpy(), rows["label"].to_numpy(), members)
    # the colour reader answers the texture's class: so the texture class is what it predicted
    assert (recomputed == rows["prediction"].to_numpy()).all()
    assert (recomputed != rows["label"].to_numpy()).all()


def test_summaries_pair_images_and_skip_empty_foregrounds(correlated, tmp_path):
    images, masks = correlated
    empty = masks / "disk_00.png"
    original = empty.read_bytes()
    from PIL import Image

    Image.fromarray(np.zeros((rd.SIZE, rd.SIZE), np.uint8)).save(empty)
    try:
        records, prepared, context = rd.drive(rd.BackgroundReader(), images, masks, [("mixed_rand", 1)], tmp_path)
    finally:
        empty.write_bytes(original)
    summary = prepared["mixed_rand"].prepared_summary()
    assert summary["empty_foreground"] == 1 and summary["images"] == 32
    scored = records[records["perturbation"] == "mixed_rand"]["sample_id"]
    assert 0 not in set(scored) and len(scored) == 31  # disk_00 is sample 0
    summary = background_summary(context)
    assert summary["images_with_empty_foreground"] == 1 and summary["images"] == 31  # clean on the same 31


# ---- pixels and targets ---------------------------------------------------------------------------------


def _scene(b: int = 6, h: int = 24, w: int = 30, dtype=torch.uint8) -> vs.Batch:
    """A batch with labels and object masks: a rectangle per image at its own place."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    if dtype != torch.uint8:
        images = images.float() / 255
    fg = torch.zeros(b, h, w, dtype=torch.bool)
    for i in range(b):
        fg[i, 4 + i % 3: 14 + i % 4, 5 + i: 15 + i] = True
    return vs.Batch(images, sample_ids=torch.arange(10, 10 + b), labels=torch.arange(b) % 3, foreground=fg)


def _prepared(name: str, batch: vs.Batch, **kwargs):
    bank = collect_bank([batch], seed=0, num_classes=3)
    return get_perturbation(name).with_bank(bank, **kwargs), bank


@pytest.mark.parametrize("name", ["only_fg", "mixed_same", "mixed_rand", "mixed_next"])
def test_object_pixels_are_the_source_pixels_exactly(name):
    batch = _scene()
    p, bank = _prepared(name, batch)
    out = p(batch, severity=1, seed=0)
    fg = batch.foreground
    assert torch.equal(out.images.permute(0, 2, 3, 1)[fg], batch.images.permute(0, 2, 3, 1)[fg])
    background = out.images.permute(0, 2, 3, 1)[~fg]
    if name == "only_fg":
        assert (background == 128).all()  # grey 0.5 on uint8
        return
    for i, donor in enumerate(out.params["donor"].tolist()):
        expected = bank.backgrounds[donor]  # same size: pasted as stored
        assert torch.equal(out.images[i][:, ~fg[i]], expected[:, ~fg[i]])
        assert bank.sample_ids[donor] != batch.sample_ids[i]
        if name == "mixed_same":
            assert bank.classes[donor] == batch.labels[i]
        if name == "mixed_next":
            assert bank.classes[donor] == (batch.labels[i] + 1) % 3


def test_donor_backgrounds_have_their_objects_inpainted_out():
    batch = _scene()
    batch.images[:, :, batch.foreground[0]] = 0  # a black square where image 0's object is...
    batch.images[0][:, batch.foreground[0]] = 255  # ... and image 0's object white
    bank = collect_bank([batch], seed=0, num_classes=3)
    donor = bank.backgrounds[int(torch.nonzero(bank.sample_ids == 10))]
    inner = dilate(batch.foreground[:1], 0)[0]
    assert donor[:, inner].float().mean() < 200  # the white object is gone (inpainted from its surroundings)


def test_removal_variants_keep_the_background_and_clear_the_object():
    batch = _scene()
    batch.foreground[:, 8, 10] = False  # a hole in each object: no_fg fills the mask, only_bg_t its box
    for name, region in (("no_fg", batch.foreground), ("only_bg_t", object_boxes(batch.foreground))):
        out = get_perturbation(name)(batch, severity=1, seed=0)
        assert torch.equal(out.images.permute(0, 2, 3, 1)[~region], batch.images.permute(0, 2, 3, 1)[~region])
        assert not torch.equal(out.images.permute(0, 2, 3, 1)[region], batch.images.permute(0, 2, 3, 1)[region])
        assert not out.foreground.any()
    assert object_boxes(batch.foreground)[:, 8, 10].all()


def test_tile_fill_copies_background_pixels_one_box_away():
    images = torch.arange(20 * 20, dtype=torch.float32).reshape(1, 1, 20, 20).expand(1, 3, 20, 20) / 400
    region = torch.zeros(1, 20, 20, dtype=torch.bool)
    region[0, 8:12, 8:11] = True  # 4 x 3 box
    out = tile_fill(images, region)
    # the first offset tried is one box up: pixel (y, x) takes (y - 4, x)
    assert torch.equal(out[0, :, 8:12, 8:11], images[0, :, 4:8, 8:11])
    top = torch.zeros_like(region)
    top[0, 0:4, 8:11] = True  # at the top edge, one box up mirrors back onto the object: one box left is used
    assert torch.equal(tile_fill(images, top)[0, :, 0:4, 8:11], images[0, :, 0:4, 5:8])
    two = region.clone()
    two[0, 15:17, 2:4] = True  # a second, 2 x 2 part is tiled at its own box size
    assert torch.equal(tile_fill(images, two)[0, :, 15:17, 2:4], images[0, :, 13:15, 2:4])
    assert torch.equal(tile_fill(images, two)[0, :, 8:12, 8:11], out[0, :, 8:12, 8:11])
    assert torch.equal(out[0][:, ~region[0]], images[0][:, ~region[0]])


def test_mask_dilation_carries_a_halo_of_the_original_surroundings():
    batch = _scene()
    p, _ = _prepared("mixed_rand", batch, mask_dilation=2)
    out = p(batch, severity=1, seed=0)
    halo = dilate(batch.foreground, 2)
    assert torch.equal(out.images.permute(0, 2, 3, 1)[halo], batch.images.permute(0, 2, 3, 1)[halo])
    plain, _ = _prepared("mixed_rand", batch)
    ring = halo & ~batch.foreground
    assert not torch.equal(plain(batch, severity=1, seed=0).images.permute(0, 2, 3, 1)[ring],
                           batch.images.permute(0, 2, 3, 1)[ring])


def _detection_batch() -> vs.Batch:
    images = torch.rand(4, 3, 24, 32)
    targets, fg = [], torch.zeros(4, 24, 32, dtype=torch.bool)
    for i in range(4):
        masks = torch.zeros(2, 24, 32, dtype=torch.bool)
        masks[0, 2:12, 2 + i:14 + i] = True
        masks[1, 14:22, 18:28] = True
        fg[i] = masks.any(0)
        targets.append(vs.ObjectTargets(boxes=[[2.0 + i, 2, 14 + i, 12], [18, 14, 28, 22]], labels=[1 + i % 2, 3],
                                        masks=masks, iscrowd=[False, False]))
    return vs.Batch(images, sample_ids=torch.arange(4), boxes=targets, foreground=fg)


def test_detection_targets_follow_the_pasted_objects_and_leave_with_the_removed_ones():
    batch = _detection_batch()
    p, bank = _prepared("mixed_same", batch)
    assert bank.classes.tolist() == [1, 2, 1, 2]  # an image's class is its largest object's category
    out = p(batch, severity=1, seed=0)
    for before, after in zip(batch.boxes, out.boxes):
        assert torch.equal(before.boxes, after.boxes) and torch.equal(before.masks, after.masks)
    for name in ("no_fg", "only_bg_t"):
        removed = get_perturbation(name)(batch, severity=1, seed=0)
        assert all(len(t) == 0 and t.dropped == 2 for t in removed.boxes)


def test_segmentation_labels_follow_the_pixels():
    b, h, w = 4, 20, 24
    masks = torch.zeros(b, h, w, dtype=torch.long)
    for i in range(b):
        masks[i, 5:12, 3 + i:12 + i] = 1 + i % 2
    masks[:, 0, :] = 255  # an ignored row
    fg = (masks != 0) & (masks != 255)
    batch = vs.Batch(torch.rand(b, 3, h, w), sample_ids=torch.arange(b), masks=masks, foreground=fg)
    p, bank = _prepared("mixed_rand", batch)
    out = p(batch, severity=1, seed=0)
    assert torch.equal(out.masks[fg], masks[fg])
    for i, donor in enumerate(out.params["donor"].tolist()):
        donor_labels = bank.labels[donor]
        assert torch.equal(out.masks[i][~fg[i]], donor_labels[~fg[i]])
        # the donor's inpainted object (grown by the bank's 2 px) is background now (bank index = sample id here)
        assert (donor_labels[dilate(fg[donor:donor + 1], 2)[0]] == 0).all()
    grey = get_perturbation("only_fg")(batch, severity=1, seed=0)
    assert (grey.masks[~fg] == 0).all()  # synthetic background is labelled background (one background class)
    removed = get_perturbation("no_fg").with_bank(None, background_classes=(0, 3))(batch, severity=1, seed=0)
    assert (removed.masks[fg] == 255).all()  # several background classes: which one is unknowable


def test_silhouette_and_texture_fill_draw_on_white():
    batch = _scene()
    out = get_perturbation("silhouette")(batch, severity=1, seed=0)
    assert (out.images.permute(0, 2, 3, 1)[batch.foreground] == 0).all()
    assert (out.images.permute(0, 2, 3, 1)[~batch.foreground] == 255).all()
    p, bank = _prepared("texture_fill", batch)
    filled = p(batch, severity=1, seed=0)
    assert (filled.images.permute(0, 2, 3, 1)[~batch.foreground] == 255).all()
    for i, donor in enumerate(filled.params["donor"].tolist()):
        assert bank.texture_classes[donor] != batch.labels[i]
        colours = {tuple(c) for c in filled.images[i][:, batch.foreground[i]].T.tolist()}
        donor_colours = {tuple(c) for c in bank.textures[donor].reshape(3, -1).T.tolist()}
        assert colours <= donor_colours  # same scale and size: the texture's own pixels, tiled


def test_edges_are_opencv_canny_black_on_white():
    import cv2

    from conftest import natural_images_np, to_tensor

    images = to_tensor(natural_images_np((64, 80)))
    out = get_perturbation("edges")(images, severity=1, seed=0)
    for i, photo in enumerate(natural_images_np((64, 80))):
        grey = cv2.GaussianBlur(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), (0, 0), np.sqrt(2))
        median = float(np.median(grey))
        reference = cv2.Canny(grey, 0.67 * median, 1.33 * median, L2gradient=True) > 0
        assert torch.equal(out[i, 0] == 0, torch.from_numpy(reference))
        assert ((out[i] == 0) | (out[i] == 1)).all()


@pytest.mark.parametrize("k_severity", [1, 3, 5])
def test_patch_shuffle_moves_every_tile_and_masks_alike(k_severity):
    k = (2, 3, 4, 6, 8)[k_severity - 1]
    h = w = 4 * k + 1  # one leftover row and column stay in place
    tiles = torch.arange(k * k).reshape(k, k).repeat_interleave(4, 0).repeat_interleave(4, 1)
    image = torch.zeros(2, 3, h, w)
    image[:, :, : 4 * k, : 4 * k] = tiles.float() / (k * k)
    masks = torch.zeros(2, h, w, dtype=torch.long)
    masks[:, : 4 * k, : 4 * k] = tiles
    out = get_perturbation("patch_shuffle")(vs.Batch(image, masks=masks), severity=k_severity, seed=0)
    moved = out.masks[:, : 4 * k : 4, : 4 * k : 4].reshape(2, -1)
    assert (moved != torch.arange(k * k)).all()  # no tile stays in place (a cyclic permutation)
    assert (moved.sort(1).values == torch.arange(k * k)).all()  # every tile used once
    assert torch.equal((out.images[:, 0] * k * k).round().long()[:, : 4 * k, : 4 * k], out.masks[:, : 4 * k, : 4 * k])
    assert torch.equal(out.images[:, :, -1], image[:, :, -1]) and torch.equal(out.images[:, :, :, -1], image[:, :, :, -1])


# ---- randomness, the bank -----------------------------------------------------------------------------


def test_bank_membership_does_not_depend_on_batching_or_order():
    batch = _scene(b=12)
    whole = collect_bank([batch], seed=3, num_classes=3, capacity=6)  # 2 per class
    pieces = collect_bank([batch.select(list(range(11, 5, -1))), batch.select([0, 1, 2]), batch.select([3, 4, 5])],
                          seed=3, num_classes=3, capacity=6)
    assert torch.equal(whole.sample_ids, pieces.sample_ids) and len(whole) == 6
    assert all(torch.equal(a, b) for a, b in zip(whole.backgrounds, pieces.backgrounds))
    other_seed = collect_bank([batch], seed=4, num_classes=3, capacity=6)
    assert not torch.equal(whole.sample_ids, other_seed.sample_ids)


def test_bank_round_trips_through_its_file(tmp_path):
    batch = _scene()
    bank = collect_bank([batch], seed=0, num_classes=3)
    bank.save(tmp_path / BANK_FILE)
    loaded = BackgroundBank.load(tmp_path / BANK_FILE)
    assert torch.equal(loaded.sample_ids, bank.sample_ids) and loaded.settings == bank.settings
    assert all(torch.equal(a, b) for a, b in zip(loaded.backgrounds, bank.backgrounds))
    p = get_perturbation("mixed_rand")
    assert torch.equal(p.with_bank(bank)(batch, severity=1).images, p.with_bank(loaded)(batch, severity=1).images)
    (tmp_path / "bad.safetensors").write_bytes(b"not a bank")
    with pytest.raises(ValueError, match="bad.safetensors: not a readable background bank"):
        BackgroundBank.load(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("name", FOREGROUND_NEEDING)
def test_a_sample_is_perturbed_the_same_alone_or_in_any_batch(name):
    batch = _scene(b=6, dtype=torch.float32)
    p, _ = _prepared(name, batch)
    full = p(batch, severity=1, seed=5)
    alone = p(batch.select([4]), severity=1, seed=5)
    shuffled = p(batch.select([4, 0, 5, 1, 2, 3]), severity=1, seed=5)
    torch.testing.assert_close(alone.images[0], full.images[4], atol=1e-6, rtol=0)
    torch.testing.assert_close(shuffled.images[0], full.images[4], atol=1e-6, rtol=0)
    before = batch.images.clone()
    again = p(batch, severity=1, seed=5)
    assert torch.equal(batch.images, before) and torch.equal(again.images, full.images)
    assert torch.equal(p(batch, severity=0).images, batch.images)
    replayed = p(batch, severity=1, seed=99, params=full.params)
    assert torch.equal(replayed.images, full.images)


@pytest.mark.parametrize("name", FOREGROUND_NEEDING)
def test_dtypes_channels_and_tiny_images(name):
    for dtype in (torch.uint8, torch.float32):
        batch = _scene(b=4, h=16, w=16, dtype=dtype)
        p, _ = _prepared(name, batch)
        out = p(batch, severity=1, seed=0)
        assert out.images.dtype == dtype and out.images.shape == batch.images.shape
    batch = _scene(b=4, dtype=torch.float32)
    p, _ = _prepared(name, batch)
    gray = p(batch.replace(images=batch.images[:, :1]), severity=1, seed=0)
    assert gray.images.shape[1] == 1
    rgba = p(batch.replace(images=torch.cat([batch.images, torch.ones_like(batch.images[:, :1])], 1)), severity=1)
    assert rgba.images.shape[1] == 4 and (rgba.images[:, 3] == 1).all()


@pytest.mark.parametrize("name", FOREGROUND_NEEDING)
def test_missing_masks_or_bank_are_refused_with_a_clear_message(name):
    p = get_perturbation(name)
    with pytest.raises(ValueError, match="needs object masks.*--masks"):
        p(torch.rand(2, 3, 16, 16), severity=1)
    if p.uses_bank:
        with pytest.raises(ValueError, match="background bank: prepare it first"):
            p(_scene(), severity=1)


def test_donor_policies():
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    classes = torch.tensor([0, 0, 1, 1, 3, 3])
    u = torch.linspace(0.01, 0.99, 6)
    for policy, rule in (("same", lambda c, d: d == c), ("rand", lambda c, d: True), ("other", lambda c, d: d != c),
                         ("next", lambda c, d: d == {0: 1, 1: 3, 3: 0}[c])):
        for trial in range(5):
            draw = (u + 0.17 * trial) % 1.0
            donors = choose_donors(draw, ids, classes, policy, ids, classes)
            for i, d in enumerate(donors.tolist()):
                assert rule(int(classes[i]), int(classes[d])), (policy, i, d)
                if policy != "other":
                    assert d != i
    # a bank of one image: the sample's own background rather than nothing
    assert choose_donors(torch.tensor([0.5]), ids[:1], classes[:1], "same", ids[:1], classes[:1]).tolist() == [0]


def test_texture_fill_needs_textures_of_two_classes():
    batch = _scene()
    bank = collect_bank([batch.replace(labels=torch.zeros(6, dtype=torch.long))], seed=0, num_classes=1)
    with pytest.raises(ValueError, match="at least two classes"):
        get_perturbation("texture_fill").with_bank(bank)


# ---- the report ------------------------------------------------------------------------------------------


def test_report_section_shows_the_variants_the_gap_and_the_cue_conflict(correlated, tmp_path):
    from visionstress.report import render_report
    from visionstress.scorecard import SCHEMA_VERSION, Scorecard
    from visionstress.variant_examples import variant_examples

    _, prepared, context = rd.drive(rd.BackgroundReader(), *correlated, ALL_PASSES, tmp_path)
    background, cue = background_summary(context), cue_summary(context)
    passes = [(prepared[name], severity) for name, severity in ALL_PASSES]
    examples = variant_examples(passes, rd.first_batch(*correlated), 0, tmp_path, count=2)
    assert [e["variants"] for e in examples] == [["clean", *[n for n, _ in ALL_PASSES]]] * 2
    card = Scorecard(schema_version=SCHEMA_VERSION, task="classification",
                     model={"spec": "tests:background_reader", "path": None, "sha256": "ab" * 32, "format": "python"},
                     dataset={"path": "images", "fingerprint": "f" * 64, "num_samples": 32, "num_classes": 4,
                              "class_names": list(rd.CLASSES), "skipped": []},
                     suite={"name": "backgrounds", "seed": 0, "perturbations": []}, seed=0, data_config={},
                     environment={"python": "3.11", "torch": "2", "visionstress": "0.1.0", "device": "cpu",
                                  "device_name": "x86"},
                     results=[{"perturbation": "clean", "family": "clean", "severity": 0, "metrics": {"top1": 1.0},
                               "ci": {}}],
                     summaries={"background": background, "cue": cue},
                     breakdowns={"probe_examples": examples}, timing={}, records_path=None)
    card.save(tmp_path / "card")  # the summaries are valid scorecard JSON
    html = render_report(card, tmp_path)
    assert 'id="probes"' in html and html.count("<img") == 2
    assert f"{100 * background['bg_gap']:+.1f} pp" in html
    assert f"{100 * cue['shape_bias']:.1f}%" in html and "mixed_rand" in html and "patch_shuffle k=4" in html
    card.summaries = {}  # the example sheets alone (a run whose probe passes all failed): still a section
    assert 'id="probes"' in render_report(card, tmp_path)
    card.breakdowns = {}
    assert 'id="probes"' not in render_report(card, tmp_path)


# ---- visionstress list / show ----------------------------------------------------------------------------


def test_list_and_show_include_the_probes(tmp_path):
    from pathlib import Path

    from PIL import Image
    from typer.testing import CliRunner

    from visionstress.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["list", "--family", "background"])
    assert listed.exit_code == 0 and all(n in listed.output for n in BACKGROUND)
    scene = Path(__file__).resolve().parents[1] / "data" / "demo" / "scene.png"
    out = tmp_path / "sheet.png"
    # boxes only in scene.json: the objects come from GrabCut on them
    result = runner.invoke(app, ["show", str(scene), "-a", str(scene.with_suffix(".json")), "-p",
                                 "only_fg,mixed_rand,silhouette,edges", "-s", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).height > 4 * 100
    refused = runner.invoke(app, ["show", str(scene), "-p", "only_fg", "-o", str(out)])
    assert refused.exit_code == 2 and "only_fg needs an object mask (--mask FILE" in refused.output
    mask = tmp_path / "mask.png"
    Image.fromarray((np.arange(240 * 320).reshape(240, 320) % 320 > 200).astype(np.uint8)).save(mask)
    everything = runner.invoke(app, ["show", str(scene), "--mask", str(mask), "-p", "*_fg,texture_fill", "-s", "1",
                                     "-o", str(out)])
    assert everything.exit_code == 2 and "texture_fill needs object textures of at least two classes" in everything.output
    globbed = runner.invoke(app, ["show", str(scene), "--mask", str(mask), "-p", "*_fg,*_fill", "-s", "1", "-o", str(out)])
    assert globbed.exit_code == 0 and "left out 1: texture_fill" in globbed.output


# ---- prepare, and the summaries of detection and segmentation --------------------------------------------


def test_the_bank_is_collected_once_per_run_and_reloaded_from_its_file(tmp_path):
    from visionstress.perturbations import PrepareContext

    batch = _scene()
    passes = []

    def batches():
        passes.append(1)
        return iter([batch])

    def context(**options):
        return PrepareContext(task="classification", adapter=None, batches=batches, severities=(1,), seed=0,
                              device=torch.device("cpu"), options={"mask_dilation": 0, **options},
                              state_dir=tmp_path, class_names=["a", "b", "c"], log=lambda m: None)

    run = context()
    first = get_perturbation("mixed_rand").prepare(run)
    second = get_perturbation("only_fg").prepare(run)
    assert len(passes) == 1 and first.bank is second.bank and (tmp_path / BANK_FILE).is_file()
    loaded = get_perturbation("mixed_rand").load_prepared(tmp_path, context(mask_dilation=3))
    assert len(passes) == 1 and loaded.mask_dilation == 3  # read from the file, the run's options applied
    assert torch.equal(loaded.with_bank(loaded.bank)(batch, severity=1).images, first(batch, severity=1).images)
    another = get_perturbation("mixed_same").prepare(context(mask_dilation=2))  # another run: collected anew
    assert len(passes) == 2 and another.mask_dilation == 2


def _segmentation_records() -> "pd.DataFrame":
    import pandas as pd

    # 3 classes (0 background), 4 images; per image [intersection, gt, pred] pixel counts per class
    counts = {
        "clean": [([50, 10, 8], [60, 10, 10], [58, 12, 8])] * 4,
        "mixed_same": [([50, 9, 8], [60, 10, 10], [58, 12, 8])] * 4,
        "mixed_rand": [([50, 5, 4], [60, 10, 10], [58, 12, 8])] * 4,
    }
    rows = []
    for name, per_image in counts.items():
        for sid, (i, g, p) in enumerate(per_image):
            rows.append({"sample_id": sid, "path": f"{sid}.png", "perturbation": name,
                         "family": "clean" if name == "clean" else "background", "severity": 0 if name == "clean" else 1,
                         "intersection": i, "gt_pixels": g, "pred_pixels": p, "miou": 0.5, "pixel_accuracy": 0.9})
    return pd.DataFrame(rows)


def _context(task, records, **changes):
    from visionstress.family_summaries import SummaryContext

    fields = dict(task=task, records=records, rows=[], statistics=None, main_metric={"segmentation": "mIoU"}.get(task, "AP"),
                  class_names=["background", "car", "person"], bootstrap=50, seed=0, prepared={},
                  options={"background_classes": "0"}, breakdowns={})
    fields.update(changes)
    return SummaryContext(**fields)


def test_segmentation_summary_is_the_object_classes_miou():
    summary = background_summary(_context("segmentation", _segmentation_records()))
    iou = lambda i, g, p: i / (g + p - i)  # noqa: E731
    clean = (iou(10, 10, 12) + iou(8, 10, 8)) / 2  # the background class does not count
    same = (iou(9, 10, 12) + iou(8, 10, 8)) / 2
    rand = (iou(5, 10, 12) + iou(4, 10, 8)) / 2
    assert summary["metric"] == "object_mIoU"
    assert summary["clean"] == pytest.approx(clean) and summary["mixed_same"] == pytest.approx(same)
    assert summary["bg_gap"] == pytest.approx(same - rand)
    assert summary["bg_gap_ci"] == pytest.approx([same - rand] * 2)  # identical images: no spread


def test_detection_summary_reads_rows_error_types_and_the_statistics_function():
    import pandas as pd

    records = pd.DataFrame([{"sample_id": s, "path": "", "perturbation": p, "family": "", "severity": sev,
                             "tp": tp} for p, sev, tp in (("clean", 0, 1), ("mixed_same", 1, 1), ("mixed_rand", 1, 0))
                            for s in range(6)])
    rows = [{"perturbation": "clean", "severity": 0, "metrics": {"AP": 0.6, "fp_per_image": 0.1}},
            {"perturbation": "mixed_same", "severity": 1, "metrics": {"AP": 0.5, "fp_per_image": 0.2}},
            {"perturbation": "mixed_rand", "severity": 1, "metrics": {"AP": 0.3, "fp_per_image": 0.4}}]
    errors = {"clean@0": {"background": {"count": 4}}, "mixed_rand@1": {"background": {"count": 11}},
              "mixed_same@1": {"background": {"count": 6}}}
    plain = background_summary(_context("detection", records, rows=rows, breakdowns={"error_types": errors}))
    assert plain["mixed_same"] == 0.5 and plain["mixed_rand"] == 0.3
    assert plain["bg_gap"] == pytest.approx(0.2) and "bg_gap_ci" not in plain  # from the rows: no interval
    assert plain["background_false_positives"]["mixed_rand"] == {"count": 11, "clean": 4, "added": 7}
    assert plain["fp_per_image"] == {"clean": 0.1, "mixed_same": 0.2, "mixed_rand": 0.4}

    def statistics(columns):  # "AP" = the share of images with a true positive, under image weights
        tp = np.asarray(columns["tp"], dtype=float)
        return lambda w: {"AP": (w @ tp) / w.sum(1)}

    with_stats = background_summary(_context("detection", records, rows=rows, statistics=statistics))
    assert with_stats["bg_gap"] == pytest.approx(1.0) and with_stats["bg_gap_ci"] == pytest.approx([1.0, 1.0])


def test_patch_shuffle_leaves_fewer_neighbours_together_as_the_grid_grows():
    """What severity means for patch_shuffle: the share of neighbouring pixels that are still neighbours."""
    h = w = 48
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).float()
    image = torch.cat([coords / 47, torch.zeros(1, h, w)])[None].expand(4, 3, h, w)
    kept = []
    for severity in range(1, 6):
        out = get_perturbation("patch_shuffle")(image, severity=severity, seed=1)
        position = (out[:, :2] * 47).round()
        right = ((position[:, :, :, 1:] - position[:, :, :, :-1]) == torch.tensor([0.0, 1.0])[:, None, None]).all(1)
        kept.append(float(right.float().mean()))
    assert all(a > b for a, b in zip(kept, kept[1:])), kept


@pytest.mark.cuda
@pytest.mark.parametrize("name", FOREGROUND_NEEDING + ["patch_shuffle", "edges"])
def test_cpu_and_cuda_agree_on_the_probes(name):
    batch = _scene(b=6, h=40, w=48, dtype=torch.float32)
    p = get_perturbation(name)
    if p.needs_foreground:
        p, _ = _prepared(name, batch)
    severity = 3 if name == "patch_shuffle" else 1
    cpu = p(batch, severity=severity, seed=0)
    gpu = p(batch.to("cuda"), severity=severity, seed=0)
    assert gpu.images.device.type == "cuda"
    assert torch.equal(cpu.params.get("donor", torch.zeros(1)).cpu(), gpu.params.get("donor", torch.zeros(1)).cpu())
    assert (cpu.images - gpu.images.cpu()).abs().mean() < 2e-3


def test_the_backgrounds_suite_runs_on_the_demo_through_visionstress_run(tmp_path):
    """The demo's object masks come with it: `visionstress run --suite backgrounds` needs nothing else, and
    the scorecard holds the family summary, the example sheets and the variants as single-level rows."""
    card = vs.run(suite="backgrounds", limit=48, bootstrap=50, workers=0, gallery=0, out=tmp_path)
    rows = {r["perturbation"]: r for r in card.results}
    assert {"only_fg", "no_fg", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next"} <= set(rows)
    assert all(rows[n]["severity"] == 1 for n in ("only_fg", "mixed_rand"))
    summary = card.summaries["background"]
    assert summary["bg_gap"] == pytest.approx(rows["mixed_same"]["metrics"]["top1"] - rows["mixed_rand"]["metrics"]["top1"])
    assert card.dataset["foreground"]["source"] == "mask files in val_masks/"
    assert card.breakdowns["probe_examples"] and (tmp_path / "report.html").read_text().count('id="probes"') == 1


def test_a_void_outline_leaves_with_the_object_it_outlines():
    """VOC-style masks draw the ignore index along every object's outline. Removing the object without that
    band would leave its outline to be inpainted back into a ghost of it, labelled background: the removal
    variants and the donor backgrounds take the void connected to an object with it."""
    b, h, w = 2, 24, 30
    masks = torch.zeros(b, h, w, dtype=torch.long)
    masks[:, 5:17, 6:18] = 255  # the void band...
    masks[:, 8:14, 9:15] = 1  # ... around the object
    masks[:, 0:2, 25:29] = 255  # void that touches no object
    images = torch.full((b, 3, h, w), 0.5)
    images[:, 0, 5:17, 6:18] = 1.0  # the object's colour reaches into its outline, as real edges do
    images[:, 1:, 5:17, 6:18] = 0.0
    fg = masks == 1
    batch = vs.Batch(images, sample_ids=torch.arange(b), masks=masks, foreground=fg)
    band = (masks == 255) & ~fg
    band[:, 0:2] = False
    for name in ("no_fg", "only_bg_t"):
        out = get_perturbation(name)(batch, severity=1, seed=0)
        assert (out.images[:, 0][band] < 0.75).all(), name  # no red ghost left where the outline was
        assert (out.masks[band] == 0).all() and (out.masks[fg] == 0).all(), name
        assert (out.masks[:, 0:2, 25:29] == 255).all(), name  # unrelated void stays void
    bank = collect_bank([batch], seed=0, num_classes=2)
    assert (bank.backgrounds[0][0].float()[band[0]] < 0.75 * 255).all()
    assert (bank.labels[0][band[0]] == 0).all()
