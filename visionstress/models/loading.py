"""Turn a `--model` spec (and optional `--weights`) into a runnable model, without running untrusted code.

A model file is code more often than users think: TorchScript and torch.export archives carry
programs, and a pickled `nn.Module` runs arbitrary Python when unpickled. Those are loaded only
when the caller says `trust_model=True` (`--trust-model`); weights travel as state dicts read with
`torch.load(weights_only=True)` or as safetensors, which cannot execute anything. Every file read is
hashed so the scorecard can say exactly which model produced it.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import inspect
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from visionstress.models.data_config import INTERPOLATIONS, DataConfig, DataConfigError

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_MODEL_SUFFIXES = (".pt2", ".pt", ".pth", ".ts", ".jit", ".onnx", ".safetensors", ".bin", ".ckpt")
_SPEC_FORMS = (
    "torchvision:NAME or timm:NAME (with --weights FILE), package.module:function, "
    "or a model file (.pt2, TorchScript .pt, .onnx)"
)
_OPT_IN = "pass --trust-model (trust_model=True) only if you trust where the file came from"


class ModelLoadError(ValueError):
    """The model cannot be loaded; the message names the spec or file and what to do."""


class UntrustedModelError(ModelLoadError):
    """The file would execute code when loaded and the caller has not opted in with `trust_model`."""


@dataclass
class LoadedModel:
    """A model ready for an adapter, with the identity the scorecard records.

    `module` is an `nn.Module` in eval mode (torch.export modules are fixed to the mode they were
    exported in) or, for ONNX, a callable from a float tensor to logits. `path`/`sha256` identify the
    file the parameters came from (the weights file, or the model file itself); `format` says how it
    was read: safetensors, state_dict, random-init, python (a factory without weights),
    torch.export, torchscript, pickle or onnx. `categories` are the names of the model's output
    indices when known (torchvision weights metadata when the head has the published size, or a
    factory's `categories` attribute); label maps match them to a dataset's categories by name.
    """

    module: nn.Module | Callable[[Tensor], Tensor]
    spec: str
    path: str | None
    sha256: str | None
    format: str
    data_config: DataConfig | None
    num_classes: int | None
    categories: list[str] | None = None


TASKS = ("classification", "detection", "segmentation")


def load_model(
    spec: str,
    weights: str | None = None,
    trust_model: bool = False,
    num_classes: int | None = None,
    task: str = "classification",
    *,
    dataset_classes: int | None = None,
) -> LoadedModel:
    """Load `spec`: `torchvision:NAME`, `timm:NAME`, `package.module:function`, or a model file path.

    `weights` (a state dict in .pth/.pt or .safetensors) applies to architectures and factories;
    `num_classes` is what the user asked for (--num-classes): it rebuilds the architecture's head for a
    fine-tuned checkpoint and is passed to a factory, which must then take it. `dataset_classes` is the
    class count the dataset implies: only a torchvision detector or segmenter built without weights uses
    it (as its width when the user gave none); a factory is called with the user's arguments alone, so
    `def build(): ...` works for every task. `task` picks where `torchvision:NAME` is looked up
    (torchvision.models, .detection or .segmentation); factories and model files load the same way for
    every task.
    """
    if task not in TASKS:
        raise ModelLoadError(f"{spec}: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    # Weights that are not loaded from a file (random init, a factory initialising itself) come from a fixed
    # seed, so a resumed run, every torchrun rank and a rerun score one and the same model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _load(spec.strip(), weights, trust_model, num_classes, task, dataset_classes)


def _load(spec: str, weights: str | None, trust_model: bool, num_classes: int | None, task: str,
          dataset_classes: int | None) -> LoadedModel:
    if spec.startswith("torchvision:"):
        if task != "classification":
            return _load_torchvision_dense(spec, task, weights, trust_model, num_classes, dataset_classes)
        return _load_torchvision(spec, weights, trust_model, num_classes)
    if spec.startswith("timm:"):
        if task != "classification":
            raise ModelLoadError(f"{spec}: timm models are classifiers; a {task} model needs torchvision: or a factory")
        return _load_timm(spec, weights, trust_model, num_classes)
    path = Path(spec).expanduser()
    if _FACTORY.match(spec) and not path.exists():
        return _load_factory(spec, weights, trust_model, num_classes)
    if path.suffix.lower() in _MODEL_SUFFIXES or path.exists() or os.sep in spec or "/" in spec:
        if weights is not None:
            raise ModelLoadError(
                f"{spec}: --weights applies to an architecture or a factory, not to a model file"
            )
        return _load_file(spec, path, trust_model, num_classes, task)
    raise ModelLoadError(f"{spec!r}: not a model spec; expected {_SPEC_FORMS}")


def model_state_digest(loaded: LoadedModel) -> str | None:
    """sha256 of what makes a model without a weights file what it is: its parameters and buffers, and for a
    factory the source file of its module (a changed forward). None for models that are not nn.Modules."""
    if not isinstance(loaded.module, nn.Module):
        return None
    digest = hashlib.sha256()
    for name, value in loaded.module.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    module = sys.modules.get(loaded.spec.partition(":")[0]) if _FACTORY.match(loaded.spec) else None
    source = getattr(module, "__file__", None)
    if source and Path(source).is_file():
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


# --- architectures -------------------------------------------------------------------------------


def _load_torchvision(spec: str, weights: str | None, trust: bool, num_classes: int | None) -> LoadedModel:
    import torchvision.models as tvm

    name = spec.split(":", 1)[1]
    classifiers = tvm.list_models(module=tvm)
    if name not in classifiers:
        for task, family in (("detection", tvm.detection), ("segmentation", tvm.segmentation)):
            if name in tvm.list_models(module=family):
                raise ModelLoadError(
                    f"{spec}: {name} is not an image classification model in torchvision but a {task} "
                    f"model; pass task={task!r} (--task {task})"
                )
        if name in tvm.list_models():
            raise ModelLoadError(f"{spec}: {name} is not an image classification model in torchvision")
        hint = _did_you_mean(name, classifiers)
        raise ModelLoadError(f"{spec}: unknown torchvision classification model {name!r}{hint}")
    default = tvm.get_model_weights(name).DEFAULT
    data_config = _torchvision_data_config(default.transforms)
    build = lambda n: tvm.get_model(name, weights=None, **({} if n is None else {"num_classes": n}))  # noqa: E731
    categories = list(default.meta["categories"])
    loaded = _finish_architecture(spec, build, weights, trust, data_config, num_classes,
                                  default_classes=len(categories))
    loaded.categories = categories if loaded.num_classes == len(categories) else None
    return loaded


# Each family's classification-head weight: its rows are (anchors per location) x (classes), so
# the class count of a checkpoint follows from the rows in the file and in a model of known width.
_DENSE_CLASS_HEADS = (
    "roi_heads.box_predictor.cls_score.weight",  # faster / mask R-CNN
    "head.classification_head.cls_logits.weight",  # RetinaNet, FCOS
    "head.classification_head.module_list.0.weight",  # SSD300
    "head.classification_head.module_list.0.1.weight",  # SSDlite
    "classifier.4.weight",  # DeepLabV3, FCN
    "classifier.low_classifier.weight",  # LR-ASPP
)


def _load_torchvision_dense(
    spec: str, task: str, weights: str | None, trust: bool, num_classes: int | None, dataset_classes: int | None
) -> LoadedModel:
    """A torchvision detector or segmenter, built with no pretrained weights (nothing is downloaded)
    and loaded from `weights`. The class count comes from the checkpoint's classification head, so a
    fine-tuned model needs no --num-classes; a segmentation checkpoint with `aux_classifier.*` keys
    gets the auxiliary head it was trained with. Without weights the head has `num_classes`, else
    `dataset_classes`, else the published width. Detectors normalise their own input (data_config
    None); segmenters get the mean/std of the weights' published transform."""
    import torchvision.models as tvm

    name = spec.split(":", 1)[1]
    family = tvm.detection if task == "detection" else tvm.segmentation
    names = [n for n in tvm.list_models(module=family) if not n.startswith("keypointrcnn")]
    if name not in names:
        if name.startswith("keypointrcnn"):
            raise ModelLoadError(f"{spec}: keypoint detectors are not supported; use a box detector")
        if name in tvm.list_models():
            raise ModelLoadError(f"{spec}: {name} is not a {task} model in torchvision")
        raise ModelLoadError(f"{spec}: unknown torchvision {task} model {name!r}{_did_you_mean(name, names)}")
    default = tvm.get_model_weights(name).DEFAULT
    categories = list(default.meta["categories"])
    data_config = None if task == "detection" else _segmentation_data_config(default.transforms)

    def build(n: int, aux: bool) -> nn.Module:
        kwargs = {"weights": None, "weights_backbone": None, "num_classes": n}
        if aux:
            kwargs["aux_loss"] = True
        try:
            return tvm.get_model(name, **kwargs)
        except Exception as exc:  # e.g. LR-ASPP refuses aux_loss
            raise ModelLoadError(f"{spec}: torchvision cannot build {name} ({_first_line(exc)})") from exc

    width = num_classes if num_classes is not None else len(categories)
    if weights is None:
        _warn_random_weights(spec)
        if num_classes is None and dataset_classes is not None:
            width = dataset_classes
        module, path, sha, fmt = build(width, False), None, None, "random-init"
    else:
        state, fmt, sha = _read_state_dict(Path(weights).expanduser(), trust)
        path = str(weights)
        aux = any(k.startswith("aux_classifier.") for k in state)
        with torch.device("meta"):  # only shapes are needed: nothing is allocated or initialised
            in_file = _dense_head_width(build(width, aux), state, width)
        if in_file is not None and in_file != width:
            if num_classes is not None:
                raise ModelLoadError(
                    f"{weights}: the checkpoint's classification head has {in_file} classes but "
                    f"num_classes={num_classes}; pass --num-classes {in_file} or leave it out"
                )
            width = in_file
        module = build(width, aux)
        _apply_state_dict(module, state, spec, path)
    known = categories if width == len(categories) else None  # the published names fit only the published head
    return LoadedModel(module.eval(), spec, path, sha, fmt, data_config, width, known)


def _dense_head_width(module: nn.Module, state: Mapping[str, Tensor], width: int) -> int | None:
    """The class count of `state`'s classification head, `module` having `width` classes; None when
    no known head key is in both or the shapes do not divide (then the strict load explains)."""
    own = module.state_dict()
    for key in _DENSE_CLASS_HEADS:
        if key in own and key in state:
            rows, file_rows = own[key].shape[0], state[key].shape[0]
            anchors = rows // width
            if rows % width or file_rows % anchors or own[key].shape[1:] != state[key].shape[1:]:
                return None
            return file_rows // anchors
    return None


def _segmentation_data_config(transforms: Any) -> DataConfig | None:
    """mean/std/interpolation of torchvision's `SemanticSegmentation` preset. Segmenters see full-resolution
    images and the adapter enforces no input size; `resize` (and the square `input_size`) record the
    shorter side the weights were evaluated at."""
    params = _preset_params(transforms)
    if params is None or not params.get("resize_size"):
        return None
    side = params["resize_size"]
    side = min(side) if isinstance(side, (list, tuple)) else int(side)
    interpolation = params.get("interpolation")
    return DataConfig(
        input_size=(side, side),
        resize=side,
        interpolation=getattr(interpolation, "value", interpolation or "bilinear"),
        mean=tuple(params["mean"]),
        std=tuple(params["std"]),
    )


def _torchvision_data_config(transforms: Any) -> DataConfig | None:
    """The eval transform torchvision's weights were published with (`ImageClassification` preset),
    read from the `functools.partial` in the weights enum, so nothing is downloaded."""
    params = _preset_params(transforms)
    if params is None or "crop_size" not in params or "resize_size" not in params:
        return None
    interpolation = params.get("interpolation")
    resize = params["resize_size"]
    return DataConfig(
        input_size=_pair(params["crop_size"]),
        resize=min(resize) if isinstance(resize, (list, tuple)) else int(resize),
        interpolation=getattr(interpolation, "value", interpolation or "bilinear"),
        mean=tuple(params["mean"]),
        std=tuple(params["std"]),
    )


def _preset_params(transforms: Any) -> dict[str, Any] | None:
    """The keyword arguments of a torchvision preset `functools.partial`, defaults included."""
    if not isinstance(transforms, functools.partial):
        return None
    params = {
        key: p.default
        for key, p in inspect.signature(transforms.func).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    params.update(transforms.keywords)
    return params


def _pair(size: int | list[int] | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(size, (list, tuple)):
        return (int(size[0]), int(size[-1]))
    return (int(size), int(size))


def _load_timm(spec: str, weights: str | None, trust: bool, num_classes: int | None) -> LoadedModel:
    name = spec.split(":", 1)[1]
    try:
        import timm
        from timm.data import resolve_model_data_config
    except ImportError:
        raise ModelLoadError(f"{spec}: timm is not installed; pip install timm") from None
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        module = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm raises RuntimeError("Unknown model ...")
        raise ModelLoadError(f"{spec}: timm cannot build {name!r} ({exc})") from exc
    data_config = _timm_data_config(spec, resolve_model_data_config(module))

    def build(n: int | None) -> nn.Module:
        if n is None or n == getattr(module, "num_classes", None):
            return module
        return timm.create_model(name, pretrained=False, num_classes=n)

    return _finish_architecture(spec, build, weights, trust, data_config, num_classes,
                                default_classes=getattr(module, "num_classes", None))


def _timm_data_config(spec: str, cfg: Mapping[str, Any]) -> DataConfig:
    """timm's pretrained_cfg as a DataConfig. timm's crop_pct (crop / resize) becomes `resize`; its
    'squash' and 'border' crop modes are approximated by the centre crop, and interpolations this
    harness does not implement (random, lanczos, ...) fall back to bicubic with a warning."""
    interpolation = str(cfg.get("interpolation", "bicubic"))
    if interpolation not in INTERPOLATIONS:
        warnings.warn(f"{spec}: timm interpolation {interpolation!r} is not supported; using bicubic", stacklevel=3)
        interpolation = "bicubic"
    mapping = {
        "input_size": list(cfg["input_size"]),
        "crop_pct": cfg.get("crop_pct", 0.875),
        "interpolation": interpolation,
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
    }
    try:
        return DataConfig.from_mapping(mapping, f"{spec} pretrained_cfg")
    except DataConfigError as exc:
        raise ModelLoadError(str(exc)) from exc


def _finish_architecture(
    spec: str,
    build: Callable[[int | None], nn.Module],
    weights: str | None,
    trust: bool,
    data_config: DataConfig | None,
    num_classes: int | None,
    default_classes: int | None = None,
) -> LoadedModel:
    """Build the architecture and load `weights`. Without an explicit `num_classes`, a fine-tuned
    checkpoint whose classifier head alone differs from the default (the common case) rebuilds the
    head at the checkpoint's width instead of failing."""
    module = build(num_classes)
    if weights is None:
        _warn_random_weights(spec)
        width = num_classes if num_classes is not None else default_classes
        return LoadedModel(module.eval(), spec, None, None, "random-init", data_config, width)
    state_dict, fmt, sha = _read_state_dict(Path(weights).expanduser(), trust)
    state_dict = _without_wrapper_prefix(state_dict, module.state_dict())
    head = _head_width_if_only_head_differs(module, state_dict) if num_classes is None else None
    if head is not None:
        module, num_classes = build(head), head
    _apply_state_dict(module, state_dict, spec, weights)
    if num_classes is None:
        num_classes = default_classes
    return LoadedModel(module.eval(), spec, str(weights), sha, fmt, data_config, num_classes)


def _warn_random_weights(spec: str) -> None:
    """Allowed (tests and benchmarks use untrained models), but never silently."""
    warnings.warn(
        f"{spec}: no --weights given, so the model has random weights and its scores mean nothing",
        stacklevel=4,
    )


def _head_width_if_only_head_differs(module: nn.Module, state: dict[str, Tensor]) -> int | None:
    own = module.state_dict()
    head = list(own)[-2:]  # the classifier's weight and bias come last in torchvision and timm models
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if not mismatched or any(k not in head for k in mismatched) or set(own) - set(state) - {
            k for k in own if k.endswith("num_batches_tracked")}:
        return None
    first = state[mismatched[0]]
    return int(first.shape[0]) if first.shape[1:] == own[mismatched[0]].shape[1:] else None


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


# --- factories -----------------------------------------------------------------------------------


def import_attribute(spec: str, name: str, error: type[Exception]) -> tuple[Any, Any]:
    """`(module, attribute)` for `package.module:attribute` (the attribute may be dotted, e.g.
    `Class.build`), checked to be callable; failures raise `error` with messages that start with `name`.

    The current directory is importable for the import, as with `python -m` or uvicorn, so a factory or
    a serving function in a local `models.py` works from the console script too.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise error(f"{name}: expected package.module:function")
    try:
        with _cwd_importable():
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise error(f"{name}: cannot import {module_name!r}; install the package or add its folder to "
                        "PYTHONPATH") from exc
        raise error(f"{name}: importing {module_name} failed: {exc}") from exc
    except Exception as exc:  # the user's module raised while importing
        raise error(f"{name}: importing {module_name} failed: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            public = [n for n in dir(target) if not n.startswith("_")]
            raise error(f"{name}: {module_name} has no attribute {attr!r}{_did_you_mean(part, public)}")
        target = getattr(target, part)
    if not callable(target):
        raise error(f"{name}: {attr} is not callable")
    return module, target


def _load_factory(spec: str, weights: str | None, trust: bool, num_classes: int | None) -> LoadedModel:
    """`package.module:function` (see `import_attribute`). A returned module that carries a
    `data_config` attribute (a DataConfig) supplies the preprocessing, like timm's pretrained_cfg;
    a `categories` attribute (a list of names, one per output index) on the returned module or on
    the factory's Python module names the classes.
    """
    py_module, factory = import_attribute(spec, spec, ModelLoadError)
    attr = spec.partition(":")[2]
    kwargs = {}
    if num_classes is not None:
        if not _accepts(factory, "num_classes"):
            raise ModelLoadError(f"{spec}: num_classes was given but {attr}() takes no num_classes argument")
        kwargs["num_classes"] = num_classes
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise ModelLoadError(f"{spec}: {attr}() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec}: {attr}() returned {type(model).__name__}, expected a torch.nn.Module")
    data_config = model.data_config if isinstance(getattr(model, "data_config", None), DataConfig) else None
    if num_classes is None and isinstance(getattr(model, "num_classes", None), int):
        num_classes = model.num_classes
    categories = _category_names(getattr(model, "categories", None)) or _category_names(
        getattr(py_module, "categories", None)
    )
    if weights is None:
        return LoadedModel(model.eval(), spec, None, None, "python", data_config, num_classes, categories)
    state_dict, fmt, sha = _read_state_dict(Path(weights).expanduser(), trust)
    _apply_state_dict(model, state_dict, spec, weights)
    return LoadedModel(model.eval(), spec, str(weights), sha, fmt, data_config, num_classes, categories)


def _category_names(value: Any) -> list[str] | None:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True  # builtins without a signature: let the call decide
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


# --- state dicts ---------------------------------------------------------------------------------


def _read_state_dict(path: Path, trust: bool) -> tuple[dict[str, Tensor], str, str]:
    """(state dict, format, sha256) from a .safetensors file or a torch.save'd dict."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file not found")
    sha = _sha256(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), "safetensors", sha
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
    kind = _sniff(path)
    if kind in ("torch.export", "torchscript"):
        raise ModelLoadError(
            f"{path}: is a {kind} archive, a whole model rather than weights; pass it as the model "
            "(--model FILE --trust-model) without --weights"
        )
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    return _unwrap_state_dict(obj, path), "state_dict", sha


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """Accept the shapes training scripts save: a bare state dict, or one nested under a common key
    ('state_dict', 'model_state_dict', 'model', 'module'), with a DataParallel 'module.' prefix."""
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, Mapping) and inner and _all_tensors(inner):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not _all_tensors(obj):
        raise ModelLoadError(
            f"{path}: expected a state dict (parameter name -> tensor), got {_describe(obj)}"
        )
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _without_wrapper_prefix(state: dict[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`state` without the first name component every key shares (Lightning's `model.`, torch.compile's
    `_orig_mod.`, a user's `net.`), repeatedly, while that makes more of its keys the module's own; the
    strict check that follows still refuses anything that does not fit."""
    best = state
    while best and all("." in k for k in best) and len({k.split(".", 1)[0] for k in best}) == 1:
        stripped = {k.split(".", 1)[1]: v for k, v in best.items()}
        if sum(k in own for k in stripped) <= sum(k in own for k in best):
            break
        best = stripped
    return best


def _all_tensors(d: Mapping[Any, Any]) -> bool:
    return all(isinstance(v, Tensor) for v in d.values())


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a {type(obj).__name__} with keys {', '.join(map(str, list(obj)[:5]))}"
    return f"a {type(obj).__name__}"


def _apply_state_dict(module: nn.Module, state: dict[str, Tensor], spec: str, path: str) -> None:
    """Load strictly, but explain a mismatch in terms a user can act on instead of torch's wall of keys.

    BatchNorm's `num_batches_tracked` counters are allowed to be absent: they do not affect eval.
    """
    own = module.state_dict()
    state = _without_wrapper_prefix(state, own)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if not (missing or unexpected or mismatched):
        module.load_state_dict(state, strict=False)
        return
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
            problems.append(f"{len(keys)} {label} keys ({', '.join(keys[:4])}{more})")
    if mismatched:
        shapes = [f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}" for k in mismatched[:4]]
        problems.append(f"{len(mismatched)} shape mismatches ({'; '.join(shapes)})")
    message = f"{path}: state dict does not fit {spec}: " + ", ".join(problems)
    head = list(own)[-2:]  # the classifier's weight and bias come last in every torchvision/timm model
    first = mismatched[0] if mismatched else None
    if first and all(k in head for k in mismatched) and state[first].shape[1:] == own[first].shape[1:]:
        n = state[first].shape[0]
        message += f". The classifier head has {n} outputs in the file: pass num_classes={n} (--num-classes {n})"
    raise ModelLoadError(message)


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """The current directory on sys.path for the duration, as with `python -m` or uvicorn: a factory, a
    serving function or a pickled model's class in a local file is found from the console script too."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            sys.path.remove(cwd)


# --- model files ---------------------------------------------------------------------------------


def _load_file(spec: str, path: Path, trust: bool, num_classes: int | None, task: str) -> LoadedModel:
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _load_onnx(spec, path, num_classes, task)
    if suffix == ".safetensors":
        raise _weights_only_error(path)
    kind = _sniff(path)
    sha = _sha256(path)
    if kind in ("torch.export", "torchscript"):
        if not trust:
            raise UntrustedModelError(
                f"{path}: is a {kind} archive, which runs the program stored in the file; it is not loaded "
                f"by default: {_OPT_IN}"
            )
        try:
            if kind == "torch.export":
                # torch.export modules keep the train/eval mode they were exported in; .eval() is unsupported.
                program = torch.export.load(str(path))
                module: nn.Module = program.module()
                size = _static_batch(program)
                if size is not None:
                    module = _FixedBatch(module, size)
            else:
                module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # any corruption surfaces as a variety of torch errors
            raise ModelLoadError(f"{path}: could not load the {kind} archive ({_first_line(exc)})") from exc
        return LoadedModel(module, spec, str(path), sha, kind, None, num_classes)
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        return LoadedModel(obj.eval(), spec, str(path), sha, "pickle", None, num_classes)
    if isinstance(obj, Mapping):
        raise _weights_only_error(path)
    raise ModelLoadError(f"{path}: holds {_describe(obj)}, not a model")


def _weights_only_error(path: Path) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: holds weights only (a state dict); name the architecture too, e.g. "
        f"--model torchvision:resnet50 --weights {path.name}"
    )


def _sniff(path: Path) -> str:
    """'torch.export', 'torchscript' or 'torch.save', from the archive's members rather than its name,
    so a TorchScript file saved as .pth is still recognised as code."""
    if not zipfile.is_zipfile(path):
        return "torch.save"  # the legacy pickle format, or not a checkpoint at all: torch.load decides
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(f"{path}: damaged archive ({exc})") from exc
    if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
        return "torch.export"
    if any("/code/__torch__" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "torch.save"


def _torch_load(path: Path, trust: bool) -> Any:
    """`torch.load(weights_only=True)`; a pickle that needs more is refused, naming the globals it
    references, unless `trust` (then it is unpickled with a warning)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path, exc)
        listed = ", ".join(unsafe[:8]) + (f" and {len(unsafe) - 8} more" if len(unsafe) > 8 else "")
        if not trust:
            raise UntrustedModelError(
                f"{path}: is a pickle that references Python objects beyond tensors ({listed}); unpickling "
                "it can execute arbitrary code, so it is not loaded. Save a state dict instead "
                "(torch.save(model.state_dict(), ...)) and pass --model ARCH --weights FILE, or "
                f"{_OPT_IN}"
            ) from None
        warnings.warn(f"{path}: unpickling with weights_only=False because trust_model=True ({listed})", stacklevel=3)
        try:
            with _cwd_importable():
                return torch.load(path, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as full_exc:
            raise ModelLoadError(f"{path}: could not be unpickled: its class's module {full_exc.name!r} is not "
                                 "importable; run from the folder that holds it, install its package or add its "
                                 "folder to PYTHONPATH") from full_exc
        except Exception as full_exc:  # e.g. the pickled class no longer exists in its module
            raise ModelLoadError(f"{path}: could not be unpickled ({_first_line(full_exc)})") from full_exc
    except Exception as exc:  # torch reports corruption as RuntimeError, KeyError, EOFError, ...
        raise ModelLoadError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from exc


def _unsafe_globals(path: Path, exc: Exception) -> list[str]:
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (non-zip) files: fall back to the one global torch names in its error
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    return sorted(set(found)) or ["unknown globals"]


def _load_onnx(spec: str, path: Path, num_classes: int | None, task: str) -> LoadedModel:
    try:
        import onnxruntime
    except ImportError:
        raise ModelLoadError(
            f"{path}: ONNX models run through onnxruntime, which is not installed: pip install visionstress[onnx]"
        ) from None
    sha = _sha256(path)
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception classes for bad graphs
        raise ModelLoadError(f"{path}: onnxruntime could not load it ({_first_line(exc)})") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(f"{path}: expected one image input, the graph has {len(inputs)}")
    # The class axis of the first output: last for logits, 1 for [B, C, H, W] masks; a detector's raw
    # output packs boxes and scores on its last axis, so its width is not a class count.
    shape = session.get_outputs()[0].shape
    width = {"classification": shape[-1], "segmentation": shape[1] if len(shape) == 4 else None}.get(task)
    if num_classes is None and isinstance(width, int):
        num_classes = width
    return LoadedModel(_OnnxModel(session, inputs[0].name, inputs[0].shape, path.name), spec, str(path), sha, "onnx",
                       None, num_classes)


class _OnnxModel:
    """An onnxruntime session as a tensor -> tensor callable; runs on CPU numpy, returns on the input's device.

    torch.onnx.export fixes every axis it is not told is dynamic, the batch included, so a graph whose
    batch axis is a number is fed in pieces of that size; a fixed image size is checked with a message
    that says which size the graph takes."""

    def __init__(self, session: Any, input_name: str, shape: Sequence[Any] = (), name: str = "model") -> None:
        self.session = session
        self.input_name = input_name
        self.shape = [d if isinstance(d, int) else None for d in shape]
        self.name = name

    def __call__(self, images: Tensor) -> Tensor:
        fixed = self.shape[-2:] if len(self.shape) == images.ndim == 4 else []
        if all(fixed) and fixed and list(images.shape[-2:]) != fixed:
            raise ValueError(f"{self.name}: the ONNX graph takes images of {fixed[0]}x{fixed[1]} only (its input "
                             f"{self.input_name!r} is {self.shape}); the data config's input_size is "
                             f"{images.shape[-2]}x{images.shape[-1]}: pass --input-size (and --resize)")
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        batch = self.shape[0] if self.shape else None
        if batch is None:
            logits = self.session.run(None, {self.input_name: array})[0]
        else:
            logits = _in_pieces(lambda piece: self.session.run(None, {self.input_name: piece})[0], array, batch)
        return torch.from_numpy(logits).to(images.device)


def _in_pieces(fn: Callable[[Any], Any], batch: Any, size: int) -> Any:
    """`fn` of a model with a fixed batch `size` over any batch: pieces of `size`, the last one padded by
    repeating its last image, outputs concatenated and trimmed. Works for numpy arrays and tensors."""
    n = len(batch)
    outputs = []
    for start in range(0, n, size):
        piece = batch[start:start + size]
        short = size - len(piece)
        if short:
            filler = piece[-1:].repeat(short, 0) if isinstance(piece, np.ndarray) else piece[-1:].expand(short, *piece.shape[1:])
            piece = np.concatenate([piece, filler]) if isinstance(piece, np.ndarray) else torch.cat([piece, filler])
        outputs.append(fn(piece)[:size - short])
    return np.concatenate(outputs) if isinstance(outputs[0], np.ndarray) else torch.cat(outputs)


class _FixedBatch(nn.Module):
    """A torch.export program whose batch axis was exported static, callable with any batch (see `_in_pieces`)."""

    def __init__(self, module: nn.Module, size: int) -> None:
        super().__init__()
        self.module = module
        self.size = size

    def forward(self, images: Tensor) -> Tensor:
        return _in_pieces(self.module, images, self.size)


def _static_batch(program: Any) -> int | None:
    """The batch size a torch.export program was exported with when its one image input's batch is not dynamic."""
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    value = inputs[0].meta.get("val") if len(inputs) == 1 else None
    shape = getattr(value, "shape", None)
    return shape[0] if shape is not None and len(shape) == 4 and isinstance(shape[0], int) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
