"""`diffshot convert`: read any supported features format and write the canonical HDF5 file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from diffshot.cli.common import (
    HDF5_SUFFIXES,
    AllowExternal,
    Force,
    Labels,
    Quiet,
    check_extension,
    claim_outputs,
    stdout,
    user_errors,
)
from diffshot.features import SPLITS, read_features, write_canonical
from diffshot.run.class_split import parse_fractions, with_class_split


@user_errors
def convert(
    src: Annotated[Path, typer.Argument(readable=False, help="Features in any supported format.")],
    dst: Annotated[Path, typer.Argument(help="Canonical HDF5 file to write (atomically).")],
    base_mean: Annotated[
        Path | None, typer.Option(readable=False, help="Base-mean file (e.g. Diff-ResNet's *_base_mean.plk).")
    ] = None,
    labels: Labels = None,
    class_split: Annotated[
        str | None,
        typer.Option(
            metavar="SPLIT:FRACTION,...|FILE",
            help="Give the classes a base/val/novel split: a seeded random draw (base:0.5,val:0.2,novel:0.3) or a "
            "file of class,split lines.",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --class-split draw.")] = 0,
    allow_external_data: AllowExternal = False,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Convert a field format (PT-MAP/S2M2/Diff-ResNet pickles, TIM, CloserLook, EASY, .npz) to canonical HDF5."""
    if class_split is not None and ":" in class_split and not Path(class_split).is_file():
        parse_fractions(class_split)  # a malformed draw is a usage error before any file is read
    claim_outputs(
        [],
        [src, base_mean, labels],
        binary=[dst],
        force=force,
        checks=[lambda: check_extension("DST", dst, HDF5_SUFFIXES)],
    )
    fs = read_features(src, base_mean, allow_external=allow_external_data, labels_path=labels)
    if class_split is not None:
        if fs.class_split is not None:
            warnings.warn(f"{src}: its stored class split is replaced by --class-split", stacklevel=1)
        fs = with_class_split(fs, class_split, seed)
    write_canonical(fs, dst, {"converted_from": str(src)})
    if not quiet:
        stdout.print(f"wrote {dst}: {fs.num_rows:,} rows, {fs.dim}-d, {fs.num_classes} classes")
    if class_split is not None and not quiet:
        counts = ", ".join(f"{s} {sum(1 for c in range(fs.num_classes) if fs.split_of(c) == s)}" for s in SPLITS)
        stdout.print(f"class split: {counts}")
