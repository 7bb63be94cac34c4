"""`diffshot synth`: write the synthetic demo features file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffshot.cli.common import HDF5_SUFFIXES, Force, Quiet, check_extension, claim_outputs, stdout, user_errors
from diffshot.features import write_canonical
from diffshot.synth import SynthSpec, synthesise


@user_errors
def synth(
    output: Annotated[Path, typer.Argument(help="HDF5 file to write (atomically).")],
    seed: Annotated[int, typer.Option(help="Random seed of the generator.")] = 0,
    dim: Annotated[int, typer.Option(help="Feature dimension.")] = 64,
    rows_per_class: Annotated[int, typer.Option(help="Rows of every class.")] = 60,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Generate SYNTHETIC features: classes made of clusters on low-dimensional pieces of the space."""
    checks = [lambda: check_extension("OUTPUT", output, HDF5_SUFFIXES)]
    claim_outputs([], [], binary=[output], force=force, checks=checks)
    fs = synthesise(SynthSpec(seed=seed, dim=dim, rows_per_class=rows_per_class))
    write_canonical(fs, output)
    if not quiet:
        stdout.print(f"wrote {output}: {fs.num_rows:,} synthetic rows, {fs.dim}-d, {fs.num_classes} classes (64/16/20)")
