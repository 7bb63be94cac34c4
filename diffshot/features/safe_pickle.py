"""Restricted unpickling: pickled feature files are read as data (containers, numbers, arrays, tensors), never code."""

from __future__ import annotations

import builtins
import collections
import io
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diffshot.errors import DiffshotError

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
)
_BUILTIN_NAMES = ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bool")
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


class Refused(Exception):
    """A pickle asked for a global outside the allowlist; carries the dotted name it asked for."""


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


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """numpy's protocol-5 array rebuild, returning a writable array."""
    array = _NUMPY_FROMBUFFER(buffer, dtype, shape, order)
    return array if array.flags.writeable else array.copy()


def _load_storage(data: object) -> object:
    """A tensor storage from the bytes ``pickle.dump`` wrote for it, read with ``torch.load(weights_only=True)``."""
    import torch

    if not isinstance(data, bytes | bytearray):
        raise pickle.UnpicklingError("a torch storage must be pickled as bytes")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL_IN_MESSAGE.search(str(exc))
        raise Refused(found.group(1) if found else "a non-tensor object inside a torch storage") from None


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

    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise pickle.UnpicklingError("a tensor must be rebuilt over a torch storage")
    if hooks:
        raise Refused("torch backward hooks")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, collections.OrderedDict())


_NUMPY_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]
_NUMPY_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]


# What a feature pickle may name: builtin containers and scalars, defaultdict/OrderedDict, numpy arrays, dtypes and
# scalars (numpy 1 and 2 module names), and plain tensors written by pickle.dump, whose storage bytes are themselves
# read with torch.load(weights_only=True). Everything else (os.system, eval, getattr, custom classes) is refused.
def _allowlist() -> dict[tuple[str, str], Callable[..., object] | type]:
    """Every global a feature pickle may name, keyed by (module, name), mapped to what it resolves to."""
    table: dict[tuple[str, str], Callable[..., object] | type] = {}
    for module in ("builtins", "__builtin__"):
        table.update({(module, name): getattr(builtins, name) for name in _BUILTIN_NAMES})
        table[(module, "bytes")] = _bytes_from_data
    table[("_codecs", "encode")] = _latin1_encode
    table[("collections", "defaultdict")] = collections.defaultdict
    table[("collections", "OrderedDict")] = collections.OrderedDict
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    for core in ("numpy.core", "numpy._core"):
        for module in (f"{core}.multiarray", f"{core}._multiarray_umath"):
            table[(module, "_reconstruct")] = _NUMPY_RECONSTRUCT
            table[(module, "scalar")] = _NUMPY_SCALAR
        table[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    table[("torch._utils", "_rebuild_tensor_v2")] = _rebuild_tensor
    table[("torch.storage", "_load_from_bytes")] = _load_storage
    return table


ALLOWED = _allowlist()


class DataUnpickler(pickle.Unpickler):
    """An unpickler that builds data only: any global outside ``ALLOWED`` raises ``Refused``."""

    def find_class(self, module: str, name: str) -> Callable[..., object] | type:
        """The allowlisted object for ``module.name``; ``Refused`` for anything else."""
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise Refused(f"{module}.{name}") from None


def safe_load(path: Path) -> object:
    """Unpickle ``path`` as data only; a one-line DiffshotError when it is corrupt or asks to run code."""
    try:
        with open(path, "rb") as handle:
            return DataUnpickler(handle, encoding="latin1").load()
    except Refused as exc:
        raise DiffshotError(refused_message(path, str(exc))) from None
    except OSError as exc:
        raise DiffshotError(f"{path}: cannot read file ({exc.strerror or _first_line(exc)})") from None
    except _CORRUPT as exc:
        raise DiffshotError(f"{path}: not a readable pickle, truncated or corrupt ({_first_line(exc)})") from None


def _torch_safe_globals() -> list[object]:
    """numpy array, dtype and scalar reconstruction, under numpy 1 and 2 names, for torch's weights-only loader."""
    dtype_classes = [v for v in vars(np.dtypes).values() if isinstance(v, type) and issubclass(v, np.dtype)]
    aliases = [
        (_NUMPY_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
        (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    ]
    return [_NUMPY_RECONSTRUCT, _NUMPY_SCALAR, np.ndarray, np.dtype, *dtype_classes, *aliases]


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
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
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


__all__ = ["ALLOWED", "DataUnpickler", "Refused", "refused_message", "safe_load", "safe_torch_load"]
