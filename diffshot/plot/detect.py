"""Which picture an input file asks for, decided from what the file holds (not only from its name)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from diffshot.errors import DiffshotError

RESULTS, EPISODES, TUNE, PREDICT, SEPARABILITY = "results", "episodes", "tune", "predict", "separability"
PREDICT_COLUMNS = {"row", "class", "confidence"}


def read_json(path: Path) -> object:
    """A JSON file's content, or a one-line error naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DiffshotError(f"{path}: not readable as JSON ({type(exc).__name__})") from None


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
            f"{path}: a tune config holds only the best setting; run tune with --grid-json FILE.json and plot that"
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
        if document.get("kind") == "diffshot-tune" and isinstance(document.get("ranked"), list):
            return TUNE, document
        if document.get("kind") == "diffshot-separability" and isinstance(document.get("layers"), list):
            return SEPARABILITY, document
        if isinstance(document.get("predictions"), list) and isinstance(document.get("classes"), list):
            return PREDICT, document
        if "schema_version" in document and isinstance(document.get("results"), list):
            return RESULTS, document
    raise DiffshotError(
        f"{path}: not a diffshot output this command draws (evaluate/batch JSON, --save-episodes .npz, "
        "tune --grid-json JSON, predict CSV/JSON, separability JSON)"
    )
