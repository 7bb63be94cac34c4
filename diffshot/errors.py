"""The exception types the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class DiffshotError(Exception):
    """A problem with the user's input: shown as one line, never as a traceback (exit 1)."""


class UsageError(DiffshotError):
    """An invalid option or parameter value, found before any work starts (exit 2, as for Typer's own)."""


_BIDI = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A))


def _visible(char: str) -> str:
    """A control character (C0, DEL, C1, bidirectional override) as a visible escape; anything else as it is."""
    code = ord(char)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code in _BIDI else char


def printable(text: object) -> str:
    """Text from a file made safe for the terminal and for Rich: control characters (terminal escapes, bells,
    bidirectional overrides) shown as ``\\xNN`` escapes, and Rich markup escaped. Every name read from a file
    (class names, attributes, paths) goes through this before it is printed."""
    from rich.markup import escape

    shown = str(text)
    if not shown.isprintable():
        shown = "".join(map(_visible, shown))
    return escape(shown)
