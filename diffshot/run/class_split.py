"""``convert --class-split``: give a features file its base/val/novel split, by a seeded random draw or from a file.

A draw such as ``base:0.5,val:0.2,novel:0.3`` shuffles the classes with the seed (the same counter-based
stream as episode sampling, so the same seed gives the same split on every machine) and cuts them by the
fractions (largest remainders; every split named with a fraction above 0 gets at least one class). A file
maps each class name to its split, one ``class,split`` pair per line (a ``class,split`` header is skipped).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path

import numpy as np

from diffshot.episodes import _uniform
from diffshot.errors import DiffshotError, UsageError
from diffshot.features.featureset import SPLITS, FeatureSet
from diffshot.features.limits import Budget

STREAM_SPLIT = 7  # the class-split draw has its own stream: episodes never see it


def parse_fractions(text: str) -> dict[str, float]:
    """``base:0.5,val:0.2,novel:0.3`` as fractions by split; the names from base/val/novel, summing to 1."""
    fractions: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition(":")
        try:
            fraction = float(value)
        except ValueError:
            fraction = float("nan")
        if name not in SPLITS or not sep or not 0 <= fraction <= 1:
            raise UsageError(
                f"class_split={text!r}: expected SPLIT:FRACTION items from base, val, novel, e.g. "
                "base:0.5,val:0.2,novel:0.3 (or a file mapping class to split)"
            )
        if name in fractions:
            raise UsageError(f"class_split={text!r}: {name} is given twice")
        fractions[name] = fraction
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6):
        raise UsageError(f"class_split={text!r}: the fractions add up to {sum(fractions.values()):g}, not 1")
    return fractions


def random_split(num_classes: int, fractions: dict[str, float], seed: int) -> tuple[str, ...]:
    """The split of each of ``num_classes`` classes: a seeded shuffle cut by ``fractions``."""
    wanted = [name for name in SPLITS if fractions.get(name, 0) > 0]
    if num_classes < len(wanted):
        raise DiffshotError(f"{num_classes} classes cannot fill the {len(wanted)} splits {', '.join(wanted)}")
    raw = np.array([fractions[name] * num_classes for name in wanted])
    counts = np.maximum(np.floor(raw).astype(np.int64), 1)
    while counts.sum() > num_classes:
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    for i in range(num_classes - int(counts.sum())):
        counts[order[i % len(order)]] += 1
    keys = _uniform(seed, STREAM_SPLIT, np.zeros(1, dtype=np.uint64), num_classes)[0]
    shuffled = np.argsort(keys, kind="stable")
    split = np.empty(num_classes, dtype=object)
    split[shuffled] = np.repeat(wanted, counts)
    return tuple(str(s) for s in split)


def split_from_file(path: str | os.PathLike[str], class_names: tuple[str, ...]) -> tuple[str, ...]:
    """The split of each class as a ``class,split`` file gives it; every class must be named once."""
    from diffshot.features.containers import check_readable

    p = check_readable(path)
    size = p.stat().st_size
    Budget(p).take(size * 8, size, 8, "the class split")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DiffshotError(f"{p}: a class split file must be UTF-8 text (class,split per line)") from None
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    if rows and [cell.strip().lower() for cell in rows[0]] == ["class", "split"]:
        rows = rows[1:]
    mapping: dict[str, str] = {}
    for number, row in enumerate(rows, 1):
        if len(row) != 2:
            raise DiffshotError(f"{p}: line {number} holds {len(row)} fields; expected class,split")
        name, split = row[0].strip(), row[1].strip().lower()
        if split not in SPLITS:
            raise DiffshotError(f"{p}: line {number}: split {row[1].strip()!r} is not base, val or novel")
        if mapping.setdefault(name, split) != split:
            raise DiffshotError(f"{p}: class {name!r} is given two splits")
    missing = [name for name in class_names if name not in mapping]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DiffshotError(f"{p}: no split for class {', '.join(map(repr, missing[:3]))}{more}")
    extra = sorted(set(mapping) - set(class_names))
    if extra:
        raise DiffshotError(f"{p}: names class {extra[0]!r}, which the features do not hold ({len(extra)} such)")
    return tuple(mapping[name] for name in class_names)


def with_class_split(fs: FeatureSet, rule: str, seed: int = 0) -> FeatureSet:
    """``fs`` with the split ``rule`` gives: SPLIT:FRACTION items drawn with ``seed``, or a class,split file."""
    if ":" in rule and not Path(rule).is_file():
        split = random_split(fs.num_classes, parse_fractions(rule), seed)
        how = f"random {rule}, seed {seed}"
    else:
        split = split_from_file(rule, fs.class_names)
        how = f"from {rule}"
    return dataclasses.replace(fs, class_split=split, attrs={**fs.attrs, "class_split_from": how})


__all__ = ["parse_fractions", "random_split", "split_from_file", "with_class_split"]
