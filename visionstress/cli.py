"""The `visionstress` command line: a thin layer over the library."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Stress-test computer-vision models against the perturbations the world applies.")
console = Console()
if not console.is_terminal and "COLUMNS" not in os.environ:  # a CI log: wide enough that tables keep every column
    console = Console(width=160)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        import visionstress

        console.print(f"visionstress {visionstress.__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """Stress-test computer-vision models against the perturbations the world applies."""
    import warnings

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        # A library warning is a note for the user, not a source listing.
        err_console.print(Text.assemble(("note: ", "yellow"), str(message)), soft_wrap=True)

    warnings.showwarning = one_line


def _fail(message: str) -> None:
    # Text, not markup: paths and names may contain brackets; soft_wrap keeps paths whole.
    err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    raise typer.Exit(code=2)


def _levels_text(p) -> str:
    """A perturbation's severity table for `list`: `sigma: 1 | 2 | 3 | 4 | 6` for one named value, a line
    per severity (`1: radius=10, sigma=3`) for several, `single level: ...` for a single-level one."""
    described = [p.describe_level(level) for level in p.severities]
    if p.max_severity == 1:
        return f"single level: {described[0]}"
    if p.fields is not None and len(p.fields) == 1 and not p.fields[0].many:
        return f"{p.fields[0].name}: " + " | ".join(described)
    return "\n".join(f"{s}: {text}" for s, text in enumerate(described, start=1))


@app.command("list")
def list_command(
    family: Optional[str] = typer.Option(None, "--family", "-f", help="Only this family (e.g. blur, camera)."),
    pattern: Optional[str] = typer.Argument(None, help="Glob over names, e.g. '*blur'."),
) -> None:
    """The perturbation catalogue as a table: family, kind, implementation version, severity levels."""
    from visionstress.perturbations import get_perturbation, list_perturbations

    names = list_perturbations(pattern=pattern, family=family)
    if not names:
        import difflib

        families = sorted({get_perturbation(n).family for n in list_perturbations()})
        close = difflib.get_close_matches(family or "", families, n=1, cutoff=0.5) if family else []
        hint = f"; did you mean --family {close[0]}?" if close else f"; families: {', '.join(families)}"
        _fail(f"no perturbation matches (family={family!r}, pattern={pattern!r}){hint}")
    table = Table(title=f"{len(names)} perturbations", show_lines=False)
    table.add_column("name", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("v", justify="right")  # implementation version
    table.add_column("severity levels", overflow="fold")
    table.add_column("description", overflow="fold")
    for name in sorted(names, key=lambda n: (get_perturbation(n).family, n)):
        p = get_perturbation(name)
        table.add_row(p.name, p.family, p.kind, str(p.version), _levels_text(p), p.description)
    console.print(table)


def _parse_severities(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"--severities must be comma-separated integers from 1 to 5, got {text!r}")
    bad = [v for v in values if not 1 <= v <= 5]
    if bad or not values:
        _fail(f"--severities must be comma-separated integers from 1 to 5, got {text!r}")
    return values


@app.command("show")
def show_command(
    image: Path = typer.Argument(..., help="The image to perturb."),
    perturbations: str = typer.Option("*", "--perturbations", "-p",
                                      help="Glob or comma-separated names, e.g. '*blur' or 'fog,snow'."),
    severities: str = typer.Option("1,3,5", "--severities", "-s", help="Comma-separated severities (1-5)."),
    annotations: Optional[Path] = typer.Option(None, "--annotations", "-a",
                                               help="COCO JSON holding boxes for this image; drawn and moved."),
    output: Path = typer.Option(Path("reports/show.png"), "--output", "-o", help="Where to write the PNG."),
    seed: int = typer.Option(0, help="Seed for the per-sample random draws."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Object mask of IMAGE (non-zero = object) for the "
                                        "background and cue perturbations; else --annotations' polygons, or GrabCut "
                                        "on their boxes."),
    patch_from: Optional[Path] = typer.Option(None, "--patch-from", help="A report folder whose fitted patches "
                                              "adversarial_patch (and random_patch) draw on the image."),
) -> None:
    """A contact sheet of IMAGE under each perturbation x severity."""
    from visionstress.contact_sheet import (AnnotationError, contact_sheet, prepare_on_image, read_coco_boxes,
                                            read_coco_foreground)
    from visionstress.foreground import ForegroundError, read_foreground_mask
    from visionstress.images import ImageReadError, read_image
    from visionstress.perturbations import get_perturbation, list_perturbations

    levels = _parse_severities(severities)
    names: list[str] = []
    named: set[str] = set()  # asked for by name, not through a glob: refusing one is an error
    for part in (p.strip() for p in perturbations.split(",") if p.strip()):
        if any(ch in part for ch in "*?["):
            matched = list_perturbations(pattern=part)
            if not matched:
                _fail(f"no perturbation matches {part!r}; `visionstress list` shows them all")
            names.extend(n for n in matched if n not in names)
        else:
            try:
                get_perturbation(part)
            except KeyError as exc:
                _fail(str(exc.args[0]))
            names.append(part)
            named.add(part)
    try:
        pixels = read_image(image)
        boxes, categories = (None, {}) if annotations is None else read_coco_boxes(annotations, image.name)
        foreground = None
        if any(get_perturbation(n).needs_foreground for n in names):
            if mask is not None:
                foreground = read_foreground_mask(mask, tuple(pixels.shape[-2:]))
            elif annotations is not None:
                foreground = read_coco_foreground(annotations, image.name, pixels)
    except (ImageReadError, AnnotationError, ForegroundError) as exc:
        _fail(str(exc))
    fitted, names = _prepared_for_show(names, patch_from, levels, explicit=set(named))
    ready, refused = prepare_on_image(names, pixels, foreground, boxes)
    errors = [f"{n} {why}" for n, why in refused.items() if n in named]
    if errors:
        _fail("; ".join(errors) + (" (drop --annotations or these perturbations)" if boxes is not None else ""))
    if not ready:
        _fail("no perturbation left to draw: " + "; ".join(f"{n} {why}" for n, why in refused.items()))
    ready = [fitted.get(p.name, p) for p in ready]  # the adversarial ones draw the report's fitted patches
    try:
        sheet = contact_sheet(pixels, ready, levels, boxes=boxes, category_names=categories, seed=seed,
                              device=device, foreground=foreground)
    except ValueError as exc:  # a perturbation that cannot apply to this image says which and why
        _fail(f"{image}: {exc}")
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    console.print(f"wrote {output} ({len(ready)} perturbations x severities {','.join(map(str, levels))})")
    if refused:
        console.print(Text(f"left out {len(refused)}: " + "; ".join(f"{n} ({why})" for n, why in refused.items())),
                      soft_wrap=True)


def _prepared_for_show(names: list[str], patch_from: Path | None, levels: list[int], explicit: set[str]):
    """Perturbations fitted on a model (the adversarial patch) draw the patches of `--patch-from`; without it
    they are left out of a glob (with a note) and refused when named. The control draws a report's own
    noise when it has one, else its own."""
    from visionstress.options import OptionError
    from visionstress.patches import PatchFitError, from_report
    from visionstress.perturbations import get_perturbation

    prepared = {}
    for name in names:
        p = get_perturbation(name)
        if patch_from is None or p.family != "adversarial":
            continue
        try:
            prepared[name] = from_report(p, patch_from, levels)
        except (OptionError, PatchFitError) as exc:
            if p.kind == "model-aware":
                _fail(str(exc))
    needs = [n for n in names if get_perturbation(n).kind == "model-aware" and n not in prepared]
    named = [n for n in needs if n in explicit]
    if named:
        _fail(f"{', '.join(named)} needs state fitted on a model: add --patch-from REPORT (a report folder of a "
              "run with the adversarial suite)")
    if needs:
        console.print(f"left out {', '.join(needs)} (fitted on a model: add --patch-from REPORT to draw it)")
    kept = [n for n in names if n not in needs]
    if not kept:
        _fail("nothing to show")
    return prepared, kept


_GROUPS = {"model": "Model", "data": "Data", "run": "Run", "output": "Output"}


def _cli_parameters() -> list[inspect.Parameter]:
    """One typer option per declared run option (visionstress.options), so the command line always
    offers exactly what `visionstress.run` accepts: booleans are plain switches, values that need parsing
    (e.g. --canvas 640x640) arrive as text and are converted by the option itself."""
    from visionstress.options import all_options

    parameters = []
    for option in all_options(exposed_only=True):
        decls = [option.flag] + ([option.short] if option.short else [])
        panel = _GROUPS.get(option.group, option.group.capitalize())
        tasks = "" if option.tasks is None or len(option.tasks) > 2 else f" [{'/'.join(sorted(option.tasks))}]"
        if option.kind is bool:
            annotation, default = bool, bool(option.default)
        elif option.multiple:
            annotation, default = list[str], []
        elif option.kind in (int, float) and option.default is not None:
            annotation, default = option.kind, option.default
        elif option.kind in (int, float, Path):
            annotation, default = Optional[option.kind], option.default
        else:
            annotation, default = Optional[str], None if option.default is None else str(option.default)
        metavar = "" if option.kind is bool else option.metavar  # a switch takes no value: show none
        info = typer.Option(default, *decls, help=option.help + tasks, rich_help_panel=panel,
                            metavar=metavar, show_default=option.default not in (None, (), False))
        parameters.append(inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                            annotation=annotation))
    return parameters


def run_command(**given: Any) -> None:
    """Stress a saved model on a dataset and write its robustness scorecard (no arguments: the bundled demo)."""
    from visionstress.options import OptionError, all_options
    from visionstress.runner import RunInterrupted, run

    defaults = {o.name: o.default for o in all_options(exposed_only=True)}
    chosen = {k: v for k, v in given.items() if v not in (None, [], ()) and v != defaults.get(k)}
    with _Progress(console) as progress:
        try:
            card = run(**chosen, progress=progress)
        except RunInterrupted as exc:
            progress.close()
            err_console.print(Text(str(exc), style="yellow"), soft_wrap=True)
            raise typer.Exit(code=130)
        except KeyboardInterrupt:
            progress.close()
            _fail("interrupted; the batches finished so far are saved: run the same command with --resume to continue")
        except (OptionError, ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
            progress.close()
            _fail(str(exc))
    if card is not None:
        _print_summary(card)


run_command.__signature__ = inspect.Signature(_cli_parameters())  # type: ignore[attr-defined]
run_command.__annotations__ = {p.name: p.annotation for p in run_command.__signature__.parameters.values()}
app.command("run")(run_command)


@app.command("skew")
def skew_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="As for `visionstress run`. Omit with --data to "
                                        "use the bundled demo."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="ImageFolder directory, or a .csv/.json list of "
                                        "path,label; detection: a COCO instances JSON."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="State dict (.pth/.pt/.safetensors)."),
    task: str = typer.Option("classification", help="classification, segmentation or detection."),
    images: Optional[Path] = typer.Option(None, "--images", help="Segmentation: the images folder. Detection: the "
                                          "images root of the COCO JSON (default: beside it)."),
    canvas: Optional[str] = typer.Option(None, "--canvas", help="Detection: letterbox every image into HxW as "
                                         "`visionstress run --canvas` does (the reference cell); boxes are "
                                         "mapped back."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help="Detection: model label -> category id, as for "
                                            "`visionstress run`."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Segmentation: folder of class-index mask PNGs."),
    ignore_index: int = typer.Option(255, "--ignore-index", help="Segmentation: mask value that is not scored."),
    class_names: Optional[Path] = typer.Option(None, "--class-names", help="One class name per line, in model index order."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Build the architecture with this many outputs."),
    data_config: Optional[Path] = typer.Option(None, "--data-config", help="YAML/JSON preprocessing (the reference cell)."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Model input side in pixels."),
    resize: Optional[int] = typer.Option(None, "--resize", help="Shorter side before the centre crop."),
    interpolation: Optional[str] = typer.Option(None, "--interpolation", help="bilinear, bicubic or nearest."),
    mean: Optional[str] = typer.Option(None, "--mean", help="e.g. 0.485,0.456,0.406"),
    std: Optional[str] = typer.Option(None, "--std", help="e.g. 0.229,0.224,0.225"),
    channel_order: Optional[str] = typer.Option(None, "--channel-order", help="RGB or BGR."),
    skew_knobs: Optional[str] = typer.Option(None, "--skew-knobs", help="Comma-separated knobs of the catalogue "
                                             "(decoder, resize_backend, interpolation, crop, input_size, channel_order, "
                                             "normalization, jpeg, exif, combinations), all (default) or none."),
    skew_cells: Optional[Path] = typer.Option(None, "--skew-cells", help="YAML list of cells knob=value[,knob=value] "
                                              "instead of the catalogue."),
    serving: Optional[str] = typer.Option(None, "--serving", help="Your serving preprocessing, package.module:function "
                                          "(image path -> model input [C,H,W], normalised): checked for parity."),
    serving_model: Optional[Path] = typer.Option(None, "--serving-model", help="An export of the same model (e.g. "
                                                 "model.onnx) checked for parity with it."),
    min_agreement: float = typer.Option(1.0, "--min-agreement", help="Serving parity fails (exit 1) below this "
                                        "share of images agreeing with the reference."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b"),
    workers: int = typer.Option(2, help="DataLoader workers decoding and resizing images."),
    amp: bool = typer.Option(False, "--amp", help="bf16 autocast for the model."),
    limit: Optional[int] = typer.Option(None, help="Only the first N images."),
    seed: int = typer.Option(0, help="Seed of the bootstrap resamples."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: reports/<name>-skew)."),
    strict: bool = typer.Option(False, "--strict", help="A file the reference cannot read is an error, not a skip."),
    trust_model: bool = typer.Option(False, "--trust-model", help="Allow model files that execute code."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the metric intervals (0: none)."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level after the Holm adjustment over the cells."),
) -> None:
    """Preprocessing skew: the model under the ways serving differs from its declared preprocessing, and
    the parity of your serving path (no arguments: the bundled demo). Exit 1 when serving parity fails."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from visionstress.skew import skew

    overrides = {"input_size": input_size, "resize": resize, "interpolation": interpolation,
                 "mean": mean, "std": std, "channel_order": channel_order}
    columns = (TextColumn("[bold]skew"), BarColumn(), MofNCompleteColumn(), TextColumn("predictions"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task_id = bar.add_task("skew", total=None)
        try:
            result = skew(model=model, data=data, task=task, weights=weights, trust_model=trust_model,
                          num_classes=num_classes, data_config=data_config, data_config_overrides=overrides,
                          class_names=class_names, images=images, masks=masks, ignore_index=ignore_index,
                          canvas=None if canvas is None else _canvas_option(canvas), label_map=label_map,
                          knobs=skew_knobs, cells_file=skew_cells, serving=serving,
                          serving_model=serving_model, min_agreement=min_agreement, device=device,
                          batch_size=batch_size, workers=workers, amp=amp, limit=limit, seed=seed, out=out,
                          strict=strict, bootstrap=bootstrap, alpha=alpha,
                          progress=lambda done, total: bar.update(task_id, completed=done, total=total))
        except KeyboardInterrupt:
            _fail("interrupted")
        except (ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
            _fail(str(exc))
    _print_skew(result)
    if result.parity is not None and not result.parity.passed:
        raise typer.Exit(code=1)


def _canvas_option(text: str) -> tuple[int, int]:
    from visionstress.tasks.detection import _canvas

    try:
        return _canvas(text)
    except ValueError as exc:
        _fail(f"--canvas {text!r}: {exc}")


def _print_skew(result) -> None:
    from visionstress.skew.outputs import detectable_line, fmt, fmt_delta, fmt_interval, fmt_p

    metric, rows = result.metric, result.rows
    reference = rows[0]
    console.print(f"[bold]reference[/] {metric} {fmt(reference['metrics'][metric])} "
                  f"[{fmt_interval(reference['ci'].get(metric))}] on {len(result.paths)} images "
                  f"({', '.join(f'{k}={v}' for k, v in reference['knobs'].items())})", highlight=False)
    table = Table(title=f"{metric} per preprocessing cell (p: {result.test}, Holm)")
    for column, justify in (("cell", "left"), (metric, "right"), ("change", "right"), ("change 95% CI", "right"),
                            ("agreement", "right"), ("p (Holm)", "right"), ("significant", "center")):
        table.add_column(column, justify=justify, overflow="fold")
    for row in rows[1:]:
        delta = row["delta"][metric]
        style = "red" if row["significant"] and delta < 0 else ("green" if row["significant"] else "")
        table.add_row(Text(f"{row['label']} ({row['cell']})" if row["label"] else row["cell"]),
                      fmt(row["metrics"][metric]), Text(fmt_delta(delta), style=style),
                      fmt_interval(row["delta_ci"].get(metric), True), fmt(row["agreement"]), fmt_p(row["p_adjusted"]),
                      Text("yes" if row["significant"] else "", style=style))
    console.print(table)
    detectable = detectable_line(result.section()["summary"]["detectable"])
    if detectable:
        console.print(detectable, highlight=False, soft_wrap=True)
    for note in result.notes:
        err_console.print(Text.assemble(("note: ", "yellow"), note), soft_wrap=True)
    if result.parity is not None:
        console.print(Text(result.parity.message, style="green" if result.parity.passed else "bold red"),
                      soft_wrap=True)
    if result.out_dir is not None:
        console.print(f"scorecard: {result.out_dir / 'scorecard.json'}", highlight=False)



class _Progress:
    """Progress of a run: a live bar on a terminal; elsewhere (CI logs) a plain line every `LOG_EVERY`
    seconds, so a long run never looks dead. Both show the known total from the start, the rate once
    there is one to measure, and an estimate of the time left."""

    LOG_EVERY = 30.0

    def __init__(self, console: Console) -> None:
        self.console = console
        self.start = self.last_log = 0.0
        self.calls = 0
        self.bar: Any = None
        self.task_id: Any = None

    def __enter__(self) -> _Progress:
        import time

        self.start = self.last_log = time.perf_counter()
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]stressing"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("predictions"), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                console=self.console, transient=True)
            self.bar.__enter__()
            self.task_id = self.bar.add_task("run", total=None, rate="")
        return self

    def __call__(self, done: int, total: int) -> None:
        import time

        now = time.perf_counter()
        elapsed = now - self.start
        rate = f"{done / elapsed:,.0f} img/s" if elapsed > 1.0 and done else ""
        self.calls += 1
        if self.bar is not None:
            self.bar.update(self.task_id, completed=done, total=total, rate=rate)
        elif self.calls == 0 or now - self.last_log >= self.LOG_EVERY or done == total:
            self.last_log = now
            left = (total - done) / (done / elapsed) if done and elapsed > 1.0 and done < total else None
            eta = "" if left is None else f", about {_duration(left)} left"
            self.console.print(f"stressing: {done:,}/{total:,} predictions ({100 * done / max(total, 1):.0f}%)"
                               f"{', ' + rate if rate else ''}{eta}", highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


@app.command("report")
def report_command(
    path: Path = typer.Argument(..., help="A scorecard.json, or the report folder holding one."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for report.html (default: beside the scorecard)."),
) -> None:
    """Write the self-contained HTML report (report.html) of a scorecard."""
    from visionstress.report import write_report

    try:
        target = write_report(path, out)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    console.print(f"report: {target}", highlight=False)


def _print_summary(card) -> None:
    """Headline, then the task's main metric per perturbation x severity (one row per perturbation)."""
    from visionstress.tasks import get_task

    task = get_task(card.task)
    metric, second = task.main_metric, task.secondary_metric
    clean = next(r for r in card.results if r["perturbation"] == "clean")
    interval = clean["ci"].get(metric)
    summary = card.summaries or {}
    console.print(f"[bold]{card.model['spec']}[/] on {card.dataset['path']} ({card.dataset['num_samples']} images, "
                  f"{card.task}, suite {card.suite['name']})", highlight=False)
    line = f"clean {metric} {clean['metrics'][metric]:.3f}"
    if interval and None not in interval:
        line += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    for key, label in (("mpc", "mean under perturbation (mPC)"), ("rpc", "relative (rPC)"), ("mce", "mCE")):
        value = summary.get(key)
        if isinstance(value, (int, float)):
            line += f" · {label} {value:.3f}"
    console.print(line, highlight=False)
    severities = sorted({r["severity"] for r in card.results if r["severity"] > 0})
    table = Table(title=f"{metric} by perturbation and severity")
    table.add_column("perturbation", no_wrap=True)  # a name is never cut, however narrow the terminal
    table.add_column("family", no_wrap=True)
    for severity in severities:
        table.add_column(f"s{severity}", justify="right")
    table.add_column(f"{second} (mean)", justify="right")
    by_name: dict[str, dict[int, dict]] = {}
    for row in card.results:
        if row["perturbation"] != "clean":
            by_name.setdefault(row["perturbation"], {})[row["severity"]] = row
    for name, rows in by_name.items():
        family = next(iter(rows.values()))["family"]
        cells = [f"{rows[s]['metrics'][metric]:.3f}" if s in rows else "" for s in severities]
        values = [r["metrics"].get(second) for r in rows.values()]
        values = [v for v in values if isinstance(v, float) and v == v]
        table.add_row(name, family, *cells, f"{sum(values) / len(values):.3f}" if values else "-")
    console.print(table)
    for warning in card.dataset.get("warnings") or []:
        console.print(Text.assemble(("warning: ", "yellow"), warning), soft_wrap=True)
    skipped = card.dataset.get("skipped") or []
    if skipped:
        console.print(f"[yellow]{len(skipped)} unreadable file(s) skipped[/] (listed in the scorecard)")
    console.print(f"scorecard: {Path(card.records_path).parent / 'scorecard.json'}", highlight=False)


@app.command("compare")
def compare_command(
    reference: Path = typer.Argument(..., help="The reference scorecard (scorecard.json or its report folder)."),
    candidates: list[Path] = typer.Argument(..., help="One or more scorecards, each compared with the reference."),
    fail_on: list[str] = typer.Option([], "--fail-on", help="Gate METRIC\\[@PERTURBATION\\[/SEVERITY]]:THRESHOLD, "
                                      "repeatable, e.g. top1:-1pp (clean, mPC and mPC per family), top1@*:-1pp "
                                      "(every perturbed cell), ece@fog/5:+2pp, AP@*blur:-2%, top1@mPC:-1pp. "
                                      "Default: the task's default gates (top1:-1pp, AP:-1pp, mIoU:-1pp)."),
    no_gates: bool = typer.Option(False, "--no-gates", help="No gates at all (just the comparison; exit 0)."),
    allow_inconclusive: bool = typer.Option(False, "--allow-inconclusive", help="Let a gate pass, with a "
                                            "warning, when the data are too few to tell (inconclusive)."),
    force: bool = typer.Option(False, "--force", help="Compare the shared cells of scorecards with different "
                               "datasets, suites or seeds instead of refusing."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level after the Holm adjustment."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Paired bootstrap resamples (0: McNemar tests only)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resamples."),
    show_all: bool = typer.Option(False, "--all", help="Show every cell, not only clean, summaries and the cells "
                                  "that changed significantly or did not pass a gate."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the comparison as Markdown."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the comparison as JSON."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write the comparison as a self-contained HTML page."),
) -> None:
    """Compare scorecards cell by cell with paired tests. Exit 1 when a gate fails or is inconclusive (too
    few images to tell; --allow-inconclusive lets it pass), 0 otherwise, 2 on errors."""
    import json
    import warnings

    from visionstress.comparison import CompareWarning, ComparisonSet, compare
    from visionstress.report.compare_html import render_compare_html
    from visionstress.report.compare_view import comparison_markdown, display_rows, gate_line, model_label, skew_rows

    if no_gates and fail_on:
        _fail("--no-gates and --fail-on contradict each other; give one of them")
    gates = () if no_gates else (fail_on or None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompareWarning)  # the notes are printed below
            result = compare(reference, *candidates, gates=gates, force=force, alpha=alpha, bootstrap=bootstrap,
                             seed=seed, allow_inconclusive=allow_inconclusive)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    comparisons = result.comparisons if isinstance(result, ComparisonSet) else [result]
    for comparison in comparisons:
        console.print(Text.assemble(("candidate ", "bold"), model_label(comparison.candidate),
                                    f" ({comparison.candidate_source})", ("  vs  reference ", "bold"),
                                    model_label(comparison.reference), f" ({comparison.reference_source})"))
        for line in comparison.differences:
            err_console.print(Text.assemble(("compared despite: ", "yellow"), line), soft_wrap=True)
        for line in comparison.notes:
            err_console.print(Text.assemble(("note: ", "yellow"), line), soft_wrap=True)
        table = Table(title=None if show_all else "clean, summaries, and significant or gated changes")
        for column, justify in (("cell", "left"), ("metric", "left"), ("old", "right"), ("new", "right"),
                                ("delta", "right"), ("p (Holm)", "right"), ("MDE", "right"),
                                ("significant", "center"), ("gate", "left")):
            table.add_column(column, justify=justify, overflow="fold", no_wrap=column in ("cell", "metric"))
        for row in display_rows(comparison, show_all):
            style = {"better": "green", "worse": "red"}.get(row.tone, "")
            name = row.name + (" (perturbation changed)" if row.changed else "")
            table.add_row(Text(name), Text(row.metric), Text(row.old), Text(row.new), Text(row.delta, style=style),
                          Text(row.p_adjusted), Text(row.mde), Text(row.significant, style=style),
                          Text(row.gate, style="bold red"))
        console.print(table)
        skew = skew_rows(comparison)
        if skew:
            metric = comparison.skew.metric
            table = Table(title=f"preprocessing skew: each model's change of {metric} from its reference")
            for column in ("cell", "old", "new", "change old", "change new", "difference", "agreement old",
                           "agreement new"):
                table.add_column(column, justify="left" if column == "cell" else "right", overflow="fold")
            for row in skew:
                table.add_row(Text(row.cell), row.old, row.new, row.old_delta, row.new_delta, row.difference,
                              row.old_agreement, row.new_agreement)
            console.print(table)
        for gate in comparison.gates:
            style = {"pass": "green", "fail": "bold red"}.get(gate.outcome, "bold yellow")
            console.print(Text(gate_line(gate), style=style), soft_wrap=True)
    try:
        if markdown is not None:
            markdown.parent.mkdir(parents=True, exist_ok=True)
            markdown.write_text(comparison_markdown(result, show_all), encoding="utf-8")
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        if html is not None:
            html.parent.mkdir(parents=True, exist_ok=True)
            html.write_text(render_compare_html(result), encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write the comparison: {exc}")
    if not result.passed:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
