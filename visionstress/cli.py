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
    sheet = contact_sheet(pixels, names, levels, boxes=boxes, category_names=categories, seed=seed, device=device)
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    console.print(f"wrote {output} ({len(names)} perturbations x severities {','.join(map(str, levels))})")


if __name__ == "__main__":
    app()
