"""Scripted evaluation for CI: a TOML suite of evaluations → JSON per entry, CSV, JUnit XML, Markdown summary.

Suite format (paths — ``features``, ``config`` — resolve relative to the suite file)::

    [defaults]                      # optional; any entry key except name
    features = "../data/set.h5"
    episodes = 200

    [[entry]]
    name = "set-5w1s"               # required; letters, digits, . _ -
    shots = 1
    query_classes = 3               # optional: queries from 3 of the ways classes (evaluate --query-classes)
    methods = ["simpleshot", "diffusion"]
    config = "tuned.toml"           # optional tuned parameters
    params.diffusion = { layers = 6 }
    fail_under = { diffusion = 70.0 }   # minimum mean accuracy (percent)

Every entry is a :class:`~diffshot.run.evaluate.EvaluationRequest`, run by the same
:func:`~diffshot.run.evaluate.run_evaluation` as ``diffshot evaluate``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from diffshot.atomic import check_writable, write_text_atomic
from diffshot.errors import DiffshotError
from diffshot.features import SPLITS, FeatureSet, load_features
from diffshot.report.document import CSV_FIELDS, csv_rows, to_json_document, write_csv
from diffshot.run.config import load_toml, read_config, validate_method_params
from diffshot.run.evaluate import EvaluationRequest, EvaluationRun, prepare_runs, run_evaluation

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
    "fail_under": (dict,),
}
ENTRY_DEFAULTS: dict[str, object] = {"ways": 5, "shots": 1, "queries": 15, "episodes": 1000, "seed": 0}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
XML_ILLEGAL = re.compile(r"[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


class SuiteError(DiffshotError):
    """A malformed suite (exit code 2): the message names the entry and the key."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One validated suite entry: its name, the evaluation it asks for, and its thresholds."""

    name: str
    request: EvaluationRequest
    fail_under: dict[str, float]

    @property
    def features(self) -> Path:
        return self.request.features

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(str(m) for m in self.request.methods)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One entry's result: its typed run, or the reason it was skipped; ``errors``: method → why it failed to run."""

    entry: Entry
    run: EvaluationRun | None
    skipped: str | None = None
    errors: dict[str, str] = dataclasses.field(default_factory=dict)

    def accuracies(self) -> dict[str, tuple[float, float, int, float]]:
        """Method → (mean accuracy, 95% interval, episodes, seconds) of this entry's run."""
        if self.run is None:
            return {}
        results = self.run.evaluations[0].results
        return {r.method: (r.summary.mean, r.summary.ci95, r.summary.n, r.seconds) for r in results}

    def failures(self) -> dict[str, tuple[float, float]]:
        """Methods whose accuracy is below their threshold: name → (accuracy, threshold)."""
        found = {}
        for method, (mean, *_rest) in self.accuracies().items():
            limit = self.entry.fail_under.get(method)
            if limit is not None and round(mean, 4) < limit:
                found[method] = (round(mean, 4), limit)
        return found


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
        raise SuiteError(f"--config: {exc}") from None
    parsed = [_parse_entry(suite, i, defaults, raw, base) for i, raw in enumerate(entries)]
    names = [e.name for e in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
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
    cache: dict[Path, FeatureSet] = {}
    outcomes = []
    for entry in entries:
        if on_entry is not None:
            on_entry(entry)
        if not entry.features.is_file():
            outcomes.append(Outcome(entry, None, f"features file {entry.features} not found"))
            continue
        if entry.features not in cache:
            cache[entry.features] = load_features(entry.features, allow_external=allow_external)
        request = dataclasses.replace(entry.request, device=device)
        outcomes.append(Outcome(entry, run_evaluation(request, features=cache[entry.features])))
    return outcomes


def xml_safe(text: str) -> str:
    """``text`` with each character XML 1.0 forbids (control characters, lone surrogates) written as ``\\xNN``."""
    return XML_ILLEGAL.sub(lambda found: ascii(found.group())[1:-1], text)


def combined_csv(outcomes: list[Outcome]) -> str:
    """One CSV for all entries: the evaluate CSV columns plus entry, fail_under and passed."""
    rows = []
    for outcome in outcomes:
        if outcome.run is None:
            continue
        failed = outcome.failures()
        for row in csv_rows(outcome.run):
            limit = outcome.entry.fail_under.get(str(row["method"]))
            row.update(entry=outcome.entry.name, fail_under="" if limit is None else limit)
            row["passed"] = str(row["method"] not in failed).lower()
            rows.append(row)
    return write_csv(rows, ["entry", *CSV_FIELDS, "fail_under", "passed"])


def junit_xml(outcomes: list[Outcome]) -> str:
    """JUnit XML: one test case per entry and method; a missed threshold is a failure, a missing file a skip,
    a method that could not run (``Outcome.errors``) an error."""
    suite = ET.Element("testsuite", name="diffshot batch")
    counts = {"tests": 0, "failures": 0, "skipped": 0, "errors": 0}
    for outcome in outcomes:
        entry = outcome.entry
        measured = outcome.accuracies()
        failed = outcome.failures()
        for method in entry.methods:
            counts["tests"] += 1
            case = ET.SubElement(suite, "testcase", classname=entry.name, name=method)
            case.set("time", f"{measured[method][3] if method in measured else 0}")
            if outcome.skipped is not None:
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message=outcome.skipped)
            elif method in outcome.errors:
                counts["errors"] += 1
                ET.SubElement(case, "error", message=outcome.errors[method])
            elif method in failed:
                counts["failures"] += 1
                acc, limit = failed[method]
                ET.SubElement(case, "failure", message=f"accuracy {acc:.2f} < fail_under {limit:.2f}")
            if method in measured:
                mean, ci, episodes, _ = measured[method]
                out = ET.SubElement(case, "system-out")
                out.text = f"accuracy {mean:.2f} ± {ci:.2f} over {episodes} episodes"
    for key, value in counts.items():
        suite.set(key, str(value))
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + xml_safe(ET.tostring(suite, encoding="unicode")) + "\n"


def markdown_summary(outcomes: list[Outcome], figures: Mapping[str, str] | None = None) -> str:
    """A Markdown table fit for a CI job summary: entry, method, protocol, accuracy, threshold, status.

    ``figures`` (name → path relative to the summary) are linked below the table, so an artifact reads by looking.
    """
    lines = [
        "| entry | method | ways | shots | episodes | accuracy (%) | fail_under | status |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for outcome in outcomes:
        entry, request = outcome.entry, outcome.entry.request
        measured = outcome.accuracies()
        failed = outcome.failures()
        for method in entry.methods:
            limit = entry.fail_under.get(method)
            accuracy = f"{measured[method][0]:.2f} ± {measured[method][1]:.2f}" if method in measured else "-"
            status = "skipped" if outcome.skipped else ("FAIL" if method in failed else "pass")
            status = "ERROR" if method in outcome.errors else status
            threshold = "-" if limit is None else f"{limit:.2f}"
            row = [entry.name, method, str(request.ways), str(request.shots[0]), str(request.episodes)]
            lines.append("| " + " | ".join([*row, accuracy, threshold, status]) + " |")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{name}]({path})" for name, path in figures.items()]
    return "\n".join(lines) + "\n"


def output_paths(output_dir: Path, entries: list[Entry], junit: Path | None) -> dict[str, Path]:
    """Every file batch writes, checked writable before anything runs (a missing folder is created)."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiffshotError(f"{output_dir}: cannot create the output folder ({exc.strerror})") from None
    paths = {f"json:{e.name}": output_dir / f"{e.name}.json" for e in entries}
    paths |= {"csv": output_dir / "results.csv", "markdown": output_dir / "summary.md"}
    paths["junit"] = junit if junit is not None else output_dir / "junit.xml"
    for path in paths.values():
        check_writable(path)
    return paths


def write_outputs(paths: Mapping[str, Path], outcomes: list[Outcome], plots: Path | None = None) -> list[Path]:
    """Write every output file atomically, after all entries have run; with ``plots``, draw the figures there too.

    Returns the figures drawn (``<entry>.png`` per entry, ``summary.png`` for several), linked from summary.md.
    """
    written = []
    for outcome in outcomes:
        if outcome.run is not None:
            document = to_json_document(outcome.run)
            path = paths[f"json:{outcome.entry.name}"]
            write_text_atomic(path, json.dumps(document, indent=2) + "\n")
            written.append(path)
    figures: list[Path] = []
    if plots is not None and written:
        from diffshot.plot import draw_batch

        plots.mkdir(parents=True, exist_ok=True)
        figures = draw_batch(written, plots)
    summary = paths["markdown"]
    links = {figure.stem: os.path.relpath(figure.resolve(), summary.resolve().parent) for figure in figures}
    write_text_atomic(paths["csv"], combined_csv(outcomes))
    write_text_atomic(paths["junit"], junit_xml(outcomes))
    write_text_atomic(summary, markdown_summary(outcomes, links))
    return figures
