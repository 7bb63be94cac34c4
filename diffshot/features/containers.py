"""Safe loading: a features file's bytes become a Python object (or an open HDF5 file) as data, bounded in size.

Which container a file is comes from its first bytes; every loader here checks declared sizes against what the
file holds before allocating, and never runs code. Which *layout* the loaded object holds is decided in
:mod:`diffshot.features.layouts`; the table joining the two is :mod:`diffshot.features.formats`.
"""

from __future__ import annotations

import errno
import os
import stat
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from diffshot.atomic import note_input
from diffshot.errors import DiffshotError
from diffshot.features.limits import COMPRESSED_RATIO, Budget, human

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
PICKLE_SUFFIXES = (".pkl", ".plk", ".pickle")
HEAD_BYTES = 16


def check_readable(path: str | os.PathLike[str]) -> Path:
    """The path, noted as an input of the run, or a one-line error when it is missing, a dangling or looping link,
    a folder, or unreadable."""
    p = Path(path)
    try:
        info = os.stat(p)
    except OSError as exc:
        raise DiffshotError(_stat_error(p, exc)) from None
    if stat.S_ISDIR(info.st_mode):
        raise DiffshotError(f"{p}: is a folder, not a features file")
    if not stat.S_ISREG(info.st_mode):
        raise DiffshotError(f"{p}: not a regular file (a device, FIFO or socket), so not a features file")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise DiffshotError(f"{p}: file is not readable ({exc.strerror or type(exc).__name__})") from None
    note_input(p)
    return p


def _stat_error(p: Path, exc: OSError) -> str:
    """One line for a path that cannot be stat'ed: missing, a dangling or looping symlink, or a closed folder."""
    if exc.errno == errno.ELOOP:
        return f"{p}: symbolic link loop (the link points back at itself)"
    if exc.errno == errno.ENOENT and os.path.islink(p):
        return f"{p}: dangling symbolic link (it points at {os.readlink(p)}, which does not exist)"
    if exc.errno == errno.ENOENT:
        return f"{p}: no such file"
    if exc.errno == errno.EACCES:
        return f"{p}: permission denied (a folder on the way to it cannot be searched or read)"
    return f"{p}: cannot read file ({exc.strerror or type(exc).__name__})"


def head(path: Path) -> bytes:
    """The first bytes of a file (what containers are recognised by); a one-line error for an empty one."""
    try:
        with open(path, "rb") as handle:
            first = handle.read(HEAD_BYTES)
    except OSError as exc:
        raise DiffshotError(f"{path}: cannot read file ({exc.strerror or type(exc).__name__})") from None
    if not first:
        raise DiffshotError(f"{path}: empty file")
    return first


def is_hdf5(path: Path) -> bool:
    """Whether the file starts with the HDF5 signature."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(HDF5_MAGIC)) == HDF5_MAGIC
    except OSError as exc:
        raise DiffshotError(f"{path}: cannot read file ({exc.strerror or type(exc).__name__})") from None


def is_pickle(first: bytes, path: Path) -> bool:
    """A pickle by its PROTO opcode (protocol 2-5), or by its suffix for protocols 0 and 1."""
    return (len(first) >= 2 and first[0] == 0x80 and 2 <= first[1] <= 5) or path.suffix.lower() in PICKLE_SUFFIXES


def zip_kind(path: Path) -> str:
    """A zip archive is a torch file (it holds data.pkl) or an .npz (only .npy members)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DiffshotError(f"{path}: corrupt or truncated zip archive ({exc})") from None
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return "torch"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    return "zip"


def describe_bytes(path: Path) -> str:
    """'a text file' or 'unrecognised binary data', from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    return "a text file"


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, loaded with allow_pickle=False once the declared shapes fit what the archive holds."""
    try:
        check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as archive:
            return {key: _npz_member(archive, key, path) for key in archive.files}
    except (zipfile.BadZipFile, OSError, EOFError, MemoryError) as exc:
        raise DiffshotError(f"{path}: corrupt or truncated .npz ({exc})") from None


def _npy_header(handle: BinaryIO, path: Path, what: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """The shape, dtype and header length an .npy stream declares, read without reading its data."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"format version {version} is not read")
    except (ValueError, EOFError, OSError, SyntaxError, zipfile.BadZipFile) as exc:
        raise DiffshotError(f"{path}: {what} has a corrupt .npy header ({str(exc).splitlines()[0]})") from None
    return tuple(shape), dtype, handle.tell()


def _declared_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` takes, in exact integer arithmetic."""
    count = 1
    for size in shape:
        count *= int(size)
    return count * dtype.itemsize


def _check_npy_size(path: Path, what: str, shape: tuple[int, ...], dtype: np.dtype, held: int) -> int:
    """The declared data size, or a one-line error when it is more than the ``held`` bytes that follow the header."""
    need = _declared_bytes(shape, dtype)
    if need > held and not dtype.hasobject:
        raise DiffshotError(
            f"{path}: {what} declares shape {shape} of {dtype} ({human(need)}) but holds only {human(held)} of data; "
            f"refused before allocating"
        )
    return need


def check_npz_sizes(path: Path) -> None:
    """Refuse an .npz whose members declare more data than they hold, or more than memory, before reading any."""
    budget = Budget(path)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            what = f"array {info.filename.removesuffix('.npy')!r}"
            with archive.open(info) as member:
                shape, dtype, header = _npy_header(member, path, what)
            need = _check_npy_size(path, what, shape, dtype, info.file_size - header)
            compressed = info.compress_type != zipfile.ZIP_STORED
            budget.take(need, info.compress_size, COMPRESSED_RATIO if compressed else 1, what)


def _npz_member(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """One array of an .npz; Python-object arrays are refused since they need pickle."""
    try:
        return archive[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DiffshotError(
                f"{path}: array {key!r} holds Python objects, which need pickle; diffshot reads .npz with "
                f"allow_pickle=False, so save strings as a fixed-width array (np.array(names, dtype=str))"
            ) from None
        raise DiffshotError(f"{path}: array {key!r} is corrupt ({exc})") from None


def read_npy(path: Path) -> np.ndarray:
    """A single .npy array, loaded with allow_pickle=False once its declared shape fits the file."""
    with open(path, "rb") as handle:
        shape, dtype, header = _npy_header(handle, path, "the array")
    need = _check_npy_size(path, "the array", shape, dtype, path.stat().st_size - header)
    Budget(path).take(need, need, 1, "the array")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DiffshotError(f"{path}: not a readable .npy without pickle ({str(exc).splitlines()[0]})") from None
    except (OSError, EOFError, MemoryError) as exc:
        raise DiffshotError(f"{path}: corrupt or truncated .npy ({exc})") from None


__all__ = [
    "HDF5_MAGIC",
    "NPY_MAGIC",
    "TORCH_LEGACY_MAGIC",
    "ZIP_MAGIC",
    "check_npz_sizes",
    "check_readable",
    "describe_bytes",
    "head",
    "is_hdf5",
    "is_pickle",
    "read_npy",
    "read_npz",
    "zip_kind",
]
