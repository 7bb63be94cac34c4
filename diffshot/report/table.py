"""Terminal tables that fit the terminal, and the table of an evaluation run (built from the typed result).

A table is a list of :class:`Column`; :func:`fit` renders it as one Rich table when its natural width fits,
else stacks it: the key columns (method, shots) are repeated and the other columns are spread over as many
tables as needed, one under the other, so that no number or method name is ever cut or wrapped.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from diffshot.report.document import imbalance_text
from diffshot.results import EvaluationRun, MethodResult


@dataclasses.dataclass(frozen=True)
class Column:
    """One column: its header, its cells (Rich markup, escaped), how they align, whether they may wrap (text)."""

    header: str
    cells: Sequence[str]
    justify: str = "right"
    wrap: bool = False


_MEASURE = Console(width=100_000, file=io.StringIO(), color_system=None)


def natural_width(table: Table) -> int:
    """The width a table takes when nothing is squeezed."""
    return _MEASURE.measure(table).maximum


def build(title: str | None, columns: Sequence[Column], *, show_header: bool = True) -> Table:
    """One Rich table of ``columns`` (rows are the cells' positions)."""
    table = Table(title=title, title_justify="left", show_header=show_header, min_width=0)
    for column in columns:
        table.add_column(column.header, justify=column.justify, no_wrap=not column.wrap)  # type: ignore[arg-type]
    for row in zip(*(column.cells for column in columns), strict=True):
        table.add_row(*row)
    return table


def fit(
    title: str | None, columns: Sequence[Column], width: int, keys: int = 1, **options: bool
) -> list[RenderableType]:
    """The title (Rich markup) over ``columns`` as one table when it fits ``width``, else over stacked tables that
    repeat the first ``keys`` columns; text columns (``wrap``) count with their header only, so they wrap instead.

    Print the result with ``soft_wrap=False`` so that the title wraps at the output's width, not the table's.
    """
    heading: list[RenderableType] = [Text.from_markup(title, style="italic")] if title else []
    whole = build(None, columns, **options)
    if natural_width(whole) <= width or len(columns) <= keys + 1:
        return [*heading, whole]
    key, rest = list(columns[:keys]), list(columns[keys:])
    parts: list[list[Column]] = [[]]
    for column in rest:
        trial = [
            *key,
            *parts[-1],
            column if not column.wrap else dataclasses.replace(column, cells=[""] * len(column.cells)),
        ]
        if parts[-1] and natural_width(build(None, trial, **options)) > width:
            parts.append([])
        parts[-1].append(column)
    return heading + [build(None, [*key, *part], **options) for part in parts]


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
    """The values ``auto`` parameters took, e.g. ``n_top 8, sigma 4``; empty when none is automatic."""
    return ", ".join(
        f"{key} {value}"
        for key, value in result.resolved.items()
        if result.params.get(key) == "auto" and value != "auto"
    )


OPEN_SET_COLUMNS = {"auroc": "AUROC", "known_accuracy": "known acc.\n(%)", "unknown_recall": "unknown\nrecall (%)"}


def open_set_cells(result: MethodResult) -> list[str]:
    """AUROC, known-class accuracy and unknown recall ± 95% interval (accuracy is already the closed-set one)."""
    summaries = result.open_set or {}
    cells = []
    for key in OPEN_SET_COLUMNS:
        value = summaries.get(key)
        digits = 3 if key == "auroc" else 2
        cells.append("—" if value is None else f"{value.mean:.{digits}f} ± {value.ci95:.{digits}f}")
    return cells


def results_columns(run: EvaluationRun) -> list[Column]:
    """Method, shots, accuracy ± 95% interval, ECE, paired difference to the baseline, open-set metrics,
    episodes/s and resolved auto settings: the columns of the evaluate table."""
    rows = [(evaluation, result) for evaluation in run.evaluations for result in evaluation.results]
    open_set = run.evaluations[0].spec.unknown_queries is not None
    closed = ",\nknown queries" if open_set else ""
    columns = [
        Column("method", [escape(r.method) for _, r in rows], justify="left"),
        Column("shots", [str(e.spec.shots) for e, _ in rows]),
        Column(f"accuracy (%){closed}", [f"{r.summary.mean:.2f} ± {r.summary.ci95:.2f}" for _, r in rows]),
        Column("ECE (%)", [f"{r.ece:.2f}" for _, r in rows]),
    ]
    if run.baseline is not None:
        cells = []
        for evaluation, result in rows:
            diff = run.paired(evaluation, result)
            own = result.method == run.baseline
            cells.append("—" if own or diff is None else f"{diff.mean:+.2f} ± {diff.ci95:.2f}")
        columns.append(Column(f"Δ vs\n{escape(run.baseline)}", cells))
    if open_set:
        cells_by_key = list(zip(*(open_set_cells(r) for _, r in rows), strict=True))
        columns += [
            Column(header, list(cells)) for header, cells in zip(OPEN_SET_COLUMNS.values(), cells_by_key, strict=True)
        ]
    columns.append(Column("episodes/s", [f"{r.episodes_per_second:,.0f}" for _, r in rows]))
    if any(resolved_settings(r) for _, r in rows):
        columns.append(Column("auto settings", [resolved_settings(r) for _, r in rows], justify="left", wrap=True))
    return columns


def results_tables(run: EvaluationRun, width: int) -> list[RenderableType]:
    """The evaluate table, stacked (method and shots repeated) when it is wider than ``width``."""
    return fit(escape(protocol_title(run)), results_columns(run), width, keys=2)
