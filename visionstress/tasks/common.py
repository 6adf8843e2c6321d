"""The run options every task shares (model, data, suite, device, ...), and those of perturbation
families that need settings of their own. Task-specific options are declared in their task's module.

This module must stay light (no torch): the pytest plugin reads these declarations when pytest starts.
"""

from __future__ import annotations

from pathlib import Path

from visionstress.options import Option, register_options


def _seed(value: int) -> None:
    if value < 0 or value >= 2 ** 63:
        raise ValueError("a seed is a whole number from 0 to 2**63 - 1")


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
    Option("skip_label_check", bool, False, "Run even when the model's labels look like another numbering than "
           "the dataset's (a constant offset, COCO 80 vs 91 ids, a permuted class list).", group="model"),
    Option("resume", bool, False, "Continue the interrupted run in --out (same command): finished batches are "
           "kept, the rest is scored.", group="output"),
    Option("overwrite", bool, False, "Replace the run already in --out instead of refusing.", group="output"),
    Option("progress", object, None, "progress(done, total), called as predictions are scored.", exposed=False),
)


# --- Input safety: what a dataset may make a run read -----------------------------------------------
# Plain keyword parameters of the dataset functions carry these (same names, same defaults):
# max_pixels: ClassificationImages, DetectionImages, SegmentationImages (and read_image / read_mask);
# allow_outside_paths: load_classification_samples, load_coco_dataset.

MAX_PIXELS = 100_000_000  # = visionstress.images.MAX_PIXELS (kept here so that this module needs no torch)
PILLOW_MAX_PIXELS = 178_956_970  # Pillow refuses to open larger images (2 x PIL.Image.MAX_IMAGE_PIXELS)

register_options(
    Option("max_pixels", int, MAX_PIXELS, "Skip (and record) images of more pixels than this, read from the "
           "file's header before decoding.", minimum=1, maximum=PILLOW_MAX_PIXELS, group="data"),
    Option("allow_outside_paths", bool, False, "Let a CSV/JSON list or a COCO file name images outside its own "
           "folder (../, absolute paths, links out of it).", tasks=frozenset({"classification", "detection"}),
           group="data"),
)


# --- Background and cue perturbations (visionstress.foreground, perturbations/background.py, cue.py) ----------
# Object masks: where each task finds them, and how the background swaps use them.

def _background_classes(value: str) -> None:
    from visionstress.foreground import parse_background_classes  # checks the syntax; class count checked on load

    parse_background_classes(value)


register_options(
    Option("masks", Path, None, "Classification: a folder of object masks for the background and cue perturbations, "
           "one PNG per image with the image's stem (non-zero = object; class sub-folders allowed), needed only when "
           "the suite has them. Segmentation: the folder of class-index masks (then --data is the images folder).",
           tasks=frozenset({"classification", "segmentation"}), group="data"),
    Option("background_classes", str, "0", "Segmentation: comma-separated class indices that are background for the "
           "background and cue perturbations (every other class is the object; the ignore index never is).",
           tasks=frozenset({"segmentation"}), check=_background_classes, group="data"),
    Option("mask_dilation", int, 0, "Grow object masks by this many pixels before background swaps: a halo of the "
           "object's own surroundings travels with it (0: the mask as given).", minimum=0, maximum=256, group="run"),
    Option("foreground_cache", Path, None, "Detection: where GrabCut object masks of box-only annotations are cached "
           "(default ~/.cache/visionstress/grabcut).", tasks=frozenset({"detection"}), group="data"),
)


# --- Preprocessing skew on a run (visionstress.skew; `visionstress skew` runs it alone) ---------------------------
_SKEWED = frozenset({"classification", "segmentation", "detection"})

register_options(
    Option("skew", bool, False, "Also score the model under the ways serving preprocessing differs from its declared "
           "one (decoder, resize backend, interpolation, crop, channel order, normalisation, JPEG, EXIF) and add the "
           "skew section to the scorecard and report.", tasks=_SKEWED, group="run"),
    Option("skew_knobs", str, None, "With --skew: comma-separated knobs of the catalogue (default: all).",
           tasks=_SKEWED, group="run"),
    Option("skew_cells", Path, None, "With --skew: a YAML list of cells knob=value[,knob=value] instead of the "
           "catalogue.", tasks=_SKEWED, group="run"),
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

