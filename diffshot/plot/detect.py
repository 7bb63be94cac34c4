"""Which picture an input file asks for, decided from what the file holds (not only from its name)."""

from __future__ import annotations

import csv
from pathlib import Path

from diffshot.errors import DiffshotError
from diffshot.features.documents import read_json as gated_json

RESULTS, EPISODES, TUNE, PREDICT, SEPARABILITY = "results", "episodes", "tune", "predict", "separability"
PREDICT_COLUMNS = {"row", "class", "confidence"}
MAX_COUNT = 1_000_000  # shots or ways a figure can show


def read_json(path: Path) -> object:
    """A JSON file's content through the input gate (size, depth, finite numbers), or a one-line error."""
    return gated_json(path)


def plain(value: object) -> object:
    """``value`` with every string made plain text for matplotlib: a ``$`` would start mathtext (whose parser
    recurses on nested ``\\sqrt{``), so it is escaped; names from files are drawn as written."""
    if isinstance(value, str):
        return value.replace("$", "\\$")
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def _number(value: object, low: float, high: float) -> bool:
    """Whether ``value`` is a real number (not a bool) in [low, high]."""
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def _scalar(value: object) -> bool:
    """Whether ``value`` is a JSON scalar (what a title or a label may show)."""
    return value is None or isinstance(value, str | int | float | bool)


def check_results(document: dict, path: Path) -> None:
    """The shape plot needs of an evaluate/batch JSON: each record's fields of the right type and range."""
    for index, record in enumerate(document["results"]):
        where = f"{path}: results[{index}]"
        if not isinstance(record, dict):
            raise DiffshotError(f"{where} is not a record (a JSON object)")
        if not isinstance(record.get("method"), str) or not record["method"]:
            raise DiffshotError(f"{where}.method must be a method name (a string)")
        for key in ("shots", "ways"):
            value = record.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_COUNT:
                raise DiffshotError(f"{where}.{key} must be a whole number from 1 to {MAX_COUNT:,}, got {value!r}")
        for key, low, high in (("accuracy", 0, 100), ("ci95", 0, 100)):
            if record.get(key) is not None and not _number(record[key], low, high):
                raise DiffshotError(
                    f"{where}.{key} must be a number from {low} to {high} (or null), got {record[key]!r}"
                )
        for key in ("features", "params", "paired"):
            if record.get(key) is not None and not isinstance(record[key], dict):
                raise DiffshotError(f"{where}.{key} must be an object (or null)")
        for key in ("seed", "episodes", "queries", "imbalance", "split"):
            if not _scalar(record.get(key)):
                raise DiffshotError(f"{where}.{key} must be a single value, not a list or object")
        for key, value in (record.get("params") or {}).items():
            if not _scalar(value):
                raise DiffshotError(f"{where}.params.{key} must be a single value, not a list or object")
        paired = record.get("paired") or {}
        if not _scalar(paired.get("baseline")):
            raise DiffshotError(f"{where}.paired.baseline must be a method name")
        for key, low, high in (("difference", -100, 100), ("ci95", 0, 100)):
            if paired.get(key) is not None and not _number(paired[key], low, high):
                raise DiffshotError(
                    f"{where}.paired.{key} must be a number from {low} to {high} (or null), got {paired[key]!r}"
                )
    features = document.get("features")
    if features is not None and (not isinstance(features, dict) or not all(map(_scalar, features.values()))):
        raise DiffshotError(f"{path}: features must be an object of single values")


def check_ci95(document: object, path: Path) -> None:
    """Every ``ci95`` in a document is a half-width: null or a non-negative number (matplotlib refuses others)."""
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            ci = value.get("ci95")
            if ci is not None and not _number(ci, 0, float("inf")):
                raise DiffshotError(f"{path}: a ci95 of {ci!r}; an interval's half-width is a number of at least 0")
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def detect(path: str | Path) -> tuple[str, object]:
    """The picture kind of ``path`` and its parsed content (a dict for JSON; the path itself otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise DiffshotError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return EPISODES, path
    if suffix == ".toml":
        raise DiffshotError(
            f"{path}: a tune config holds only the best setting; run tune with grid_json=FILE.json and plot that"
        )
    if suffix == ".csv":
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                header = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError) as exc:
            raise DiffshotError(f"{path}: not readable as CSV ({type(exc).__name__})") from None
        if set(header) >= PREDICT_COLUMNS:
            return PREDICT, path
        raise DiffshotError(f"{path}: not a predict CSV (needs the columns row, class, confidence)")
    document = read_json(path)
    if isinstance(document, dict):
        check_ci95(document, path)
        document = plain(document)
        if document.get("kind") == "diffshot-tune" and isinstance(document.get("ranked"), list):
            return TUNE, document
        if document.get("kind") == "diffshot-separability" and isinstance(document.get("layers"), list):
            return SEPARABILITY, document
        if isinstance(document.get("predictions"), list) and isinstance(document.get("classes"), list):
            return PREDICT, document
        if "schema_version" in document and isinstance(document.get("results"), list):
            check_results(document, path)
            return RESULTS, document
    raise DiffshotError(
        f"{path}: not a diffshot output this command draws (evaluate/batch JSON, an episodes .npz, "
        "tune's grid JSON, predict CSV/JSON, separability JSON)"
    )
