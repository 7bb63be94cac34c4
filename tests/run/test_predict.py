"""predict: sparse FAISS graph equals the dense recipe, BANKING77 acceptance, outputs, and one-line errors."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.features import FeatureSet, write_canonical
from diffshot.ops.graph import episode_laplacian
from diffshot.ops.knn import choose_index, knn_graph
from diffshot.run.predict import PredictOptions, accuracy, predict, select_rows
from tests.reference import neighbour_recall, sparse_laplacian

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in message, message


@pytest.fixture(scope="module")
def novel_task(banking77: FeatureSet) -> tuple[FeatureSet, FeatureSet]:
    """BANKING77 novel classes: 5 labelled rows per class as support, every other row as a query."""
    novel, _ = select_rows(banking77, "novel")
    rng = np.random.default_rng(0)
    support = np.zeros(novel.num_rows, dtype=bool)
    for c in range(novel.num_classes):
        support[rng.choice(np.flatnonzero(novel.labels == c), 5, replace=False)] = True
    return novel.take_rows(support), novel.take_rows(~support)


@pytest.fixture(scope="module")
def task_files(tmp_path_factory: pytest.TempPathFactory, novel_task) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("predict")
    support, query = novel_task
    return write_canonical(support, folder / "support.h5"), write_canonical(query, folder / "query.h5")


def test_sparse_laplacian_equals_dense_recipe() -> None:
    x = torch.nn.functional.normalize(torch.randn(150, 12, generator=torch.Generator().manual_seed(0)), dim=1)
    dense = episode_laplacian(x[None], 8, 4)[0]
    dist, ids = knn_graph(x.numpy(), 8, "flat")
    sparse = sparse_laplacian(dist, ids, 8, 4)
    assert sparse.layout == torch.sparse_csr
    assert torch.allclose(sparse.to_dense(), dense, atol=1e-6)


def test_auto_index_is_exact_below_the_limit_and_hnsw_above() -> None:
    assert choose_index("auto", 1000, exact_limit=5000) == "flat"
    assert choose_index("auto", 6000, exact_limit=5000) == "hnsw"
    assert choose_index("ivf", 10) == "ivf"


def test_banking77_diffusion_beats_nearest_prototype(novel_task) -> None:
    support, query = novel_task
    assert support.num_rows == 150 and query.num_rows > 5000
    diffused = predict(support, query)
    plain = predict(support, query, ("diffusion", {"layers": 0, "shift": False}))
    acc, count = accuracy(diffused, query)
    base, _ = accuracy(plain, query)
    assert count == query.num_rows
    assert acc >= base + 2.0, (acc, base)


def test_hnsw_recall_against_exact(novel_task) -> None:
    support, query = novel_task
    points = np.concatenate([support.features, query.features])
    _, exact = knn_graph(points, 8, "flat")
    _, approx = knn_graph(points, 8, "hnsw")
    assert neighbour_recall(approx[:, 1:], exact[:, 1:]) >= 0.95


def test_unequal_shots_and_forced_approximate_index(novel_task) -> None:
    support, query = novel_task
    keep = np.ones(support.num_rows, dtype=bool)
    keep[np.flatnonzero(support.labels == 0)[:3]] = False
    prediction = predict(support.take_rows(keep), query, options=PredictOptions(index="auto", exact_limit=1000))
    assert prediction.index == "hnsw"
    assert accuracy(prediction, query)[0] > 80.0
    assert np.all((prediction.confidence > 0) & (prediction.confidence <= 1))


def test_predict_cli_csv_and_json(task_files, tmp_path: Path) -> None:
    support, query = task_files
    out = tmp_path / "pred.csv"
    result = invoke("predict", "--support", support, "--query", query, "--output", out)
    assert result.exit_code == 0, result.stderr
    assert "accuracy" in result.stdout and "temperature" not in result.stderr
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["row", "text", "class", "confidence"]
    assert len(rows) > 5000 and rows[0]["row"] == "0"
    out_json = tmp_path / "pred.json"
    result = invoke("predict", "--support", support, "--query", query, "--output", out_json, "--layers", 0, "-q")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out_json.read_text())
    assert doc["temperature"] == 0.1 and len(doc["predictions"]) == len(rows)


def test_predict_split_selection_keeps_file_row_numbers(banking77_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    args = ["predict", "--support", banking77_path, "--query", banking77_path, "--output", out, "-q"]
    result = invoke(*args, "--support-split", "val", "--query-split", "val", "--layers", 0)
    assert result.exit_code == 0, result.stderr
    rows = [int(r["row"]) for r in csv.DictReader(out.open())]
    assert rows == sorted(rows) and rows[-1] > len(rows)


def _write(fs: FeatureSet, path: Path) -> Path:
    return write_canonical(fs, path)


def test_bad_inputs_are_one_line_errors_and_write_nothing(synthetic: FeatureSet, tmp_path: Path) -> None:
    good = _write(synthetic, tmp_path / "good.h5")
    out = tmp_path / "out.csv"
    narrow = dataclasses.replace(synthetic, features=np.ascontiguousarray(synthetic.features[:, :16]), base_mean=None)
    cases = {
        "dimension mismatch": _write(narrow, tmp_path / "narrow.h5"),
    }
    result = invoke("predict", "--support", good, "--query", cases["dimension mismatch"], "--output", out)
    assert_one_line_error(result, "dimension mismatch")
    bad = synthetic.features.copy()
    bad[3, 0] = np.nan
    nonfinite = _write(dataclasses.replace(synthetic, features=bad), tmp_path / "nan.h5")
    assert_one_line_error(invoke("predict", "--support", good, "--query", nonfinite, "--output", out), "NaN")
    result = invoke("predict", "--support", good, "--query", good, "--output", good / "o.csv")
    assert_one_line_error(result, "Not a directory")
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as handle:
        handle["features"] = np.zeros((0, synthetic.dim), np.float32)
        handle["labels"] = np.zeros(0, np.int64)
    assert_one_line_error(invoke("predict", "--support", good, "--query", empty, "--output", out), "no rows")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.h5", "good.h5", "nan.h5", "narrow.h5"]


def test_library_errors_for_empty_query_and_empty_support_class(synthetic: FeatureSet) -> None:
    from diffshot.errors import DiffshotError

    empty_query = synthetic.take_rows(np.zeros(synthetic.num_rows, dtype=bool))
    with pytest.raises(DiffshotError, match="zero rows"):
        predict(synthetic, empty_query)
    no_class0 = synthetic.take_rows(synthetic.labels != 0)
    with pytest.raises(DiffshotError, match="has zero rows"):
        predict(no_class0, synthetic)


def test_config_feeds_predict(task_files, tmp_path: Path) -> None:
    support, query = task_files
    config = tmp_path / "c.toml"
    config.write_text("[diffusion]\nlayers = 0\nshift = false\n")
    out = tmp_path / "a.csv"
    result = invoke("predict", "--support", support, "--query", query, "--output", out, "--config", config)
    assert result.exit_code == 0, result.stderr
    assert "layers 0" in result.stdout
    config.write_text("[diffusion]\nlayers = 'six'\n")
    result = invoke("predict", "--support", support, "--query", query, "--output", out, "--config", config)
    assert_one_line_error(result, "diffusion.layers")


def test_dropped_rows_keep_file_row_numbers(synthetic: FeatureSet, tmp_path: Path) -> None:
    bad = synthetic.features.copy()
    bad[[2, 5], 1] = np.inf
    path = write_canonical(dataclasses.replace(synthetic, features=bad), tmp_path / "q.h5")
    good = write_canonical(synthetic, tmp_path / "s.h5")
    out = tmp_path / "o.csv"
    args = ["predict", "--support", good, "--query", path, "--output", out, "--drop-nonfinite", "-q"]
    result = invoke(*args, "--query-split", "novel")
    assert result.exit_code == 0, result.stderr
    assert "dropped 2 rows" in result.stderr
    rows = [int(r["row"]) for r in csv.DictReader(out.open())]
    novel = np.flatnonzero(np.isin(synthetic.labels, synthetic.classes_in_split("novel")))
    assert rows == [r for r in novel.tolist() if r not in (2, 5)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cuda_without_gpu_is_an_error_as_in_evaluate(synthetic: FeatureSet, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    path = write_canonical(synthetic, tmp_path / "s.h5")
    result = invoke("predict", "--support", path, "--query", path, "--output", tmp_path / "o.csv", "--device", "cuda")
    assert_one_line_error(result, "no CUDA GPU")
    assert not (tmp_path / "o.csv").exists()
    assert_one_line_error(invoke("evaluate", path, "--episodes", 5, "--device", "cuda"), "no CUDA GPU")


def test_query_file_without_labels_is_predicted(tmp_path: Path, synthetic) -> None:
    """A query file with no `labels` dataset (rows to label) is accepted; no accuracy is claimed."""
    novel = synthetic.select_split("novel")
    support = write_canonical(novel.take_rows(np.arange(novel.num_rows) % 30 < 5), tmp_path / "support.h5")
    query = tmp_path / "query.h5"
    with h5py.File(query, "w") as handle:
        handle.create_dataset("features", data=novel.features[np.arange(novel.num_rows) % 30 >= 5])
    out = tmp_path / "pred.csv"
    result = CliRunner().invoke(
        app, ["predict", "--support", str(support), "--query", str(query), "--output", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    lines = out.read_text().strip().splitlines()
    assert len(lines) == 1 + 20 * 25
    assert "accuracy" not in result.stdout.lower()


def assert_same_labels_up_to_ties(scores: torch.Tensor, labels: np.ndarray) -> None:
    """The argmax of dense scores [nq, ways] equals ``labels`` wherever the best two scores are not tied (1e-4)."""
    top2 = scores.topk(2, dim=-1).values
    ties = ((top2[:, 0] - top2[:, 1]).abs() <= 1e-4 * top2[:, 0].abs().clamp_min(1e-6)).numpy()
    differ = scores.argmax(-1).numpy() != labels
    assert not (differ & ~ties).any(), f"{int((differ & ~ties).sum())} of {differ.size} queries differ without a tie"


def test_predict_is_the_diffusion_method_on_one_task(novel_task) -> None:
    """predict's sparse FAISS path labels the queries as evaluate's dense diffusion code path run on that one task."""
    from diffshot.episodes import Episodes
    from diffshot.methods import get_method
    from diffshot.methods._graph import episode_graph_size

    support, query = novel_task
    prediction = predict(support, query)
    points = torch.from_numpy(np.concatenate([support.features, query.features]))
    centre = torch.from_numpy(support.centring_mean()[0])
    task = Episodes(points[None], torch.from_numpy(support.labels)[None], support.num_classes, centre)
    method = get_method("diffusion")
    assert episode_graph_size(task, "auto", "auto") == (prediction.details["n_top"], prediction.details["sigma"])
    assert_same_labels_up_to_ties(method.score(task, method.parse())[0], prediction.labels)


@pytest.mark.parametrize("name", ["simpleshot", "labelprop"])
def test_other_methods_label_one_task_as_their_episode_code_path(synthetic: FeatureSet, name: str) -> None:
    """simpleshot and labelprop (conjugate gradients on the sparse graph) agree with their dense episode path."""
    from diffshot.episodes import Episodes
    from diffshot.methods import get_method

    novel, _ = select_rows(synthetic, "novel")
    rng = np.random.default_rng(1)
    chosen = np.zeros(novel.num_rows, dtype=bool)
    for c in range(novel.num_classes):
        chosen[rng.choice(np.flatnonzero(novel.labels == c), 3, replace=False)] = True
    support, query = novel.take_rows(chosen), novel.take_rows(~chosen)
    prediction = predict(support, query, name)
    points = torch.from_numpy(np.concatenate([support.features, query.features])).double()
    centre = torch.from_numpy(support.centring_mean()[0]).double()
    task = Episodes(points[None], torch.from_numpy(support.labels)[None], support.num_classes, centre)
    method = get_method(name)
    assert_same_labels_up_to_ties(method.score(task, method.parse())[0], prediction.labels)
    assert float(np.mean(prediction.labels == query.labels)) > 0.5


def test_estimated_shares_label_one_large_task_with_absent_classes(novel_task) -> None:
    """assign = estimated on one task: a pool from 6 of the 30 classes is labelled as the dense episode path does."""
    from diffshot.episodes import Episodes
    from diffshot.methods import get_method

    support, query = novel_task
    present = np.isin(query.labels, np.arange(6))
    pool = query.take_rows(present)
    run = ("diffusion", {"assign": "estimated"})
    prediction = predict(support, pool, run)
    assert prediction.details["decision"].startswith("estimated shares")
    points = torch.from_numpy(np.concatenate([support.features, pool.features]))
    centre = torch.from_numpy(support.centring_mean()[0])
    task = Episodes(points[None], torch.from_numpy(support.labels)[None], support.num_classes, centre)
    method = get_method("diffusion")
    assert_same_labels_up_to_ties(method.score(task, method.parse(run[1]))[0], prediction.labels)
    nearest = predict(support, pool, ("diffusion", {"assign": "nearest"}))
    simple = predict(support, pool, "simpleshot")
    right = [float(np.mean(p.labels == pool.labels)) for p in (prediction, nearest, simple)]
    assert right[0] > right[2] > right[1], right  # the nearest decision loses absent classes' prototypes to the pool


def split_task(fs: FeatureSet, per_class: int = 3) -> tuple[FeatureSet, FeatureSet]:
    """``per_class`` support rows of every novel class of ``fs``; the other novel rows are the queries."""
    novel, _ = select_rows(fs, "novel")
    rng = np.random.default_rng(1)
    chosen = np.zeros(novel.num_rows, dtype=bool)
    for c in range(novel.num_classes):
        chosen[rng.choice(np.flatnonzero(novel.labels == c), per_class, replace=False)] = True
    return novel.take_rows(chosen), novel.take_rows(~chosen)


def test_a_method_with_the_large_task_hook_predicts_in_memory_and_streamed(synthetic: FeatureSet, tmp_path) -> None:
    """The suite's own ``testguess`` declares ``large_task`` and nothing else: predict runs it on both paths."""
    import contextlib

    from diffshot.ops.classify import prototypes
    from diffshot.run.stream import open_query

    support, query = split_task(synthetic)
    protos = prototypes(torch.from_numpy(support.features), torch.from_numpy(support.labels), support.num_classes)
    expected = torch.sin(2e3 * torch.from_numpy(query.features) @ protos.T).argmax(-1).numpy()
    in_memory = predict(support, query, ("testguess", {"scale": 2e3}))
    path = write_canonical(query, tmp_path / "query.h5")
    with contextlib.ExitStack() as stack:
        streamed = predict(support, open_query(stack, path, block_rows=7), ("testguess", {"scale": 2e3}))
    assert np.array_equal(in_memory.labels, expected) and np.array_equal(streamed.labels, expected)
    assert streamed.details == {"scale": 2e3, "block_rows": 7} and in_memory.details == {"scale": 2e3}
    support_path = write_canonical(support, tmp_path / "support.h5")
    outputs = []
    for extra in ([], ["--block-rows", "7"]):
        out = tmp_path / f"p{len(outputs)}.csv"
        result = invoke("predict", "--support", support_path, "--query", path, "-o", out, "-m", "testguess", *extra)
        assert result.exit_code == 0, result.output
        outputs.append([row["class"] for row in csv.DictReader(out.open(encoding="utf-8"))])
    assert outputs[0] == outputs[1] and len(outputs[0]) == query.num_rows


@pytest.mark.parametrize("extra", [[], ["--block-rows", "1000"]])
@pytest.mark.parametrize("assign", ["balanced"])
def test_an_episode_only_parameter_is_a_usage_error_on_every_path(synthetic, tmp_path, assign, extra) -> None:
    """``--set diffusion.assign=balanced``: exit 2 naming the parameter, in memory and streamed alike
    (``estimated``, the default, labels one large task: test_estimated_shares_label_one_large_task_...)."""
    support, query = split_task(synthetic)
    support_path, query_path = write_canonical(support, tmp_path / "s.h5"), write_canonical(query, tmp_path / "q.h5")
    out = tmp_path / "p.csv"
    setting = f"diffusion.assign={assign}"
    result = invoke("predict", "--support", support_path, "--query", query_path, "-o", out, "--set", setting, *extra)
    assert result.exit_code == 2
    assert_one_line_error(result, f"parameter diffusion.assign: {assign} is for episodes")
    assert not out.exists()
