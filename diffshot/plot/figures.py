"""One function per picture kind: plain data in, a matplotlib Figure and the data it plotted out.

Nothing here reads files; :mod:`diffshot.plot.inputs` turns diffshot's outputs into these arguments.
The returned ``data`` is exactly what was drawn, so tests can compare it with the JSON it came from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from diffshot.plot.backend import figure
from diffshot.plot.palette import OKABE_ITO, class_style, method_style

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE_SIZE = 9


@dataclasses.dataclass
class Drawn:
    """A drawn figure and the numbers it shows."""

    figure: Figure
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Point:
    """One accuracy ± 95% interval of one series (a method, or a method at some setting) at one x."""

    series: str
    x: int
    accuracy: float
    ci95: float


@dataclasses.dataclass(frozen=True)
class Paired:
    """One paired difference to the baseline ± its 95% interval (points of accuracy)."""

    label: str
    method: str
    difference: float
    ci95: float


def _edge(colour: str) -> str:
    """Marker edge colour: dark grey around Okabe–Ito yellow (too light on white alone), else the colour itself."""
    return "#333333" if colour == OKABE_ITO["yellow"] else colour


def _style_axes(ax: Any) -> None:
    """Light grid behind the data, no top/right frame."""
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def accuracy_figure(
    points: Sequence[Point], x_name: str, title: str, paired: Sequence[Paired] = (), baseline: str | None = None
) -> Drawn:
    """Accuracy ± 95% interval against ``x_name`` (shots or ways), one line per series; a forest plot of paired
    differences to the baseline beside it when ``paired`` is not empty."""
    fig = figure(figsize=(10.0, 4.2) if paired else (6.4, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=(1.25, 1)) if paired else [fig.subplots()]
    ax = axes[0]
    series: dict[str, dict[str, list[float]]] = {}
    for p in points:
        entry = series.setdefault(p.series, {"x": [], "accuracy": [], "ci95": []})
        entry["x"].append(p.x)
        entry["accuracy"].append(p.accuracy)
        entry["ci95"].append(p.ci95)
    xs = sorted({p.x for p in points})
    span = (xs[-1] - xs[0]) if len(xs) > 1 else 1.0
    dodge = 0.012 * span * (1 if len(xs) > 1 else 8)
    for k, (name, entry) in enumerate(series.items()):
        order = np.argsort(entry["x"], kind="stable")
        for key in entry:
            entry[key] = [entry[key][i] for i in order]
        style = method_style(name)
        offset = (k - (len(series) - 1) / 2) * dodge
        ax.errorbar(
            [x + offset for x in entry["x"]],
            entry["accuracy"],
            yerr=entry["ci95"],
            label=name,
            color=style.colour,
            marker=style.marker,
            linestyle=style.linestyle,
            markeredgecolor=_edge(style.colour),
            capsize=3,
            linewidth=1.4,
            markersize=6,
        )
    ax.set_xticks(xs)
    ax.set_xlabel("shots per class (K)" if x_name == "shots" else "classes per episode (N ways)")
    ax.set_ylabel("accuracy (%, mean ± 95% CI over episodes)")
    if len(xs) == 1:
        ax.set_xlim(xs[0] - 0.5, xs[0] + 0.5)
    _style_axes(ax)
    ax.legend(fontsize=8, frameon=False)
    data: dict[str, Any] = {"x_axis": x_name, "series": series, "paired": []}
    if paired:
        fx = axes[1]
        labels = [p.label for p in paired]
        ys = np.arange(len(paired))[::-1]
        for y, p in zip(ys, paired, strict=True):
            style = method_style(p.method)
            fx.errorbar(
                [p.difference],
                [y],
                xerr=[p.ci95],
                color=style.colour,
                marker=style.marker,
                markeredgecolor=_edge(style.colour),
                capsize=3,
                linestyle="",
            )
        fx.axvline(0.0, color="#555555", linewidth=1.0, linestyle="--")
        fx.set_yticks(ys, labels, fontsize=8)
        fx.set_xlabel(f"paired difference to {baseline} (accuracy points, ± 95% CI)")
        fx.set_title("same episodes, per-episode differences", fontsize=8)
        _style_axes(fx)
        data["paired"] = [dataclasses.asdict(p) for p in paired]
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return Drawn(fig, data)


def differences_figure(panels: Sequence[tuple[str, np.ndarray, float]], title: str) -> Drawn:
    """Histogram of per-episode paired differences (B − A, points) per panel (label, differences, step)."""
    fig = figure(figsize=(5.2 * len(panels), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    data: dict[str, Any] = {"panels": []}
    for ax, (label, diffs, step) in zip(axes, panels, strict=True):
        diffs = np.asarray(diffs, dtype=np.float64)
        low, high = math.floor(diffs.min() / step - 0.5), math.ceil(diffs.max() / step + 0.5)
        edges = (np.arange(low, high + 1) + 0.5) * step if high - low <= 200 else 60
        counts, bins, _ = ax.hist(diffs, bins=edges, color=OKABE_ITO["blue"], edgecolor="white", linewidth=0.4)
        mean = float(diffs.mean())
        ci = float(1.96 * diffs.std() / math.sqrt(diffs.size))
        ax.axvline(0.0, color="#555555", linewidth=1.0, linestyle="--")
        ax.axvline(mean, color=OKABE_ITO["vermillion"], linewidth=1.6)
        ax.axvspan(mean - ci, mean + ci, color=OKABE_ITO["vermillion"], alpha=0.25, linewidth=0)
        better, worse = float((diffs > 0).mean() * 100), float((diffs < 0).mean() * 100)
        ax.set_title(
            f"{label}\nmean {mean:+.2f} ± {ci:.2f}; better in {better:.1f}%, worse in {worse:.1f}% of episodes",
            fontsize=8,
        )
        ax.set_xlabel("per-episode accuracy difference (points)")
        ax.set_ylabel("episodes")
        _style_axes(ax)
        data["panels"].append(
            {"label": label, "mean": mean, "ci95": ci, "counts": counts.tolist(), "edges": np.asarray(bins).tolist()}
        )
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return Drawn(fig, data)


def heatmap_figure(
    taus: Sequence[float],
    depths: Sequence[int],
    gain: np.ndarray,
    accuracy: np.ndarray,
    chosen: tuple[int, int],
    title: str,
    reference: str,
    gain_ci: np.ndarray | None = None,
) -> Drawn:
    """τ (rows) × T (columns) heat map of the paired gain (points) to ``reference``; the chosen cell outlined."""
    from matplotlib.patches import Rectangle

    fig = figure(figsize=(1.25 * len(depths) + 2.8, 0.8 * len(taus) + 1.9), layout="constrained")
    ax = fig.subplots()
    finite = gain[np.isfinite(gain)]
    low = min(float(finite.min()), 0.0) if finite.size else -1.0
    high = max(float(finite.max()), 0.0) if finite.size else 0.0
    if high - low < 1e-9:
        low -= 1.0
    image = ax.imshow(np.ma.masked_invalid(gain), cmap="cividis", vmin=low, vmax=high)
    fig.colorbar(image, ax=ax, label=f"paired gain vs {reference} (points)")
    for i in range(len(taus)):
        for j in range(len(depths)):
            if np.isfinite(gain[i, j]):
                ci = "" if gain_ci is None or not np.isfinite(gain_ci[i, j]) else f" ± {gain_ci[i, j]:.2f}"
                ax.text(
                    j,
                    i,
                    f"{gain[i, j]:+.2f}{ci}\n{accuracy[i, j]:.1f}%",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if image.norm(gain[i, j]) > 0.55 else "white",
                )
    ci_, cj = chosen
    ax.add_patch(Rectangle((cj - 0.5, ci_ - 0.5), 1, 1, fill=False, edgecolor=OKABE_ITO["vermillion"], linewidth=3))
    ax.set_xticks(range(len(depths)), [str(d) for d in depths])
    ax.set_yticks(range(len(taus)), [f"{t:g}" for t in taus])
    ax.set_xlabel("T, diffusion layers (steps)")
    ax.set_ylabel("τ, step size")
    ax.set_title("cell: paired gain ± 95% CI (points), accuracy; outlined: chosen", fontsize=8)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return Drawn(fig, {"taus": list(taus), "depths": list(depths), "gain": gain, "chosen": chosen})


def confusion_figure(
    counts: np.ndarray, classes: Sequence[str], title: str, columns: Sequence[str] | None = None
) -> Drawn:
    """Row-normalised confusion matrix (true ``classes`` as rows, predicted ``columns``, default the same) and
    each row's share in its own column (per-class accuracy; for an ``unknown`` row, the rows rejected)."""
    counts = np.asarray(counts, dtype=np.float64)
    columns = list(classes) if columns is None else list(columns)
    n, m = len(classes), len(columns)
    totals = counts.sum(axis=1, keepdims=True)
    matrix = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    own = [columns.index(c) if c in columns else -1 for c in classes]
    per_class = np.array([matrix[i, j] * 100.0 if j >= 0 else 0.0 for i, j in enumerate(own)])
    side = min(16.0, max(4.5, 0.17 * max(n, m) + 2.5))
    font, row_font = (max(3.5, min(9.0, 330.0 / max(k, 1))) for k in (m, n))
    fig = figure(figsize=(side * 1.35 + 1.0, side), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=(4, 1.2), sharey=True)
    image = ax.imshow(
        np.ma.masked_invalid(matrix), cmap="cividis", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto"
    )
    fig.colorbar(image, ax=ax, label="share of the true class's rows", shrink=0.6)
    ax.set_xticks(range(m), columns, rotation=90, fontsize=font)
    ax.set_yticks(range(n), classes, fontsize=row_font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 12 and m <= 12:
        for i in range(n):
            for j in range(m):
                if np.isfinite(matrix[i, j]) and matrix[i, j] > 0:
                    colour = "black" if matrix[i, j] > 0.55 else "white"
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    rows = np.arange(n)
    bx.barh(rows, np.nan_to_num(per_class), color=OKABE_ITO["blue"], height=0.8)
    bx.set_xlim(0, 100)
    bx.set_xlabel("per-class accuracy (%)")
    bx.tick_params(axis="y", labelleft=False)
    _style_axes(bx)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    data = {"classes": list(classes), "columns": columns, "counts": counts, "matrix": matrix}
    return Drawn(fig, {**data, "per_class_accuracy": per_class})


def separability_figure(
    layers: Sequence[int], summaries: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str
) -> Drawn:
    """Against the layer t, mean ± 95% CI over episodes: the class distances (when given), the distance-diameter
    ratio and the nearest-prototype accuracy, one panel each."""
    from matplotlib.ticker import MaxNLocator

    distances = [k for k in ("min_inter", "max_diameter", "mean_intra") if k in summaries]
    rows = 3 if distances else 2
    fig = figure(figsize=(6.4, 2.3 * rows + 0.6), layout="constrained")
    axes = list(fig.subplots(rows, 1, sharex=True))
    t = np.asarray(layers)
    data: dict[str, Any] = {"layers": list(layers)}
    if distances:
        ax = axes.pop(0)
        looks = {
            "min_inter": ("min inter-class distance", OKABE_ITO["bluish green"], "^", "-."),
            "max_diameter": ("max class diameter", OKABE_ITO["reddish purple"], "v", "--"),
            "mean_intra": ("mean intra-class distance", OKABE_ITO["black"], "D", ":"),
        }
        for key in distances:
            name, colour, marker, style = looks[key]
            mean, ci = (np.asarray(v, dtype=np.float64) for v in summaries[key])
            ax.plot(t, mean, color=colour, marker=marker, markersize=3.5, linestyle=style, label=name)
            ax.fill_between(t, mean - ci, mean + ci, color=colour, alpha=0.2, linewidth=0)
            data[key] = {"mean": mean.tolist(), "ci95": ci.tolist()}
        ax.set_ylabel("distance\n(CL2N units)", fontsize=9)
        ax.legend(fontsize=7, frameon=False)
        _style_axes(ax)
    panels = (
        (axes[0], "ratio", "min inter-class distance /\nmax class diameter", OKABE_ITO["vermillion"], "o"),
        (axes[1], "accuracy", "nearest-prototype\naccuracy (%)", OKABE_ITO["blue"], "s"),
    )
    for ax, key, label, colour, marker in panels:
        mean, ci = (np.asarray(v, dtype=np.float64) for v in summaries[key])
        ax.plot(t, mean, color=colour, marker=marker, markersize=4, linewidth=1.5)
        ax.fill_between(t, mean - ci, mean + ci, color=colour, alpha=0.25, linewidth=0)
        peak = int(t[int(np.nanargmax(mean))])
        ax.axvline(peak, color=colour, linestyle="--", linewidth=1.0)
        ax.text(0.99, 0.04, f"mean peaks at t = {peak}", transform=ax.transAxes, ha="right", fontsize=8)
        ax.set_ylabel(label, fontsize=9)
        _style_axes(ax)
        data[key] = {"mean": mean.tolist(), "ci95": ci.tolist(), "peak": peak}
    fig.axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.axes[-1].set_xlabel("t, diffusion layers applied (shaded: 95% CI over episodes)")
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return Drawn(fig, data)


def episode_view_figure(
    before: np.ndarray, after: np.ndarray, labels: np.ndarray, support: np.ndarray, layer: int, title: str
) -> Drawn:
    """Two 2-D PCA scatter plots of one episode (each panel its own PCA): before and after ``layer`` layers."""
    fig = figure(figsize=(9.6, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, coords, name in ((axes[0], before, "before diffusion (t = 0)"), (axes[1], after, f"after t = {layer}")):
        for c in np.unique(labels):
            colour, marker = class_style(int(c))
            q = (labels == c) & ~support
            s = (labels == c) & support
            ax.scatter(coords[q, 0], coords[q, 1], color=colour, marker=marker, s=18, alpha=0.75, linewidths=0)
            ax.scatter(
                coords[s, 0], coords[s, 1], facecolor=colour, marker=marker, s=150, edgecolor="black", linewidths=1.4
            )
        ax.set_title(name + " — large outlined: support", fontsize=8)
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
        _style_axes(ax)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return Drawn(fig, {"before": before, "after": after, "labels": labels, "support": support})
