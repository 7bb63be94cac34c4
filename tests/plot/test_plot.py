"""diffshot plot: every picture kind from real runs, to PNG and SVG, with the drawn data checked against the input."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from diffshot.cli import app
from diffshot.errors import DiffshotError
from diffshot.features import load_features, write_canonical
from diffshot.plot import draw, draw_batch, draw_for_results, render
from diffshot.plot.backend import MISSING, figure, save_figure
from diffshot.plot.draw import TOP_ROWS
from diffshot.plot.palette import METHOD_STYLES, method_style
from diffshot.report.episodes_file import load_episode_accuracies

DEMO = Path(__file__).resolve().parents[2] / "features" / "synthetic-demo.h5"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
runner = CliRunner()


def cli(*args: str | Path, check: bool = True) -> Result:
    """The real command line, in process (the subprocess tests below start it as a user would)."""
    done = runner.invoke(app, [str(a) for a in args])
    if check:
        assert done.exit_code == 0, done.stderr
    return done


def cli_subprocess(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command line in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "diffshot", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300
    )


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def is_svg(path: Path) -> bool:
    return b"<svg" in path.read_bytes()[:2000]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real evaluate (paired, saved episodes) and tune (grid JSON) runs on the demo features."""
    out = tmp_path_factory.mktemp("runs")
    cli(
        "evaluate", DEMO, "--shots", "1", "--shots", "5", "--episodes", "60", "-m", "simpleshot", "-m", "diffusion",
        "-m", "bdcspn", "--baseline", "simpleshot", "--save-episodes", out / "run.npz", "--output", out / "res.json",
        "--quiet",
    )  # fmt: skip
    cli(
        "tune", DEMO, "--episodes", "40", "--step-size", "0.25,0.5,1", "--layers", "1,4,8", "--output",
        out / "tuned.toml", "--grid-json", out / "tune.json",
    )  # fmt: skip
    return out


def test_results_figure_plots_the_json_numbers(runs: Path, tmp_path: Path) -> None:
    document = json.loads((runs / "res.json").read_text())
    done = cli_subprocess("plot", runs / "res.json", "--output", tmp_path / "acc.png")
    assert done.returncode == 0 and "results figure" in done.stdout and is_png(tmp_path / "acc.png")
    assert "results figure" in cli("plot", runs / "res.json", "-o", tmp_path / "acc.svg").stdout
    assert is_svg(tmp_path / "acc.svg")
    kind, drawn = render([runs / "res.json"])
    assert kind == "results" and drawn.data["x_axis"] == "shots"
    for record in document["results"]:
        series = drawn.data["series"][record["method"]]
        i = series["x"].index(record["shots"])
        assert series["accuracy"][i] == record["accuracy"] and series["ci95"][i] == record["ci95"]
    ax = drawn.figure.axes[0]
    for container, name in zip(ax.containers, drawn.data["series"], strict=True):
        line, _, (bars,) = container.lines
        expected = drawn.data["series"][name]
        assert np.allclose(line.get_ydata(), expected["accuracy"])
        half = [(seg[1][1] - seg[0][1]) / 2 for seg in bars.get_segments()]
        assert np.allclose(half, expected["ci95"])
    paired = {(p["label"].split(" ")[0], p["label"].split(" · ")[1]): p for p in drawn.data["paired"]}
    assert len(paired) == 4  # diffusion and bdcspn at 1 and 5 shots; the baseline itself is not drawn
    for record in document["results"]:
        if record["method"] != "simpleshot":
            p = paired[(record["method"], f"{record['shots']}-shot")]
            assert p["difference"] == record["paired"]["difference"] and p["ci95"] == record["paired"]["ci95"]
    title = drawn.figure.get_suptitle()
    for part in ("synthetic-demo.h5", "novel classes", "seed 0", "60 episodes", "5-way", "15 queries"):
        assert part in title


def test_ways_become_the_x_axis_and_draw_for_results(runs: Path, tmp_path: Path) -> None:
    document = json.loads((runs / "res.json").read_text())
    three = {**document, "results": [{**r, "ways": 3, "paired": None} for r in document["results"] if r["shots"] == 1]}
    five = {**document, "results": [r for r in document["results"] if r["shots"] == 1]}
    (tmp_path / "a.json").write_text(json.dumps(three))
    (tmp_path / "b.json").write_text(json.dumps(five))
    _, drawn = render([tmp_path / "a.json", tmp_path / "b.json"])
    assert drawn.data["x_axis"] == "ways" and drawn.data["series"]["diffusion"]["x"] == [3, 5]
    assert is_png(draw_for_results(five, tmp_path / "doc.png"))
    assert is_svg(draw_for_results(runs / "res.json", tmp_path / "doc.svg"))
    written = draw_batch([tmp_path / "a.json", tmp_path / "b.json"], tmp_path)
    assert [p.name for p in written] == ["a.png", "b.png", "summary.png"] and all(map(is_png, written))


def test_episode_differences(runs: Path, tmp_path: Path) -> None:
    cli("plot", runs / "run.npz", "--output", tmp_path / "d.svg", "--method", "diffusion", "--baseline", "simpleshot")
    assert is_svg(tmp_path / "d.svg")
    assert is_png(draw([runs / "run.npz"], tmp_path / "d.png"))
    _, drawn = render([runs / "run.npz"], method="diffusion", baseline="simpleshot")
    _, records = load_episode_accuracies(runs / "run.npz")
    document = json.loads((runs / "res.json").read_text())
    for panel, shots in zip(drawn.data["panels"], (1, 5), strict=True):
        runs_at = {r.method: r.accuracies for r in records if r.shots == shots}
        diffs = runs_at["diffusion"] - runs_at["simpleshot"]
        assert sum(panel["counts"]) == diffs.size == 60
        assert panel["mean"] == pytest.approx(diffs.mean())
        record = next(r for r in document["results"] if r["method"] == "diffusion" and r["shots"] == shots)
        assert panel["mean"] == pytest.approx(record["paired"]["difference"], abs=1e-4)
        assert panel["ci95"] == pytest.approx(record["paired"]["ci95"], abs=1e-4)
    with pytest.raises(DiffshotError, match="no method 'tim'"):
        render([runs / "run.npz"], method="tim")


def test_tune_heat_map_marks_the_tuned_cell(runs: Path, tmp_path: Path) -> None:
    for suffix, check in ((".png", is_png), (".svg", is_svg)):
        assert check(draw([runs / "tune.json"], tmp_path / f"h{suffix}"))
    document = json.loads((runs / "tune.json").read_text())
    kind, drawn = render([runs / "tune.json"])
    gain = drawn.data["gain"]
    assert kind == "tune" and gain.shape == (3, 3) and np.isfinite(gain).all()
    row, col = np.unravel_index(np.nanargmax(gain), gain.shape)
    assert (row, col) == drawn.data["chosen"]
    tuned = (runs / "tuned.toml").read_text()
    assert f"step_size = {drawn.data['taus'][row]}" in tuned and f"layers = {drawn.data['depths'][col]}" in tuned
    assert document["best"]["step_size"] == drawn.data["taus"][row]
    image = drawn.figure.axes[0].images[0].get_array()
    assert np.allclose(np.asarray(image), gain)


def split_demo(tmp_path: Path, shots: int = 3) -> tuple[Path, Path]:
    """Support (``shots`` rows per novel class) and query (the other novel rows) files from the demo."""
    novel = load_features(DEMO).select_split("novel")
    rng = np.random.default_rng(0)
    mask = np.zeros(novel.num_rows, bool)
    for c in range(novel.num_classes):
        mask[rng.choice(np.flatnonzero(novel.labels == c), shots, replace=False)] = True
    return write_canonical(novel.take_rows(mask), tmp_path / "s.h5"), write_canonical(
        novel.take_rows(~mask), tmp_path / "q.h5"
    )


def test_confusion_matrix_from_predict_csv_and_json(tmp_path: Path) -> None:
    support, query = split_demo(tmp_path)
    cli("predict", "--support", support, "--query", query, "--output", tmp_path / "p.csv")
    cli("predict", "--support", support, "--query", query, "--output", tmp_path / "p.json")
    cli("plot", tmp_path / "p.csv", "--labels", query, "--output", tmp_path / "c.png")
    assert is_png(tmp_path / "c.png") and is_svg(draw([tmp_path / "p.json"], tmp_path / "c.svg", labels=query))
    truth = load_features(query)
    with open(tmp_path / "p.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    correct = np.mean([truth.class_names[truth.labels[int(r["row"])]] == r["class"] for r in records])
    for source in ("p.csv", "p.json"):
        _, drawn = render([tmp_path / source], labels=query)
        matrix = drawn.data["matrix"]
        assert matrix.shape == (20, 20) and np.allclose(matrix.sum(axis=1), 1.0)
        assert np.trace(drawn.data["counts"]) / drawn.data["counts"].sum() == pytest.approx(correct)
        assert np.allclose(drawn.data["per_class_accuracy"], 100 * np.diag(matrix))
        assert drawn.data["classes"] == list(truth.class_names)
    with pytest.raises(DiffshotError, match="labels=QUERY"):
        render([tmp_path / "p.csv"])


def test_confusion_matrix_readable_with_77_classes(banking77_path: Path, tmp_path: Path) -> None:
    fs = load_features(banking77_path)
    rng = np.random.default_rng(1)
    mask = np.zeros(fs.num_rows, bool)
    for c in range(fs.num_classes):
        mask[rng.choice(np.flatnonzero(fs.labels == c), 3, replace=False)] = True
    keep = np.zeros(fs.num_rows, bool)
    keep[rng.choice(np.flatnonzero(~mask), 1500, replace=False)] = True
    support = write_canonical(fs.take_rows(mask), tmp_path / "s.h5")
    query = write_canonical(fs.take_rows(keep), tmp_path / "q.h5")
    cli("predict", "--support", support, "--query", query, "--output", tmp_path / "p.json")
    _, drawn = render([tmp_path / "p.json"], labels=query)
    matrix, counts = drawn.data["matrix"], drawn.data["counts"]
    assert matrix.shape[0] == TOP_ROWS and np.allclose(matrix.sum(axis=1), 1.0)
    assert (counts.sum(axis=0) > 0).all(), "an empty column is drawn"
    errors = counts.sum(axis=1) - counts[np.arange(TOP_ROWS), np.arange(TOP_ROWS)]
    assert list(errors) == sorted(errors, reverse=True)  # the most confused classes, own column first
    assert drawn.data["columns"][:TOP_ROWS] == drawn.data["classes"]
    ax = drawn.figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == drawn.data["classes"]
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 9
    assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 3.5
    assert f"the {TOP_ROWS} of 77 classes with the most errors" in drawn.figure.texts[0].get_text()
    assert is_png(save_figure(drawn.figure, tmp_path / "c77.png"))


def test_confusion_with_rejected_rows_maps_unknowns_to_one_row_and_column(banking77_path: Path, tmp_path: Path) -> None:
    fs = load_features(banking77_path)
    novel = np.isin(fs.labels, fs.classes_in_split("novel"))
    unknown = np.isin(fs.labels, fs.classes_in_split("val"))
    rank = np.zeros(fs.num_rows, int)
    for c in range(fs.num_classes):
        rows = np.flatnonzero(fs.labels == c)
        rank[rows] = np.arange(rows.size)
    shots = novel & (rank < 5)
    support = write_canonical(fs.take_rows(shots).select_split("novel"), tmp_path / "s.h5")
    query = write_canonical(fs.take_rows((novel & ~shots & (rank < 60)) | (unknown & (rank < 40))), tmp_path / "q.h5")
    printed = cli("predict", "--support", support, "--query", query, "--reject", "auto", "-o", tmp_path / "p.csv")
    said = re.search(r"accuracy (\d+\.\d\d)% on the (\d+) query rows", printed.stdout)
    assert said, printed.stdout
    cli("plot", tmp_path / "p.csv", "--labels", query, "-o", tmp_path / "c.png")
    for source, extra in (("p.csv", {}), ("p.csv", {"support": support})):
        _, drawn = render([tmp_path / source], labels=query, **extra)
        rows, columns, counts = drawn.data["classes"], drawn.data["columns"], drawn.data["counts"]
        assert rows[-1] == "unknown" and "unknown" in columns and rows.count("unknown") == 1
        assert counts[-1].sum() == 10 * 40  # every row of the 10 val classes is truth 'unknown'
        assert (counts.sum(axis=0) > 0).all() and len(rows) == 31
        assert f"{drawn.data['known_accuracy']:.2f}" == said.group(1)
        title = drawn.figure.texts[0].get_text()
        assert f"accuracy {said.group(1)}% on the {said.group(2)} rows of support classes" in title
    assert is_png(tmp_path / "c.png")


def test_missing_matplotlib_is_one_line(monkeypatch: pytest.MonkeyPatch, runs: Path, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DiffshotError) as exc:
        figure()
    assert str(exc.value) == MISSING == "plotting needs matplotlib: pip install 'diffshot[plot]'"
    code = (
        "import sys; sys.modules['matplotlib'] = None; from diffshot.cli import app; "
        f"app(['plot', {str(runs / 'res.json')!r}, '--output', {str(tmp_path / 'x.png')!r}])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 1 and done.stderr.strip() == f"error: {MISSING}"
    assert not (tmp_path / "x.png").exists()


def test_bad_inputs_get_one_line(runs: Path, tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text('{"hello": 1}')
    (tmp_path / "broken.json").write_text("{not json")
    cases = [
        (["plot", tmp_path / "other.json", "-o", tmp_path / "a.png"], "not a diffshot output"),
        (["plot", tmp_path / "broken.json", "-o", tmp_path / "a.png"], "not readable as JSON"),
        (["plot", runs / "tuned.toml", "-o", tmp_path / "a.png"], "--grid-json"),
        (["plot", runs / "res.json", "-o", tmp_path / "a.jpg"], "use .png, .svg or .pdf"),
        (["plot", runs / "res.json", "-o", tmp_path / "other.json" / "a.png"], "Not a directory"),
        (["plot", runs / "res.json", runs / "run.npz", "-o", tmp_path / "a.png"], "drawn together"),
    ]
    for args, message in cases:
        done = cli(*args, check=False)
        code = 2 if message.startswith("use .") else 1  # a wrong extension is a usage error
        assert done.exit_code == code and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.png"))


def test_palette_is_fixed_and_distinct() -> None:
    colours = [s.colour for s in METHOD_STYLES.values()]
    markers = [s.marker for s in METHOD_STYLES.values()]
    assert len(set(colours)) == len(colours) == 8 and len(set(markers)) == len(markers)
    assert method_style("diffusion") == METHOD_STYLES["diffusion"]
    assert method_style("mine") == method_style("mine")
