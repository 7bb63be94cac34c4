"""`diffshot evaluate`: accuracy ± 95% interval of methods on seeded N-way K-shot episodes."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated

import typer

from diffshot.atomic import write_text_atomic
from diffshot.cli import common
from diffshot.cli.common import (
    AllowExternal,
    Force,
    Labels,
    ProgressMode,
    Quiet,
    Threads,
    claim_outputs,
    comma_list,
    progress,
    show,
    stdout,
    user_errors,
)
from diffshot.cli.demo import default_features
from diffshot.device import resolve_device, set_threads
from diffshot.episodes import MAX_ZIPF
from diffshot.errors import UsageError
from diffshot.methods import REGISTRY
from diffshot.report.document import to_csv, to_json_document
from diffshot.report.episodes_file import save_episode_accuracies
from diffshot.report.table import results_tables
from diffshot.run.config import parse_assignments, read_calibration, read_config
from diffshot.run.evaluate import EvaluationRequest, prepare_runs, run_evaluation

DEFAULT_METHODS = ("simpleshot", "diffusion")
FORMATS = ("table", "json", "csv")
DEFAULT_UNKNOWN_QUERIES = 15
ASSIGN = ", ".join(next(p for p in REGISTRY["diffusion"].declared if p.name == "assign").choices)


def parse_imbalance(text: str | None) -> float | None:
    """``dirichlet:ALPHA`` as the Dirichlet concentration α (> 0); ``None`` or ``none`` for balanced queries."""
    alpha, zipf = parse_query_shares(text)
    if zipf is not None:
        raise UsageError(f"--imbalance {text!r}: expected dirichlet:ALPHA with ALPHA > 0, e.g. dirichlet:2")
    return alpha


def parse_query_shares(text: str | None) -> tuple[float | None, float | None]:
    """``--imbalance``: (Dirichlet α, None) for ``dirichlet:ALPHA``, (None, S) for ``zipf:S``, (None, None) balanced."""
    if text is None or text.strip().lower() in ("none", "balanced"):
        return None, None
    kind, sep, value = text.partition(":")
    kind = kind.strip().lower()
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or kind not in ("dirichlet", "zipf") or not 0 < number < float("inf"):
        raise UsageError(
            f"--imbalance {text!r}: expected dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:2) or zipf:S "
            f"(0 < S ≤ {MAX_ZIPF:g}, e.g. zipf:1.1)"
        )
    if kind == "zipf":
        if number > MAX_ZIPF:
            raise UsageError(f"--imbalance {text!r}: the Zipf exponent S must be at most {MAX_ZIPF:g}")
        return None, number
    return number, None


def episodes_reference(episodes_file: Path, output: Path | None) -> str:
    """How the JSON names the --save-episodes file: relative to the JSON's folder, else absolute."""
    if output is None:
        return str(episodes_file.resolve())
    return os.path.relpath(episodes_file.resolve(), output.resolve().parent)


def output_format(fmt: str | None, output: Path | None) -> str:
    """The format to write: explicit, else from the output's extension (.json, .csv; another is an error), else
    the table on the terminal."""
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose table, json or csv")
    if output is None:
        return fmt or "table"
    if fmt == "table":
        raise UsageError("--format table prints to the terminal; write --output as json or csv")
    return common.output_format("--output", output, fmt, {".json": "json", ".csv": "csv"}, "json")


def open_set_queries(open_set: bool, unknown_queries: int | None) -> int | None:
    """U per unknown class: 15 under a bare ``--open-set``, else ``--unknown-queries U``; None: closed set."""
    if unknown_queries is not None:
        return unknown_queries
    return DEFAULT_UNKNOWN_QUERIES if open_set else None


def shot_counts(values: list[str] | None) -> tuple[int, ...]:
    """``--shots 1 --shots 5`` or ``--shots 1,5`` as integers."""
    counts = []
    for text in comma_list(values, "--shots") or ["1"]:
        try:
            counts.append(int(text))
        except ValueError:
            raise UsageError(f"--shots {text!r}: expected a positive integer") from None
    return tuple(counts)


@user_errors
def evaluate(
    features: Annotated[
        Path | None, typer.Argument(help="Features file (canonical HDF5 or a field format); default: the demo set.")
    ] = None,
    ways: Annotated[int, typer.Option(help="Classes per episode (N).")] = 5,
    shots: Annotated[
        list[str] | None,
        typer.Option(
            metavar="K[,K...]", help="Labelled rows per class (K); repeat or comma-separate for several (default 1)."
        ),
    ] = None,
    queries: Annotated[int, typer.Option(help="Unlabelled query rows per class (Q).")] = 15,
    episodes: Annotated[int, typer.Option(help="Episodes per setting (the field reports 10,000).")] = 10_000,
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            "-m",
            metavar="NAME[:PARAM=VALUE,...]",
            help="Method to run; repeat or comma-separate for several; NAME:PARAM=VALUE is a named variant.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Fixes the episodes: same seed, same tasks for every method.")] = 0,
    split: Annotated[
        str | None, typer.Option(help="Classes to sample: novel|val|base|all (default novel if the file has a split).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda (auto: cuda when torch sees a GPU).")] = "auto",
    knn: Annotated[str | None, typer.Option(help="Neighbour search of graph methods: torch|faiss.")] = None,
    step_size: Annotated[float | None, typer.Option(help="Diffusion step τ (default 0.5).")] = None,
    layers: Annotated[int | None, typer.Option(help="Diffusion steps T (default 6).")] = None,
    n_top: Annotated[str | None, typer.Option(help="Graph size n_top, or auto (default auto; paper 8).")] = None,
    sigma: Annotated[
        str | None, typer.Option(help="Gaussian width rank sigma, or auto (default auto; paper 4).")
    ] = None,
    rectify: Annotated[
        bool | None, typer.Option("--rectify/--no-rectify", help="BD-CSPN prototype rectification (default off).")
    ] = None,
    shift: Annotated[
        bool | None, typer.Option("--shift/--no-shift", help="Cross-domain shift of the queries (default on).")
    ] = None,
    assign: Annotated[
        str | None,
        typer.Option(
            help=f"diffusion's decision: {ASSIGN} (default nearest; balanced: PT-MAP's Sinkhorn step on the "
            "diffused features, assumes every class has the same number of queries; estimated: class shares "
            "estimated from the queries; see `diffshot methods`)."
        ),
    ] = None,
    set_params: Annotated[
        list[str] | None, typer.Option("--set", metavar="METHOD.PARAM=VALUE", help="Any method parameter (repeatable).")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="table|json|csv (default: from --output, else table).")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the results here (atomically).")] = None,
    quiet: Quiet = False,
    progress_mode: ProgressMode = "auto",
    base_mean: Annotated[
        Path | None, typer.Option(help="Base-mean file for pickled features (e.g. *_base_mean.plk).")
    ] = None,
    labels: Labels = None,
    drop_nonfinite: Annotated[bool, typer.Option(help="Drop rows with NaN/Inf instead of failing.")] = False,
    drop_zero: Annotated[bool, typer.Option(help="Drop all-zero rows instead of failing.")] = False,
    chunk_size: Annotated[int | None, typer.Option(help="Episodes per batch (default: sized to memory).")] = None,
    baseline: Annotated[
        str | None,
        typer.Option(help="Add each method's paired difference to this method (same episodes) ± 95% interval."),
    ] = None,
    imbalance: Annotated[
        str | None,
        typer.Option(
            help="Imbalanced queries: dirichlet:ALPHA draws per-class query counts from Dirichlet(α), total kept "
            "(α-TIM protocol; α = 2 in its tables); zipf:S gives shares ∝ 1/rank^S over a seeded class order "
            "(a long tail). PT-MAP and --assign balanced assume balance."
        ),
    ] = None,
    open_set: Annotated[
        bool,
        typer.Option(
            "--open-set",
            help="Open-set episodes: add U queries from each of ways further classes not in the support "
            "(U = 15, or --unknown-queries); reports AUROC, known-class accuracy and unknown recall.",
        ),
    ] = False,
    unknown_queries: Annotated[
        int | None,
        typer.Option(metavar="U", help="Queries per unknown class under --open-set (default 15; implies --open-set)."),
    ] = None,
    query_classes: Annotated[
        int | None,
        typer.Option(
            help="Queries from only M of the N support classes (1 ≤ M ≤ N), chosen by the seed (PADDLE's setting); "
            "the total stays N × queries, spread over the M (by the Dirichlet draw under --imbalance)."
        ),
    ] = None,
    save_episodes: Annotated[
        Path | None,
        typer.Option(help="Save per-episode accuracies (with seed, protocol, features sha256) to this .npz."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML of method parameters (e.g. from `diffshot tune`); flags override it.")
    ] = None,
    episodes_file: Annotated[
        Path | None,
        typer.Option(
            readable=False,
            help="Run on the episodes this file stores instead of sampling: a --save-episodes .npz (or its JSON), or "
            "an .npz of 'support' and 'query' row indices [episodes, rows] (a paper's fixed episodes); it sets ways, "
            "shots, queries and episodes.",
        ),
    ] = None,
    force: Force = False,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw accuracy ± 95% interval per method (png/svg/pdf; diffshot[plot]).")
    ] = None,
    allow_external_data: AllowExternal = False,
    threads: Threads = None,
) -> None:
    """Evaluate few-shot methods on seeded episodes: accuracy ± 95% interval (1.96·std/√n), in percent."""
    set_threads(threads)
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose table, json or csv")
    path = features if features is not None else default_features()
    if episodes_file is not None:
        given = {
            "--ways": ways != 5,
            "--shots": bool(shots),
            "--queries": queries != 15,
            "--episodes": episodes != 10_000,
        }
        given |= {"--imbalance": imbalance is not None, "--open-set": open_set or unknown_queries is not None}
        given |= {"--query-classes": query_classes is not None, "--split": split is not None}
        clash = [flag for flag, there in given.items() if there]
        if clash:
            raise UsageError(f"--episodes-file sets the episodes; drop {', '.join(clash)}")
    inputs = [path, base_mean, labels, config, episodes_file]
    checks = [lambda: output_format(fmt, output)]
    claim_outputs([output], inputs, binary=[save_episodes, plot], force=force, checks=checks)
    fmt = output_format(fmt, output)
    if plot is not None:
        from diffshot.plot.backend import figure_format

        figure_format(plot)
    shared = {"knn": knn, "step_size": step_size, "layers": layers, "n_top": n_top, "sigma": sigma}
    shared |= {"rectify": rectify, "shift": shift, "assign": assign}
    request = EvaluationRequest(
        features=path,
        methods=tuple(comma_list(method, "--method") or DEFAULT_METHODS),
        ways=ways,
        shots=shot_counts(shots),
        queries=queries,
        episodes=episodes,
        seed=seed,
        split=split,
        imbalance=parse_query_shares(imbalance)[0],
        zipf=parse_query_shares(imbalance)[1],
        unknown_queries=open_set_queries(open_set, unknown_queries),
        query_classes=query_classes,
        chunk_size=chunk_size,
        baseline=baseline,
        config=read_config(config) if config is not None else None,
        temperatures=read_calibration(config) if config is not None else {},
        shared=shared,
        assignments=parse_assignments(set_params or []),
        base_mean=base_mean,
        labels=labels,
        episodes_file=episodes_file,
        record_rows=save_episodes is not None,
        drop_nonfinite=drop_nonfinite,
        drop_zero=drop_zero,
        allow_external=allow_external_data,
    )
    prepare_runs(request)
    request = _on_device(request, device)
    total = request.episodes * len(set(request.shots)) if episodes_file is None else stored_episodes(episodes_file)
    with progress(quiet, total, "episodes", progress_mode) as advance:
        run = run_evaluation(request, advance)
    document = to_json_document(run)
    if episodes_file is not None:
        document["episodes_replayed_from"] = str(episodes_file)
    if save_episodes is not None:
        save_episode_accuracies(save_episodes, run)
        document["episodes_file"] = episodes_reference(save_episodes, output)
    if plot is not None:
        from diffshot.plot import draw_for_results

        draw_for_results(document, plot)
    rendered = {"json": lambda: json.dumps(document, indent=2) + "\n", "csv": lambda: to_csv(run)}
    if output is not None:
        write_text_atomic(output, rendered[fmt]())
    if output is None and fmt in rendered:
        typer.echo(rendered[fmt](), nl=False)
    else:
        show(results_tables(run, stdout.width))


def stored_episodes(path: Path) -> int:
    """How many episodes an --episodes-file holds over all its settings (for the progress bar)."""
    from diffshot.run.replay import load_stored_episodes

    return sum(stored.support.shape[0] for stored in load_stored_episodes(path))


def _on_device(request: EvaluationRequest, device: str) -> EvaluationRequest:
    """The request with its device resolved (``auto`` picks CUDA when torch sees a GPU)."""
    return dataclasses.replace(request, device=resolve_device(device))
