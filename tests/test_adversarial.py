"""Adversarial patches: the fitted attack, its random control, the saved state and the family summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import visionstress as vs
import visionstress.evaluators  # noqa: F401  (registers the family summaries, as a run does)
from visionstress.options import OptionError, resolve_options
from visionstress.patches import PatchFitError, _fit_batches, fit_settings
from visionstress.perturbations import get_perturbation
from visionstress.perturbations.adversarial import PATCH_AREAS, PatchState, fit_subset, paste_patch, patch_regions

from conftest import demo_prepare_context

FAST = {"patch_steps": 4, "patch_batch_size": 8}


def _prepare(task, tmp_path, options=None, severities=(4,), limit=40, names=("adversarial_patch", "random_patch")):
    """One run's prepare phase: one context, state under `tmp_path / "prepared"` (a report folder's layout)."""
    context = demo_prepare_context(task, tmp_path / "prepared", {**FAST, **(options or {})}, severities=severities,
                                   limit=limit)
    return context, {name: get_perturbation(name).prepare(context) for name in names}


def _state_bytes(model: torch.nn.Module) -> dict[str, bytes]:
    return {k: v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items()}


# --- the model is never changed ------------------------------------------------------------------

@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_fitting_leaves_weights_buffers_and_modes_unchanged(task, tmp_path):
    context = demo_prepare_context(task, tmp_path, FAST, severities=(5,), limit=40)
    model = context.adapter.model
    model.train()  # even a model left in train mode must not have its BatchNorm statistics updated
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = _state_bytes(model)
    get_perturbation("adversarial_patch").prepare(context)
    assert _state_bytes(model) == before, "fitting changed the model's weights or buffers"
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters()), "fitting wrote gradients into the model"
    assert all(m.training for m in model.modules()), "the model's train/eval modes were not restored"


def test_a_torchvision_resnet_with_random_weights_fits_unchanged(tmp_path):
    from torchvision.models import resnet18

    from visionstress.models import ClassifierAdapter, DataConfig

    context = demo_prepare_context("classification", tmp_path, FAST, severities=(4,), limit=24)
    model = resnet18(weights=None, num_classes=6).eval()
    config = DataConfig(input_size=(64, 64), resize=None, interpolation="bilinear", mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225), channel_order="RGB")
    context.adapter = ClassifierAdapter(model, config)
    before = _state_bytes(model)
    prepared = get_perturbation("adversarial_patch").prepare(context)
    assert _state_bytes(model) == before
    assert prepared.state.patches[0.1].shape[0] == 3 and not model.training


def test_a_model_without_gradients_is_a_clear_error(tmp_path):
    context = demo_prepare_context("classification", tmp_path, FAST, severities=(4,), limit=24)
    module = context.adapter.model
    context.adapter.model = lambda x: module(x).detach()  # what an ONNX session looks like to autograd
    with pytest.raises(PatchFitError, match="does not depend differentiably.*--patch-from"):
        get_perturbation("adversarial_patch").prepare(context)


def test_a_model_that_overflows_is_a_clear_error(tmp_path):
    """Caught by the adapter's finiteness check, or (where the adapter defers it) by the fitting loop."""
    from visionstress.models.adapters import ModelOutputError

    context = demo_prepare_context("classification", tmp_path, FAST, severities=(4,), limit=24)
    module = context.adapter.model
    context.adapter.model = lambda x: module(x) * float("inf")
    with pytest.raises((PatchFitError, ModelOutputError), match="NaN or infinite logits|patch loss became nan"):
        get_perturbation("adversarial_patch").prepare(context)


def test_a_loss_that_overflows_stops_the_fit(tmp_path, monkeypatch):
    import visionstress.patches as patches

    context = demo_prepare_context("classification", tmp_path, FAST, severities=(4,), limit=24)
    real = patches.task_loss

    def overflowing(*args):
        loss, hits, total = real(*args)
        return loss * float("inf"), hits, total

    monkeypatch.setattr(patches, "task_loss", overflowing)
    with pytest.raises(PatchFitError, match="the patch loss became -?inf at step 1 .*--patch-lr"):
        get_perturbation("adversarial_patch").prepare(context)


# --- the adapters' differentiable forward ----------------------------------------------------------

@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_forward_sees_what_predict_sees_with_gradients(task, tmp_path):
    context = demo_prepare_context(task, tmp_path, limit=4)
    batch = next(iter(context.batches()))
    images = (batch.images.float() / 255).requires_grad_(True)
    predicted = context.adapter.predict(images.detach())
    out = context.adapter.forward(images)
    if task == "detection":
        for a, b in zip(out.scores, predicted.scores):
            torch.testing.assert_close(a.detach(), b, atol=1e-5, rtol=1e-5)
        loss = sum(s.sum() for s in out.scores)
    else:
        torch.testing.assert_close(out.detach(), predicted.logits, atol=1e-5, rtol=1e-5)
        loss = out.logsumexp(1).sum()
    loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


# --- placement: replay, pairing with the control, detection boxes -------------------------------------

def test_replay_of_one_sample_alone_equals_its_row_in_a_batch(tmp_path):
    _, prepared = _prepare("classification", tmp_path, severities=(3,))
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = vs.Batch(images, sample_ids=torch.tensor([5, 17, 2, 99, 40, 8]))
    for p in prepared.values():
        full = p(batch, severity=3, seed=4)
        for i in (0, 3, 5):
            alone = p(batch.select([i]), severity=3, seed=4)
            torch.testing.assert_close(alone.images[0], full.images[i], atol=1e-6, rtol=0)
            params = {k: v[i:i + 1] for k, v in full.params.items()}
            replayed = p(batch.select([i]), severity=3, seed=123, params=params)
            torch.testing.assert_close(replayed.images[0], full.images[i], atol=1e-6, rtol=0)


def _coverage(p, batch, severity, seed=0):
    """Where the patch landed: pixels whose value changed (textures never equal the zero image)."""
    return (p(batch, severity=severity, seed=seed).images - batch.images).abs().sum(1) > 0


def test_control_has_the_same_shape_area_and_placements_as_the_attack(tmp_path):
    _, prepared = _prepare("classification", tmp_path, severities=(2, 4, 5))
    attack, control = prepared["adversarial_patch"], prepared["random_patch"]
    batch = vs.Batch(torch.zeros(64, 3, 48, 80), sample_ids=torch.arange(1000, 1064))
    for severity in (2, 4, 5):
        area = attack.level(severity)
        a = attack(batch, severity=severity, seed=1)
        c = control(batch, severity=severity, seed=1)
        assert torch.equal(a.params["placement_key"], c.params["placement_key"])
        covered_a, covered_c = _coverage(attack, batch, severity, 1), _coverage(control, batch, severity, 1)
        assert (covered_a == covered_c).float().mean() > 0.995  # the same pixels, up to anti-aliased edges
        # covered area (a white texture on black: pixel value = coverage): the table's fraction of the
        # image, times the side jitter's mean square (1.0033)
        white = control.with_state(PatchState(patches={area: torch.ones(3, 8, 8)}))
        mean_area = float(white(batch, severity=severity, seed=1).images[:, 0].mean())
        assert mean_area == pytest.approx(area * 1.0033, rel=0.03), (severity, mean_area)
    # placements are spread over the image (not all in one spot)
    centres = [torch.nonzero(m).float().mean(0) for m in _coverage(control, batch, 4, 1)]
    spread = torch.stack(centres).std(0)
    assert (spread > torch.tensor([5.0, 8.0])).all()


def test_detection_patches_land_inside_their_boxes_and_move_with_them(tmp_path):
    _, prepared = _prepare("detection", tmp_path, severities=(5,))
    for p in prepared.values():
        boxes = torch.tensor([[10.0, 12.0, 42.0, 40.0], [50.0, 5.0, 70.0, 45.0]])
        batch = vs.Batch(torch.zeros(1, 3, 64, 96), sample_ids=torch.tensor([7]),
                         boxes=[vs.ObjectTargets(boxes=boxes, labels=torch.tensor([1, 2]))])
        covered = _coverage(p, batch, 5)[0]
        inside = torch.zeros(64, 96, dtype=torch.bool)
        for x0, y0, x1, y1 in boxes.long().tolist():
            inside[y0:y1, x0:x1] = True
        assert covered.any() and not (covered & ~inside).any(), "a patch spilled outside its box"
        for x0, y0, x1, y1 in boxes.long().tolist():  # one patch per object, ~20% of its box
            share = covered[y0:y1, x0:x1].float().mean()
            assert 0.12 < share < 0.3
        moved = batch.replace(boxes=[vs.ObjectTargets(boxes=boxes + torch.tensor([3.0, 7.0, 3.0, 7.0]),
                                                      labels=torch.tensor([1, 2]))])
        out, out_moved = p(batch, severity=5, seed=0), p(moved, severity=5, seed=0)
        torch.testing.assert_close(out_moved.images[0, :, 7:, 3:], out.images[0, :, :-7, :-3], atol=1e-5, rtol=0)
        assert out.boxes[0].occluded is not None and (out.boxes[0].occluded > 0.1).all()


def test_target_class_limits_detection_patches_to_its_objects(tmp_path):
    _, prepared = _prepare("detection", tmp_path, {"patch_target_class": "square"}, severities=(5,), limit=None)
    category = prepared["adversarial_patch"].state.target_category
    assert category == 5  # demo categories: index + 1, square is the fifth class
    boxes = torch.tensor([[10.0, 12.0, 42.0, 40.0], [50.0, 5.0, 70.0, 45.0]])
    batch = vs.Batch(torch.zeros(1, 3, 64, 96), boxes=[vs.ObjectTargets(boxes=boxes, labels=torch.tensor([5, 2]))])
    covered = _coverage(prepared["random_patch"], batch, 5)[0]
    assert covered[12:40, 10:42].any() and not covered[5:45, 50:70].any()


def test_segmentation_pixels_under_the_patch_are_not_scored(tmp_path):
    p = get_perturbation("random_patch")
    batch = vs.Batch(torch.zeros(2, 3, 32, 32), masks=torch.ones(2, 32, 32, dtype=torch.long))
    out = p(batch, severity=5, seed=0)
    covered = (out.images - batch.images).abs().sum(1) > 0.5
    assert (out.masks == batch.ignore_index).any()
    assert (out.masks[~covered & (out.masks == batch.ignore_index)]).numel() < 0.02 * covered.sum()


def test_unprepared_attack_says_how_to_get_a_patch():
    with pytest.raises(ValueError, match="needs a patch fitted on the model.*--patch-from"):
        get_perturbation("adversarial_patch")(torch.rand(1, 3, 32, 32), severity=3)


# --- fit subset, saved state, transfer --------------------------------------------------------------

def test_fit_and_scored_images_are_disjoint_and_cover_the_dataset(tmp_path):
    context, prepared = _prepare("classification", tmp_path, severities=(4,), limit=None)
    ids = torch.arange(144)
    fitted = set()
    stream = _fit_batches(context, fit_settings(context))
    for _ in range(30):  # several epochs of the fitting stream
        fitted.update(next(stream).sample_ids.tolist())
    for p in prepared.values():
        scored = set(ids[p.sample_filter(ids)].tolist())
        assert not fitted & scored and fitted | scored == set(ids.tolist())
    assert 0.1 < len(fitted) / 144 < 0.3  # about the default 20%
    # the split is a function of the sample id alone
    assert torch.equal(fit_subset(ids, 0.2)[50:60], fit_subset(ids[50:60], 0.2))
    assert prepared["adversarial_patch"].prepared_summary()["fit_images"] == len(fitted)


def test_a_saved_patch_reloads_to_identical_results(tmp_path):
    context, prepared = _prepare("classification", tmp_path, severities=(3, 5))
    batch = vs.Batch(torch.rand(4, 3, 64, 64), sample_ids=torch.tensor([1, 2, 3, 4]))
    for name, p in prepared.items():
        state_dir = tmp_path / "prepared" / name
        assert {f.name for f in state_dir.iterdir()} >= {"patch.json", "patches.safetensors", "patch_area_0.05.png",
                                                          "patch_area_0.2.png"}
        reloaded = get_perturbation(name).load_prepared(tmp_path / "prepared", context)
        for severity in (3, 5):
            again = reloaded(batch, severity=severity, seed=2).images
            assert torch.equal(again, p(batch, severity=severity, seed=2).images)
        assert reloaded.prepared_summary()["areas"] == [0.05, 0.2]


def test_patch_from_evaluates_a_reports_patches_on_another_model(tmp_path):
    source, prepared = _prepare("classification", tmp_path / "v1", severities=(4,))
    context = demo_prepare_context("classification", tmp_path / "v2" / "prepared", {"patch_from": tmp_path / "v1"},
                                   severities=(4,), limit=40)
    transferred = get_perturbation("adversarial_patch").prepare(context)
    assert torch.equal(transferred.state.patches[0.1], prepared["adversarial_patch"].state.patches[0.1])
    summary = transferred.prepared_summary()
    assert summary["source"] == "patch_from" and summary["patch_from"] == str(tmp_path / "v1")
    # saved again beside the new report, so resume and the report work the same
    assert (tmp_path / "v2" / "prepared" / "adversarial_patch" / "patches.safetensors").is_file()


def test_patch_from_refuses_another_task_image_size_or_area(tmp_path):
    _prepare("classification", tmp_path / "v1", severities=(4,), names=("adversarial_patch",))
    other_task = demo_prepare_context("segmentation", tmp_path / "s", {"patch_from": tmp_path / "v1"}, severities=(4,))
    with pytest.raises(OptionError, match="--patch-from .*fitted for classification, this run is segmentation"):
        get_perturbation("adversarial_patch").prepare(other_task)
    other_area = demo_prepare_context("classification", tmp_path / "a", {"patch_from": tmp_path / "v1"},
                                      severities=(2,))
    with pytest.raises(OptionError, match="no patch for area.*0.02.*it has 0.1"):
        get_perturbation("adversarial_patch").prepare(other_area)
    meta_path = tmp_path / "v1" / "prepared" / "adversarial_patch" / "patch.json"
    meta = json.loads(meta_path.read_text())
    meta["summary"]["image_size"] = [224, 224]
    meta_path.write_text(json.dumps(meta))
    same = demo_prepare_context("classification", tmp_path / "b", {"patch_from": tmp_path / "v1"}, severities=(4,))
    with pytest.raises(OptionError, match="fitted on 224x224 images, this run's are 64x64"):
        get_perturbation("adversarial_patch").prepare(same)
    nowhere = demo_prepare_context("classification", tmp_path / "c", {"patch_from": tmp_path / "nope"}, severities=(4,))
    with pytest.raises(OptionError, match="--patch-from .*nope: no saved adversarial_patch patches"):
        get_perturbation("adversarial_patch").prepare(nowhere)


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(OptionError, match="--patch-fit-fraction 1.0: must be between 0 and 1"):
        resolve_options("classification", {"patch_fit_fraction": 1.0})
    with pytest.raises(OptionError, match="--patch-target-class does not apply to --task classification"):
        resolve_options("classification", {"patch_target_class": "circle"})
    context = demo_prepare_context("classification", tmp_path, {"patch_target": "hexagon"}, severities=(4,), limit=8)
    with pytest.raises(OptionError, match="--patch-target 'hexagon': not a class.*circle, cross"):
        get_perturbation("adversarial_patch").prepare(context)
    context = demo_prepare_context("detection", tmp_path, {"patch_target_class": "99"}, severities=(4,), limit=8)
    with pytest.raises(OptionError, match="--patch-target-class '99': not a category.*1=circle"):
        get_perturbation("adversarial_patch").prepare(context)


@pytest.mark.parametrize("area", [0.0, 1.0, 1.5, -0.1])
def test_area_outside_zero_one_is_refused_in_a_suite_table(area, tmp_path):
    from visionstress.suite import SuiteError, load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(f"perturbations:\n  - {{name: random_patch, table: [0.01, 0.02, {area}, 0.1, 0.2]}}\n")
    expected = (r"suite.yaml: perturbations\[0\].table\[2\]: (.*patch area .* is outside \(0, 1\)|must be a number from "
                r"0 to 1 \(area\))")  # the declared field refuses what is outside [0, 1]; the kernel check 0 and 1
    with pytest.raises(SuiteError, match=expected):
        load_suite(path)
    with pytest.raises(ValueError, match="outside"):
        get_perturbation("random_patch").with_state(PatchState(patches={area: torch.rand(3, 8, 8)}))


# --- the attack works ----------------------------------------------------------------------------

def _held_out_top1(context, perturbation, severity):
    correct, targets = [], []
    for batch in context.batches():
        batch = batch.select(torch.nonzero(perturbation.sample_filter(batch.sample_ids)).flatten())
        view = batch if severity == 0 else perturbation(batch, severity=severity, seed=0)
        predicted = context.adapter.predict(view.images).logits.argmax(1)
        correct += (predicted == batch.labels).tolist()
        targets += predicted.tolist()
    return float(np.mean(correct)), np.bincount(targets, minlength=6) / len(targets)


def test_patch_beats_its_control_and_grows_with_area_on_the_demo(tmp_path):
    context, prepared = _prepare("classification", tmp_path, {"patch_steps": 40, "patch_batch_size": 16},
                                 severities=(1, 5), limit=None)
    attack, control = prepared["adversarial_patch"], prepared["random_patch"]
    clean, _ = _held_out_top1(context, attack, 0)
    adv_small, _ = _held_out_top1(context, attack, 1)
    adv_large, _ = _held_out_top1(context, attack, 5)
    rand_small, _ = _held_out_top1(context, control, 1)
    rand_large, _ = _held_out_top1(context, control, 5)
    # 1% of the image: the control barely matters, the attack already takes most of top-1 away
    assert clean - rand_small < 0.15 and adv_small < rand_small - 0.3
    assert adv_large < rand_large and adv_large < adv_small < clean


def test_targeted_patch_moves_predictions_to_the_target(tmp_path):
    context, prepared = _prepare("classification", tmp_path, {"patch_steps": 40, "patch_batch_size": 16,
                                                              "patch_target": "triangle"},
                                 severities=(5,), limit=None, names=("adversarial_patch",))
    attack = prepared["adversarial_patch"]
    _, clean_share = _held_out_top1(context, attack, 0)
    _, patched_share = _held_out_top1(context, attack, 5)
    triangle = context.class_names.index("triangle")
    assert clean_share[triangle] < 0.3 and patched_share[triangle] > 0.7
    assert attack.prepared_summary()["target"] == {"index": triangle, "name": "triangle"}


# --- the family summary ---------------------------------------------------------------------------

def _summary_context(records, task="classification", prepared=None, bootstrap=200):
    from visionstress.family_summaries import SummaryContext

    return SummaryContext(task=task, records=records, rows=[], statistics=None,
                          main_metric={"classification": "top1", "segmentation": "mIoU", "detection": "AP"}[task],
                          class_names=[str(i) for i in range(6)], bootstrap=bootstrap, seed=0,
                          prepared=prepared or {"adversarial_patch": {"area_by_severity": {"4": 0.1}, "target": None}},
                          options={}, breakdowns={})


def test_family_summary_counts_success_on_held_out_images_only():
    from visionstress.family_summaries import family_summaries

    n = 40
    ids = np.arange(n)
    label = ids % 6
    clean_correct = ids < 30  # 30 clean-correct images
    held = ids[10:]  # the patch passes score images 10..39 (20 clean-correct, 10 not)
    adv_correct = held >= 30  # turns every clean-correct held-out image wrong except none -> 20/20
    adv_correct[:5] = True  # ... but images 10..14 stay correct -> 15/20
    rand_correct = clean_correct[10:].copy()
    rand_correct[:2] = False  # the control turns 2 of 20 wrong
    rows = [{"sample_id": i, "perturbation": "clean", "severity": 0, "correct": bool(clean_correct[i]),
             "label": int(label[i]), "prediction": int(label[i])} for i in ids]
    for name, correct in (("adversarial_patch", adv_correct), ("random_patch", rand_correct)):
        rows += [{"sample_id": int(i), "perturbation": name, "severity": 4, "correct": bool(c), "label": int(label[i]),
                  "prediction": int(label[i])} for i, c in zip(held, correct)]
    summary = family_summaries(["adversarial"], _summary_context(pd.DataFrame(rows)))["adversarial"]
    (area,) = summary["areas"]
    assert area["images"] == 30 and area["area"] == 0.1
    assert area["clean"]["value"] == pytest.approx(20 / 30)  # on the held-out images, not all 40 (30/40)
    assert area["adversarial_patch"]["success"]["value"] == pytest.approx(15 / 20)
    assert area["random_patch"]["success"]["value"] == pytest.approx(2 / 20)
    assert area["adversarial_patch"]["metric"]["value"] == pytest.approx(15 / 30)
    assert area["effect"]["value"] == pytest.approx(18 / 30 - 15 / 30)
    low, high = area["adversarial_patch"]["success"]["ci"]
    assert low < 0.75 < high and 0.4 < low and high <= 1.0
    assert summary["held_out_images"] == 30


def test_family_summary_on_a_real_detection_pass(tmp_path):
    """Records written by the detection evaluator; success = objects found clean and lost under the patch."""
    from visionstress.evaluators import DetectionEvaluator
    from visionstress.family_summaries import family_summaries

    context, prepared = _prepare("detection", tmp_path, severities=(5,), limit=24)
    categories = [{"id": i, "name": n} for i, n in zip(context.category_ids, context.class_names)]
    evaluator = DetectionEvaluator(categories, bootstrap=0)
    frames = []
    for batch in context.batches():
        keep = prepared["adversarial_patch"].sample_filter(batch.sample_ids)
        views = [("clean", 0, batch)] + [(n, 5, p(batch.select(torch.nonzero(keep).flatten()), severity=5))
                                         for n, p in prepared.items()]
        for name, severity, view in views:
            out = context.adapter.predict(view.images)
            columns = evaluator.update_arrays(name, severity, view.sample_ids, [view.image_size] * len(view), view.boxes, out)
            frames.append(pd.DataFrame(columns).assign(perturbation=name, severity=severity))
    records = pd.concat(frames, ignore_index=True)
    info = {n: p.prepared_summary() for n, p in prepared.items()}
    summary = family_summaries(["adversarial"], _summary_context(records, "detection", info, bootstrap=20))
    (area,) = summary["adversarial"]["areas"]
    assert area["area"] == 0.2 and area["images"] == int((records["perturbation"] == "random_patch").sum())
    for name in ("adversarial_patch", "random_patch"):
        assert 0.0 <= area[name]["success"]["value"] <= 1.0
        assert 0.0 <= area[name]["metric"]["value"] <= 1.0
    assert area["effect"]["value"] == pytest.approx(area["random_patch"]["metric"]["value"]
                                                    - area["adversarial_patch"]["metric"]["value"])
    assert summary["adversarial"]["patches"]["adversarial_patch"]["files"]["0.2"] == "patch_area_0.2.png"


def test_patch_areas_table():
    assert get_perturbation("adversarial_patch").severities == PATCH_AREAS == (0.01, 0.02, 0.05, 0.10, 0.20)
    assert get_perturbation("adversarial_patch").kind == "model-aware"
    assert get_perturbation("random_patch").family == "adversarial"


def test_paste_is_differentiable_and_batched():
    images = torch.rand(3, 3, 40, 40)
    texture = torch.rand(3, 12, 12, requires_grad=True)
    regions, present = patch_regions(vs.Batch(images))
    out, coverage = paste_patch(images, texture, torch.rand(3, 1, 4), regions, present, 0.1)
    out.sum().backward()
    assert texture.grad is not None and texture.grad.abs().sum() > 0
    assert coverage.sum(dim=(1, 2)).min() > 0.08 * 1600 * 0.8


# --- suite, list, show ---------------------------------------------------------------------------

def test_adversarial_preset_runs_both_patches_at_all_five_areas():
    from visionstress.suite import load_suite

    suite = load_suite("adversarial")
    assert suite.pairs() == [(n, s) for n in ("adversarial_patch", "random_patch") for s in range(1, 6)]


def test_list_and_show_draw_fitted_patches(tmp_path, monkeypatch):
    from pathlib import Path

    from PIL import Image
    from typer.testing import CliRunner

    from visionstress import cli
    from visionstress.cli import app

    monkeypatch.setattr(cli.console, "width", 250)  # the table folds long cells on a narrow terminal
    runner = CliRunner()
    result = runner.invoke(app, ["list", "--family", "adversarial"])
    assert result.exit_code == 0 and "adversarial_patch" in result.output and "random_patch" in result.output
    assert "0.01 | 0.02 | 0.05 | 0.1 | 0.2" in result.output
    scene = Path(__file__).resolve().parents[1] / "data" / "demo" / "scene.png"
    result = runner.invoke(app, ["show", str(scene), "-p", "adversarial_patch", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "--patch-from REPORT" in result.output
    result = runner.invoke(app, ["show", str(scene), "-p", "*patch", "-o", str(tmp_path / "y.png")])
    assert result.exit_code == 0 and "left out adversarial_patch" in result.output
    _prepare("classification", tmp_path / "report", severities=(3, 5))
    out = tmp_path / "z.png"
    result = runner.invoke(app, ["show", str(scene), "-p", "adversarial_patch,random_patch", "-s", "3,5",
                                 "--patch-from", str(tmp_path / "report"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert Image.open(out).height > 2 * 192  # two rows: the attack and its control
    result = runner.invoke(app, ["show", str(scene), "-p", "adversarial_patch", "-s", "1",
                                 "--patch-from", str(tmp_path / "report"), "-o", str(out)])
    assert result.exit_code == 2 and "no adversarial_patch for severities 1; it has severities 3, 5" in result.output
    result = runner.invoke(app, ["show", str(scene), "-p", "random_patch", "-s", "1",
                                 "--patch-from", str(tmp_path / "report"), "-o", str(out)])
    assert result.exit_code == 0  # the control draws its own noise where the report has none


# --- the report ------------------------------------------------------------------------------------

def test_report_shows_the_patches_success_curves_and_patch_failures(tmp_path):
    from visionstress.family_summaries import family_summaries
    from visionstress.report import render_report
    from visionstress.scorecard import SCHEMA_VERSION, Scorecard

    context, prepared = _prepare("classification", tmp_path, severities=(3, 5), limit=48)
    rows = []
    for batch in context.batches():
        keep = torch.nonzero(prepared["adversarial_patch"].sample_filter(batch.sample_ids)).flatten()
        passes = [("clean", 0, batch)] + [(n, s, p(batch.select(keep), severity=s)) for n, p in prepared.items()
                                          for s in (3, 5)]
        for name, severity, view in passes:
            predicted = context.adapter.predict(view.images).logits.argmax(1)
            rows += [{"sample_id": int(i), "perturbation": name, "severity": severity, "label": int(y),
                      "prediction": int(q), "correct": bool(q == y)}
                     for i, y, q in zip(view.sample_ids, view.labels, predicted)]
    info = {n: p.prepared_summary() for n, p in prepared.items()}
    summaries = family_summaries(["adversarial"], _summary_context(pd.DataFrame(rows), prepared=info, bootstrap=50))
    gallery_png = tmp_path / "gallery" / "a.png"
    gallery_png.parent.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(gallery_png)
    gallery = [{"perturbation": "adversarial_patch", "severity": 5, "sample_id": 3, "path": "x.png",
                "caption": "circle → cross", "clean_image": "gallery/a.png", "perturbed_image": "gallery/a.png"}]
    card = Scorecard(schema_version=SCHEMA_VERSION, task="classification",
                     model={"spec": "demo", "path": None, "sha256": None, "format": "python"},
                     dataset={"path": "data", "num_samples": 48}, suite={"name": "adversarial", "perturbations": []},
                     seed=0, data_config={}, environment={},
                     results=[{"perturbation": "clean", "family": "clean", "severity": 0, "metrics": {"top1": 0.7}}],
                     summaries=summaries, breakdowns={"gallery": gallery})
    html = render_report(card, tmp_path)
    assert 'id="adversarial"' in html and "Adversarial patches" in html
    assert html.count('alt="adversarial_patch, ') == 2 and html.count('alt="random_patch, ') == 2
    assert 'alt="attack success rate against patch area"' in html
    assert "Worst patch failures" in html and "circle → cross" in html
    held_out = summaries["adversarial"]["held_out_images"]
    assert held_out > 0 and f"Scored on the {held_out} held-out images" in html
    missing = render_report(card, tmp_path / "elsewhere")  # patches outside the report folder are not read
    assert "patch missing" in missing


@pytest.mark.cuda
def test_fitting_on_cuda_with_autocast_leaves_the_model_unchanged(tmp_path):
    context = demo_prepare_context("classification", tmp_path, FAST, severities=(4,), limit=40)
    context.device = torch.device("cuda")
    context.adapter = type(context.adapter)(context.adapter.model, context.adapter.data_config, device="cuda")
    before = _state_bytes(context.adapter.model)
    prepared = get_perturbation("adversarial_patch").prepare(context)
    assert _state_bytes(context.adapter.model) == before
    patch = prepared.state.patches[0.1]
    assert torch.isfinite(patch).all() and patch.min() >= 0 and patch.max() <= 1
    batch = vs.Batch(torch.rand(4, 3, 64, 64), sample_ids=torch.arange(4))
    cpu = prepared(batch, severity=4, seed=0).images
    gpu = prepared(batch.to("cuda"), severity=4, seed=0).images.cpu()
    assert (cpu - gpu).abs().mean() < 1e-3


def test_circle_patches_cover_the_same_area_as_squares():
    batch = vs.Batch(torch.zeros(64, 3, 48, 80), sample_ids=torch.arange(64))
    p = get_perturbation("random_patch")
    areas, reach = {}, {}
    ys, xs = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(80) + 0.5, indexing="ij")
    for shape in ("square", "circle"):
        white = p.with_state(PatchState(patches={0.1: torch.ones(3, 8, 8)}, shape=shape))
        covered = white(batch, severity=4, seed=0).images[:, 0]
        areas[shape] = float(covered.mean())
        # how far the patch reaches from its centre, relative to sqrt(its area): a disc 1/sqrt(pi) = 0.56,
        # a square's corners 1/sqrt(2) = 0.71
        weight = covered[0]
        cx, cy = float((weight * xs).sum() / weight.sum()), float((weight * ys).sum() / weight.sum())
        inside = weight > 0.5
        reach[shape] = float(torch.sqrt((xs[inside] - cx) ** 2 + (ys[inside] - cy) ** 2).max() / weight.sum().sqrt())
    assert areas["circle"] == pytest.approx(0.1 * 1.0033, rel=0.03)
    assert areas["square"] == pytest.approx(areas["circle"], rel=0.03)
    assert reach["circle"] < 0.62 < 0.66 < reach["square"]


def test_the_adversarial_suite_runs_through_visionstress_run(tmp_path):
    """`visionstress run --suite adversarial` fits the patches in the prepare phase, scores only the held-out
    images (with the clean metric on the same images beside each row), saves the patches beside the
    scorecard, and a second model evaluated with `patch_from` uses them instead of fitting."""
    card = vs.run(suite="adversarial", limit=40, bootstrap=0, workers=0, gallery=0, patch_steps=3,
                  patch_batch_size=8, out=tmp_path / "run")
    row = next(r for r in card.results if r["perturbation"] == "adversarial_patch" and r["severity"] == 4)
    assert "clean_same_images" in row and row["clean_same_images"]["metrics"]["top1"] >= 0
    assert card.prepared["adversarial_patch"]["fit_images"] > 0 and "adversarial" in card.summaries
    assert (tmp_path / "run" / "prepared" / "adversarial_patch" / "patches.safetensors").is_file()
    again = vs.run(suite="adversarial", limit=40, bootstrap=0, workers=0, gallery=0, out=tmp_path / "transfer",
                   patch_from=tmp_path / "run")
    assert again.results == card.results  # the same model with the same patches: the same numbers
