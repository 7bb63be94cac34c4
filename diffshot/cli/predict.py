"""`diffshot predict`: label an unlabelled features file from a labelled support file, by sparse diffusion."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import RenderableType
from rich.markup import escape

from diffshot.calibration import DEFAULT_TEMPERATURE
from diffshot.cli.common import (
    LABELS_HELP,
    AllowExternal,
    Force,
    ProgressMode,
    Threads,
    claim_outputs,
    output_format,
    progress,
    settings_text,
    show,
    stderr,
    stdout,
    user_errors,
)
from diffshot.device import resolve_device, set_threads
from diffshot.errors import UsageError, printable
from diffshot.features import FeatureSet
from diffshot.report.predictions import write_predictions
from diffshot.report.table import Column, fit
from diffshot.results import UNKNOWN_NAME, Prediction
from diffshot.run.config import method_runs, parse_assignments, read_calibration, read_config
from diffshot.run.predict import (
    DEFAULT_METHOD,
    NO_INDEX,
    PredictOptions,
    accuracy,
    load_rows,
    parse_reject,
    predict_run,
    rejection_quality,
    search_falls_back_to_cpu,
)
from diffshot.run.predict import (
    predict as run_predict,
)
from diffshot.run.stream import BLOCK_ROWS, open_query, wants_stream

STAGES = ("predict: reading the inputs", "predict: labelling the queries", "predict: writing the predictions")


def _format(fmt: str | None, output: Path) -> str:
    """The output format: explicit, else from the extension (.csv, .json; another is an error), csv for ``-``."""
    return output_format("--output", output, fmt, {".csv": "csv", ".json": "json"}, "csv")


@user_errors
def predict(
    support: Annotated[Path, typer.Option(help="Labelled features file (any classes, unequal shots allowed).")],
    query: Annotated[Path, typer.Option(help="Features file to label (its labels are ignored, except for accuracy).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the predictions (atomically).")],
    method: Annotated[
        str, typer.Option("--method", "-m", help="diffusion, simpleshot or labelprop (NAME:PARAM=VALUE for a variant).")
    ] = DEFAULT_METHOD,
    fmt: Annotated[str | None, typer.Option("--format", help="csv|json (default: from --output's extension).")] = None,
    support_split: Annotated[str | None, typer.Option(help="Use only this class split of the support file.")] = None,
    support_labels: Annotated[
        Path | None, typer.Option(metavar="FILE", readable=False, help=f"The support's labels. {LABELS_HELP}")
    ] = None,
    query_labels: Annotated[
        Path | None,
        typer.Option(metavar="FILE", readable=False, help="The query labels (for its accuracy line)."),
    ] = None,
    query_split: Annotated[str | None, typer.Option(help="Use only this class split of the query file.")] = None,
    config: Annotated[Path | None, typer.Option(help="Tuned TOML config; its [METHOD] table is used.")] = None,
    step_size: Annotated[float | None, typer.Option(help="Diffusion step τ (default 0.5).")] = None,
    layers: Annotated[int | None, typer.Option(help="Diffusion steps T; 0 turns diffusion off (default 6).")] = None,
    n_top: Annotated[str | None, typer.Option(help="Graph size n_top, or auto (the rule of evaluate).")] = None,
    sigma: Annotated[str | None, typer.Option(help="Gaussian width rank sigma, or auto (= min(4, n_top)).")] = None,
    rectify: Annotated[bool | None, typer.Option("--rectify/--no-rectify", help="BD-CSPN rectification.")] = None,
    shift: Annotated[bool | None, typer.Option("--shift/--no-shift", help="Cross-domain shift (default on).")] = None,
    set_params: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="METHOD.PARAM=VALUE", help="Any parameter of the method: METHOD.PARAM=VALUE."),
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(help="Softmax temperature of the confidence (default: --config's [calibration], else 0.1)."),
    ] = None,
    reject: Annotated[
        str,
        typer.Option(
            metavar="auto|THRESHOLD|none",
            help="Label rows whose unknown score is above THRESHOLD as unknown; auto sets it from the support "
            "(leave-one-out, 0.9 quantile; auto:Q for another), none (default) rejects nothing.",
        ),
    ] = "none",
    unknown_name: Annotated[str, typer.Option(help="Class name of rejected rows.")] = UNKNOWN_NAME,
    unknown_score: Annotated[
        bool, typer.Option(help="Write the unknown_score column even without --reject (simpleshot, diffusion).")
    ] = False,
    index: Annotated[
        str,
        typer.Option(
            help="kNN index: auto|flat|hnsw|ivf|ivfpq (auto: flat up to --exact-limit, hnsw, ivfpq above 200k)."
        ),
    ] = "auto",
    exact_limit: Annotated[
        int, typer.Option(help="Largest point count for the exact index under auto.")
    ] = PredictOptions.exact_limit,
    block_rows: Annotated[
        int,
        typer.Option(help="Stream the HDF5 query file in blocks of this many rows (0: only above 500,000 rows)."),
    ] = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Search the query blocks on a local Dask cluster of N processes, --threads each (default: cores / N); "
            "streams; diffshot[dask]."
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="Search the query blocks on the Dask cluster at this address (tcp://host:8786; its workers read the "
            "query file from the same path); streams; diffshot[dask] (default: search on this machine)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda (cuda without a GPU is an error).")] = "auto",
    allow_external_data: AllowExternal = False,
    threads: Threads = None,
    drop_nonfinite: Annotated[bool, typer.Option(help="Drop rows with NaN/Inf instead of failing.")] = False,
    drop_zero: Annotated[bool, typer.Option(help="Drop all-zero rows instead of failing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, notices or summary table.")] = False,
    progress_mode: ProgressMode = "auto",
    force: Force = False,
) -> None:
    """Label a query set by running a method on support + queries as one task (diffusion: a sparse FAISS graph)."""
    start = time.perf_counter()
    inputs = [support, query, config, support_labels, query_labels]
    claim_outputs([output], inputs, force=force, checks=[lambda: _format(fmt, output)])
    out_format = _format(fmt, output)
    rejection = parse_reject(reject)
    set_threads(threads)
    on_dask = _check_dask(workers, scheduler)
    tuned = read_config(config) if config is not None else None
    flags = {"step_size": step_size, "layers": layers, "n_top": n_top, "sigma": sigma}
    flags |= {"rectify": rectify, "shift": shift}
    run = predict_run(method_runs([method], tuned, flags, parse_assignments(set_params or []))[0])
    calibrated = read_calibration(config) if config is not None and temperature is None else {}
    found = calibrated.get(run.label, calibrated.get(run.method.name))
    options = PredictOptions(
        temperature=temperature if temperature is not None else (found or DEFAULT_TEMPERATURE),
        index=index,
        exact_limit=exact_limit,
        calibration=str(config) if found is not None else None,
        reject=rejection,
        unknown_name=unknown_name,
        unknown_score=unknown_score,
    )
    torch_device = resolve_device(device)
    if block_rows < 0:
        raise UsageError(f"--block-rows must be 0 or a positive number of rows, got {block_rows}")
    with progress(quiet, len(STAGES), STAGES[0], progress_mode) as advance:
        support_fs, _ = load_rows(
            support, support_split, drop_nonfinite, drop_zero, True, allow_external_data, support_labels
        )
        if on_dask or wants_stream(query, block_rows):
            if query_labels is not None:
                raise UsageError("--query-labels is not read when the query file is streamed (--block-rows, Dask)")
            with contextlib.ExitStack() as stack:
                address = _dask_scheduler(stack, workers, scheduler, threads, quiet) if on_dask else None
                query_rows = open_query(
                    stack, query, query_split, drop_nonfinite, drop_zero, allow_external_data, block_rows or BLOCK_ROWS
                )
                loaded = time.perf_counter() - start
                advance(1, STAGES[1])
                prediction = run_predict(support_fs, query_rows, run, options, scheduler=address)
                advance(2, STAGES[2])
                tick = time.perf_counter()
                write_predictions(output, prediction, query_rows, query_rows.rows, out_format)  # type: ignore[arg-type]
                timings = {"load": loaded, **prediction.timings, "output": time.perf_counter() - tick}
                advance(3)
            _report(prediction, query_rows, support_fs.num_rows, options, timings, quiet)  # type: ignore[arg-type]
            return
        query_fs, rows = load_rows(
            query,
            query_split,
            drop_nonfinite,
            drop_zero,
            require_labels=False,
            allow_external=allow_external_data,
            labels_path=query_labels,
        )
        loaded = time.perf_counter() - start
        advance(1, STAGES[1])
        prediction = run_predict(support_fs, query_fs, run, options, torch_device)
        if search_falls_back_to_cpu(torch_device) and not quiet:
            stderr.print("notice: this faiss has no GPU support; the kNN graph was built on the CPU")
        advance(2, STAGES[2])
        tick = time.perf_counter()
        write_predictions(output, prediction, query_fs, rows, out_format)
        timings = {"load": loaded, **prediction.timings, "output": time.perf_counter() - tick}
        advance(3)
    _report(prediction, query_fs, support_fs.num_rows, options, timings, quiet)


def _check_dask(workers: int | None, scheduler: str | None) -> bool:
    """Whether the search runs on Dask; the options' errors (and a missing extra) before any work starts."""
    if workers is not None and scheduler is not None:
        raise UsageError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be a positive integer, got {workers}")
    if workers is None and scheduler is None:
        return False
    from diffshot.run.distributed import check_workers, require_distributed

    check_workers(workers)
    require_distributed()
    return True


def _dask_scheduler(
    stack: contextlib.ExitStack, workers: int | None, scheduler: str | None, threads: int | None, quiet: bool
) -> str:
    """Connect to the Dask cluster at ``scheduler`` (or start one of ``workers`` processes) for the run; its address."""
    from diffshot.run.distributed import dask_client

    if workers is not None and threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    client = stack.enter_context(dask_client(workers, scheduler, threads))
    if not quiet:
        where = f"the Dask scheduler {scheduler}" if scheduler else f"a local Dask cluster of {workers} processes"
        stderr.print(f"searching the query blocks on {where}", highlight=False)
    return str(client.scheduler.address)


def _report(
    prediction: Prediction,
    query_fs: FeatureSet,
    support_rows: int,
    options: PredictOptions,
    timings: dict[str, float],
    quiet: bool,
) -> None:
    """The summary table, the settings line, the accuracy when known, and the timing line."""
    if quiet:
        return
    scored = accuracy(prediction, query_fs)
    show(_summary(prediction.counts(), query_fs.num_rows))
    settings = settings_text(prediction.details)
    index = f", index {prediction.index}" if prediction.index != NO_INDEX else ""
    calibrated_on = f", calibrated on {escape(prediction.calibration)}" if prediction.calibration else ""
    stdout.print(
        f"{query_fs.num_rows} query rows, {support_rows} support rows, {len(prediction.class_names)} classes; "
        f"method {escape(prediction.method)}{index}" + (f", {settings}" if settings else "") + "; "
        f"confidence = softmax(score / {options.temperature:g})" + calibrated_on,
        highlight=False,
    )
    if prediction.rejected is not None:
        stdout.print(
            f"rejected {int(prediction.rejected.sum())} rows as {escape(prediction.unknown_name)!r}: unknown score "
            f"(−max cosine to the class means) above {prediction.threshold:.4f}, {escape(prediction.threshold_rule)}",
            highlight=False,
        )
    if scored is not None:
        stdout.print(f"accuracy {scored[0]:.2f}% on the {scored[1]} query rows whose class is a support class")
    quality = rejection_quality(prediction, query_fs)
    if quality is not None:
        stdout.print(
            f"unknown recall {quality[0]:.2f}%, precision {quality[1]:.2f}% on the {quality[2]} query rows "
            "whose class is no support class"
        )
    stderr.print("timing: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()), highlight=False)


def _summary(counts: dict[str, int], total: int) -> list[RenderableType]:
    """Rows per predicted class."""
    columns = [
        Column("class", [printable(name) for name in counts], justify="left"),
        Column("rows", [str(count) for count in counts.values()]),
        Column("share", [f"{100.0 * count / total:.1f}%" for count in counts.values()]),
    ]
    return fit("predicted classes", columns, stdout.width)
