"""The skew loop: every image read once, decoded once per decoder, every cell computed from memory.

Loader workers read each file's bytes once, decode them with each library the cells need (once per
decoder; per EXIF setting only where the library takes orientation as a decode flag), re-encode for
the JPEG cells, and produce each distinct set of uint8 model pixels once (cells that differ only in
channel order or normalisation share them). The main process moves those to the device once per batch
and runs every cell on them: channel order and normalisation on the device, then the model.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from visionstress.allocator import keep_large_blocks
from visionstress.comparison.statistics import holm
from visionstress.images import ImageReadError
from visionstress.skew.cells import (Cell, Matrix, Recipe, SkewError, build_matrix, default_cells, parse_cell,
                                     parse_knobs, read_cells_file, reference_knobs)
from visionstress.skew.decode import decode, reencode_jpeg
from visionstress.skew.parity import (ParityCheck, ParityResult, call_serving, check_serving_model_shape,
                                      serving_function)
from visionstress.skew.preprocess import model_input
from visionstress.skew.tasks import SkewTask, get_skew_task

REFERENCE = "reference"


@dataclass
class SkewResult:
    """A skew run: one row per cell (the reference first), why cells were left out, the serving parity
    (when a serving path was given), per-image predictions per cell, and timing. `section()` is the
    scorecard's `skew` entry."""

    task: str
    metric: str
    test: str
    interval: str
    alpha: float
    reference: Recipe
    rows: list[dict[str, Any]]
    notes: list[str]
    parity: ParityResult | None
    clean_row: dict[str, Any]  # the reference as a scorecard results row (the clean pass of `visionstress run`)
    paths: list[str]  # the scored images, in sample-id order
    records: dict[str, dict[str, np.ndarray]]  # cell name -> per-image columns, in `paths` order
    skipped: list[Any]
    timing: dict[str, Any]
    out_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what the writer records about model and data
    resamples: int = 0  # bootstrap resamples behind the intervals and bootstrap p-values
    smallest_p: float | None = None  # the task's test cannot go below it with these resamples

    def row(self, cell: str) -> dict[str, Any]:
        for row in self.rows:
            if row["cell"] == cell or row.get("label") == cell:
                return row
        raise KeyError(f"no skew row {cell!r}; rows: {', '.join(r['cell'] for r in self.rows)}")

    def section(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.metric, "alpha": self.alpha,
                "test": f"{self.test}, Holm-adjusted over the cells", "interval": self.interval,
                "reference": self.reference.to_dict(), "images": len(self.paths), "rows": self.rows,
                "summary": _summary(self.rows, self.metric, self.alpha, self.test, len(self.paths),
                                    self.resamples, self.smallest_p),
                "notes": self.notes,
                "parity": None if self.parity is None else self.parity.to_dict(), "timing": self.timing}


# --- the library entry points -----------------------------------------------------------------------------

def run_skew(loaded: Any, config: Any, samples: Sequence[Any], class_names: Sequence[str], *,
             task: str = "classification", ignore_index: int = 255, task_settings: dict[str, Any] | None = None,
             knobs: str | Sequence[str] | None = None,
             cells: Sequence[Cell | str] | None = None, serving: str | Callable[[str], Any] | None = None,
             serving_model: Any = None, min_agreement: float = 1.0, trust_model: bool = False,
             device: str | torch.device = "cpu", amp: bool = False, batch_size: int = 64, workers: int = 2,
             bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05, strict: bool = False,
             progress: Callable[[int, int], None] | None = None) -> SkewResult:
    """The skew matrix (and serving parity) of an already-loaded model on already-listed samples.

    `loaded` is a `LoadedModel` (or an `nn.Module`), `config` its resolved `DataConfig` (the reference
    cell), `class_names` the model's classes. Classification samples have `.path` and `.label` (a
    model index); segmentation samples `.path` and `.mask_path` (class-index masks, `ignore_index`
    not scored); detection samples are `AnnotatedImage`s (`detection_samples(dataset)`) and
    `task_settings` holds the dataset's `categories` (and optionally `canvas`, `label_map`, `postprocess`,
    `score_threshold`, as `visionstress run --task detection` takes them). `knobs` picks the catalogue's
    knobs (None: the task's catalogue with the named combinations; "none": only parity); `cells`
    replaces that with explicit cells (`knob=value[,...]` strings or `Cell`s). `serving` is a function
    path -> model input `[C, H, W]` (or "package.module:function"); `serving_model` an exported model
    (a path such as model.onnx, or a LoadedModel) compared with `loaded` (classification). Everything is
    checked before the first image is read: cells, the model on every fixed input size, the serving path
    on the first image.
    """
    keep_large_blocks()
    settings = {"num_classes": len(class_names), "ignore_index": ignore_index} if task == "segmentation" else {}
    settings |= task_settings or {}
    skew_task = get_skew_task(task, **settings)
    device = torch.device(device)
    _check_numbers(batch_size, workers, bootstrap, alpha, min_agreement)
    if not samples:
        raise SkewError("no images to score")
    reference = skew_task.reference(config)
    if cells is not None:
        asked = [c if isinstance(c, Cell) else parse_cell(c, "--skew-cells") for c in cells]
    else:
        asked = default_cells(parse_knobs(knobs, skew_task.knobs, skew_task.catalogue), reference, skew_task.values)
    matrix = build_matrix(reference, asked, skew_task.knobs, skew_task.canonical)
    num_classes = len(class_names)
    adapters = {reference.input_size: skew_task.adapter(loaded, reference.input_size, device, amp, num_classes)}
    matrix = _check_input_sizes(matrix, skew_task, loaded, adapters, device, amp, num_classes,
                                strict=cells is not None)
    parity = None
    if serving is not None or serving_model is not None:
        if task != "classification":
            raise SkewError("--serving and --serving-model check classification models so far")
        parity = _Parity.prepare(serving, serving_model, trust_model, reference, skew_task, str(samples[0].path),
                                 device, amp, num_classes, list(class_names), min_agreement)
    return _loop(skew_task, matrix, adapters, parity, samples, list(class_names), device=device,
                 batch_size=batch_size, workers=workers, bootstrap=bootstrap, seed=seed, alpha=alpha, strict=strict,
                 progress=progress)


def skew(model: str | None = None, data: str | Path | None = None, *, task: str = "classification",
         weights: str | Path | None = None, trust_model: bool = False, num_classes: int | None = None,
         data_config: str | Path | None = None, data_config_overrides: dict[str, Any] | None = None,
         class_names: str | Path | None = None, images: str | Path | None = None, masks: str | Path | None = None,
         ignore_index: int = 255, canvas: tuple[int, int] | None = None, label_map: str | None = None,
         knobs: str | Sequence[str] | None = None,
         cells: Sequence[Cell | str] | None = None, cells_file: str | Path | None = None,
         serving: str | Callable[[str], Any] | None = None, serving_model: str | Path | None = None,
         min_agreement: float = 1.0, device: str | torch.device | None = None, batch_size: int = 64,
         workers: int = 2, amp: bool = False, limit: int | None = None, seed: int = 0, out: str | Path | None = None,
         strict: bool = False, bootstrap: int = 1000, alpha: float = 0.05,
         progress: Callable[[int, int], None] | None = None) -> SkewResult:
    """`visionstress skew`: load the model and data as `visionstress run` does, run the skew matrix (and
    serving parity), write scorecard.json, summary.md, report.html and skew_records.parquet to `out`
    (default reports/<name>-skew), and return the result. Neither model nor data: the bundled demo.
    Segmentation data is given as for `visionstress run --task segmentation` (`images`, `masks`,
    `class_names`, `ignore_index`); detection data as for `visionstress run --task detection` (a COCO
    instances JSON, `images`, `canvas` (height, width) to letterbox into, `label_map`)."""
    from visionstress.demo import demo_arguments
    from visionstress.engine import default_device

    name = None
    if model is None and data is None:
        demo = demo_arguments(task)
        model, weights, data, name = demo["model"], demo["weights"], demo["data"], f"{demo['name']}-skew"
        if task == "segmentation":  # the classification demo's masks are object masks, not a task input here
            masks, class_names = demo.get("masks", masks), demo.get("class_names", class_names)
    elif model is None or data is None:
        raise SkewError("give both --model and --data, or neither to use the bundled demo")
    if limit is not None and limit < 1:
        raise SkewError(f"--limit must be at least 1, got {limit}")
    if cells_file is not None:
        if cells is not None:
            raise SkewError("give --skew-cells FILE or cells, not both")
        cells = read_cells_file(cells_file)
    if cells is not None and knobs is not None:
        raise SkewError("--skew-knobs selects catalogue cells and --skew-cells defines them: give one of them")
    settings = None
    root = Path(data) if Path(data).is_dir() else Path(data).parent
    if (canvas is not None or label_map is not None) and task != "detection":
        raise SkewError("--canvas and --label-map apply to --task detection")
    if task == "detection":
        if masks is not None or class_names is not None:
            raise SkewError("--masks and --class-names do not apply to --task detection (the COCO file names the "
                            "categories; --label-map matches the model's labels to them)")
        loaded, config, config_source, samples, names, dataset_facts, settings = _load_detection(
            str(model), Path(data), weights, trust_model, num_classes, data_config, data_config_overrides or {},
            images, canvas, label_map, limit)
        root = Path(dataset_facts.pop("root"))
    elif task == "segmentation":
        loaded, config, config_source, samples, names, dataset_facts = _load_segmentation(
            str(model), Path(data), weights, trust_model, num_classes, data_config, data_config_overrides or {},
            class_names, images, masks, ignore_index, limit)
        ignore_index = dataset_facts["ignore_index"]
    elif task == "classification":
        if images is not None or masks is not None:
            raise SkewError("--images and --masks apply to --task segmentation")
        loaded, config, config_source, samples, names = _load_classification(
            str(model), Path(data), weights, trust_model, num_classes, data_config, data_config_overrides or {},
            class_names, limit)
        from visionstress.datasets import dataset_fingerprint

        dataset_facts = {"fingerprint": dataset_fingerprint(samples, data)}
    else:
        get_skew_task(task)  # the error that lists the tasks
    out_dir = Path(out) if out is not None else Path("reports") / (name or _report_name(str(model), Path(data)))
    result = run_skew(loaded, config, samples, names, task=task, ignore_index=ignore_index, task_settings=settings,
                      knobs=knobs, cells=cells,
                      serving=serving, serving_model=serving_model, min_agreement=min_agreement, trust_model=trust_model,
                      device=device or default_device(), amp=amp, batch_size=batch_size, workers=workers,
                      bootstrap=bootstrap, seed=seed, alpha=alpha, strict=strict, progress=progress)
    from visionstress.skew.outputs import write_skew

    result.extra = {  # file names, not machine paths: the scorecard may be committed or posted
        "model": {"spec": str(model) if "/" not in str(model) else Path(model).name,
                  "path": None if loaded.path is None else Path(loaded.path).name, "sha256": loaded.sha256,
                  "format": loaded.format, "weights": None if weights is None else Path(weights).name},
        "root": root,
        "dataset": {"path": Path(data).name, **dataset_facts, "num_samples": len(result.paths),
                    "num_listed": len(samples), "num_classes": len(names), "class_names": list(names)},
        "data_config": {**({} if config is None else config.to_dict()), "source": config_source,
                        **_settings_facts(settings)},
        "seed": seed,
        "device": str(device or default_device()),
    }
    write_skew(result, out_dir)
    result.out_dir = out_dir
    return result


def check_serving_parity(model: str | None = None, data: str | Path | None = None, *,
                         serving: str | Callable[[str], Any] | None = None, serving_model: str | Path | None = None,
                         min_agreement: float = 1.0, weights: str | Path | None = None, trust_model: bool = False,
                         num_classes: int | None = None, data_config: str | Path | None = None,
                         data_config_overrides: dict[str, Any] | None = None, class_names: str | Path | None = None,
                         device: str | torch.device | None = None, batch_size: int = 64, workers: int = 0,
                         limit: int | None = None, strict: bool = False) -> ParityResult:
    """Serving parity alone (no matrix, no files): `serving` (a function image path -> model input
    `[C, H, W]`, or "package.module:function") and/or `serving_model` (e.g. model.onnx) against the
    model's declared preprocessing and the model itself. The result's `passed` says whether agreement is
    at least `min_agreement`; its `message` names the disagreeing image files (the pytest assertion)."""
    from visionstress.demo import demo_arguments
    from visionstress.engine import default_device

    if serving is None and serving_model is None:
        raise SkewError("check_serving_parity: give serving (a function or package.module:function) and/or "
                        "serving_model (an exported model file)")
    if model is None and data is None:
        demo = demo_arguments("classification")
        model, weights, data = demo["model"], demo["weights"], demo["data"]
    elif model is None or data is None:
        raise SkewError("give both model and data, or neither to use the bundled demo")
    loaded, config, _, samples, names = _load_classification(
        str(model), Path(data), weights, trust_model, num_classes, data_config, data_config_overrides or {},
        class_names, limit)
    result = run_skew(loaded, config, samples, names, knobs="none", serving=serving, serving_model=serving_model,
                      min_agreement=min_agreement, trust_model=trust_model, device=device or default_device(),
                      batch_size=batch_size, workers=workers, bootstrap=0, strict=strict)
    assert result.parity is not None
    return result.parity


def cell_input(path: str | Path, cell: Cell | str | None, config: Any, task: str = "classification",
               canvas: tuple[int, int] | None = None) -> torch.Tensor:
    """What the model is fed for one image file under `cell` (None: the reference), float `[3, H, W]`:
    the loop's own decoding, pixels and normalisation, for one image. Shows what a cell does. `canvas`:
    detection's `--canvas` (the reference letterboxes into it)."""
    settings: dict[str, Any] = {"segmentation": {"num_classes": 1}, "detection": {
        "categories": [{"id": 1, "name": "object"}], "canvas": canvas}}.get(task, {})
    skew_task = get_skew_task(task, **settings)
    reference = skew_task.reference(config)
    recipe = reference
    if cell is not None:
        cell = cell if isinstance(cell, Cell) else parse_cell(cell)
        matrix = build_matrix(reference, [cell], skew_task.knobs, skew_task.canonical)
        recipe = matrix.cells[0][1] if matrix.cells else reference
    item = _SkewImages([_File(str(path))], [recipe], recipe, skew_task, targets=False)[0]
    if not isinstance(item, tuple):
        raise ImageReadError(f"{item.path}: {item.reason}")
    return model_input(item[1][recipe.pixels][None], recipe)[0]


@dataclass(frozen=True)
class _File:
    path: str


@dataclass(frozen=True)
class _Masked:
    """A segmentation sample as the skew loop reads it: the image and its mask, absolute paths."""

    path: str
    mask_path: str


def _load_classification(model: str, data: Path, weights: Any, trust_model: bool, num_classes: int | None,
                         data_config: Any, overrides: dict[str, Any], class_names: Any, limit: int | None):
    """The model, its DataConfig, the samples and the class names, as `visionstress run` loads them."""
    from visionstress.datasets import load_classification_samples, read_class_names
    from visionstress.models import load_model, resolve_data_config

    loaded = load_model(model, weights=None if weights is None else str(weights), trust_model=trust_model,
                        num_classes=num_classes)
    config, source = resolve_data_config(loaded.data_config, None if data_config is None else str(data_config),
                                         overrides)
    names = read_class_names(class_names) if class_names is not None else None
    samples, class_list = load_classification_samples(data, names)
    samples = samples[:limit] if limit is not None else samples
    width = loaded.num_classes
    if width is None:
        from visionstress.models import ClassifierAdapter

        width = ClassifierAdapter(loaded, config).num_classes
    if names is None and width > len(class_list) and class_list == [str(i) for i in range(len(class_list))]:
        class_list = [str(i) for i in range(width)]
    if width != len(class_list):
        raise SkewError(f"{model}: the model outputs {width} classes but the dataset has {len(class_list)}; pass "
                        f"--class-names with the model's {width} class names in index order")
    return loaded, config, source, samples, class_list


def _load_segmentation(model: str, data: Path, weights: Any, trust_model: bool, num_classes: int | None,
                       data_config: Any, overrides: dict[str, Any], class_names: Any, images: Any, masks: Any,
                       ignore_index: int, limit: int | None):
    """The model, its DataConfig, the image/mask pairs, the class names and the dataset's facts, as
    `visionstress run --task segmentation` loads them."""
    from visionstress.datasets import load_segmentation_dataset
    from visionstress.models import load_model, resolve_data_config
    from visionstress.tasks.segmentation import segmentation_fingerprint

    if masks is not None:  # --data is then the images folder
        dataset = load_segmentation_dataset(images=images or data, masks=masks, class_names=class_names,
                                            ignore_index=ignore_index)
    else:
        dataset = load_segmentation_dataset(data, images=images, class_names=class_names, ignore_index=ignore_index)
    if limit is not None:
        dataset.samples = dataset.samples[:limit]
    names = list(dataset.class_names)
    loaded = load_model(model, weights=None if weights is None else str(weights), trust_model=trust_model,
                        num_classes=num_classes, task="segmentation", dataset_classes=len(names))
    config, source = resolve_data_config(loaded.data_config, None if data_config is None else str(data_config),
                                         overrides)
    samples = [_Masked(str(Path(dataset.images_root) / s.image_path), str(Path(dataset.masks_root) / s.mask_path))
               for s in dataset.samples]
    facts = {"fingerprint": segmentation_fingerprint(dataset), "ignore_index": dataset.ignore_index}
    return loaded, config, source, samples, names, facts


def _load_detection(model: str, data: Path, weights: Any, trust_model: bool, num_classes: int | None,
                    data_config: Any, overrides: dict[str, Any], images: Any, canvas: Any, label_map: Any,
                    limit: int | None):
    """The model, its DataConfig (None: it normalises itself), the annotated images, the category names,
    the dataset's facts and the task settings, as `visionstress run --task detection` loads them."""
    from visionstress.datasets import load_coco_dataset
    from visionstress.models import load_model, resolve_data_config, resolve_label_map
    from visionstress.skew.tasks import detection_samples
    from visionstress.tasks.detection import _check_canvas, coco_fingerprint

    if canvas is not None:
        try:
            _check_canvas(canvas)
        except ValueError as exc:
            raise SkewError(f"--canvas {canvas!r}: {exc}") from None
    dataset = load_coco_dataset(data, images)
    if limit is not None:
        dataset.samples = dataset.samples[:limit]
    dataset.require_objects()
    loaded = load_model(model, weights=None if weights is None else str(weights), trust_model=trust_model,
                        num_classes=num_classes, task="detection")
    config, source = loaded.data_config, "the model" if loaded.data_config is not None else \
        "none: the model takes [0, 1] pixels and normalises itself"
    if data_config is not None or any(v is not None for v in overrides.values()):
        config, source = resolve_data_config(loaded.data_config, None if data_config is None else str(data_config),
                                             overrides)
    settings = {"categories": dataset.categories, "canvas": None if canvas is None else tuple(canvas),
                "label_map": resolve_label_map(label_map, dataset.categories, loaded.categories)}
    names = [c["name"] for c in dataset.categories]
    facts = {"fingerprint": coco_fingerprint(dataset), "root": dataset.images_root,
             "category_ids": [int(c["id"]) for c in dataset.categories]}
    return loaded, config, source, detection_samples(dataset), names, facts, settings


def _settings_facts(settings: dict[str, Any] | None) -> dict[str, Any]:
    """What the scorecard's data_config records of a detection run's settings."""
    if not settings:
        return {}
    mapping = settings.get("label_map")
    return {"canvas": None if settings.get("canvas") is None else list(settings["canvas"]),
            "label_map": None if mapping is None else {str(k): v for k, v in mapping.items()}}


def _report_name(model: str, data: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(model.split(':')[-1]).stem}-{data.name}").strip("-")
    return f"{stem}-skew-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _check_numbers(batch_size: int, workers: int, bootstrap: int, alpha: float, min_agreement: float) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SkewError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise SkewError(f"--workers must be 0 or more, got {workers!r}")
    if bootstrap < 0:
        raise SkewError(f"--bootstrap must be 0 (no intervals) or more resamples, got {bootstrap}")
    if not 0 < alpha < 1:
        raise SkewError(f"--alpha must be in (0, 1), got {alpha}")
    if not 0 <= min_agreement <= 1:
        raise SkewError(f"--min-agreement must be in [0, 1], got {min_agreement}")


def _check_input_sizes(matrix: Matrix, task: SkewTask, loaded: Any, adapters: dict, device: torch.device, amp: bool,
                       num_classes: int, strict: bool) -> Matrix:
    """Run the model once on a blank image of every input size the cells use. A size it refuses is an
    error when the user listed the cell (`strict`), else the catalogue's cells with it are left out with
    a note: a model with a fixed input size is common, and the other knobs still apply to it."""
    from visionstress.models import ModelOutputError

    sizes = [matrix.reference.input_size] + [r.input_size for _, r in matrix.cells]
    refused: dict[tuple[int, int], str] = {}
    for size in dict.fromkeys(sizes):
        if size is None:  # images at their own size: nothing fixed to check
            continue
        adapter = adapters.get(size) or task.adapter(loaded, size, device, amp, num_classes)
        try:
            adapter.predict(torch.zeros((1, 3, *size), device=device))
        except (ModelOutputError, ValueError) as exc:
            if size == matrix.reference.input_size:
                raise SkewError(f"the model fails on its own input size {size[0]}x{size[1]}: {exc}") from None
            refused[size] = str(exc)
            continue
        adapters[size] = adapter
    if not refused:
        return matrix
    notes = list(matrix.notes)
    kept = []
    for cell, recipe in matrix.cells:
        if recipe.input_size not in refused:
            kept.append((cell, recipe))
            continue
        size = f"{recipe.input_size[0]}x{recipe.input_size[1]}"
        if strict:
            raise SkewError(f"cell {cell}: the model does not accept {size} inputs ({refused[recipe.input_size]})")
        notes.append(f"{cell} left out: the model does not accept {size} inputs")
    return Matrix(matrix.reference, kept, notes)


# --- serving parity --------------------------------------------------------------------------------------

@dataclass
class _Parity:
    """The serving path, checked: a function (or None: the reference input) feeding a model (or None:
    the reference model)."""

    fn: Callable[[str], Any] | None
    fn_name: str | None
    adapter: Any
    fixed_batch: int | None
    shape: tuple[int, int, int]
    check: ParityCheck

    @classmethod
    def prepare(cls, serving: Any, serving_model: Any, trust_model: bool, reference: Recipe, task: SkewTask,
                first_path: str, device: torch.device, amp: bool, num_classes: int, class_names: list[str],
                min_agreement: float) -> _Parity:
        from visionstress.models import LoadedModel, ModelLoadError, ModelOutputError, load_model

        shape = (3, *reference.input_size)
        fn = fn_name = None
        if serving is not None:
            fn, fn_name = serving_function(serving)
            shape = tuple(call_serving(fn, fn_name, first_path, shape).shape)
        adapter, fixed, model_name = None, None, None
        if serving_model is not None:
            if isinstance(serving_model, (str, Path)):
                try:
                    serving_model = load_model(str(serving_model), trust_model=trust_model)
                except ModelLoadError as exc:
                    raise SkewError(f"--serving-model: {exc}") from None
            model_name = serving_model.spec if isinstance(serving_model, LoadedModel) else type(serving_model).__name__
            fixed = check_serving_model_shape(serving_model, shape) if isinstance(serving_model, LoadedModel) else None
            adapter = task.adapter(serving_model, shape[1:], device, amp, num_classes)
            try:
                adapter.predict(torch.zeros((fixed or 1, *shape), device=device))
            except (ModelOutputError, ValueError) as exc:
                raise SkewError(f"--serving-model {model_name}: it fails on a {'x'.join(map(str, shape))} input "
                                f"({exc})") from None
        label = " + ".join(x for x in (fn_name, model_name) if x)
        return cls(fn, fn_name, adapter, fixed, shape, ParityCheck(label, class_names, min_agreement))

    def inputs(self, paths: list[str], reference: torch.Tensor) -> torch.Tensor:
        if self.fn is None:
            return reference
        return torch.stack([call_serving(self.fn, self.fn_name, p, self.shape) for p in paths]).to(reference.device)

    def predict(self, task: SkewTask, fallback: Any, inputs: torch.Tensor) -> list[torch.Tensor]:
        adapter = self.adapter or fallback
        if self.fixed_batch is None:
            return task.predict(adapter, inputs, [None] * len(inputs), None)
        outs: list[torch.Tensor] = []
        for start in range(0, len(inputs), self.fixed_batch):
            chunk = inputs[start:start + self.fixed_batch]
            pad = self.fixed_batch - len(chunk)
            if pad:
                chunk = torch.cat([chunk, chunk[-1:].expand(pad, *chunk.shape[1:])])
            outs += task.predict(adapter, chunk, [None] * len(chunk), None)[: self.fixed_batch - pad]
        return outs


# --- decoding and pixels, in the loader workers -------------------------------------------------------------

class _SkewImages(Dataset):
    """Item i: `(i, {pixels key: uint8 tensor, or the ImageReadError of a library that cannot read the
    file}, target)`; a SkippedFile when the reference decoder cannot read the file (the image is left
    out, as `visionstress run` leaves it out); a DatasetError (returned, so that the main process raises
    it as the user's message) for a target that cannot be right."""

    def __init__(self, samples: Sequence[Any], recipes: Sequence[Recipe], reference: Recipe, task: SkewTask,
                 targets: bool = True) -> None:
        self.samples = list(samples)
        self.paths = [str(s.path) for s in self.samples]
        self.by_pixels = {r.pixels: r for r in recipes}
        self.sources = sorted({r.source for r in recipes}, key=str)
        self.reference = reference
        self.task = task
        self.targets = targets

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        from visionstress.datasets import DatasetError, SkippedFile

        path = self.paths[index]
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return SkippedFile(path, f"cannot read the file ({exc.strerror or exc})")
        decoded = _decode_sources(data, self.sources, path)
        image = decoded[self.reference.source]
        if isinstance(image, ImageReadError):
            return SkippedFile(path, str(image).removeprefix(f"{path}: "))
        try:
            target = self.task.target(self.samples[index], image) if self.targets else None
        except ImageReadError as exc:
            return SkippedFile(path, str(exc))
        except DatasetError as exc:
            return exc
        pixels = {}
        for key, recipe in self.by_pixels.items():
            source = decoded[recipe.source]
            pixels[key] = source if isinstance(source, ImageReadError) else self.task.pixels(source, recipe)
        return index, pixels, target


def _decode_sources(data: bytes, sources: Sequence[tuple[str, bool, int | None]], name: str) -> dict[Any, Any]:
    """Each (decoder, exif, jpeg) source of one file: each decoder called once on the file's bytes (per
    EXIF setting where that is a decode flag); JPEG sources re-encode their decoded image and decode that."""
    modes: dict[str, list[bool]] = {}
    for decoder, exif, _ in sources:
        if exif not in modes.setdefault(decoder, []):
            modes[decoder].append(exif)
    decoded: dict[Any, Any] = {}
    for decoder, exifs in modes.items():
        for exif, image in decode(data, decoder, tuple(exifs), name).items():
            decoded[(decoder, exif, None)] = image
    for decoder, exif, quality in sources:
        if quality is None:
            continue
        base = decoded[(decoder, exif, None)]
        decoded[(decoder, exif, quality)] = base if isinstance(base, ImageReadError) else \
            decode(reencode_jpeg(base, quality), decoder, (exif,), name)[exif]
    return decoded


def _as_list(items: list[Any]) -> list[Any]:
    return items


# --- the loop ----------------------------------------------------------------------------------------------

@dataclass
class _Accumulator:
    scores: list[np.ndarray] = field(default_factory=list)
    agreement: list[np.ndarray] = field(default_factory=list)
    columns: list[dict[str, np.ndarray]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)


def _loop(task: SkewTask, matrix: Matrix, adapters: dict, parity: _Parity | None, samples: Sequence[Any],
          class_names: list[str], *, device: torch.device, batch_size: int, workers: int, bootstrap: int, seed: int,
          alpha: float, strict: bool, progress: Callable[[int, int], None] | None) -> SkewResult:
    from visionstress.datasets import DatasetError, SkippedFile

    cells: list[tuple[Cell | None, Recipe]] = [(None, matrix.reference), *matrix.cells]
    dataset = _SkewImages(samples, [r for _, r in cells], matrix.reference, task)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_as_list)
    accumulators = [_Accumulator() for _ in cells]
    evaluator = task.reference_evaluator(class_names, bootstrap, seed)
    skipped: list[Any] = []
    paths: list[str] = []
    total = len(samples) * (len(cells) + (parity is not None))
    done = 0
    timing = {"data_seconds": 0.0, "model_seconds": 0.0}
    start = time.perf_counter()
    batches = iter(loader)
    while True:
        t0 = time.perf_counter()
        items = next(batches, None)
        if items is None:
            break
        good = []
        for item in items:
            if isinstance(item, DatasetError):
                raise item
            if isinstance(item, SkippedFile):
                if strict:
                    raise DatasetError(f"{item.path}: {item.reason}")
                skipped.append(item)
            else:
                good.append(item)
        if not good:
            continue
        ids = [index for index, _, _ in good]
        targets = [target for _, _, target in good]
        batch_paths = [dataset.paths[i] for i in ids]
        paths += batch_paths
        timing["data_seconds"] += time.perf_counter() - t0
        reference: list[Any] = []
        for (cell, recipe), acc in zip(cells, accumulators):
            pixels = [item_pixels[recipe.pixels] for _, item_pixels, _ in good]
            t1 = time.perf_counter()
            predictions, inputs = _predict(task, adapters[recipe.input_size], pixels, targets, recipe, device)
            timing["model_seconds"] += time.perf_counter() - t1
            if cell is None:
                reference, reference_inputs = predictions, inputs
                evaluator.update(ids, targets, predictions)
            acc.scores.append(task.score(predictions, targets))
            acc.agreement.append(task.agreement(reference, predictions, targets))
            acc.columns.append(task.columns(predictions, targets))
            acc.unreadable += [{"path": batch_paths[i], "reason": str(p).removeprefix(f"{batch_paths[i]}: ")}
                               for i, p in enumerate(pixels) if not isinstance(p, torch.Tensor)]
            done += len(ids)
            if progress is not None:
                progress(done, total)
        if parity is not None:
            t1 = time.perf_counter()
            served = parity.predict(task, adapters[matrix.reference.input_size],
                                    parity.inputs(batch_paths, reference_inputs))
            timing["model_seconds"] += time.perf_counter() - t1
            parity.check.update(batch_paths, torch.stack(reference), torch.stack(served), np.asarray(targets))
            done += len(ids)
            if progress is not None:
                progress(done, total)
    if not paths:
        raise SkewError(f"none of the {len(samples)} images could be read (first: {skipped[0].path}: "
                        f"{skipped[0].reason})" if skipped else "no images to score")
    timing["total_seconds"] = time.perf_counter() - start
    timing.update(images=len(paths), cells=len(cells), predictions=len(paths) * len(cells),
                  predictions_per_second=len(paths) * len(cells) / max(timing["total_seconds"], 1e-9))
    rows, records = _rows(task, cells, accumulators, bootstrap, seed, alpha)
    return SkewResult(task=task.name, metric=task.metric, test=task.test, interval=task.interval, alpha=alpha,
                      reference=matrix.reference, rows=rows, notes=list(matrix.notes),
                      parity=None if parity is None else parity.check.result(), clean_row=evaluator.row(),
                      paths=paths, records=records, skipped=skipped,
                      timing={k: round(v, 4) if isinstance(v, float) else v for k, v in timing.items()},
                      resamples=bootstrap, smallest_p=task.smallest_p(bootstrap))


def _predict(task: SkewTask, adapter: Any, pixels: list[Any], targets: list[Any], recipe: Recipe,
             device: torch.device) -> tuple[list[Any], torch.Tensor | None]:
    """Per-image predictions of one cell on one batch: images of one shape go to the device and the model
    together (channel order and normalisation applied there); an image the cell's decoder could not read
    gets None. Also returns the model inputs when the whole batch was one shape (what parity reuses)."""
    predictions: list[Any] = [None] * len(pixels)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(pixels):
        if isinstance(p, torch.Tensor):
            groups.setdefault(tuple(p.shape), []).append(i)
    inputs = None
    for index in groups.values():
        inputs = model_input(torch.stack([pixels[i] for i in index]).to(device), recipe)
        for i, prediction in zip(index, task.predict(adapter, inputs, [targets[i] for i in index], recipe)):
            predictions[i] = prediction
    whole = len(groups) == 1 and len(next(iter(groups.values()))) == len(pixels)
    return predictions, inputs if whole else None


def _rows(task: SkewTask, cells: list[tuple[Cell | None, Recipe]], accumulators: list[_Accumulator], bootstrap: int,
          seed: int, alpha: float) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """One JSON-ready row per cell (the reference first), p-values Holm-adjusted over the cells."""
    reference = np.concatenate(accumulators[0].scores)
    rows, records = [], {}
    for (cell, recipe), acc in zip(cells, accumulators):
        scores, agreement = np.concatenate(acc.scores), np.concatenate(acc.agreement)
        stats = task.statistics(reference, scores, agreement, bootstrap=bootstrap, seed=seed, alpha=alpha)
        name = REFERENCE if cell is None else cell.name
        row = {"cell": name, "label": None if cell is None else cell.label,
               "group": REFERENCE if cell is None else cell.group,
               "knobs": reference_knobs(recipe, task.knobs) if cell is None else dict(cell.knobs),
               "recipe": recipe.to_dict(),
               "metrics": stats.metrics, "ci": stats.ci, "delta": stats.delta, "delta_ci": stats.delta_ci,
               "agreement": float(agreement.mean()) if stats.agreement is None else stats.agreement,
               "test": None if cell is None else stats.test,
               "p_value": None if cell is None else stats.p_value, "p_adjusted": None, "significant": False,
               **({} if cell is None else stats.details), "unreadable": acc.unreadable}
        rows.append(row)
        columns = {k: np.concatenate([c[k] for c in acc.columns]) for k in acc.columns[0]}
        records[name] = {**columns, "agreement": agreement}
    tested = [r for r in rows[1:] if r["p_value"] is not None]
    for row, adjusted in zip(tested, holm([r["p_value"] for r in tested])):
        row["p_adjusted"] = adjusted
        row["significant"] = bool(adjusted < alpha)
    return rows, records


def _summary(rows: list[dict[str, Any]], metric: str, alpha: float, test: str, images: int, resamples: int = 0,
             smallest_p: float | None = None) -> dict[str, Any]:
    """The knobs ranked by their worst cell's delta, the cells whose change is significant, and what
    limits significance here (exact McNemar: how many images must change one way; a bootstrap whose p has a
    floor: too few resamples)."""
    worst: dict[str, dict[str, Any]] = {}
    for row in rows[1:]:
        group = row["group"]
        if group not in worst or row["delta"][metric] < worst[group]["delta"][metric]:
            worst[group] = row
    ranked = sorted(worst.items(), key=lambda kv: kv[1]["delta"][metric])
    significant = sorted((r for r in rows[1:] if r["significant"]), key=lambda r: r["delta"][metric])
    return {
        "knobs": [{"knob": group, "worst_cell": row["cell"], "label": row["label"], "delta": row["delta"][metric],
                   "p_adjusted": row["p_adjusted"], "significant": row["significant"]} for group, row in ranked],
        "significant": [r["cell"] for r in significant],
        "detectable": _detectable(rows, alpha, test, images, resamples, smallest_p),
    }


def _detectable(rows: list[dict[str, Any]], alpha: float, test: str, images: int, resamples: int = 0,
                smallest_p: float | None = None) -> dict[str, Any] | None:
    """The fewest images that must flip one way for a cell to be significant: the exact McNemar p-value of
    k one-way discordant images is 2 / 2**k, and Holm's first threshold is alpha / cells. A bootstrap
    p-value with a floor (`SkewTask.smallest_p`: segmentation's, 2 / (resamples + 1), every resampled
    difference on one side of 0) makes every cell insignificant whatever its change when the floor is at
    least alpha / cells: then the fewest resamples that would not. None otherwise."""
    cells = sum(1 for r in rows[1:] if r["p_value"] is not None)
    if cells == 0:
        return None
    if smallest_p is not None:
        if smallest_p >= alpha / cells:
            return {"resamples": resamples, "smallest_p": smallest_p, "cells": cells,
                    "resamples_needed": math.floor(2 * cells / alpha + 1e-9)}
        return None
    if not test.startswith("exact McNemar"):
        return None
    k = 1
    while 2.0 * 0.5 ** k >= alpha / cells:
        k += 1
    return {"images_changed": k, "images": images, "change": k / images if k <= images else None,
            "cells": cells}
