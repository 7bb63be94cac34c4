"""`diffshot convert`: read any supported features format and write the canonical HDF5 file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffshot.cli.common import AllowExternal, Force, Labels, claim_outputs, stdout, user_errors
from diffshot.features import read_features, write_canonical


@user_errors
def convert(
    src: Annotated[Path, typer.Argument(readable=False, help="Features in any supported format.")],
    dst: Annotated[Path, typer.Argument(help="Canonical HDF5 file to write (atomically).")],
    base_mean: Annotated[
        Path | None, typer.Option(readable=False, help="Base-mean file (e.g. Diff-ResNet's *_base_mean.plk).")
    ] = None,
    labels: Labels = None,
    allow_external_data: AllowExternal = False,
    force: Force = False,
) -> None:
    """Convert a field format (PT-MAP/S2M2/Diff-ResNet pickles, TIM, CloserLook, EASY, .npz) to canonical HDF5."""
    claim_outputs([], [src, base_mean, labels], binary=[dst], force=force)
    fs = read_features(src, base_mean, allow_external=allow_external_data, labels_path=labels)
    write_canonical(fs, dst, {"converted_from": str(src)})
    stdout.print(f"wrote {dst}: {fs.num_rows:,} rows, {fs.dim}-d, {fs.num_classes} classes")
