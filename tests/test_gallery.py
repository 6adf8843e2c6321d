"""The failure gallery: selection rules against a brute-force reference, thumbnails, overlays, saving."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from visionstress.batch import Batch
from visionstress.gallery import PALETTE, PREDICTION_COLOUR, TRUTH_COLOUR, Boxes, FailureGallery, LabelMap


def _offer(gallery, perturbation, severity, ids, scores, images=None, **kwargs):
    ids = torch.as_tensor(ids)
    images = torch.rand(len(ids), 3, 24, 32) if images is None else images
    gallery.offer(perturbation=perturbation, severity=severity, sample_ids=ids,
                  paths=[f"img{i}.png" for i in ids.tolist()],
                  scores=torch.as_tensor(scores, dtype=torch.float32), clean_images=images, perturbed_images=images,
                  captions=kwargs.pop("captions", lambda i: f"caption {i}"), **kwargs)


def _reference(offers, size, per_perturbation):
    """Brute force: every (score, perturbation, severity, sample) with score > 0, best first, taken
    greedily under the caps; the streaming gallery must select exactly this."""
    candidates = sorted(((-score, p, s, sid) for p, s, ids, scores in offers for sid, score in zip(ids, scores)
                         if score > 0), key=lambda c: c)
    chosen, samples, count = [], set(), {}
    for _, p, s, sid in candidates:
        if len(chosen) == size:
            break
        if sid in samples or count.get(p, 0) >= per_perturbation:
            continue
        chosen.append((p, s, sid))
        samples.add(sid)
        count[p] = count.get(p, 0) + 1
    return chosen


def _selected(gallery):
    return [(e.perturbation, e.severity, e.sample_id) for e in gallery.entries()]


def test_selection_rules_worst_first_capped_per_perturbation_one_per_sample():
    gallery = FailureGallery(size=4, per_perturbation=2)
    _offer(gallery, "fog", 3, [0, 1, 2, 3], [0.9, 0.8, 0.0, -1.0])
    _offer(gallery, "fog", 5, [0, 1, 2, 3], [0.95, 0.7, 0.85, float("nan")])
    _offer(gallery, "blur", 1, [0, 1, 2, 3], [0.99, 0.2, 0.1, 0.3])
    entries = gallery.entries()
    # blur@1 sample 0 (0.99) takes sample 0; fog keeps its two worst other samples (2 at 0.85, 1 at 0.8)
    assert _selected(gallery) == [("blur", 1, 0), ("fog", 5, 2), ("fog", 3, 1), ("blur", 1, 3)]
    assert [e.score for e in entries] == sorted((e.score for e in entries), reverse=True)
    assert entries[0].caption == "caption 0" and entries[0].path == "img0.png"


def test_nothing_qualifies_means_no_thumbnails_and_no_captions():
    calls = []
    gallery = FailureGallery(size=2, per_perturbation=2)
    _offer(gallery, "fog", 1, [0, 1], [0.0, -0.5], captions=lambda i: calls.append(i) or "")
    assert gallery.entries() == [] and calls == []
    _offer(gallery, "fog", 1, [2, 3], [0.9, 0.8], captions=lambda i: calls.append(i) or "")
    calls.clear()
    _offer(gallery, "fog", 2, [4, 5, 6], [0.1, 0.5, 0.7], captions=lambda i: calls.append(i) or "",
           clean_overlays=lambda i: calls.append(("overlay", i)) or [])
    assert calls == []  # all below the current worst-2 threshold of fog: rejected before any host work


@pytest.mark.parametrize("size, per_perturbation", [(3, 1), (5, 2), (12, 2), (8, 8)])
def test_streaming_selection_equals_brute_force_whatever_the_batching(size, per_perturbation):
    rng = random.Random(size * 10 + per_perturbation)
    offers = []
    for p in ("fog", "blur", "noise", "rotation"):
        for s in (1, 3, 5):
            ids = list(range(40))
            scores = [rng.choice([0.0, -0.2, 0.25, 0.5, 0.75, 1.0, rng.random()]) for _ in ids]  # many ties
            offers.append((p, s, ids, scores))
    expected = _reference(offers, size, per_perturbation)
    for batch_size in (1, 7, 40):
        gallery = FailureGallery(size=size, per_perturbation=per_perturbation, thumbnail=8)
        order = list(range(40))
        rng.shuffle(order)
        for p, s, ids, scores in offers:
            for start in range(0, 40, batch_size):
                chunk = order[start:start + batch_size]
                _offer(gallery, p, s, [ids[i] for i in chunk], [scores[i] for i in chunk],
                       images=torch.zeros(len(chunk), 3, 8, 8))
        assert _selected(gallery) == expected, batch_size


def test_thumbnails_keep_aspect_and_colour_for_uint8_float_grey_and_rgba():
    gallery = FailureGallery(size=4, per_perturbation=4, thumbnail=40)
    colour = torch.tensor([0.2, 0.6, 1.0])
    float_images = colour[None, :, None, None].expand(1, 3, 30, 60).clone()
    _offer(gallery, "a", 1, [0], [1.0], images=float_images)
    _offer(gallery, "b", 1, [1], [0.9], images=(float_images * 255).round().to(torch.uint8))
    _offer(gallery, "c", 1, [2], [0.8], images=torch.full((1, 1, 60, 30), 0.5))
    _offer(gallery, "d", 1, [3], [0.7], images=torch.cat([float_images, torch.zeros(1, 1, 30, 60)], dim=1))
    a, b, c, d = gallery.entries()
    assert a.clean.shape == (20, 40, 3) and a.clean.dtype == np.uint8
    assert c.perturbed.shape == (40, 20, 3)
    np.testing.assert_array_equal(a.clean[10, 20], [51, 153, 255])
    np.testing.assert_array_equal(a.clean, b.clean)
    np.testing.assert_array_equal(a.clean, d.clean)  # alpha is not drawn
    assert (c.clean == 128).all()


def test_images_smaller_than_a_thumbnail_are_kept_pixel_for_pixel():
    gallery = FailureGallery(size=3, per_perturbation=3, thumbnail=40)
    noise = torch.randint(0, 256, (1, 3, 24, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    _offer(gallery, "a", 1, [0], [1.0], images=noise)
    _offer(gallery, "b", 1, [1], [0.9], images=noise.float() / 255)
    _offer(gallery, "c", 1, [2], [0.8], images=noise[:, :1])
    a, b, c = gallery.entries()
    np.testing.assert_array_equal(a.clean, noise[0].permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(b.perturbed, a.perturbed)
    np.testing.assert_array_equal(c.clean, noise[0, :1].expand(3, -1, -1).permute(1, 2, 0).numpy())


def test_box_overlays_scale_to_the_thumbnail_truth_green_prediction_red():
    gallery = FailureGallery(size=1, thumbnail=50)
    images = torch.zeros(1, 3, 100, 100)
    truth = Boxes(torch.tensor([[20.0, 60.0, 60.0, 96.0]]), ["cat"])
    prediction = Boxes(torch.tensor([[10.0, 10.0, 90.0, 50.0]]), ["dog"], scores=torch.tensor([0.87]))
    _offer(gallery, "fog", 1, [0], [1.0], images=images, clean_overlays=lambda i: [truth],
           perturbed_overlays=lambda i: [truth, prediction])
    entry = gallery.entries()[0]
    np.testing.assert_array_equal(entry.clean[40, 10], TRUTH_COLOUR)  # left edge of the truth box, halved
    np.testing.assert_array_equal(entry.clean[40, 29], TRUTH_COLOUR)  # right edge (x1 - 1)
    assert not (entry.clean == PREDICTION_COLOUR).all(axis=2).any()
    np.testing.assert_array_equal(entry.perturbed[20, 5], PREDICTION_COLOUR)
    assert (entry.perturbed == TRUTH_COLOUR).all(axis=2).any()
    with pytest.raises(ValueError, match="2 boxes but 1 names"):
        bad = Boxes(torch.zeros(2, 4), ["x"])
        _offer(FailureGallery(size=1), "fog", 1, [0], [1.0], clean_overlays=lambda i: [bad])


def test_label_map_overlay_blends_a_palette_colour_and_leaves_ignored_pixels_alone():
    gallery = FailureGallery(size=1, thumbnail=8)
    images = torch.full((1, 3, 8, 8), 100 / 255)
    labels = torch.full((8, 8), 255, dtype=torch.long)
    labels[:4] = 3
    _offer(gallery, "fog", 1, [0], [1.0], images=images, perturbed_overlays=lambda i: [LabelMap(labels)])
    entry = gallery.entries()[0]
    assert (entry.perturbed[4:] == 100).all() and (entry.clean == 100).all()
    expected = np.round(0.5 * 100 + 0.5 * PALETTE[3]).astype(np.uint8)
    np.testing.assert_array_equal(entry.perturbed[0, 0], expected)
    assert len({tuple(c) for c in PALETTE[:21].astype(int)}) == 21 and not (PALETTE[:21] == 0).all(axis=1).any()


def test_captions_and_overlays_are_built_only_for_kept_images():
    seen = {"captions": [], "overlays": []}
    gallery = FailureGallery(size=3, per_perturbation=3)
    _offer(gallery, "fog", 1, [10, 11, 12, 13, 14], [0.0, 0.9, 0.0, 0.5, 0.0],
           captions=lambda i: seen["captions"].append(i) or "",
           clean_overlays=lambda i: seen["overlays"].append(i) or [])
    assert sorted(seen["captions"]) == [1, 3] and sorted(seen["overlays"]) == [1, 3]


def test_save_writes_pngs_removes_stale_ones_and_returns_scorecard_entries(tmp_path):
    stale = tmp_path / "gallery" / "07_clean.png"
    stale.parent.mkdir()
    stale.write_bytes(b"old")
    keep = tmp_path / "gallery" / "notes.txt"
    keep.write_text("not ours")
    gallery = FailureGallery(size=2, thumbnail=16)
    _offer(gallery, "fog", 3, [5, 6], [0.4, 0.8])
    entries = gallery.save(tmp_path)
    assert [e["sample_id"] for e in entries] == [6, 5]
    assert entries[0] == {"sample_id": 6, "path": "img6.png", "perturbation": "fog", "severity": 3,
                          "caption": "caption 1", "clean_image": "gallery/01_clean.png",
                          "perturbed_image": "gallery/01_perturbed.png"}
    assert sorted(p.name for p in (tmp_path / "gallery").iterdir()) == [
        "01_clean.png", "01_perturbed.png", "02_clean.png", "02_perturbed.png", "notes.txt"]
    assert Image.open(tmp_path / entries[1]["perturbed_image"]).size == (16, 12)


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="size must be >= 0"):
        FailureGallery(size=-1)
    empty = FailureGallery(size=0)  # no gallery: every offer is declined
    empty.offer(perturbation="fog", severity=1, sample_ids=torch.arange(1), paths=["a.png"], scores=torch.ones(1),
                clean_images=torch.zeros(1, 3, 8, 8), perturbed_images=torch.zeros(1, 3, 8, 8),
                captions=lambda i: "")
    assert empty.entries() == []
    gallery = FailureGallery()
    with pytest.raises(ValueError, match=r"fog@2\): 3 scores but 2 sample_ids"):
        gallery.offer(perturbation="fog", severity=2, sample_ids=torch.arange(2), paths=["a", "b", "c"],
                      scores=torch.ones(3), clean_images=torch.rand(3, 3, 8, 8),
                      perturbed_images=torch.rand(3, 3, 8, 8),
                      captions=str)
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        _offer(gallery, "fog", 1, [0], [1.0], images=torch.rand(1, 2, 8, 8))


@pytest.mark.cuda
def test_offer_on_cuda_matches_cpu():
    images = torch.rand(6, 3, 40, 50)
    scores = torch.tensor([0.1, 0.9, 0.0, 0.4, 0.7, 0.3])
    out = []
    for device in ("cpu", "cuda"):
        gallery = FailureGallery(size=3, per_perturbation=3, thumbnail=20)
        gallery.offer(perturbation="fog", severity=1, sample_ids=torch.arange(6, device=device),
                      paths=[str(i) for i in range(6)], scores=scores.to(device), clean_images=images.to(device),
                      perturbed_images=images.to(device), captions=str)
        out.append(gallery.entries())
    assert [e.sample_id for e in out[0]] == [e.sample_id for e in out[1]] == [1, 4, 3]
    for a, b in zip(*out):
        assert np.abs(a.clean.astype(int) - b.clean.astype(int)).max() <= 1


def test_detection_images_whose_objects_left_the_frame_are_failures_only_by_confident_false_detections():
    """zoom_in pushes objects out of the frame; with nothing left to find, the score-weighted F1 of any
    low-score detection (real detectors keep many) is 0, which filled the gallery with crops, not failures."""
    from types import SimpleNamespace

    from visionstress.tasks.detection import DetectionGallery

    offered = {}
    gallery = SimpleNamespace(offer=lambda **kw: offered.update(kw))
    scorer = DetectionGallery({1: "thing"}, threshold=0.5)
    batch = Batch(torch.zeros(3, 3, 8, 8), sample_ids=torch.arange(3))
    one = [[0], [0], [0]]
    scorer.clean(batch, None, {"num_gt": [1, 1, 1], "dt_score": [[0.9]] * 3, "dt_match": [[1]] * 3, "dt_ignore": one,
                               "tp": [1, 1, 1], "fp": [0, 0, 0], "fn": [0, 0, 0]})
    # 0: objects gone, a 0.2 detection left; 1: objects gone, a confident false detection; 2: the object missed
    records = {"num_gt": [0, 0, 1], "dt_score": [[0.2], [0.9], [0.2]], "dt_match": one, "dt_ignore": one,
               "tp": [0, 0, 0], "fp": [0, 1, 0], "fn": [0, 0, 1]}
    scorer.offer(gallery, SimpleNamespace(perturbation="zoom_in", severity=5), batch, None, records, ["a", "b", "c"])
    assert offered["scores"].tolist() == pytest.approx([0.0, 1.0, 2 * 0.9 / 1.9])
