"""`diffshot extract`: a backbone checkpoint and a folder of images in, the canonical features file out."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from diffshot.cli.common import Force, Threads, claim_outputs, interactive, stderr, stdout, user_errors
from diffshot.device import resolve_device, set_threads
from diffshot.errors import DiffshotError
from diffshot.extract.archs import ARCHS, MIN_INPUT_SIDE
from diffshot.extract.images import ImageList, check_splits, collect_images, parse_split_option, read_class_splits
from diffshot.extract.result import BASE_MEAN_CHOICES, assemble_featureset
from diffshot.extract.run import (
    ProgressHook,
    Rows,
    RunStats,
    check_batch_bytes,
    extract_rows,
    items_digest,
    partial_path,
)
from diffshot.extract.transforms import (
    PRESETS,
    Preprocessing,
    build_preprocessing,
    check_model_input,
    parse_floats,
)
from diffshot.features.canonical import write_canonical
from diffshot.features.featureset import FeatureSet
from diffshot.fingerprint import file_sha256

if TYPE_CHECKING:
    from diffshot.extract.model import Encoder


class RateColumn(ProgressColumn):
    """Images per second of the running task."""

    def render(self, task: Task) -> Text:
        """The task's speed, in images/s."""
        return Text("" if task.speed is None else f"{task.speed:,.0f} images/s", style="progress.data.speed")


@contextmanager
def progress_hook(total: int, quiet: bool = False) -> Iterator[ProgressHook | None]:
    """A Rich progress bar (images/s, ETA) on an interactive stderr unless quiet; nothing otherwise."""
    if quiet or not interactive():
        yield None
        return
    columns = (TextColumn("extract"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr) as bar:
        task = bar.add_task("extract", total=total)
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


@dataclasses.dataclass(frozen=True)
class SplitInputs:
    """The class-split options as given, and the class -> split map they make."""

    pairs: tuple[tuple[Path, str], ...]
    class_split: Path | None
    splits: dict[str, str]

    def describe(self) -> str:
        """Where the split came from, for the file's attributes."""
        parts = [f"--split-csv {path}={split}" for path, split in self.pairs]
        if self.class_split is not None:
            parts.append(f"--class-split {self.class_split}")
        return ", ".join(parts) if parts else "none: every class is novel"


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    """``value`` when it is one of ``choices``, else a one-line error listing them."""
    if value not in choices:
        raise DiffshotError(f"unknown {option} {value!r}; choose one of {', '.join(choices)}")
    return value


def _split_inputs(split_csv: list[str], class_split: Path | None) -> SplitInputs:
    """Parse --split-csv FILE=SPLIT options and read every split file."""
    pairs = tuple(parse_split_option(text) for text in split_csv)
    return SplitInputs(pairs, class_split, read_class_splits(pairs, class_split))


def _attrs(
    arch: str, dim: int, checkpoint: Path, sha: str, prep: Preprocessing, preset: str | None
) -> dict[str, object]:
    """Provenance attributes written into the features file."""
    return {
        "backbone": f"{arch} ({dim}-d), checkpoint {checkpoint.name}",
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha,
        "preprocessing": prep.describe(),
        "preset": preset or "none",
        "created_by": "diffshot extract",
    }


def _summary(fs: FeatureSet, output: Path, stats: RunStats, rows: Rows, images: ImageList, encoder: Encoder) -> None:
    """Say what was written, how fast, and what was skipped or resumed."""
    counts = {s: sum(1 for c in fs.class_split or () if c == s) for s in ("base", "val", "novel")}
    split = " / ".join(f"{n} {s}" for s, n in counts.items() if n) if fs.class_split else "no split: every class novel"
    stdout.print(
        f"wrote {output}: {fs.num_rows:,} rows, {fs.dim}-d, {fs.num_classes} classes ({split}); "
        f"base_mean: {fs.attrs.get('base_mean_source', 'none')}",
        highlight=False,
    )
    resumed = f"; resumed {stats.resumed:,} rows from the partial file" if stats.resumed else ""
    stdout.print(
        f"{stats.computed:,} images in {stats.seconds:.1f} s ({stats.images_per_second:,.1f} images/s, "
        f"{stats.wait_share:.0%} of the time waiting for data){resumed}",
        highlight=False,
    )
    if encoder.report is not None and encoder.report.ignored:
        stdout.print(encoder.report.describe(), highlight=False)
    if images.duplicates:
        stdout.print(f"{images.duplicates:,} images appeared under the same path twice; the first was kept")
    if rows.skipped.size:
        first = images.items[int(rows.skipped[0])].path
        stderr.print(f"[yellow]warning:[/] skipped {rows.skipped.size:,} unreadable images (first: {first})")


def _encode_all(
    images: ImageList,
    prep: Preprocessing,
    encoder: Encoder,
    output: Path,
    identity: dict[str, object],
    *,
    batch_size: int,
    workers: int,
    resume: bool,
    skip_bad: bool,
    quiet: bool = False,
) -> tuple[Rows, RunStats]:
    """Run the extraction with a progress bar; on Ctrl-C, say where the finished rows are kept."""
    identity = {
        **identity,
        "images_sha256": items_digest(images),
        "images": len(images.items),
        "preprocessing": prep.describe(),
    }
    try:
        with progress_hook(len(images.items), quiet) as hook:
            return extract_rows(
                images,
                prep,
                encoder,
                output,
                identity,
                batch_size=batch_size,
                workers=workers,
                resume=resume,
                skip_bad=skip_bad,
                on_batch=hook,
            )
    except KeyboardInterrupt:
        if partial_path(output).exists():
            stderr.print(f"rows done so far are kept in {partial_path(output)}; rerun the same command with --resume")
        raise


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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar (the summary still prints).")] = False,
    force: Force = False,
    threads: Threads = None,
) -> None:
    """Extract features of IMAGES with a trained backbone into a canonical features file."""
    set_threads(threads)
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)  # a bomb is a bad image, not a warning
    _choice(arch, ARCHS, "--arch")
    _choice(base_mean, BASE_MEAN_CHOICES, "--base-mean")
    prep = build_preprocessing(
        preset,
        grayscale=grayscale,
        resize=resize,
        center_crop=center_crop,
        image_size=image_size,
        resample=resample,
        invert=invert,
        transpose=transpose,
        mean=parse_floats(mean, "--mean"),
        std=parse_floats(std, "--std"),
    )
    check_model_input(prep, arch, MIN_INPUT_SIDE[arch])
    check_batch_bytes(prep, batch_size)
    split = _split_inputs(split_csv or [], class_split)
    inputs = [checkpoint, *images, class_split, root, *(p for p, _ in split.pairs)]
    claim_outputs([], inputs, binary=[output, partial_path(output)], force=force)
    image_list = collect_images(images, [p for p, _ in split.pairs], root)
    for path in (output, partial_path(output)):
        image = image_list.linked(path)
        if image is not None:
            raise DiffshotError(f"{path}: is the input {image} (a hard link to it); choose another output")
    check_splits(image_list.items, split.splits)
    from diffshot.extract.model import build_encoder

    encoder = build_encoder(arch, checkpoint, prep.channels, resolve_device(device), trust_checkpoint)
    sha = file_sha256(checkpoint)
    try:
        rows, stats = _encode_all(
            image_list,
            prep,
            encoder,
            output,
            {"arch": arch, "checkpoint_sha256": sha},
            batch_size=batch_size,
            workers=workers,
            resume=resume,
            skip_bad=skip_bad_images,
            quiet=quiet,
        )
    finally:
        image_list.close()
    attrs = {
        "dataset": dataset or ", ".join(p.name for p in images),
        **_attrs(arch, rows.features.shape[1], checkpoint, sha, prep, preset),
        "class_split_source": split.describe(),
        "skipped_images": str(rows.skipped.size),
    }
    fs = assemble_featureset(image_list, rows, split.splits, base_mean, attrs, str(output))
    write_canonical(fs, output)
    partial_path(output).unlink(missing_ok=True)
    _summary(fs, output, stats, rows, image_list, encoder)
