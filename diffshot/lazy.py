"""Heavy modules imported on first use, so that ``--help``, ``methods``, ``info`` and argument errors answer at once.

``torch`` takes about two seconds to import; the library's modules name it through these proxies,
which import the real module the first time an attribute is read (the module is then cached in
``sys.modules`` as usual).
"""

from __future__ import annotations

import importlib
import types


class LazyModule:
    """A stand-in for the module ``name`` that imports it when one of its attributes is first read."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: types.ModuleType | None = None

    def __getattr__(self, attribute: str) -> object:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (loaded)' if self._module is not None else ''}>"


torch = LazyModule("torch")
functional = LazyModule("torch.nn.functional")
