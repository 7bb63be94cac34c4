"""Writing outputs: a result appears whole at its path or not at all, and never destroys what was there by accident.

How an output path is written:

- ``-`` is standard output (text outputs; binary HDF5/npz outputs refuse it);
- a character device or FIFO (``/dev/null``, a named pipe, ``/dev/stdout``) is written directly, never replaced;
- a symlink is followed: its target is replaced and the link kept;
- a regular file (or nothing) gets a temporary file beside it, renamed over it only once the write succeeded,
  with the old file's permission bits; a read-only file (no owner write bit) is replaced only when forced;
- an output that is one of the command's inputs, or lies inside an input folder, is refused: early by
  :func:`claim_outputs`, and again by every writer against each input the command opened (:func:`note_input`).

A failed write (disk full, broken pipe) is one :class:`DiffshotError` naming the file; the old file is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from diffshot.errors import DiffshotError

STDOUT = "-"
_HDF5_REASON = re.compile(r"error message = '([^']*)'")
# Real paths of read-only files this process was told (``--force``) it may replace.
_FORCED: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Target:
    """Where an output really goes: ``file`` (replaced atomically), ``direct`` (device/FIFO) or ``stdout``."""

    given: Path
    kind: str
    real: Path
    mode: int | None = None

    @property
    def read_only(self) -> bool:
        """An existing regular file without write permission (owner bit; root can write anything, so not access())."""
        if self.kind != "file" or self.mode is None:
            return False
        return not self.mode & stat.S_IWUSR or not os.access(self.real, os.W_OK)


def _stdout_stat() -> os.stat_result | None:
    """The stat of this process's standard output, when it is a real file descriptor."""
    try:
        return os.fstat(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def _kind_name(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISBLK(mode):
        return "block device"
    return "socket" if stat.S_ISSOCK(mode) else "special file"


def resolve_output(path: str | os.PathLike[str]) -> Target:
    """Classify ``path`` as an output (see the module docstring); one-line error where it cannot be written."""
    given = Path(path)
    if os.fspath(path) == STDOUT:
        return Target(given, "stdout", given)
    try:
        info: os.stat_result | None = os.stat(given)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise DiffshotError(f"{given}: cannot write there ({exc.strerror})") from None
    if info is not None:
        out = _stdout_stat()
        if out is not None and os.path.samestat(info, out):
            return Target(given, "stdout", given)
        if stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode):
            return Target(given, "direct", given)
        if stat.S_ISDIR(info.st_mode):
            raise DiffshotError(f"{given}: is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise DiffshotError(f"{given}: is a {_kind_name(info.st_mode)}, not a file; refusing to write there")
    real = Path(os.path.realpath(given)) if info is not None or given.is_symlink() else given
    parent = real.parent if str(real.parent) else Path(".")
    if not parent.is_dir():
        raise DiffshotError(f"{given}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DiffshotError(f"{given}: folder {parent} is not writable")
    return Target(given, "file", real, None if info is None else stat.S_IMODE(info.st_mode))


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, with a one-line error, when ``path`` cannot be written."""
    resolve_output(path)
    return Path(path)


def _is_input(target: Target, source: Path) -> bool:
    """Whether writing ``target`` would overwrite the input ``source`` (same file after links, or a hard link)."""
    if target.kind == "stdout":
        return False
    if target.kind == "file" and os.path.realpath(source) == os.path.realpath(target.real):
        return True
    try:
        return os.path.samefile(target.real, source)
    except OSError:
        return False


def _inside(target: Target, folder: Path) -> bool:
    """Whether ``target`` lies inside the input folder ``folder`` (after every link on the way is resolved)."""
    if target.kind == "stdout" or not os.path.isdir(folder):
        return False
    real, root = os.path.realpath(target.real), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def refuse_inputs(target: Target, sources: Iterable[Path]) -> None:
    """The output guard: a one-line error when ``target`` is one of ``sources`` or lies inside one that is a folder."""
    for source in sources:
        if _is_input(target, source):
            raise DiffshotError(
                f"{target.given}: is the input {source}; writing it would destroy the input, choose another output"
            )
        if _inside(target, source):
            raise DiffshotError(
                f"{target.given}: lies inside the input folder {source}; writing there would change the input, "
                f"choose another output"
            )


# The inputs of the command now running (None outside a command): every file the input gate opens is noted here,
# and every writer (:func:`atomic_path`) checks its target against them, so no output can land on an input.
_RUN_INPUTS: list[Path] | None = None


@contextlib.contextmanager
def run_scope() -> Iterator[None]:
    """One command's run: inputs noted while it lasts are guarded against every output it writes."""
    global _RUN_INPUTS
    outer, _RUN_INPUTS = _RUN_INPUTS, []
    try:
        yield
    finally:
        _RUN_INPUTS = outer


def note_input(path: str | os.PathLike[str] | None) -> None:
    """Record ``path`` (a file or folder) as an input of the running command; nothing outside a command."""
    if _RUN_INPUTS is not None and path is not None and os.fspath(path) != STDOUT:
        _RUN_INPUTS.append(Path(path))


def claim_outputs(
    outputs: Iterable[str | os.PathLike[str] | None],
    inputs: Iterable[str | os.PathLike[str] | None],
    *,
    binary: Iterable[str | os.PathLike[str] | None] = (),
    force: bool = False,
) -> bool:
    """Check a command's outputs before it does any work; True when one of them is standard output.

    Refused: an output that is one of ``inputs``, two outputs that are one file, a read-only file unless
    ``force`` (which lets the writer replace it), and ``-`` for a ``binary`` (HDF5/npz) output.
    """
    binaries = [Path(p) for p in binary if p is not None]
    for path in binaries:
        if os.fspath(path) == STDOUT:
            raise DiffshotError(_binary_stdout(path))
    targets = [resolve_output(p) for p in [*outputs, *binaries] if p is not None]
    sources = [Path(p) for p in inputs if p is not None]
    for source in sources:
        note_input(source)
    seen: dict[str, Path] = {}
    for target in targets:
        refuse_inputs(target, sources)
        key = "stdout" if target.kind == "stdout" else os.fspath(target.real)
        if target.kind != "direct" and key in seen:
            raise DiffshotError(f"{target.given}: is also the output {seen[key]}; give each output its own file")
        seen[key] = target.given
        if target.read_only:
            if not force:
                raise DiffshotError(_read_only(target))
            _FORCED.add(os.fspath(target.real))
    return any(t.kind == "stdout" for t in targets)


def _binary_stdout(path: Path) -> str:
    """The message for ``-`` given as a binary output."""
    return f"{path}: this output is a binary file and cannot go to standard output; give a file name"


def _read_only(target: Target) -> str:
    """The message for a read-only file that would be replaced."""
    return f"{target.given}: is read-only; pass force=True to replace it"


def _current_umask() -> int:
    """The process umask (read by setting and restoring it), so new outputs get ordinary permissions."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _failure(target: Target, exc: BaseException) -> str:
    """One line saying that writing ``target`` failed and why (errno text, or HDF5's error message)."""
    reason = getattr(exc, "strerror", None) or exc
    found = _HDF5_REASON.search(str(exc))
    if found:
        reason = found.group(1)
    kept = "; the existing file is unchanged" if target.kind == "file" and target.mode is not None else ""
    return f"{target.given}: cannot write ({reason}){kept}"


@contextlib.contextmanager
def _reporting(target: Target) -> Iterator[None]:
    """Turn an I/O failure while writing (ENOSPC, EPIPE, HDF5's write errors) into one DiffshotError."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and target.kind == "stdout":
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise DiffshotError(_failure(target, exc)) from None
    except RuntimeError as exc:
        if "errno =" not in str(exc):
            raise
        raise DiffshotError(_failure(target, exc)) from None


def _copy_out(tmp: Path, target: Target) -> None:
    """Send the finished temporary file to standard output or into the device/FIFO."""
    with open(tmp, "rb") as source:
        if target.kind == "direct":
            with open(target.real, "wb") as sink:
                shutil.copyfileobj(source, sink)
            return
        sys.stdout.flush()
        sink = getattr(sys.stdout, "buffer", None)
        if sink is None:
            sys.stdout.write(source.read().decode("utf-8"))
        else:
            shutil.copyfileobj(source, sink)
            sink.flush()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "", *, stream: bool = False) -> Iterator[Path]:
    """Yield the path to write; the result reaches ``path`` whole or not at all (see the module docstring).

    ``stream``: the caller writes front to back with ``open()`` (text), so a device or FIFO takes the bytes
    directly and ``-`` is allowed; HDF5 and npz writers leave it False and get a seekable temporary file.
    """
    target = resolve_output(path)
    refuse_inputs(target, _RUN_INPUTS or ())
    if target.kind == "stdout" and os.fspath(path) == STDOUT and not stream:
        raise DiffshotError(_binary_stdout(target.given))
    if target.read_only and os.fspath(target.real) not in _FORCED:
        raise DiffshotError(_read_only(target))
    if target.kind == "direct" and stream:
        with _reporting(target):
            yield target.real
        return
    folder = target.real.parent if target.kind == "file" else None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.real.name}.", suffix=suffix or ".tmp", dir=folder)
    except OSError as exc:
        where = folder or tempfile.gettempdir()
        raise DiffshotError(f"{target.given}: cannot write in {where} ({exc.strerror})") from None
    os.close(fd)
    tmp = Path(name)
    try:
        with _reporting(target):
            yield tmp
            if target.kind == "file":
                os.chmod(tmp, target.mode if target.mode is not None else 0o666 & ~_current_umask())
                os.replace(tmp, target.real)
            else:
                _copy_out(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class FailSafeFile:
    """A binary file for h5py's file-object driver that, after its first failed write (a full disk), accepts and
    drops everything: HDF5 can then close the file, where a close that fails again crashes the process at exit."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.failed = False

    def _call(self, name: str, *args: object) -> Any:
        """Run the handle's method ``name``; an OSError is raised once and switches to dropping."""
        try:
            return getattr(self._handle, name)(*args)
        except OSError:
            self.failed = True
            raise

    def write(self, data: bytes | memoryview) -> int:
        """Write ``data`` (dropped after a failure)."""
        return memoryview(data).nbytes if self.failed else self._call("write", data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move to ``offset``."""
        return 0 if self.failed else self._call("seek", offset, whence)

    def tell(self) -> int:
        """The current offset."""
        return 0 if self.failed else self._call("tell")

    def readinto(self, buffer: memoryview) -> int:
        """Read into ``buffer`` (HDF5 reads back metadata it wrote)."""
        return memoryview(buffer).nbytes if self.failed else self._call("readinto", buffer)

    def read(self, size: int = -1) -> bytes:
        """Read ``size`` bytes."""
        return bytes(max(size, 0)) if self.failed else self._call("read", size)

    def truncate(self, size: int | None = None) -> int:
        """Cut the file at ``size``."""
        return 0 if self.failed else self._call("truncate", size)

    def flush(self) -> None:
        """Flush the handle."""
        if not self.failed:
            self._call("flush")


@contextlib.contextmanager
def hdf5_handle(path: str | os.PathLike[str]) -> Iterator[FailSafeFile]:
    """Open a temporary path from :func:`atomic_path` for ``h5py.File(handle, "w")``, so a full disk is one clean
    OSError (HDF5's own driver fails at close with errors printed from destructors, then crashes at exit)."""
    with open(path, "w+b", buffering=0) as handle:
        yield FailSafeFile(handle)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, or to standard output / a device (see the module docstring)."""
    with atomic_path(path, stream=True) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)
