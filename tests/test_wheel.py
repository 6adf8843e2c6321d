"""The wheel works anywhere: built from this tree, installed into a fresh environment, it runs the bundled
demo from an unrelated directory, through the console script and through the pytest plugin.

The fresh environment is a venv without pip whose packages are the wheel alone; its dependencies (torch
and the rest) come from this environment's site-packages on PYTHONPATH, so nothing is downloaded. Entries
on PYTHONPATH do not process .pth files, so this environment's editable install of visionstress cannot
shadow the wheel, which the test checks rather than assumes.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".ci-venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", "reports", "tests", "benchmarks")
WHEEL_LIMIT_BYTES = 6_000_000


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the tree (a build in place would leave build/ behind, whose stale
    files setuptools can pack into later wheels)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
          "-w", str(root / "dist")])
    (built,) = (root / "dist").glob("visionstress-*.whl")
    return built


def _modules_in(folder: Path, package: str) -> set[str]:
    return {f"{package}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*.py")
            if "__pycache__" not in p.parts}


def test_wheel_holds_every_module_and_only_the_demo_files(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = (_modules_in(REPO / "visionstress", "visionstress")
                | _modules_in(REPO / "perturbations", "visionstress/perturbations")
                | _modules_in(REPO / "evaluators", "visionstress/evaluators"))
    assert not expected - names, f"modules missing from the wheel (add their package to pyproject.toml): " \
                                 f"{sorted(expected - names)}"
    demo = REPO / "data" / "demo"
    shipped = {n.removeprefix("visionstress/demo_data/") for n in names if n.startswith("visionstress/demo_data/")}
    on_disk = {p.relative_to(demo).as_posix() for p in demo.rglob("*") if p.is_file()}
    assert shipped == on_disk - {"README.md"}
    assert not [n for n in names if n.startswith(("data/", "tests/", "benchmarks/"))]
    assert wheel.stat().st_size < WHEEL_LIMIT_BYTES, f"{wheel.name} is {wheel.stat().st_size:,} bytes"


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_from_any_directory(wheel: Path, tmp_path: Path):
    fresh = tmp_path / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", str(fresh)])
    python = fresh / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    # --target, not --prefix: a --prefix install would first uninstall this environment's visionstress
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", purelib, str(wheel)])
    outer = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(outer)), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONHOME", None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = _run([str(python), "-c", "import visionstress, visionstress.demo as e; "
                  "print(visionstress.__file__); print(e.demo_dir())"], cwd=elsewhere, env=env).stdout.split()
    assert all(Path(p).resolve().is_relative_to(fresh.resolve()) for p in where), where

    script = Path(purelib) / "bin" / "visionstress"  # the console script pip wrote from the entry point
    _run([str(python), str(script), "run", "--suite", "quick", "--limit", "12", "--bootstrap", "0"],
         cwd=elsewhere, env=env)
    card = json.loads((elsewhere / "reports" / "demo" / "scorecard.json").read_text())
    assert card["dataset"]["num_samples"] == 12
    assert card["dataset"]["path"] == "val"  # the wheel's demo (demo_dir above), named without a machine path

    (elsewhere / "tiny.yaml").write_text("name: tiny\nperturbations:\n  - {name: brightness, severities: [3]}\n")
    (elsewhere / "pytest.ini").write_text("[pytest]\nvisionstress_suite = tiny.yaml\nvisionstress_limit = 12\n"
                                          "visionstress_bootstrap = 0\n")
    (elsewhere / "test_model.py").write_text(
        "from pathlib import Path\n"
        "import visionstress.pytest_plugin as plugin\n\n"
        "def test_demo(visionstress):\n"
        f"    assert Path(plugin.__file__).resolve().is_relative_to(Path({str(fresh.resolve())!r}))\n"
        "    card = visionstress.run()\n"
        "    assert card.dataset['num_samples'] == 12\n"
        "    visionstress.assert_metric(card, 'top1', at_least=0.3)\n"
    )
    result = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"], cwd=elsewhere,
                  env=env)
    assert "1 passed" in result.stdout
