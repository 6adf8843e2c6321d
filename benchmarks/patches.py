"""Patch fitting speed: visionstress beside ART's AdversarialPatchPyTorch and the model's own limit.

One run fits a 10%-area square patch on the same model, the same 32 fit images, with the same batch
size, step count, learning rate and EOT ranges (position anywhere, rotation ±22.5°, side ±10%; no
brightness, contrast or perspective jitter, which ART's patch does not have), and prints steps per
second of:

- the limit: the model's own forward + backward to its input on one batch (weights frozen), what any
  patch fitter must pay per step;
- visionstress (`visionstress.patches.fit_patch`: batched EOT in torch, through the adapter);
- ART's `AdversarialPatchPyTorch` (`pip install adversarial-robustness-toolbox`), which transforms each
  image of the batch in a Python loop.

Both fitted patches are then pasted at the same placements on the held-out images, so the table also
shows that both attacks really attack (top-1 clean, under each patch).

    python benchmarks/patches.py                                       # demo classifier, CPU, batch 32, 64 px
    python benchmarks/patches.py --model torchvision:resnet50 --size 224 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from visionstress.batch import Batch
from visionstress.demo import demo_arguments
from visionstress.models import ClassifierAdapter, DataConfig, load_model
from visionstress.options import resolve_options
from visionstress.patches import fit_patch, fit_settings, frozen
from visionstress.perturbations import PrepareContext, get_perturbation
from visionstress.perturbations.adversarial import PatchState, fit_subset, nominal_side, texture_resolution

AREA = 0.10
SEVERITY = 4  # the 10% level of the patch table


def _images(size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The demo's images (resized when the model wants another size) and labels, uint8."""
    from visionstress.datasets import ClassificationImages, iterate_batches, load_classification_samples

    samples, _ = load_classification_samples(Path(demo_arguments()["data"]), None)
    config = DataConfig(input_size=(size, size), resize=None if size == 64 else size, interpolation="bilinear",
                        mean=(0.5,) * 3, std=(0.5,) * 3, channel_order="RGB")
    batch = next(b for b, _ in iterate_batches(ClassificationImages(samples, config), len(samples), 0))
    order = torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))[:count]
    return batch.images[order], batch.labels[order]


def _model(spec: str, size: int, device: torch.device) -> tuple[torch.nn.Module, DataConfig, int]:
    if spec == "demo":
        args = demo_arguments()
        loaded = load_model(args["model"], weights=args["weights"])
        return loaded.module.to(device).eval(), loaded.data_config, 6
    import torchvision

    name = spec.split(":", 1)[1]
    model = getattr(torchvision.models, name)(weights=None, num_classes=6).to(device).eval()  # random weights
    config = DataConfig(input_size=(size, size), resize=None, interpolation="bilinear", mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225), channel_order="RGB")
    return model, config, 6


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="demo, or torchvision:NAME with random weights")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (medians reported)")
    parser.add_argument("--skip-art", action="store_true")
    args = parser.parse_args()
    from visionstress.allocator import keep_large_blocks

    keep_large_blocks()  # as every run sets it, before either side is timed (see visionstress/allocator.py)
    device = torch.device(args.device)
    model, config, classes = _model(args.model, args.size, device)
    images, labels = _images(args.size, 144)
    ids = torch.arange(len(images))
    fraction = min(0.9, (args.batch + 2) / len(images))
    fit = fit_subset(ids, fraction)
    fit_ids = ids[fit][: args.batch]
    held_out = ids[~fit]
    adapter = ClassifierAdapter(model, config, device=device)

    # the limit: forward + backward to the input on one batch
    x = (images[fit_ids].float() / 255).to(device)

    def limit_steps(steps: int) -> None:
        with frozen(model):
            for _ in range(steps):
                xi = x.clone().requires_grad_(True)
                adapter.forward(xi).logsumexp(1).sum().backward()

    # visionstress
    options = resolve_options("classification", {"patch_steps": args.steps, "patch_lr": args.lr,
                                                 "patch_batch_size": args.batch, "patch_fit_fraction": fraction,
                                                 "patch_eot_brightness": 0.0, "patch_eot_contrast": 0.0})
    batch = Batch(images[fit_ids], sample_ids=fit_ids, labels=labels[fit_ids])
    context = PrepareContext(task="classification", adapter=adapter, batches=lambda: iter([batch]),
                             severities={"adversarial_patch": (SEVERITY,)}, seed=0, device=device, options=options,
                             state_dir=Path("prepared"))  # fit_patch writes nothing
    resolution = texture_resolution(nominal_side(AREA, args.size * args.size, "square"))
    settings = fit_settings(context)
    ours = None

    def ours_steps(steps: int) -> None:
        nonlocal ours
        ours = fit_patch(context, AREA, resolution, dataclasses.replace(settings, steps=steps), SEVERITY)

    # ART
    art_steps = art = None
    if not args.skip_art:
        from art.attacks.evasion import AdversarialPatchPyTorch
        from art.estimators.classification import PyTorchClassifier

        art_model = copy.deepcopy(model)
        before = {k: v.clone() for k, v in art_model.state_dict().items()}
        classifier = PyTorchClassifier(
            model=art_model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, args.size, args.size),
            nb_classes=classes, clip_values=(0.0, 1.0),
            preprocessing=(np.array(config.mean, np.float32).reshape(3, 1, 1),
                           np.array(config.std, np.float32).reshape(3, 1, 1)),
            device_type="gpu" if device.type == "cuda" else "cpu")
        x_art = (images[fit_ids].float() / 255).numpy()
        y_art = np.eye(classes, dtype=np.float32)[labels[fit_ids].numpy()]
        art = {}

        def art_steps(steps: int) -> None:
            scale = AREA ** 0.5
            attack = AdversarialPatchPyTorch(classifier, rotation_max=22.5, scale_min=0.9 * scale,
                                             scale_max=1.1 * scale, learning_rate=args.lr, max_iter=steps,
                                             batch_size=args.batch, patch_shape=(3, args.size, args.size),
                                             patch_type="square", targeted=False, verbose=False)
            art["patch"], _ = attack.generate(x=x_art, y=y_art)

    # interleaved rounds, so that a change in the machine's load hits the three alike; medians reported
    fitters = {"limit": limit_steps, "visionstress": ours_steps, **({"ART": art_steps} if art_steps else {})}
    for fn in fitters.values():
        fn(2)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in fitters}
    for _ in range(args.rounds):
        for name, fn in fitters.items():
            _sync(device)
            start = time.perf_counter()
            fn(args.steps)
            _sync(device)
            rates[name].append(args.steps / (time.perf_counter() - start))
    rate = {name: float(np.median(values)) for name, values in rates.items()}
    limit, ours_rate, art_rate = rate["limit"], rate["visionstress"], rate.get("ART")
    art_patch = None if art is None else torch.from_numpy(np.asarray(art["patch"], np.float32))
    art_buffers_changed = None if art is None else any(
        not torch.equal(before[k], v) for k, v in art_model.state_dict().items())

    # both patches at the same placements on the held-out images
    held = Batch(images[held_out], sample_ids=held_out, labels=labels[held_out])
    top1 = {}
    attack_p = get_perturbation("adversarial_patch")
    patches = {"clean": None, "visionstress": ours.patch}
    if art_patch is not None:
        patches["ART"] = art_patch
    for name, texture in patches.items():
        view = held if texture is None else attack_p.with_state(PatchState({AREA: texture}))(held, severity=SEVERITY)
        with torch.inference_mode():
            top1[name] = float((adapter.predict(view.images).logits.argmax(1).cpu() == held.labels).float().mean())

    print(f"{args.model} on {device}, batch {args.batch}, {args.size}x{args.size}, {args.steps} steps x "
          f"{args.rounds} rounds, {100 * AREA:g}% square patch, torch threads {torch.get_num_threads()}")
    print(f"{'':38} {'steps/s':>8} {'x limit':>8} {'x ART':>7}")
    print(f"{'model forward+backward (the limit)':38} {limit:8.1f} {1.0:8.2f} "
          f"{'' if art_rate is None else f'{limit / art_rate:7.2f}'}")
    print(f"{'visionstress fit_patch':38} {ours_rate:8.1f} {ours_rate / limit:8.2f} "
          f"{'' if art_rate is None else f'{ours_rate / art_rate:7.2f}'}")
    if art_rate is not None:
        print(f"{'ART AdversarialPatchPyTorch':38} {art_rate:8.1f} {art_rate / limit:8.2f} {1.0:7.2f}")
    print(f"held-out top-1 ({len(held_out)} images): " + ", ".join(f"{k} {v:.3f}" for k, v in top1.items()))
    if art_buffers_changed is not None:
        print(f"ART changed the model's weights or buffers while fitting: {'yes' if art_buffers_changed else 'no'}")


if __name__ == "__main__":
    main()
