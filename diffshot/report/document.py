"""The JSON contract and CSV rows of an evaluation run, built from the typed result.

A document holds ``diffshot_version``, ``schema_version``, the ``features`` block, an
``environment`` block (versions, command line, UTC time) and one record per (shots, method).
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import platform
import sys
from collections.abc import Sequence

from diffshot import __version__
from diffshot.results import Evaluation, EvaluationRun, MethodResult

SCHEMA_VERSION = 1
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\0")
CSV_FIELDS = (
    "method",
    "ways",
    "shots",
    "queries",
    "imbalance",
    "query_classes",
    "episodes",
    "seed",
    "accuracy",
    "ci95",
    "ece",
    "paired_baseline",
    "paired_difference",
    "paired_ci95",
    "seconds",
    "episodes_per_second",
    "params",
)


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that a spreadsheet will not run as a formula (OWASP CSV-injection guidance).

    Text starting with ``= + - @``, a tab, CR or NUL gets a leading single quote; numbers, and text that
    reads as a number (``-0.5``), are kept as they are.
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_TRIGGERS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def rounded(value: float, digits: int = 4) -> float | None:
    """A JSON-safe rounded float (NaN and infinities become null)."""
    return None if not math.isfinite(value) else round(value, digits)


def imbalance_text(evaluation: Evaluation) -> str | None:
    """The query-balance protocol as written in outputs (``dirichlet:2``, ``zipf:1.1``), None when balanced."""
    return evaluation.spec.imbalance_text


def result_record(run: EvaluationRun, evaluation: Evaluation, result: MethodResult) -> dict[str, object]:
    """One entry of ``results`` in the JSON contract (accuracy and ci95 in percent)."""
    summary = result.summary
    record: dict[str, object] = {
        "method": result.method,
        "ways": evaluation.spec.ways,
        "shots": evaluation.spec.shots,
        "queries": evaluation.spec.queries,
        "imbalance": imbalance_text(evaluation),
        "query_classes": evaluation.spec.query_classes,
        "episodes": evaluation.episodes,
        "seed": evaluation.seed,
        "accuracy": rounded(summary.mean),
        "ci95": rounded(summary.ci95),
        "ece": rounded(result.ece),
        "confidence_temperature": rounded(result.temperature, 6),
        "seconds": rounded(result.seconds),
        "episodes_per_second": rounded(result.episodes_per_second, 1),
        "params": dict(result.params),
        "resolved": {**result.params, **result.resolved},
    }
    open_set = result.open_set
    if open_set is not None:
        record["unknown_queries"] = evaluation.spec.unknown_queries
        record["open_set"] = {
            key: {"mean": rounded(value.mean), "ci95": rounded(value.ci95)} for key, value in open_set.items()
        }
    diff = run.paired(evaluation, result)
    if diff is not None:
        record["paired"] = {"baseline": run.baseline, "difference": rounded(diff.mean), "ci95": rounded(diff.ci95)}
    return record


FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss")


def faiss_version() -> str:
    """FAISS's version, from the loaded module or the installed package's metadata (importing it costs ~50 ms)."""
    loaded = sys.modules.get("faiss")
    if loaded is not None:
        return str(getattr(loaded, "__version__", "unknown"))
    from importlib import metadata

    for name in FAISS_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import faiss

    return str(getattr(faiss, "__version__", "unknown"))


def environment(argv: Sequence[str] | None = None) -> dict[str, object]:
    """What reproduces a run besides its inputs: versions, the command line and when it ran (UTC)."""
    import numpy
    import torch

    return {
        "diffshot": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss_version(),
        "numpy": numpy.__version__,
        "threads": torch.get_num_threads(),
        "command": list(sys.argv if argv is None else argv),
        "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def features_block(run: EvaluationRun) -> dict[str, object]:
    """The ``features`` block of the JSON contract."""
    source = run.source
    return {
        "path": str(source.path),
        "sha256": source.sha256,
        "dim": source.dim,
        "classes": source.classes,
        "split": source.split,
        "centring": source.centring,
        "device": source.device,
    }


def to_json_document(run: EvaluationRun, argv: Sequence[str] | None = None) -> dict[str, object]:
    """The documented JSON contract of a run."""
    return {
        "diffshot_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "features": features_block(run),
        "environment": environment(argv),
        "results": [result_record(run, ev, r) for ev in run.evaluations for r in ev.results],
    }


def csv_rows(run: EvaluationRun) -> list[dict[str, object]]:
    """One CSV row per result, with the same numbers as the JSON."""
    rows = []
    for evaluation in run.evaluations:
        for result in evaluation.results:
            record = result_record(run, evaluation, result)
            paired = record.get("paired") or {}
            row = {key: record.get(key) for key in CSV_FIELDS}
            row.update(
                paired_baseline=paired.get("baseline"),  # type: ignore[union-attr]
                paired_difference=paired.get("difference"),  # type: ignore[union-attr]
                paired_ci95=paired.get("ci95"),  # type: ignore[union-attr]
                params=";".join(f"{k}={v}" for k, v in result.params.items()),
            )
            rows.append(row)
    return rows


def write_csv(rows: Sequence[dict[str, object]], fields: Sequence[str] = CSV_FIELDS) -> str:
    """CSV text of ``rows`` with the given columns."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_csv(run: EvaluationRun) -> str:
    """CSV text, one row per result."""
    return write_csv(csv_rows(run))
