"""The `visionstress` command line: a thin layer over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Stress-test computer-vision models against the perturbations the world applies.")
console = Console()
err_console = Console(stderr=True)


def _fail(message: str) -> None:
    # Text, not markup: paths and names may contain brackets; soft_wrap keeps paths whole.
    err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    raise typer.Exit(code=2)


def _format_level(level: object) -> str:
    if isinstance(level, float):
        return f"{level:g}"
    if isinstance(level, (tuple, list)):
        return "(" + ", ".join(_format_level(v) for v in level) + ")"
    return str(level)


@app.command("list")
def list_command(
    family: Optional[str] = typer.Option(None, "--family", "-f", help="Only this family (e.g. blur, camera)."),
    pattern: Optional[str] = typer.Argument(None, help="Glob over names, e.g. '*blur'."),
) -> None:
    """The perturbation catalogue as a table."""
    from visionstress.perturbations import get_perturbation, list_perturbations

    names = list_perturbations(pattern=pattern, family=family)
    if not names:
        _fail(f"no perturbation matches (family={family!r}, pattern={pattern!r})")
    table = Table(title=f"{len(names)} perturbations", show_lines=False)
    for column in ("name", "family", "kind", "severities 1..5", "description"):
        table.add_column(column, overflow="fold")
    for name in sorted(names, key=lambda n: (get_perturbation(n).family, n)):
        p = get_perturbation(name)
        levels = " | ".join(_format_level(level) for level in p.severities)
        table.add_row(p.name, p.family, p.kind, levels, p.description)
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
    patch_from: Optional[Path] = typer.Option(None, "--patch-from", help="A report folder whose fitted patches "
                                              "adversarial_patch (and random_patch) draw on the image."),
) -> None:
    """A contact sheet of IMAGE under each perturbation x severity."""
    from visionstress.contact_sheet import AnnotationError, contact_sheet, read_coco_boxes
    from visionstress.images import ImageReadError, read_image
    from visionstress.perturbations import get_perturbation, list_perturbations

    levels = _parse_severities(severities)
    names: list[str] = []
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
    try:
        pixels = read_image(image)
        boxes, categories = (None, {}) if annotations is None else read_coco_boxes(annotations, image.name)
    except (ImageReadError, AnnotationError) as exc:
        _fail(str(exc))
    if boxes is not None:
        unsupported = [n for n in names if "boxes" not in get_perturbation(n).targets]
        if unsupported:
            _fail(f"these perturbations cannot move boxes: {', '.join(unsupported)}; drop --annotations or them")
    prepared, names = _prepared_for_show(names, patch_from, levels,
                                         explicit={p.strip() for p in perturbations.split(",")})
    sheet = contact_sheet(pixels, names, levels, boxes=boxes, category_names=categories, seed=seed, device=device,
                          prepared=prepared)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    console.print(f"wrote {output} ({len(names)} perturbations x severities {','.join(map(str, levels))})")


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


@app.command("run")
def run_command(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="torchvision:NAME, timm:NAME, package.module:function, "
                                        "or a .pt2 / TorchScript / .onnx file. Omit with --data to run the bundled demo."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="ImageFolder directory, or a .csv/.json list of path,label."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="State dict (.pth/.pt/.safetensors), loaded with weights_only."),
    task: str = typer.Option("classification", help="classification, detection or segmentation."),
    images: Optional[Path] = typer.Option(None, "--images", help="Detection: images root of a COCO JSON (default: "
                                          "beside it). Segmentation: the images folder."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Segmentation: folder of class-index mask PNGs "
                                         "(same stems as the images)."),
    ignore_index: int = typer.Option(255, "--ignore-index", help="Segmentation: mask value that is not scored."),
    canvas: Optional[str] = typer.Option(None, "--canvas", help="Detection: letterbox every image into HxW "
                                         "(e.g. 640x640); predictions are mapped back."),
    label_map: Optional[str] = typer.Option(None, "--label-map", help="Detection: model label -> dataset category "
                                            "id (JSON/YAML file, 'coco80' or 'identity'; default: by name)."),
    postprocess: Optional[str] = typer.Option(None, "--postprocess", help="Detection: package.module:function "
                                              "turning the raw model output into torchvision's list of dicts."),
    score_threshold: float = typer.Option(0.5, "--score-threshold", help="Detection: score for false detections "
                                          "per image and miss rate."),
    size_bin: list[str] = typer.Option([], "--size-bin", help="Detection: extra object-size bin NAME=MIN:MAX "
                                       "in px² (e.g. tiny=0:256); repeatable."),
    instance_masks: bool = typer.Option(False, "--instance-masks", help="Detection: also score instance masks "
                                        "(mask AP, COCO segm) for models that return masks, e.g. maskrcnn."),
    suite: str = typer.Option("default", "--suite", "-s", help="Preset (quick, default, imagenet-c) or a YAML/TOML suite file."),
    class_names: Optional[Path] = typer.Option(None, "--class-names", help="One class name per line, in model index order."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Build the architecture with this many outputs."),
    data_config: Optional[Path] = typer.Option(None, "--data-config", help="YAML/JSON preprocessing: input_size, resize, "
                                               "interpolation, mean, std, channel_order."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Model input side in pixels."),
    resize: Optional[int] = typer.Option(None, "--resize", help="Shorter side before the centre crop."),
    interpolation: Optional[str] = typer.Option(None, "--interpolation", help="bilinear, bicubic or nearest."),
    mean: Optional[str] = typer.Option(None, "--mean", help="e.g. 0.485,0.456,0.406"),
    std: Optional[str] = typer.Option(None, "--std", help="e.g. 0.229,0.224,0.225"),
    channel_order: Optional[str] = typer.Option(None, "--channel-order", help="RGB or BGR."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b"),
    workers: int = typer.Option(2, help="DataLoader workers decoding images."),
    amp: bool = typer.Option(False, "--amp", help="bf16 autocast for the model."),
    limit: Optional[int] = typer.Option(None, help="Only the first N images (a quick look)."),
    seed: Optional[int] = typer.Option(None, help="Overrides the suite's seed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (default: reports/<name>)."),
    strict: bool = typer.Option(False, "--strict", help="A corrupt image is an error instead of a recorded skip."),
    trust_model: bool = typer.Option(False, "--trust-model", help="Allow model files that execute code (.pt2, TorchScript)."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="A scorecard to normalise corruption errors by (mCE)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% intervals (0: none)."),
    gallery: int = typer.Option(12, "--gallery", help="Worst failures kept as thumbnails for the report (0: none)."),
) -> None:
    """Stress a saved model on a dataset and write its robustness scorecard (no arguments: the bundled demo)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from visionstress.runner import run

    overrides = {"input_size": input_size, "resize": resize, "interpolation": interpolation,
                 "mean": mean, "std": std, "channel_order": channel_order}
    columns = (TextColumn("[bold]stressing"), BarColumn(), MofNCompleteColumn(), TextColumn("predictions"),
               TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task_id = bar.add_task("run", total=None, rate="-")
        start = [0.0]

        def progress(done: int, total: int) -> None:
            import time

            now = time.perf_counter()
            start[0] = start[0] or now
            elapsed = max(now - start[0], 1e-9)
            bar.update(task_id, completed=done, total=total, rate=f"{done / elapsed:,.0f}")

        try:
            card = run(model=model, data=data, task=task, suite=suite, weights=weights, trust_model=trust_model,
                       num_classes=num_classes,
                       data_config=data_config, data_config_overrides=overrides, class_names=class_names,
                       device=device, batch_size=batch_size, workers=workers, amp=amp, limit=limit, seed=seed,
                       out=out, strict=strict, baseline=baseline, bootstrap=bootstrap, images=images, masks=masks,
                       ignore_index=ignore_index, canvas=_parse_canvas(canvas), label_map=label_map,
                       postprocess=postprocess, score_threshold=score_threshold,
                       size_bins=_parse_size_bins(size_bin), instance_masks=instance_masks, gallery=gallery,
                       progress=progress)
        except KeyboardInterrupt:
            _fail("interrupted; the records written so far are in the output directory's records.parquet")
        except (ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
            _fail(str(exc))
    _print_summary(card)


def _parse_canvas(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        _fail(f"--canvas {text!r}: expected HEIGHTxWIDTH, e.g. 640x640")
    if height < 16 or width < 16:
        _fail(f"--canvas {text!r}: both sides must be at least 16 pixels")
    return height, width


def _parse_size_bins(specs: list[str]) -> dict[str, tuple[float, float]] | None:
    bins: dict[str, tuple[float, float]] = {}
    for spec in specs:
        name, _, bounds = spec.partition("=")
        low, _, high = bounds.partition(":")
        try:
            lo, hi = float(low), float(high)
        except ValueError:
            _fail(f"--size-bin {spec!r}: expected NAME=MIN:MAX in px², e.g. tiny=0:256")
        if not name.isidentifier() or not 0 <= lo < hi:
            _fail(f"--size-bin {spec!r}: needs a name (letters, digits, _) and 0 <= MIN < MAX")
        bins[name] = (lo, hi)
    return bins or None


_SECOND_METRIC = {"classification": "flip_rate", "detection": "miss_rate", "segmentation": "pixel_accuracy"}
"""The column printed beside the main metric's severities: what else a reader looks at first."""


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
    from visionstress.scorecard import MAIN_METRIC

    metric, second = MAIN_METRIC[card.task], _SECOND_METRIC[card.task]
    clean = next(r for r in card.results if r["perturbation"] == "clean")
    interval = clean["ci"].get(metric)
    summary = card.summaries or {}
    console.print(f"[bold]{card.model['spec']}[/] on {card.dataset['path']} ({card.dataset['num_samples']} images, "
                  f"{card.task}, suite {card.suite['name']})", highlight=False)
    line = f"clean {metric} {clean['metrics'][metric]:.3f}"
    if interval and None not in interval:
        line += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    for key, label in (("mean_accuracy_under_perturbation", "mean under perturbation (mPC)"),
                       ("relative_robustness", "relative (rPC)"), ("mce", "mCE")):
        value = summary.get(key)
        if isinstance(value, (int, float)):
            line += f" · {label} {value:.3f}"
    console.print(line, highlight=False)
    severities = sorted({r["severity"] for r in card.results if r["severity"] > 0})
    table = Table(title=f"{metric} by perturbation and severity")
    table.add_column("perturbation")
    table.add_column("family")
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
    skipped = card.dataset.get("skipped") or []
    if skipped:
        console.print(f"[yellow]{len(skipped)} unreadable file(s) skipped[/] (listed in the scorecard)")
    console.print(f"scorecard: {Path(card.records_path).parent / 'scorecard.json'}", highlight=False)


@app.command("compare")
def compare_command(
    reference: Path = typer.Argument(..., help="The reference scorecard (scorecard.json or its report folder)."),
    candidates: list[Path] = typer.Argument(..., help="One or more scorecards, each compared with the reference."),
    fail_on: list[str] = typer.Option([], "--fail-on", help="Gate METRIC\\[@PERTURBATION\\[/SEVERITY]]:THRESHOLD, e.g. "
                                      "top1:-1pp, ece@fog:+2pp, AP@*blur:-2%, top1@summary:-1pp; repeatable. "
                                      "Exit code 1 when a significant change passes a threshold."),
    force: bool = typer.Option(False, "--force", help="Compare the shared cells of scorecards with different "
                               "datasets, suites or seeds instead of refusing."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level after the Holm adjustment."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Paired bootstrap resamples (0: McNemar tests only)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resamples."),
    show_all: bool = typer.Option(False, "--all", help="Show every cell, not only clean, summaries and the cells "
                                  "that changed significantly or failed a gate."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the comparison as Markdown."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the comparison as JSON."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write the comparison as a self-contained HTML page."),
) -> None:
    """Compare scorecards cell by cell with paired tests; exit 1 when a --fail-on gate fails."""
    import json
    import warnings

    from visionstress.comparison import CompareWarning, ComparisonSet, compare, display_rows, gate_lines, model_label

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompareWarning)  # the notes are printed below
            result = compare(reference, *candidates, gates=fail_on, force=force, alpha=alpha, bootstrap=bootstrap,
                             seed=seed)
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
                                ("delta", "right"), ("p (Holm)", "right"), ("significant", "center"),
                                ("gate", "left")):
            table.add_column(column, justify=justify)
        for row in display_rows(comparison, show_all):
            name = row.perturbation if row.kind == "summary" or row.perturbation == "clean" else \
                f"{row.perturbation}@{row.severity}"
            style = {"better": "green", "worse": "red"}.get(row.tone, "")
            table.add_row(Text(name), Text(row.metric), Text(row.old), Text(row.new), Text(row.delta, style=style),
                          Text(row.p_adjusted), Text(row.significant, style=style), Text(row.gate, style="bold red"))
        console.print(table)
        for line in gate_lines(comparison):
            console.print(Text(line, style="green" if line.startswith("PASS") else "bold red"), soft_wrap=True)
    try:
        if markdown is not None:
            markdown.parent.mkdir(parents=True, exist_ok=True)
            markdown.write_text(result.to_markdown(show_all), encoding="utf-8")
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        if html is not None:
            html.parent.mkdir(parents=True, exist_ok=True)
            html.write_text(result.to_html(), encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write the comparison: {exc}")
    if not result.passed:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
