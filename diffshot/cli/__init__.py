"""The diffshot command line: parse options, call the library, render the results."""

from __future__ import annotations

import typer

from diffshot.cli.batch import batch
from diffshot.cli.compare import compare
from diffshot.cli.convert import convert
from diffshot.cli.evaluate import evaluate
from diffshot.cli.extract import extract
from diffshot.cli.info import info
from diffshot.cli.methods import methods
from diffshot.cli.predict import predict
from diffshot.cli.synth import synth
from diffshot.cli.tune import tune

app = typer.Typer(
    name="diffshot",
    help="Few-shot classification over pre-extracted features with training-free Diff-ResNet diffusion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (evaluate, info, convert, synth, methods, compare, extract, predict, tune, batch):
    app.command()(command)

__all__ = ["app"]
