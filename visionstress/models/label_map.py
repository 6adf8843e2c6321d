"""Label maps: which dataset category a detector's output label stands for.

A detector's labels and a dataset's category ids are two numberings that agree only by accident.
The classic trap is COCO: its annotation files use 80 category ids spread over 1..90 (ids of
classes dropped from the original 91-class list are unused), while YOLO/Darknet-style models
predict contiguous indices 0..79. Scored against each other unmapped, almost every detection gets
the wrong class and AP collapses to near zero with no error anywhere. So a map is resolved and
checked before a run: a preset (`coco80`), a user file, or the model's own class names matched to
the dataset's by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visionstress.models.data_config import read_mapping_file

#: Contiguous index 0..79 (YOLO/Darknet order) -> COCO category id (the 80 ids used in COCO's
#: instances_*.json files; 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83 are unused).
COCO80_TO_COCO91: dict[int, int] = dict(enumerate([
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]))  # fmt: skip

_HOW_TO = (
    "pass --label-map coco80 for a model with contiguous COCO indices 0..79, or a JSON/YAML file "
    "{model_label: dataset_category_id_or_name}"
)


class LabelMapError(ValueError):
    """A label map that cannot be used; the message names the file (or source) and the key."""


def resolve_label_map(
    spec: str | Path | Mapping[Any, Any] | None,
    dataset_categories: list[dict[str, Any]],
    model_categories: list[str] | None = None,
) -> dict[int, int] | None:
    """Model label -> dataset category id, or None for the identity.

    `spec`: "identity", "coco80", a JSON/YAML file or a mapping {model_label: dataset id or name};
    None matches `model_categories` (the name of each model output index) to the dataset's
    categories by name, case-insensitively, or is the identity when the model's names are unknown.
    `dataset_categories` are COCO-style dicts with "id" and "name".
    """
    ids = {int(c["id"]): str(c["name"]) for c in dataset_categories}
    if spec is None:
        return None if model_categories is None else _by_name(model_categories, ids)
    if isinstance(spec, Mapping):
        return _validated(spec, ids, "label map")
    if isinstance(spec, str) and spec.strip().lower() == "identity":
        return None
    if isinstance(spec, str) and spec.strip().lower() == "coco80":
        mapping = {k: v for k, v in COCO80_TO_COCO91.items() if v in ids}
        if not mapping:
            raise LabelMapError(
                "label map coco80: none of the dataset's category ids is a COCO id the 80 indices map to "
                f"(dataset ids: {_listed(sorted(ids))}); the dataset is not COCO-numbered"
            )
        return mapping
    return _validated(_read(Path(spec)), ids, str(spec))


def _read(path: Path) -> Mapping[Any, Any]:
    return read_mapping_file(path, "label map", "a mapping {model_label: dataset_category_id_or_name}",
                             LabelMapError, "; expected identity, coco80 or a JSON/YAML file")


def _validated(mapping: Mapping[Any, Any], ids: dict[int, str], source: str) -> dict[int, int]:
    """Integer model labels (JSON keys arrive as strings) to dataset ids; a value may be a category
    name, which is resolved case-insensitively."""
    if not mapping:
        raise LabelMapError(f"{source}: the label map is empty")
    by_name = {name.strip().lower(): i for i, name in ids.items()}
    result: dict[int, int] = {}
    for key, value in mapping.items():
        label = _as_int(key)
        if label is None or label < 0:
            raise LabelMapError(f"{source}: key {key!r}: a model label must be a non-negative integer")
        target = _as_int(value)
        if target is None and isinstance(value, str) and value.strip().lower() in by_name:
            target = by_name[value.strip().lower()]
        if target is None or target not in ids:
            raise LabelMapError(
                f"{source}: key {key!r}: {value!r} is not a category id or name of the dataset "
                f"(ids: {_listed(sorted(ids))})"
            )
        result[label] = target
    return result


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _by_name(model_categories: list[str], ids: dict[int, str]) -> dict[int, int]:
    """Index i of the model -> the dataset category with the same name. Dataset categories the model
    has no name for can never be predicted; they are listed in a warning rather than refused,
    because evaluating a model on a superset of its classes is sometimes the point."""
    by_name = {name.strip().lower(): i for i, name in ids.items()}
    mapping = {
        index: by_name[name.strip().lower()]
        for index, name in enumerate(model_categories)
        if name.strip().lower() in by_name
    }
    if not mapping:
        raise LabelMapError(
            f"the model's {len(model_categories)} category names ({_listed(model_categories)}) share no "
            f"name with the dataset's ({_listed(list(ids.values()))}), so its labels cannot be matched to "
            "dataset ids. Beware of mismatched numberings: COCO annotations use ids 1..90 with gaps "
            f"while many detectors predict indices 0..79; {_HOW_TO}"
        )
    unmatched = [name for i, name in ids.items() if i not in mapping.values()]
    if unmatched:
        warnings.warn(
            f"{len(unmatched)} dataset categories have no model category of the same name and cannot be "
            f"predicted: {_listed(unmatched)}; to map them, {_HOW_TO}",
            stacklevel=3,
        )
    return mapping


def _listed(items: list[Any], limit: int = 8) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
