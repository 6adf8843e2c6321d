"""`visionstress.run`: a saved model, a dataset and a suite in; a Scorecard (and its files) out.

The same steps for every task (the task module answers the task-specific questions, see
visionstress.tasks.base):

1. resolve and check every option before any work (visionstress.options);
2. prepare the output folder: refuse another run's files unless `overwrite`, check a `resume` against
   the manifest of the run it continues, hold a lock so two runs never share a folder;
3. `task.setup`: dataset, model, adapter, evaluator;
4. the prepare phase: model-aware and data-aware perturbations fit or collect their state (saved in
   `prepared/`, reloaded on resume and on the other ranks);
5. the loop (visionstress.engine) over the planned batches not yet in the journal;
6. finalize from the journal's state (identical whether the run was resumed or sharded), merge the
   records, write scorecard.json, summary.md and report.html atomically.

Under `torchrun`, each rank scores every world-size-th planned batch on its own device, and rank 0
merges the shards' journals and computes the metrics once.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from visionstress.tasks.base import RunError

__all__ = ["RunError", "RunInterrupted", "run"]

MANIFEST = "run.json"
LABEL_CHECK_IMAGES = 64
"""Clean images scored before the label-numbering check (visionstress.label_check) decides."""
LOCK = ".visionstress.lock"
PREPARED_DIR = "prepared"
_RUN_FILES = ("scorecard.json", "summary.md", "report.html", "records.parquet", MANIFEST)
_RUN_DIRS = ("records.parts", "gallery", PREPARED_DIR)


class RunInterrupted(RuntimeError):
    """Ctrl-C stopped the run after a batch; the message says how to resume it."""


def run(model: str | None = None, data: str | Path | None = None, **options: Any):
    """Stress `model` on `data` with the `suite`; returns the Scorecard and writes it under `out`.

    Keywords are the run options (`visionstress run --help` lists them, each declared once in
    visionstress.tasks: e.g. `task`, `suite`, `weights`, `device`, `batch_size`, `limit`, `out`,
    `resume`, `bootstrap`; task options such as `canvas`, `masks`, `class_names`). With neither `model`
    nor `data`, runs the bundled demo of `task` and writes reports/demo[-task]/. `progress(done, total)`
    is called as predictions are scored. Under torchrun, ranks other than 0 return None.
    """
    from visionstress.allocator import keep_large_blocks
    from visionstress.options import resolve_options
    from visionstress.tasks import get_task

    given = dict(options)
    if model is not None:
        given["model"] = model
    if data is not None:
        given["data"] = data
    task = get_task(str(given.get("task") or "classification"))
    given["task"] = task.name
    opts = resolve_options(task.name, given)
    name = None
    if opts.model is None and opts.data is None:
        demo = task.demo()
        name = demo.pop("name")
        opts = opts.replace(**{k: v for k, v in demo.items() if not (k in opts.given and opts[k] is not None)})
        opts = resolve_options(task.name, {**{k: opts[k] for k in opts.given}, **demo})
    elif opts.model is None or opts.data is None:
        raise RunError("give both --model and --data, or neither to run the bundled demo")
    if not Path(opts.data).exists():
        raise RunError(f"{opts.data}: --data not found")
    keep_large_blocks()
    return _Run(task, opts, name).execute()


class _Run:
    """One call of `run`: the steps of the module docstring, in order."""

    def __init__(self, task: Any, opts: Any, name: str | None) -> None:
        from visionstress.distributed import World
        from visionstress.engine import default_device, suite_passes
        from visionstress.suite import load_suite

        self.task = task
        self.suite = load_suite(opts.suite)
        self.opts = opts.replace(seed=self.suite.seed if opts.seed is None else int(opts.seed))
        self.passes = suite_passes(self.suite)
        self.world = World.from_environment()
        device = self.opts.device or default_device()
        if self.world.size > 1 and str(device) == "cuda":
            device = f"cuda:{self.world.local_rank}"
        self.device = _device(device)
        self.out_dir = _out_dir(self.opts.out, name, str(self.opts.model), Path(self.opts.data))

    def execute(self):
        with _locked(self.out_dir, self.world) as lock:
            del lock
            _prepare_out_dir(self.out_dir, self.opts, self.world)
            return self._execute()

    def _execute(self):
        from visionstress.datasets import load_planned, plan_batches
        from visionstress.engine import HostWorker, Loop, RunTiming, perturbation_for, stream
        from visionstress.gallery import FailureGallery
        from visionstress.journal import Journal, iter_todo
        from visionstress.records import record_schema

        from visionstress.foreground import check_foreground_source
        from visionstress.perturbations import get_perturbation

        opts, world = self.opts, self.world
        suite_perturbations = [get_perturbation(p.perturbation) for p in self.passes if p.severity > 0]
        self.foreground = check_foreground_source(self.task.name, opts, suite_perturbations)
        setup = (self.task.setup(opts, self.device, foreground=True) if self.foreground
                 else self.task.setup(opts, self.device))
        if self.foreground:
            setup.dataset.info["foreground"] = {"source": self.foreground, **setup.dataset.info.get("foreground", {})}
        self.setup = setup
        manifest = _manifest(self.task, opts, setup, self.suite, self.passes)
        _check_manifest(self.out_dir, manifest, opts, world)
        perturbations = self._prepare({p.perturbation: self._configured(perturbation_for(p))
                                       for p in self.passes if p.severity > 0})
        self.examples = self._examples(perturbations) if world.rank == 0 else []
        journal = Journal(self.out_dir, record_schema(self.task.name), self.passes, rank=world.rank)
        plan = plan_batches(setup.dataset.images, opts.batch_size)
        mine = plan[world.rank::world.size]
        done_parts = journal.parts(world.rank)
        done = {p.first for p in done_parts}
        journal.replay(lambda i, chunk: setup.evaluator.absorb(self.passes[i].perturbation, self.passes[i].severity,
                                                                chunk), done_parts)
        todo = list(iter_todo(mine, done))
        timing = RunTiming()
        gallery = FailureGallery(size=opts.gallery)
        scored = [sum(p.images for p in done_parts) * len(self.passes)]
        total = sum(len(batch) for batch in mine) * len(self.passes)

        def score(pass_index: int, view: Any, predictions: Any) -> None:
            import time

            t0 = time.perf_counter()
            p = self.passes[pass_index]
            if getattr(predictions, "deferred", None) is not None:
                predictions.deferred()
            update = setup.evaluator.update(p, view, predictions)
            ids = view.sample_ids.tolist()
            paths = [setup.dataset.paths[i] for i in ids]
            first = current[ids[0]]
            journal.add(first, pass_index, update.records, paths, update.state)
            if pass_index == 0 and checking:
                self._check_labels(checking, update.records, setup)
            if setup.gallery is not None and opts.gallery:
                if pass_index == 0:
                    setup.gallery.clean(view, predictions, update.records)
                else:
                    setup.gallery.offer(gallery, p, view, predictions, update.records, paths)
            scored[0] += len(ids)
            if opts.progress is not None:
                opts.progress(scored[0], total)
            timing.score += time.perf_counter() - t0

        current: dict[int, int] = {}  # sample id -> first sample id of its planned batch
        checking: list[Any] = [] if opts.skip_label_check else [None]
        self._label_check_images = min(LABEL_CHECK_IMAGES, sum(len(batch) for batch in mine))
        # A resumed run checks the clean records it already has: a run the check stopped must not pass by resuming.
        for records in journal.records(done_parts, 0):
            if not checking:  # skipped, or emptied once the check has decided
                break
            self._check_labels(checking, records, setup)

        def batches() -> Iterator[tuple[int, list[Any], list[Any]]]:
            loaded = load_planned(setup.dataset.images, [b for _, b in todo], opts.workers,
                                  pin_memory=self.device.type == "cuda")
            for (index, batch), (parts, skipped) in zip(todo, loaded):
                for i in batch:
                    current[i] = batch[0]
                yield index, parts, skipped

        def committed(index: int, skipped: list[Any]) -> None:
            journal.commit(mine[index][0], skipped)

        if hasattr(setup.adapter, "defer_checks"):
            setup.adapter.defer_checks = True
        loop = Loop(passes=self.passes, perturbations=perturbations, predict=setup.adapter.predict, score=score,
                    worker=HostWorker(inline=self.device.type != "cuda"), device=self.device, seed=opts.seed,
                    timing=timing,
                    batch_limit=opts.batch_size)
        with _stop_on_interrupt() as stopped:
            try:
                stream(_until(batches(), stopped), loop, committed)
            except BaseException:
                journal.salvage(self.out_dir / "records.parquet")  # what ran stays readable
                raise
        if stopped.is_set():
            raise RunInterrupted(f"interrupted: {len(journal.parts(world.rank))} batches are saved in "
                                 f"{self.out_dir}; run the same command with --resume to continue")
        if world.size > 1:
            world.barrier()
            if world.rank != 0:
                return None
        return self._finish(journal, timing, gallery, mine)

    def _check_labels(self, buffer: list[Any], records: dict[str, Any], setup: Any) -> None:
        """Collect the first clean records; once there are enough, look for a label-numbering mismatch."""
        buffer.append(records)
        seen = [r for r in buffer if r is not None]
        if sum(len(r["sample_id"]) for r in seen) < self._label_check_images:
            return
        buffer.clear()
        message = self.task.check_labels(seen, setup)
        if message:
            raise RunError(f"{self.opts.model}: {message}")

    def _prepare(self, perturbations: dict[str, Any]) -> dict[str, Any]:
        """The prepare phase: fit or collect, or reload what this run (or rank 0) already saved. One context
        serves them all (the background perturbations share one bank)."""
        from visionstress.perturbations import Perturbation, PrepareContext

        needing = [name for name, p in perturbations.items() if type(p).prepare is not Perturbation.prepare]
        self.prepared = dict(perturbations)
        if not needing:
            return self.prepared
        state_dir = self.out_dir / PREPARED_DIR
        context = PrepareContext(
            task=self.task.name, adapter=self.setup.adapter, batches=self._host_batches,
            severities={name: tuple(p.severity for p in self.passes if p.perturbation == name) for name in perturbations},
            seed=self.opts.seed, device=self.device, options=self.opts, state_dir=state_dir,
            class_names=self.setup.dataset.class_names, log=lambda message: None,
            category_ids=self.setup.dataset.info.get("category_ids", ()))
        done = state_dir / "prepared.json"
        ready = done.is_file()
        if not ready and self.world.rank == 0:
            state_dir.mkdir(parents=True, exist_ok=True)
        prepared, summaries = dict(perturbations), {}
        for name in needing:
            perturbation = perturbations[name]
            if not ready and self.world.rank == 0:
                prepared[name] = perturbation.prepare(context)
                summaries[name] = prepared[name].prepared_summary()
            else:
                prepared[name] = None
        if not ready and self.world.rank == 0 and summaries:
            tmp = done.with_name(done.name + ".tmp")
            tmp.write_text(json.dumps(summaries, default=str), encoding="utf-8")
            os.replace(tmp, done)
        if self.world.size > 1:
            self.world.barrier()
        for name in needing:
            if prepared[name] is None:
                prepared[name] = perturbations[name].load_prepared(state_dir, context)
        self.prepared = prepared
        return prepared

    def _configured(self, perturbation: Any) -> Any:
        """The perturbation with the run's settings (e.g. how geometric ones move boxes)."""
        box_warp = self.opts.get("box_warp")
        return perturbation.with_box_method(box_warp) if box_warp else perturbation

    def _examples(self, perturbations: dict[str, Any]) -> list[dict[str, Any]]:
        """Example sheets the report shows for families that draw them (background and cue probes)."""
        from visionstress.family_summaries import family_examples

        passes = [(perturbations[p.perturbation], p.severity) for p in self.passes if p.severity > 0]
        first = next(self._host_batches(), None)
        return [] if first is None else family_examples(passes, first, self.opts.seed, self.out_dir)

    def _host_batches(self) -> Iterator[Any]:
        """A fresh pass over the run's dataset for the prepare phase (host batches with targets)."""
        from visionstress.datasets import iterate_planned

        for batch, _ in iterate_planned(self.setup.dataset.images, self.opts.batch_size, self.opts.workers):
            if len(batch):
                yield batch

    def _finish(self, journal: Any, timing: Any, gallery: Any, mine: Any):
        from visionstress.family_summaries import SummaryContext, family_summaries
        from visionstress.report import write_report
        from visionstress.scorecard import SCHEMA_VERSION, Scorecard, environment_info

        opts, setup, world = self.opts, self.setup, self.world
        parts = journal.parts()
        evaluator = setup.evaluator
        if world.size > 1:  # the shards' state, absorbed in the canonical order into a fresh evaluator
            evaluator = self.task.setup(opts, self.device).evaluator
            journal.replay(lambda i, chunk: evaluator.absorb(self.passes[i].perturbation, self.passes[i].severity,
                                                              chunk), parts)
        skipped = [s for part in parts for s in part.skipped]
        images = sum(part.images for part in parts)
        if images == 0:
            raise RunError(f"{opts.data}: no image could be read ({len(skipped)} skipped); see the reasons with "
                           f"--strict")
        records_path = self.out_dir / "records.parquet"
        journal.merge(records_path, parts)
        results = evaluator.finalize()
        families = {p.perturbation: p.family for p in self.passes}
        rows = [_row(r, families, len(setup.dataset), images) for r in results.rows]
        summaries = self.task.summaries(results.rows, {k: v for k, v in families.items() if k != "clean"}, setup, opts)
        keep = {p.key for p in self.passes  # passes with a family summary keep their breakdowns (e.g. error types)
                if p.severity > 0 and self.prepared[p.perturbation].kind in ("data-aware", "model-aware")}
        breakdowns = {**self.task.breakdowns(results, setup, keep), "gallery": gallery.save(self.out_dir)}
        if self.examples:
            breakdowns["probe_examples"] = self.examples
        prepared = {name: p.prepared_summary() for name, p in self.prepared.items() if p.prepared_summary()}
        suite = self.suite.to_dict()
        for item in suite["perturbations"]:  # what produced each cell: compare names cells whose version changed
            perturbation = self.prepared[item["name"]]
            item["version"] = int(perturbation.version)
            if getattr(perturbation, "box_method", None) and opts.get("box_warp"):
                item["box_method"] = perturbation.box_method
        extra_families = {p.family for p in self.passes if p.severity > 0}
        if extra_families:
            from visionstress.records import read_records

            context = SummaryContext(task=self.task.name, records=None, rows=rows, statistics=self.task.statistics,
                                     main_metric=self.task.main_metric, class_names=setup.dataset.class_names,
                                     bootstrap=opts.bootstrap, seed=opts.seed, prepared=prepared, options=opts,
                                     breakdowns=breakdowns)
            context.records = _LazyFrame(lambda: read_records(records_path))
            summaries.update(family_summaries(sorted(extra_families), context))
        dataset = {**setup.dataset.info, "num_samples": images,
                   "skipped": [{"path": s["path"], "reason": s["reason"]} for s in skipped]}
        if setup.warnings is not None and setup.warnings():
            dataset["warnings"] = list(dataset.get("warnings", [])) + setup.warnings()
        data_config = dict(setup.data_config)
        for name, value in setup.extra.items():
            data_config[name] = value() if callable(value) else value
        loaded = setup.model
        card = Scorecard(
            schema_version=SCHEMA_VERSION,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            task=self.task.name,
            model={"spec": _shown_spec(str(opts.model)), "path": None if loaded.path is None else Path(loaded.path).name,
                   "sha256": loaded.sha256, "format": loaded.format,
                   "weights": None if opts.weights is None else Path(opts.weights).name},
            dataset=dataset, suite=suite, seed=opts.seed, data_config=data_config,
            environment=environment_info(self.device), results=rows, summaries=summaries, breakdowns=breakdowns,
            timing=timing.as_dict(), records_path=str(records_path.resolve()), prepared=prepared,
            run={"world_size": world.size, "resumed": bool(opts.resume), "options": _given(opts)},
        )
        if opts.get("skew"):
            card.skew = self._skew()
        card.save(self.out_dir)
        write_report(card, self.out_dir)
        return card

    def _skew(self) -> dict[str, Any]:
        """`--skew`: the preprocessing-skew section of visionstress.skew on this run's model and images."""
        from visionstress.skew import read_cells_file, run_skew

        opts = self.opts
        samples, config, extra = self.task.skew_inputs(self.setup)
        result = run_skew(self.setup.model, config, samples, self.setup.dataset.class_names, task=self.task.name,
                          knobs=opts.skew_knobs, cells=None if opts.skew_cells is None else read_cells_file(opts.skew_cells),
                          device=self.device, amp=opts.amp, batch_size=opts.batch_size, workers=opts.workers,
                          bootstrap=opts.bootstrap, seed=opts.seed, strict=opts.strict, **extra)
        return result.section()


def _row(row: Any, families: dict[str, str], listed: int, images: int) -> dict[str, Any]:
    out = {"perturbation": row.perturbation, "family": families.get(row.perturbation, row.perturbation),
           "severity": row.severity, "metrics": row.metrics, "ci": {k: list(v) for k, v in row.ci.items()}}
    if getattr(row, "clean_same_images", None):  # scored on a subset: the clean metrics on the same images
        out["clean_same_images"] = {"metrics": row.clean_same_images,
                                    "ci": {k: list(v) for k, v in (row.clean_same_images_ci or {}).items()}}
    return out


class _LazyFrame:
    """The run's records, read from Parquet only if a family summary asks for them."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load
        self._frame = None

    def __getattr__(self, name: str) -> Any:
        if self._frame is None:
            self._frame = self._load()
        return getattr(self._frame, name)

    def __getitem__(self, key: Any) -> Any:
        if self._frame is None:
            self._frame = self._load()
        return self._frame[key]


def _until(batches: Iterator[Any], stopped: threading.Event) -> Iterator[Any]:
    for item in batches:
        yield item
        if stopped.is_set():
            return


@contextmanager
def _stop_on_interrupt():
    """The first Ctrl-C asks the loop to stop after the current batch (its work is saved); a second one
    interrupts at once."""
    stopped = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def handler(signum: int, frame: Any) -> None:
        if stopped.is_set():
            raise KeyboardInterrupt
        stopped.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGINT, previous)


def _device(text: Any) -> Any:
    """The torch device `--device` names, refused before any work when this machine does not have it."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise RunError(f"--device {text}: not a torch device ({str(exc).splitlines()[0]}); e.g. cpu, cuda, "
                       f"cuda:1") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RunError(f"--device {text}: CUDA is not available on this machine (no GPU, or a CPU-only build "
                           f"of torch); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RunError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                           f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def _report_name(model: str, data: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(model.split(':')[-1]).stem}-{data.name}").strip("-")
    return f"{stem}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _out_dir(out: Path | None, name: str | None, model: str, data: Path) -> Path:
    out_dir = Path(out) if out is not None else Path("reports") / (name or _report_name(model, data))
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"{out_dir}: --out is an existing file; give a folder")
    return out_dir


@contextmanager
def _locked(out_dir: Path, world: Any):
    """A lock file in the output folder, so that a second run on the same folder refuses instead of
    silently overwriting the first; released when the process ends, however it ends. Rank 0 holds it."""
    if world.rank != 0:
        yield None
        return
    from filelock import FileLock, Timeout

    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    lock = FileLock(str(out_dir / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunError(f"{out_dir}: another visionstress run is writing into this folder; wait for it or give "
                       f"another --out") from None
    try:
        yield lock
    finally:
        lock.release()
        if created:
            _remove_if_unused(out_dir)


def _remove_if_unused(out_dir: Path) -> None:
    """A folder this run created and left holding only its lock (it failed before writing anything: a
    model that would not load) is removed, so failed attempts do not pile up empty folders in reports/."""
    try:
        if {p.name for p in out_dir.iterdir()} <= {LOCK}:
            (out_dir / LOCK).unlink(missing_ok=True)
            out_dir.rmdir()
    except OSError:
        pass  # another process wrote there meanwhile, or it is gone: leave it as it is


def _prepare_out_dir(out_dir: Path, opts: Any, world: Any) -> None:
    """Refuse a folder that holds another run unless --overwrite (then clear it) or --resume."""
    if world.rank != 0:
        world.barrier()
        return
    existing = [name for name in _RUN_FILES + _RUN_DIRS if (out_dir / name).exists()]
    if opts.resume and opts.overwrite:
        raise RunError("--resume and --overwrite contradict each other: resume continues the run in --out, "
                       "overwrite deletes it")
    if existing and not opts.resume:
        if not opts.overwrite:
            raise RunError(f"{out_dir}: holds another run's files ({', '.join(existing)}); --resume continues it, "
                           f"--overwrite replaces it, or give another --out")
        for name in existing:
            target = out_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    if opts.resume and not (out_dir / MANIFEST).is_file():
        raise RunError(f"{out_dir}: nothing to resume (no {MANIFEST}); run without --resume")
    if world.size > 1:
        world.barrier()


def _manifest(task: Any, opts: Any, setup: Any, suite: Any, passes: Any) -> dict[str, Any]:
    """What must match for a resume: the model's bytes (for a factory or random init without a file, its
    parameters and source), the images, the suite, the seed, the batching, and what decides each record's
    meaning: the preprocessing and task settings (`data_config`: mean/std, detection's box moving, score
    threshold, label map, canvas), and how background swaps grow and choose object masks."""
    scoring = {k: v for k, v in (setup.data_config or {}).items() if not str(k).startswith("unmapped")}
    scoring.update(mask_dilation=opts.get("mask_dilation"), background_classes=opts.get("background_classes"))
    manifest = {"task": task.name, "model": str(opts.model), "model_sha256": setup.model.sha256,
                "dataset_fingerprint": setup.dataset.info.get("fingerprint"), "suite": suite.to_dict(),
                "seed": opts.seed, "batch_size": opts.batch_size, "limit": opts.limit,
                "scoring": json.loads(json.dumps(scoring, default=str))}  # as the saved manifest reads back
    if setup.model.sha256 is None:  # no file to hash: a factory or a random init
        from visionstress.models.loading import model_state_digest

        manifest["model_state"] = model_state_digest(setup.model)
    return manifest


def _check_manifest(out_dir: Path, manifest: dict[str, Any], opts: Any, world: Any) -> None:
    path = out_dir / MANIFEST
    if opts.resume and path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        differences = [f"{key}: {saved.get(key)!r} then, {value!r} now" for key, value in manifest.items()
                       if saved.get(key) != value and key not in ("suite", "scoring")
                       and (key in saved or key != "model_state")]
        if "scoring" in saved:  # a run started before it was recorded resumes as before
            before, now = saved["scoring"] or {}, manifest["scoring"]
            differences += [f"{key}: {before.get(key)!r} then, {now.get(key)!r} now"
                            for key in sorted(set(before) | set(now), key=str) if before.get(key) != now.get(key)]
        if saved.get("suite") != manifest["suite"]:
            differences.append("suite: its perturbations, severities or seed differ")
        if differences:
            raise RunError(f"{out_dir}: cannot resume: the run there differs from this command ("
                           + "; ".join(differences) + "); use the same command, or --overwrite to start again")
        return
    if world.rank == 0:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def _given(opts: Any) -> dict[str, Any]:
    """The options the user set (JSON-ready, paths as file names): how the run was asked for."""
    out = {}
    for name in sorted(opts.given):
        value = opts[name]
        if callable(value) or name in ("progress",):
            continue
        if isinstance(value, Path):
            value = value.name
        out[name] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    return out


def _shown_spec(spec: str) -> str:
    """A model spec without the machine: a file path keeps only its file name."""
    if "/" in spec or "\\" in spec:
        return Path(spec).name
    return spec
