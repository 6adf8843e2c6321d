"""The run options every task shares (model, data, suite, device, ...), and those of perturbation
families that need settings of their own. Task-specific options are declared in their task's module.

This module must stay light (no torch): the pytest plugin reads these declarations when pytest starts.
"""

from __future__ import annotations

from pathlib import Path

from visionstress.options import Option, OptionError, register_options


def _seed(value: int) -> None:
    if value < 0 or value >= 2 ** 63:
        raise OptionError(f"--seed must be a whole number from 0 to 2**63 - 1, got {value}")


register_options(
    Option("model", str, None, "torchvision:NAME, timm:NAME, package.module:function, or a .pt2 / TorchScript / "
           ".onnx file. Omit with --data to run the bundled demo.", short="-m", group="model"),
    Option("weights", Path, None, "State dict (.pth/.pt/.safetensors), loaded with weights_only.", short="-w",
           group="model"),
    Option("trust_model", bool, False, "Allow model files that execute code (.pt2, TorchScript, full pickles).",
           group="model"),
    Option("num_classes", int, None, "Build the architecture with this many outputs.", minimum=1, group="model"),
    Option("data", Path, None, "The dataset (its form depends on --task). Omit with --model to run the bundled "
           "demo.", short="-d", group="data"),
    Option("suite", str, "default", "Preset (quick, default, imagenet-c, ...) or a YAML/TOML suite file.",
           short="-s", group="run"),
    Option("device", str, None, "cpu, cuda, cuda:1 ... (default: CUDA when present).", group="run"),
    Option("batch_size", int, 64, "Images per batch.", short="-b", minimum=1, group="run"),
    Option("workers", int, 2, "DataLoader workers decoding images.", minimum=0, group="run"),
    Option("amp", bool, False, "bf16 autocast for the model.", group="run"),
    Option("limit", int, None, "Only the first N images (a quick look).", minimum=1, group="data"),
    Option("seed", int, None, "Overrides the suite's seed.", check=_seed, group="run"),
    Option("out", Path, None, "Output directory (default: reports/<name>).", short="-o", group="output"),
    Option("strict", bool, False, "A corrupt image is an error instead of a recorded skip.", group="data"),
    Option("bootstrap", int, 1000, "Bootstrap resamples for the 95% intervals (0: none).", minimum=0,
           group="output"),
    Option("gallery", int, 12, "Worst failures kept as thumbnails for the report (0: none).", minimum=0,
           group="output"),
    Option("progress", object, None, "progress(done, total), called as predictions are scored.", exposed=False),
)


# --- adversarial patches (perturbations/adversarial.py, visionstress/patches.py) ----------------------

def _fraction_inside(value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError("must be between 0 and 1 (exclusive): it is the share of images the patches are fitted "
                         "on; the others are scored")


_PATCHES = "adversarial patches"
register_options(
    Option("patch_steps", int, 250, "Adam steps fitting each adversarial patch (one batch per step).", minimum=1,
           group=_PATCHES),
    Option("patch_lr", float, 0.05, "Adam learning rate of the patch, in pixel values (0..1).", minimum=1e-6,
           maximum=10.0, group=_PATCHES),
    Option("patch_batch_size", int, 32, "Images per patch-fitting step.", minimum=1, group=_PATCHES),
    Option("patch_fit_fraction", float, 0.2, "Share of the images (chosen by sample-id hash) the patches are "
           "fitted on; the patch rows score only the others.", check=_fraction_inside, group=_PATCHES),
    Option("patch_target", str, None, "Targeted patch: the class (name or index) predictions should turn into; "
           "default untargeted (push the true class down).", tasks=frozenset({"classification", "segmentation"}),
           metavar="CLASS", group=_PATCHES),
    Option("patch_target_class", str, None, "Detection: only objects of this category (name or id) get a patch "
           "and are made to vanish; default every object.", tasks=frozenset({"detection"}), metavar="CATEGORY",
           group=_PATCHES),
    Option("patch_from", Path, None, "A previous report folder: evaluate its fitted patches on this model instead "
           "of fitting new ones (the transfer attack between model versions).", metavar="REPORT", group=_PATCHES),
    Option("patch_shape", str, "square", "Patch shape.", choices=("square", "circle"), group=_PATCHES),
    Option("patch_eot_brightness", float, 0.1, "Fitting: brightness jitter of the patch, ± this (pixel values).",
           minimum=0.0, maximum=0.5, group=_PATCHES),
    Option("patch_eot_contrast", float, 0.1, "Fitting: contrast jitter of the patch, a factor 1 ± this.",
           minimum=0.0, maximum=0.9, group=_PATCHES),
    Option("patch_eot_perspective", float, 0.0, "Fitting: perspective jitter of the patch (0 = none; 0.1 tilts "
           "its far edge ~10% smaller).", minimum=0.0, maximum=0.3, group=_PATCHES),
)

