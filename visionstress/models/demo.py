"""The bundled demo classifier: a tiny CNN for the 64x64 shapes of data/demo/shapes.

`visionstress run` with no arguments loads it as the factory spec
`visionstress.models.demo:tiny_classifier` with the weights in data/demo/shapes/classifier.safetensors
(trained by data/train_demo.py). It is small on purpose (~100k parameters): it trains on a CPU in
about two minutes, and it is weak enough that perturbations visibly hurt it.
"""

from __future__ import annotations

import torch
from torch import nn

from visionstress.models.data_config import DataConfig

#: How the demo images reach the model: already 64x64, so no resize or crop; pixels scaled to [-1, 1].
DEMO_DATA_CONFIG = DataConfig(
    input_size=(64, 64),
    resize=None,
    interpolation="bilinear",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    channel_order="RGB",
)


class _AvgMaxPool(nn.Module):
    """Global average and max pooling side by side: the max keeps a small object's evidence from
    being averaged away by the background around it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def tiny_classifier(num_classes: int = 6) -> nn.Module:
    """A four-stage CNN (16-32-64-128 channels, ~99k parameters) ending in global average + max
    pooling, so it accepts any input size; returns logits [B, num_classes] for normalised images.

    The module carries `data_config = DEMO_DATA_CONFIG`, the convention by which a factory tells the
    loader its preprocessing, so `--model visionstress.models.demo:tiny_classifier` needs no flags."""
    model = nn.Sequential(
        *_block(3, 16), nn.MaxPool2d(2),
        *_block(16, 32), nn.MaxPool2d(2),
        *_block(32, 64), nn.MaxPool2d(2),
        *_block(64, 128),
        _AvgMaxPool(),
        nn.Linear(256, num_classes),
    )
    model.data_config = DEMO_DATA_CONFIG
    return model
