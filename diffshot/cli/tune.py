"""`diffshot tune`: grid-search a method's hyper-parameters on validation classes, write the best as TOML."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import RenderableType

from diffshot.cli.common import (
    AllowExternal,
    Force,
    Labels,
    ProgressMode,
    Quiet,
    Threads,
    check_extension,
    claim_outputs,
    fail,
    progress,
    show,
    stdout,
    user_errors,
)
from diffshot.device import resolve_device, set_threads
from diffshot.episodes import EpisodeSpec
from diffshot.errors import UsageError
from diffshot.features import load_features
from diffshot.methods import REGISTRY, Method, get_method
from diffshot.report.table import Column, fit
from diffshot.report.tune import write_tune_json
from diffshot.run.config import write_config
from diffshot.run.tune import METHOD, TuneResult, step_layer_view
from diffshot.run.tune import tune as run_tune

AXIS_HELP = "Comma-separated values to try"
HEADERS = {"step_size": "τ", "layers": "T"}  # diffusion's axes as the paper names them


def _axis(text: str | None) -> list[str] | None:
    """A comma-separated grid axis, or None to keep the default."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def tuned_method(name: str) -> Method:
    """The registered method ``name`` if it declares a grid to tune; else a usage error naming those that do."""
    found = get_method(name)
    if not found.grid:
        able = ", ".join(m.name for m in REGISTRY.values() if m.grid)
        raise UsageError(f"method {found.name} declares no grid to tune; tune runs {able}")
    return found


def grid_axes(found: Method, named: dict[str, str | None], items: list[str]) -> dict[str, list[str]]:
    """The axes to replace: diffusion's named options (``--step-size``…) and ``--grid PARAM=V1,V2`` items, each
    checked to be an axis of ``found``'s grid; a named option with another method, or an axis twice, is refused.

    These messages echo the user's words, so they exit here rather than through the parameter-to-flag rewording.
    """
    axes = tuple(key for key, _ in found.grid)
    grid: dict[str, list[str]] = {}
    for key, text in named.items():
        if text is None:
            continue
        if found.name != METHOD:
            flag = "--" + key.replace("_", "-")
            raise fail(f"{flag} is a diffusion option; for {found.name} give --grid PARAM=V1,V2 ({', '.join(axes)})", 2)
        grid[key] = _axis(text) or []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise fail(f"--grid {item!r}: expected PARAM=V1,V2, e.g. {axes[0]}=1,2", 2)
        if key not in axes:
            raise fail(f"--grid {item!r}: {found.name} tunes {', '.join(axes)}, not {key!r}", 2)
        if key in grid:
            raise fail(f"--grid {item!r}: the {key} axis is given twice", 2)
        grid[key] = _axis(text) or []
    return grid


@user_errors
def tune(
    features: Annotated[Path, typer.Argument(help="Features file with a class split (val classes are used).")],
    split: Annotated[str, typer.Option(help="Classes to tune on (val; novel needs --allow-novel).")] = "val",
    allow_novel: Annotated[bool, typer.Option(help="Allow tuning on novel (test) classes; inflates results.")] = False,
    ways: Annotated[int, typer.Option(help="Classes per episode.")] = 5,
    shots: Annotated[
        list[int] | None,
        typer.Option(metavar="K", help="Labelled rows per class (one count: tune once per shot count)."),
    ] = None,
    queries: Annotated[int, typer.Option(help="Query rows per class.")] = 15,
    episodes: Annotated[int, typer.Option(help="Episodes, the same for every configuration.")] = 2000,
    seed: Annotated[int, typer.Option(help="Episode seed.")] = 0,
    method: Annotated[
        str, typer.Option("--method", "-m", help="Method to tune (one that declares a grid; see `diffshot methods`).")
    ] = METHOD,
    grid_items: Annotated[
        list[str] | None,
        typer.Option(
            "--grid", metavar="PARAM=V1,V2", help="Values to try for an axis of the method's grid (repeatable)."
        ),
    ] = None,
    step_size: Annotated[str | None, typer.Option(help=f"{AXIS_HELP} for τ (default 0.1,0.25,0.5,0.75,1).")] = None,
    layers: Annotated[str | None, typer.Option(help=f"{AXIS_HELP} for T (default 1,2,4,6,8,12).")] = None,
    n_top: Annotated[str | None, typer.Option(help=f"{AXIS_HELP} for n_top (default auto).")] = None,
    sigma: Annotated[str | None, typer.Option(help=f"{AXIS_HELP} for sigma (default auto).")] = None,
    rectify: Annotated[str | None, typer.Option(help=f"{AXIS_HELP} for rectify (default false).")] = None,
    shift: Annotated[str | None, typer.Option(help=f"{AXIS_HELP} for shift (default true).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Write the best configuration here (TOML).")] = Path(
        "tuned.toml"
    ),
    top: Annotated[int, typer.Option(help="Rows of the ranked table to show.")] = 10,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda.")] = "auto",
    grid_json: Annotated[
        Path | None, typer.Option(help="Also write every grid point as JSON (for `diffshot plot`'s heat map).")
    ] = None,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate/--no-calibrate",
            help="Also fit the best's confidence temperature on the same episodes (minimum NLL) into [calibration].",
        ),
    ] = True,
    quiet: Quiet = False,
    progress_mode: ProgressMode = "auto",
    force: Force = False,
    labels: Labels = None,
    allow_external_data: AllowExternal = False,
    threads: Threads = None,
) -> None:
    """Rank a grid of a method's settings on the same episodes of the val classes; write the best to TOML."""
    set_threads(threads)
    found = tuned_method(method)
    counts = list(dict.fromkeys(shots or [1]))
    if len(counts) > 1:
        raise UsageError(
            f"--shots {', '.join(map(str, counts))}: tune ranks one shot count at a time; run it once per count"
        )
    shots = counts[0]
    replacing = output.exists() and str(output) != "-"
    checks = [lambda: check_extension("--output", output, (".toml",))]
    checks.append(lambda: check_extension("--grid-json", grid_json, (".json",)))
    claim_outputs([output, grid_json], [features, labels], force=force, checks=checks)
    named = {"step_size": step_size, "layers": layers, "n_top": n_top, "sigma": sigma}
    grid = grid_axes(found, named | {"rectify": rectify, "shift": shift}, grid_items or [])
    spec = EpisodeSpec(ways, shots, queries)
    fs = load_features(features, allow_external=allow_external_data, labels_path=labels)
    setting = f"tuning {ways}-way {shots}-shot"
    with progress(quiet, episodes, setting, progress_mode) as advance:
        result = run_tune(
            fs,
            spec,
            grid,
            episodes,
            seed,
            split,
            allow_novel,
            str(resolve_device(device)),
            on_chunk=lambda done, point: advance(done, f"{setting} · {point}"),
            calibrate=calibrate,
            method=found.name,
        )
    best = result.best
    summary = best.result.summary
    comments = [
        f"written by diffshot tune: {features}, split {split}, {ways}-way {shots}-shot {queries}-query, "
        f"{episodes} episodes, seed {seed}",
        f"best accuracy {summary.mean:.2f} ± {summary.ci95:.2f} over {len(result.ranked)} configurations",
    ]
    calibration = None
    if result.temperature is not None:
        calibration = {found.name: result.temperature}
        comments.append(f"confidence temperature {result.temperature:.6g} of the best: {result.temperature_note}")
    write_config(output, {found.name: best.result.params}, comments, calibration)
    if grid_json is not None:
        write_tune_json(grid_json, result, features, fs)
    show(_ranked_table(result, top))
    if {"step_size", "layers"} <= set(result.grid):
        show(_view_table(result))
    if result.temperature is not None:
        stdout.print(
            f"confidence temperature {result.temperature:.4g} on {split}: {result.temperature_note}; "
            f"ECE at the default 0.1: {best.result.ece:.2f}"
        )
    stdout.print(
        f"best configuration written to {output}" + (" (replacing the file that was there)" if replacing else "")
    )
    if result.edges:
        warnings.warn(
            f"the best value of {', '.join(result.edges)} is at the edge of the grid; widen it and tune again",
            stacklevel=1,
        )


def _ranked_table(result: TuneResult, top: int) -> list[RenderableType]:
    """The best ``top`` configurations with accuracy ± 95% interval and the paired gap to the best.

    A parameter with one value in every row shown is said in the title rather than given a column.
    """
    entries = result.ranked[: max(1, top)]
    params = [entry.params for entry in entries]
    columns = [Column("rank", [str(rank) for rank in range(1, len(entries) + 1)])]
    same = []
    for key in result.grid:
        header = HEADERS.get(key, key)
        cells = [f"{p[key]:g}" if isinstance(p[key], float) else str(p[key]) for p in params]
        if len(set(cells)) == 1 and len(cells) > 1:
            same.append(f"{header} {cells[0]}")
        else:
            columns.append(Column(header, cells))
    summaries = [entry.result.summary for entry in entries]
    columns.append(Column("accuracy (%)", [f"{s.mean:.2f} ± {s.ci95:.2f}" for s in summaries]))
    gaps = [f"{e.versus_best.mean:+.2f} ± {e.versus_best.ci95:.2f}" for e in entries[1:]]
    columns.append(Column("Δ vs best", ["best", *gaps]))
    title = f"{len(result.ranked)} configurations, ranked (same episodes)"
    return fit(title + (f"; every row: {', '.join(same)}" if same else ""), columns, stdout.width)


def _view_table(result: TuneResult) -> list[RenderableType]:
    """Accuracy over τ (rows) × T (columns), other parameters at the best's values."""
    taus, depths, values = step_layer_view(result)
    columns = [Column("τ \\ T", [f"{tau:g}" for tau in taus])]
    for j, depth in enumerate(depths):
        columns.append(Column(str(depth), ["-" if math.isnan(row[j]) else f"{row[j]:.2f}" for row in values]))
    return fit("accuracy (%): τ (rows) × T (columns)", columns, stdout.width)
