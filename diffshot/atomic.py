"""Atomic file writing: a result either appears whole at its path or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from diffshot.errors import DiffshotError


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, with a one-line error, when ``path`` cannot be written."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise DiffshotError(f"{target}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DiffshotError(f"{target}: folder {parent} is not writable")
    if target.is_dir():
        raise DiffshotError(f"{target}: is a folder, not a file")
    return target


def _current_umask() -> int:
    """The process umask (read by setting and restoring it), so outputs get ordinary permissions."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    target = check_writable(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    except OSError as exc:
        raise DiffshotError(f"{target}: cannot write in {target.parent} ({exc.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
