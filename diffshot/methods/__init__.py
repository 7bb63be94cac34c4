"""The registry of few-shot methods: adding one is a file in this folder plus its name in ``MODULES``.

Each module defines ``METHOD``, a :class:`~diffshot.methods.base.Method`; :func:`register` adds
one from anywhere else (a plug-in, a test).
"""

from __future__ import annotations

import difflib
import importlib

from diffshot.errors import DiffshotError, UsageError
from diffshot.methods.base import Method, NoParams, OpenSetScores, Param, ParamValue, TaskScores, param

MODULES = (
    "simpleshot",
    "diffusion",
    "diffresnet",
    "bdcspn",
    "laplacianshot",
    "ptmap",
    "tim",
    "labelprop",
    "oslo",
    "bms",
    "paddle",
    "alpha_tim",
)

REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry under its name (a name may be registered once)."""
    if method.name in REGISTRY and REGISTRY[method.name] is not method:
        raise DiffshotError(f"a method named {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


for _module in MODULES:
    register(importlib.import_module(f"diffshot.methods.{_module}").METHOD)


def get_method(name: str) -> Method:
    """The registered method called ``name``, or an error listing those that exist (with a close match)."""
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown method {name!r}{hint}; choose from {', '.join(REGISTRY)}") from None


__all__ = [
    "MODULES",
    "REGISTRY",
    "Method",
    "NoParams",
    "OpenSetScores",
    "Param",
    "ParamValue",
    "TaskScores",
    "get_method",
    "param",
    "register",
]
