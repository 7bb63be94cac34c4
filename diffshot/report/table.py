"""The terminal table of an evaluation run, built from the typed result (never from the JSON text)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from diffshot.report.document import imbalance_text
from diffshot.results import EvaluationRun, MethodResult


def protocol_title(run: EvaluationRun) -> str:
    """What is the same for every row: features, split, seed, ways, queries and episodes."""
    first = run.evaluations[0]
    queries = f"{first.spec.queries} queries per class" + (
        f" on average ({imbalance_text(first)})" if first.spec.skewed else ""
    )
    if first.spec.query_classes is not None:
        balance = f" ({imbalance_text(first)})" if first.spec.skewed else ""
        queries = f"{first.spec.num_query} queries{balance} from {first.spec.query_classes} of the classes"
    if first.spec.unknown_queries is not None:
        queries += f" + {first.spec.ways} unknown classes × {first.spec.unknown_queries} queries"
    return (
        f"{run.source.path} · {first.split} classes · seed {first.seed} · {first.spec.ways}-way, "
        f"{queries}, {first.episodes:,} episodes"
    )


def resolved_settings(result: MethodResult) -> str:
    """The values ``auto`` parameters took, e.g. ``n_top 8 (auto)``; empty when none is automatic."""
    return ", ".join(
        f"{key} {value} (auto)"
        for key, value in result.resolved.items()
        if result.params.get(key) == "auto" and value != "auto"
    )


OPEN_SET_COLUMNS = {"auroc": "AUROC", "known_accuracy": "known acc. (%)", "unknown_recall": "unknown recall (%)"}


def open_set_cells(result: MethodResult) -> list[str]:
    """AUROC, known-class accuracy and unknown recall ± 95% interval (accuracy is already the closed-set one)."""
    summaries = result.open_set or {}
    cells = []
    for key in OPEN_SET_COLUMNS:
        value = summaries.get(key)
        digits = 3 if key == "auroc" else 2
        cells.append("—" if value is None else f"{value.mean:.{digits}f} ± {value.ci95:.{digits}f}")
    return cells


def results_table(run: EvaluationRun) -> Table:
    """Method, shots, accuracy ± 95% interval, ECE, paired difference to the baseline, resolved settings, episodes/s."""
    table = Table(title=escape(protocol_title(run)), title_justify="left")
    table.add_column("method", no_wrap=True, min_width=max(len(r.method) for e in run.evaluations for r in e.results))
    table.add_column("shots", justify="right")
    closed = " on known queries" if run.evaluations[0].spec.unknown_queries is not None else ""
    table.add_column(f"accuracy{closed} (%)", justify="right", no_wrap=True)
    table.add_column("ECE (%)", justify="right", no_wrap=True)
    if run.baseline is not None:
        table.add_column(f"Δ vs {escape(run.baseline)}", justify="right", no_wrap=True)
    open_set = run.evaluations[0].spec.unknown_queries is not None
    if open_set:
        for column in OPEN_SET_COLUMNS.values():
            table.add_column(column, justify="right", no_wrap=True)
    settings = any(resolved_settings(r) for e in run.evaluations for r in e.results)
    if settings:
        table.add_column("auto settings")
    table.add_column("episodes/s", justify="right")
    for evaluation in run.evaluations:
        for result in evaluation.results:
            summary = result.summary
            cells = [escape(result.method), str(evaluation.spec.shots), f"{summary.mean:.2f} ± {summary.ci95:.2f}"]
            cells.append(f"{result.ece:.2f}")
            if run.baseline is not None:
                diff = run.paired(evaluation, result)
                own = result.method == run.baseline
                cells.append("—" if own or diff is None else f"{diff.mean:+.2f} ± {diff.ci95:.2f}")
            if open_set:
                cells.extend(open_set_cells(result))
            if settings:
                cells.append(resolved_settings(result))
            cells.append(f"{result.episodes_per_second:,.0f}")
            table.add_row(*cells)
    return table
