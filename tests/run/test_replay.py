"""``--save-episodes`` keeps each episode's rows; ``evaluate --episodes-file`` replays them (or a paper's tasks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.features import FeatureSet, write_canonical

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, synthetic: FeatureSet) -> Path:
    return write_canonical(synthetic, tmp_path_factory.mktemp("replay") / "demo.h5")


def save(demo: Path, folder: Path, name: str, *extra: object) -> Path:
    """Run evaluate with --save-episodes; the .npz written."""
    result = invoke(
        "evaluate", demo, "-m", "simpleshot,diffusion", "--episodes", 40, "-q", "-o", folder / f"{name}.json",
        "--save-episodes", folder / f"{name}.npz", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder / f"{name}.npz"


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def accuracies(path: Path) -> dict[tuple[str, int], np.ndarray]:
    data = arrays(path)
    meta = json.loads(str(data["meta"]))
    return {(r["method"], r["shots"]): data[r["key"]] for r in meta["runs"]}


def test_saved_rows_are_the_episodes_that_ran(demo: Path, synthetic: FeatureSet, tmp_path: Path) -> None:
    data = arrays(save(demo, tmp_path, "a", "--shots", "1,5"))
    meta = json.loads(str(data["meta"]))
    assert [s["shots"] for s in meta["episode_sets"]] == [1, 5]
    rows, ways = data["episodes1_rows"], data["episodes1_query_labels"]
    assert rows.shape == (40, 5 * 5 + 5 * 15) and ways.shape == (40, 75)
    labels = synthetic.labels[rows]
    support = labels[:, :25].reshape(40, 5, 5)
    assert (support == support[:, :, :1]).all()  # class-major: 5 rows of each class
    assert (labels[:, 25:] == np.take_along_axis(support[:, :, 0], ways.astype(np.int64), 1)).all()
    novel = {c for c in range(synthetic.num_classes) if synthetic.split_of(c) == "novel"}
    assert set(np.unique(labels).tolist()) <= novel


def test_replay_gives_the_same_accuracies(demo: Path, tmp_path: Path) -> None:
    first = save(demo, tmp_path, "first", "--shots", "1,5", "--seed", 3)
    result = invoke(
        "evaluate", demo, "-m", "simpleshot,diffusion", "--episodes-file", first, "-q", "-o", tmp_path / "r.json",
        "--save-episodes", tmp_path / "replayed.npz",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    before, after = accuracies(first), accuracies(tmp_path / "replayed.npz")
    assert before.keys() == after.keys() and len(before) == 4
    for key, values in before.items():
        np.testing.assert_array_equal(values, after[key])
    np.testing.assert_array_equal(arrays(first)["episodes0_rows"], arrays(tmp_path / "replayed.npz")["episodes0_rows"])
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["episodes_replayed_from"] == str(first)
    assert [r["episodes"] for r in document["results"]] == [40] * 4
    paired = invoke("compare", first, tmp_path / "replayed.npz")
    assert paired.exit_code == 0 and paired.stdout.count("+0.00 ± 0.00") == 4, paired.output


@pytest.mark.parametrize(
    "protocol",
    [("--open-set",), ("--imbalance", "dirichlet:2"), ("--imbalance", "zipf:1"), ("--query-classes", 3)],
    ids=["open-set", "dirichlet", "zipf", "query-classes"],
)
def test_every_protocol_replays_the_same(demo: Path, tmp_path: Path, protocol: tuple[object, ...]) -> None:
    first = save(demo, tmp_path, "first", *protocol)
    result = invoke(
        "evaluate", demo, "-m", "simpleshot,diffusion", "--episodes-file", first, "-q",
        "--save-episodes", tmp_path / "again.npz",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    before, after = accuracies(first), accuracies(tmp_path / "again.npz")
    for key, values in before.items():
        np.testing.assert_array_equal(values, after[key])
    meta = [json.loads(str(arrays(path)["meta"])) for path in (first, tmp_path / "again.npz")]
    assert {k: v for k, v in meta[0].items() if k != "runs"} == {k: v for k, v in meta[1].items() if k != "runs"}
    if protocol[0] == "--open-set":
        refused = invoke("evaluate", demo, "-m", "ptmap", "--episodes-file", first, "-q")
        assert refused.exit_code == 2 and "no unknown score" in refused.stderr, refused.output


def test_a_plain_support_query_file_replays(demo: Path, tmp_path: Path) -> None:
    data = arrays(save(demo, tmp_path, "src"))
    rows = data["episodes0_rows"]
    shuffled = rows[:, :5][:, ::-1].copy()  # support in any order: it is put class after class
    np.savez(tmp_path / "paper.npz", support=shuffled, query=rows[:, 5:])
    result = invoke(
        "evaluate", demo, "-m", "simpleshot", "--episodes-file", tmp_path / "paper.npz", "-q", "--format", "json"
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)["results"][0]
    assert (record["ways"], record["shots"], record["queries"], record["episodes"]) == (5, 1, 15, 40)
    mean = accuracies(tmp_path / "src.npz")["simpleshot", 1].mean()
    assert record["accuracy"] == pytest.approx(mean, abs=1e-3)


def test_bad_episode_files_are_one_line_errors(demo: Path, synthetic: FeatureSet, tmp_path: Path) -> None:
    data = arrays(save(demo, tmp_path, "ok"))
    rows = data["episodes0_rows"].astype(np.int64)
    other = np.flatnonzero(~np.isin(synthetic.labels, synthetic.labels[rows[2, :5]]))[0]
    support, query = rows[:, :5], rows[:, 5:]

    def one_query(value: int) -> np.ndarray:
        changed = query.copy()
        changed[2, 4] = value
        return changed

    cases = {
        "range": ({"support": support, "query": one_query(10**6)}, "out of range"),
        "foreign": ({"support": support, "query": one_query(other)}, "none of the episode's support classes"),
        "uneven": ({"support": np.concatenate([support, support[:, :1]], 1), "query": query}, "do not split evenly"),
        "float": ({"support": support.astype(float), "query": query}, "integer array"),
        "keys": ({"rows": rows}, "'support' and 'query'"),
    }
    for name, (content, needle) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **content)
        result = invoke("evaluate", demo, "-m", "simpleshot", "--episodes-file", tmp_path / f"{name}.npz", "-q")
        message = result.stderr.strip()
        assert result.exit_code == 1 and "\n" not in message and needle in message, (name, result.output)
        assert message.startswith(f"error: {tmp_path / name}.npz"), message
    tampered = dict(data)
    tampered["episodes0_query_labels"] = (data["episodes0_query_labels"] + 1) % 5
    np.savez(tmp_path / "tampered.npz", **tampered)
    result = invoke("evaluate", demo, "-m", "simpleshot", "--episodes-file", tmp_path / "tampered.npz", "-q")
    assert result.exit_code == 1 and "drawn from other features" in result.stderr, result.output
    clash = invoke("evaluate", demo, "--episodes-file", tmp_path / "ok.npz", "--shots", 5, "--ways", 3)
    assert clash.exit_code == 2 and "drop --ways, --shots" in clash.stderr, clash.output
    old = {k: v for k, v in data.items() if not k.startswith("episodes")}
    meta = json.loads(str(old["meta"]))
    del meta["episode_sets"]
    old["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **old)
    result = invoke("evaluate", demo, "--episodes-file", tmp_path / "old.npz", "-q")
    assert result.exit_code == 1 and "not the episodes' rows" in result.stderr, result.output
