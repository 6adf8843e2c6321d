"""Adapters: the one narrow door between the harness and a model (`predict(images) -> output`).

Perturbations work in pixel space, so the model's own preprocessing (channel order, mean/std) must
happen after them; it lives here, on the device, once per batch. The adapter also refuses outputs
that would silently corrupt metrics (wrong shape, NaN/inf), naming the model in the error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from visionstress.models.data_config import DataConfig
from visionstress.models.loading import LoadedModel


@dataclass
class ClassifierOutput:
    """Raw class scores; softmax, top-k and calibration are the evaluator's business."""

    logits: Tensor  # [B, K] float32, on the adapter's device


class ModelOutputError(RuntimeError):
    """The model failed or returned something that is not usable logits; the message names the model."""


class ClassifierAdapter:
    """Normalise pixel batches the way `data_config` says and return float32 logits.

    `images` given to `predict` are `[B, 3, H, W]`, uint8 or float in [0, 1], already resized and
    cropped to `data_config.input_size` (the dataset does that, before the perturbations run).
    """

    def __init__(
        self,
        model: LoadedModel | nn.Module | Callable[[Tensor], Tensor],
        data_config: DataConfig,
        device: str | torch.device = "cpu",
        amp: bool = False,
    ) -> None:
        if isinstance(model, LoadedModel):
            self.spec = model.spec
            fn, self._num_classes = model.module, model.num_classes
        else:
            is_module = isinstance(model, nn.Module)
            self.spec = type(model).__name__ if is_module else getattr(model, "__name__", repr(model))
            fn, self._num_classes = model, None
        self.device = torch.device(device)
        if isinstance(fn, nn.Module):
            fn = fn.to(self.device)
            try:
                fn.eval()
            except NotImplementedError:  # torch.export modules keep the mode they were exported in
                pass
        self.model = fn
        self.data_config = data_config
        self.amp = amp
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(data_config.mean, dtype=torch.float32, device=self.device).view(shape)
        self._std = torch.tensor(data_config.std, dtype=torch.float32, device=self.device).view(shape)

    @property
    def num_classes(self) -> int:
        """Output width; when neither the loader nor a previous batch told us, one grey image is run."""
        if self._num_classes is None:
            h, w = self.data_config.input_size
            self.predict(torch.full((1, 3, h, w), 0.5, device=self.device))
        assert self._num_classes is not None  # set by predict
        return self._num_classes

    def predict(self, images: Tensor) -> ClassifierOutput:
        x = self._normalise(images)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            try:
                out = self.model(x)
            except torch.OutOfMemoryError:
                raise  # callers may retry with a smaller batch; keep the type
            except Exception as exc:
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ModelOutputError(
                    f"{self.spec}: the model failed on a batch of shape {list(x.shape)} "
                    f"({type(exc).__name__}: {message}); check the data config's input_size"
                ) from exc
        return ClassifierOutput(self._check(out, images.shape[0]))

    def _normalise(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.spec}: expected images [B, 3, H, W], got shape {list(images.shape)}")
        if tuple(images.shape[-2:]) != self.data_config.input_size:
            raise ValueError(
                f"{self.spec}: images are {images.shape[-2]}x{images.shape[-1]} but the data config's input_size "
                f"is {self.data_config.input_size[0]}x{self.data_config.input_size[1]}; resize and crop first"
            )
        x = images.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        elif x.is_floating_point():
            x = x.to(torch.float32)
        else:
            raise ValueError(f"{self.spec}: images must be uint8 or float in [0, 1], got {x.dtype}")
        if self.data_config.channel_order == "BGR":
            x = x.flip(1)
        return (x - self._mean) / self._std

    def _check(self, out: object, batch: int) -> Tensor:
        logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
        if not isinstance(logits, Tensor):
            raise ModelOutputError(f"{self.spec}: expected a logits tensor, the model returned {type(out).__name__}")
        if logits.ndim != 2 or logits.shape[0] != batch:
            raise ModelOutputError(
                f"{self.spec}: expected logits of shape [{batch}, num_classes], got {list(logits.shape)}"
            )
        logits = logits.to(torch.float32)
        finite = torch.isfinite(logits).all(dim=1)
        if not bool(finite.all()):
            hint = " (bf16 autocast can overflow: try without --amp)" if self.amp else ""
            raise ModelOutputError(
                f"{self.spec}: {int((~finite).sum())} of {batch} images got NaN or infinite logits{hint}"
            )
        width = logits.shape[1]
        if self._num_classes is None:
            self._num_classes = width
        elif width != self._num_classes:
            raise ModelOutputError(
                f"{self.spec}: returned {width} logits per image, but the model has {self._num_classes} classes"
            )
        return logits
