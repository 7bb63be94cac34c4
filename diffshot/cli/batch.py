"""`diffshot batch`: run a TOML suite of evaluations for CI; exit 1 on a missed threshold, 2 on a bad suite."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffshot.cli.common import AllowExternal, Force, Threads, claim_outputs, fail, stderr, stdout, user_errors
from diffshot.device import resolve_device, set_threads
from diffshot.errors import UsageError
from diffshot.run.batch import SuiteError, output_paths, parse_suite, run_suite, write_outputs


@user_errors
def batch(
    suite: Annotated[Path, typer.Argument(help="TOML suite; its paths resolve relative to the suite file.")],
    output_dir: Annotated[Path, typer.Option(help="Folder for per-entry JSON, CSV, Markdown (created if missing).")],
    junit: Annotated[Path | None, typer.Option(help="JUnit XML path (default OUTPUT_DIR/junit.xml).")] = None,
    config: Annotated[Path | None, typer.Option(help="Tuned TOML config applied to every entry's methods.")] = None,
    skip_missing: Annotated[bool, typer.Option(help="Skip (not fail) entries whose features file is absent.")] = False,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-entry lines.")] = False,
    plots: Annotated[
        Path | None, typer.Option(help="Draw one figure per entry (and a summary) into this folder; diffshot[plot].")
    ] = None,
    force: Force = False,
    allow_external_data: AllowExternal = False,
    threads: Threads = None,
) -> None:
    """Run every entry of a suite; write JSON per entry, results.csv, summary.md and JUnit XML."""
    set_threads(threads)
    if plots is not None and plots.exists() and not plots.is_dir():
        raise UsageError(f"--plots {plots}: is a file; give a folder for the figures")
    try:
        entries = parse_suite(suite, config)
        paths = output_paths(output_dir, entries, junit)
        claim_outputs(paths.values(), [suite, config, *(e.features for e in entries)], force=force)
        outcomes = run_suite(
            entries,
            str(resolve_device(device)),
            skip_missing,
            on_entry=None if quiet else lambda e: stderr.print(f"running {e.name}", highlight=False),
            allow_external=allow_external_data,
        )
    except SuiteError as exc:
        raise fail(str(exc).replace("\n", " "), 2) from None
    figures = write_outputs(paths, outcomes, plots)
    failures = [(o.entry.name, m, acc, limit) for o in outcomes for m, (acc, limit) in o.failures().items()]
    if not quiet:
        for outcome in outcomes:
            for method, (mean, ci, _, _) in outcome.accuracies().items():
                stdout.print(f"{outcome.entry.name} {method}: {mean:.2f} ± {ci:.2f}", highlight=False)
            if outcome.skipped:
                stdout.print(f"{outcome.entry.name}: skipped ({outcome.skipped})", highlight=False)
        stdout.print(
            f"results in {output_dir}" + (f", {len(figures)} figures in {plots}" if figures else ""), highlight=False
        )
    if failures:
        name, method, acc, limit = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise fail(f"entry {name!r} method {method}: accuracy {acc:.2f} is below fail_under {limit:.2f}{more}", 1)
