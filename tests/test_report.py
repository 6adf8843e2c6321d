"""The HTML report: every task renders, numbers match the scorecard, user strings are escaped, the
file is self-contained; `visionstress report`; the summary's main metric per task; the screenshot."""

from __future__ import annotations

import base64
import io
import math
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from visionstress.cli import app
from visionstress.gallery import FailureGallery
from visionstress.report import REPORT_FILE, ReportError, render_report, write_report
from visionstress.scorecard import SCHEMA_VERSION, Scorecard

ROOT = Path(__file__).resolve().parents[1]
SEVERITIES = (1, 3, 5)
PERTURBATIONS = {"gaussian_noise": "camera", "motion_blur": "blur", "fog": "weather", "rotation": "rotation"}


class _Page(HTMLParser):
    """The bits of the page the tests look at: heatmap cell texts, image sources, section ids, tag names."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.heat: list[str] = []
        self.images: list[str] = []
        self.sections: list[str] = []
        self.tags: set[str] = set()
        self._in_cell = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "td" and "cell" in (attrs.get("class") or "").split() and "mean" not in attrs["class"]:
            self._in_cell = True
            self.heat.append("")
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "section":
            self.sections.append(attrs.get("id"))

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.heat[-1] += data


def _rows(metric: str, clean: float, drop: float = 0.08) -> list[dict]:
    rows = [{"perturbation": "clean", "family": "clean", "severity": 0, "metrics": {metric: clean},
             "ci": {metric: [clean - 0.05, clean + 0.04]}}]
    for k, (name, family) in enumerate(PERTURBATIONS.items()):
        for s in SEVERITIES:
            value = max(clean - drop * s * (k + 1) / 2, 0.0)
            rows.append({"perturbation": name, "family": family, "severity": s, "metrics": {metric: value},
                         "ci": {metric: [value - 0.03, value + 0.03]}})
    return rows


def _card(task: str, metric: str, clean: float, breakdowns: dict, class_names: list[str], **changes) -> Scorecard:
    fields = dict(
        schema_version=SCHEMA_VERSION, task=task,
        model={"spec": f"tests:{task}_model", "path": None, "sha256": "ab" * 32, "format": "python"},
        dataset={"path": "data/val", "fingerprint": "f" * 64, "num_samples": 40, "num_classes": len(class_names),
                 "class_names": class_names, "skipped": [{"path": "data/val/broken.jpg", "reason": "truncated file"}]},
        suite={"name": "quick", "seed": 0,
               "perturbations": [{"name": n, "severities": list(SEVERITIES)} for n in PERTURBATIONS]},
        seed=0, data_config={"input_size": [64, 64], "source": "flags"},
        environment={"python": "3.11", "torch": "2", "visionstress": "0.1.0", "device": "cpu", "device_name": "x86"},
        results=_rows(metric, clean), summaries={"relative_mce": 0.91, "mce_baseline": "AlexNet"},
        breakdowns=breakdowns, timing={"total_seconds": 12.34, "images": 40}, records_path=None)
    fields.update(changes)
    return Scorecard(**fields)


def _classification_card(class_names=("cat", "dog", "bird")) -> Scorecard:
    """Breakdowns produced by the real evaluator and runner code (not hand-written shapes)."""
    from visionstress.evaluators import ClassificationEvaluator
    from visionstress.tasks import get_task

    names = list(class_names)
    k = len(names)
    evaluator = ClassificationEvaluator(k, names, bootstrap=0)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % k
    ids = torch.arange(40)
    signal = torch.nn.functional.one_hot(labels, k) * 4.0
    evaluator.update_arrays("clean", 0, ids, labels, signal + torch.randn(40, k, generator=generator))
    for name in PERTURBATIONS:
        for s in SEVERITIES:
            evaluator.update_arrays(name, s, ids, labels, signal + torch.randn(40, k, generator=generator) * s)
    results = evaluator.finalize()
    card = _card("classification", "top1", 0.0, {}, names)
    card.results = [{"perturbation": r.perturbation, "family": PERTURBATIONS.get(r.perturbation, "clean"),
                     "severity": r.severity, "metrics": r.metrics, "ci": {}} for r in results.rows]
    card.breakdowns = get_task("classification").breakdowns(results, None, set())
    return card


def _key(name: str, s: int) -> str:
    return f"{name}@{s}"


def _detection_card(class_names=("car", "person")) -> Scorecard:
    keys = ["clean@0"] + [_key(n, s) for n in PERTURBATIONS for s in SEVERITIES]
    worst = _key("rotation", 5)
    errors = {t: {"count": i + 1, "delta_ap": 0.01 * (i + 1)} for i, t in
              enumerate(("classification", "localisation", "both", "duplicate", "background", "missed"))}
    breakdowns = {
        "per_class_ap": {k: {c: 0.5 - 0.1 * i for i, c in enumerate(class_names)} for k in ("clean@0", worst)},
        "size": {k: {b: {"AP": 0.3, "recall": 0.5, "num_gt": 10} for b in ("small", "medium", "large", "tiny")}
                 for k in ("clean@0", worst)},
        "error_types": {"clean@0": errors, worst: {t: {"count": v["count"] * 3, "delta_ap": v["delta_ap"] * 2}
                                                   for t, v in errors.items()}},
        "occlusion": {_key("fog", s): {"0-25%": {"miss_rate": 0.1 * s, "num_gt": 20}, "25-50%": {"miss_rate": 0.2,
                                                                                                "num_gt": 5}}
                      for s in SEVERITIES},
        "gallery": [],
    }
    assert set(breakdowns["per_class_ap"]) <= set(keys)
    return _card("detection", "AP", 0.42, breakdowns, list(class_names))


def _segmentation_card(class_names=("road", "sky", "car")) -> Scorecard:
    worst = _key("rotation", 5)
    c = len(class_names)
    breakdowns = {
        "per_class_iou": {k: {n: 0.7 - 0.1 * i for i, n in enumerate(class_names)} for k in ("clean@0", worst)},
        "confusion": {k: (np.eye(c, dtype=int) * 100 + 3).tolist() for k in ("clean@0", worst)},
        "region_recall": {k: {b: {"recall": 0.6, "num_regions": 12} for b in ("small", "medium", "large")}
                          for k in ("clean@0", worst)},
    }
    return _card("segmentation", "mIoU", 0.61, breakdowns, list(class_names))


def _check_self_contained(html: str) -> _Page:
    page = _Page(html)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html, re.IGNORECASE)
    assert "url(" not in html and "@import" not in html
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.width >= 16 and image.height >= 16
    return page


# --- all three tasks ----------------------------------------------------------------------------


def test_classification_report_from_the_evaluators_breakdowns(tmp_path):
    card = _classification_card()
    html = render_report(card, tmp_path)
    page = _check_self_contained(html)
    assert page.sections == ["headline", "heatmap", "curves", "confusion", "calibration", "per-class", "skipped"]
    perturbed = [r for r in card.results if r["perturbation"] != "clean"]
    # the heatmap holds each cell's number, rows ordered by family then suite order
    by_family = sorted(perturbed, key=lambda r: r["family"])
    assert page.heat == [f"{100 * r['metrics']['top1']:.1f}%" for r in by_family]
    assert len(page.images) == 4 + 1 + 1  # one curve per family, confusion, reliability
    assert "Most-confused pairs" in html and "top1 by perturbation and severity" in html
    clean = card.results[0]["metrics"]["top1"]
    assert f"{100 * clean:.1f}%" in html
    worst = min(perturbed, key=lambda r: (r["metrics"]["top1"], r["perturbation"], r["severity"]))
    assert f"{worst['perturbation']} @ {worst['severity']}" in html  # the confusion/calibration comparison
    assert "relative mCE" in html and "baseline: AlexNet" in html and "0.910" in html
    assert "data/val/broken.jpg" in html and "truncated file" in html


def test_detection_report_sections_and_numbers(tmp_path):
    html = render_report(_detection_card(), tmp_path)
    page = _check_self_contained(html)
    assert page.sections == ["headline", "heatmap", "curves", "small-objects", "error-types", "occlusion",
                             "per-class", "skipped"]
    assert "AP by perturbation and severity" in html and "clean AP" in html and "42.0%" in html
    assert "tiny" in html and "AP · rotation @ 5" in html  # the size table compares clean with the worst cell
    assert "miss rate · 0-25%" in html and "30.0% (n=20)" in html  # fog@3 occlusion
    assert "AP (clean)" in html and "car" in html and "person" in html
    assert len(page.heat) == len(PERTURBATIONS) * len(SEVERITIES)


def test_segmentation_report_sections_and_numbers(tmp_path):
    html = render_report(_segmentation_card(), tmp_path)
    page = _check_self_contained(html)
    assert page.sections == ["headline", "heatmap", "curves", "confusion", "small-objects", "per-class", "skipped"]
    assert "clean mIoU" in html and "61.0%" in html
    assert "regions · clean" in html and "IoU (rotation @ 5)" in html
    assert "Most-confused pairs" not in html  # segmentation has no pair list


def test_a_scorecard_with_only_results_still_renders(tmp_path):
    card = _card("detection", "AP", 0.5, {}, ["a"], summaries={}, timing={})
    card.dataset["skipped"] = []
    card.results[1]["metrics"]["AP"] = math.nan  # undefined (COCOeval's -1): a dash, and left out of the means
    html = render_report(card, tmp_path)
    page = _check_self_contained(html)
    assert page.sections == ["headline", "heatmap", "curves", "skipped"]
    assert page.heat.count("–") == 1 and "None: every image was read." in html
    assert _Page(render_report(_clean_only(), tmp_path)).sections == ["headline", "skipped"]




# --- escaping -----------------------------------------------------------------------------------


def test_user_strings_are_escaped_and_no_script_tag_exists(tmp_path):
    evil_class = "<script>alert(1)</script>"
    evil_spec = '"><img src=x onerror=alert(1)>'
    card = _classification_card(class_names=(evil_class, "dog", "a$b$c"))
    card.model["spec"] = evil_spec
    card.dataset["path"] = "<b>data</b>"
    card.dataset["skipped"] = [{"path": "<svg onload=alert(1)>", "reason": "</td><script>x</script>"}]
    gallery = FailureGallery(size=1)
    gallery.offer(perturbation="fog", severity=3, sample_ids=torch.tensor([0]), paths=["<i>p</i>.png"],
                  scores=torch.tensor([1.0]), clean_images=torch.rand(1, 3, 16, 16),
                  perturbed_images=torch.rand(1, 3, 16, 16),
                  captions=lambda i: evil_class)
    card.breakdowns["gallery"] = gallery.save(tmp_path)
    html = render_report(card, tmp_path)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<img src=x" not in html and "<svg" not in html and "<b>data" not in html and "<i>p" not in html
    _check_self_contained(html)


# --- gallery ------------------------------------------------------------------------------------


def test_gallery_images_are_embedded_and_only_pngs_inside_the_folder_are_read(tmp_path):
    folder = tmp_path / "report"
    secret = tmp_path / "secret.png"
    Image.new("RGB", (30, 30), "red").save(secret)
    gallery = FailureGallery(size=2, thumbnail=32)
    gallery.offer(perturbation="fog", severity=3, sample_ids=torch.tensor([4, 9]), paths=["a.png", "b.png"],
                  scores=torch.tensor([0.9, 0.5]), clean_images=torch.rand(2, 3, 32, 32),
                  perturbed_images=torch.rand(2, 3, 32, 32), captions=lambda i: f"cat → dog #{i}")
    entries = gallery.save(folder)
    entries[1]["perturbed_image"] = "../secret.png"
    entries[1]["clean_image"] = "gallery/missing.png"
    card = _detection_card()
    card.breakdowns["gallery"] = entries
    html = render_report(card, folder)
    page = _check_self_contained(html)
    assert "gallery" in page.sections and "cat → dog #0" in html and "fog @ 3" in html
    on_disk = base64.b64encode((folder / entries[0]["clean_image"]).read_bytes()).decode()
    assert f"data:image/png;base64,{on_disk}" in html
    assert base64.b64encode(secret.read_bytes()).decode() not in html
    assert html.count("image missing") == 2


# --- write_report and the command line ----------------------------------------------------------


def _clean_only(task="segmentation", metric="mIoU") -> Scorecard:
    """A card without perturbed rows or breakdowns: no figures to draw, so file handling tests stay fast."""
    return _card(task, metric, 0.5, {}, ["a"], results=_rows(metric, 0.5)[:1])


def test_write_report_beside_the_scorecard_or_into_out(tmp_path):
    card = _clean_only()
    card.save(tmp_path / "run")
    target = write_report(tmp_path / "run")
    assert target == tmp_path / "run" / REPORT_FILE and "<!DOCTYPE html>" in target.read_text()
    other = write_report(tmp_path / "run" / "scorecard.json", out=tmp_path / "elsewhere")
    assert other == tmp_path / "elsewhere" / REPORT_FILE and other.is_file()
    assert write_report(card, out=tmp_path / "obj").is_file()
    with pytest.raises(ReportError, match="give `out`"):
        write_report(card)


def test_report_command(tmp_path):
    runner = CliRunner()
    _clean_only("classification", "top1").save(tmp_path / "run")
    result = runner.invoke(app, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "run" / REPORT_FILE) in result.output.replace("\n", "")
    result = runner.invoke(app, ["report", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and "nope.json" in result.output and "not found" in result.output
    bad = tmp_path / "bad" / "scorecard.json"
    bad.parent.mkdir()
    bad.write_text('{"schema_version": "1.0", "task": "classification"}')
    result = runner.invoke(app, ["report", str(bad)])
    assert result.exit_code == 2 and "scorecard.json" in result.output and "schema" in result.output


@pytest.mark.parametrize("make, metric, shown",
                         [(_detection_card, "AP", "42.0%"), (_segmentation_card, "mIoU", "61.0%")])
def test_summary_markdown_uses_the_tasks_main_metric(make, metric, shown):
    text = make().to_markdown()
    assert f"**Clean {metric}: {shown}**" in text and f"## {metric} by perturbation and severity" in text


# --- screenshot ---------------------------------------------------------------------------------


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="needs chromium")
def test_screenshot_script_renders_a_report_to_png(tmp_path):
    card = _detection_card()
    card.save(tmp_path / "run")
    report = write_report(tmp_path / "run")
    out = tmp_path / "shot.png"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot_report.py"), str(report), str(out),
                             "--width", "900", "--height", "2000"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape[1] == 900 and 500 < pixels.shape[0] <= 2000
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, colours and figures, not a blank page


def test_screenshot_script_reports_a_missing_file(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshot_report.py"),
                             str(tmp_path / "none.html"), str(tmp_path / "x.png")], capture_output=True, text=True)
    assert result.returncode == 2 and "none.html" in result.stderr and "Traceback" not in result.stderr


def test_the_worst_cells_table_lists_only_cells_that_lost_against_clean(tmp_path):
    card = _card("detection", "AP", 0.5, {}, ["a"], results=_rows("AP", 0.5, drop=0.0))
    assert "Worst perturbation × severity cells" not in render_report(card, tmp_path)  # nothing lost
    card.results[3]["metrics"]["AP"] = 0.4
    html = render_report(card, tmp_path)
    worst = html.split("Worst perturbation × severity cells")[1].split("</table>")[0]
    assert worst.count("<tr>") == 2 and "-10.0 pp" in worst  # the header and the one cell that lost
