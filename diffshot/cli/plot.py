"""`diffshot plot`: draw the picture an output of diffshot calls for (results, episodes, tune, predict)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffshot.cli.common import Force, Quiet, claim_outputs, stdout, user_errors
from diffshot.plot.backend import figure_format, save_figure
from diffshot.plot.draw import render


@user_errors
def plot(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="INPUT...",
            help="evaluate/batch JSON (one or several), a --save-episodes .npz, a tune --grid-json JSON, "
            "a predict CSV/JSON (with --labels), or a separability JSON.",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Figure file: .png, .svg or .pdf.")],
    labels: Annotated[
        Path | None, typer.Option(help="For a predict output: the query features file whose labels are the truth.")
    ] = None,
    method: Annotated[str | None, typer.Option(help="For a .npz: the method whose gain is drawn (B in B − A).")] = None,
    baseline: Annotated[str | None, typer.Option(help="For a .npz: the method compared against (A).")] = None,
    support: Annotated[
        Path | None,
        typer.Option(help="For a predict CSV: the support file, whose classes are the known ones (a JSON names them)."),
    ] = None,
    quiet: Quiet = False,
    force: Force = False,
) -> None:
    """Draw accuracy vs shots, paired differences, a τ × T heat map or a confusion matrix, chosen by the input."""
    claim_outputs([], [*inputs, labels, support], binary=[output], force=force, checks=[lambda: figure_format(output)])
    kind, drawn = render(inputs, labels, method, baseline, support)
    save_figure(drawn.figure, output)
    if not quiet:
        stdout.print(f"{kind} figure written to {output}", highlight=False)
