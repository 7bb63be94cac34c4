"""`diffshot compare`: paired differences between runs on the same seeded episodes (two files, or methods of one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from diffshot.cli.common import Quiet, show, stdout, user_errors
from diffshot.errors import DiffshotError, UsageError, printable
from diffshot.report.episodes_file import EpisodeRecord, load_episode_accuracies, protocol_mismatch
from diffshot.report.table import Column, fit
from diffshot.stats import paired_difference, summarise


def pairs(first: list[EpisodeRecord], second: list[EpisodeRecord]) -> list[tuple[EpisodeRecord, EpisodeRecord]]:
    """Runs to compare: the same method and shots when both files share methods, else every pair with equal shots."""
    shared = {r.method for r in first} & {r.method for r in second}
    return [(a, b) for a in first for b in second if a.shots == b.shots and (not shared or a.method == b.method)]


def pairs_within(
    runs: list[EpisodeRecord], baseline: str | None, path: Path
) -> list[tuple[EpisodeRecord, EpisodeRecord]]:
    """Runs of one file to compare: every other method against ``baseline`` (default: the first) at each shot count."""
    methods = list(dict.fromkeys(r.method for r in runs))
    if len(methods) < 2:
        raise DiffshotError(f"{path}: holds one method ({methods[0]}); pairing needs two, or a second file")
    base = baseline if baseline is not None else methods[0]
    if base not in methods:
        raise UsageError(f"--baseline {base}: not among the methods of {path} ({', '.join(methods)})")
    anchors = {r.shots: r for r in runs if r.method == base}
    matched = [(anchors[r.shots], r) for r in runs if r.method != base and r.shots in anchors]
    if not matched:
        raise DiffshotError(f"{path}: no other method shares a shots setting with {base}")
    return matched


def label(record: EpisodeRecord, name: str) -> str:
    """A run's name in the table: its method, and which file it came from."""
    return f"{record.method} ({name})"


@user_errors
def compare(
    first: Annotated[Path, typer.Argument(help="A run: a --save-episodes .npz, or a JSON result that names one.")],
    second: Annotated[
        Path | None,
        typer.Argument(
            help="The run compared with it (same seed, protocol and features); omitted: pair FIRST's methods."
        ),
    ] = None,
    baseline: Annotated[
        str | None, typer.Option(help="With one file: the method the others are paired with (default: its first).")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Paired difference (second − first) ± 95% interval over identical episodes of two saved runs, or of the
    methods of one saved run (each − the baseline)."""
    meta_a, runs_a = load_episode_accuracies(first)
    if second is None:
        matched = pairs_within(runs_a, baseline, first)
        title = f"{printable(first.name)}, each − {printable(matched[0][0].method)}: seed {meta_a['seed']}, "
        title += f"{meta_a['episodes']} paired episodes"
        columns = comparison_columns(matched, lambda r: r.method, lambda r: r.method, ("baseline", "method"))
        show(fit(title, columns, stdout.width))
        return
    if baseline is not None:
        raise UsageError("--baseline pairs the methods of one file; with two files, runs pair by method")
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
    title = f"{printable(second.name)} − {printable(first.name)}: seed {meta_a['seed']}, "
    title += f"{meta_a['episodes']} paired episodes"
    columns = comparison_columns(matched, lambda r: label(r, first.name), lambda r: label(r, second.name))
    show(fit(title, columns, stdout.width))


def comparison_columns(
    matched: list[tuple[EpisodeRecord, EpisodeRecord]],
    name_a: Callable[[EpisodeRecord], str],
    name_b: Callable[[EpisodeRecord], str],
    headers: tuple[str, str] = ("first", "second"),
) -> list[Column]:
    """Shots, each run with its accuracy ± 95% interval, and the paired difference (second − first)."""
    cells: list[list[str]] = [[] for _ in range(6)]
    for a, b in matched:
        sa, sb, diff = summarise(a.accuracies), summarise(b.accuracies), paired_difference(b.accuracies, a.accuracies)
        row = [str(a.shots), printable(name_a(a)), f"{sa.mean:.2f} ± {sa.ci95:.2f}"]
        row += [printable(name_b(b)), f"{sb.mean:.2f} ± {sb.ci95:.2f}", f"{diff.mean:+.2f} ± {diff.ci95:.2f}"]
        for column, cell in zip(cells, row, strict=True):
            column.append(cell)
    first, second = headers
    titles = ("shots", first, "accuracy (%)", second, "accuracy (%)", f"Δ ({second} − {first})")
    return [
        Column(h, c, justify="left" if i in (1, 3) else "right")
        for i, (h, c) in enumerate(zip(titles, cells, strict=True))
    ]
