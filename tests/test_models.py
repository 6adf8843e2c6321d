"""Model loading (safe by default), DataConfig resolution, and the classifier adapter."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
import types
import warnings

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from visionstress.models import (
    ClassifierAdapter,
    DataConfig,
    DataConfigError,
    LoadedModel,
    ModelLoadError,
    ModelOutputError,
    UntrustedModelError,
    load_model,
    resolve_data_config,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated")  # TorchScript is still a format users ship


def tiny_net(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
    ).eval()


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def resnet18_10(tmp_path_factory):
    """A randomly initialised 10-class resnet18, its state dict as .pth and .safetensors, and a batch."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    root = tmp_path_factory.mktemp("resnet18")
    torch.save(model.state_dict(), root / "r18.pth")
    save_file(model.state_dict(), str(root / "r18.safetensors"))
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    return model, root, images


def normalised(images: torch.Tensor, config: DataConfig) -> torch.Tensor:
    x = images.double() / 255.0
    if config.channel_order == "BGR":
        x = x[:, [2, 1, 0]]
    mean = torch.tensor(config.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float64).view(1, 3, 1, 1)
    return ((x - mean) / std).float()


# --- architectures + weights ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix,fmt", [("pth", "state_dict"), ("safetensors", "safetensors")])
def test_torchvision_state_dict_loads_and_runs(resnet18_10, suffix, fmt):
    model, root, images = resnet18_10
    path = root / f"r18.{suffix}"
    loaded = load_model("torchvision:resnet18", weights=str(path), num_classes=10)
    assert (loaded.format, loaded.path, loaded.sha256, loaded.num_classes) == (fmt, str(path), sha256(path), 10)
    # resnet18's published eval transform: resize 256, crop 224, bilinear, ImageNet mean/std
    assert loaded.data_config == DataConfig((224, 224), 256, "bilinear")
    assert not loaded.module.training
    out = ClassifierAdapter(loaded, loaded.data_config).predict(images)
    assert out.logits.shape == (2, 10) and out.logits.dtype == torch.float32
    with torch.no_grad():
        expected = model(normalised(images, loaded.data_config))
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=1e-4)


def test_torchvision_meta_without_download():
    with pytest.warns(UserWarning, match="random weights"):
        loaded = load_model("torchvision:resnet50")
    assert loaded.data_config == DataConfig((224, 224), 232, "bilinear")  # IMAGENET1K_V2 preset
    assert (loaded.num_classes, loaded.format, loaded.sha256) == (1000, "random-init", None)


def test_unknown_and_non_classification_torchvision_names():
    with pytest.raises(ModelLoadError, match="did you mean resnet50"):
        load_model("torchvision:resnet5")
    with pytest.raises(ModelLoadError, match="not an image classification model"):
        load_model("torchvision:fasterrcnn_resnet50_fpn")


def test_fine_tuned_head_is_sized_from_the_checkpoint(resnet18_10):
    """A checkpoint whose classifier head alone differs (fine-tuned) rebuilds the head at its width."""
    _, root, _ = resnet18_10
    loaded = load_model("torchvision:resnet18", weights=str(root / "r18.pth"))
    assert loaded.num_classes == 10 and loaded.module.fc.out_features == 10


def test_explicit_num_classes_that_contradicts_the_checkpoint_is_explained(resnet18_10):
    _, root, _ = resnet18_10
    with pytest.raises(ModelLoadError, match=r"fc\.weight: file \[10, 512\] vs model \[7, 512\].*--num-classes 10"):
        load_model("torchvision:resnet18", weights=str(root / "r18.pth"), num_classes=7)


def test_wrong_state_dict_lists_missing_and_unexpected_keys(tmp_path):
    state = {k.replace("layer1", "stage1"): v for k, v in torchvision.models.resnet18().state_dict().items()}
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(ModelLoadError) as info:
        load_model("torchvision:resnet18", weights=str(path))
    message = str(info.value)
    assert str(path) in message and "does not fit torchvision:resnet18" in message
    assert "missing keys (layer1.0.conv1.weight" in message and "unexpected keys (stage1.0.conv1.weight" in message


def test_training_checkpoint_wrappers_are_unwrapped(tmp_path):
    net = tiny_net()
    ckpt = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    module = types.ModuleType("vs_test_wrapped")
    module.build = tiny_net
    sys.modules["vs_test_wrapped"] = module
    try:
        loaded = load_model("vs_test_wrapped:build", weights=str(path))
    finally:
        del sys.modules["vs_test_wrapped"]
    for a, b in zip(loaded.module.state_dict().values(), net.state_dict().values()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("prefix", ["model.", "_orig_mod.", "module._orig_mod.", "net."])
def test_a_state_dict_saved_from_a_wrapper_loads_when_its_prefix_is_all_that_differs(resnet18_10, tmp_path, prefix):
    """Lightning saves `model.`-prefixed keys, torch.compile `_orig_mod.`, DataParallel `module.`: a prefix shared
    by every key is dropped, but only when what is left fits the architecture exactly."""
    model, _, images = resnet18_10
    path = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {prefix + k: v for k, v in model.state_dict().items()}, "epoch": 1}, path)
    loaded = load_model("torchvision:resnet18", weights=str(path))  # the fine-tuned head's width read through it
    assert loaded.num_classes == 10
    for (name, a), b in zip(loaded.module.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    partial = {prefix + k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    torch.save(partial, path)
    with pytest.raises(ModelLoadError, match=r"missing keys \(fc.weight, fc.bias\)"):
        load_model("torchvision:resnet18", weights=str(path), num_classes=10)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"nope\.pth: weights file not found"):
        load_model("torchvision:resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ModelLoadError, match=r"nope\.pt2: model file not found"):
        load_model(str(tmp_path / "nope.pt2"))


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    for name in ("junk.pth", "junk.safetensors"):
        (tmp_path / name).write_bytes(b"not a checkpoint at all")
        with pytest.raises(ModelLoadError, match=name):
            load_model("torchvision:resnet18", weights=str(tmp_path / name))


def test_state_dict_as_model_asks_for_architecture(resnet18_10):
    _, root, _ = resnet18_10
    for name in ("r18.pth", "r18.safetensors"):
        with pytest.raises(ModelLoadError, match="weights only.*--model torchvision:resnet50 --weights"):
            load_model(str(root / name))


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "timm:resnet18", "visionstress.models.demo:tiny_classifier"])
def test_a_model_without_weights_is_the_same_model_every_time(spec):
    """Random weights (a smoke test, a factory that initialises itself) are drawn from a fixed seed: a resumed
    run, each torchrun rank and a rerun score the same model. The caller's random state is left alone."""
    first = load_model(spec, num_classes=3 if ":resnet" in spec else None)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    second = load_model(spec, num_classes=3 if ":resnet" in spec else None)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, a), b in zip(first.module.state_dict().items(), second.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# --- files that execute code ----------------------------------------------------------------------


def test_pt2_runs_with_trust_and_is_refused_without(tmp_path):
    net = tiny_net()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, str(path))
    with pytest.raises(UntrustedModelError, match=r"tiny\.pt2: is a torch.export archive.*--trust-model"):
        load_model(str(path))
    loaded = load_model(str(path), trust_model=True)
    assert (loaded.format, loaded.sha256) == ("torch.export", sha256(path))
    config = DataConfig((16, 16), None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    adapter = ClassifierAdapter(loaded, config)
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        expected = net(normalised((images * 255).round().to(torch.uint8), config))
    torch.testing.assert_close(adapter.predict((images * 255).round().to(torch.uint8)).logits, expected)
    assert adapter.num_classes == 5


@pytest.mark.parametrize("name", ["tiny.pt", "disguised.pth"])
def test_torchscript_refused_without_trust(tmp_path, name):
    path = tmp_path / name
    torch.jit.save(torch.jit.script(tiny_net()), str(path))
    with pytest.raises(UntrustedModelError, match="torchscript archive.*--trust-model"):
        load_model(str(path))
    loaded = load_model(str(path), trust_model=True)
    assert loaded.format == "torchscript"
    assert ClassifierAdapter(loaded, DataConfig((16, 16), None)).num_classes == 5


def test_pickled_module_refused_naming_unsafe_globals(tmp_path):
    path = tmp_path / "full.pth"
    torch.save(tiny_net(), path)
    with pytest.raises(UntrustedModelError) as info:
        load_model(str(path))
    message = str(info.value)
    assert "torch.nn.modules.conv.Conv2d" in message and "torch.nn.modules.linear.Linear" in message
    assert "--trust-model" in message and "state_dict" in message
    # and as --weights it is refused the same way
    with pytest.raises(UntrustedModelError, match="torch.nn.modules.conv.Conv2d"):
        load_model("torchvision:resnet18", weights=str(path))
    with pytest.warns(UserWarning, match="weights_only=False"):
        loaded = load_model(str(path), trust_model=True)
    assert loaded.format == "pickle" and isinstance(loaded.module, nn.Sequential)


class _Payload:
    """A pickle whose loading runs code: it writes the file named by `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_a_pickle_that_runs_code_runs_nothing_unless_trusted(tmp_path):
    marker = tmp_path / "ran"
    torch.save(_Payload(str(marker)), tmp_path / "evil.pt")
    for spec, weights in ((str(tmp_path / "evil.pt"), None), ("torchvision:resnet18", str(tmp_path / "evil.pt"))):
        with pytest.raises(UntrustedModelError, match="builtins.exec"):
            load_model(spec, weights=weights)
        assert not marker.exists()
    with pytest.warns(UserWarning, match="weights_only=False"), pytest.raises(ModelLoadError):
        load_model(str(tmp_path / "evil.pt"), trust_model=True)  # trusted, it is unpickled: the code runs
    assert marker.exists()


def test_trusted_pickle_finds_its_class_in_the_current_directory(tmp_path, monkeypatch):
    """As for a factory (`mymodels:build`), a whole pickled module whose class lives in a local file loads
    when run from that folder; elsewhere the message says the class's module must be importable."""
    (tmp_path / "local_nets.py").write_text("from torch import nn\n\nclass Net(nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import local_nets

    torch.save(local_nets.Net(3, 2), tmp_path / "net.pt")
    monkeypatch.delitem(sys.modules, "local_nets")
    sys.path.remove(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        assert type(load_model("net.pt", trust_model=True).module).__name__ == "Net"
    monkeypatch.delitem(sys.modules, "local_nets")
    monkeypatch.chdir(tmp_path.parent)
    with pytest.warns(UserWarning), pytest.raises(ModelLoadError, match=r"net\.pt: could not be unpickled: its "
                                                  r"class's module 'local_nets' is not importable"):
        load_model(str(tmp_path / "net.pt"), trust_model=True)


def test_weights_with_a_model_file_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="--weights applies to an architecture"):
        load_model(str(tmp_path / "m.pt2"), weights="w.pth")


# --- factories ------------------------------------------------------------------------------------


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "vs_user_models.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def build(num_classes=5):
                torch.manual_seed(1)
                layers = [nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)]
                return nn.Sequential(*layers)

            def no_args():
                return nn.Linear(2, 2)

            def not_a_module():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "vs_user_models"
    sys.modules.pop("vs_user_models", None)


def test_factory_spec_with_and_without_weights(factory_module, tmp_path):
    loaded = load_model(f"{factory_module}:build", num_classes=7)
    assert (loaded.format, loaded.path, loaded.num_classes) == ("python", None, 7)
    weights = {k: torch.ones_like(v) for k, v in loaded.module.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(weights, str(path))
    with_weights = load_model(f"{factory_module}:build", weights=str(path), num_classes=7)
    assert with_weights.sha256 == sha256(path) and with_weights.format == "safetensors"
    assert torch.equal(with_weights.module[-1].bias, torch.ones(7))


def test_factory_errors(factory_module):
    with pytest.raises(ModelLoadError, match="has no attribute 'nope'"):
        load_model(f"{factory_module}:nope")
    with pytest.raises(ModelLoadError, match=r"has no attribute 'biuld' \(did you mean build\?\)"):
        load_model(f"{factory_module}:biuld")
    with pytest.raises(ModelLoadError, match="returned int, expected a torch.nn.Module"):
        load_model(f"{factory_module}:not_a_module")
    with pytest.raises(ModelLoadError, match="takes no num_classes"):
        load_model(f"{factory_module}:no_args", num_classes=3)
    with pytest.raises(ModelLoadError, match="cannot import 'vs_missing_pkg.models'"):
        load_model("vs_missing_pkg.models:build")


def test_demo_factory():
    demo = pytest.importorskip("visionstress.models.demo")
    loaded = load_model("visionstress.models.demo:tiny_classifier")
    adapter = ClassifierAdapter(loaded, demo.DEMO_DATA_CONFIG)
    h, w = demo.DEMO_DATA_CONFIG.input_size
    assert adapter.predict(torch.zeros(2, 3, h, w, dtype=torch.uint8)).logits.shape == (2, 6)


# --- optional backends: the real timm and onnxruntime (dev extra); fakes only for "not installed" ---------


def test_onnx_without_onnxruntime_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelLoadError, match=r"m\.onnx.*pip install visionstress\[onnx\]"):
        load_model(str(path))


def test_timm_missing_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ModelLoadError, match="pip install timm"):
        load_model("timm:resnet50")


TIMM_MODEL = "mobilenetv3_small_050"  # a real ImageNet architecture, 1.6M parameters


def _timm_eval_transform(model) -> dict:
    """What timm's own eval transform does for `model`'s pretrained config: the reference for DataConfig."""
    import timm.data
    from torchvision import transforms as T

    steps = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False).transforms
    resize = next(t for t in steps if isinstance(t, T.Resize))
    crop = next(t for t in steps if isinstance(t, T.CenterCrop))
    normalize = next(t for t in steps if isinstance(t, T.Normalize))
    return {"resize": resize.size, "interpolation": resize.interpolation.value, "crop": tuple(crop.size),
            "mean": tuple(float(m) for m in normalize.mean), "std": tuple(float(s) for s in normalize.std)}


def test_timm_weights_and_pretrained_config(tmp_path):
    """A fine-tuned timm checkpoint: the head is sized from the file, the DataConfig is what timm's own
    eval transform does, and the adapter's logits are the model's on the normalised pixels."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(TIMM_MODEL, pretrained=False, num_classes=7).eval()
    path = tmp_path / "finetuned.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_model(f"timm:{TIMM_MODEL}", weights=str(path))
    assert (loaded.format, loaded.num_classes, loaded.sha256) == ("safetensors", 7, sha256(path))
    reference = _timm_eval_transform(model)
    config = loaded.data_config
    assert (config.resize, config.interpolation, config.input_size) == (
        reference["resize"], reference["interpolation"], reference["crop"])
    assert config.mean == pytest.approx(reference["mean"]) and config.std == pytest.approx(reference["std"])
    assert config == DataConfig((224, 224), 256, "bicubic")  # ImageNet mean/std, crop_pct 0.875
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    out = ClassifierAdapter(loaded, config).predict(images)
    with torch.no_grad():
        expected = model(normalised(images, config))
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=1e-4)


def test_timm_random_weights_and_explicit_num_classes():
    pytest.importorskip("timm")
    with pytest.warns(UserWarning, match="random weights"):
        loaded = load_model("timm:test_vit", num_classes=3)
    assert (loaded.format, loaded.num_classes) == ("random-init", 3)
    assert loaded.data_config == DataConfig((160, 160), 168, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    images = torch.randint(0, 256, (2, 3, 160, 160), dtype=torch.uint8)
    assert ClassifierAdapter(loaded, loaded.data_config).predict(images).logits.shape == (2, 3)
    with pytest.raises(ModelLoadError, match="timm cannot build 'no_such_net'"):
        load_model("timm:no_such_net")


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    """The trained demo classifier exported with torch.onnx.export (batch axis dynamic), beside the torch model."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from visionstress.demo import demo_dir

    model = load_model("visionstress.models.demo:tiny_classifier", weights=str(demo_dir() / "classifier.safetensors"))
    path = tmp_path_factory.mktemp("onnx") / "demo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation and progress chatter
        torch.onnx.export(model.module, (torch.rand(2, 3, 64, 64),), str(path), input_names=["pixels"],
                          output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    return model, path


def test_onnx_export_predicts_like_the_torch_model(demo_onnx):
    demo = pytest.importorskip("visionstress.models.demo")
    torch_model, path = demo_onnx
    loaded = load_model(str(path))
    assert (loaded.format, loaded.num_classes, loaded.sha256, loaded.path) == ("onnx", 6, sha256(path), str(path))
    assert loaded.module.session.get_providers() == ["CPUExecutionProvider"]
    config = demo.DEMO_DATA_CONFIG
    for batch in (1, 5):  # the exported batch axis is dynamic
        images = torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8)
        onnx_logits = ClassifierAdapter(loaded, config).predict(images).logits
        torch_logits = ClassifierAdapter(torch_model, config).predict(images).logits
        torch.testing.assert_close(onnx_logits, torch_logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(onnx_logits.argmax(1), torch_logits.argmax(1))


def test_onnx_export_with_a_fixed_batch_runs_in_pieces_of_it(demo_onnx, tmp_path):
    """torch.onnx.export without dynamic axes (its default) fixes the batch at the example's size: batches are
    fed in pieces of that size (the last one padded), with the logits of the dynamic export. A fixed image
    size that differs from the data config's is named before onnxruntime's own message."""
    demo = pytest.importorskip("visionstress.models.demo")
    torch_model, _ = demo_onnx
    fixed = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch_model.module, (torch.rand(2, 3, 64, 64),), str(fixed), input_names=["pixels"],
                          output_names=["logits"])
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    onnx_logits = ClassifierAdapter(load_model(str(fixed)), demo.DEMO_DATA_CONFIG).predict(images).logits
    torch_logits = ClassifierAdapter(torch_model, demo.DEMO_DATA_CONFIG).predict(images).logits
    torch.testing.assert_close(onnx_logits, torch_logits, atol=1e-5, rtol=1e-5)
    config = DataConfig((32, 32), None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with pytest.raises(ModelOutputError, match=r"fixed\.onnx: .*takes images of 64x64 .*input_size is 32x32"):
        ClassifierAdapter(load_model(str(fixed)), config).predict(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_pt2_exported_with_a_static_batch_runs_any_batch(tmp_path):
    net = tiny_net()
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(2, 3, 16, 16),)), str(path))
    config = DataConfig((16, 16), None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    adapter = ClassifierAdapter(load_model(str(path), trust_model=True), config)
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        expected = net(normalised(images, config))
    torch.testing.assert_close(adapter.predict(images).logits, expected)
    assert adapter.forward(images.float() / 255).shape == (3, 5)  # the differentiable path (patch fitting) too


def test_onnx_model_through_a_run(demo_onnx, tmp_path):
    """`vs.run` with the exported file scores the demo images exactly as with the torch model."""
    import visionstress as vs
    from visionstress.demo import demo_dir

    demo = pytest.importorskip("visionstress.models.demo")
    _, path = demo_onnx
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: two\nperturbations:\n  - {name: brightness, severities: [3]}\n"
                     "  - {name: rotation, severities: [3]}\n")
    config = tmp_path / "preprocessing.json"
    config.write_text(json.dumps(demo.DEMO_DATA_CONFIG.to_dict()))
    common = dict(data=demo_dir() / "val", suite=str(suite), limit=24, bootstrap=0, workers=0, gallery=0, device="cpu")
    onnx_card = vs.run(model=str(path), data_config=config, out=tmp_path / "onnx", **common)
    torch_card = vs.run(model="visionstress.models.demo:tiny_classifier",
                        weights=demo_dir() / "classifier.safetensors", out=tmp_path / "torch", **common)
    assert onnx_card.model["format"] == "onnx" and onnx_card.dataset["num_samples"] == 24
    assert len(onnx_card.results) == 3
    for onnx_row, torch_row in zip(onnx_card.results, torch_card.results, strict=True):
        assert onnx_row["metrics"]["top1"] == torch_row["metrics"]["top1"], onnx_row
        assert onnx_row["metrics"]["ece"] == pytest.approx(torch_row["metrics"]["ece"], abs=1e-5)


# --- DataConfig -----------------------------------------------------------------------------------


def test_data_config_round_trip_and_file_formats(tmp_path):
    config = DataConfig((320, 256), 384, "bicubic", (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), "BGR")
    assert DataConfig.from_mapping(config.to_dict(), "round trip") == config
    (tmp_path / "c.json").write_text(json.dumps(config.to_dict()))
    assert DataConfig.from_file(tmp_path / "c.json") == config
    (tmp_path / "c.yaml").write_text("input_size: 96\nresize: null\ninterpolation: Nearest\nchannel_order: bgr\n")
    assert DataConfig.from_file(tmp_path / "c.yaml") == DataConfig((96, 96), None, "nearest", channel_order="BGR")
    (tmp_path / "crop.yaml").write_text("input_size: [224, 224]\ncrop_pct: 0.875\n")
    assert DataConfig.from_file(tmp_path / "crop.yaml").resize == 256


def test_precedence_flags_over_file_over_weights(tmp_path):
    base = DataConfig((224, 224), 232, "bilinear")
    file = tmp_path / "dc.yaml"
    file.write_text("mean: [0.5, 0.5, 0.5]\nstd: [0.5, 0.5, 0.5]\ninterpolation: bicubic\n")
    flags = {"input_size": "256", "resize": None, "interpolation": None, "mean": "0.1,0.2,0.3", "std": None}
    config, source = resolve_data_config(base, str(file), flags)
    assert config.mean == (0.1, 0.2, 0.3)  # flag beats file
    assert config.std == (0.5, 0.5, 0.5) and config.interpolation == "bicubic"  # file beats weights
    assert config.input_size == (256, 256) and config.resize == 265  # crop fraction 224/232 kept
    assert source == (
        f"model weights metadata; overridden by file {file} (mean, std, interpolation); "
        "overridden by flags (input_size, mean)"
    )
    defaults, source = resolve_data_config(None, None, {"resize": "none"})
    assert defaults == DataConfig(resize=None) and source.startswith("defaults")
    assert resolve_data_config(base, None, {}) == (base, "model weights metadata")


@pytest.mark.parametrize(
    "text,match",
    [
        ("inpt_size: 224\n", "unknown data config key 'inpt_size' \\(did you mean 'input_size'\\?\\)"),
        ("mean: [123.7, 116.3, 103.5]\n", "mean .* looks like the 0-255 scale"),
        ("std: [0.2, 0, 0.2]\n", "std must be positive"),
        ("mean: [0.5, 0.5]\n", "mean must be three numbers"),
        ("interpolation: lanczos\n", "interpolation must be one of bilinear, bicubic, nearest"),
        ("channel_order: RGBA\n", "channel_order must be one of RGB, BGR"),
        ("input_size: [224, 0]\n", "input_size must be a positive integer"),
        ("resize: 100\n", "resize=100 is smaller than the crop"),
        ("resize: 256\ncrop_pct: 0.9\n", "either 'resize' or 'crop_pct'"),
        ("- 224\n", "expected a mapping"),
        ("mean: [0.5, 0.5\n", "not a readable YAML/JSON"),
    ],
)
def test_data_config_file_errors_name_file_and_key(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DataConfigError, match=match) as info:
        DataConfig.from_file(path)
    assert str(info.value).startswith(str(path))


def test_flag_errors_name_flags():
    with pytest.raises(DataConfigError, match="^flags: std must be three numbers"):
        resolve_data_config(None, None, {"std": "0.5,0.5"})
    with pytest.raises(DataConfigError, match="data config file not found"):
        resolve_data_config(None, "/nonexistent/dc.yaml", {})


# --- adapter --------------------------------------------------------------------------------------


class Recorder(nn.Module):
    """Returns fixed logits and keeps what it was given, to check the adapter's preprocessing."""

    def __init__(self, num_classes: int = 4, fill: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.fill, self.seen = num_classes, fill, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        return torch.full((x.shape[0], self.num_classes), self.fill, device=x.device)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_adapter_normalisation_matches_hand_computation(order):
    config = DataConfig((5, 7), None, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4), channel_order=order)
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    recorder = Recorder()
    adapter = ClassifierAdapter(recorder, config)
    adapter.predict(images)
    r, g, b = (images[:, c].double() / 255 for c in range(3))
    first = b if order == "BGR" else r
    third = r if order == "BGR" else b
    hand = torch.stack([(first - 0.1) / 0.2, (g - 0.5) / 0.3, (third - 0.9) / 0.4], dim=1).float()
    torch.testing.assert_close(recorder.seen, hand)
    adapter.predict(images.float() / 255)  # float in [0, 1] is the same image
    torch.testing.assert_close(recorder.seen, hand)


def test_adapter_rejects_bad_outputs():
    config = DataConfig((4, 4), None)
    images = torch.zeros(3, 3, 4, 4)
    with pytest.raises(ModelOutputError, match="my-model: 3 of 3 images got NaN or infinite logits"):
        nan_model = LoadedModel(Recorder(fill=float("nan")), "my-model", None, None, "python", None, None)
        ClassifierAdapter(nan_model, config).predict(images)
    with pytest.raises(ModelOutputError, match=r"expected logits of shape \[3, num_classes\], got \[3, 4, 1\]"):
        ClassifierAdapter(lambda x: torch.zeros(3, 4, 1), config).predict(images)
    with pytest.raises(ModelOutputError, match="returned 4 logits per image, but the model has 10 classes"):
        ClassifierAdapter(LoadedModel(Recorder(), "m", None, None, "python", None, 10), config).predict(images)
    with pytest.raises(ModelOutputError, match=r"Conv2d: the model failed on a batch of shape \[3, 3, 4, 4\]"):
        ClassifierAdapter(nn.Conv2d(3, 3, 7), config).predict(images)


def test_a_grey_scale_model_is_told_how_to_take_rgb():
    config = DataConfig((8, 8), None)
    grey = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ModelOutputError, match=r"takes 1-channel images and visionstress feeds RGB.*"
                                               r"x\.mean\(dim=1, keepdim=True\) in front") as caught:
        ClassifierAdapter(grey, config).predict(torch.rand(2, 3, 8, 8))
    assert "input_size" not in str(caught.value)  # the size is not the problem
    wrapped = nn.Sequential(Grey(), grey)  # what the message says to do
    assert ClassifierAdapter(wrapped, config).predict(torch.rand(2, 3, 8, 8)).logits.shape == (2, 2)


class Grey(nn.Module):
    def forward(self, x):
        return x.mean(dim=1, keepdim=True)


def test_adapter_takes_probabilities_for_what_they_are():
    config = DataConfig((4, 4), None)
    images = torch.rand(3, 3, 4, 4)
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    adapter = ClassifierAdapter(lambda x: probabilities[:len(x)], config)
    torch.testing.assert_close(adapter.predict(images).logits.softmax(1), probabilities)
    assert adapter.outputs == "probabilities"
    logits = ClassifierAdapter(lambda x: probabilities[:len(x)] * 3 - 1, config)
    torch.testing.assert_close(logits.predict(images).logits, probabilities * 3 - 1)
    assert logits.outputs == "logits"
    changing = iter([probabilities, probabilities * 3 - 1])
    adapter = ClassifierAdapter(lambda x: next(changing), config)
    adapter.predict(images)
    with pytest.raises(ModelOutputError, match="rows summing to 1.*then a batch that is not"):
        adapter.predict(images)


def test_adapter_input_checks_and_lazy_num_classes():
    config = DataConfig((4, 4), None)
    recorder = Recorder(num_classes=6)
    adapter = ClassifierAdapter(recorder, config)
    assert recorder.seen is None
    assert adapter.num_classes == 6 and recorder.seen.shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="images are 8x8 but the data config's input_size is 4x4"):
        adapter.predict(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        adapter.predict(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="uint8 or float"):
        adapter.predict(torch.zeros(1, 3, 4, 4, dtype=torch.int32))


def test_adapter_amp_returns_float32_logits():
    net = tiny_net()
    config = DataConfig((16, 16), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some CPU builds warn that bf16 autocast is slow
        out = ClassifierAdapter(net, config, amp=True).predict(torch.rand(2, 3, 16, 16))
    assert out.logits.dtype == torch.float32 and out.logits.shape == (2, 5)


@pytest.mark.cuda
def test_adapter_on_cuda_matches_cpu(resnet18_10):
    _, root, images = resnet18_10
    loaded = load_model("torchvision:resnet18", weights=str(root / "r18.safetensors"), num_classes=10)
    cpu = ClassifierAdapter(loaded, loaded.data_config).predict(images).logits
    loaded = load_model("torchvision:resnet18", weights=str(root / "r18.safetensors"), num_classes=10)
    gpu = ClassifierAdapter(loaded, loaded.data_config, device="cuda").predict(images.cuda()).logits
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-2, rtol=1e-2)
    amp = ClassifierAdapter(loaded, loaded.data_config, device="cuda", amp=True).predict(images.cuda()).logits
    assert amp.dtype == torch.float32 and bool(torch.isfinite(amp).all())
    assert (amp.cpu() - cpu).abs().max() <= 0.05 * cpu.abs().max() + 0.05  # bf16: ~3 significant digits
