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
            markeredgecolor="#333333" if style.colour == OKABE_ITO["yellow"] else style.colour,
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
                [p.difference], [y], xerr=[p.ci95], color=style.colour, marker=style.marker, capsize=3, linestyle=""
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
) -> Drawn:
    """τ (rows) × T (columns) heat map of the paired gain (points) to ``reference``; the chosen cell outlined."""
    fig = figure(figsize=(1.1 * len(depths) + 2.6, 0.75 * len(taus) + 1.9), layout="constrained")
    ax = fig.subplots()
    finite = gain[np.isfinite(gain)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    image = ax.imshow(
        np.ma.masked_invalid(gain), cmap="cividis", vmin=-bound if finite.min() < 0 else 0.0, vmax=max(bound, 1e-9)
    )
    fig.colorbar(image, ax=ax, label=f"paired gain vs {reference} (points)")
    for i in range(len(taus)):
        for j in range(len(depths)):
            if np.isfinite(gain[i, j]):
                shade = image.norm(gain[i, j])
                ax.text(
                    j,
                    i,
                    f"{gain[i, j]:+.2f}\n{accuracy[i, j]:.1f}%",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if shade > 0.55 else "white",
                )
    ci, cj = chosen
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((cj - 0.5, ci - 0.5), 1, 1, fill=False, edgecolor=OKABE_ITO["vermillion"], linewidth=3))
    ax.set_xticks(range(len(depths)), [str(d) for d in depths])
    ax.set_yticks(range(len(taus)), [f"{t:g}" for t in taus])
    ax.set_xlabel("T, diffusion layers (steps)")
    ax.set_ylabel("τ, step size")
    ax.set_title("cell: paired gain (points) and accuracy; outlined: chosen", fontsize=8)
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return Drawn(fig, {"taus": list(taus), "depths": list(depths), "gain": gain, "chosen": chosen})


def confusion_figure(counts: np.ndarray, classes: Sequence[str], title: str) -> Drawn:
    """Row-normalised confusion matrix (true rows, predicted columns) and per-class accuracy, up to ~80 classes."""
    counts = np.asarray(counts, dtype=np.float64)
    n = len(classes)
    totals = counts.sum(axis=1, keepdims=True)
    matrix = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    per_class = np.diag(matrix) * 100.0
    side = min(16.0, max(4.5, 0.17 * n + 2.5))
    font = max(3.5, min(9.0, 330.0 / max(n, 1)))
    fig = figure(figsize=(side * 1.35 + 1.0, side), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=(4, 1.2), sharey=True)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="cividis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="share of the true class's rows", shrink=0.6)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=font)
    ax.set_yticks(range(n), classes, fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 12:
        for i in range(n):
            for j in range(n):
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
    return Drawn(fig, {"classes": list(classes), "counts": counts, "matrix": matrix, "per_class_accuracy": per_class})


def separability_figure(
    layers: Sequence[int], summaries: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str
) -> Drawn:
    """Distance-diameter ratio (top) and nearest-prototype accuracy (bottom) against the layer, mean ± 95% CI."""
    fig = figure(figsize=(6.4, 5.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    t = np.asarray(layers)
    data: dict[str, Any] = {"layers": list(layers)}
    panels = (
        (top, "ratio", "min inter-class distance /\nmax class diameter (ratio)", OKABE_ITO["vermillion"], "o"),
        (bottom, "accuracy", "nearest-prototype\naccuracy (%, ± 95% CI)", OKABE_ITO["blue"], "s"),
    )
    for ax, key, label, colour, marker in panels:
        mean, ci = (np.asarray(v, dtype=np.float64) for v in summaries[key])
        ax.plot(t, mean, color=colour, marker=marker, markersize=4, linewidth=1.5)
        ax.fill_between(t, mean - ci, mean + ci, color=colour, alpha=0.25, linewidth=0)
        peak = int(t[int(np.nanargmax(mean))])
        ax.axvline(peak, color=colour, linestyle="--", linewidth=1.0)
        ax.annotate(
            f"peak at t = {peak}",
            (peak, float(np.nanmax(mean))),
            xytext=(6, -12),
            textcoords="offset points",
            fontsize=8,
        )
        ax.set_ylabel(label, fontsize=9)
        _style_axes(ax)
        data[key] = {"mean": mean.tolist(), "ci95": ci.tolist(), "peak": peak}
    if "mean_intra" in summaries and "min_inter" in summaries:
        twin = top.twinx()
        for key, style, name in (("mean_intra", ":", "mean intra-class distance"), ("min_inter", "-.", "min inter")):
            twin.plot(t, summaries[key][0], color="#555555", linestyle=style, linewidth=1.0, label=name)
        twin.set_ylabel("distance (CL2N units)", fontsize=8)
        twin.legend(fontsize=7, frameon=False, loc="lower right")
        twin.spines["top"].set_visible(False)
    bottom.set_xlabel("t, diffusion layers applied")
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
