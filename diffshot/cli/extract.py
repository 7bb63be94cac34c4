"""`diffshot extract`: a backbone checkpoint and a folder of images in, the canonical features file out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from diffshot.cli.common import (
    HDF5_SUFFIXES,
    Force,
    ProgressMode,
    Quiet,
    Threads,
    check_extension,
    claim_outputs,
    progress,
    resolve_progress,
    stderr,
    stdout,
    user_errors,
)
from diffshot.device import set_threads
from diffshot.extract.archs import ARCHS
from diffshot.extract.pipeline import Extraction, ExtractionRequest, check_extraction, run_extraction
from diffshot.extract.run import ProgressHook, partial_path
from diffshot.extract.transforms import PRESETS


class RateColumn(ProgressColumn):
    """Images per second of the running task."""

    def render(self, task: Task) -> Text:
        """The task's speed, in images/s."""
        return Text("" if task.speed is None else f"{task.speed:,.0f} images/s", style="progress.data.speed")


@contextmanager
def progress_hook(quiet: bool = False, mode: str = "auto") -> Iterator[ProgressHook | None]:
    """``--progress``: a Rich bar (images/s, ETA), status lines (:func:`diffshot.cli.common.progress`) or nothing."""
    chosen = resolve_progress(mode, quiet)
    if chosen == "none":
        yield None
        return
    if chosen == "lines":
        with progress(quiet, None, "extract: images", chosen) as advance:
            yield lambda done, of: advance(done, None, of)
        return
    columns = (TextColumn("extract"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr) as bar:
        task = bar.add_task("extract", total=None)
        started = False

        def hook(done: int, of: int) -> None:
            """Move the bar to ``done`` of ``of`` (the first call starts it where a resumed run stands)."""
            nonlocal started
            if started:
                bar.update(task, completed=done)
            else:
                bar.reset(task, total=of, completed=done)
                started = True

        yield hook


def _summary(result: Extraction) -> None:
    """Say what was written, how fast, and what was skipped or resumed."""
    fs, stats = result.features, result.stats
    counts = {s: sum(1 for c in fs.class_split or () if c == s) for s in ("base", "val", "novel")}
    split = " / ".join(f"{n} {s}" for s, n in counts.items() if n) if fs.class_split else "no split: every class novel"
    stdout.print(
        f"wrote {result.output}: {fs.num_rows:,} rows, {fs.dim}-d, {fs.num_classes} classes ({split}); "
        f"base_mean: {fs.attrs.get('base_mean_source', 'none')}",
        highlight=False,
    )
    resumed = f"; resumed {stats.resumed:,} rows from the partial file" if stats.resumed else ""
    stdout.print(
        f"{stats.computed:,} images in {stats.seconds:.1f} s ({stats.images_per_second:,.1f} images/s, "
        f"{stats.wait_share:.0%} of the time waiting for data){resumed}",
        highlight=False,
    )
    if result.checkpoint_report is not None:
        stdout.print(result.checkpoint_report, highlight=False)
    if result.duplicates:
        stdout.print(f"{result.duplicates:,} images appeared under the same path twice; the first was kept")
    if result.skipped:
        stderr.print(
            f"[yellow]warning:[/] skipped {result.skipped:,} unreadable images (first: {result.first_skipped})"
        )


@user_errors
def extract(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.pth/.pt state dict) or TorchScript file.")],
    images: Annotated[
        list[Path],
        typer.Argument(
            metavar="IMAGES...", help="Image folders (class/image.ext), .zip files of that layout, or split CSVs."
        ),
    ],
    arch: Annotated[str, typer.Option(help=f"Backbone: {', '.join(ARCHS)}.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Canonical HDF5 features file to write.")],
    preset: Annotated[str | None, typer.Option(help=f"Preprocessing recipe: {', '.join(PRESETS)}.")] = None,
    split_csv: Annotated[
        list[str] | None,
        typer.Option(
            metavar="FILE=SPLIT", help="FILE=base|val|novel: a filename,label CSV whose classes take that split."
        ),
    ] = None,
    class_split: Annotated[Path | None, typer.Option(help="A class,split CSV giving each class its split.")] = None,
    root: Annotated[Path | None, typer.Option(help="Folder (or .zip) holding the files of CSV IMAGES.")] = None,
    resize: Annotated[int | None, typer.Option(help="Resize the shorter side to this many pixels.")] = None,
    center_crop: Annotated[int | None, typer.Option(help="Crop the central square of this side.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Finally resize to this square size.")] = None,
    grayscale: Annotated[bool | None, typer.Option("--grayscale/--rgb", help="1-channel or 3-channel input.")] = None,
    invert: Annotated[bool | None, typer.Option("--invert/--no-invert", help="x = 1 - x before normalising.")] = None,
    transpose: Annotated[bool | None, typer.Option("--transpose/--no-transpose", help="Swap height and width.")] = None,
    resample: Annotated[str | None, typer.Option(help="Resize filter: nearest, bilinear, bicubic.")] = None,
    mean: Annotated[str | None, typer.Option(help="Per-channel mean, e.g. 0.485,0.456,0.406 (RGB default).")] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel std, e.g. 0.229,0.224,0.225 (RGB default).")] = None,
    base_mean: Annotated[
        str, typer.Option(help="base: mean of base-class rows; all: mean of every row; none: not stored.")
    ] = "base",
    dataset: Annotated[str | None, typer.Option(help="Dataset name recorded in the file.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    workers: Annotated[int, typer.Option(help="Threads decoding images ahead of the model (0: inline).")] = 2,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its partial file.")
    ] = False,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint", help="Allow full unpickling (can run code): only for checkpoints you trust."
        ),
    ] = False,
    skip_bad_images: Annotated[
        bool, typer.Option("--skip-bad-images", help="Skip (and count) images that cannot be decoded.")
    ] = False,
    quiet: Quiet = False,
    progress_mode: ProgressMode = "auto",
    force: Force = False,
    threads: Threads = None,
) -> None:
    """Extract features of IMAGES with a trained backbone into a canonical features file."""
    set_threads(threads)
    request = ExtractionRequest(
        checkpoint,
        tuple(images),
        arch,
        output,
        preset=preset,
        split_csv=tuple(split_csv or ()),
        class_split=class_split,
        root=root,
        resize=resize,
        center_crop=center_crop,
        image_size=image_size,
        grayscale=grayscale,
        invert=invert,
        transpose=transpose,
        resample=resample,
        mean=mean,
        std=std,
        base_mean=base_mean,
        dataset=dataset,
        device=device,
        batch_size=batch_size,
        workers=workers,
        resume=resume,
        trust_checkpoint=trust_checkpoint,
        skip_bad_images=skip_bad_images,
    )
    check_extraction(request)
    checks = [lambda: check_extension("--output", output, HDF5_SUFFIXES)]
    claim_outputs([], request.inputs, binary=request.outputs, force=force, checks=checks)
    try:
        with progress_hook(quiet, progress_mode) as hook:
            result = run_extraction(request, on_batch=hook)
    except KeyboardInterrupt:
        if partial_path(output).exists():
            stderr.print(f"rows done so far are kept in {partial_path(output)}; rerun the same command with --resume")
        raise
    _summary(result)
