"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class DiffshotError(Exception):
    """A problem with the user's input: shown as one line, never as a traceback."""
