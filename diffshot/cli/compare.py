"""`diffshot compare A B`: paired difference between two saved runs on the same seeded episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from diffshot.cli.common import Quiet, show, stdout, user_errors
from diffshot.errors import DiffshotError
from diffshot.report.episodes_file import EpisodeRecord, load_episode_accuracies, protocol_mismatch
from diffshot.report.table import Column, fit
from diffshot.stats import paired_difference, summarise


def pairs(first: list[EpisodeRecord], second: list[EpisodeRecord]) -> list[tuple[EpisodeRecord, EpisodeRecord]]:
    """Runs to compare: the same method and shots when both files share methods, else every pair with equal shots."""
    shared = {r.method for r in first} & {r.method for r in second}
    return [(a, b) for a in first for b in second if a.shots == b.shots and (not shared or a.method == b.method)]


def label(record: EpisodeRecord, name: str) -> str:
    """A run's name in the table: its method, and which file it came from."""
    return f"{record.method} ({name})"


@user_errors
def compare(
    first: Annotated[Path, typer.Argument(help="A run: a --save-episodes .npz, or a JSON result that names one.")],
    second: Annotated[Path, typer.Argument(help="The run compared with it (same seed, protocol and features).")],
    quiet: Quiet = False,
) -> None:
    """Paired difference (second − first) ± 95% interval over identical episodes of two saved runs."""
    meta_a, runs_a = load_episode_accuracies(first)
    meta_b, runs_b = load_episode_accuracies(second)
    field = protocol_mismatch(meta_a, meta_b)
    if field is not None:
        raise DiffshotError(
            f"{first} and {second} differ in {field} ({meta_a.get(field)} vs {meta_b.get(field)}): "
            "their episodes are not the same, so they cannot be paired"
        )
    matched = pairs(runs_a, runs_b)
    if not matched:
        raise DiffshotError(f"{first} and {second} share no shots setting to compare")
    title = f"{escape(second.name)} − {escape(first.name)}: seed {meta_a['seed']}, {meta_a['episodes']} paired episodes"
    show(fit(title, comparison_columns(matched, first.name, second.name), stdout.width))


def comparison_columns(matched: list[tuple[EpisodeRecord, EpisodeRecord]], first: str, second: str) -> list[Column]:
    """Shots, each run with its accuracy ± 95% interval, and the paired difference (second − first)."""
    cells: list[list[str]] = [[] for _ in range(6)]
    for a, b in matched:
        sa, sb, diff = summarise(a.accuracies), summarise(b.accuracies), paired_difference(b.accuracies, a.accuracies)
        row = [str(a.shots), escape(label(a, first)), f"{sa.mean:.2f} ± {sa.ci95:.2f}"]
        row += [escape(label(b, second)), f"{sb.mean:.2f} ± {sb.ci95:.2f}", f"{diff.mean:+.2f} ± {diff.ci95:.2f}"]
        for column, cell in zip(cells, row, strict=True):
            column.append(cell)
    headers = ("shots", "first", "accuracy (%)", "second", "accuracy (%)", "Δ (second − first)")
    return [
        Column(h, c, justify="left" if h in ("first", "second") else "right")
        for h, c in zip(headers, cells, strict=True)
    ]
