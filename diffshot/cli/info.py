"""`diffshot info`: what a features file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from diffshot.cli.common import AllowExternal, Labels, Quiet, stdout, user_errors
from diffshot.cli.demo import default_features
from diffshot.errors import printable
from diffshot.features import SPLITS, FeatureSet, read_features
from diffshot.features.canonical import UNLABELLED


@user_errors
def info(
    features: Annotated[
        Path | None, typer.Argument(readable=False, help="Features file (HDF5 or a field format); default: the demo.")
    ] = None,
    base_mean: Annotated[Path | None, typer.Option(readable=False, help="Base-mean file for pickled features.")] = None,
    labels: Labels = None,
    allow_external_data: AllowExternal = False,
    quiet: Quiet = False,
) -> None:
    """Rows, dimension, classes per split, rows per class, base mean, non-finite rows and provenance."""
    features = features if features is not None else default_features()
    fs = read_features(
        features, base_mean, require_labels=False, allow_external=allow_external_data, labels_path=labels
    )
    counts = fs.rows_per_class()
    table = Table(title=printable(str(features)), show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    table.add_row("rows", f"{fs.num_rows:,}")
    table.add_row("dimension", str(fs.dim))
    table.add_row("dtype (as loaded)", str(fs.features.dtype))
    if fs.class_names == (UNLABELLED,):
        table.add_row("labels", "none: rows to label with `diffshot predict --query` (not a support or evaluate file)")
        _tail(table, fs)
        stdout.print(table)
        return
    table.add_row("classes", str(fs.num_classes))
    if fs.class_split is None:
        table.add_row("class split", "none (every class counts as novel)")
    for split in SPLITS if fs.class_split is not None else ():
        members = fs.classes_in_split(split)
        table.add_row(f"  {split}", f"{members.size} classes, {int(counts[members].sum()):,} rows")
    table.add_row(
        "rows per class",
        f"min {counts.min()} · median {np.median(counts):g} · max {counts.max()}",
    )
    _tail(table, fs)
    stdout.print(table)


def _tail(table: Table, fs: FeatureSet) -> None:
    """The rows every file has, labelled or not: base mean, non-finite and all-zero rows, metadata, attributes."""
    table.add_row("base mean", "present" if fs.base_mean is not None else "absent (centring falls back)")
    table.add_row("non-finite rows", str(int(fs.nonfinite_rows().sum())))
    table.add_row("all-zero rows", str(int(fs.zero_rows().sum())))
    table.add_row("per-row metadata", printable(", ".join(fs.metadata)) or "none")
    for key, value in fs.attrs.items():
        table.add_row(f"attr {printable(str(key))}", printable(str(value)))
