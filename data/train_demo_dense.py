"""Train the bundled demo detector and segmenter: data/demo/shapes/{detector,segmenter}.safetensors.

Like train_demo.py, the train split is rendered in memory (make_demo_dataset.render_sample) and the
val split is read back from the shipped PNGs, masks and val_instances.json, so the clean numbers
printed and stored in each file's metadata (COCO AP by pycocotools, mIoU over the 7 classes) are
those of the shipped files.

Unlike the classifier, the dense models train on a background-balanced subset of the train split
(a class shows on its own background 1 time in 6, as on val): with the train split's 50% background
shortcut the segmenter learns the background and not the shapes within this time budget, since every
object pixel sees background around it. The detector trains on the same images.

The detector is CenterNet (visionstress.models.demo.TinyDetector): a focal loss on Gaussian
heatmaps around each box centre, an L1 loss on the log box size and one on the centre's sub-cell
offset, at the centre cell only. The loss lives here, not in the package: users only run the model.
The segmenter is a small U-Net trained with cross-entropy, ignoring the partial-coverage pixels
(mask value 255). Both see random flips and transposes (the shapes are invariant to them; boxes
and masks move with the pixels).

Deterministic: fixed seeds, one CPU thread and `torch.use_deterministic_algorithms(True)`; about
three and a half minutes per model on one core.

    python data/make_demo_dataset.py && python data/train_demo_dense.py [--model detector|segmenter|both]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import make_demo_dataset as shapes  # noqa: E402  (a sibling script, not a package)

from visionstress.models.demo import DEMO_SEGMENTER_DATA_CONFIG, tiny_detector, tiny_segmenter  # noqa: E402

TRAIN_IMAGES = 4800  # twice the classifier's: more distinct shapes, fewer repeats
EPOCHS = {"detector": 8, "segmenter": 8}
BATCH_SIZE = 32
LEARNING_RATE = 4e-3
SEED = 0
GAUSSIAN_ALPHA = 0.54  # heatmap sigma = alpha * box side / 6, per axis (TTFNet's elliptical Gaussian)
SIZE_WEIGHT, OFFSET_WEIGHT = 1.0, 1.0


def render_train() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train images uint8 [N, 3, 64, 64], masks uint8 [N, 64, 64], xyxy boxes [N, 4] and labels [N].

    Samples are taken in index order, skipping 4 in 5 of those drawn on their class's own background:
    that leaves 1 in 6 on it (as chance would), so the background no longer predicts the class."""
    images, masks, boxes, labels = [], [], [], []
    index = -1
    while len(images) < TRAIN_IMAGES:
        index += 1
        sample = shapes.render_sample("train", index)
        if sample.background == sample.label and index % 5:
            continue
        polygon = np.array(sample.polygon)
        images.append(sample.image)
        masks.append(sample.mask)
        boxes.append([*polygon.min(0), *polygon.max(0)])
        labels.append(sample.label)
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(np.stack(masks)),
            torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels))


def read_val(root: Path) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The shipped val images (uint8 [N, 3, H, W]), masks (uint8 [N, H, W]) and COCO image ids."""
    coco = json.loads((root / "val_instances.json").read_text())
    images, masks = [], []
    for info in coco["images"]:
        images.append(np.asarray(Image.open(root / info["file_name"]).convert("RGB")))
        masks.append(np.asarray(Image.open(root / "val_masks" / Path(info["file_name"]).name)))
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return tensor, torch.from_numpy(np.stack(masks)), [info["id"] for info in coco["images"]]


def augment(images: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image random transpose, horizontal and vertical flip (the 8 symmetries of the square),
    applied alike to the images [B, 3, S, S], masks [B, S, S] and xyxy boxes [B, 4]."""
    size = images.shape[-1]
    for flag, image_op, mask_op, box_op in (
        (torch.rand(len(images), generator=generator) < 0.5, lambda t: t.transpose(-1, -2),
         lambda t: t.transpose(-1, -2), lambda b: b[:, [1, 0, 3, 2]]),
        (torch.rand(len(images), generator=generator) < 0.5, lambda t: t.flip(-1), lambda t: t.flip(-1),
         lambda b: torch.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], 1)),
        (torch.rand(len(images), generator=generator) < 0.5, lambda t: t.flip(-2), lambda t: t.flip(-2),
         lambda b: torch.stack([b[:, 0], size - b[:, 3], b[:, 2], size - b[:, 1]], 1)),
    ):
        images = torch.where(flag.view(-1, 1, 1, 1), image_op(images), images)
        masks = torch.where(flag.view(-1, 1, 1), mask_op(masks), masks)
        boxes = torch.where(flag.view(-1, 1), box_op(boxes), boxes)
    return images, masks, boxes


def detector_loss(model: nn.Module, images: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor
                  ) -> torch.Tensor:
    """CenterNet's loss for images with one object each: focal loss (alpha 2, beta 4) on the class
    heatmaps against Gaussians around the centre cell, plus L1 on log size and offset at that cell."""
    logits, log_size, offset = model.heads(images.float() / 255)
    b, _, h, w = logits.shape
    stride = model.stride
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride  # in output cells, [B, 2] x then y
    cell = centre.floor().long().clamp(min=0)
    cell = torch.minimum(cell, torch.tensor([w - 1, h - 1]))
    extent = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1)  # width, height in pixels
    sigma = GAUSSIAN_ALPHA * extent / 6 / stride
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    gauss = torch.exp(-((xs - cell[:, 0].view(-1, 1, 1)) ** 2 / (2 * sigma[:, 0].view(-1, 1, 1) ** 2)
                        + (ys - cell[:, 1].view(-1, 1, 1)) ** 2 / (2 * sigma[:, 1].view(-1, 1, 1) ** 2)))
    target = torch.zeros_like(logits)
    target[torch.arange(b), labels] = gauss

    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = target == 1
    focal = torch.where(positive, (1 - p) ** 2 * torch.log(p), (1 - target) ** 4 * p**2 * torch.log(1 - p))
    heat_loss = -focal.sum() / b

    rows = torch.arange(b)
    size_loss = (log_size[rows, :, cell[:, 1], cell[:, 0]] - extent.log()).abs().mean()
    offset_loss = (offset[rows, :, cell[:, 1], cell[:, 0]] - (centre - cell)).abs().mean()
    return heat_loss + SIZE_WEIGHT * size_loss + OFFSET_WEIGHT * offset_loss


def segmenter_loss(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(normalise(images)), masks.long(), ignore_index=shapes.IGNORE)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> the segmenter's input, exactly as DEMO_SEGMENTER_DATA_CONFIG prescribes."""
    mean = torch.tensor(DEMO_SEGMENTER_DATA_CONFIG.mean).view(1, 3, 1, 1)
    std = torch.tensor(DEMO_SEGMENTER_DATA_CONFIG.std).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


@torch.inference_mode()
def detection_ap(model: nn.Module, images: torch.Tensor, image_ids: list[int], root: Path) -> dict[str, float]:
    """COCO box AP and AP50 of the model's detections on the val images, by pycocotools."""
    model.eval()
    results = []
    for image_id, det in zip(image_ids, model(images.float() / 255)):
        for (x0, y0, x1, y1), score, label in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                                  det["labels"].tolist()):
            results.append({"image_id": image_id, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": score})
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO(str(root / "val_instances.json"))
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"AP": float(evaluator.stats[0]), "AP50": float(evaluator.stats[1])}


@torch.inference_mode()
def segmentation_iou(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Per-class IoU [num_classes] over the whole val set, pixels marked 255 ignored."""
    model.eval()
    predicted = model(normalise(images)).argmax(1).numpy().ravel()
    truth = masks.numpy().ravel()
    valid = truth != shapes.IGNORE
    k = len(shapes.CLASSES) + 1
    confusion = np.bincount(truth[valid] * k + predicted[valid], minlength=k * k).reshape(k, k)
    return np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))


def fit(name: str, model: nn.Module, loss_fn, data: tuple[torch.Tensor, ...], evaluate) -> None:
    """AdamW with a one-cycle schedule; `loss_fn(model, *batch)` after augmentation; `evaluate()` each epoch."""
    images, masks, boxes, labels = data
    epochs = EPOCHS[name]
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=5e-4)
    steps = epochs * math.ceil(len(images) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, LEARNING_RATE, total_steps=steps)
    generator = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(images), generator=generator).split(BATCH_SIZE):
            x, m, b = augment(images[batch], masks[batch], boxes[batch], generator)
            loss = loss_fn(model, x, m, b, labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
        print(f"{name} epoch {epoch + 1:2d}/{epochs}  loss {total / len(images):.4f}  val {evaluate()}  "
              f"({time.perf_counter() - start:.0f}s)")


def train_detector(root: Path, data: tuple[torch.Tensor, ...]) -> None:
    val_images, _, image_ids = read_val(root)
    torch.manual_seed(SEED)
    model = tiny_detector(len(shapes.CLASSES))
    fit("detector", model, lambda m, x, _masks, b, y: detector_loss(m, x, b, y), data,
        lambda: detection_ap(model, val_images, image_ids, root))
    metrics = detection_ap(model, val_images, image_ids, root)
    print(f"detector: clean val AP {metrics['AP']:.4f}, AP50 {metrics['AP50']:.4f}")
    metadata = {
        "classes": ",".join(shapes.CLASSES),
        "val_AP": repr(metrics["AP"]),
        "val_AP50": repr(metrics["AP50"]),
        "num_val": str(len(val_images)),
        "epochs": str(EPOCHS["detector"]),
        "train_images": str(TRAIN_IMAGES),
        "trained_by": "data/train_demo_dense.py",
        "seed": str(SEED),
    }
    save(model, root / "detector.safetensors", metadata)


def train_segmenter(root: Path, data: tuple[torch.Tensor, ...]) -> None:
    val_images, val_masks, _ = read_val(root)
    torch.manual_seed(SEED)
    model = tiny_segmenter(len(shapes.CLASSES) + 1)
    fit("segmenter", model, lambda m, x, masks, _b, _y: segmenter_loss(m, x, masks), data,
        lambda: f"mIoU {segmentation_iou(model, val_images, val_masks).mean():.4f}")
    iou = segmentation_iou(model, val_images, val_masks)
    names = ("background", *shapes.CLASSES)
    print(f"segmenter: clean val mIoU {iou.mean():.4f} (" + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, iou)) + ")")
    metadata = {
        "classes": ",".join(names),
        "val_mIoU": repr(float(iou.mean())),
        "val_IoU": json.dumps(dict(zip(names, np.round(iou, 4).tolist()))),
        "num_val": str(len(val_images)),
        "data_config": json.dumps(DEMO_SEGMENTER_DATA_CONFIG.to_dict()),
        "epochs": str(EPOCHS["segmenter"]),
        "train_images": str(TRAIN_IMAGES),
        "trained_by": "data/train_demo_dense.py",
        "seed": str(SEED),
    }
    save(model, root / "segmenter.safetensors", metadata)


def save(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shapes.OUT,
                        help=f"the folder make_demo_dataset.py wrote (default {shapes.OUT})")
    parser.add_argument("--model", choices=("detector", "segmenter", "both"), default="both")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    data = render_train()
    print(f"rendered {len(data[0])} train images ({time.perf_counter() - start:.1f}s)")
    if args.model in ("detector", "both"):
        train_detector(args.data, data)
    if args.model in ("segmenter", "both"):
        train_segmenter(args.data, data)


if __name__ == "__main__":
    main()
