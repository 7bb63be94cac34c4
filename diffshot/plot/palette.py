"""The fixed per-method look of every figure: Okabe–Ito colours plus a marker and a line style per method.

Okabe & Ito's eight colours ("Color Universal Design", 2008) stay distinguishable for the common
forms of colour blindness; each method also gets its own marker and line style, so a figure printed
in grey still tells the methods apart. A method keeps its look in every figure diffshot draws.
"""

from __future__ import annotations

import dataclasses
import zlib

OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}


@dataclasses.dataclass(frozen=True)
class Style:
    """How one method is drawn: colour (hex), marker and matplotlib line style."""

    colour: str
    marker: str
    linestyle: str | tuple[int, tuple[int, ...]]


METHOD_STYLES: dict[str, Style] = {
    "simpleshot": Style(OKABE_ITO["black"], "s", "--"),
    "diffusion": Style(OKABE_ITO["vermillion"], "o", "-"),
    "diffresnet": Style(OKABE_ITO["blue"], "D", "-."),
    "bdcspn": Style(OKABE_ITO["bluish green"], "^", ":"),
    "laplacianshot": Style(OKABE_ITO["reddish purple"], "v", (0, (5, 1, 1, 1))),
    "ptmap": Style(OKABE_ITO["orange"], "P", (0, (3, 1, 1, 1, 1, 1))),
    "tim": Style(OKABE_ITO["sky blue"], "X", (0, (1, 1))),
    "labelprop": Style(OKABE_ITO["yellow"], "*", (0, (5, 2))),
}

_FALLBACK_MARKERS = ("h", "p", "<", ">", "8", "d")
_FALLBACK_LINES = ("-", "--", "-.", ":")

# Colours of the non-method quantities of the separability and episode figures.
CLASS_COLOURS = tuple(OKABE_ITO[k] for k in ("vermillion", "blue", "bluish green", "orange", "reddish purple"))
CLASS_COLOURS += tuple(OKABE_ITO[k] for k in ("sky blue", "black", "yellow"))
CLASS_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def method_style(method: str) -> Style:
    """The fixed style of ``method``; an unknown name gets a stable look derived from a hash of the name."""
    base = method.split(" ", 1)[0]
    if base in METHOD_STYLES:
        return METHOD_STYLES[base]
    code = zlib.crc32(base.encode("utf-8"))
    colours = list(OKABE_ITO.values())
    return Style(
        colours[code % len(colours)],
        _FALLBACK_MARKERS[(code // 8) % len(_FALLBACK_MARKERS)],
        _FALLBACK_LINES[(code // 64) % len(_FALLBACK_LINES)],
    )


def class_style(index: int) -> tuple[str, str]:
    """Colour and marker of the ``index``-th class of an episode view (cycles past eight classes)."""
    return CLASS_COLOURS[index % len(CLASS_COLOURS)], CLASS_MARKERS[index % len(CLASS_MARKERS)]
