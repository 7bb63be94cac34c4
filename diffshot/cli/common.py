"""What every command shares: one-line errors, consoles, and the device choice."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from diffshot import atomic, interrupt
from diffshot.errors import DiffshotError, UsageError

P = ParamSpec("P")
R = TypeVar("R")
PathArg = str | os.PathLike[str]

PIPE_WIDTH = 160  # tables written to a file or pipe are not squeezed into Rich's default 80 columns
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)
stderr = Console(stderr=True, soft_wrap=True)
Threads = Annotated[
    int | None,
    typer.Option(help="CPU threads for torch and FAISS (default: all cores; OpenMP waits passively either way)."),
]
AllowExternal = Annotated[
    bool,
    typer.Option(
        "--allow-external-data",
        help="Follow HDF5 external links, external storage and virtual datasets (trusted files).",
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace output files even when they are read-only.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr as one line and return the Exit to raise."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)
    return typer.Exit(code)


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn DiffshotError (and Ctrl-C) into a one-line message and a non-zero exit, never a traceback.

    Python warnings raised by the library are shown as one ``warning:`` line each.
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        stdout.stderr = False
        with warnings.catch_warnings(record=True) as caught, atomic.run_scope():
            warnings.simplefilter("always")
            try:
                return command(*args, **kwargs)
            except UsageError as exc:
                raise fail(str(exc).replace("\n", " "), 2) from None
            except DiffshotError as exc:
                raise fail(str(exc).replace("\n", " ")) from None
            except KeyboardInterrupt:
                interrupt.mark_reported()
                raise fail("interrupted", 130) from None
            finally:
                shown = set()
                for item in caught:
                    text = str(item.message)
                    if issubclass(item.category, UserWarning | RuntimeWarning) and text not in shown:
                        shown.add(text)
                        stderr.print(f"[yellow]warning:[/] {escape(text)}", highlight=False)

    return wrapper


def claim_outputs(
    outputs: Iterable[PathArg | None],
    inputs: Iterable[PathArg | None],
    *,
    binary: Iterable[PathArg | None] = (),
    force: bool = False,
) -> None:
    """Check the outputs before any work (:func:`diffshot.atomic.claim_outputs`); messages go to stderr when one is
    standard output, so that what is written there stays parseable."""
    if atomic.claim_outputs(outputs, inputs, binary=binary, force=force):
        stdout.stderr = True


def interactive() -> bool:
    """Whether stderr is a terminal (progress bars are shown only then)."""
    return sys.stderr.isatty()


def comma_list(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated option values as one list (``-m a,b -m c`` → a, b, c).

    A comma inside a named variant's parameter list (``diffusion:layers=8,lam=5``) stays with it.
    """
    items: list[str] = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if items and "=" in part and ":" not in part and ":" in items[-1]:
                items[-1] += "," + part
            else:
                items.append(part)
    return items


@contextlib.contextmanager
def progress(quiet: bool, total: int, what: str) -> Iterator[Callable[..., None]]:
    """A Rich progress bar on stderr when it is a terminal and not quiet; yields ``advance(completed, label=None)``."""
    if quiet or not interactive():
        yield lambda completed, label=None: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task(what, total=total)

        def advance(completed: int, label: str | None = None) -> None:
            bar.update(task, completed=completed, description=escape(label) if label else what)

        yield advance
