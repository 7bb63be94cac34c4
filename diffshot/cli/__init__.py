"""The diffshot command line: parse options, call the library, render the results (one module per command)."""

from __future__ import annotations

import typer

from diffshot.cli import (
    batch,
    compare,
    convert,
    evaluate,
    extract,
    info,
    methods,
    plot,
    predict,
    separability,
    synth,
    tune,
)

app = typer.Typer(
    name="diffshot",
    help="Few-shot classification over pre-extracted features with training-free Diff-ResNet diffusion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (
    evaluate.evaluate,
    info.info,
    methods.methods,
    compare.compare,
    convert.convert,
    synth.synth,
    extract.extract,
    predict.predict,
    tune.tune,
    batch.batch,
    plot.plot,
    separability.separability,
):
    app.command()(command)

__all__ = ["app"]
