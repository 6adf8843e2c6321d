"""Shared by the run benchmarks: the model-only side of the harness-overhead ratio."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch


def model_only(predict: Callable[[torch.Tensor], Any], images: torch.Tensor, passes: int,
               device: torch.device) -> float:
    """Seconds for `passes` calls of `predict` on one resident batch, after one warm-up call (the
    adapter applies its own bf16 autocast when asked for, exactly as in a run)."""
    predict(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(passes):
        predict(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start
