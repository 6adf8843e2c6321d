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


#: The demo segmenter's preprocessing: the same as the classifier's (64x64 images, pixels scaled to [-1, 1]).
DEMO_SEGMENTER_DATA_CONFIG = DEMO_DATA_CONFIG

_STRIDE = 16  # total downsampling of _Encoder: inputs are padded to a multiple of it


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class _Encoder(nn.Module):
    """Four stride-2 stages (strides 2, 4, 8, 16); the deepest one sees a 64x64 image whole, which
    telling a large square from a rectangle needs. Returns the feature map of every stage."""

    def __init__(self, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        a, b, c, d = widths
        self.stages = nn.ModuleList([
            _conv(3, a, 2),
            nn.Sequential(_conv(a, b, 2), _conv(b, b)),
            nn.Sequential(_conv(b, c, 2), _conv(c, c)),
            nn.Sequential(_conv(c, d, 2), _conv(d, d)),
        ])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class _Up(nn.Module):
    """U-Net decoder step: upsample to the skip connection's size, concatenate, convolve."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.conv = _conv(c_in + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], 1))


def _pad(x: torch.Tensor) -> torch.Tensor:
    """Pad right and bottom with zeros (mid-grey once normalised) to a multiple of _STRIDE, so any
    input size works; callers crop their outputs back."""
    h, w = x.shape[-2:]
    return nn.functional.pad(x, (0, -w % _STRIDE, 0, -h % _STRIDE))


def _head(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, c_out, 1))


class TinyDetector(nn.Module):
    """CenterNet ("Objects as Points", Zhou et al. 2019) at stride 4: an object is the peak of its
    class's heatmap at its box centre, with the box size and the centre's sub-cell offset regressed
    there. No anchors and no NMS (peaks are local maxima), which keeps it small and exact to decode."""

    data_config = None  # no preprocessing to ask for: it takes pixels in [0, 1] and normalises itself
    stride = 4
    top_k = 20
    score_threshold = 0.05

    def __init__(self, num_classes: int = 6) -> None:
        super().__init__()
        self.encoder = _Encoder((16, 32, 64, 64))
        self.up8 = _Up(64, 64, 64)
        self.up4 = _Up(64, 32, 48)
        self.heatmap = _head(48, num_classes)
        self.size = _head(48, 2)  # log of box width and height in input pixels
        self.offset = _head(48, 2)  # box centre / stride minus its cell index, x then y
        # start with every cell at p = 0.1 so the focal loss is not swamped by the background at first
        nn.init.constant_(self.heatmap[-1].bias, -2.19)

    def heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw head outputs for [B, 3, H, W] images in [0, 1]: heatmap logits [B, C, h, w], log sizes
        [B, 2, h, w] and offsets [B, 2, h, w] with h, w = ceil(H / 4), ceil(W / 4). Training uses these."""
        h, w = -(-images.shape[-2] // self.stride), -(-images.shape[-1] // self.stride)
        _, f4, f8, f16 = self.encoder(_pad((images - 0.5) / 0.5))
        x = self.up4(self.up8(f16, f8), f4)[..., :h, :w]
        return self.heatmap(x), self.size(x), self.offset(x)

    def forward(self, images: list[torch.Tensor] | torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detections per image in the torchvision convention: `boxes` [M, 4] xyxy in input pixels,
        `scores` [M], `labels` [M] = class index + 1 (the COCO category ids of the demo set).
        Images of different sizes in a list are run in separate passes, never padded together, so
        an image's detections do not depend on what it is batched with."""
        if isinstance(images, torch.Tensor):
            return self._detect(images)
        sizes = [tuple(image.shape) for image in images]
        out: list[dict[str, torch.Tensor]] = [{}] * len(images)
        for size in dict.fromkeys(sizes):
            index = [i for i, s in enumerate(sizes) if s == size]
            for i, detections in zip(index, self._detect(torch.stack([images[i] for i in index]))):
                out[i] = detections
        return out

    def _detect(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        logits, log_size, offset = self.heads(images)
        heat = logits.sigmoid()
        heat = heat * (heat == nn.functional.max_pool2d(heat, 3, 1, 1))  # keep local maxima only
        b, c, h, w = heat.shape
        scores, flat = heat.flatten(1).topk(min(self.top_k, c * h * w), 1)
        labels, cell = flat // (h * w), flat % (h * w)
        y, x = cell // w, cell % w
        rows = torch.arange(b, device=images.device)[:, None]
        ox, oy = offset[rows, 0, y, x], offset[rows, 1, y, x]
        bw, bh = log_size[rows, 0, y, x].clamp(max=10).exp(), log_size[rows, 1, y, x].clamp(max=10).exp()
        cx, cy = (x + ox) * self.stride, (y + oy) * self.stride
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        limit = torch.tensor([images.shape[-1], images.shape[-2]] * 2, dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        keep = scores > self.score_threshold
        return [{"boxes": boxes[i][keep[i]].float(), "scores": scores[i][keep[i]],
                 "labels": labels[i][keep[i]] + 1} for i in range(b)]


def tiny_detector(num_classes: int = 6) -> nn.Module:
    """The demo detector (~300k parameters): takes images in [0, 1] (a list of CHW tensors or one
    [B, 3, H, W] tensor, any size), normalises them itself like torchvision's detectors, and returns
    torchvision-style detections. Trained by data/train_demo_dense.py."""
    return TinyDetector(num_classes)


class TinySegmenter(nn.Module):
    """A small U-Net: the _Encoder's four stages, decoded back to stride 2 through skip connections,
    then a last convolution at full resolution that also sees the input, so edges are placed by the
    pixels themselves rather than by upsampling. Every pixel's logits also get image-level class
    logits from the deepest features' global average and max (like ParseNet's global context): which
    shape a pixel belongs to is decided by the whole object, which local convolutions on a large object
    do not see. That prior is one per image, which suits the one-object demo images."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.encoder = _Encoder((16, 32, 64, 64))
        self.context = nn.Sequential(_AvgMaxPool(), nn.Linear(128, num_classes))
        self.up8 = _Up(64, 64, 64)
        self.up4 = _Up(64, 32, 32)
        self.up2 = _Up(32, 16, 16)
        self.classifier = nn.Conv2d(16 + 3, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes, H, W] for normalised images [B, 3, H, W] of any size."""
        h, w = x.shape[-2:]
        padded = _pad(x)
        f2, f4, f8, f16 = self.encoder(padded)
        y = self.up2(self.up4(self.up8(f16, f8), f4), f2)
        y = nn.functional.interpolate(y, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(torch.cat([y, padded], 1)) + self.context(f16)[..., None, None]
        return logits[..., :h, :w]


def tiny_segmenter(num_classes: int = 7) -> nn.Module:
    """The demo segmenter (~250k parameters): logits [B, 7, H, W]; class 0 is background and class
    i + 1 is shape i, as in the val_masks PNGs. Carries `data_config = DEMO_SEGMENTER_DATA_CONFIG`.
    Trained by data/train_demo_dense.py."""
    model = TinySegmenter(num_classes)
    model.data_config = DEMO_SEGMENTER_DATA_CONFIG
    return model
