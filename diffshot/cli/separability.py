"""`diffshot separability`: the paper's distance-diameter ratio and accuracy after each layer of a layer-wise method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import RenderableType
from rich.markup import escape

from diffshot.atomic import write_text_atomic
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
from diffshot.report.separability import to_document
from diffshot.report.table import Column, fit
from diffshot.results import QUANTITIES
from diffshot.run.separability import episode_view, measure, parse_layers, pca_2d, separability_run

HEADERS = {
    "min_inter": "min\ninter-class",
    "max_diameter": "max\ndiameter",
    "mean_intra": "mean\nintra-class",
    "ratio": "ratio",
    "accuracy": "accuracy (%)",
}
VIEW_DEFAULT_LAYER = 6


def layer_assignments(items: list[str], method: str) -> dict[str, str]:
    """``--set PARAM=VALUE`` (or ``METHOD.PARAM=VALUE`` naming ``method``) items as {param: value}.

    A malformed item exits here, in the user's words, rather than through the parameter-to-flag rewording.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        owner, _, name = key.strip().rpartition(".")
        if not sep or not name or owner not in ("", method):
            raise fail(f"--set {item!r}: expected PARAM=VALUE (or {method}.PARAM=VALUE), e.g. n_top=8", 2)
        out[name.replace("-", "_")] = value
    return out


def episode_plot_path(plot: Path, index: int) -> Path:
    """Where ``--show-episode I`` writes its view: beside the --plot figure, ``<stem>-episode<I><suffix>``."""
    return plot.with_name(f"{plot.stem}-episode{index}{plot.suffix}")


@user_errors
def separability(
    features: Annotated[Path, typer.Argument(help="Features file (canonical HDF5 or a field format).")],
    ways: Annotated[int, typer.Option(help="Classes per episode.")] = 5,
    shots: Annotated[int, typer.Option(help="Labelled rows per class.")] = 1,
    queries: Annotated[int, typer.Option(help="Query rows per class.")] = 15,
    episodes: Annotated[int, typer.Option(help="Episodes (the same ones evaluate draws for this seed).")] = 1000,
    layers: Annotated[str, typer.Option(help="Layers t to report: 0..20, 0,2,6 or 6 (0 = undiffused).")] = "0..20",
    seed: Annotated[int, typer.Option(help="Episode seed.")] = 0,
    method: Annotated[
        str, typer.Option("--method", "-m", help="Method to step layer by layer (one with a layer-wise view).")
    ] = "diffusion",
    set_params: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="PARAM=VALUE", help="A layer parameter of the method (repeatable)."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Classes to sample (default: novel if the file has a split).")
    ] = None,
    step_size: Annotated[float | None, typer.Option(help="Diffusion step τ (default 0.5).")] = None,
    n_top: Annotated[str | None, typer.Option(help="Graph size n_top, or auto (default auto).")] = None,
    sigma: Annotated[str | None, typer.Option(help="Gaussian width rank sigma, or auto (default auto).")] = None,
    shift: Annotated[
        bool | None, typer.Option("--shift/--no-shift", help="Cross-domain shift of the queries (default on).")
    ] = None,
    knn: Annotated[str | None, typer.Option(help="Neighbour search: torch|faiss.")] = None,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda.")] = "auto",
    plot: Annotated[Path | None, typer.Option(help="Figure of ratio and accuracy against t (.png/.svg/.pdf).")] = None,
    show_episode: Annotated[
        int | None,
        typer.Option(help="Also draw episode I before and after diffusion (2-D PCA), beside --plot as STEM-episodeI."),
    ] = None,
    view_layer: Annotated[
        int | None, typer.Option(help="Layer of the --show-episode 'after' view (default 6, or the last layer).")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON here (atomically).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table|json (what is printed).")] = "table",
    labels: Labels = None,
    quiet: Quiet = False,
    progress_mode: ProgressMode = "auto",
    force: Force = False,
    allow_external_data: AllowExternal = False,
    threads: Threads = None,
) -> None:
    """Per layer t: min inter-class distance, max class diameter, mean intra-class distance, their ratio, accuracy.

    Distances use support and queries with their true labels (an analysis tool; methods never see query labels).
    """
    set_threads(threads)
    if fmt not in ("table", "json"):
        raise UsageError(f"--format {fmt!r}: choose table or json")
    wanted = parse_layers(layers)
    if show_episode is not None and plot is None:
        raise UsageError("--show-episode needs --plot FIG (the episode view is written beside it)")
    view = None if show_episode is None or plot is None else episode_plot_path(plot, show_episode)
    checks = [lambda: check_extension("--output", output, (".json",))]
    claim_outputs([output], [features, labels], binary=[plot, view], force=force, checks=checks)
    if plot is not None:
        from diffshot.plot.backend import figure, figure_format

        figure_format(plot)
        figure()  # fails now, with the one-line missing-extra error, rather than after the run
    overrides = {"step_size": step_size, "n_top": n_top, "sigma": sigma, "shift": shift, "knn": knn}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    given = layer_assignments(set_params or [], method)
    if set(given) & set(overrides):
        raise fail(f"--set {', '.join(sorted(set(given) & set(overrides)))}: also given as its own option", 2)
    overrides |= given
    method = separability_run(method, overrides).method.name  # a usage error now, before any file is read
    spec = EpisodeSpec(ways, shots, queries)
    fs = load_features(features, allow_external=allow_external_data, labels_path=labels)
    with progress(quiet, episodes, "separability: episodes", progress_mode) as advance:
        result = measure(
            fs, spec, wanted, episodes, seed, split, overrides, resolve_device(device), method=method, on_chunk=advance
        )
    document = to_document(result, features, fs) | {"method": method}
    if output is not None:
        write_text_atomic(output, json.dumps(document, indent=2) + "\n")
    if fmt == "json":
        typer.echo(json.dumps(document, indent=2))
    else:
        show(_table(document))
        peaks = document["peaks"]
        stdout.print(
            f"mean ratio peaks at t = {peaks['ratio']}, accuracy at t = {peaks['accuracy']} "
            f"(distances over support + queries with true labels)",
            highlight=False,
        )
    if plot is not None:
        from diffshot.plot.backend import save_figure
        from diffshot.plot.draw import draw_separability, separability_title
        from diffshot.plot.figures import episode_view_figure

        save_figure(draw_separability(document, str(output or features)).figure, plot)
        if show_episode is not None:
            layer = view_layer if view_layer is not None else min(VIEW_DEFAULT_LAYER, wanted[-1]) or wanted[-1]
            view = episode_view(fs, spec, show_episode, layer, seed, split, overrides, method)
            title = separability_title(document).replace("separability: ", f"episode {show_episode} of ", 1)
            title = title.replace(f" · {episodes} episodes", "")
            coords = pca_2d(view.before), pca_2d(view.after)
            drawn = episode_view_figure(*coords, view.labels, view.support, layer, title)
            save_figure(drawn.figure, episode_plot_path(plot, show_episode))


def _table(document: dict) -> list[RenderableType]:
    """One row per layer: each quantity's mean ± 95% interval over episodes (stacked when wider than the output)."""
    proto = document["protocol"]
    title = (
        f"{escape(document['features']['path'])} · {proto['split']} classes · "
        f"{proto['ways']}-way {proto['shots']}-shot {proto['queries']}-query · "
        f"{proto['episodes']} episodes · seed {proto['seed']}"
    )
    entries = document["layers"]
    columns = [Column("t", [str(entry["layer"]) for entry in entries])]
    for q in QUANTITIES:
        digits = 2 if q == "accuracy" else 4
        cells = [
            "-" if e[q]["mean"] is None else f"{e[q]['mean']:.{digits}f} ± {e[q]['ci95']:.{digits}f}" for e in entries
        ]
        columns.append(Column(HEADERS[q], cells))
    return fit(title, columns, stdout.width)
