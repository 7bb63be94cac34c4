"""The diffshot command line: parse options, call the library, render the results (one module per command)."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperArgument

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


def _argument_type(self: TyperArgument, ctx: object) -> str | None:
    """An argument whose metavar already says what it takes (``INPUT...``) gets no ``<list[Path]>`` after it."""
    return None if self.metavar else self.display_type(ctx)


TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign]

app = typer.Typer(
    name="diffshot",
    help="Few-shot classification over pre-extracted features with training-free Diff-ResNet diffusion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    """``--version``: print the version and stop."""
    if value:
        from diffshot import __version__

        typer.echo(f"diffshot {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_show_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """Few-shot classification over pre-extracted features with training-free Diff-ResNet diffusion."""


EXAMPLES = {
    "evaluate": "diffshot evaluate features.h5 --ways 5 --shots 1,5 -m simpleshot,diffusion --baseline simpleshot",
    "info": "diffshot info features.h5",
    "methods": "diffshot methods",
    "compare": "diffshot compare a.json b.json",
    "convert": "diffshot convert features.plk features.h5 --base-mean base_mean.plk",
    "synth": "diffshot synth demo.h5 --seed 0",
    "extract": "diffshot extract model.pth images.zip --arch conv4 --preset omniglot-protonet -o features.h5",
    "predict": "diffshot predict --support labelled.h5 --query unlabelled.h5 -o predictions.csv",
    "tune": "diffshot tune features.h5 --split val --shots 1 -o tuned.toml",
    "batch": "diffshot batch suites/banking77.toml --output-dir results/",
    "plot": "diffshot plot results.json -o accuracy.png",
    "separability": "diffshot separability features.h5 --episodes 500 --layers 0..20 --plot ratio.png",
}
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
    app.command(epilog=f"Example: {EXAMPLES.get(command.__name__, '')}")(command)

__all__ = ["app"]
