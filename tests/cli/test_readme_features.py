"""The README's "Bring your own features" code runs as written, and diffshot reads what it writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.features import read_features

README = Path(__file__).resolve().parents[2] / "README.md"
runner = CliRunner()


def section_code() -> list[str]:
    """The Python blocks of the README's "Bring your own features" section, in order."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Bring your own features\n(.*?)(?=^## )", text, flags=re.MULTILINE | re.DOTALL)
    assert section, "README.md has no 'Bring your own features' section"
    blocks = re.findall(r"```python\n(.*?)```", section.group(1), flags=re.DOTALL)
    assert len(blocks) == 2, "expected the h5py example and the make_featureset/write_canonical one"
    return blocks


@pytest.mark.parametrize("upto", [1, 2], ids=["h5py", "write_canonical"])
def test_the_readme_examples_write_a_file_diffshot_reads(tmp_path: Path, upto: int) -> None:
    blocks = section_code()
    assert "h5py.string_dtype()" in blocks[0] and "write_canonical" in blocks[1]
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        namespace: dict[str, object] = {}
        for block in blocks[:upto]:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    path = tmp_path / "mine.h5"
    fs = read_features(path)
    assert (fs.num_rows, fs.dim, fs.num_classes) == (600, 64, 30)
    assert fs.class_split is not None and fs.class_split.count("novel") == 10 and fs.base_mean is not None
    info = runner.invoke(app, ["info", str(path)])
    assert info.exit_code == 0 and "novel" in info.stdout, info.output
    evaluated = runner.invoke(app, ["evaluate", str(path), "--episodes", "50", "-q", "--format", "json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert '"split": "novel"' in evaluated.stdout and '"centring": "base_mean"' in evaluated.stdout


def test_numpy_strings_are_the_trap_the_readme_names(tmp_path: Path) -> None:
    """h5py cannot write numpy's fixed-width strings, which is why the README writes h5py.string_dtype()."""
    import h5py
    import numpy as np

    with h5py.File(tmp_path / "trap.h5", "w") as f:
        with pytest.raises(TypeError, match="No conversion path"):
            f["class_names"] = np.array(["a", "b"])
        f["class_names"] = np.array(["a", "b"], dtype=h5py.string_dtype())
