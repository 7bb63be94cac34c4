"""`diffshot batch`: run a TOML suite of evaluations for CI; exit 1 on a missed threshold, 2 on a bad suite."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from diffshot.cli.common import (
    AllowExternal,
    Force,
    ProgressMode,
    Quiet,
    Threads,
    claim_outputs,
    fail,
    progress,
    show,
    stderr,
    stdout,
    user_errors,
)
from diffshot.device import resolve_device, set_threads
from diffshot.errors import UsageError, printable
from diffshot.report.batch import output_paths, write_outputs
from diffshot.report.table import Column, fit
from diffshot.results import Entry, Outcome
from diffshot.run.batch import SuiteError, parse_suite, run_suite


@user_errors
def batch(
    suite: Annotated[Path, typer.Argument(help="TOML suite; its paths resolve relative to the suite file.")],
    output_dir: Annotated[Path, typer.Option(help="Folder for per-entry JSON, CSV, Markdown (created if missing).")],
    junit: Annotated[Path | None, typer.Option(help="JUnit XML path (default OUTPUT_DIR/junit.xml).")] = None,
    config: Annotated[Path | None, typer.Option(help="Tuned TOML config applied to every entry's methods.")] = None,
    skip_missing: Annotated[bool, typer.Option(help="Skip (not fail) entries whose features file is absent.")] = False,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda.")] = "auto",
    quiet: Quiet = False,
    progress_mode: ProgressMode = "auto",
    plots: Annotated[
        Path | None, typer.Option(help="Draw one figure per entry (and a summary) into this folder; diffshot[plot].")
    ] = None,
    force: Force = False,
    allow_external_data: AllowExternal = False,
    threads: Threads = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Run the settings on a local Dask cluster of N processes, --threads each (default: cores / N); "
            "diffshot[dask]."
        ),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Run the settings on the Dask cluster at this address (tcp://host:8786).")
    ] = None,
) -> None:
    """Run every entry of a suite; write JSON per entry, results.csv, summary.md and JUnit XML."""
    set_threads(threads)
    if plots is not None and plots.exists() and not plots.is_dir():
        raise UsageError(f"--plots {plots}: is a file; give a folder for the figures")
    if workers is not None and scheduler is not None:
        raise UsageError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be a positive integer, got {workers}")
    if workers is not None or scheduler is not None:
        from diffshot.run.distributed import check_workers, require_distributed

        check_workers(workers)
        require_distributed()
    try:
        entries = parse_suite(suite, config)
        paths = output_paths(output_dir, entries, junit)
        claim_outputs(paths.values(), [suite, config, *(e.features for e in entries)], force=force)
        if workers is None and scheduler is None:
            with progress(quiet, len(entries), "batch: entries", progress_mode) as advance:
                started = iter(range(len(entries)))
                outcomes = run_suite(
                    entries,
                    str(resolve_device(device)),
                    skip_missing,
                    on_entry=lambda e: advance(next(started), f"batch: entry {e.name}"),
                    allow_external=allow_external_data,
                )
        else:
            outcomes = _on_dask(
                entries, device, skip_missing, quiet, allow_external_data, threads, workers, scheduler, progress_mode
            )
    except SuiteError as exc:
        raise fail(str(exc).replace("\n", " "), 2) from None
    figures = write_outputs(paths, outcomes, None if plots is None else lambda written: _draw(written, plots))
    errors = [(o.entry.name, m, why) for o in outcomes for m, why in o.errors.items()]
    failures = [(o.entry.name, m, acc, limit) for o in outcomes for m, (acc, limit) in o.failures().items()]
    show(fit(None, _results_columns(outcomes), stdout.width, keys=2))
    if not quiet:
        stdout.print(
            f"results in {output_dir}" + (f", {len(figures)} figures in {plots}" if figures else ""), highlight=False
        )
    if errors:
        name, method, why = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise fail(f"entry {name!r} method {method}: did not run: {why}{more}", 1)
    if failures:
        name, method, acc, limit = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise fail(f"entry {name!r} method {method}: accuracy {acc:.2f} is below fail_under {limit:.2f}{more}", 1)


def _draw(written: list[Path], folder: Path) -> list[Path]:
    """``--plots``: a figure per entry JSON (and one of all entries) in ``folder``, created when missing."""
    from diffshot.plot import draw_batch

    folder.mkdir(parents=True, exist_ok=True)
    return draw_batch(written, folder)


def _on_dask(
    entries: list[Entry],
    device: str,
    skip_missing: bool,
    quiet: bool,
    allow_external: bool,
    threads: int | None,
    workers: int | None,
    scheduler: str | None,
    progress_mode: str = "auto",
) -> list[Outcome]:
    """The suite's settings on a Dask cluster (local or at ``scheduler``), with settings done / total on stderr."""
    from diffshot.run.distributed import dask_client, run_suite_dask, settings_of

    resolved = str(resolve_device(device))
    total = len(settings_of(entries))
    where = f"Dask scheduler {scheduler}" if scheduler else f"a local Dask cluster of {workers} processes"
    if not quiet:
        stderr.print(f"running {total} settings on {where}", highlight=False)
    with progress(quiet, total, "settings", progress_mode) as advance:

        def done(count: int, total: int, name: str) -> None:
            advance(count, f"settings {count}/{total}")
            if not quiet:
                stderr.print(f"done {count}/{total}: {name}", highlight=False)

        if workers is not None and threads is None:
            threads = max(1, (os.cpu_count() or 1) // workers)
        with dask_client(workers, scheduler, threads) as client:
            return run_suite_dask(entries, client, resolved, skip_missing, threads, done, allow_external)


def _results_columns(outcomes: list[Outcome]) -> list[Column]:
    """Entry, method and accuracy ± 95% interval, or why an entry or method has none (skipped, error)."""
    rows: list[tuple[str, str, str]] = []
    for outcome in outcomes:
        name = printable(outcome.entry.name)
        rows += [(name, printable(m), f"{mean:.2f} ± {ci:.2f}") for m, (mean, ci, _, _) in outcome.accuracies().items()]
        if outcome.skipped:
            rows.append((name, "—", f"skipped ({printable(outcome.skipped)})"))
        rows += [(name, printable(m), f"error ({printable(why)})") for m, why in outcome.errors.items()]
    entries, methods, results = zip(*rows, strict=True) if rows else ((), (), ())
    return [
        Column("entry", entries, justify="left"),
        Column("method", methods, justify="left"),
        Column("accuracy (%)", results, wrap=True),
    ]
