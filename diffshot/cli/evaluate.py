"""`diffshot evaluate`: accuracy ± 95% interval of methods on seeded N-way K-shot episodes."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from diffshot.atomic import write_text_atomic
from diffshot.cli.common import Force, claim_outputs, interactive, stderr, stdout, user_errors
from diffshot.cli.demo import default_features
from diffshot.config import read_config
from diffshot.device import resolve_device
from diffshot.episodes import EpisodeSpec
from diffshot.errors import DiffshotError
from diffshot.evaluate import evaluate as run_evaluation
from diffshot.features import file_sha256, load_features
from diffshot.methods import get_method
from diffshot.report import features_info, results_table, save_episode_accuracies, to_csv, to_json_document

DEFAULT_METHODS = ("simpleshot", "diffusion")
FORMATS = ("table", "json", "csv")


def parse_imbalance(text: str | None) -> float | None:
    """``dirichlet:ALPHA`` as the Dirichlet concentration α (> 0); ``None`` or ``none`` for balanced queries."""
    if text is None or text.strip().lower() in ("none", "balanced"):
        return None
    kind, sep, value = text.partition(":")
    try:
        alpha = float(value)
    except ValueError:
        alpha = float("nan")
    if kind.strip().lower() != "dirichlet" or not sep or not alpha > 0 or alpha == float("inf"):
        raise DiffshotError(f"--imbalance {text!r}: expected dirichlet:ALPHA with ALPHA > 0, e.g. dirichlet:2")
    return alpha


def episodes_reference(episodes_file: Path, output: Path | None) -> str:
    """How the JSON names the --save-episodes file: relative to the JSON's folder, else absolute."""
    if output is None:
        return str(episodes_file.resolve())
    return os.path.relpath(episodes_file.resolve(), output.resolve().parent)


def parse_assignments(items: list[str]) -> dict[str, dict[str, str]]:
    """``METHOD.KEY=VALUE`` strings as {method: {key: value}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise DiffshotError(f"--set {item!r}: expected METHOD.PARAM=VALUE, e.g. diffusion.layers=8")
        get_method(method)
        out.setdefault(method, {})[name.replace("-", "_")] = value
    return out


def method_overrides(
    methods: list[str],
    shared: dict[str, object],
    assignments: dict[str, dict[str, str]],
    config: Mapping[str, Mapping[str, object]] | None = None,
) -> list[tuple[str, dict[str, object]]]:
    """Per-method parameter overrides: a --config table, then shared flags (to every method that has the
    parameter), then --set; later ones win."""
    given = {k: v for k, v in shared.items() if v is not None}
    used: set[str] = set()
    runs = []
    for name in methods:
        method = get_method(name)
        names = {p.name for p in method.params}
        flags = {k: v for k, v in given.items() if k in names}
        used |= flags.keys()
        overrides: dict[str, object] = {**(config or {}).get(name, {}), **flags}
        overrides.update(assignments.get(name, {}))
        method.resolve(overrides)
        runs.append((name, overrides))
    unused = sorted(set(given) - used)
    if unused:
        flags = ", ".join("--" + u.replace("_", "-") for u in unused)
        raise DiffshotError(f"{flags} given, but none of the methods {', '.join(methods)} takes it")
    return runs


def output_format(fmt: str | None, output: Path | None) -> str:
    """The format to write: explicit, else from the output's extension, else the table."""
    if fmt is not None and fmt not in FORMATS:
        raise DiffshotError(f"--format {fmt!r}: choose table, json or csv")
    if fmt is not None and not (output is not None and fmt == "table"):
        return fmt
    if output is not None and fmt == "table":
        raise DiffshotError("--format table prints to the terminal; write --output as json or csv")
    if output is not None and output.suffix.lower() in (".json", ".csv"):
        return output.suffix.lower()[1:]
    return "json" if output is not None else "table"


@user_errors
def evaluate(
    features: Annotated[
        Path | None, typer.Argument(help="Features file (canonical HDF5 or a field format); default: the demo set.")
    ] = None,
    ways: Annotated[int, typer.Option(help="Classes per episode (N).")] = 5,
    shots: Annotated[list[int] | None, typer.Option(help="Labelled rows per class (K); repeat for several.")] = None,
    queries: Annotated[int, typer.Option(help="Unlabelled query rows per class (Q).")] = 15,
    episodes: Annotated[int, typer.Option(help="Episodes per setting (the field reports 10,000).")] = 10_000,
    method: Annotated[
        list[str] | None, typer.Option("--method", "-m", help="Method to run; repeat for several.")
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
            help="diffusion's decision: nearest (default) or balanced (PT-MAP's Sinkhorn step on the diffused "
            "features; assumes every class has the same number of queries, and drops under --imbalance)."
        ),
    ] = None,
    set_params: Annotated[
        list[str] | None, typer.Option("--set", help="Any method parameter: METHOD.PARAM=VALUE (repeatable).")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="table|json|csv (default: from --output, else table).")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Write the results here (atomically).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no table.")] = False,
    base_mean: Annotated[
        Path | None, typer.Option(help="Base-mean file for pickled features (e.g. *_base_mean.plk).")
    ] = None,
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
            "(α-TIM protocol; α = 2 in its tables). PT-MAP and --assign balanced assume balance."
        ),
    ] = None,
    save_episodes: Annotated[
        Path | None,
        typer.Option(help="Save per-episode accuracies (with seed, protocol, features sha256) to this .npz."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML of method parameters (e.g. from `diffshot tune`); flags override it.")
    ] = None,
    force: Force = False,
) -> None:
    """Evaluate few-shot methods on seeded episodes: accuracy ± 95% interval (1.96·std/√n), in percent."""
    shots = shots or [1]
    methods = method or list(DEFAULT_METHODS)
    fmt = output_format(fmt, output)
    path = features if features is not None else default_features()
    claim_outputs([output], [path, base_mean, config], binary=[save_episodes], force=force)
    if chunk_size is not None and chunk_size <= 0:
        raise DiffshotError(f"--chunk-size must be positive, got {chunk_size}")
    alpha = parse_imbalance(imbalance)
    specs = [EpisodeSpec(ways, k, queries, alpha) for k in shots]
    if baseline is not None and baseline not in methods:
        raise DiffshotError(
            f"--baseline {baseline}: not among the methods run ({', '.join(methods)}); add --method {baseline}"
        )
    if episodes <= 0:
        raise DiffshotError(f"--episodes must be a positive integer, got {episodes}")
    shared = {"knn": knn, "step_size": step_size, "layers": layers, "n_top": n_top, "sigma": sigma}
    shared |= {"rectify": rectify, "shift": shift, "assign": assign}
    tuned = read_config(config) if config is not None else None
    runs = method_overrides(methods, shared, parse_assignments(set_params or []), tuned)
    fs = load_features(path, base_mean_path=base_mean, drop_nonfinite=drop_nonfinite, drop_zero=drop_zero)
    torch_device = resolve_device(device)
    evaluations = []
    with _progress(quiet, episodes * len(specs)) as advance:
        for spec in specs:
            done = sum(ev.episodes for ev in evaluations)
            evaluations.append(
                run_evaluation(
                    fs,
                    runs,
                    spec,
                    episodes=episodes,
                    seed=seed,
                    split=split,
                    device=torch_device,
                    chunk_size=chunk_size,
                    on_chunk=lambda finished, done=done: advance(done + finished),
                )
            )
    info = features_info(path, file_sha256(path), fs.dim, evaluations[0])
    info["device"] = str(torch_device)
    document = to_json_document(evaluations, info, baseline)
    if save_episodes is not None:
        save_episode_accuracies(save_episodes, evaluations, info)
        document["episodes_file"] = episodes_reference(save_episodes, output)
    rendered = {"json": lambda: json.dumps(document, indent=2) + "\n", "csv": lambda: to_csv(document)}
    if output is not None:
        write_text_atomic(output, rendered[fmt]())
    if output is None and fmt in rendered:
        typer.echo(rendered[fmt](), nl=False)
    elif not quiet:
        stdout.print(results_table(document, title=f"{path} · {info['split']} classes · seed {seed}"))


@contextlib.contextmanager
def _progress(quiet: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar on stderr when it is a terminal and not --quiet; yields ``advance(completed)``."""
    if quiet or not interactive():
        yield lambda completed: None
        return
    columns = (TextColumn("episodes"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task("evaluate", total=total)
        yield lambda completed: bar.update(task, completed=completed)
