"""The registry of few-shot methods: adding one is a file in this folder plus one line below."""

from __future__ import annotations

from diffshot.errors import DiffshotError
from diffshot.methods import bdcspn, diffresnet, diffusion, labelprop, laplacianshot, ptmap, simpleshot, tim
from diffshot.methods.base import Method, Param, ParamValue, Scores

REGISTRY: dict[str, Method] = {
    method.name: method
    for method in (
        simpleshot.METHOD,
        diffusion.METHOD,
        diffresnet.METHOD,
        bdcspn.METHOD,
        laplacianshot.METHOD,
        ptmap.METHOD,
        tim.METHOD,
        labelprop.METHOD,
    )
}


def get_method(name: str) -> Method:
    """The registered method called ``name``, or an error listing those that exist."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise DiffshotError(f"unknown method {name!r}; choose from {', '.join(REGISTRY)}") from None


__all__ = ["REGISTRY", "Method", "Param", "ParamValue", "Scores", "get_method"]
