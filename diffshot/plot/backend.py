"""matplotlib, imported only when a picture is drawn, on the headless Agg backend; atomic figure files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffshot.atomic import atomic_path
from diffshot.errors import DiffshotError, UsageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MISSING = "plotting needs matplotlib: pip install 'diffshot[plot]'"
FORMATS = ("png", "svg", "pdf")
PNG_DPI = 110


def figure(**kwargs: Any) -> Figure:
    """A new matplotlib Figure (no pyplot, no global state) on the Agg backend, or the one-line missing-extra error."""
    try:
        import matplotlib
    except ImportError:
        raise DiffshotError(MISSING) from None
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def figure_format(path: str | Path) -> str:
    """png, svg or pdf from the output's suffix, else a one-line error naming the file."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UsageError(f"{path}: the figure format comes from the suffix; use .png, .svg or .pdf")
    return suffix


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names (no timestamps, so files are stable)."""
    fmt = figure_format(path)
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[fmt]
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "diffshot"}), atomic_path(path, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, format=fmt, dpi=PNG_DPI, metadata=metadata, bbox_inches="tight")
    return Path(path)
