"""Suites (presets and user files), the scorecard (schema, save/load, summary) and per-sample records."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from visionstress.perturbations import IMAGENET_C, get_perturbation, list_perturbations
from visionstress.records import RecordWriter, read_records
from visionstress.scorecard import SCHEMA_VERSION, Scorecard, ScorecardError, environment_info
from visionstress.suite import PRESETS, Suite, SuiteError, SuiteItem, load_suite

# --- suites -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_name_registered_perturbations(name):
    suite = load_suite(name)
    assert suite.name == name
    for item in suite.items:
        get_perturbation(item.perturbation)  # raises on an unknown name
        assert item.severities and all(1 <= s <= 5 for s in item.severities)
    assert len({i.perturbation for i in suite.items}) == len(suite.items)


def test_preset_contents():
    quick = PRESETS["quick"]
    assert 4 <= len(quick.items) <= 5
    assert all(i.severities == (1, 3, 5) for i in quick.items)
    assert len({get_perturbation(i.perturbation).family for i in quick.items}) == len(quick.items)

    default = PRESETS["default"]
    # the background and cue probes need object masks: they have presets of their own
    probes = {"background": "backgrounds", "cue": "cues"}
    every_family = {get_perturbation(n).family for n in list_perturbations()}
    # families fitted on the model before the loop (adversarial patches) have their own preset
    fitted = {get_perturbation(n).family for n in list_perturbations(kind="model-aware")}
    assert {get_perturbation(i.perturbation).family for i in default.items} == every_family - set(probes) - fitted
    assert all(i.severities == (1, 2, 3, 4, 5) for i in default.items)
    for family, preset in probes.items():
        assert {i.perturbation for i in PRESETS[preset].items} == set(list_perturbations(family=family))

    imagenet_c = PRESETS["imagenet-c"]
    assert [i.perturbation for i in imagenet_c.items] == list(IMAGENET_C)
    assert len(imagenet_c.pairs()) == 15 * 5


def test_yaml_suite(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nseed: 7\nseverities: [2, 4]\nperturbations:\n  - fog\n"
                    "  - {name: rotation, severities: [3, 1]}\n  - '*_noise'\n")
    suite = load_suite(str(path))
    noise = [n for n in list_perturbations("*_noise")]
    assert suite == Suite(name="mine", seed=7, items=(
        SuiteItem("fog", (2, 4)), SuiteItem("rotation", (1, 3)), *(SuiteItem(n, (2, 4)) for n in noise)))
    assert suite.pairs()[:3] == [("fog", 2), ("fog", 4), ("rotation", 1)]


def test_toml_suite_defaults_to_every_severity_and_file_stem(tmp_path):
    path = tmp_path / "night.toml"
    path.write_text('perturbations = ["low_light", { name = "motion_blur", severities = [5] }]\n')
    suite = load_suite(path)
    assert suite == Suite(name="night", seed=0, items=(SuiteItem("low_light", (1, 2, 3, 4, 5)),
                                                        SuiteItem("motion_blur", (5,))))


def test_suite_to_dict_round_trip():
    suite = PRESETS["quick"]
    data = suite.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert Suite.from_mapping(data, "scorecard suite") == suite


@pytest.mark.parametrize("text, expected", [
    ("perturbations: [fogg]", ["perturbations[0]", "'fogg'", "did you mean", "fog"]),
    ("perturbations: [{name: rotaton}]", ["perturbations[0].name", "rotation"]),
    ("perturbations: ['*nothing*']", ["perturbations[0]", "matches no registered perturbation"]),
    ("perturbations: [fog, {name: rotation, severities: [1, 6]}]",
     ["perturbations[1].severities[1]", "out of range", "1 to 5"]),
    ("perturbations: [{name: fog, severities: [0]}]", ["perturbations[0].severities[0]", "out of range"]),
    ("perturbations: [{name: fog, severities: [true]}]", ["perturbations[0].severities[0]", "integer"]),
    ("perturbations: [{name: fog, severities: [2, 2]}]", ["perturbations[0].severities", "repeats"]),
    ("severities: [9]\nperturbations: [fog]", ["severities[0]", "out of range"]),
    ("sed: 3\nperturbations: [fog]", ["sed: unknown key", "did you mean 'seed'"]),
    ("perturbations: [{name: fog, severity: [1]}]", ["perturbations[0].severity", "did you mean 'severities'"]),
    ("seed: zero\nperturbations: [fog]", ["seed", "non-negative integer", "'zero'"]),
    ("seed: -1\nperturbations: [fog]", ["seed", "non-negative integer"]),
    ("name: 3\nperturbations: [fog]", ["name", "non-empty string"]),
    ("perturbations: fog", ["perturbations", "non-empty list", "a string"]),
    ("perturbations: []", ["perturbations", "non-empty list"]),
    ("perturbations: [3]", ["perturbations[0]", "perturbation name or a mapping", "an integer"]),
    ("perturbations: [{severities: [1]}]", ["perturbations[0].name", "missing"]),
    ("perturbations: [fog, {name: fog}]", ["perturbations[1]", "already listed at perturbations[0]"]),
    ("seed: 1", ["perturbations", "missing"]),
    ("- fog", ["must be a mapping", "a list"]),
    ("perturbations: [fog", ["not valid YAML"]),
])
def test_suite_validation_errors_name_file_and_key(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message, message


def test_toml_errors(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('perturbations = ["fog", { name = "rotation", severities = [1, 7] }]\n')
    with pytest.raises(SuiteError, match=r"bad\.toml: perturbations\[1\]\.severities\[1\]: severity 7 is out of range"):
        load_suite(path)
    path.write_text("perturbations = [fog\n")
    with pytest.raises(SuiteError, match=r"bad\.toml: not valid TOML"):
        load_suite(path)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(SuiteError, match=r"unknown suite 'quik'.*did you mean quick"):
        load_suite("quik")
    with pytest.raises(SuiteError, match=r"absent\.yaml: suite file not found"):
        load_suite(tmp_path / "absent.yaml")


# --- scorecard ----------------------------------------------------------------------------------

METRICS = ("top1", "top5", "macro_f1", "balanced_accuracy", "ece", "nll", "brier", "flip_rate")


def _row(perturbation, family, severity, top1):
    metrics = {m: np.float64(top1 if m.startswith("top") else 0.1) for m in METRICS}
    metrics["flip_rate"] = math.nan if perturbation == "clean" else np.float32(0.25)
    ci = {m: (v - 0.05, v + 0.05) for m, v in metrics.items() if m != "flip_rate"}
    return {"perturbation": perturbation, "family": family, "severity": severity, "metrics": metrics, "ci": ci}


def _card(records_path=None, **changes) -> Scorecard:
    results = [_row("clean", "clean", 0, 0.8)]
    results += [_row("fog", "weather", s, 0.8 - 0.1 * s) for s in (1, 3, 5)]
    results += [_row("rotation", "rotation", s, 0.75 - 0.05 * s) for s in (1, 3, 5)]
    fields = dict(
        task="classification",
        model={"spec": "torchvision:resnet18", "path": "/models/r18.pth", "sha256": "ab" * 32, "format": "state_dict"},
        dataset={"path": "data/val", "fingerprint": "cd" * 32, "num_samples": np.int64(120), "num_classes": 6,
                 "class_names": [f"c{i}" for i in range(6)],
                 "skipped": [{"path": "data/val/c0/broken.png", "reason": "cannot identify image file"}]},
        suite=PRESETS["quick"].to_dict(),
        seed=0,
        data_config={"input_size": (64, 64), "resize": None, "mean": (0.5, 0.5, 0.5)},
        environment=environment_info("cpu"),
        results=results,
        summaries={"clean_accuracy": 0.8, "mce": np.float64(1.234), "per_family": {"weather": 0.5}},
        breakdowns={"confusion": {"clean@0": np.eye(6, dtype=np.int64)}},
        timing={"total_seconds": 1.5},
        records_path=records_path,
    )
    fields.update(changes)
    return Scorecard(**fields)


def test_scorecard_round_trip(tmp_path):
    card = _card(records_path=str((tmp_path / "report" / "records.parquet").resolve()))
    path = card.save(tmp_path / "report")
    assert path == tmp_path / "report" / "scorecard.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["records_path"] == "records.parquet"  # stored relative to the report folder
    assert on_disk["results"][0]["metrics"]["flip_rate"] is None  # NaN is not JSON
    assert on_disk["breakdowns"]["confusion"]["clean@0"][2] == [0, 0, 1, 0, 0, 0]

    loaded = Scorecard.load(tmp_path / "report")  # the folder works as well as the file
    assert loaded.records_path == str(tmp_path / "report" / "records.parquet")
    expected = card.to_dict()
    expected["records_path"] = loaded.records_path
    assert loaded.to_dict() == expected
    assert loaded.metric("top1") == pytest.approx(0.8)
    assert loaded.metric("top1", "fog", 3) == pytest.approx(0.5)
    assert math.isnan(loaded.metric("flip_rate"))
    assert loaded.metric("flip_rate", "rotation", 5) == pytest.approx(0.25)
    with pytest.raises(KeyError, match="no result for fog@2"):
        loaded.metric("top1", "fog", 2)
    with pytest.raises(KeyError, match="no metric 'map'"):
        loaded.metric("map")

    frame = loaded.to_pandas()
    assert len(frame) == 7
    assert list(frame.columns[:3]) == ["perturbation", "family", "severity"]
    assert set(METRICS) <= set(frame.columns)
    assert frame.loc[frame.perturbation == "fog", "top1"].round(6).tolist() == [0.7, 0.5, 0.3]
    assert frame.loc[0, "top1_ci_low"] == pytest.approx(0.75)
    assert math.isnan(frame.loc[0, "flip_rate"])


def test_markdown_summary_has_headline_numbers(tmp_path):
    _card().save(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "torchvision:resnet18" in text
    assert "Clean top1: 80.0%" in text and "75.0% – 85.0%" in text
    perturbed = [0.7, 0.5, 0.3, 0.7, 0.6, 0.5]
    mean = sum(perturbed) / len(perturbed)
    assert f"Mean top1 under perturbation (mPC): {100 * mean:.1f}%" in text
    relative = re.search(r"Relative robustness \(mPC / clean, rPC\): ([0-9.]+)", text)
    assert relative and float(relative.group(1)) == pytest.approx(mean / 0.8, abs=6e-4)  # 0.6875 rounds either way
    assert "mCE: 123.4%" in text
    assert "| fog | weather | 70.0% | 50.0% | 30.0% | 50.0% | -30.0 pp |" in text
    worst = text.split("## Worst perturbations")[1]
    assert worst.index("| fog | 5 | 30.0% | +50.0 pp |") < worst.index("| fog | 3 |")
    assert "data/val/c0/broken.png" in text and "cannot identify image file" in text


def test_mce_on_a_subset_of_imagenet_classes_says_the_normalisation_does_not_fit(tmp_path):
    """AlexNet's published errors are over all 1000 classes: on a few of them (an ImageFolder of three
    synsets scored with --class-names) the mCE is not the benchmark number, and the summary says so."""
    names = [f"n{i:08d}" for i in range(1000)]
    per_class = {name: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 40} for name in names[:3]}
    dataset = {"path": "val", "fingerprint": "cd" * 32, "num_samples": 120, "num_classes": 1000, "class_names": names,
               "skipped": []}
    summaries = {"mce": 0.7, "mce_baseline": "AlexNet (Hendrycks & Dietterich, 2019)"}
    _card(dataset=dataset, summaries=summaries, breakdowns={"per_class": {"clean@0": per_class}}).save(tmp_path)
    assert "caveat: the images cover 3 of the model's 1000 classes" in (tmp_path / "summary.md").read_text()
    per_class = {name: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1} for name in names}
    _card(dataset=dataset, summaries=summaries, breakdowns={"per_class": {"clean@0": per_class}}).save(tmp_path / "all")
    assert "classes" not in (tmp_path / "all" / "summary.md").read_text().split("caveat", 1)[-1].split("\n")[0]


def _saved(tmp_path) -> tuple[Path, dict]:
    path = _card().save(tmp_path)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("breakage, pointer, problem", [
    (lambda d: d["results"][2].update(severity="three"), "/results/2/severity", "'three' is not of type 'integer'"),
    (lambda d: d["results"][1]["metrics"].update(top1="high"), "/results/1/metrics/top1", "'high' is not of type"),
    (lambda d: d["results"][0].update(severity=2), "/results/0/severity", "0 was expected"),
    (lambda d: d["results"][1]["ci"].update(top1=[0.1]), "/results/1/ci/top1", "too short"),
    (lambda d: d["dataset"].pop("fingerprint"), "/dataset", "'fingerprint' is a required property"),
    (lambda d: d["model"].update(sha256="xyz"), "/model/sha256", "'xyz'"),
    (lambda d: d.pop("results"), "/", "'results' is a required property"),
])
def test_load_rejects_broken_scorecard_with_pointer(tmp_path, breakage, pointer, problem):
    path, data = _saved(tmp_path)
    breakage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ScorecardError) as info:
        Scorecard.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: does not match the scorecard schema")
    assert f" at {pointer}: " in message and problem in message, message


def test_load_errors_for_unreadable_files(tmp_path):
    with pytest.raises(ScorecardError, match=r"nowhere\.json: scorecard file not found"):
        Scorecard.load(tmp_path / "nowhere.json")
    path, data = _saved(tmp_path)
    path.write_text('{"schema_version": "1.0",\n  "task": }')
    with pytest.raises(ScorecardError, match=r"scorecard\.json: not valid JSON \(line 2, column 11"):
        Scorecard.load(path)
    data["schema_version"] = "3.0"
    path.write_text(json.dumps(data))
    with pytest.raises(ScorecardError, match=r"schema version 3\.0 is not readable .* reads 1\.x, 2\.x"):
        Scorecard.load(path)


def test_save_validates_before_writing(tmp_path):
    with pytest.raises(ScorecardError, match=r"scorecard\.json: .* at /results: \[\] should be non-empty"):
        _card(results=[]).save(tmp_path)
    with pytest.raises(ScorecardError, match=r"scorecard key summaries\.model: cannot store a object"):
        _card(summaries={"model": object()}).save(tmp_path)
    assert not (tmp_path / "scorecard.json").exists() and not (tmp_path / "summary.md").exists()


def test_environment_info():
    env = environment_info(torch.device("cpu"))
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert {"python", "torchvision", "visionstress", "device_name"} <= set(env)


# --- records ------------------------------------------------------------------------------------


def test_records_round_trip(tmp_path):
    path = tmp_path / "run" / "records.parquet"
    clean = {"sample_id": torch.tensor([0, 1, 2]), "label": np.array([1, 0, 2]), "prediction": np.array([1, 2, 2]),
             "confidence": np.array([0.9, 0.4, 0.7]), "correct": np.array([True, False, True]),
             "top5": [[1, 0, 2], [2, 0, 1], [2, 1, 0]], "nll": np.array([0.1, 1.2, 0.3]),
             "flipped": np.array([-1, -1, -1])}
    fog = {**clean, "prediction": np.array([0, 2, 2]), "correct": np.array([False, False, True]),
           "top5": np.array([[0, 1, 2], [2, 0, 1], [2, 1, 0]]), "flipped": [True, False, False]}
    with RecordWriter(path) as writer:
        writer.write(clean, perturbation="clean", family="clean", severity=0, paths=["a.png", "b.png", "c.png"])
        writer.write(fog, perturbation="fog", family="weather", severity=3, paths=["a.png", "b.png", "c.png"])
        assert writer.rows_written == 6
    frame = read_records(path)
    assert list(frame.columns) == ["sample_id", "path", "perturbation", "family", "severity", "label", "prediction",
                                   "confidence", "correct", "top5", "nll", "flipped"]
    assert len(frame) == 6
    assert frame.perturbation.tolist() == ["clean"] * 3 + ["fog"] * 3
    assert frame.severity.tolist() == [0, 0, 0, 3, 3, 3] and frame.severity.dtype == np.int8
    assert frame.sample_id.tolist() == [0, 1, 2, 0, 1, 2]
    assert frame.correct.dtype == bool and frame.correct.tolist() == [True, False, True, False, False, True]
    assert [t.tolist() for t in frame.top5] == clean["top5"] + fog["top5"].tolist()
    assert frame.confidence.dtype == np.float32 and frame.confidence.iloc[1] == pytest.approx(0.4)
    assert frame.flipped.isna().tolist() == [True] * 3 + [False] * 3
    assert frame.flipped.iloc[3:].tolist() == [True, False, False]
    assert frame.path.iloc[4] == "b.png"


def test_record_writer_rejects_bad_columns(tmp_path):
    path = tmp_path / "records.parquet"
    with RecordWriter(path) as writer:
        with pytest.raises(ValueError, match=r"missing \['top5'\], unexpected \['boxes'\]"):
            writer.write({"sample_id": [0], "label": [0], "prediction": [0], "confidence": [0.5], "correct": [True],
                          "boxes": [[]]}, perturbation="clean", family="clean", severity=0, paths=["a.png"])
        with pytest.raises(ValueError, match=r"column 'label' has 2 values for 1 paths"):
            writer.write({"sample_id": [0], "label": [0, 1], "prediction": [0], "confidence": [0.5],
                          "correct": [True], "top5": [[0]]}, perturbation="clean", family="clean", severity=0,
                         paths=["a.png"])
    assert len(read_records(path)) == 0  # a run that wrote nothing still leaves a readable file
    with pytest.raises(ValueError, match="closed"):
        writer.write({}, perturbation="clean", family="clean", severity=0, paths=[])
    with pytest.raises(FileNotFoundError, match=r"gone\.parquet: records file not found"):
        read_records(tmp_path / "gone.parquet")


def test_custom_severity_table_is_validated_and_used(tmp_path):
    from visionstress.engine import perturbation_for, suite_passes
    from visionstress.suite import load_suite

    path = tmp_path / "custom.yaml"
    path.write_text("perturbations:\n  - {name: gaussian_noise, severities: [2], table: [0.0, 0.5, 0.0, 0.0, 0.0]}\n"
                    "  - {name: motion_blur, severities: [1], table: [[3, 1], [4, 1], [5, 2], [6, 2], [7, 3]]}\n")
    suite = load_suite(path)
    assert suite.items[0].table == (0.0, 0.5, 0.0, 0.0, 0.0) and suite.items[1].table[0] == (3, 1)
    assert suite.to_dict()["perturbations"][1]["table"][0] == [3, 1]
    noise = next(p for p in suite_passes(suite) if p.perturbation == "gaussian_noise")
    images = torch.full((2, 3, 16, 16), 0.5)
    strong = perturbation_for(noise)(images, severity=2)
    assert (strong - images).std() > 0.3  # the custom level (0.5), not the built-in 0.12
    from visionstress.perturbations import get_perturbation

    assert get_perturbation("gaussian_noise").severities[1] == 0.12  # the registry is untouched
    for text, message in [
        ("{name: gaussian_noise, table: [0.1, 0.2]}", r"table: must be a list of 5 levels"),
        ("{name: gaussian_noise, table: [0.1, 0.2, x, 0.4, 0.5]}", r"table\[2\]: must be a number"),
        ("{name: motion_blur, table: [1, 2, 3, 4, 5]}", r"table\[0\]: must be a list of 2 numbers"),
        ("{name: '*_noise', table: [1, 2, 3, 4, 5]}", r"needs one perturbation name"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"perturbations:\n  - {text}\n")
        with pytest.raises(SuiteError, match=message):
            load_suite(bad)


@pytest.mark.parametrize("entry, key, problem", [
    ("{name: fog}, {name: rotation}, {name: motion_blur, table: [[3, 1], [4, .nan], [5, 2], [6, 2], [7, 3]]}",
     "perturbations[2].table[1].sigma", "must be a number from 0.1 to 100, got nan"),
    ("{name: gaussian_noise, table: [0.1, .inf, 0.2, 0.3, 0.4]}", "perturbations[0].table[1]",
     "must be a number from 0 to 1 (std), got inf"),
    ("{name: gaussian_noise, table: [0.1, 0.2, -0.3, 0.3, 0.4]}", "perturbations[0].table[2]", "from 0 to 1"),
    ("{name: gaussian_noise, table: [0.1, 0.2, 0.3, 0.4, 50]}", "perturbations[0].table[4]", "got 50"),
    ("{name: motion_blur, table: [[2.5, 1], [4, 1], [5, 2], [6, 2], [7, 3]]}", "perturbations[0].table[0].radius",
     "must be an integer from 1 to 100, got 2.5"),
    ("{name: motion_blur, table: [{radius: 3, sigma: 1, angle: 2}, [4, 1], [5, 2], [6, 2], [7, 3]]}",
     "perturbations[0].table[0]", "needs exactly the fields radius, sigma; unknown: angle"),
    ("{name: zoom_blur, table: [[1, 1.1], [1, 1.2], [1, 3], [1, 1.2], [1, 1.3]]}", "perturbations[0].table[2][1]",
     "must be a number from 1 to 2 (zooms), got 3"),
    ("{name: random_occlusion, table: [[0.1, 1], [0.2, 2], [0.3, 2], [0.4, 3], [0.5, true]]}",
     "perturbations[0].table[4].count", "got True"),
    ("{name: rain, table: [1, 2, 3, 4, 5]}", "perturbations[0].table[0]", "RandomRain objects, which a suite file cannot give"),
])
def test_table_levels_are_checked_per_field_with_declared_ranges(tmp_path, entry, key, problem):
    """NaN, infinity, negative and absurd values are refused when the suite loads (issue 13, item 5)."""
    path = tmp_path / "tables.yaml"
    path.write_text(f"perturbations: [{entry}]\n")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}: {key}: "), str(info.value)
    assert problem in str(info.value), str(info.value)


def test_table_levels_by_name_become_named_levels(tmp_path):
    path = tmp_path / "named.yaml"
    path.write_text("perturbations:\n  - {name: motion_blur, table: [{radius: 5, sigma: 2}, [10, 3], [15, 5], "
                    "[15, 8], [20, 12]]}\n")
    table = load_suite(path).items[0].table
    assert table[0] == (5, 2) and table[0].radius == 5 and table[0].sigma == 2
    assert get_perturbation("motion_blur").describe_level(table[0]) == "radius=5, sigma=2"
    round_trip = Suite.from_mapping(json.loads(json.dumps(load_suite(path).to_dict())), "card")
    assert round_trip.items[0].table == table


@pytest.fixture
def single_level():
    """A registered single-level perturbation (one variant, severity 1 only), removed afterwards."""
    from visionstress.perturbations import Field, PhotometricPerturbation, register_perturbation, unregister_perturbation

    p = register_perturbation(PhotometricPerturbation(lambda x, params, level: x * level, name="_one_variant",
                                                      family="test", severities=(0.5,), fields=[Field("gain", 0, 1)],
                                                      description="test"))
    yield p
    unregister_perturbation(p.name)


def test_single_level_perturbations_in_suites(tmp_path, single_level):
    from visionstress.engine import suite_passes

    path = tmp_path / "single.yaml"
    path.write_text("severities: [1, 3, 5]\nperturbations: [_one_variant, fog]\n")
    suite = load_suite(path)
    assert suite.items == (SuiteItem("_one_variant", (1,)), SuiteItem("fog", (1, 3, 5)))
    assert [(p.perturbation, p.severity) for p in suite_passes(suite)][:2] == [("clean", 0), ("_one_variant", 1)]
    path.write_text("severities: [3, 5]\nperturbations: [_one_variant]\n")  # its one level still runs
    assert load_suite(path).items == (SuiteItem("_one_variant", (1,)),)
    path.write_text("perturbations: [{name: '_one_*', severities: [4]}, {name: 'fo?', severities: [4]}]\n")
    assert load_suite(path).items == (SuiteItem("_one_variant", (1,)), SuiteItem("fog", (4,)))  # patterns: cut
    path.write_text("perturbations: [{name: _one_variant, table: [0.25]}]\n")
    assert load_suite(path).items[0] == SuiteItem("_one_variant", (1,), (0.25,))
    for text, key, problem in [
        ("perturbations: [fog, {name: _one_variant, severities: [1, 3]}]", "perturbations[1].severities",
         "'_one_variant' has a single level: its only severity is 1, got 3"),
        ("perturbations: [{name: _one_variant, table: [0.2, 0.4, 0.6, 0.8, 1.0]}]", "perturbations[0].table",
         "must be a list of 1 levels"),
    ]:
        path.write_text(text + "\n")
        with pytest.raises(SuiteError) as info:
            load_suite(path)
        assert str(info.value).startswith(f"{path}: {key}: ") and problem in str(info.value), str(info.value)


def test_worst_perturbations_list_only_losses_and_mark_the_ones_inside_noise(tmp_path):
    unchanged = [_row("clean", "clean", 0, 0.8)] + [_row("fog", "weather", s, 0.8) for s in (1, 3, 5)]
    _card(results=unchanged).save(tmp_path / "same")
    worst = (tmp_path / "same" / "summary.md").read_text().split("## Worst perturbations")[1]
    assert "No perturbed cell scored worse than clean on top1." in worst and "| fog |" not in worst
    mixed = [_row("clean", "clean", 0, 0.8), _row("fog", "weather", 1, 0.77), _row("fog", "weather", 3, 0.5),
             _row("fog", "weather", 5, 0.85)]
    _card(results=mixed).save(tmp_path / "mixed")
    worst = (tmp_path / "mixed" / "summary.md").read_text().split("## Worst perturbations")[1]
    assert "| fog | 3 | 50.0% | +30.0 pp | 45.0% – 55.0% |" in worst
    assert "| fog | 1 | 77.0% | +3.0 pp | 72.0% – 82.0% (clean inside) |" in worst
    assert "| fog | 5 |" not in worst  # better than clean: not a loss
    assert "1 of these drops leave clean inside the cell's 95% interval" in worst


def test_the_mpc_line_counts_only_perturbations_with_a_defined_metric(tmp_path):
    """A pass whose main metric is undefined everywhere (detection's no_fg: no object left, AP NaN) is not
    in mPC, and the headline says so instead of claiming it."""
    rows = [_row("clean", "clean", 0, 0.8), _row("fog", "weather", 1, 0.6), _row("no_fg", "background", 1, math.nan)]
    _card(results=rows).save(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "(mPC): 60.0%** over 1 perturbations (1 left out: top1 undefined, e.g. no object left)" in text


def test_family_summaries_get_their_own_section_with_intervals(tmp_path):
    """A family summary (background reliance) is listed under its own heading, each change with its 95%
    interval and a mark where 0 lies inside it, instead of twenty bare `background.*` lines in the headline."""
    background = {"metric": "top1", "clean": 0.875, "mixed_same": 0.75, "mixed_rand": 0.625, "bg_gap": 0.125,
                  "bg_gap_ci": [-0.05, 0.3], "no_fg_vs_clean": -0.83, "no_fg_vs_clean_ci": [-0.92, -0.73],
                  "images": 48, "mask_dilation": 0, "variants": ["mixed_same", "mixed_rand"]}
    _card(summaries={"mce": 1.2, "background": background}).save(tmp_path)
    text = (tmp_path / "summary.md").read_text()
    headline = text.split("## ")[0]
    assert "background" not in headline
    section = text.split("## background summary (top1)")[1].split("## ")[0]
    assert "- bg\\_gap: 0.125 (95% CI -0.05 – 0.3) (0 inside)" in section
    assert "- no\\_fg\\_vs\\_clean: -0.83 (95% CI -0.92 – -0.73)\n" in section
    assert "- mixed\\_rand: 0.625\n" in section and "- images 48, mask\\_dilation 0" in section


def test_the_adversarial_summary_is_a_table_by_patch_area(tmp_path):
    area = {"severity": 4, "area": 0.1, "images": 44, "clean": {"value": 0.841, "ci": [0.727, 0.966]},
            "adversarial_patch": {"metric": {"value": 0.0, "ci": [0.0, 0.0]}, "success": {"value": 1.0}},
            "random_patch": {"metric": {"value": 0.455, "ci": [0.295, 0.58]}, "success": {"value": 0.514}},
            "effect": {"value": 0.455, "ci": [0.295, 0.58]}}
    _card(summaries={"adversarial": {"metric": "top1", "areas": [area], "held_out_images": 44, "fit_images": 16}}
          ).save(tmp_path)
    section = (tmp_path / "summary.md").read_text().split("## adversarial summary (top1)")[1].split("## ")[0]
    assert "- held\\_out\\_images 44, fit\\_images 16" in section
    assert ("| 10% | 44 | 0.841 [0.727, 0.966] | 0.000 [0.000, 0.000] | 0.455 [0.295, 0.580] | 1.000 | 0.514 "
            "| 0.455 [0.295, 0.580] |") in section
