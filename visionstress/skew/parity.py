"""Serving parity: the user's own serving preprocessing (or an exported model) against the reference.

This is the check a team runs before shipping a new serving stack: every image goes through the
serving path and through the reference path (the model's declared preprocessing and the model itself),
and the predictions must agree. The serving path is a function from an image file to the model's input
(`[C, H, W]`, already normalised), an exported model (ONNX, run with onnxruntime), or both. Both are
checked on the first image before any work, so a function that raises or returns the wrong shape, or
an export that takes another input size, is an error that says so at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from visionstress.models.loading import import_attribute
from visionstress.skew.cells import SkewError

_SHOWN = 20


@dataclass(frozen=True)
class Disagreement:
    """One image whose serving prediction differs from the reference's."""

    path: str
    reference: str  # class name (index when there are no names)
    serving: str
    max_logit_diff: float


@dataclass
class ParityResult:
    """Agreement of the serving path with the reference over `images` images; `passed` when it is at
    least `min_agreement`. `message` names the disagreeing image files."""

    serving: str  # what was checked, e.g. "mypkg.serve:preprocess" or "model.onnx"
    images: int
    agreement: float
    min_agreement: float
    max_logit_diff: float  # largest |serving logit - reference logit| over all images and classes
    mean_logit_diff: float
    reference_top1: float
    serving_top1: float
    disagreements: list[Disagreement] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_agreement

    @property
    def message(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        head = (f"serving parity {verdict}: {self.serving} agrees with the reference on {self.agreement:.2%} of "
                f"{self.images} images (minimum {self.min_agreement:.2%}); largest logit difference "
                f"{self.max_logit_diff:.3g}; top-1 {self.reference_top1:.2%} reference, {self.serving_top1:.2%} serving")
        if not self.disagreements:
            return head
        lines = [f"{len(self.disagreements)} image(s) disagree (reference -> serving):"]
        lines += [f"  {d.path}: {d.reference} -> {d.serving} (max logit diff {d.max_logit_diff:.3g})"
                  for d in self.disagreements[:_SHOWN]]
        if len(self.disagreements) > _SHOWN:
            lines.append(f"  ... and {len(self.disagreements) - _SHOWN} more")
        return "\n".join([head, *lines])

    def to_dict(self) -> dict[str, Any]:
        return {"serving": self.serving, "passed": self.passed, "images": self.images, "agreement": self.agreement,
                "min_agreement": self.min_agreement, "max_logit_diff": self.max_logit_diff,
                "mean_logit_diff": self.mean_logit_diff, "reference_top1": self.reference_top1,
                "serving_top1": self.serving_top1,
                "disagreements": [{"path": d.path, "reference": d.reference, "serving": d.serving,
                                   "max_logit_diff": d.max_logit_diff} for d in self.disagreements]}


def serving_function(spec: str | Callable[[str], Any]) -> tuple[Callable[[str], Any], str]:
    """A serving function given as a callable or as `package.module:function` (importable from the
    current directory too, as model factories are), and its name for messages."""
    if callable(spec):
        return spec, getattr(spec, "__qualname__", None) or getattr(spec, "__name__", None) or repr(spec)
    return import_attribute(str(spec), f"--serving {spec}", SkewError)[1], str(spec)


def call_serving(fn: Callable[[str], Any], name: str, path: str, expected: tuple[int, int, int]) -> torch.Tensor:
    """`fn(path)` checked: a float `[C, H, W]` tensor (or array) of the reference input's shape."""
    try:
        out = fn(path)
    except Exception as exc:  # the user's code: any failure is reported with the file it failed on
        raise SkewError(f"--serving {name} raised {type(exc).__name__} on {path}: {exc}") from exc
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(np.ascontiguousarray(out))
    if not isinstance(out, torch.Tensor):
        raise SkewError(f"--serving {name} returned {type(out).__name__} for {path}; expected a tensor [C, H, W]")
    if tuple(out.shape) != expected:
        raise SkewError(f"--serving {name} returned shape {list(out.shape)} for {path}; expected {list(expected)} "
                        f"(the model's input: channels first, no batch axis)")
    if not out.is_floating_point():
        raise SkewError(f"--serving {name} returned {out.dtype} for {path}; expected float, already normalised "
                        f"(the tensor the model is fed)")
    if not bool(torch.isfinite(out).all()):
        raise SkewError(f"--serving {name} returned NaN or infinite values for {path}")
    return out.to(torch.float32)


def onnx_input_shape(loaded: Any) -> list[Any] | None:
    """The declared input shape of an ONNX model (ints for fixed axes, names for dynamic ones)."""
    session = getattr(loaded.module, "session", None)
    return None if session is None else list(session.get_inputs()[0].shape)


def check_serving_model_shape(loaded: Any, expected: tuple[int, int, int]) -> int | None:
    """Refuse an exported model whose fixed input axes differ from `expected` (C, H, W); returns its fixed
    batch size, if it has one."""
    shape = onnx_input_shape(loaded)
    if shape is None:
        return None
    if len(shape) != 4:
        raise SkewError(f"--serving-model {loaded.path}: its input has shape {shape}; expected [batch, "
                        f"{expected[0]}, {expected[1]}, {expected[2]}]")
    fixed = [(axis, want, got) for axis, want, got in zip(("channels", "height", "width"), expected, shape[1:])
             if isinstance(got, int) and got != want]
    if fixed:
        got_shape = "x".join(str(s) for s in shape[1:])
        raise SkewError(f"--serving-model {loaded.path}: it takes {got_shape} inputs but the reference preprocessing "
                        f"makes {expected[0]}x{expected[1]}x{expected[2]} ("
                        + ", ".join(f"{axis} {got} != {want}" for axis, want, got in fixed)
                        + "); export it at the model's input size or pass the matching --input-size")
    return shape[0] if isinstance(shape[0], int) else None


class ParityCheck:
    """Streams batches of reference and serving logits; keeps per image only what the result needs."""

    def __init__(self, serving: str, class_names: list[str], min_agreement: float) -> None:
        self.serving, self.class_names, self.min_agreement = serving, class_names, min_agreement
        self.images = self.agree = self.reference_right = self.serving_right = 0
        self.max_diff, self.diff_sum, self.diff_count = 0.0, 0.0, 0
        self.disagreements: list[Disagreement] = []

    def update(self, paths: list[str], reference: torch.Tensor, serving: torch.Tensor, labels: np.ndarray) -> None:
        ref_pred, srv_pred = reference.argmax(1).numpy(), serving.argmax(1).numpy()
        diff = (serving - reference).abs()
        per_image = diff.amax(1).numpy()
        self.images += len(paths)
        self.agree += int((ref_pred == srv_pred).sum())
        self.reference_right += int((ref_pred == labels).sum())
        self.serving_right += int((srv_pred == labels).sum())
        self.max_diff = max(self.max_diff, float(per_image.max()))
        self.diff_sum += float(diff.sum())
        self.diff_count += diff.numel()
        self.disagreements += [Disagreement(paths[i], self._name(int(ref_pred[i])), self._name(int(srv_pred[i])),
                                            float(per_image[i])) for i in np.flatnonzero(ref_pred != srv_pred)]

    def _name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)

    def result(self) -> ParityResult:
        n = max(self.images, 1)
        return ParityResult(serving=self.serving, images=self.images, agreement=self.agree / n,
                            min_agreement=self.min_agreement, max_logit_diff=self.max_diff,
                            mean_logit_diff=self.diff_sum / max(self.diff_count, 1),
                            reference_top1=self.reference_right / n, serving_top1=self.serving_right / n,
                            disagreements=list(self.disagreements))
