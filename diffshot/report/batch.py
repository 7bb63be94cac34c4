"""The files of a ``batch`` run: JSON per entry, the combined CSV, JUnit XML and the Markdown summary."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from xml.etree import ElementTree as ET

from diffshot.atomic import check_writable, write_text_atomic
from diffshot.errors import DiffshotError
from diffshot.report.document import CSV_FIELDS, csv_rows, to_json_document, write_csv
from diffshot.results import Entry, Outcome

XML_ILLEGAL = re.compile(r"[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


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


def write_outputs(
    paths: Mapping[str, Path], outcomes: list[Outcome], draw: Callable[[list[Path]], list[Path]] | None = None
) -> list[Path]:
    """Write every output file atomically, after all entries have run; ``draw`` makes figures of the JSON files.

    ``draw`` (``batch --plots``: the figures of :func:`diffshot.plot.draw_batch`) gets the JSON files written and
    returns the figures it drew, which summary.md links; they are returned.
    """
    written = []
    for outcome in outcomes:
        if outcome.run is not None:
            document = to_json_document(outcome.run)
            path = paths[f"json:{outcome.entry.name}"]
            write_text_atomic(path, json.dumps(document, indent=2) + "\n")
            written.append(path)
    figures = draw(written) if draw is not None and written else []
    summary = paths["markdown"]
    links = {figure.stem: os.path.relpath(figure.resolve(), summary.resolve().parent) for figure in figures}
    write_text_atomic(paths["csv"], combined_csv(outcomes))
    write_text_atomic(paths["junit"], junit_xml(outcomes))
    write_text_atomic(summary, markdown_summary(outcomes, links))
    return figures
