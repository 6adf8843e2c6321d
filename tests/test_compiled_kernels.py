"""The CPU kernels (numba) are cached on disk: a second process loads every one of them instead of
compiling it (about 5 s per process for the default suite, paid by every run and every test worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

KERNELS = {  # kernel -> a perturbation whose CPU path runs it
    "uniform_rows": "impulse_noise", "normal_rows": "gaussian_noise", "separable": "gaussian_blur",
    "correlate": "defocus_blur", "correlate_taps": "motion_blur", "zoom_sum": "zoom_blur",
    "glass_shuffle": "glass_blur", "poisson_search": "shot_noise",
}

SCRIPT = """
import json, sys, torch
from visionstress import _rng_kernels
from visionstress.perturbations import _kernels, get_perturbation
kernels = json.loads(sys.argv[1])
images = torch.rand(2, 3, 192, 192)  # large enough for the fused noise loops
for name in sorted(set(kernels.values())):
    get_perturbation(name)(images, severity=3, seed=0)
stats = {}
for kernel in kernels:
    dispatcher = getattr(_rng_kernels, kernel, None) or getattr(_kernels, kernel)
    stats[kernel] = [sum(dispatcher.stats.cache_hits.values()), sum(dispatcher.stats.cache_misses.values())]
print(json.dumps(stats))
"""


def _kernel_stats(cache_dir) -> dict[str, list[int]]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(KERNELS)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_kernel_is_compiled_once_then_loaded_from_the_cache(tmp_path):
    first = _kernel_stats(tmp_path)
    assert all(misses == 1 and hits == 0 for hits, misses in first.values()), first  # compiled, and used
    second = _kernel_stats(tmp_path)
    assert all(hits == 1 and misses == 0 for hits, misses in second.values()), second


def test_a_kernel_without_a_writable_cache_folder_still_compiles(monkeypatch):
    from visionstress import _numba

    calls = []

    def njit(**options):
        calls.append(options)
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return lambda function: function

    monkeypatch.setattr(_numba, "njit", njit)
    double = _numba.kernel(parallel=True)(lambda x: 2 * x)
    assert double(3) == 6 and calls == [{"cache": True, "parallel": True}, {"parallel": True}]


@pytest.mark.parametrize("package", ["perturbations", "evaluators"])
def test_the_package_folders_refuse_a_second_name(package):
    """From a checkout's root `perturbations/` is importable as a top-level package too; a kernel compiled
    there would be cached under that name and fail to load where the name does not resolve."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", f"import {package}"], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and f"import visionstress.{package}, not {package}" in done.stderr
