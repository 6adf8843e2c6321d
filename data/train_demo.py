"""Train the bundled demo classifier and write data/demo/shapes/classifier.safetensors.

The train split is rendered in memory by make_demo_dataset.render_split (never stored); the val
split is read back from the PNGs that make_demo_dataset.py wrote, so the accuracy printed and
stored in the weights' metadata is that of the shipped files. Half of the train images show their
class's own background (40% by design, plus chance), so the model partly learns that shortcut; the
val split breaks the correlation, and the script prints accuracy on val images whose background is
the class's train background next to the rest, which shows it.

Deterministic: fixed seeds, a single CPU thread and `torch.use_deterministic_algorithms(True)`;
about two minutes on one core.

    python data/make_demo_dataset.py && python data/train_demo.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import make_demo_dataset as shapes  # noqa: E402  (a sibling script, not a package)

from visionstress.models.demo import DEMO_DATA_CONFIG, tiny_classifier  # noqa: E402

TRAIN_PER_CLASS = 400
EPOCHS = 15
BATCH_SIZE = 32
LEARNING_RATE = 5e-3
SEED = 0


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> the model's input, exactly as DEMO_DATA_CONFIG prescribes."""
    mean = torch.tensor(DEMO_DATA_CONFIG.mean).view(1, 3, 1, 1)
    std = torch.tensor(DEMO_DATA_CONFIG.std).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def read_val(root: Path) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The shipped val images (uint8 [N, 3, H, W]), labels, and whether each image's background is
    the one its class had in training (read from val_instances.json)."""
    coco = json.loads((root / "val_instances.json").read_text())
    labels = {a["image_id"]: a["category_id"] - 1 for a in coco["annotations"]}
    images, targets, shortcut = [], [], []
    for info in coco["images"]:
        images.append(np.asarray(Image.open(root / info["file_name"]).convert("RGB")))
        targets.append(labels[info["id"]])
        shortcut.append(shapes.BACKGROUNDS.index(info["background"]) == labels[info["id"]])
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return tensor, torch.tensor(targets), np.array(shortcut)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips and quarter turns: every demo class is invariant to them."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    turns = int(torch.randint(4, (1,), generator=generator))
    return images.rot90(turns, (-2, -1))


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(normalise(chunk)).argmax(1) for chunk in images.split(256)])


def train(root: Path) -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    images, labels = shapes.render_split("train", TRAIN_PER_CLASS * len(shapes.CLASSES))
    train_x, train_y = torch.from_numpy(images), torch.from_numpy(labels)
    val_x, val_y, shortcut = read_val(root)
    print(f"rendered {len(train_x)} train images, read {len(val_x)} val images "
          f"({time.perf_counter() - start:.1f}s)")

    model = tiny_classifier(len(shapes.CLASSES))
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=5e-4)
    steps = EPOCHS * math.ceil(len(train_x) / BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, LEARNING_RATE, total_steps=steps)
    generator = torch.Generator().manual_seed(SEED)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(EPOCHS):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(train_x), generator=generator).split(BATCH_SIZE):
            loss = loss_fn(model(normalise(augment(train_x[batch], generator))), train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
        val_acc = float((predict(model, val_x) == val_y).float().mean())
        print(f"epoch {epoch + 1:2d}/{EPOCHS}  loss {total / len(train_x):.3f}  val top-1 {val_acc:.3f}")

    train_acc = float((predict(model, train_x) == train_y).float().mean())
    correct = (predict(model, val_x) == val_y).numpy()
    val_acc = float(correct.mean())
    elapsed = time.perf_counter() - start
    print(f"train top-1 {train_acc:.3f}; val top-1 {val_acc:.4f} ({int(correct.sum())}/{len(correct)}); "
          f"val on the class's train background {correct[shortcut].mean():.3f}, "
          f"on other backgrounds {correct[~shortcut].mean():.3f}; {elapsed:.0f}s")
    metadata = {
        "classes": ",".join(shapes.CLASSES),
        "val_top1": f"{val_acc:.4f}",
        "num_val": str(len(correct)),
        "data_config": json.dumps(DEMO_DATA_CONFIG.to_dict()),
        "trained_by": "data/train_demo.py",
        "seed": str(SEED),
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / "classifier.safetensors"), metadata=metadata)
    print(f"wrote {root / 'classifier.safetensors'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shapes.OUT,
                        help=f"the folder make_demo_dataset.py wrote (default {shapes.OUT})")
    train(parser.parse_args().data)


if __name__ == "__main__":
    main()
