"""Adapters: the one narrow door between the harness and a model (`predict(images) -> output`).

Perturbations work in pixel space, so the model's own preprocessing (channel order, mean/std) must
happen after them; it lives here, on the device, once per batch. The adapter also refuses outputs
that would silently corrupt metrics (wrong shape, NaN/inf), naming the model in the error.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionstress.models.data_config import DataConfig
from visionstress.models.loading import LoadedModel


@dataclass
class ClassifierOutput:
    """Raw class scores; softmax, top-k and calibration are the evaluator's business."""

    logits: Tensor  # [B, K] float32, on the adapter's device
    deferred: Callable[[], None] | None = None  # checks left to the scorer (see `defer_checks`)


@dataclass
class DetectorOutput:
    """Per-image detections in the pixel frame of the images given to `predict`, labels already in
    the dataset's category ids, so the evaluator never needs to know the model's numbering."""

    boxes: list[Tensor]  # per image [M, 4] float32 xyxy, clipped to the image
    scores: list[Tensor]  # [M] float32
    labels: list[Tensor]  # [M] int64 dataset category ids
    masks: list[Tensor] | None = None  # per image [M, H, W] bool instance masks (instance-segmentation models)


@dataclass
class SegmenterOutput:
    """Per-pixel class scores at the resolution of the images given to `predict`."""

    logits: Tensor  # [B, C, H, W] float32
    deferred: Callable[[], None] | None = None  # checks left to the scorer (see `defer_checks`)

    @functools.cached_property
    def labels(self) -> Tensor:
        """[B, H, W] int64: the predicted class of each pixel (computed once: the evaluator and the
        failure gallery both read it)."""
        return self.logits.argmax(1)


class ModelOutputError(RuntimeError):
    """The model failed or returned something that is not usable logits; the message names the model."""


class _LogitsAdapter:
    """What the classifier and segmenter adapters share: the model on its device, the pixel
    normalisation of `data_config`, and the class count (given, known to the loader, or fixed by the
    first batch the model returns)."""

    def __init__(
        self,
        model: LoadedModel | nn.Module | Callable[[Tensor], Any],
        data_config: DataConfig,
        device: str | torch.device = "cpu",
        amp: bool = False,
        num_classes: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.spec, self.model, known = _unwrap(model, self.device)
        self._num_classes = num_classes if num_classes is not None else known
        self._width_of = "the dataset" if num_classes is not None else "the model"  # who fixed the width
        self.data_config = data_config
        self.amp = amp
        self._pixels = _Pixels(data_config, self.device)
        self.defer_checks = False
        """When set (the run loop does), `predict` does not wait for the device to check that the outputs
        are finite: the output's `deferred()` does it, on the thread that scores them."""

    def _finite(self, values: Tensor, what: str) -> Callable[[], None] | None:
        """Check `values` are finite now, or return the check for later (`defer_checks`)."""
        if not self.defer_checks:
            _check_finite(values, self.spec, self.amp, what)
            return None
        bad = ~torch.isfinite(values.flatten(1)).all(dim=1)
        return lambda: _check_finite_flags(bad, self.spec, self.amp, what)

    @property
    def num_classes(self) -> int:
        """Output width; when nothing told us yet, one grey image of the data config's input size is run."""
        if self._num_classes is None:
            h, w = self.data_config.input_size
            self.predict(torch.full((1, 3, h, w), 0.5, device=self.device))
        assert self._num_classes is not None  # set by predict
        return self._num_classes


class ClassifierAdapter(_LogitsAdapter):
    """Normalise pixel batches the way `data_config` says and return float32 logits.

    `images` given to `predict` are `[B, 3, H, W]`, uint8 or float in [0, 1], already resized and
    cropped to `data_config.input_size` (the dataset does that, before the perturbations run).
    """

    def predict(self, images: Tensor) -> ClassifierOutput:
        x = self._input(images)
        out = _call(self.model, x, self.spec, self.amp, self.device,
                    f"the model failed on a batch of shape {list(x.shape)}", "; check the data config's input_size")
        logits = self._check(out, images.shape[0])
        return ClassifierOutput(logits, self._finite(logits, "logits"))

    def _input(self, images: Tensor) -> Tensor:
        """Checked pixel images as the model's normalised input."""
        _check_images(images, self.spec)
        if tuple(images.shape[-2:]) != self.data_config.input_size:
            raise ValueError(
                f"{self.spec}: images are {images.shape[-2]}x{images.shape[-1]} but the data config's input_size "
                f"is {self.data_config.input_size[0]}x{self.data_config.input_size[1]}; resize and crop first"
            )
        return self._pixels(images)

    outputs: str | None = None
    """"logits" or "probabilities", decided on the first batch the model returns (see `_as_logits`)."""

    def _check(self, out: object, batch: int) -> Tensor:
        logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
        if not isinstance(logits, Tensor):
            raise ModelOutputError(f"{self.spec}: expected a logits tensor, the model returned {type(out).__name__}")
        if logits.ndim != 2 or logits.shape[0] != batch:
            raise ModelOutputError(
                f"{self.spec}: expected logits of shape [{batch}, num_classes], got {list(logits.shape)}"
            )
        logits = logits.to(torch.float32)
        self._num_classes = _class_width(self._num_classes, logits.shape[1], self.spec, "logits per image",
                                         self._width_of)
        return self._as_logits(logits)

    def _as_logits(self, out: Tensor) -> Tensor:
        """Logits as they are; a model that ends in a softmax (deployed models often do) as log-probabilities,
        whose softmax is the model's own output. Read as logits, its probabilities would be softmaxed again,
        flattening every confidence and so every calibration metric. The first batch decides, since a batch
        of logits rows that are each a distribution does not happen by chance; a later batch that disagrees
        is an error rather than a silent mix. Once logits, later batches are not looked at: the look is a
        device sync per batch."""
        if self.outputs == "logits":
            return out
        tolerance = 2e-2 if self.amp else 1e-3
        distributions = bool(out.shape[1] > 1 and out.min() >= 0 and out.max() <= 1
                             and ((out.sum(dim=1) - 1).abs() <= tolerance).all())
        if self.outputs is None:
            self.outputs = "probabilities" if distributions else "logits"
        elif self.outputs == "probabilities" and not distributions:
            raise ModelOutputError(f"{self.spec}: the model returned probabilities (rows summing to 1) on its first "
                                   "batch, then a batch that is not; return logits, or probabilities always")
        return out.clamp_min(torch.finfo(out.dtype).tiny).log() if self.outputs == "probabilities" else out

    def forward(self, images: Tensor) -> Tensor:
        """The logits of `predict` with autograd on: `[B, K]` float32 through the same normalisation and
        channel order, so a gradient with respect to the pixel-space `images` (float in [0, 1]) sees what
        the model sees. For fitting attacks (adversarial patches); the model is not changed."""
        x = self._input(images)
        out = _call(self.model, x, self.spec, self.amp, self.device,
                    f"the model failed on a batch of shape {list(x.shape)}", differentiable=True)
        return self._check(out, images.shape[0])


class DetectorAdapter:
    """Run a detector on full-resolution pixel batches and return validated per-image detections.

    The torchvision convention by default: the model gets a list of CHW float images in [0, 1] and
    resizes and normalises them itself (`data_config` None), returning one dict of boxes, scores and
    labels per image in input pixels. Models with a raw batched output (YOLO-style `[B, N, 4+1+K]`)
    are called on the batched tensor, and `postprocess(raw, images)` (the user's decoding and NMS)
    must turn that into the same list of dicts. `label_map` translates model labels to dataset
    category ids; detections whose label it lacks are dropped and counted in `unmapped`, because a
    label the dataset does not have can only ever be a false positive of an unknown class.
    Instance-segmentation models (torchvision's maskrcnn_*) also return `masks`, `[M, 1, H, W]`
    probabilities at the input resolution; they are kept as `[M, H, W]` bool (> 0.5, torchvision's
    own threshold when it pastes masks) and filtered with their boxes.
    """

    def __init__(
        self,
        model: LoadedModel | nn.Module | Callable[..., Any],
        *,
        device: str | torch.device = "cpu",
        amp: bool = False,
        data_config: DataConfig | None = None,
        postprocess: Callable[[Any, Tensor], Any] | None = None,
        label_map: dict[int, int] | None = None,
        categories: Sequence[int] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.spec, self.model, _ = _unwrap(model, self.device)
        self.amp = amp
        self.data_config = data_config
        self.postprocess = postprocess
        self.label_map = label_map
        self.unmapped = 0  # predictions dropped because their label has no dataset category, over all batches
        self.unmapped_labels: set[int] = set()  # which labels those were (the first few)
        self._pixels = _Pixels(data_config, self.device)
        self._lookup = None
        if label_map is None and categories is not None:  # identity: a label must be a dataset category id
            label_map = {int(c): int(c) for c in categories}
        if label_map is not None:
            if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in label_map):
                raise ValueError(f"{self.spec}: label_map keys must be non-negative integer model labels")
            lookup = torch.full((max(label_map, default=0) + 1,), -1, dtype=torch.int64)
            for label, category in label_map.items():
                lookup[label] = category
            self._lookup = lookup.to(self.device)

    def predict(self, images: Tensor) -> DetectorOutput:
        """`images` [B, 3, H, W], uint8 or float in [0, 1], at the resolution the boxes should be in."""
        _check_images(images, self.spec)
        x = self._pixels(images)
        shape = f"a batch of shape {list(x.shape)}"
        if self.postprocess is None:
            out = _call(self.model, list(x), self.spec, self.amp, self.device, f"the model failed on {shape}")
        else:
            raw = _call(self.model, x, self.spec, self.amp, self.device, f"the model failed on {shape}")
            postprocess = self.postprocess
            out = _call(lambda r: postprocess(r, images), raw, self.spec, self.amp, self.device,
                        f"postprocess failed on the model's output for {shape}")
        return self._check(out, images.shape[0], images.shape[-2], images.shape[-1])

    def _check(self, out: Any, batch: int, height: int, width: int) -> DetectorOutput:
        raw = [out] if isinstance(out, Tensor) else list(out) if isinstance(out, (list, tuple)) else []
        if raw and all(isinstance(t, Tensor) for t in raw):
            shapes = ", ".join(str(list(t.shape)) for t in raw[:4])
            raise ModelOutputError(
                f"{self.spec}: the model returned raw tensors ({shapes}), not detections; pass --postprocess "
                "package.module:function that decodes them (scores, NMS) into torchvision's list of dicts with "
                "boxes (xyxy, input pixels), scores and labels, one per image"
            )
        if not isinstance(out, (list, tuple)) or len(out) != batch or not all(isinstance(d, Mapping) for d in out):
            got = f"{type(out).__name__} of {len(out)}" if isinstance(out, (list, tuple)) else type(out).__name__
            raise ModelOutputError(
                f"{self.spec}: expected a list of {batch} dicts (boxes, scores, labels), one per image, got a {got}"
            )
        detections = [self._tensors(d, i, height, width) for i, d in enumerate(out)]
        with_masks = [m is not None for *_, m in detections]
        if any(with_masks) and not all(with_masks):
            raise ModelOutputError(f"{self.spec}: {sum(with_masks)} of {batch} images have masks; expected all or none")
        broken = sum(not (torch.isfinite(b).all() and torch.isfinite(s).all()) for b, s, *_ in detections)
        if broken:
            hint = " (bf16 autocast can overflow: try without --amp)" if self.amp else ""
            raise ModelOutputError(
                f"{self.spec}: {broken} of {batch} images got NaN or infinite boxes or scores{hint}"
            )
        limit = torch.tensor([width, height, width, height], dtype=torch.float32, device=self.device)
        result = DetectorOutput([], [], [], [] if all(with_masks) else None)
        dropped = torch.zeros((), dtype=torch.int64, device=self.device)
        for i, (boxes, scores, labels, masks) in enumerate(detections):
            inverted = int(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).sum())
            if inverted:
                raise ModelOutputError(
                    f"{self.spec}: image {i} has {inverted} boxes with negative width or height; boxes must be "
                    "xyxy (x1 <= x2, y1 <= y2) in input pixels"
                )
            boxes = boxes.clamp(min=0).minimum(limit)
            if self._lookup is not None:
                known = (labels >= 0) & (labels < len(self._lookup))
                mapped = torch.where(known, self._lookup[labels.clamp(0, len(self._lookup) - 1)], -1)
                keep = mapped >= 0
                if len(self.unmapped_labels) < 10 and not bool(keep.all()):
                    self.unmapped_labels.update(labels[~keep].unique()[:10].tolist())
                labels = mapped
                dropped += (~keep).sum()
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
                masks = None if masks is None else masks[keep]
            result.boxes.append(boxes)
            result.scores.append(scores)
            result.labels.append(labels)
            if result.masks is not None:
                result.masks.append(masks)
        self.unmapped += int(dropped)
        return result

    def _tensors(self, d: Mapping[str, Any], i: int, height: int,
                 width: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One image's (boxes float32, scores float32, labels int64, masks bool or None) on the device,
        shapes checked."""
        missing = [k for k in ("boxes", "scores", "labels") if k not in d]
        if missing:
            raise ModelOutputError(
                f"{self.spec}: image {i}'s detections have no {', '.join(missing)} "
                f"(keys: {', '.join(map(str, d)) or 'none'}); expected boxes, scores and labels"
            )
        boxes, scores, labels = d["boxes"], d["scores"], d["labels"]
        if not all(isinstance(t, Tensor) for t in (boxes, scores, labels)):
            raise ModelOutputError(f"{self.spec}: image {i}: boxes, scores and labels must be tensors")
        m = boxes.shape[0] if boxes.ndim == 2 else -1
        if boxes.ndim != 2 or boxes.shape[1] != 4 or tuple(scores.shape) != (m,) or tuple(labels.shape) != (m,):
            raise ModelOutputError(
                f"{self.spec}: image {i}: expected boxes [M, 4], scores [M] and labels [M], got "
                f"{list(boxes.shape)}, {list(scores.shape)} and {list(labels.shape)}"
            )
        if labels.is_floating_point():
            if not bool((labels == labels.round()).all()):
                raise ModelOutputError(f"{self.spec}: image {i}: labels must be whole class indices")
        elif labels.dtype == torch.bool or labels.is_complex():
            raise ModelOutputError(f"{self.spec}: image {i}: labels must be integers, got {labels.dtype}")
        return (
            boxes.to(self.device, torch.float32),
            scores.to(self.device, torch.float32),
            labels.to(self.device, torch.int64),
            self._masks(d.get("masks"), i, m, height, width),
        )

    def _masks(self, masks: Any, i: int, m: int, height: int, width: int) -> Tensor | None:
        """[M, 1, H, W] (torchvision) or [M, H, W] mask probabilities or booleans -> [M, H, W] bool."""
        if masks is None:
            return None
        if not isinstance(masks, Tensor):
            raise ModelOutputError(f"{self.spec}: image {i}: masks must be a tensor, got {type(masks).__name__}")
        shape = list(masks.shape)
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if tuple(masks.shape) != (m, height, width):
            raise ModelOutputError(
                f"{self.spec}: image {i}: expected masks [{m}, 1, {height}, {width}] or [{m}, {height}, {width}] "
                f"(one per box, at the input resolution), got {shape}"
            )
        masks = masks.to(self.device)
        return masks if masks.dtype == torch.bool else masks > 0.5

    def forward(self, images: Tensor) -> DetectorOutput:
        """The detections of `predict` with autograd on: the same call (a list of images, or the batch and
        `postprocess`), the same label mapping and clipping, so the scores can be differentiated with
        respect to the pixel-space `images`. For fitting attacks; the model is not changed, and labels
        dropped here are not counted in `unmapped` (which counts the run's predictions)."""
        _check_images(images, self.spec)
        x = self._pixels(images)
        failure = f"the model failed on a batch of shape {list(x.shape)}"
        if self.postprocess is None:
            out = _call(self.model, list(x), self.spec, self.amp, self.device, failure, differentiable=True)
        else:
            raw = _call(self.model, x, self.spec, self.amp, self.device, failure, differentiable=True)
            postprocess = self.postprocess
            out = _call(lambda r: postprocess(r, images), raw, self.spec, self.amp, self.device,
                        f"postprocess failed on the model's output for a batch of shape {list(x.shape)}",
                        differentiable=True)
        unmapped = self.unmapped
        try:
            return self._check(out, images.shape[0], images.shape[-2], images.shape[-1])
        finally:
            self.unmapped = unmapped


class SegmenterAdapter(_LogitsAdapter):
    """Normalise full-resolution pixel batches and return per-pixel logits at the input resolution.

    Unlike classification, no input size is enforced: segmenters are fully convolutional and are
    scored against masks at the image's own resolution. Outputs may be a tensor, a dict with "out"
    (torchvision; "aux" is ignored) or an object with `.logits` (Hugging Face); logits at a lower
    resolution are upsampled bilinearly, as those libraries do at evaluation.
    """

    def predict(self, images: Tensor) -> SegmenterOutput:
        _check_images(images, self.spec)
        x = self._pixels(images)
        out = _call(self.model, x, self.spec, self.amp, self.device,
                    f"the model failed on a batch of shape {list(x.shape)}")
        logits = self._check(out, images.shape[0], (images.shape[-2], images.shape[-1]))
        return SegmenterOutput(logits, self._finite(logits, "logits"))

    def _check(self, out: Any, batch: int, size: tuple[int, int]) -> Tensor:
        if isinstance(out, Tensor):
            logits = out
        elif isinstance(out, Mapping):
            logits = out.get("out")
        else:
            logits = getattr(out, "logits", None)
        if not isinstance(logits, Tensor):
            got = f"a dict with keys {', '.join(map(str, out))}" if isinstance(out, Mapping) else type(out).__name__
            raise ModelOutputError(
                f"{self.spec}: expected logits [B, C, H, W], a dict with 'out' or an object with .logits; "
                f"the model returned {got}"
            )
        if logits.ndim != 4 or logits.shape[0] != batch:
            raise ModelOutputError(
                f"{self.spec}: expected logits of shape [{batch}, num_classes, H, W], got {list(logits.shape)}"
            )
        logits = logits.to(torch.float32)
        self._num_classes = _class_width(self._num_classes, logits.shape[1], self.spec, "class channels",
                                         self._width_of)
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def forward(self, images: Tensor) -> Tensor:
        """The logits of `predict` with autograd on: `[B, C, H, W]` at the input resolution, through the
        same normalisation, so a gradient with respect to the pixel-space `images` sees what the model
        sees. For fitting attacks; the model is not changed."""
        _check_images(images, self.spec)
        x = self._pixels(images)
        out = _call(self.model, x, self.spec, self.amp, self.device,
                    f"the model failed on a batch of shape {list(x.shape)}", differentiable=True)
        return self._check(out, images.shape[0], (images.shape[-2], images.shape[-1]))


class _Pixels:
    """A pixel batch -> the model's input: float32 in [0, 1] on the device, then the data config's
    channel order and mean/std (none of these when there is no data config: the model normalises)."""

    def __init__(self, data_config: DataConfig | None, device: torch.device) -> None:
        self.bgr = data_config is not None and data_config.channel_order == "BGR"
        self.mean = self.std = None
        if data_config is not None:
            shape = (1, 3, 1, 1)
            self.mean = torch.tensor(data_config.mean, dtype=torch.float32, device=device).view(shape)
            self.std = torch.tensor(data_config.std, dtype=torch.float32, device=device).view(shape)
        self.device = device

    def __call__(self, images: Tensor) -> Tensor:
        x = images.to(self.device, non_blocking=True)
        x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)
        if self.bgr:
            x = x.flip(1)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x


def _unwrap(model: Any, device: torch.device) -> tuple[str, Any, int | None]:
    """(name for messages, the callable moved to `device` in eval mode, class count the loader knows)."""
    if isinstance(model, LoadedModel):
        spec, fn, num_classes = model.spec, model.module, model.num_classes
    else:
        is_module = isinstance(model, nn.Module)
        spec = type(model).__name__ if is_module else getattr(model, "__name__", repr(model))
        fn, num_classes = model, None
    if isinstance(fn, nn.Module):
        fn = fn.to(device)
        try:
            fn.eval()
        except NotImplementedError:  # torch.export modules keep the mode they were exported in
            pass
    return spec, fn, num_classes


def _check_images(images: Tensor, spec: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{spec}: expected images [B, 3, H, W], got shape {list(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"{spec}: images must be uint8 or float in [0, 1], got {images.dtype}")


def _call(fn: Callable[[Any], Any], arg: Any, spec: str, amp: bool, device: torch.device,
          failure: str, hint: str = "", differentiable: bool = False) -> Any:
    """`fn(arg)` in inference mode, or with autograd on when `differentiable` (bf16 autocast when `amp`);
    any failure but running out of memory (callers may retry with a smaller batch) becomes a
    ModelOutputError that says `failure`."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with torch.enable_grad() if differentiable else torch.inference_mode(), autocast:
        try:
            return fn(arg)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelOutputError(f"{spec}: {failure} ({type(exc).__name__}: {message})"
                                   f"{_channels_hint(message) or hint}") from exc


def _channels_hint(message: str) -> str:
    """For a model whose first layer takes other than 3 channels (a grey-scale model), what to do: the
    input size is not the problem, so the usual hint would mislead."""
    match = re.search(r"to have (\d+) channels, but got 3 channels", message)
    if match is None or match[1] == "3":
        return ""
    wanted = int(match[1])
    convert = "x.mean(dim=1, keepdim=True)" if wanted == 1 else f"a [B, 3, H, W] -> [B, {wanted}, H, W] mapping"
    return (f"; the model takes {wanted}-channel images and visionstress feeds RGB ([B, 3, H, W]): load it through a "
            f"factory that puts {convert} in front of it")


def _check_finite(values: Tensor, spec: str, amp: bool, what: str) -> None:
    _check_finite_flags(~torch.isfinite(values.flatten(1)).all(dim=1), spec, amp, what)


def _check_finite_flags(bad: Tensor, spec: str, amp: bool, what: str) -> None:
    """`bad` [B] marks images with a NaN or infinite value."""
    finite = ~bad
    if not bool(finite.all()):
        hint = " (bf16 autocast can overflow: try without --amp)" if amp else ""
        raise ModelOutputError(
            f"{spec}: {int((~finite).sum())} of {bad.shape[0]} images got NaN or infinite {what}{hint}"
        )


def _class_width(known: int | None, width: int, spec: str, what: str, source: str = "the model") -> int:
    """The first batch fixes the width when nobody said it; a later batch may not change it. `source`
    says who fixed `known` (the dataset's class list, or the model), so the user knows what to change."""
    if known is not None and width != known:
        hint = ("; the model and the dataset's class list must have the same classes in the same order"
                if source == "the dataset" else "")
        raise ModelOutputError(f"{spec}: returned {width} {what}, but {source} has {known} classes{hint}")
    return width
