"""The README and docs/ describe the tree that is there: the Layout names every package, and nothing stale."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 300


def layout_section() -> str:
    """The text of the README's Layout section, up to the next second-level heading."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def packages() -> set[str]:
    """Every package of diffshot: a folder under diffshot/ with an __init__.py, as 'diffshot/x/'."""
    return {f"{init.parent.relative_to(ROOT).as_posix()}/" for init in (ROOT / "diffshot").rglob("__init__.py")} - {
        "diffshot/"
    }


def test_readme_is_short() -> None:
    """The README is a user's page: at most 300 lines, the long notes live in docs/."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines, more than {MAX_README_LINES}"


def test_layout_names_exist() -> None:
    """Every path the Layout section names (`diffshot/...`) is in the tree."""
    named = re.findall(r"`(diffshot/[\w/.]*)`", layout_section())
    assert named, "the Layout section names no path"
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, f"the README's Layout names paths that do not exist: {missing}"


def test_layout_names_every_package() -> None:
    """Every package under diffshot/ is named in the Layout section."""
    named = set(re.findall(r"`(diffshot/[\w/]+/)`", layout_section()))
    unnamed = sorted(packages() - named)
    assert not unnamed, f"the README's Layout leaves out packages: {unnamed}"


def test_docs_name_no_issue_numbers_or_missing_design() -> None:
    """README and docs/ stand alone: no issue numbers, no DESIGN.md the repository lacks."""
    for page in [README, *DOCS]:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"\bissues? #?\d+", text, flags=re.IGNORECASE), f"{page.name} cites an issue number"
        assert "DESIGN.md" not in text, f"{page.name} points to DESIGN.md"


def test_named_tests_and_links_exist() -> None:
    """Every test file and every relative link in README and docs/ points to a file that is there."""
    for page in [README, *DOCS]:
        text = page.read_text(encoding="utf-8")
        for path in re.findall(r"`?(tests/[\w/]+\.py)", text):
            assert (ROOT / path).exists(), f"{page.name} names {path}, which does not exist"
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
