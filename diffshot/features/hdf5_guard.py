"""HDF5 files read as untrusted input: nothing outside the file is followed, and no declared size is trusted."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np

from diffshot.errors import DiffshotError
from diffshot.features.limits import COMPRESSED_RATIO, FLOOR_BYTES, Budget, human

OPT_IN = "pass --allow-external-data (allow_external=True) only if you trust the file and what it points at"


def check_contained(handle: h5py.File, path: Path | str, allow_external: bool = False) -> None:
    """Refuse soft links that lead nowhere or loop, and (unless ``allow_external``) external links, external
    storage and virtual datasets anywhere in the file, naming the dataset and its target.

    Every group reachable by hard links is visited without following soft or external links, so a
    soft link can only resolve to something visited here.
    """
    seen: set[int] = set()
    groups: list[h5py.Group] = [handle]
    softs: list[tuple[h5py.Group, str, str, str]] = []
    while groups:
        group = groups.pop()
        for name in group:
            where = f"{group.name.rstrip('/')}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                if allow_external:
                    continue
                raise DiffshotError(
                    f"{path}: {where} is an external link to {link.filename}:{link.path}, outside this file; {OPT_IN}"
                )
            if isinstance(link, h5py.SoftLink):
                softs.append((group, name, where, link.path))
                continue
            if not isinstance(link, h5py.HardLink):
                raise DiffshotError(f"{path}: {where} is a user-defined HDF5 link, which diffshot does not follow")
            obj = group.get(name)
            if obj is None or hash(obj) in seen:
                continue
            seen.add(hash(obj))
            if isinstance(obj, h5py.Group):
                groups.append(obj)
            elif isinstance(obj, h5py.Dataset) and not allow_external:
                _check_dataset(obj, where, path)
    for group, name, where, target in softs:  # resolved only now: every external link has been refused
        _check_soft_link(group, name, where, target, path)


def _check_soft_link(group: h5py.Group, name: str, where: str, target: str, path: Path | str) -> None:
    """A one-line error for a soft link that points at nothing, or at itself (a loop HDF5 gives up on)."""
    try:
        found = group.get(name)
    except (KeyError, RuntimeError, OSError, ValueError):
        found = None
    if found is None:
        raise DiffshotError(
            f"{path}: {where} is a soft link to {target}, which does not exist or leads back to itself "
            f"(a dangling or looping link)"
        )


def _check_dataset(ds: h5py.Dataset, where: str, path: Path | str) -> None:
    """Refuse a dataset whose data lives in other files (external storage or a virtual dataset)."""
    if ds.external:
        target = ", ".join(str(entry[0]) for entry in ds.external)
        raise DiffshotError(
            f"{path}: dataset {where} keeps its data in {target} (HDF5 external storage), outside this file; {OPT_IN}"
        )
    if ds.is_virtual:
        sources = sorted({f"{src.file_name}:{src.dset_name}" for src in ds.virtual_sources()})
        raise DiffshotError(
            f"{path}: dataset {where} is a virtual dataset mapping {', '.join(sources) or 'other files'}; {OPT_IN}"
        )


def open_hdf5(path: Path | str, allow_external: bool = False, image: bytes | None = None) -> h5py.File:
    """An HDF5 file opened read-only, its soft links checked, and checked to be self-contained (unless
    ``allow_external``).

    ``image`` is the file's bytes already read (then the file is not read again; messages still name ``path``).
    """
    try:
        handle = h5py.File(path if image is None else io.BytesIO(image), "r")
    except OSError as exc:
        raise DiffshotError(f"{path}: unreadable HDF5 file ({exc})") from None
    try:
        check_contained(handle, path, allow_external)
    except BaseException:
        handle.close()
        raise
    return handle


def _stored_bytes(ds: h5py.Dataset) -> tuple[int, bool]:
    """Bytes the file holds for ``ds`` and whether they are compressed (filtered)."""
    try:
        stored = int(ds.id.get_storage_size())
        filtered = ds.id.get_create_plist().get_nfilters() > 0
    except (OSError, ValueError, RuntimeError):
        return 0, False
    return stored, filtered


def declared_bytes(ds: h5py.Dataset, rows: int | None = None) -> int:
    """Bytes ``ds`` (or its first ``rows`` rows) declares, in exact integer arithmetic."""
    shape = ds.shape or ()
    if rows is not None and shape:
        shape = (min(rows, shape[0]), *shape[1:])
    count = int(np.prod(shape, dtype=object)) if shape else 1
    return count * ds.dtype.itemsize


def check_stored(ds: h5py.Dataset, path: Path | str, what: str) -> None:
    """Refuse, before streaming it, a dataset that declares far more data than the file stores for it (a fill
    value or a crafted size): what a streamed reader checks where a whole-file read uses a :class:`Budget`."""
    if ds.external or ds.is_virtual:  # only with --allow-external-data; the data is elsewhere
        return
    nbytes = declared_bytes(ds)
    stored, filtered = _stored_bytes(ds)
    if nbytes > max(FLOOR_BYTES, stored * (COMPRESSED_RATIO if filtered else 1)):
        raise DiffshotError(
            f"{path}: {what} {ds.name} (shape {ds.shape}) declares {human(nbytes)} of data, but the file stores only "
            f"{human(stored)} for it; refused before reading (a crafted or corrupt size, or an unwritten fill value)"
        )


def read_dataset(ds: h5py.Dataset, budget: Budget, what: str, rows: int | None = None) -> np.ndarray:
    """``ds[()]`` (or its first ``rows`` rows), once its declared size has been checked against what the file stores."""
    nbytes = declared_bytes(ds, rows)
    stored, filtered = _stored_bytes(ds)
    if ds.external or ds.is_virtual:  # only read when the user opted in; the data is elsewhere, memory still bounds it
        stored, filtered = nbytes, False
    budget.take(nbytes, stored, COMPRESSED_RATIO if filtered else 1, f"dataset {ds.name} (shape {ds.shape})")
    try:
        return ds[()] if rows is None else ds[:rows]
    except (OSError, ValueError, TypeError, MemoryError) as exc:
        raise DiffshotError(f"{budget.path}: dataset {ds.name} cannot be read ({str(exc).splitlines()[0]})") from None


__all__ = ["check_contained", "check_stored", "declared_bytes", "open_hdf5", "read_dataset"]
