"""``convert --class-split``: a seeded random base/val/novel split, or one read from a class,split file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.errors import DiffshotError, UsageError
from diffshot.features import make_featureset, read_features, write_canonical
from diffshot.run.class_split import parse_fractions, random_split, split_from_file
from tests.conftest import one_line_error

runner = CliRunner()


def test_a_draw_is_seeded_and_cut_by_the_fractions() -> None:
    fractions = parse_fractions("base:0.5,val:0.2,novel:0.3")
    first = random_split(77, fractions, seed=4)
    assert first == random_split(77, fractions, seed=4)
    assert first != random_split(77, fractions, seed=5)
    assert [first.count(s) for s in ("base", "val", "novel")] == [39, 15, 23]  # 38.5, 15.4, 23.1: spare to base
    assert random_split(3, fractions, seed=0).count("val") == 1  # every named split gets a class


@pytest.mark.parametrize("text", ["base:0.5,val:0.6", "train:1", "base:0.5,base:0.5", "base=1", "novel:x"])
def test_bad_draws_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_fractions(text)


def test_a_split_file_names_every_class(tmp_path: Path) -> None:
    names = ("cat", "dog", "owl")
    path = tmp_path / "split.csv"
    path.write_text("class,split\ncat,base\ndog,novel\nowl,val\n", encoding="utf-8")
    assert split_from_file(path, names) == ("base", "novel", "val")
    for content, needle in (
        ("cat,base\ndog,novel\n", "no split for class 'owl'"),
        ("cat,base\ndog,novel\nowl,test\n", "'test' is not base, val or novel"),
        ("cat,base\ndog,novel\nowl,val\nemu,val\n", "'emu', which the features do not hold"),
        ("cat,base,extra\n", "3 fields"),
    ):
        path.write_text(content, encoding="utf-8")
        with pytest.raises(DiffshotError) as exc:
            split_from_file(path, names)
        assert needle in one_line_error(exc, path)


def test_convert_writes_the_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 20)
    source = write_canonical(make_featureset(rng.normal(size=(400, 8)), labels), tmp_path / "flat.h5")
    out = tmp_path / "split.h5"
    result = runner.invoke(
        app, ["convert", str(source), str(out), "--class-split", "base:0.5,val:0.25,novel:0.25", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "base 10, val 5, novel 5" in result.stdout
    fs = read_features(out)
    assert fs.class_split == random_split(20, parse_fractions("base:0.5,val:0.25,novel:0.25"), 3)
    assert fs.attrs["class_split_from"] == "random base:0.5,val:0.25,novel:0.25, seed 3"
    evaluated = runner.invoke(app, ["evaluate", str(out), "--episodes", "10", "-m", "simpleshot", "--format", "json"])
    assert evaluated.exit_code == 0 and '"split": "novel"' in evaluated.stdout, evaluated.output
    bad = runner.invoke(app, ["convert", str(source), str(tmp_path / "x.h5"), "--class-split", "base:2"])
    assert bad.exit_code == 2 and not (tmp_path / "x.h5").exists()
