"""JSON documents read as untrusted input (plot, compare, batch): bounded size and depth, finite numbers only.

Python's JSON parser recurses once per nesting level, so a 200,000-deep ``[[[...`` would end in a
RecursionError; the depth is measured first, on the text with its strings blanked out, in one vectorised pass.
Every number must be finite and of a plausible size before any consumer (matplotlib, the statistics) sees it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from diffshot.errors import DiffshotError

MAX_JSON_BYTES = 512 << 20
MAX_DEPTH = 64
MAX_MAGNITUDE = 1e15  # larger than any count, accuracy or parameter diffshot writes
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def nesting_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON text (brackets inside strings do not count)."""
    bare = np.frombuffer(_STRING.sub('""', text).encode("utf-8", errors="replace"), dtype=np.uint8)
    steps = np.zeros(bare.shape, dtype=np.int64)
    steps[(bare == ord("[")) | (bare == ord("{"))] = 1
    steps[(bare == ord("]")) | (bare == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def _no_constants(name: str) -> float:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON and never a result diffshot writes."""
    raise ValueError(f"holds {name}, which is not a finite number")


def read_json(path: str | Path) -> object:
    """A JSON file's content, checked for size, depth and finite numbers; a one-line error naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise DiffshotError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB, not a diffshot result")
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DiffshotError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DiffshotError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DiffshotError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return loads(text, path)


def loads(text: str, source: str | Path) -> object:
    """JSON text from ``source`` parsed once its depth is known to be small; numbers checked finite."""
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise DiffshotError(f"{source}: nests {depth} levels deep (at most {MAX_DEPTH}); not a diffshot result")
    try:
        document = json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        raise DiffshotError(f"{source}: not readable as JSON ({str(exc).splitlines()[0]})") from None
    check_numbers(document, source)
    return document


def check_numbers(document: object, path: str | Path) -> None:
    """Every number in ``document`` finite and at most ``MAX_MAGNITUDE`` in size; the error names where."""
    stack: list[tuple[str, object]] = [("", document)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{where}.{key}", item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{where}[{index}]", item) for index, item in enumerate(value))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            big = abs(value) > MAX_MAGNITUDE if isinstance(value, int) else not abs(value) <= MAX_MAGNITUDE
            if big:
                shown = f"{value:.3g}" if isinstance(value, float) and math.isfinite(value) else _short(value)
                raise DiffshotError(
                    f"{path}: {where.lstrip('.') or 'the document'} is {shown}, not a finite number of plausible "
                    f"size (at most {MAX_MAGNITUDE:g})"
                )


def _short(value: int | float) -> str:
    """A number as text, shortened when it has hundreds of digits."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {len(str(abs(value)))} digits"
    return str(value)


__all__ = ["MAX_DEPTH", "MAX_JSON_BYTES", "MAX_MAGNITUDE", "check_numbers", "loads", "nesting_depth", "read_json"]
