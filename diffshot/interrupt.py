"""Ctrl-C that is never lost: the handler records the request, and long loops raise it again at their next step.

Python raises KeyboardInterrupt in whatever code runs when the signal lands; when that is a destructor or
a weakref callback (h5py and torch objects being collected during start-up), the interpreter prints
"Exception ignored" and carries on. The command line installs :func:`install`; :func:`check` then stops a
run at its next chunk. Library users who never install it are not affected.
"""

from __future__ import annotations

import signal
import types

_requested = False
_reported = False


def _on_interrupt(signum: int, frame: types.FrameType | None) -> None:
    """Record the request, then interrupt as Python's default handler does, except inside a callback.

    In a destructor or weakref callback the KeyboardInterrupt would only be printed ("Exception
    ignored") and lost, so the signal is raised again instead: it is handled at the next step after
    the callback has returned.
    """
    global _requested
    _requested = True
    if frame is not None and _in_callback(frame):
        signal.raise_signal(signum)
        return
    raise KeyboardInterrupt


def _in_callback(frame: types.FrameType) -> bool:
    """Whether ``frame`` is a destructor or a weakref callback (importlib's module-lock one, weakref.py's)."""
    code = frame.f_code
    if code.co_name == "__del__":
        return True
    return (code.co_filename.startswith("<frozen importlib") and code.co_name == "cb") or (
        code.co_filename.endswith("weakref.py") and code.co_name in ("remove", "_remove", "_cb")
    )


def install() -> None:
    """Route SIGINT through the recording handler (call from the main thread)."""
    signal.signal(signal.SIGINT, _on_interrupt)


def check() -> None:
    """Raise KeyboardInterrupt when Ctrl-C was pressed, also if the first one was swallowed somewhere."""
    if _requested:
        raise KeyboardInterrupt


def mark_reported() -> None:
    """Note that the command has written its one-line interrupt message (the entry point then adds none)."""
    global _reported
    _reported = True


def was_reported() -> bool:
    """Whether :func:`mark_reported` was called in this process."""
    return _reported
