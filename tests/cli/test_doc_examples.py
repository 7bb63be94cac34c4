"""The pages' quoted output is generated (benchmarks/readme_examples.py), and it still has the shape the CLI prints:
every key of the JSON contract, tables no wider than 80 columns."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from typer.testing import CliRunner

from diffshot.cli import app

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "features" / "synthetic-demo.h5"
spec = importlib.util.spec_from_file_location("readme_examples", ROOT / "benchmarks" / "readme_examples.py")
examples = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
spec.loader.exec_module(examples)  # type: ignore[union-attr]


def blocks() -> dict[str, str]:
    """Every example of every page by name (a name may occur on several pages; the last one is kept)."""
    found = {}
    for page in examples.PAGES:
        for match in examples.BLOCK.finditer(page.read_text(encoding="utf-8")):
            found[match.group("name")] = match.group("body")
    return found


def keys(value: object, prefix: str = "") -> set[str]:
    """Every key path of a JSON value (lists by their first item), e.g. ``results.params.layers``."""
    if isinstance(value, dict):
        return {f"{prefix}{k}" for k in value} | {p for k, v in value.items() for p in keys(v, f"{prefix}{k}.")}
    if isinstance(value, list) and value:
        return keys(value[0], prefix)
    return set()


def test_every_example_is_known_to_the_generator() -> None:
    found = blocks()
    assert "evaluate-json" in found and "evaluate-table" in found
    assert set(found) <= set(examples.EXAMPLES)


def test_the_json_example_has_every_key_the_cli_writes(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["evaluate", str(DEMO), "-m", "diffusion", "--shots", "1", "--episodes", "20", "-q", "-o", str(out)]
    assert CliRunner().invoke(app, args).exit_code == 0
    real = json.loads(out.read_text())
    body = re.search(r"```json\n(.*?)```", blocks()["evaluate-json"], re.DOTALL)
    assert body, "the evaluate-json example holds no JSON block"
    shown = json.loads(body.group(1))
    assert keys(shown) == keys(real)
    for needed in ("environment", "results.ece", "results.resolved", "results.query_classes"):
        assert needed in keys(shown)


def test_the_table_example_fits_80_columns() -> None:
    body = blocks()["evaluate-table"]
    table = [line for line in body.splitlines() if line[:1] in "┏┃┡│└"]
    assert table and max(len(line) for line in table) <= 80
    assert "…" not in body


def test_compact_json_is_json_and_fits() -> None:
    document = {"a": list(range(50)), "b": {"c": "x" * 30, "d": [{"e": 1}]}, "f": None}
    text = examples.compact(document)
    assert json.loads(text) == document and max(map(len, text.splitlines())) <= examples.WIDTH + 10
