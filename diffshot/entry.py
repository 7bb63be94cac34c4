"""The ``diffshot`` console script: the CLI, with Ctrl-C during start-up or shutdown ending as one line."""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = 130


def _one_line(message: str, code: int) -> int:
    """Write ``error: message`` as one line on stderr; return the exit code."""
    sys.stderr.write("error: " + " ".join(message.split()) + "\n")
    return code


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
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    if code == INTERRUPTED:
        # After an interrupt, interpreter shutdown can still run half-imported modules' exit hooks, which
        # may re-raise the signal; the command's own clean-up (temporary files) has already run.
        os._exit(code)
    sys.exit(code)
