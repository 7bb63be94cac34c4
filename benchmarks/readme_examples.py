"""Regenerate the examples in README.md and docs/ that quote diffshot's output, from real runs of the CLI.

Usage: python benchmarks/readme_examples.py [--check]

Each example sits between ``<!-- example: NAME -->`` and ``<!-- /example -->`` in a page; this script runs the
command the example names (on BANKING77, ../shared/data/banking77/banking77-minilm.h5, 2 threads) and writes its
output there. ``--check`` writes nothing and exits 1 when a page differs from what the commands print, apart
from timings (seconds, episodes/s, the UTC time), which no two runs share. tests/cli/test_doc_examples.py checks
the examples' structure (every key the JSON has) on every run of the suite.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEATURES = Path("../shared/data/banking77/banking77-minilm.h5")  # as the pages name it, relative to the repository
BLOCK = re.compile(r"(<!-- example: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /example -->)", re.DOTALL)
TIMINGS = re.compile(r'("(?:seconds|episodes_per_second|utc)": )[^,}\n]+|(│\s*)[\d,]+(\s*│\s*$)', re.MULTILINE)
WIDTH = 116


def compact(value: object, indent: int = 0, lead: int = 0) -> str:
    """JSON with each object or list on one line when it fits in WIDTH columns (``lead`` characters already on the
    line), else one item per line, indented by two."""
    flat = json.dumps(value, ensure_ascii=False)
    if indent + lead + len(flat) <= WIDTH or not isinstance(value, dict | list) or not value:
        return flat
    inner = " " * (indent + 2)
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            head = f"{json.dumps(key, ensure_ascii=False)}: "
            items.append(f"{inner}{head}{compact(item, indent + 2, len(head))}")
    else:
        items = [f"{inner}{compact(item, indent + 2)}" for item in value]
    close = "}" if isinstance(value, dict) else "]"
    return ("{" if isinstance(value, dict) else "[") + "\n" + ",\n".join(items) + "\n" + " " * indent + close


def diffshot(*args: str, columns: int = 80) -> str:
    """What ``diffshot ARGS`` prints on stdout, at ``columns`` columns, from the repository root."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "COLUMNS": str(columns)}
    command = [sys.executable, "-m", "diffshot", *args, "--threads", "2", "-q"]
    return subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout


def evaluate_json() -> str:
    """The JSON contract of a 10,000-episode diffusion run (the README's first example), the command line shortened."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "results.json"
        diffshot("evaluate", str(FEATURES), "-m", "diffusion", "--shots", "1", "-o", str(out))
        document = json.loads(out.read_text())
    document["environment"]["command"] = ["diffshot", "evaluate", str(FEATURES), "-m", "diffusion", "--shots", "1"]
    document["environment"]["command"] += ["-o", "results.json"]
    return "```json\n" + compact(document) + "\n```\n"


def evaluate_table() -> str:
    """The evaluate table at 80 columns, stacked where it is wider (method and shots repeated)."""
    args = ("evaluate", str(FEATURES), "-m", "simpleshot,diffusion,laplacianshot", "--baseline", "simpleshot")
    shown = f"$ COLUMNS=80 diffshot {' '.join(args[:-2])} \\\n    --baseline simpleshot --episodes 2000\n"
    return "```text\n" + shown + diffshot(*args, "--episodes", "2000") + "```\n"


EXAMPLES: dict[str, Callable[[], str]] = {"evaluate-json": evaluate_json, "evaluate-table": evaluate_table}
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))


def examples_in(text: str) -> list[str]:
    """The names of the examples a page holds."""
    return [m.group("name") for m in BLOCK.finditer(text)]


def regenerate(text: str, made: dict[str, str]) -> str:
    """``text`` with every example replaced by its fresh output."""
    return BLOCK.sub(lambda m: m.group(1) + made[m.group("name")] + m.group(4), text)


def main() -> int:
    check = "--check" in sys.argv[1:]
    if not (ROOT / FEATURES).is_file():
        print(f"needs {FEATURES} (the shared BANKING77 features)", file=sys.stderr)
        return 2
    made: dict[str, str] = {}
    stale = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for name in examples_in(text):
            if name not in EXAMPLES:
                print(f"{page.name}: unknown example {name!r}", file=sys.stderr)
                return 2
            made.setdefault(name, EXAMPLES[name]())
        fresh = regenerate(text, made)
        if TIMINGS.sub(r"\1\2", fresh) != TIMINGS.sub(r"\1\2", text):
            stale.append(page.name)
            if not check:
                page.write_text(fresh, encoding="utf-8")
    verb = "differ from what the commands print" if check else "regenerated"
    print(f"{', '.join(stale) or 'no page'} {verb}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
