"""Pictures of diffshot's outputs (matplotlib, optional: ``pip install 'diffshot[plot]'``).

:func:`draw` picks the picture from what its input is; :func:`draw_for_results` and :func:`draw_batch`
are what ``evaluate --plot`` and ``batch --plots`` call. Colours: :mod:`diffshot.plot.palette`.
"""

from diffshot.plot.draw import draw, draw_batch, draw_for_results, render

__all__ = ["draw", "draw_batch", "draw_for_results", "render"]
