"""Restricted unpickling: pickled feature files are read as data (containers, numbers, arrays, tensors), never code.

numpy arrays, dtypes and scalars are never built by numpy's own ``__setstate__`` (which turns file bytes into
object pointers for an object dtype): the numpy names resolve to the rebuilders in ``diffshot.features.arrays``,
which check the dtype against an allow-list of numeric and text kinds and the byte count against the shape.
"""

from __future__ import annotations

import builtins
import collections
import io
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path

from diffshot.errors import DiffshotError
from diffshot.features.arrays import NUMPY_GLOBALS, UnsafeData, finish

_CORRUPT = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    RuntimeError,
    MemoryError,
    RecursionError,
    UnicodeError,
)
_BUILTIN_NAMES = ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bool")
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


class Refused(Exception):
    """A pickle asked for a global outside the allowlist; carries the dotted name it asked for."""


class _Allowed:
    """An allowlisted function as a pickle sees it: callable, but never a target for BUILD's attribute writes."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[..., object]) -> None:
        self.func = func

    def __call__(self, *args: object) -> object:
        return self.func(*args)

    def __setstate__(self, state: object) -> None:
        raise UnsafeData("a pickle tried to set attributes on a loader function")


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its class name."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def refused_message(path: Path | str, name: str) -> str:
    """The one-line error for a file that asks to run ``name`` while being loaded."""
    return f"{path}: refused to unpickle {name}: pickled files are loaded as data only, and this one asks to run code"


def _bytes_from_data(*args: object) -> bytes:
    """``bytes()`` as pickles use it (empty, or from bytes/str); never ``bytes(n)``, which allocates n zeros."""
    if args and isinstance(args[0], int):
        raise pickle.UnpicklingError("bytes(n) from an integer is not data")
    return bytes(*args)


def _latin1_encode(text: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles use it for bytes: a latin-1 str back to bytes, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only to decode latin-1 bytes")
    return text.encode("latin-1", errors)


class _Typed(Exception):
    """The storage bytes hold a typed storage, which ``torch.load(weights_only=True)`` reads itself."""


class _StoragePickle(pickle.Unpickler):
    """Reads the pickles of a legacy ``torch.save(storage)`` blob: numbers, a dict, and one storage reference."""

    untyped = object()

    def find_class(self, module: str, name: str) -> object:
        """Only ``torch.UntypedStorage`` is named here; a typed storage goes to torch's own loader."""
        if name == "UntypedStorage" and module in ("torch", "torch.storage"):
            return self.untyped
        if module == "torch" and name.endswith("Storage"):
            raise _Typed(name)
        raise Refused(f"{module}.{name}")

    def persistent_load(self, pid: object) -> object:
        """The one storage reference: ('storage', UntypedStorage, key, location, size, ...)."""
        if (
            not isinstance(pid, tuple)
            or len(pid) < 5
            or pid[0] != "storage"
            or pid[1] is not self.untyped
            or not isinstance(pid[2], str)
            or not isinstance(pid[4], int)
        ):
            raise pickle.UnpicklingError("unexpected storage reference in a pickled torch storage")
        return pid


def _untyped_storage(blob: bytes) -> object:
    """An UntypedStorage from ``torch.save(storage, _use_new_zipfile_serialization=False)`` bytes, parsed here.

    torch's own loader cannot read these back (how tensors of uint16/32/64 and float8 dtypes are pickled,
    through ``_rebuild_tensor_v3``); the layout is three header pickles, a pickle naming the storage, a
    pickle of its key, then the byte count (8 bytes, little-endian) and the bytes.
    """
    import torch

    stream = io.BytesIO(blob)
    for _ in range(3):
        _StoragePickle(stream).load()
    pid = _StoragePickle(stream).load()
    keys = _StoragePickle(stream).load()
    if not isinstance(pid, tuple) or keys != [pid[2]]:
        raise pickle.UnpicklingError("a pickled torch storage does not name its one storage")
    size = int.from_bytes(stream.read(8), "little")
    data = stream.read(size)
    if size != pid[4] or len(data) != size:
        raise pickle.UnpicklingError("a pickled torch storage is truncated")
    if not size:
        return torch.UntypedStorage(0)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).untyped_storage()


def _load_storage(data: object) -> object:
    """A tensor storage from the bytes ``pickle.dump`` wrote for it, read with ``torch.load(weights_only=True)``."""
    import torch

    if not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError("a torch storage must be pickled as bytes")
    try:
        return _untyped_storage(bytes(data))
    except _Typed:
        pass
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL_IN_MESSAGE.search(str(exc))
        raise Refused(found.group(1) if found else "a non-tensor object inside a torch storage") from None
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise UnsafeData("a pickled torch storage holds something other than a storage")
    return storage


def _checked_storage(storage: object, hooks: object) -> None:
    """Refuse a tensor rebuild over anything but a loaded storage, or one that asks for backward hooks."""
    import torch

    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise pickle.UnpicklingError("a tensor must be rebuilt over a torch storage")
    if hooks:
        raise Refused("torch backward hooks")


def _rebuild_tensor(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    hooks: object,
    metadata: object = None,
) -> object:
    """A plain tensor over a loaded storage, as ``torch._utils._rebuild_tensor_v2`` builds it, without hooks."""
    import torch

    _checked_storage(storage, hooks)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, collections.OrderedDict())


def _rebuild_tensor_v3(
    storage: object,
    offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    hooks: object,
    dtype: object,
    metadata: object = None,
) -> object:
    """A plain tensor of an explicit dtype (uint16/32/64 and friends), as ``_rebuild_tensor_v3`` builds it."""
    import torch

    _checked_storage(storage, hooks)
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError("_rebuild_tensor_v3 needs a torch dtype")
    if not isinstance(offset, int) or not all(
        isinstance(dims, tuple) and all(isinstance(n, int) for n in dims) for dims in (size, stride)
    ):
        raise pickle.UnpicklingError("_rebuild_tensor_v3 needs an integer offset, size and stride")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        untyped = storage if isinstance(storage, torch.UntypedStorage) else storage._untyped_storage
        tensor = torch.empty((0,), dtype=dtype)
        tensor.set_(untyped, offset, size, stride)  # torch checks that size and stride stay inside the storage
    return tensor


def _torch_dtype(module: str, name: str) -> object | None:
    """``torch.<dtype>`` as a pickle names it (``torch.uint16`` for ``_rebuild_tensor_v3``), importing torch then."""
    if module != "torch":
        return None
    import torch

    value = getattr(torch, name, None)
    return value if isinstance(value, torch.dtype) else None


# What a feature pickle may name: builtin containers and scalars, defaultdict/OrderedDict, numpy arrays, dtypes and
# scalars (numpy 1 and 2 module names, rebuilt from validated parts), torch dtypes, and plain tensors written by
# pickle.dump, whose storage bytes are parsed here or read with torch.load(weights_only=True). Everything else
# (os.system, eval, getattr, custom classes) is refused.
def _allowlist() -> dict[tuple[str, str], object]:
    """Every global a feature pickle may name, keyed by (module, name), mapped to what it resolves to."""
    table: dict[tuple[str, str], object] = {}
    for module in ("builtins", "__builtin__"):
        table.update({(module, name): getattr(builtins, name) for name in _BUILTIN_NAMES})
        table[(module, "bytes")] = _Allowed(_bytes_from_data)
    table[("_codecs", "encode")] = _Allowed(_latin1_encode)
    table[("collections", "defaultdict")] = collections.defaultdict
    table[("collections", "OrderedDict")] = collections.OrderedDict
    table.update(NUMPY_GLOBALS)
    table[("torch._utils", "_rebuild_tensor_v2")] = _Allowed(_rebuild_tensor)
    table[("torch._utils", "_rebuild_tensor_v3")] = _Allowed(_rebuild_tensor_v3)
    table[("torch.storage", "_load_from_bytes")] = _Allowed(_load_storage)
    return table


ALLOWED = _allowlist()


class DataUnpickler(pickle.Unpickler):
    """An unpickler that builds data only: any global outside ``ALLOWED`` raises ``Refused``."""

    def find_class(self, module: str, name: str) -> object:
        """The allowlisted object for ``module.name``; ``Refused`` for anything else."""
        found = ALLOWED.get((module, name)) or _torch_dtype(module, name)
        if found is None:
            raise Refused(f"{module}.{name}")
        return found


def safe_load(path: Path) -> object:
    """Unpickle ``path`` as data only; a one-line DiffshotError when it is corrupt, too large or asks to run code."""
    try:
        with open(path, "rb") as handle:
            loaded = DataUnpickler(handle, encoding="latin1").load()
    except Refused as exc:
        raise DiffshotError(refused_message(path, str(exc))) from None
    except UnsafeData as exc:
        raise DiffshotError(f"{path}: {exc}") from None
    except OSError as exc:
        raise DiffshotError(f"{path}: cannot read file ({exc.strerror or _first_line(exc)})") from None
    except _CORRUPT as exc:
        raise DiffshotError(f"{path}: not a readable pickle, truncated or corrupt ({_first_line(exc)})") from None
    return finish(loaded, path)


def _torch_safe_globals() -> list[tuple[object, str]]:
    """The validated numpy rebuilders, under numpy 1 and 2 names, for torch's weights-only loader."""
    return [(value, f"{module}.{name}") for (module, name), value in NUMPY_GLOBALS.items()]


def _weights_only_message(path: Path, exc: pickle.UnpicklingError) -> str:
    """One line for a refusal by ``torch.load(weights_only=True)``, naming the global it refused when it said."""
    found = _GLOBAL_IN_MESSAGE.search(str(exc))
    if found:
        return refused_message(path, found.group(1))
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
    reason = detail.group(1).strip() if detail else "it holds objects other than tensors, arrays and containers"
    return f"{path}: torch.load(weights_only=True) refused this file ({reason})"


def safe_torch_load(path: Path) -> object:
    """Load a torch-saved file with ``torch.load(map_location='cpu', weights_only=True)``; one-line errors."""
    import torch

    try:
        with torch.serialization.safe_globals(_torch_safe_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation notes on storages and quantized types are not ours
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except UnsafeData as exc:
        raise DiffshotError(f"{path}: {exc}") from None
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise DiffshotError(
                f"{path}: not a readable torch file, truncated or corrupt ({_first_line(exc)})"
            ) from None
        raise DiffshotError(_weights_only_message(path, exc)) from None
    except OSError as exc:
        raise DiffshotError(f"{path}: cannot read file ({exc.strerror or _first_line(exc)})") from None
    except _CORRUPT as exc:
        raise DiffshotError(f"{path}: not a readable torch file, truncated or corrupt ({_first_line(exc)})") from None
    return finish(loaded, path)


__all__ = ["ALLOWED", "DataUnpickler", "Refused", "refused_message", "safe_load", "safe_torch_load"]
