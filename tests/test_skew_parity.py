"""Serving parity: an identical serving function passes; one that swaps channels or resizes differently
fails naming the images; an ONNX export of the demo classifier passes; bad serving paths are refused
before any work."""

from __future__ import annotations

import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF
from typer.testing import CliRunner

from visionstress.cli import app
from visionstress.demo import demo_dir
from visionstress.models import load_model
from visionstress.skew import SkewError, check_serving_parity
from visionstress.skew import run as run_module

DEMO = dict(model="visionstress.models.demo:tiny_classifier", weights=demo_dir() / "classifier.safetensors")
LIMIT = 24


def identical(path: str) -> torch.Tensor:
    """The demo's declared preprocessing written out by hand, as a serving team would."""
    with Image.open(path) as img:
        rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB")).copy()
    pixels = TF.resize(torch.from_numpy(rgb).permute(2, 0, 1), [64, 64], antialias=True)
    return (pixels.to(torch.float32).div_(255.0) - 0.5) / 0.5


def swapped(path: str) -> torch.Tensor:
    return identical(path).flip(0)


def nearest(path: str) -> torch.Tensor:
    """Resized with OpenCV's nearest neighbour instead of an antialiased filter."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    small = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_NEAREST)
    return (torch.from_numpy(small).permute(2, 0, 1).to(torch.float32) / 255.0 - 0.5) / 0.5


def demo_parity(**kwargs):
    return check_serving_parity(**DEMO, data=demo_dir() / "val", limit=LIMIT, **kwargs)


def test_an_identical_serving_function_passes():
    result = demo_parity(serving=identical)
    assert result.passed and result.agreement == 1.0 and result.images == LIMIT
    assert result.disagreements == [] and result.max_logit_diff < 1e-5
    assert "serving parity PASS" in result.message


def test_swapped_channels_fail_and_name_the_disagreeing_images():
    result = demo_parity(serving=swapped)
    assert not result.passed and 0 < len(result.disagreements) < LIMIT
    assert result.agreement == pytest.approx(1 - len(result.disagreements) / LIMIT)
    for d in result.disagreements:
        assert d.reference != d.serving and Path(d.path).is_file()
        assert str(d.path) in result.message
    assert "serving parity FAIL" in result.message
    # exactly the images whose predictions differ when computed directly
    loaded = load_model(DEMO["model"], weights=str(DEMO["weights"]))
    paths = sorted(str(p) for p in (demo_dir() / "val").glob("*/*.png"))[:LIMIT]
    with torch.inference_mode():
        ref = loaded.module(torch.stack([identical(p) for p in paths])).argmax(1)
        srv = loaded.module(torch.stack([swapped(p) for p in paths])).argmax(1)
    assert [d.path for d in result.disagreements] == [p for p, a, b in zip(paths, ref, srv) if a != b]
    assert demo_parity(serving=swapped, min_agreement=0.5).passed  # the threshold is the user's


@pytest.fixture(scope="module")
def large_noisy_demo(tmp_path_factory) -> Path:
    """24 demo images upscaled to 256x256 with pixel noise: an antialiased resize averages the noise
    away, nearest neighbour keeps it."""
    root = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(0)
    for path in sorted((demo_dir() / "val").glob("*/*.png"))[::6]:
        big = cv2.resize(np.asarray(Image.open(path).convert("RGB")), (256, 256), interpolation=cv2.INTER_CUBIC)
        noisy = big.astype(np.float64) + rng.normal(0, 40, big.shape)
        (root / path.parent.name).mkdir(exist_ok=True)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / path.parent.name / path.name)
    return root


def test_a_different_resize_fails_and_names_the_images(large_noisy_demo):
    same = check_serving_parity(**DEMO, data=large_noisy_demo, serving=identical)
    assert same.passed and same.images == 24
    result = check_serving_parity(**DEMO, data=large_noisy_demo, serving=nearest)
    assert not result.passed and len(result.disagreements) >= 6
    assert all(Path(d.path).parent.parent == large_noisy_demo for d in result.disagreements)
    assert result.serving_top1 < result.reference_top1


# --- exported models ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path_factory.mktemp("onnx") / "demo.onnx"
    module = load_model(DEMO["model"], weights=str(DEMO["weights"])).module
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(module, (torch.zeros(2, 3, 64, 64),), str(path), dynamo=True, input_names=["images"],
                      output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
    return path


def test_an_onnx_export_of_the_demo_classifier_passes_parity(demo_onnx):
    result = demo_parity(serving_model=demo_onnx)
    assert result.passed and result.agreement == 1.0 and result.max_logit_diff < 1e-3
    assert result.serving == str(demo_onnx)
    both = demo_parity(serving=swapped, serving_model=demo_onnx)  # the function feeds the export
    assert not both.passed and both.serving == f"swapped + {demo_onnx}"


def test_an_onnx_export_with_a_fixed_batch_of_one_is_fed_image_by_image(demo_onnx, tmp_path):
    import onnx

    model = onnx.load(str(demo_onnx))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "batch1.onnx"
    onnx.save(model, str(fixed))
    result = demo_parity(serving_model=fixed)
    assert result.passed and result.images == LIMIT and result.max_logit_diff < 1e-3


def test_an_onnx_model_with_another_input_size_is_refused_before_any_work(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper, save

    weight = numpy_helper.from_array(np.zeros((3 * 32 * 32, 6), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "small", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 6])], [weight])
    path = tmp_path / "small.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    monkeypatch.setattr(run_module._SkewImages, "__getitem__", lambda *a: pytest.fail("work started"))
    with pytest.raises(SkewError, match=r"small.onnx: it takes 3x32x32 inputs but the reference preprocessing makes "
                                        r"3x64x64 \(height 32 != 64, width 32 != 64\)"):
        demo_parity(serving_model=path)


# --- bad serving functions -----------------------------------------------------------------------------------

def raises(path: str) -> torch.Tensor:
    raise KeyError("no such model version")


def channels_last(path: str) -> torch.Tensor:
    return identical(path).permute(1, 2, 0)


def unnormalised(path: str) -> torch.Tensor:
    return torch.zeros(3, 64, 64, dtype=torch.uint8)


@pytest.mark.parametrize("fn,message", [
    (raises, r"--serving raises raised KeyError on .*circle_000.png: 'no such model version'"),
    (channels_last, r"--serving channels_last returned shape \[64, 64, 3\] for .*circle_000.png; expected \[3, 64, 64\]"),
    (unnormalised, r"--serving unnormalised returned torch.uint8 .*expected float, already normalised"),
])
def test_a_bad_serving_function_is_refused_before_any_work(fn, message, monkeypatch):
    monkeypatch.setattr(run_module._SkewImages, "__getitem__", lambda *a: pytest.fail("work started"))
    with pytest.raises(SkewError, match=message):
        demo_parity(serving=fn)
    with pytest.raises(SkewError, match=r"--serving nowhere:fn: cannot import 'nowhere'"):
        demo_parity(serving="nowhere:fn")


def test_the_command_exits_1_naming_the_images_when_parity_fails(tmp_path, monkeypatch):
    (tmp_path / "myserving.py").write_text(textwrap.dedent("""
        import torch
        from PIL import Image
        import numpy as np

        def preprocess(path):
            rgb = np.asarray(Image.open(path).convert("RGB")).copy()
            x = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
            return x.flip(0)

        def broken(path):
            raise RuntimeError("model server down")
    """))
    monkeypatch.chdir(tmp_path)
    args = ["skew", "--limit", "12", "--skew-knobs", "none", "--bootstrap", "0", "--workers", "0"]
    failed = CliRunner().invoke(app, [*args, "--serving", "myserving:preprocess", "--out", "a"])
    assert failed.exit_code == 1, failed.output
    assert "serving parity FAIL" in failed.output and ".png" in failed.output
    passed = CliRunner().invoke(app, [*args, "--serving", "myserving:preprocess", "--min-agreement", "0", "--out", "b"])
    assert passed.exit_code == 0 and "serving parity PASS" in passed.output
    report = (tmp_path / "a" / "report.html").read_text()
    assert "Serving parity FAIL" in report and "disagreeing images" in report
    broken = CliRunner().invoke(app, [*args, "--serving", "myserving:broken", "--out", "c"])
    assert broken.exit_code == 2 and "model server down" in broken.output
