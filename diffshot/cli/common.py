"""What every command shares, written once: one-line errors and exit codes, consoles and their width, the
``-q``/``--progress``/``--threads`` options, output files (parent folders created, extension checked), list
options and rounded numbers. tests/cli/test_rules.py checks these rules over every registered command."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
import time
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from typer.models import ArgumentInfo, ParameterInfo

from diffshot import SPIN_COUNT, atomic, interrupt
from diffshot.errors import DiffshotError, UsageError, printable

P = ParamSpec("P")
R = TypeVar("R")
PathArg = str | os.PathLike[str]

PIPE_WIDTH = 120  # the width of output to a file or pipe when COLUMNS does not say (a terminal says its own)
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)
THREADS_HELP = (
    "CPU threads for torch and FAISS (default: the cores no other process is busy on, at least 1; OpenMP threads "
    f"spin {SPIN_COUNT} iterations before sleeping unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set)."
)
Threads = Annotated[int | None, typer.Option(help=THREADS_HELP)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no notices; the results still print.")]
PROGRESS_MODES = ("auto", "bar", "lines", "none")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")  # what a features file written by diffshot may be called
LINES_INTERVAL = 10.0  # seconds between two status lines of --progress lines
ProgressMode = Annotated[
    str,
    typer.Option(
        "--progress",
        metavar="auto|bar|lines|none",
        help="Progress on stderr: a bar, a status line every 10 s (for CI logs), or none; auto: a bar on a "
        "terminal, lines otherwise, none under --quiet.",
    ),
]
AllowExternal = Annotated[
    bool,
    typer.Option(
        "--allow-external-data",
        help="Follow HDF5 external links, external storage and virtual datasets (trusted files).",
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace output files even when they are read-only.")]
LABELS_HELP = "Labels of a features file stored without them (a bare features.npy): .npy, .txt (one per line) or .csv."
Labels = Annotated[Path | None, typer.Option("--labels", metavar="FILE", readable=False, help=LABELS_HELP)]


def output_width() -> int | None:
    """The width tables fit: ``COLUMNS`` when set, else the terminal's (None: Rich asks it), else PIPE_WIDTH."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else PIPE_WIDTH


def show(renderables: Iterable[RenderableType]) -> None:
    """Print tables (and the title a stacked table has) on standard output, text wrapped at the output's width."""
    for item in renderables:
        stdout.print(item, soft_wrap=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr as one line and return the Exit to raise."""
    stderr.print(f"[bold red]error:[/] {printable(message)}", highlight=False, markup=True)
    return typer.Exit(code)


def command_flags(command: Callable[..., object]) -> dict[str, tuple[str, str | None]]:
    """Each option of a command function: its parameter name → (its flag, its negative flag or None)."""
    flags: dict[str, tuple[str, str | None]] = {}
    for name, hint in typing.get_type_hints(command, include_extras=True).items():
        info = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, ParameterInfo)), None)
        if name == "return" or isinstance(info, ArgumentInfo):
            continue
        decls: tuple[str, ...] = ()
        if info is not None:  # under Annotated, typer takes a first argument that starts with '-' as a declaration
            first = (info.default,) if isinstance(info.default, str) and info.default.startswith("-") else ()
            decls = (*first, *(info.param_decls or ()))
        declared = [d for decl in decls for d in decl.split("/")]
        long = [d.strip() for d in declared if d.strip().startswith("--")]
        on = long[0] if long else "--" + name.replace("_", "-")
        off = long[1] if len(long) > 1 else (None if declared else "--no-" + name.replace("_", "-"))
        flags[name] = (on, off)
    return flags


@functools.cache
def every_command_flags() -> dict[str, tuple[str, str | None]]:
    """The options of every command of the app, for a message that points to another command's option."""
    from diffshot.cli import app

    flags: dict[str, tuple[str, str | None]] = {}
    for info in app.registered_commands:
        with contextlib.suppress(NameError, TypeError):
            flags |= command_flags(info.callback) if info.callback is not None else {}
    return flags


def as_flags(message: str, command: Callable[..., object]) -> str:
    """A library message in the command's words: its parameters, as the library names them, become its flags.

    The library names a parameter as Python does: ``drop_nonfinite=True`` becomes ``--drop-nonfinite``,
    ``shift=False`` ``--no-shift``, ``base_mean=FILE`` ``--base-mean FILE``, and a bare name with an underscore
    (``batch_size``) its flag; a one-word name without a value (``arch``) stays a word. The running command's
    options come first; another command's option (``save_episodes=FILE.npz``) is translated in its ``name=value``
    form only, so a JSON key such as ``episodes_file`` stays as written.
    """
    try:
        own = command_flags(command)
        others = {name: flag for name, flag in every_command_flags().items() if name not in own}
    except (NameError, TypeError):  # annotations that do not resolve: the message as the library wrote it
        return message
    before = r"(?<![\w.-])"  # not inside a longer name, nor METHOD.param
    for flags, bare in ((own, True), (others, False)):  # another command's option only in its name=value form
        for name, (on, off) in flags.items():
            message = re.sub(rf"{before}{name}=True\b", on, message)
            if off is not None:
                message = re.sub(rf"{before}{name}=False\b", off, message)
            message = re.sub(rf"{before}{name}=(?=[^\s=])", f"{on} ", message)
            if bare and "_" in name:
                message = re.sub(rf"{before}{name}\b", on, message)
    return message
    before = r"(?<![\w.-])"  # not inside a longer name, nor METHOD.param
    for name, (on, off) in flags.items():
        message = re.sub(rf"{before}{name}=True\b", on, message)
        if off is not None:
            message = re.sub(rf"{before}{name}=False\b", off, message)
        message = re.sub(rf"{before}{name}=(?=[^\s=])", f"{on} ", message)
        if "_" in name:
            message = re.sub(rf"{before}{name}\b", on, message)
    return message


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn DiffshotError (and Ctrl-C) into a one-line message and a non-zero exit, never a traceback.

    Python warnings raised by the library are shown as one ``warning:`` line each.
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        stdout.stderr = False
        stdout.width = output_width()  # type: ignore[assignment]
        with warnings.catch_warnings(record=True) as caught, atomic.run_scope():
            warnings.simplefilter("always")
            try:
                return command(*args, **kwargs)
            except UsageError as exc:
                raise fail(as_flags(str(exc), command).replace("\n", " "), 2) from None
            except DiffshotError as exc:
                raise fail(as_flags(str(exc), command).replace("\n", " ")) from None
            except KeyboardInterrupt:
                interrupt.mark_reported()
                raise fail("interrupted", 130) from None
            finally:
                shown = set()
                for item in caught:
                    text = as_flags(str(item.message), command)
                    if issubclass(item.category, UserWarning | RuntimeWarning) and text not in shown:
                        shown.add(text)
                        stderr.print(f"[yellow]warning:[/] {printable(text)}", highlight=False)

    return wrapper


def claim_outputs(
    outputs: Iterable[PathArg | None],
    inputs: Iterable[PathArg | None],
    *,
    binary: Iterable[PathArg | None] = (),
    force: bool = False,
    checks: Iterable[Callable[[], object]] = (),
) -> None:
    """Check the outputs before any work (:func:`diffshot.atomic.claim_outputs`), creating the folders they go in
    when missing (every command's rule; removed again when an output is refused); messages go to stderr when one
    output is standard output, so that what is written there stays parseable.

    ``checks`` (an output's extension, its format) run after those, so that an output onto an input is refused
    as that, whatever its name."""
    outputs, binary = list(outputs), list(binary)
    created = make_parents([*outputs, *binary])
    try:
        if atomic.claim_outputs(outputs, inputs, binary=binary, force=force):
            stdout.stderr = True
        for check in checks:
            check()
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def make_parents(paths: Iterable[PathArg | None]) -> list[Path]:
    """Create the missing folders above each output path; the folders made, outermost first."""
    created: list[Path] = []
    for path in paths:
        if path is None or os.fspath(path) == atomic.STDOUT:
            continue
        missing = [p for p in Path(path).absolute().parents if not p.exists() and not p.is_symlink()]
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise DiffshotError(f"{path}: cannot create the folder {folder} ({exc.strerror})") from None
            created.append(folder)
    return created


def interactive() -> bool:
    """Whether stderr is a terminal (progress bars are shown only then)."""
    return sys.stderr.isatty()


def comma_list(values: list[str] | None, option: str = "--method") -> list[str]:
    """Repeated and comma-separated option values as one list (``-m a,b -m c`` → a, b, c); an empty item
    (``-m ''``, ``--shots 1,,5``) is a usage error naming ``option``.

    A comma inside a named variant's parameter list (``diffusion:layers=8,lam=5``) stays with it.
    """
    items: list[str] = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                raise UsageError(f"{option} {value!r}: an empty item; give a comma-separated list without blanks")
            if items and "=" in part and ":" not in part and ":" in items[-1]:
                items[-1] += "," + part
            else:
                items.append(part)
    return items


def number(value: object) -> str:
    """A value as printed: floats to 4 significant digits (0.6464166974091021 → 0.6464), the rest as is."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def settings_text(values: Mapping[str, object]) -> str:
    """``key value, key value`` with numbers rounded (:func:`number`)."""
    return ", ".join(f"{key} {number(value)}" for key, value in values.items())


def output_format(option: str, path: Path | None, fmt: str | None, by_suffix: Mapping[str, str], default: str) -> str:
    """The format of an output: ``fmt`` when given (one of ``by_suffix``'s values), else from ``path``'s
    extension, else ``default`` (no path, or standard output ``-``); an unknown extension is a usage error."""
    choices = sorted(set(by_suffix.values()))
    if fmt is not None:
        if fmt not in choices:
            raise UsageError(f"--format {fmt!r}: choose {' or '.join(choices)}")
        return fmt
    if path is None or not names_a_file(path):
        return default
    found = by_suffix.get(path.suffix.lower())
    if found is None:
        known = ", ".join(sorted(by_suffix))
        raise UsageError(
            f"{option} {path}: unknown extension {path.suffix or '(none)'!r}; use {known}"
            + (f", or say --format {'|'.join(choices)}" if len(choices) > 1 else "")
        )
    return found


def names_a_file(path: Path) -> bool:
    """Whether an output is a file named by its extension: not ``-``, a device or a FIFO (their name says nothing)."""
    if os.fspath(path) == atomic.STDOUT:
        return False
    return not path.exists() or path.is_file()


def check_extension(option: str, path: Path | None, suffixes: Iterable[str]) -> None:
    """Refuse an output whose extension is not one of ``suffixes`` (a command with one output format)."""
    allowed = tuple(suffixes)
    if path is not None and names_a_file(path) and path.suffix.lower() not in allowed:
        raise UsageError(f"{option} {path}: unknown extension {path.suffix or '(none)'!r}; use {', '.join(allowed)}")


def resolve_progress(mode: str, quiet: bool) -> str:
    """bar, lines or none: what ``--progress MODE`` means (auto: a bar on a terminal, else lines; none if quiet)."""
    if mode not in PROGRESS_MODES:
        raise UsageError(f"--progress {mode!r}: choose {', '.join(PROGRESS_MODES)}")
    if mode != "auto":
        return mode
    if quiet:
        return "none"
    return "bar" if interactive() else "lines"


Advance = Callable[..., None]  # advance(completed, label=None, total=None)


@contextlib.contextmanager
def progress(quiet: bool, total: int | None, what: str, mode: str = "auto") -> Iterator[Advance]:
    """Progress on stderr as ``--progress`` says (:func:`resolve_progress`); yields ``advance(completed, label=None,
    total=None)``. Lines mode prints a status line every :data:`LINES_INTERVAL` seconds from a timer thread (so a
    long step without callbacks still shows), and a closing line when it printed any."""
    chosen = resolve_progress(mode, quiet)
    if chosen == "none":
        yield lambda completed, label=None, total=None: None
        return
    if chosen == "bar":
        with _bar(total, what) as advance:
            yield advance
        return
    with _lines(total, what) as advance:
        yield advance


@contextlib.contextmanager
def _bar(total: int | None, what: str) -> Iterator[Advance]:
    """A transient Rich progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task(escape(what), total=total)

        def advance(completed: int, label: str | None = None, total: int | None = None) -> None:
            bar.update(task, completed=completed, description=escape(label or what), total=total)

        yield advance


@contextlib.contextmanager
def _lines(total: int | None, what: str) -> Iterator[Advance]:
    """A status line on stderr every LINES_INTERVAL seconds: done/total, percent, elapsed, time left."""
    state: dict[str, object] = {"done": 0, "total": total, "label": what, "lines": 0}
    start = time.monotonic()
    stop = threading.Event()

    def line(final: bool = False) -> str:
        done, of, label = int(state["done"]), state["total"], str(state["label"])  # type: ignore[call-overload]
        elapsed = time.monotonic() - start
        if final:
            return f"{what}: done in {elapsed:.1f} s"
        count = f"{done:,}" if not of else f"{done:,}/{of:,} ({100.0 * done / of:.0f}%)"  # type: ignore[str-format]
        left = f", ~{elapsed * (of - done) / done:.0f} s left" if of and 0 < done < of else ""  # type: ignore[operator]
        return f"{label}: {count}, {elapsed:.0f} s{left}"

    def beat() -> None:
        while not stop.wait(LINES_INTERVAL):
            stderr.print(line(), highlight=False, markup=False)
            state["lines"] = int(state["lines"]) + 1  # type: ignore[call-overload]

    def advance(completed: int, label: str | None = None, total: int | None = None) -> None:
        state["done"] = completed
        if label:
            state["label"] = label
        if total is not None:
            state["total"] = total

    thread = threading.Thread(target=beat, name="diffshot-progress", daemon=True)
    thread.start()
    try:
        yield advance
    finally:
        stop.set()
        thread.join()
        if state["lines"]:
            stderr.print(line(final=True), highlight=False, markup=False)
