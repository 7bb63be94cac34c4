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


def _on_interrupt(signum: int, frame: types.FrameType | None) -> None:
    """Record the request, then interrupt as Python's default handler does."""
    global _requested
    _requested = True
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT through the recording handler (call from the main thread)."""
    signal.signal(signal.SIGINT, _on_interrupt)


def check() -> None:
    """Raise KeyboardInterrupt when Ctrl-C was pressed, also if the first one was swallowed somewhere."""
    if _requested:
        raise KeyboardInterrupt
