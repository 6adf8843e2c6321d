"""Fitting universal adversarial patches on the model under test, and saving / reloading them.

This is the prepare phase of `adversarial_patch` (perturbations/adversarial.py): before the evaluation
loop, one patch per area is optimised with Adam in pixel space (kept in [0, 1]) on a deterministic
subset of the images (`--patch-fit-fraction` by sample-id hash; the passes score only the others). Each
step draws a fresh placement per image plus brightness, contrast and optional perspective jitter
(expectation over transformation, Athalye et al. 2018), pastes the patch with the same kernel the
evaluation uses, and runs the model through its adapter's `forward` (the same preprocessing as
`predict`, with autograd), so the gradient sees what the model sees. One batch of activations is
alive at a time.

The model is never changed: it stays in eval mode, its parameters get `requires_grad` False for the
duration (restored after) so no gradient is ever written into them, and the optimiser holds the patch
only. The best-known open toolkit shipped the opposite bug twice (patch training in train mode updated
BatchNorm statistics); the tests check weights and buffers byte for byte.

Saved state, under the perturbation's state folder: `patches.safetensors` (the float32 textures),
one PNG per area to look at, and `patch.json` (what was fitted, on which images, how). `--patch-from
REPORT` evaluates another model with a report's patches (the transfer attack between model versions).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionstress.batch import Batch, ObjectTargets
from visionstress.options import OptionError
from visionstress.perturbations import PrepareContext
from visionstress.perturbations.adversarial import (
    Jitter,
    PatchPerturbation,
    PatchState,
    area_key,
    check_area,
    content_key,
    fit_subset,
    nominal_side,
    paste_patch,
    patch_regions,
    random_texture,
    texture_resolution,
)

STATE_SUBDIR = "prepared"
"""Where a run keeps prepared state, relative to its report folder: `prepared/<perturbation name>/`."""
STATE_FILE = "patch.json"
TENSOR_FILE = "patches.safetensors"
FORMAT = "visionstress-patch"
FORMAT_VERSION = 1
CACHE_BYTES = 1 << 30
"""Fit images are kept in host memory up to this size (re-read from the dataset each epoch beyond it)."""
MARGIN = 5.0
"""Untargeted losses stop pushing an image (or pixel) once its true class trails the best other class by
this many logits: effort goes to the images not yet fooled (the hinge of Carlini & Wagner 2017)."""
MATCH_IOU = 0.3
"""Detection: a detection whose box overlaps a ground-truth object by this IoU is pushed down."""
_SUCCESS_WINDOW = 0.2  # the last fifth of the steps estimates the success rate on the fit images


class PatchFitError(RuntimeError):
    """Fitting cannot proceed (no fit images, a model without gradients); the message says what to do."""


@dataclass(frozen=True)
class FitSettings:
    """How the patches are fitted: the run options, resolved against the task and its classes."""

    steps: int
    lr: float
    batch_size: int
    fit_fraction: float
    shape: str
    target: int | None = None  # class index (classification, segmentation): targeted when set
    target_category: int | None = None  # detection: only objects of this category id
    brightness: float = 0.1
    contrast: float = 0.1
    perspective: float = 0.0
    score_threshold: float = 0.5  # detection: an object counts as found above this score (fit success)

    def eot(self) -> dict[str, float]:
        return {"brightness": self.brightness, "contrast": self.contrast, "perspective": self.perspective}


@dataclass
class FitResult:
    """One fitted patch and how the fit went."""

    patch: Tensor  # [3, R, R] float32 in [0, 1], on the host
    loss: float  # mean loss over the last fifth of the steps
    fit_success: float  # share of fit images (pixels, objects) fooled over the last fifth of the steps
    seconds: float
    images_seen: int


# --- options ------------------------------------------------------------------------------------------

def fit_settings(context: PrepareContext) -> FitSettings:
    """The run's patch options, with `patch_target` / `patch_target_class` resolved to an index or id."""
    options = context.options
    target = target_category = None
    if context.task == "detection":
        spec = options.get("patch_target_class")
        if spec is not None:
            target_category = _category(str(spec), context)
    else:
        spec = options.get("patch_target")
        if spec is not None:
            target = _class_index(str(spec), list(context.class_names), "--patch-target")
    return FitSettings(
        steps=int(options["patch_steps"]), lr=float(options["patch_lr"]), batch_size=int(options["patch_batch_size"]),
        fit_fraction=float(options["patch_fit_fraction"]), shape=str(options["patch_shape"]), target=target,
        target_category=target_category, brightness=float(options["patch_eot_brightness"]),
        contrast=float(options["patch_eot_contrast"]), perspective=float(options["patch_eot_perspective"]),
        score_threshold=float(options.get("score_threshold", 0.5)),  # a detection option, when declared
    )


def _class_index(spec: str, names: Sequence[str], flag: str) -> int:
    if spec in names:
        return names.index(spec)
    if spec.strip().isdigit() and int(spec) < len(names):
        return int(spec)
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    raise OptionError(f"{flag} {spec!r}: not a class of this run (a name or an index from 0 to {len(names) - 1}; "
                      f"classes: {shown})")


def _category(spec: str, context: PrepareContext) -> int:
    """A detection category id from a name (needs the run's `category_ids`) or an id."""
    names = list(context.class_names)
    ids = [int(i) for i in context.category_ids]
    if spec in names and ids:
        return ids[names.index(spec)]
    if spec.strip().isdigit() and (int(spec) in ids or not ids):
        return int(spec)
    if spec in names:
        raise OptionError(f"--patch-target-class {spec!r}: this run does not know the category ids of its names; "
                          "give the category id")
    known = ", ".join(f"{i}={n}" for i, n in zip(ids, names))
    raise OptionError(f"--patch-target-class {spec!r}: not a category of this dataset (a name or a category id; "
                      f"categories: {known})")


# --- the prepare phase --------------------------------------------------------------------------------

def prepare_patches(perturbation: PatchPerturbation, context: PrepareContext) -> PatchState:
    """Fit (adversarial) or draw (control) one patch per area of the run's severities, or load them from
    `--patch-from`; save them under `context.state_dir / name` and return the state."""
    source = context.options.get("patch_from")
    if source is not None:
        state = _from_report(perturbation, Path(source), context)
    else:
        state = _fresh(perturbation, context)
    save_patch_state(state, Path(context.state_dir) / perturbation.name)
    return state


def _areas(perturbation: PatchPerturbation, context: PrepareContext) -> dict[int, float]:
    """Severity -> area for the severities the run uses of `perturbation`."""
    severities = context.severities.get(perturbation.name, ())
    return {int(s): check_area(perturbation.name, perturbation.level(int(s))) for s in severities}


def _fresh(perturbation: PatchPerturbation, context: PrepareContext) -> PatchState:
    settings = fit_settings(context)
    areas = _areas(perturbation, context)
    first = _first_batch(context, settings.target_category)
    resolutions = {s: texture_resolution(_nominal_pixels(first, area, settings)) for s, area in areas.items()}
    patches: dict[float, Tensor] = {}
    fits: dict[str, Any] = {}
    seen = 0
    for severity, area in areas.items():
        if perturbation.adversarial:
            context.log(f"{perturbation.name}: fitting the {100 * area:g}% patch "
                        f"({settings.steps} steps, batch {settings.batch_size})")
            result = fit_patch(context, area, resolutions[severity], settings, severity)
            patches[area] = result.patch
            seen = max(seen, result.images_seen)
            fits[area_key(area)] = {"loss": result.loss, "fit_success": result.fit_success,
                                    "seconds": round(result.seconds, 3)}
        else:
            key = content_key(context.seed, severity)
            patches[area] = random_texture(key, resolutions[severity]).cpu()
    summary = {
        "perturbation": perturbation.name, "task": context.task, "source": "fitted" if perturbation.adversarial
        else "random", "model": getattr(context.adapter, "spec", None), "shape": settings.shape,
        "areas": [areas[s] for s in sorted(areas)], "area_by_severity": {str(s): areas[s] for s in sorted(areas)},
        "resolution": {area_key(areas[s]): resolutions[s] for s in areas},
        "image_size": _image_size(context, first), "seed": int(context.seed),
        "fit_fraction": settings.fit_fraction,
        "fit_rule": "images whose sample-id hash falls below fit_fraction are fitted on; passes score the others",
        "target": _target_summary(settings, context),
    }
    if perturbation.adversarial:
        summary.update({"steps": settings.steps, "lr": settings.lr, "batch_size": settings.batch_size,
                        "eot": settings.eot(), "fit_images": seen, "fit": fits})
    return PatchState(patches=patches, shape=settings.shape, fit_fraction=settings.fit_fraction,
                      target_category=settings.target_category, summary=summary)


def _target_summary(settings: FitSettings, context: PrepareContext) -> dict[str, Any] | None:
    names = list(context.class_names)
    if settings.target is not None:
        return {"index": settings.target, "name": names[settings.target] if settings.target < len(names) else None}
    if settings.target_category is not None:
        ids = [int(i) for i in context.category_ids]
        name = names[ids.index(settings.target_category)] if settings.target_category in ids else None
        return {"category_id": settings.target_category, "name": name}
    return None


def _image_size(context: PrepareContext, first: Batch) -> list[int] | None:
    """The size patches are fitted at, which `--patch-from` must match: the model's input size
    (classification) or the first images' size (segmentation); detection patches live on boxes."""
    if context.task == "detection":
        return None
    config = getattr(context.adapter, "data_config", None)
    if context.task == "classification" and config is not None:
        return [int(v) for v in config.input_size]
    return list(first.image_size)


def _first_batch(context: PrepareContext, target_category: int | None) -> Batch:
    """The first non-empty batch (for detection, the first with an object that gets a patch)."""
    for batch in _host_batches(context):
        if context.task != "detection" or bool(patch_regions(batch, target_category)[1].any()):
            return batch
    what = "images" if context.task != "detection" else "objects that get a patch"
    raise PatchFitError(f"{context.task}: the dataset has no {what}; adversarial patches need some")


def _nominal_pixels(batch: Batch, area: float, settings: FitSettings) -> float:
    """The nominal patch side in pixels: on the image, or the median over the first batch's objects."""
    regions, present = patch_regions(batch, settings.target_category)
    region_area = ((regions[..., 2] - regions[..., 0]) * (regions[..., 3] - regions[..., 1]))[present]
    return float(nominal_side(area, region_area.median().item(), settings.shape))


# --- fitting ----------------------------------------------------------------------------------------

def fit_patch(context: PrepareContext, area: float, resolution: int, settings: FitSettings,
              severity: int) -> FitResult:
    """Optimise one `[3, R, R]` patch covering `area` on the fit images (see the module docstring)."""
    device = torch.device(context.device)
    generator = torch.Generator().manual_seed((int(context.seed) * 1_000_003 + severity) % (2 ** 63))
    patch = (0.5 + 0.1 * (2 * torch.rand(3, resolution, resolution, generator=generator) - 1)).to(device)
    patch.requires_grad_(True)
    optimizer = torch.optim.Adam([patch], lr=settings.lr)
    stream = _fit_batches(context, settings)
    tail = max(1, math.ceil(settings.steps * _SUCCESS_WINDOW))
    losses: list[float] = []
    fooled = found = 0.0
    seen: set[int] = set()
    amp_on = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if amp_on else contextlib.nullcontext()
    start = time.perf_counter()
    with frozen(context.adapter.model):
        for step in range(settings.steps):
            batch = next(stream).to(device)
            if len(seen) < (1 << 20):
                seen.update(batch.sample_ids.tolist())
            images = batch.images.float() / 255.0 if batch.images.dtype == torch.uint8 else batch.images.float()
            regions, present = patch_regions(batch, settings.target_category)
            draws, jitter = _eot_draws(regions.shape[:2], settings, generator)
            patched, coverage = paste_patch(images, patch, draws, regions, present, area, settings.shape, jitter)
            with amp:
                output = context.adapter.forward(patched)
            loss, hits, total = task_loss(context.task, output, batch, coverage, settings)
            if not loss.requires_grad and _has_values(output):
                raise PatchFitError(
                    f"{getattr(context.adapter, 'spec', 'the model')}: its output does not depend differentiably on "
                    "the input (an ONNX model, or one that detaches), so no patch can be fitted on it; evaluate "
                    "patches fitted on another model with --patch-from, or run random_patch alone")
            if not bool(torch.isfinite(loss.detach())):
                spec = getattr(context.adapter, "spec", "the model")
                raise PatchFitError(
                    f"{spec}: the patch loss became {float(loss.detach())} at step {step + 1} (a model output "
                    f"overflowed{'; bf16 autocast is on for CUDA' if amp_on else ''}); try a smaller --patch-lr")
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                patch.clamp_(0.0, 1.0)
            if step >= settings.steps - tail:
                losses.append(float(loss.detach()))
                fooled += float(hits)
                found += float(total)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return FitResult(patch=patch.detach().cpu().contiguous(), loss=float(np.mean(losses)),
                     fit_success=fooled / found if found else math.nan, seconds=time.perf_counter() - start,
                     images_seen=len(seen))


def _has_values(output: Any) -> bool:
    """Whether a model output holds any number (a detector may return no detection at all)."""
    if isinstance(output, Tensor):
        return output.numel() > 0
    return any(len(s) for s in getattr(output, "scores", ()))


def _eot_draws(shape: tuple[int, int], settings: FitSettings, generator: torch.Generator) -> tuple[Tensor, Jitter]:
    """Placement uniforms `[B, S, 4]` (the evaluation's distribution) and the photometric / perspective
    jitter of the expectation over transformation, drawn for the whole batch at once."""
    b, s = shape
    draws = torch.rand(b, s, 4, generator=generator)
    jitter = torch.rand(b, s, 4, generator=generator) * 2.0 - 1.0
    perspective = jitter[..., 2:] * settings.perspective if settings.perspective > 0 else None
    return draws, Jitter(brightness=jitter[..., 0] * settings.brightness,
                         contrast=1.0 + jitter[..., 1] * settings.contrast, perspective=perspective)


def task_loss(task: str, output: Any, batch: Batch, coverage: Tensor,
              settings: FitSettings) -> tuple[Tensor, int, int]:
    """The loss to minimise, and (fooled, total) counts for the fit success estimate."""
    if task == "classification":
        return _classification_loss(output, batch.labels, settings.target)
    if task == "segmentation":
        return _segmentation_loss(output, batch.masks, batch.ignore_index, coverage, settings.target)
    if task == "detection":
        return _vanish_loss(output, batch.boxes, settings)
    raise PatchFitError(f"adversarial patches have no loss for task {task!r}")


def _margin(logits: Tensor, labels: Tensor) -> Tensor:
    """True-class logit minus the best other class's, along dim 1."""
    true = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, labels.unsqueeze(1), float("-inf")).amax(1)
    return true - others


def _classification_loss(logits: Tensor, labels: Tensor, target: int | None) -> tuple[Tensor, int, int]:
    logits = logits.float()
    labels = labels.to(logits.device)
    if target is None:
        margin = _margin(logits, labels)
        return margin.clamp_min(-MARGIN).mean(), int((margin < 0).sum()), len(labels)
    wanted = torch.full_like(labels, target)
    return F.cross_entropy(logits, wanted), int((logits.argmax(1) == target).sum()), len(labels)


def _segmentation_loss(logits: Tensor, masks: Tensor, ignore_index: int, coverage: Tensor,
                       target: int | None) -> tuple[Tensor, int, int]:
    """Pixels outside the patch only: the attack must act at a distance, not by covering pixels."""
    logits = logits.float()
    masks = masks.to(logits.device)
    valid = (masks != ignore_index) & (masks < logits.shape[1]) & (coverage < 0.5)
    count = int(valid.sum())
    if count == 0:
        return logits.sum() * 0.0, 0, 0
    if target is None:
        margin = _margin(logits, torch.where(valid, masks, 0))
        return margin.clamp_min(-MARGIN)[valid].mean(), int((margin < 0)[valid].sum()), count
    wanted = torch.full_like(masks, target)
    loss = F.cross_entropy(logits, wanted, reduction="none")[valid].mean()
    return loss, int((logits.argmax(1) == target)[valid].sum()), count


def _vanish_loss(output: Any, targets: list[ObjectTargets], settings: FitSettings) -> tuple[Tensor, int, int]:
    """Sum of the scores of detections on ground-truth objects (IoU >= MATCH_IOU; of the target category
    when one is set), per object: the objects' detections are pushed below the detector's threshold."""
    from torchvision.ops import box_iou

    scores, boxes, labels = torch.cat(output.scores), torch.cat(output.boxes), torch.cat(output.labels)
    device = scores.device
    owner = _owners([len(s) for s in output.scores], device)
    gt_boxes = torch.cat([t.boxes for t in targets]).to(device)
    gt_labels = torch.cat([t.labels for t in targets]).to(device)
    gt_owner = _owners([len(t) for t in targets], device)
    wanted = torch.ones_like(gt_labels, dtype=torch.bool)
    if settings.target_category is not None:
        wanted = gt_labels == settings.target_category
    total = int(wanted.sum())
    if total == 0 or len(scores) == 0:
        return scores.sum() * 0.0, total, total  # nothing detected on the objects: all of them vanished
    hit = (box_iou(boxes.float(), gt_boxes.float()) >= MATCH_IOU) & (owner[:, None] == gt_owner[None]) & wanted[None]
    if settings.target_category is not None:
        hit &= (labels == settings.target_category)[:, None]
    on_object = hit.any(1)
    loss = (scores * on_object).sum() / total
    found = (hit & (scores >= settings.score_threshold)[:, None]).any(0) & wanted
    return loss, total - int(found.sum()), total


def _owners(counts: list[int], device: torch.device) -> Tensor:
    """The image index of each of the concatenated per-image rows."""
    return torch.repeat_interleave(torch.arange(len(counts), device=device), torch.tensor(counts, device=device))


@contextlib.contextmanager
def frozen(model: Any) -> Iterator[None]:
    """The model in eval mode with no parameter requiring a gradient, restored as it was afterwards, so
    fitting can neither update BatchNorm statistics nor write gradients into the weights."""
    if not isinstance(model, nn.Module):
        yield
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    for p, _ in flags:
        p.requires_grad_(False)
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _host_batches(context: PrepareContext) -> Iterator[Batch]:
    """One pass over the run's dataset: `Batch`es (the engine's iterators pair them with extras)."""
    for item in context.batches():
        batch = item[0] if isinstance(item, tuple) else item
        if len(batch):
            yield batch


def _fit_images(context: PrepareContext, settings: FitSettings) -> Iterator[Batch]:
    """One pass over the fit subset (detection: images holding an object that gets a patch)."""
    for batch in _host_batches(context):
        keep = fit_subset(batch.sample_ids, settings.fit_fraction)
        if context.task == "detection":
            keep &= patch_regions(batch, settings.target_category)[1].any(1).to(keep.device)
        if bool(keep.any()):
            yield batch.select(torch.nonzero(keep).flatten().cpu())


def _fit_batches(context: PrepareContext, settings: FitSettings) -> Iterator[Batch]:
    """Batches of `patch_batch_size` fit images of one size, forever: the subset is cached on the host
    when it fits in CACHE_BYTES, else re-read each epoch."""
    cache: list[Batch] = []
    cached = True
    size = 0
    pending: dict[tuple[int, int], list[Batch]] = {}
    for batch in _fit_images(context, settings):
        size += batch.images.numel() * batch.images.element_size()
        cached = cached and size <= CACHE_BYTES
        if cached:
            cache.append(batch)
        else:
            cache.clear()
        yield from _rebatch(pending, batch, settings.batch_size)
    if size == 0:
        raise PatchFitError(
            f"no image falls in the fit subset (--patch-fit-fraction {settings.fit_fraction:g}"
            f"{', images with an object of the target class' if settings.target_category is not None else ''}); "
            "use more images or a larger fraction")
    while True:
        for batch in (cache if cached else _fit_images(context, settings)):
            yield from _rebatch(pending, batch, settings.batch_size)


def _rebatch(pending: dict[tuple[int, int], list[Batch]], batch: Batch, size: int) -> Iterator[Batch]:
    """Add `batch` to the images waiting with its shape; yield every full batch of `size`."""
    waiting = pending.setdefault(batch.image_size, [])
    waiting.append(batch)
    while sum(len(b) for b in waiting) >= size:
        merged = _concat(waiting)
        yield merged.select(range(size))
        rest = merged.select(range(size, len(merged)))
        waiting[:] = [rest] if len(rest) else []


def _concat(batches: list[Batch]) -> Batch:
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    return Batch(
        images=torch.cat([b.images for b in batches]),
        sample_ids=torch.cat([b.sample_ids for b in batches]),
        labels=None if first.labels is None else torch.cat([b.labels for b in batches]),
        boxes=None if first.boxes is None else [t for b in batches for t in b.boxes],
        masks=None if first.masks is None else torch.cat([b.masks for b in batches]),
        ignore_index=first.ignore_index,
    )


# --- saved state ------------------------------------------------------------------------------------

def png_name(area: float) -> str:
    return f"patch_area_{area_key(area)}.png"


def save_patch_state(state: PatchState, state_dir: Path) -> None:
    """Write the textures (safetensors), one PNG per area and `patch.json` into `state_dir`, atomically."""
    from PIL import Image
    from safetensors.torch import save_file

    state_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"area_{area_key(a)}": p.detach().to("cpu", torch.float32).contiguous()
               for a, p in state.patches.items()}
    _atomic(state_dir / TENSOR_FILE, lambda path: save_file(tensors, str(path)))
    files = {}
    for area, patch in state.patches.items():
        pixels = (patch.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        _atomic(state_dir / png_name(area), lambda path: Image.fromarray(pixels).save(path, format="PNG"))
        files[area_key(area)] = png_name(area)
    state.summary.update({"state_dir": str(state_dir), "files": files, "tensor_file": TENSOR_FILE})
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "shape": state.shape, "fit_fraction": state.fit_fraction,
            "target_category": state.target_category, "summary": state.summary}
    _atomic(state_dir / STATE_FILE, lambda path: path.write_text(json.dumps(_plain(meta), indent=2), encoding="utf-8"))


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def load_patch_state(state_dir: str | Path, name: str, device: Any = "cpu") -> PatchState:
    """The state `save_patch_state` wrote for perturbation `name` in `state_dir`; clear errors when the
    folder holds no such state or it is damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state_dir = Path(state_dir)
    meta_path = state_dir / STATE_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PatchFitError(f"{state_dir}: no {STATE_FILE} (not a saved patch folder)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PatchFitError(f"{meta_path}: cannot read it ({exc})") from None
    summary = meta.get("summary") if isinstance(meta, dict) else None
    if not isinstance(summary, dict) or meta.get("format") != FORMAT:
        raise PatchFitError(f"{meta_path}: not a visionstress patch file (format {FORMAT!r} expected)")
    if meta.get("version") != FORMAT_VERSION:
        raise PatchFitError(f"{meta_path}: patch format version {meta.get('version')!r}; this visionstress reads "
                            f"version {FORMAT_VERSION}")
    if summary.get("perturbation") != name:
        raise PatchFitError(f"{meta_path}: holds {summary.get('perturbation')!r} patches, not {name!r}")
    try:
        tensors = load_file(str(state_dir / TENSOR_FILE), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise PatchFitError(f"{state_dir / TENSOR_FILE}: cannot read the patches ({exc})") from None
    patches = {}
    for area in summary.get("areas", []):
        key = f"area_{area_key(area)}"
        if key not in tensors:
            raise PatchFitError(f"{state_dir / TENSOR_FILE}: no tensor {key!r} for area {area_key(area)}")
        patches[float(area)] = tensors[key].to(device=device, dtype=torch.float32)
    summary["state_dir"] = str(state_dir)
    return PatchState(patches=patches, shape=str(meta.get("shape", "square")),
                      fit_fraction=float(meta.get("fit_fraction", 0.2)), target_category=meta.get("target_category"),
                      summary=summary)


def find_patch_state(folder: str | Path, name: str) -> Path:
    """The saved state of `name` in a report folder (`prepared/<name>/`), or `folder` itself."""
    folder = Path(folder)
    for candidate in (folder / STATE_SUBDIR / name, folder / name, folder):
        if (candidate / STATE_FILE).is_file():
            return candidate
    raise OptionError(f"--patch-from {folder}: no saved {name} patches there (looked for "
                      f"{folder / STATE_SUBDIR / name / STATE_FILE}); give the report folder of a run whose suite "
                      "had adversarial patches")


def from_report(perturbation: PatchPerturbation, folder: str | Path, severities: Sequence[int]) -> PatchPerturbation:
    """`perturbation` carrying the patches a report saved for it (e.g. to draw them with `visionstress
    show`), checked to hold the areas of `severities`; OptionError names what is missing."""
    state = load_patch_state(find_patch_state(folder, perturbation.name), perturbation.name)
    missing = [s for s in severities if float(perturbation.level(s)) not in state.patches]
    if missing:
        have = [s for s in range(1, 6) if float(perturbation.level(s)) in state.patches]
        raise OptionError(f"--patch-from {folder}: no {perturbation.name} for severities "
                          f"{', '.join(map(str, missing))}; it has severities {', '.join(map(str, have)) or 'none'}")
    return perturbation.with_state(state)


def _from_report(perturbation: PatchPerturbation, folder: Path, context: PrepareContext) -> PatchState:
    """A report's fitted patches, checked against this run (task, areas, image size, target). The control
    is fresh noise from this run's seed at the fitted patches' resolution (the same noise as the
    report's own control when the seed is the same)."""
    attack = load_patch_state(find_patch_state(folder, "adversarial_patch"), "adversarial_patch")
    info = attack.summary
    flag = f"--patch-from {folder}"
    if info.get("task") != context.task:
        raise OptionError(f"{flag}: its patches were fitted for {info.get('task')}, this run is {context.task}; "
                          "patches transfer between models of the same task only")
    areas = _areas(perturbation, context)
    missing = [area_key(a) for a in areas.values() if a not in attack.patches]
    if missing:
        have = ", ".join(area_key(a) for a in sorted(attack.patches)) or "none"
        raise OptionError(f"{flag}: no patch for area(s) {', '.join(missing)} (it has {have}); run the same "
                          "severities or fit new patches")
    size = _image_size(context, _first_batch(context, attack.target_category))
    if size is not None and info.get("image_size") is not None and list(info["image_size"]) != size:
        raise OptionError(f"{flag}: its patches were fitted on {'x'.join(map(str, info['image_size']))} images, "
                          f"this run's are {'x'.join(map(str, size))}; the area is relative but the patch's "
                          "pixels are not: fit new patches for this input size")
    given = getattr(context.options, "given", frozenset())
    for option in ("patch_target", "patch_target_class"):
        if option in given and context.options.get(option) is not None:
            raise OptionError(f"--{option.replace('_', '-')} cannot be combined with {flag}: the patches were "
                              f"fitted for the target recorded there ({info.get('target')})")
    if perturbation.adversarial:
        patches = {a: attack.patches[a] for a in areas.values()}
    else:
        patches = {a: random_texture(content_key(context.seed, s), attack.patches[a].shape[-1]).cpu()
                   for s, a in areas.items()}
    summary = {**info, "perturbation": perturbation.name, "areas": [areas[s] for s in sorted(areas)],
               "area_by_severity": {str(s): areas[s] for s in sorted(areas)},
               "source": "patch_from" if perturbation.adversarial else "random", "patch_from": str(folder),
               "model": getattr(context.adapter, "spec", None),
               "fitted_on_model": info.get("fitted_on_model", info.get("model")), "seed": int(context.seed)}
    return PatchState(patches=patches, shape=attack.shape, fit_fraction=attack.fit_fraction,
                      target_category=attack.target_category, summary=summary)
