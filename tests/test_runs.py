"""Runs that survive: the journal as checkpoint (kill and resume), torchrun shards, out-of-memory backoff,
the output-folder lock, and refusals that protect a finished run.

Every run here is the bundled demo classifier on a few images with a two-cell suite, so the point is the
mechanics; each comparison is exact (results, intervals and records), not approximate.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import visionstress as vs
from visionstress.records import read_records

TINY_SUITE = "name: tiny\nseed: 4\nperturbations:\n  - {name: gaussian_noise, severities: [2, 5]}\n" \
             "  - {name: rotation, severities: [3]}\n"
ARGS = ["--limit", "47", "--batch-size", "8", "--bootstrap", "50", "--workers", "0", "--device", "cpu"]
"""47 images: not a multiple of 2 or 3 world sizes, nor of the batch size (6 planned batches)."""


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "tiny.yaml"
    path.write_text(TINY_SUITE)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, suite) -> Path:
    """The uninterrupted single-process run every other run must equal."""
    out = tmp_path_factory.mktemp("reference")
    _cli("run", "--suite", str(suite), *ARGS, "--out", str(out), "--overwrite")
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one float order for every process


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "visionstress", *args], capture_output=True, text=True, env=_env())
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _same_run(a: Path, b: Path) -> None:
    """Identical results, summaries and records (records compared in a canonical row order)."""
    card_a, card_b = (json.loads((p / "scorecard.json").read_text()) for p in (a, b))
    assert card_a["results"] == card_b["results"]
    assert card_a["summaries"] == card_b["summaries"]
    assert card_a["dataset"]["num_samples"] == card_b["dataset"]["num_samples"] == 47
    records_a, records_b = (read_records(p / "records.parquet") for p in (a, b))
    pd.testing.assert_frame_equal(records_a, records_b)


def test_killed_runs_resume_to_the_same_scorecard_and_records(tmp_path, suite, reference):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "visionstress", "run", "--suite", str(suite), *ARGS, "--out", str(out)]
    rng = random.Random(7)
    kills = 0
    for attempt in range(8):
        process = subprocess.Popen(command + (["--resume"] if attempt else []), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, env=_env())
        parts = out / "records.parts"
        before = len(list(parts.glob("*.parquet"))) if parts.is_dir() else 0
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if parts.is_dir() and len(list(parts.glob("*.parquet"))) > before:
                time.sleep(rng.uniform(0.0, 0.3))  # somewhere in the next batch (~0.3 s), or while it is written
                break
            time.sleep(0.05)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        if process.returncode == 0:
            break
    assert kills >= 2, "the run finished before it could be killed twice"
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    _same_run(reference, out)


def test_torchrun_world_sizes_give_the_same_scorecard(tmp_path, suite, reference):
    for world in (2, 3):
        out = tmp_path / f"world{world}"
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
                               "--master-port", str(29500 + world), "-m", "visionstress", "run", "--suite",
                               str(suite), *ARGS, "--out", str(out)],
                              capture_output=True, text=True, env={**_env(), "VISIONSTRESS_BACKEND": "gloo"})
        assert done.returncode == 0, done.stdout + done.stderr
        card = json.loads((out / "scorecard.json").read_text())
        assert card["run"]["world_size"] == world
        parts = sorted(p.name for p in (out / "records.parts").glob("*.parquet"))
        assert {name.split("-")[0] for name in parts} == {f"{r:03d}" for r in range(world)}
        _same_run(reference, out)


def test_out_of_memory_halves_the_batch_and_changes_nothing(tmp_path, suite, monkeypatch):
    from visionstress.models import ClassifierAdapter

    common = dict(suite=str(suite), limit=24, bootstrap=50, workers=0, device="cpu")
    small = vs.run(**common, batch_size=4, out=tmp_path / "small")
    predict = ClassifierAdapter.predict
    calls = {"refused": 0}

    def limited(self, images):
        if len(images) > 4:
            calls["refused"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        return predict(self, images)

    monkeypatch.setattr(ClassifierAdapter, "predict", limited)
    card = vs.run(**common, batch_size=16, out=tmp_path / "backoff")
    assert calls["refused"] >= 2  # 16 -> 8 -> 4, then later batches start at the size that worked
    assert card.timing["out_of_memory_retries"] == calls["refused"] and card.timing["batch_sizes"][0] == 4
    assert card.results == small.results and card.summaries == small.summaries
    pd.testing.assert_frame_equal(read_records(tmp_path / "small" / "records.parquet"),
                                  read_records(tmp_path / "backoff" / "records.parquet"))


def test_a_second_run_on_the_same_folder_refuses_until_the_first_dies(tmp_path, suite):
    out = tmp_path / "locked"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"lock = FileLock({str(out / '.visionstress.lock')!r}); lock.acquire(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(vs.RunError, match="another visionstress run"):
        vs.run(suite=str(suite), limit=4, bootstrap=0, workers=0, out=out)
    holder.kill()
    holder.wait()
    card = vs.run(suite=str(suite), limit=4, bootstrap=0, workers=0, out=out)  # the lock died with its process
    assert card.dataset["num_samples"] == 4


def test_a_finished_run_is_never_overwritten_silently(tmp_path, suite):
    out = tmp_path / "run"
    vs.run(suite=str(suite), limit=4, bootstrap=0, workers=0, out=out)
    before = (out / "records.parquet").read_bytes()
    with pytest.raises(ValueError, match=r"holds another run's files .*--resume continues it, --overwrite replaces it"):
        vs.run(suite=str(suite), limit=4, bootstrap=0, workers=0, out=out)
    assert (out / "records.parquet").read_bytes() == before  # untouched
    with pytest.raises(ValueError, match=r"cannot resume: .*seed: 4 then, 5 now"):
        vs.run(suite=str(suite), limit=4, bootstrap=0, workers=0, out=out, resume=True, seed=5)
    card = vs.run(suite=str(suite), limit=4, bootstrap=0, workers=0, out=out, overwrite=True, seed=5)
    assert card.seed == 5
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(ValueError, match=r"a-file: --out is an existing file"):
        vs.run(suite=str(suite), limit=4, bootstrap=0, workers=0, out=file)


NETS = """import os
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 6)
        nn.init.constant_(self.head.weight, float(os.environ.get("NET_SCALE", "1")))

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3)))


def build():
    return Net()
"""


def test_a_factory_model_that_changed_is_not_resumed(tmp_path, suite, monkeypatch):
    """A factory without weights has no file bytes to compare: its parameters and its source file stand for
    them, so a resume does not mix records of two different models."""
    from visionstress.demo import demo_arguments

    (tmp_path / "resume_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    options = dict(suite=str(suite), limit=4, bootstrap=0, workers=0, out=tmp_path / "run", skip_label_check=True,
                   input_size=64, resize=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    vs.run("resume_nets:build", demo_arguments()["data"], **options)
    vs.run("resume_nets:build", demo_arguments()["data"], resume=True, **options)  # the same model resumes
    monkeypatch.setenv("NET_SCALE", "2")
    with pytest.raises(ValueError, match=r"cannot resume: .*model_state"):
        vs.run("resume_nets:build", demo_arguments()["data"], resume=True, **options)
    monkeypatch.delenv("NET_SCALE")
    (tmp_path / "resume_nets.py").write_text(NETS.replace("x.mean(dim=(2, 3))", "x.amax(dim=(2, 3)) * 1.0"))
    monkeypatch.delitem(sys.modules, "resume_nets")
    with pytest.raises(ValueError, match=r"cannot resume: .*model_state"):
        vs.run("resume_nets:build", demo_arguments()["data"], resume=True, **options)


def test_a_resume_with_other_scoring_options_is_refused(tmp_path, suite):
    """Preprocessing (--mean), detection's box moving and score threshold decide what each batch's records
    mean: a resume that changed them would mix two runs in one scorecard (and record only the second)."""
    out = tmp_path / "run"
    vs.run(suite=str(suite), limit=4, bootstrap=0, workers=0, out=out)
    with pytest.raises(ValueError, match=r"cannot resume: .*mean"):
        vs.run(suite=str(suite), limit=4, bootstrap=0, workers=0, out=out, resume=True, mean=(0.4, 0.4, 0.4))
    detection = tmp_path / "detection"
    vs.run(task="detection", suite=str(suite), limit=4, bootstrap=0, workers=0, gallery=0, out=detection)
    with pytest.raises(ValueError, match=r"cannot resume: .*box_warp"):
        vs.run(task="detection", suite=str(suite), limit=4, bootstrap=0, workers=0, gallery=0, out=detection,
               resume=True, box_warp="enclosing")
    card = vs.run(task="detection", suite=str(suite), limit=4, bootstrap=0, workers=0, gallery=0, out=detection,
                  resume=True)  # the same command still resumes
    assert card.data_config["box_warp"] == "ellipse"


def test_ctrl_c_stops_after_the_batch_and_says_how_to_resume(tmp_path, suite, reference):
    out = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "visionstress", "run", "--suite", str(suite), *ARGS, "--out",
                                str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    parts = out / "records.parts"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if parts.is_dir() and any(parts.glob("*.parquet")):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "--resume" in stderr and len(stderr.strip().splitlines()) == 1
    _cli("run", "--suite", str(suite), *ARGS, "--out", str(out), "--resume")
    _same_run(reference, out)
