"""Scripted evaluation for CI: a TOML suite of evaluations, run entry by entry (``report.batch`` writes the files).

Suite format (paths — ``features``, ``labels``, ``config`` — resolve relative to the suite file)::

    [defaults]                      # optional; any entry key except name
    features = "../data/set.h5"
    episodes = 200

    [[entry]]
    name = "set-5w1s"               # required; letters, digits, . _ -
    shots = 1
    query_classes = 3               # optional: queries from 3 of the ways classes (evaluate --query-classes)
    methods = ["simpleshot", "diffusion"]
    config = "tuned.toml"           # optional tuned parameters
    labels = "labels.txt"           # optional: labels of a features file stored without them (evaluate --labels)
    params.diffusion = { layers = 6 }
    fail_under = { diffusion = 70.0 }   # minimum mean accuracy (percent)

Every entry is a :class:`~diffshot.results.EvaluationRequest`, run by the same
:func:`~diffshot.run.evaluate.run_evaluation` as ``diffshot evaluate``.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from diffshot.errors import DiffshotError
from diffshot.features import SPLITS, FeatureSet, load_features
from diffshot.results import Entry, EvaluationRequest, Outcome
from diffshot.run.config import load_toml, read_config, validate_method_params
from diffshot.run.evaluate import prepare_runs, run_evaluation

MAX_SUITE_ENTRIES = 1_000  # entries of one suite (docs/security.md); more is a generated file to split

DEFAULT_METHODS = ("simpleshot", "diffusion")
ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "features": (str,),
    "ways": (int,),
    "shots": (int,),
    "queries": (int,),
    "unknown_queries": (int,),
    "query_classes": (int,),
    "episodes": (int,),
    "seed": (int,),
    "split": (str,),
    "methods": (list,),
    "params": (dict,),
    "config": (str,),
    "labels": (str,),
    "fail_under": (dict,),
}
ENTRY_DEFAULTS: dict[str, object] = {"ways": 5, "shots": 1, "queries": 15, "episodes": 1000, "seed": 0}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")


class SuiteError(DiffshotError):
    """A malformed suite (exit code 2): the message names the entry and the key."""


def _check_type(where: str, key: str, value: object) -> None:
    """Fail when ``value`` does not have the TOML type the key takes."""
    kinds = ENTRY_TYPES[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = {str: "a string", int: "an integer", list: "an array", dict: "a table"}[kinds[0]]
        raise SuiteError(f"{where}: key {key!r} must be {expected}, got {value!r}")


def parse_suite(path: str | Path, config: Path | None = None) -> list[Entry]:
    """Read and validate a whole suite before anything runs; SuiteError names the entry and the key."""
    suite = Path(path)
    try:
        data = load_toml(suite)
    except DiffshotError as exc:
        raise SuiteError(str(exc)) from None
    unknown = sorted(set(data) - {"defaults", "entry"})
    if unknown:
        raise SuiteError(f"{suite}: unknown top-level key {unknown[0]!r} (allowed: defaults, entry)")
    defaults = data.get("defaults", {})
    entries = data.get("entry", [])
    if not isinstance(defaults, dict):
        raise SuiteError(f"{suite}: [defaults] must be a table")
    if not isinstance(entries, list) or not entries:
        raise SuiteError(f"{suite}: no [[entry]] tables")
    try:
        base = read_config(config) if config is not None else {}
    except DiffshotError as exc:
        raise SuiteError(f"config: {exc}") from None
    if isinstance(entries, list) and len(entries) > MAX_SUITE_ENTRIES:
        raise SuiteError(
            f"{suite}: {len(entries):,} [[entry]] tables; a suite holds at most {MAX_SUITE_ENTRIES:,} (split it)"
        )
    parsed = [_parse_entry(suite, i, defaults, raw, base) for i, raw in enumerate(entries)]
    counts = collections.Counter(e.name for e in parsed)
    dupes = sorted(n for n, k in counts.items() if k > 1)
    if dupes:
        raise SuiteError(f"{suite}: entry {dupes[0]!r}: key 'name' is used by more than one entry")
    return parsed


def _parse_entry(
    suite: Path, position: int, defaults: Mapping[str, object], raw: object, base: Mapping[str, dict[str, object]]
) -> Entry:
    """Validate one [[entry]] (merged over [defaults])."""
    label = f"entry {position + 1}"
    if not isinstance(raw, dict):
        raise SuiteError(f"{suite}: {label} must be a table")
    if "name" in defaults:
        raise SuiteError(f"{suite}: [defaults]: key 'name' belongs to each entry")
    merged: dict[str, Any] = {**ENTRY_DEFAULTS, **defaults, **raw}
    if isinstance(raw.get("name"), str):
        label = f"entry {raw['name']!r}"
    where = f"{suite}: {label}"
    for key, value in merged.items():
        if key not in ENTRY_TYPES:
            raise SuiteError(f"{where}: unknown key {key!r} (allowed: {', '.join(ENTRY_TYPES)})")
        _check_type(where, key, value)
    for key in ("name", "features"):
        if key not in merged:
            raise SuiteError(f"{where}: key {key!r} is required")
    name = str(merged["name"])
    if not NAME_PATTERN.match(name):
        raise SuiteError(f"{where}: key 'name' may hold only letters, digits, '.', '_' and '-'")
    split = merged.get("split")
    if split is not None and split not in (*SPLITS, "all"):
        raise SuiteError(f"{where}: key 'split' must be one of {', '.join((*SPLITS, 'all'))}, got {split!r}")
    methods, config = _methods(where, suite, merged, base)
    request = EvaluationRequest(
        features=suite.parent / str(merged["features"]),
        methods=methods,
        ways=int(merged["ways"]),
        shots=(int(merged["shots"]),),
        queries=int(merged["queries"]),
        unknown_queries=None if merged.get("unknown_queries") is None else int(merged["unknown_queries"]),
        query_classes=merged.get("query_classes"),
        episodes=int(merged["episodes"]),
        seed=int(merged["seed"]),
        split=split,
        config=config,
        labels=None if merged.get("labels") is None else suite.parent / str(merged["labels"]),
    )
    try:
        prepare_runs(request)
    except DiffshotError as exc:
        raise SuiteError(f"{where}: {exc}") from None
    fail_under = _thresholds(where, merged.get("fail_under", {}), list(methods))
    return Entry(name=name, request=request, fail_under=fail_under)


def _methods(
    where: str, suite: Path, merged: Mapping[str, Any], base: Mapping[str, dict[str, object]]
) -> tuple[tuple[str, ...], dict[str, dict[str, object]]]:
    """The entry's method names and their parameters: the batch --config, then the entry's config, then params."""
    names = merged.get("methods", list(DEFAULT_METHODS))
    if not names or not all(isinstance(n, str) for n in names):
        raise SuiteError(f"{where}: key 'methods' must be a non-empty array of method names")
    config = {name: dict(table) for name, table in base.items()}
    if "config" in merged:
        try:
            config.update(read_config(suite.parent / str(merged["config"])))
        except DiffshotError as exc:
            raise SuiteError(f"{where}: key 'config': {exc}") from None
    params = merged.get("params", {})
    for method, table in params.items():
        if method not in names:
            raise SuiteError(f"{where}: key 'params.{method}': {method} is not in this entry's methods")
        try:
            validate_method_params(method, table, f"key 'params.{method}'")
        except DiffshotError as exc:
            raise SuiteError(f"{where}: {exc}") from None
        config[method] = {**config.get(method, {}), **table}
    for method in names:
        try:
            validate_method_params(method, {}, "key 'methods'")
        except DiffshotError as exc:
            raise SuiteError(f"{where}: {exc}") from None
    return tuple(names), config


def _thresholds(where: str, table: Mapping[str, object], methods: list[str]) -> dict[str, float]:
    """Validated fail_under thresholds (percent) per method of the entry."""
    out = {}
    for method, value in table.items():
        if method not in methods:
            raise SuiteError(f"{where}: key 'fail_under.{method}': {method} is not in this entry's methods")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise SuiteError(f"{where}: key 'fail_under.{method}' must be a number from 0 to 100, got {value!r}")
        out[method] = float(value)
    return out


def run_suite(
    entries: list[Entry],
    device: str = "cpu",
    skip_missing: bool = False,
    on_entry: Callable[[Entry], None] | None = None,
    allow_external: bool = False,
) -> list[Outcome]:
    """Run every entry (features files are read once each); missing files fail, or are skipped when asked."""
    for entry in entries:
        if not entry.features.is_file() and not skip_missing:
            raise SuiteError(f"entry {entry.name!r}: key 'features': {entry.features}: no such file")
    cache: dict[tuple[Path, Path | None], FeatureSet] = {}
    outcomes = []
    for entry in entries:
        if on_entry is not None:
            on_entry(entry)
        if not entry.features.is_file():
            outcomes.append(Outcome(entry, None, f"features file {entry.features} not found"))
            continue
        key = (entry.features, entry.request.labels)
        if key not in cache:
            cache[key] = load_features(entry.features, allow_external=allow_external, labels_path=key[1])
        request = dataclasses.replace(entry.request, device=device)
        outcomes.append(Outcome(entry, run_evaluation(request, features=cache[key])))
    return outcomes
