"""The ``diffshot`` console script: the CLI, with Ctrl-C during start-up or shutdown ending as one line, and an
unexpected exception (a bug) as one ``internal error`` line and exit 70 (``DIFFSHOT_DEBUG=1`` shows the traceback)."""

from __future__ import annotations

import os
import signal
import sys
import traceback

INTERRUPTED = 130
INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug in diffshot, not a problem with the input
DEBUG_VARIABLE = "DIFFSHOT_DEBUG"


def _one_line(message: str, code: int) -> int:
    """Write ``error: message`` as one line on stderr; return the exit code."""
    sys.stderr.write("error: " + " ".join(message.split()) + "\n")
    return code


def _command() -> str:
    """The subcommand being run, for the internal-error line (the first argument that is not an option)."""
    return next((arg for arg in sys.argv[1:] if not arg.startswith("-")), "diffshot")


def _internal_error(exc: Exception) -> int:
    """One line for an unexpected exception (the traceback with DIFFSHOT_DEBUG=1); exit 70 (EX_SOFTWARE)."""
    if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        traceback.print_exception(exc)
        return INTERNAL_ERROR
    reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    detail = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
    return _one_line(
        f"internal error in {_command()}: {detail}; rerun with {DEBUG_VARIABLE}=1 for the traceback", INTERNAL_ERROR
    )


def main() -> None:
    """Import and run the CLI; Ctrl-C before a command starts or after it ends exits 130 with one line."""
    try:
        from diffshot import interrupt

        interrupt.install()
        from typer.exceptions import Abort, Exit, TyperException

        from diffshot.cli import app
    except KeyboardInterrupt:
        sys.exit(_one_line("interrupted", INTERRUPTED))
    try:
        result = app(standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if code == INTERRUPTED and not interrupt.was_reported():
            # Typer turns a Ctrl-C during argument parsing (its lazy imports) into a silent exit code 130
            code = _one_line("interrupted", INTERRUPTED)
    except KeyboardInterrupt:
        code = _one_line("interrupted", INTERRUPTED)
    except Abort:
        code = _one_line("interrupted", INTERRUPTED)
    except Exit as done:
        code = done.exit_code
    except TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
            code = exc.exit_code  # type: ignore[attr-defined]
        else:
            code = _one_line(exc.format_message(), getattr(exc, "exit_code", 2))  # type: ignore[attr-defined]
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except Exception as exc:  # the last resort: a bug, never a user's input (those are DiffshotError)
        code = _internal_error(exc)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    if code == INTERRUPTED:
        # After an interrupt, interpreter shutdown can still run half-imported modules' exit hooks, which
        # may re-raise the signal; the command's own clean-up (temporary files) has already run.
        os._exit(code)
    sys.exit(code)
