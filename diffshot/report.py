"""Rendering evaluations: the JSON contract, CSV rows and the Rich table."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from diffshot import __version__
from diffshot.evaluate import Evaluation, MethodResult

SCHEMA_VERSION = 1
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
