"""Rendering evaluations: the JSON contract, CSV rows and the Rich table."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.table import Table

from diffshot import __version__
from diffshot.atomic import atomic_path
from diffshot.errors import DiffshotError
from diffshot.evaluate import Evaluation, MethodResult

SCHEMA_VERSION = 1
EPISODES_FORMAT = "diffshot-episodes/1"
PROTOCOL_KEYS = ("features_sha256", "seed", "ways", "queries", "imbalance", "episodes", "split")
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\0")
CSV_FIELDS = (
    "method",
    "ways",
    "shots",
    "queries",
    "imbalance",
    "episodes",
    "seed",
    "accuracy",
    "ci95",
    "paired_baseline",
    "paired_difference",
    "paired_ci95",
    "seconds",
    "episodes_per_second",
    "params",
)


def _round(value: float, digits: int = 4) -> float | None:
    """A JSON-safe rounded float (NaN and infinities become null)."""
    return None if not math.isfinite(value) else round(value, digits)


def result_record(evaluation: Evaluation, result: MethodResult, baseline: str | None = None) -> dict[str, object]:
    """One entry of ``results`` in the JSON contract (accuracy and ci95 in percent)."""
    summary = result.summary
    record: dict[str, object] = {
        "method": result.method,
        "ways": evaluation.spec.ways,
        "shots": evaluation.spec.shots,
        "queries": evaluation.spec.queries,
        "imbalance": None if evaluation.spec.imbalance is None else f"dirichlet:{evaluation.spec.imbalance:g}",
        "episodes": evaluation.episodes,
        "seed": evaluation.seed,
        "accuracy": _round(summary.mean),
        "ci95": _round(summary.ci95),
        "seconds": _round(result.seconds),
        "episodes_per_second": _round(result.episodes_per_second, 1),
        "params": dict(result.params),
    }
    base = _find(evaluation, baseline)
    if base is not None:
        diff = result.paired(base)
        record["paired"] = {"baseline": base.method, "difference": _round(diff.mean), "ci95": _round(diff.ci95)}
    return record


def _find(evaluation: Evaluation, name: str | None) -> MethodResult | None:
    """The result of method ``name`` in an evaluation (the first, if it ran twice)."""
    return next((r for r in evaluation.results if r.method == name), None) if name else None


def to_json_document(
    evaluations: Sequence[Evaluation], features_info: dict[str, object], baseline: str | None = None
) -> dict[str, object]:
    """The documented JSON contract: version, the features file, and one record per (shots, method)."""
    return {
        "diffshot_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "features": features_info,
        "results": [result_record(ev, r, baseline) for ev in evaluations for r in ev.results],
    }


def features_info(path: Path | str, sha256: str, dim: int, evaluation: Evaluation) -> dict[str, object]:
    """The ``features`` block of the JSON contract."""
    return {
        "path": str(path),
        "sha256": sha256,
        "dim": dim,
        "classes": len(evaluation.classes),
        "split": evaluation.split,
        "centring": evaluation.centring,
    }


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


def to_csv(document: dict[str, object]) -> str:
    """CSV text, one row per result, with the same numbers as the JSON."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for record in document["results"]:  # type: ignore[union-attr]
        paired = record.get("paired") or {}
        row = {key: record.get(key) for key in CSV_FIELDS}
        row.update(
            paired_baseline=paired.get("baseline"),
            paired_difference=paired.get("difference"),
            paired_ci95=paired.get("ci95"),
            params=";".join(f"{k}={v}" for k, v in record["params"].items()),
        )
        writer.writerow(row)
    return buffer.getvalue()


def results_table(document: dict[str, object], title: str | None = None) -> Table:
    """The terminal table: method, protocol, accuracy ± 95% interval, paired difference, episodes/s."""
    records = document["results"]  # type: ignore[assignment]
    paired = any("paired" in r for r in records)
    table = Table(title=title)
    for column in ("method", "ways", "shots", "queries", "episodes", "accuracy (%)"):
        table.add_column(column, justify="left" if column == "method" else "right")
    if paired:
        table.add_column("Δ vs " + next(r["paired"]["baseline"] for r in records if "paired" in r), justify="right")
    table.add_column("episodes/s", justify="right")
    for r in records:
        queries = str(r["queries"]) + (f" ({r['imbalance']})" if r["imbalance"] else "")
        cells = [r["method"], str(r["ways"]), str(r["shots"]), queries, str(r["episodes"])]
        cells.append(f"{r['accuracy']:.2f} ± {r['ci95']:.2f}")
        if paired:
            p = r.get("paired")
            cells.append("" if p is None else f"{p['difference']:+.2f} ± {p['ci95']:.2f}")
        cells.append(f"{r['episodes_per_second']:,.0f}" if r["episodes_per_second"] is not None else "-")
        table.add_row(*cells)
    return table


def save_episode_accuracies(path: Path | str, evaluations: Sequence[Evaluation], info: dict[str, object]) -> Path:
    """Write per-episode accuracies (percent) of every (method, shots) run to an .npz, atomically.

    Arrays ``run0``, ``run1``, …; the JSON string ``meta`` holds the protocol (seed, ways, queries,
    imbalance, episodes, split, features sha256 and path) and, per run, its method, shots and params.
    """
    first = evaluations[0]
    runs, arrays = [], {}
    for evaluation in evaluations:
        for result in evaluation.results:
            key = f"run{len(runs)}"
            runs.append({"key": key, "method": result.method, "shots": evaluation.spec.shots, "params": result.params})
            arrays[key] = np.asarray(result.accuracies, dtype=np.float64)
    meta = {
        "format": EPISODES_FORMAT,
        "diffshot_version": __version__,
        "features_sha256": info["sha256"],
        "features_path": str(info["path"]),
        "seed": first.seed,
        "ways": first.spec.ways,
        "queries": first.spec.queries,
        "imbalance": first.spec.imbalance,
        "episodes": first.episodes,
        "split": first.split,
        "runs": runs,
    }
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, meta=np.array(json.dumps(meta)), **arrays)
    return Path(path)


@dataclasses.dataclass(frozen=True)
class EpisodeRecord:
    """Per-episode accuracies of one saved run (method, shots, params) with the protocol it ran under."""

    method: str
    shots: int
    params: dict[str, object]
    accuracies: np.ndarray


def load_episode_accuracies(path: Path | str) -> tuple[dict[str, object], list[EpisodeRecord]]:
    """The protocol and the runs of a ``--save-episodes`` file; a .json result points to its .npz."""
    path = Path(path)
    if not path.is_file():
        raise DiffshotError(f"{path}: no such file")
    if path.suffix.lower() == ".json":
        path = _episodes_file_of(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            records = [
                EpisodeRecord(r["method"], int(r["shots"]), r["params"], np.asarray(data[r["key"]]))
                for r in meta["runs"]
            ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DiffshotError(f"{path}: not a diffshot --save-episodes file ({type(exc).__name__})") from None
    if meta.get("format") != EPISODES_FORMAT:
        raise DiffshotError(f"{path}: not a diffshot --save-episodes file")
    return meta, records


def _episodes_file_of(path: Path) -> Path:
    """The .npz named by the ``episodes_file`` key of a JSON result (relative to the JSON's folder)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DiffshotError(f"{path}: not a JSON result ({type(exc).__name__})") from None
    name = document.get("episodes_file") if isinstance(document, dict) else None
    if not name:
        raise DiffshotError(f"{path}: holds no per-episode accuracies; rerun evaluate with --save-episodes FILE.npz")
    target = Path(name)
    target = target if target.is_absolute() else path.parent / target
    if not target.is_file():
        raise DiffshotError(f"{path}: its episodes file {target} is missing")
    return target


def protocol_mismatch(a: dict[str, object], b: dict[str, object]) -> str | None:
    """The first protocol field on which two saved runs differ (so episodes are not paired), else None."""
    return next((key for key in PROTOCOL_KEYS if a.get(key) != b.get(key)), None)
