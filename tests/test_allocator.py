"""The allocator setting of visionstress runs: large tensors freed between passes are reused, not faulted in again."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="a glibc setting")

PASSES = """
import json, resource, sys
import torch
from visionstress.allocator import keep_large_blocks
kept = keep_large_blocks() if sys.argv[1] == "kept" else False
for _ in range(10):  # warm-up passes of a 48 MiB tensor (above anything glibc adapts to by itself)
    x = torch.ones(48 << 18)
    del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # twenty more passes, as a model's activations are allocated on every call
    x = torch.ones(48 << 18)
    del x
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _passes(mode: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", PASSES, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout)


def test_a_freed_large_tensor_is_reused_instead_of_faulted_in_again():
    pages = (48 << 20) // 4096
    default, kept = _passes("default"), _passes("kept")
    assert default["faults"] > 15 * pages  # every pass maps and faults its 12,288 pages afresh
    # The block stays in the heap. Some machines still fault it in now and then (CI's did once: exactly 12,288
    # faults in 20 passes, where this VM counts 0); what must not happen is a fault on every pass.
    assert kept["kept"] and kept["faults"] < 5 * pages  # fewer than a quarter of the passes


def test_the_users_own_glibc_setting_wins(monkeypatch):
    import os

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    assert _passes("kept", env)["kept"] is False


def test_runs_and_skew_set_it(tmp_path, monkeypatch):
    import visionstress as vs
    from visionstress import allocator
    from visionstress.skew import skew

    calls = []
    monkeypatch.setattr(allocator, "keep_large_blocks", lambda: calls.append(1) or True)
    monkeypatch.setattr("visionstress.skew.run.keep_large_blocks", allocator.keep_large_blocks)
    vs.run(suite="quick", limit=4, bootstrap=0, workers=0, gallery=0, out=tmp_path / "run")
    skew(limit=4, bootstrap=0, workers=0, knobs="channel_order", out=tmp_path / "skew")
    assert len(calls) == 2
