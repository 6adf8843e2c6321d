"""Perturbations and their registry.

A perturbation has two halves, as in kornia / torchvision v2: `sample_params` draws per-sample
parameters from per-sample randomness (visionstress.rng), and `apply` is a pure function of the
batch and those parameters. Calling `p(batch, severity, seed)` does both; `params=` replays a case.

Kernels see float32 RGB images in [0, 1], and params on the images' device (float32 / int64). The
base class converts whatever it is given (uint8, other float dtypes, grayscale, RGBA, replayed params
in any form) into that form and back, so every kernel is written once.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar, overload

import torch
from torch import Tensor

from visionstress.batch import Batch
from visionstress.rng import SampleRNG, sample_keys

from ._warp import BOX_METHODS, Warp, apply_warp
from .levels import Field, LevelError, describe_level, make_level

KINDS = ("photometric", "geometric", "data-aware", "model-aware")
ALL_TARGETS = frozenset({"labels", "boxes", "instance_masks", "masks"})
MAX_SEVERITY = 5

Params = dict[str, Tensor]
SampleFn = Callable[[SampleRNG, Any, Batch], Params]


def _no_params(rng: SampleRNG, level: Any, batch: Batch) -> Params:
    return {}


def sample_key(rng: SampleRNG, level: Any, batch: Batch) -> Params:
    """The sampler of kernels that draw their own noise fields: one 62-bit key per sample, `params["key"]`,
    which the kernel expands with `visionstress.rng.uniform_field` / `normal_field`."""
    return {"key": rng.key()}


@dataclass
class PrepareContext:
    """What a model-aware or data-aware perturbation may use in the prepare phase, before the loop.

    One context serves every perturbation of a run (so that, e.g., the background perturbations share one
    bank): `severities[name]` are the severities the run uses of perturbation `name`; `state_dir` is the
    run's folder for prepared state, beside the scorecard (a perturbation keeps its own files under
    `state_dir / name`, shared ones directly in it), from which `load_prepared` reloads them (resume, other
    ranks, `--patch-from`). `batches()` starts a fresh pass over the run's dataset (host `Batch`es with
    their targets, and `foreground` when a perturbation `needs_foreground`); `adapter` is the task's model
    adapter (the model in eval mode: a perturbation must never change its weights or buffers); `options`
    are the run's resolved options.
    """

    task: str
    adapter: Any
    batches: Callable[[], Iterator[Batch]]
    severities: Mapping[str, tuple[int, ...]]
    seed: int
    device: torch.device
    options: Mapping[str, Any]
    state_dir: Path
    class_names: Sequence[str] = ()
    log: Callable[[str], None] = print
    category_ids: Sequence[int] = ()
    """Detection: the dataset's category ids in the order of `class_names` (targets carry ids, users names)."""


class Perturbation:
    """A named, registered image perturbation with a five-level severity table (or a single level: one
    variant, severity 1 only), an implementation `version`, and optionally the named, range-checked
    `fields` of its levels (see `levels.Field`).

    Subclasses implement `apply(batch, params, level)` on a float32 RGB batch; `level` is the
    severity table's entry for the requested severity. Override `sample_params` (or pass `sample=`)
    to draw per-sample parameters.

    Model-aware and data-aware perturbations may also override `prepare` (fit state on the model or
    collect it from the dataset before the loop; returns a prepared copy) and `load_prepared`, and
    `sample_filter` when their passes score only some images (an attack scored on the images it was
    not fitted on).
    """

    kind: str = "photometric"
    version: int = 1
    """Implementation version: bumped whenever the output changes for the same inputs (batch, severity,
    seed), so that a scorecard records which implementation produced its numbers and `compare` can
    tell an implementation change from a model regression."""
    needs_foreground: bool = False
    """Whether `apply` reads `Batch.foreground` (the run then loads object masks with the images)."""
    box_method: str | None = None
    """How this perturbation moves boxes (one of `BOX_METHODS`), or None where boxes do not depend on a
    method (they stay put, or a wrapped library moves them its own way)."""

    def prepare(self, context: PrepareContext) -> Perturbation:
        """Fit or collect what this perturbation needs, save it under `context.state_dir`, and return
        the perturbation to use in the loop (a copy carrying the state). The default has nothing to do."""
        return self

    def load_prepared(self, state_dir: Path, context: PrepareContext) -> Perturbation:
        """The prepared perturbation from state saved by `prepare` (in `state_dir`); the default has none."""
        return self

    def prepared_summary(self) -> dict[str, Any]:
        """JSON-ready facts about the prepared state for the scorecard (what was fitted, on which images)."""
        return {}

    def check_level(self, level: Any) -> None:
        """Raise ValueError when `level` cannot be an entry of this perturbation's severity table (a user
        suite's own `table` is checked with it before any work starts); the default accepts any."""

    def sample_filter(self, sample_ids: Tensor) -> Tensor | None:
        """Which of `sample_ids` this perturbation's passes score (bool, same device), or None for all.
        Must depend on the sample id alone, so that sharding and batching never change the choice."""
        return None

    def __init__(
        self,
        name: str,
        family: str,
        severities: Sequence[Any],
        description: str,
        *,
        sample: SampleFn | None = None,
        targets: frozenset[str] = ALL_TARGETS,
        kind: str | None = None,
        version: int = 1,
        fields: Sequence[Field] | None = None,
    ) -> None:
        if kind is not None:
            self.kind = kind
        if self.kind not in KINDS:
            raise ValueError(f"perturbation {name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if len(severities) not in (1, MAX_SEVERITY):
            raise ValueError(f"perturbation {name!r}: needs {MAX_SEVERITY} severity levels (or a single one), "
                             f"got {len(severities)}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"perturbation {name!r}: version must be a positive integer, got {version!r}")
        unknown = set(targets) - ALL_TARGETS
        if unknown:
            raise ValueError(f"perturbation {name!r}: unknown target kinds {sorted(unknown)}")
        self.name = name
        self.family = family
        self.fields = None if fields is None else tuple(fields)
        self.severities = tuple(severities)
        if self.fields is not None:
            try:
                self.severities = tuple(make_level(self.fields, level) for level in severities)
            except LevelError as error:
                raise ValueError(f"perturbation {name!r}: a severity level does not fit its fields: {error}") from None
        self.description = description
        self.targets = frozenset(targets)
        self.version = version
        self._sample = sample or _no_params

    def __repr__(self) -> str:
        return f"<Perturbation {self.name} ({self.family}, {self.kind})>"

    @property
    def max_severity(self) -> int:
        """5, or 1 for a single-level perturbation (one variant, no graded strength)."""
        return len(self.severities)

    def level(self, severity: int) -> Any:
        """The severity table's entry for `severity` (1..max_severity)."""
        return self.severities[_check_severity(self, severity) - 1]

    def parse_level(self, value: Any) -> Any:
        """A plain value (a number, a list, or a mapping by field name, as a suite file's `table:` gives
        it) as this perturbation's level, checked against its declared fields and their ranges.

        Raises LevelError saying where inside the level (`.sigma`) and what is wrong. Without declared
        fields a level must be shaped like the built-in ones: finite numbers, or lists of as many.
        """
        if self.fields is not None:
            return make_level(self.fields, value)
        return _shaped_like(self.severities[0], value)

    def describe_level(self, level: Any) -> str:
        """A level for people: `radius=10, sigma=3`, or a plain number for one-field levels."""
        return describe_level(level, self.fields)

    def with_box_method(self, method: str) -> Perturbation:
        """This perturbation moving boxes by `method` ('ellipse' or 'enclosing', see `BOX_METHODS`): a
        configured copy for geometric perturbations (the registered one is untouched), itself for those
        whose boxes do not depend on a method. Read the method used back from `.box_method`."""
        _check_box_method(method)
        return self

    def sample_params(self, batch: Batch, severity: int, seed: int = 0) -> Params:
        """Per-sample parameters, each a tensor with leading dimension B, on the batch's device."""
        keys = sample_keys(seed, self.name, severity, batch.sample_ids)
        return self._sample(SampleRNG(keys), self.level(severity), batch)

    def apply(self, batch: Batch, params: Params, level: Any) -> Batch:
        raise NotImplementedError

    @overload
    def __call__(self, data: Batch, severity: int, seed: int = 0, params: Params | None = None) -> Batch: ...

    @overload
    def __call__(self, data: Tensor, severity: int, seed: int = 0, params: Params | None = None) -> Tensor: ...

    def __call__(self, data: Batch | Tensor, severity: int, seed: int = 0, params: Params | None = None) -> Batch | Tensor:
        """Perturb `data` (a Batch, or images `[B,C,H,W]` / `[C,H,W]`) at `severity` (0 = identity)."""
        severity = _check_severity(self, severity, allow_zero=True)
        batch, unwrap = _as_batch(data)
        unsupported = batch.target_kinds - self.targets
        if unsupported:
            raise ValueError(
                f"perturbation {self.name!r} cannot carry {', '.join(sorted(unsupported))} targets "
                f"(it supports {', '.join(sorted(self.targets)) or 'no targets'}); remove them or pick "
                f"another perturbation"
            )
        if severity == 0:
            out = batch.replace(params={})
            return unwrap(out)
        work, restore = _to_working_form(batch, self.name)
        if params is None:
            params = self.sample_params(work, severity, seed)
        else:
            _check_replayed(self.name, params, len(batch))
        params = _on_device(params, batch.images.device)
        result = self.apply(work, params, self.level(severity))
        return unwrap(restore(result).replace(params=params))


def _check_severity(p: Perturbation, severity: Any, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(severity, bool) or not isinstance(severity, int) or not low <= severity <= p.max_severity:
        if p.max_severity == 1:
            raise ValueError(f"perturbation {p.name!r} has a single level: its severity is 1"
                             f"{' (or 0 = unperturbed)' if allow_zero else ''}, got {severity!r}")
        raise ValueError(
            f"perturbation {p.name!r}: severity must be an integer from {low} to {p.max_severity}"
            f"{' (0 = unperturbed)' if allow_zero else ''}, got {severity!r}"
        )
    return severity


def _check_box_method(method: Any) -> None:
    if method not in BOX_METHODS:
        raise ValueError(f"box method must be one of {', '.join(BOX_METHODS)}, got {method!r}")


def _shaped_like(reference: Any, value: Any) -> Any:
    """`value` checked to be finite numbers shaped like `reference` (for perturbations without fields)."""
    def number(v: Any, key: str) -> int | float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LevelError(key, f"must be a finite number like {reference!r}, got {v!r}")
        return v

    if isinstance(reference, bool) or not isinstance(reference, (int, float, tuple, list)):
        raise LevelError("", f"this perturbation's levels are {type(reference).__name__} objects, which a suite "
                             f"file cannot give; register a perturbation with the levels you want in Python")
    if isinstance(reference, (tuple, list)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != len(reference):
            raise LevelError("", f"must be a list of {len(reference)} numbers like {list(reference)}, got {value!r}")
        return tuple(number(v, f"[{i}]") for i, v in enumerate(value))
    return number(value, "")


def _check_replayed(name: str, params: Mapping[str, Any], batch_size: int) -> None:
    for key, value in params.items():
        shape = tuple(torch.as_tensor(value).shape)
        if not shape or shape[0] != batch_size:
            raise ValueError(
                f"perturbation {name!r}: replayed param {key!r} must have leading dimension {batch_size}, "
                f"got shape {shape}"
            )


def _on_device(params: Mapping[str, Any], device: torch.device) -> Params:
    """Params as kernels read them, once for all kernels: on the images' device, floats as float32 and
    integers (keys) as int64, the dtypes sampling produces, whatever form a replayed case came in."""
    out = {}
    for key, value in params.items():
        value = torch.as_tensor(value)
        if value.is_floating_point():
            value = value.to(torch.float32)
        elif value.dtype != torch.bool:
            value = value.to(torch.int64)
        out[key] = value.to(device)
    return out


def _as_batch(data: Batch | Tensor) -> tuple[Batch, Callable[[Batch], Batch | Tensor]]:
    if isinstance(data, Batch):
        return data, lambda b: b
    if isinstance(data, Tensor):
        if data.ndim == 3:
            return Batch(data.unsqueeze(0)), lambda b: b.images[0]
        if data.ndim == 4:
            return Batch(data), lambda b: b.images
        raise ValueError(f"expected images [B, C, H, W] or [C, H, W], got shape {tuple(data.shape)}")
    raise TypeError(f"expected a visionstress.Batch or an image tensor, got {type(data).__name__}")


def _to_working_form(batch: Batch, name: str) -> tuple[Batch, Callable[[Batch], Batch]]:
    """Float32 RGB in [0, 1], and the function that converts a result back to the input's form.

    Grayscale is replicated to RGB and averaged back; an alpha channel is set aside, moved by
    geometric kernels like any other channel, and reattached untouched by photometric ones.
    """
    images = batch.images
    dtype = images.dtype
    channels = images.shape[1]
    if channels not in (1, 3, 4):
        raise ValueError(
            f"perturbation {name!r}: images must have 1 (grayscale), 3 (RGB) or 4 (RGBA) channels, "
            f"got {channels}; convert them to RGB first"
        )
    x = images.float().div_(255.0) if dtype == torch.uint8 else images.float()
    alpha = x[:, 3:4] if channels == 4 else None
    rgb = x[:, :3] if channels >= 3 else x.expand(-1, 3, -1, -1)

    def restore(result: Batch) -> Batch:
        y = result.images
        if channels == 1:
            y = y.mean(dim=1, keepdim=True)
        elif channels == 4:
            y = torch.cat([y[:, :3], y[:, 3:4] if y.shape[1] == 4 else alpha], dim=1)
        y = y.clamp(0.0, 1.0)  # a new tensor: the in-place steps below touch nothing the kernel returned
        y = y.mul_(255.0).round_().to(torch.uint8) if dtype == torch.uint8 else y.to(dtype)
        return result.replace(images=y)

    return batch.replace(images=rgb.contiguous(), params={}), restore


class PhotometricPerturbation(Perturbation):
    """Changes pixel values only; targets pass through. Kernel: `fn(images, params, level) -> images`."""

    kind = "photometric"

    def __init__(self, kernel: Callable[[Tensor, Params, Any], Tensor], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel = kernel

    def apply(self, batch: Batch, params: Params, level: Any) -> Batch:
        return batch.replace(images=self.kernel(batch.images, params, level))


class GeometricPerturbation(Perturbation):
    """Moves pixels; boxes, instance masks and semantic masks move with them.

    Kernel: `fn(params, level, size, device) -> Warp`; the shared `apply_warp` resamples images
    (bilinear), masks (nearest; uncovered area becomes the ignore index) and boxes by `box_method`
    (clipped; boxes left with no area are dropped and counted): by default the tight box of the moved
    instance mask, or of the moved inscribed ellipse for an object without one (see `BOX_METHODS`).
    """

    kind = "geometric"
    box_method = "ellipse"

    def __init__(
        self, kernel: Callable[[Params, Any, tuple[int, int], torch.device], Warp], padding: str = "zeros", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if padding not in ("zeros", "border", "reflection"):
            raise ValueError(f"perturbation {kwargs.get('name')!r}: padding must be zeros, border or reflection")
        self.kernel = kernel
        self.padding = padding

    def with_box_method(self, method: str) -> Perturbation:
        _check_box_method(method)
        if method == self.box_method:
            return self
        configured = copy.copy(self)
        configured.box_method = method
        return configured

    def apply(self, batch: Batch, params: Params, level: Any) -> Batch:
        warp = self.kernel(params, level, batch.image_size, batch.images.device)
        return apply_warp(batch, warp, padding=self.padding, box_method=self.box_method)


class BatchPerturbation(Perturbation):
    """Sees the whole batch, targets included (data-aware, e.g. occluding each object's box).

    Kernel: `fn(batch, params, level) -> Batch`.
    """

    kind = "data-aware"

    def __init__(self, kernel: Callable[[Batch, Params, Any], Batch], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel = kernel

    def apply(self, batch: Batch, params: Params, level: Any) -> Batch:
        return self.kernel(batch, params, level)


_REGISTRY: dict[str, Perturbation] = {}

P = TypeVar("P", bound=Perturbation)


def register_perturbation(perturbation: P) -> P:
    """Add `perturbation` to the registry under its name; a duplicate name raises."""
    if not isinstance(perturbation, Perturbation):
        raise TypeError(f"register_perturbation expects a Perturbation, got {type(perturbation).__name__}")
    if perturbation.name in _REGISTRY:
        raise ValueError(f"a perturbation named {perturbation.name!r} is already registered")
    _REGISTRY[perturbation.name] = perturbation
    return perturbation


def unregister_perturbation(name: str) -> None:
    """Remove a perturbation (for user code and tests that register temporary ones)."""
    _REGISTRY.pop(name, None)


def get_perturbation(name: str) -> Perturbation:
    """The registered perturbation called `name`; an unknown name suggests the closest ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `visionstress list` shows them all"
        raise KeyError(f"unknown perturbation {name!r}{hint}") from None


def list_perturbations(pattern: str | None = None, family: str | None = None, kind: str | None = None) -> list[str]:
    """Registered names, sorted, filtered by glob `pattern` (e.g. "*blur"), family and kind."""
    names = []
    for name, p in _REGISTRY.items():
        if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
            continue
        if family is not None and p.family != family:
            continue
        if kind is not None and p.kind != kind:
            continue
        names.append(name)
    return sorted(names)


def _decorator(cls: type[Perturbation], name: str | None, **meta: Any) -> Callable[[Callable], Callable]:
    def wrap(kernel: Callable) -> Callable:
        register_perturbation(cls(kernel, name=name or kernel.__name__, **meta))
        return kernel

    return wrap


def photometric(*, family: str, severities: Sequence[Any], description: str, fields: Sequence[Field] | None = None,
                sample: SampleFn | None = None, targets: frozenset[str] = ALL_TARGETS,
                version: int = 1, name: str | None = None) -> Callable[[Callable], Callable]:
    """Register a photometric kernel `fn(images, params, level) -> images` (float32 RGB in [0, 1]); the
    name defaults to the function's."""
    return _decorator(PhotometricPerturbation, name=name, family=family, severities=severities, fields=fields,
                      description=description, sample=sample, targets=targets, version=version)


def geometric(*, family: str, severities: Sequence[Any], description: str, fields: Sequence[Field] | None = None,
              sample: SampleFn | None = None, padding: str = "zeros", version: int = 1,
              name: str | None = None) -> Callable[[Callable], Callable]:
    """Register a geometric kernel `fn(params, level, size, device) -> Warp`; the name defaults to the
    function's."""
    return _decorator(GeometricPerturbation, name=name, family=family, severities=severities, fields=fields,
                      description=description, sample=sample, padding=padding, version=version)


def data_aware(*, family: str, severities: Sequence[Any], description: str, fields: Sequence[Field] | None = None,
               sample: SampleFn | None = None, targets: frozenset[str] = ALL_TARGETS,
               version: int = 1, name: str | None = None) -> Callable[[Callable], Callable]:
    """Register a kernel `fn(batch, params, level) -> Batch` that reads targets (e.g. boxes); the name
    defaults to the function's."""
    return _decorator(BatchPerturbation, name=name, family=family, severities=severities, fields=fields,
                      description=description, sample=sample, targets=targets, version=version)
