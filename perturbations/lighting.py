"""Lighting: brighter, darker, flatter or differently coloured scenes."""

from __future__ import annotations

from torch import Tensor

from .registry import photometric

BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
"""ImageNet-C: added to HSV value."""


@photometric(name="brightness", family="lighting", severities=BRIGHTNESS,
             description="ImageNet-C brightness: the HSV value channel raised, hue and saturation kept.")
def brightness(images: Tensor, params: dict[str, Tensor], level: float) -> Tensor:
    # Raising V with H and S fixed scales all three channels by V'/V; black becomes grey V'.
    value = images.amax(dim=1, keepdim=True)
    raised = (value + level).clamp(max=1.0)
    scaled = images * (raised / value.clamp_min(1e-12))
    return scaled.where(value > 0, raised.expand_as(images))
