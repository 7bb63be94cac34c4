"""The exception types the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class DiffshotError(Exception):
    """A problem with the user's input: shown as one line, never as a traceback (exit 1)."""


class UsageError(DiffshotError):
    """An invalid option or parameter value, found before any work starts (exit 2, as for Typer's own)."""
