"""The prediction file of ``predict``: one record per query row (row, path/text, class, confidence), CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from diffshot.atomic import atomic_path
from diffshot.errors import DiffshotError
from diffshot.report.document import spreadsheet_safe
from diffshot.results import Prediction

CHUNK_ROWS = 65_536
OUTPUT_FORMATS = ("csv", "json")
METADATA_COLUMNS = ("path", "text")


class QueryRecords(Protocol):
    """What the writer needs of the query: its row count and per-row metadata (a FeatureSet or streamed rows)."""

    num_rows: int
    metadata: dict


def metadata_columns(query: QueryRecords) -> dict[str, np.ndarray]:
    """The per-row ``paths``/``texts`` values to copy into the output, by column name."""
    return {col: query.metadata[col + "s"] for col in METADATA_COLUMNS if col + "s" in query.metadata}


def _cell(value: object) -> object:
    """A CSV/JSON-ready value from a numpy scalar or bytes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value.item() if isinstance(value, np.generic) else value


def _columns(prediction: Prediction, query: QueryRecords, rows: np.ndarray, start: int, stop: int) -> dict[str, list]:
    """The output columns of query rows start..stop as Python lists (one pass per column, not per cell)."""
    columns: dict[str, list] = {"row": [int(r) for r in np.asarray(rows[start:stop]).tolist()]}
    columns.update(
        {col: [_cell(values[i]) for i in range(start, stop)] for col, values in metadata_columns(query).items()}
    )
    names = list(prediction.class_names)
    classes = [names[int(c)] for c in np.asarray(prediction.labels[start:stop]).tolist()]
    if prediction.rejected is not None:
        classes = [
            prediction.unknown_name if r else c
            for c, r in zip(classes, np.asarray(prediction.rejected[start:stop]).tolist(), strict=True)
        ]
    columns["class"] = classes
    columns["confidence"] = [round(c, 6) for c in np.asarray(prediction.confidence[start:stop]).tolist()]
    if prediction.unknown is not None:
        columns["unknown_score"] = [round(u, 6) for u in np.asarray(prediction.unknown[start:stop]).tolist()]
    return columns


def _records(prediction: Prediction, query: QueryRecords, rows: np.ndarray, start: int, stop: int) -> Iterator[dict]:
    """Output records of query rows start..stop."""
    columns = _columns(prediction, query, rows, start, stop)
    keys = list(columns)
    for values in zip(*columns.values(), strict=True):
        yield dict(zip(keys, values, strict=True))


def write_predictions(
    path: str | os.PathLike[str],
    prediction: Prediction,
    query: QueryRecords,
    rows: np.ndarray | None = None,
    fmt: str = "csv",
    chunk_rows: int = CHUNK_ROWS,
) -> Path:
    """Write one record per query row (row, path/text, class, confidence) as CSV or JSON, atomically, in chunks."""
    if fmt not in OUTPUT_FORMATS:
        raise DiffshotError(f"fmt={fmt!r}: choose csv or json")
    rows = np.arange(query.num_rows) if rows is None else rows
    total = query.num_rows
    fields = ["row", *metadata_columns(query), "class", "confidence"]
    fields += ["unknown_score"] if prediction.unknown is not None else []
    with atomic_path(path, stream=True) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerow(fields)
            for start in range(0, total, chunk_rows):
                columns = _columns(prediction, query, rows, start, min(total, start + chunk_rows))
                for col in ("class", *metadata_columns(query)):
                    columns[col] = [spreadsheet_safe(value) for value in columns[col]]
                writer.writerows(zip(*(columns[col] for col in fields), strict=True))
        else:
            head = {
                "confidence": confidence_note(prediction),
                "temperature": prediction.temperature,
                **({"calibration": prediction.calibration} if prediction.calibration else {}),
                **reject_head(prediction),
                "method": prediction.method,
                "params": prediction.params,
                "index": prediction.index,
                **prediction.details,
                "classes": list(prediction.class_names),
            }
            handle.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "predictions": [\n')
            for start in range(0, total, chunk_rows):
                buffer = io.StringIO()
                for i, record in enumerate(_records(prediction, query, rows, start, min(total, start + chunk_rows))):
                    buffer.write(("" if start + i == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
                handle.write(buffer.getvalue())
            handle.write("\n]}\n")
    return Path(path)


def confidence_note(prediction: Prediction) -> str:
    """How the confidence column was made, naming the config it was calibrated on."""
    note = f"softmax(score / temperature), temperature {prediction.temperature:g}"
    if prediction.calibration:
        note += f", calibrated on {prediction.calibration} (minimum NLL on its tuning episodes)"
    return note


def reject_head(prediction: Prediction) -> dict[str, object]:
    """The JSON head's account of the unknown score and the rejection (empty when neither was asked)."""
    if prediction.unknown is None:
        return {}
    head: dict[str, object] = {"unknown_score": "-max cosine to the class means, on the method's features"}
    if prediction.rejected is not None:
        head["reject"] = {
            "threshold": round(float(prediction.threshold), 6),  # type: ignore[arg-type]
            "rule": prediction.threshold_rule,
            "unknown_name": prediction.unknown_name,
            "rejected": int(prediction.rejected.sum()),
        }
    return head
