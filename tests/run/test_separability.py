"""diffshot separability: batched quantities against a direct per-episode numpy computation, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diffshot.cli import app
from diffshot.episodes import EpisodeSpec, build_pool, sample_episodes
from diffshot.errors import DiffshotError, UsageError
from diffshot.features import FeatureSet, load_features
from diffshot.plot import render
from diffshot.results import QUANTITIES
from diffshot.run.evaluate import evaluate
from diffshot.run.separability import episode_view, measure, parse_layers, pca_2d

DEMO = Path(__file__).resolve().parents[2] / "features" / "synthetic-demo.h5"
runner = CliRunner()


@pytest.fixture(scope="module")
def demo() -> FeatureSet:
    return load_features(DEMO)


def direct(fs: FeatureSet, spec: EpisodeSpec, episode: int, layers: int, n_top: int, sigma: int) -> list[list[float]]:
    """DESIGN.md's recipe and the quantities for one episode, in float64 numpy with explicit loops."""
    novel = fs.select_split("novel")
    idx = sample_episodes(build_pool(novel.labels, spec), spec, 0, episode, 1)
    labels = np.concatenate([idx.support_labels[0], idx.query_labels[0]])
    x = novel.features[idx.rows[0]].astype(np.float64) - fs.centring_mean()[0]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ns = spec.num_support
    x[ns:] += x[:ns].mean(axis=0) - x[ns:].mean(axis=0)
    n = len(x)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    w = np.zeros((n, n))
    for i in range(n):
        ranked = np.sort(d[i])
        for j in range(n):
            if d[i, j] < ranked[n_top - 1]:
                w[i, j] = np.exp(-((d[i, j] / ranked[sigma - 1]) ** 2))
    deg = w.sum(axis=1)
    w = w / np.sqrt(deg[:, None] * deg[None, :])
    w = (w + w.T) / 2
    lap = np.diag(w.sum(axis=1)) - w
    out = []
    for t in range(layers + 1):
        if t:
            x = x - 0.5 * lap @ x
        dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        inter = min(dist[i, j] for i in range(n) for j in range(n) if labels[i] != labels[j])
        diameter = max(dist[labels == c][:, labels == c].max() for c in range(spec.ways))
        intra = [dist[i, j] for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]]
        protos = np.stack([x[:ns][labels[:ns] == c].mean(axis=0) for c in range(spec.ways)])
        predicted = np.argmin(((x[ns:, None] - protos[None]) ** 2).sum(-1), axis=1)
        accuracy = 100.0 * np.mean(predicted == labels[ns:])
        out.append([inter, diameter, float(np.mean(intra)), inter / diameter, accuracy])
    return out


def test_batched_quantities_match_a_direct_computation(demo: FeatureSet) -> None:
    spec = EpisodeSpec(5, 1, 15)
    layers = (0, 1, 3, 6)
    result = measure(demo, spec, layers, episodes=5, seed=0, chunk_size=2)
    assert result.params["n_top"] == 8 and result.params["sigma"] == 4
    for e in range(5):
        expected = direct(demo, spec, e, 6, 8, 4)
        for column, t in enumerate(layers):
            got = [result.values[q][e, column] for q in QUANTITIES]
            assert got == pytest.approx(expected[t], rel=2e-5, abs=2e-6), (e, t)


def test_layer_zero_is_the_undiffused_features(demo: FeatureSet) -> None:
    spec = EpisodeSpec(5, 2, 10)
    view = episode_view(demo, spec, index=7, layer=0)
    assert np.array_equal(view.after, view.before)
    novel = demo.select_split("novel")
    idx = sample_episodes(build_pool(novel.labels, spec), spec, 0, 7, 1)
    x = novel.features[idx.rows[0]] - demo.centring_mean()[0]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    x[10:] += x[:10].mean(axis=0) - x[10:].mean(axis=0)
    assert np.allclose(view.before, x, atol=1e-6)
    assert view.support.sum() == 10 and list(view.labels[:10]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    coords = pca_2d(view.before)
    assert coords.shape == (60, 2) and np.allclose(coords.mean(axis=0), 0.0, atol=1e-6)


def test_accuracy_per_layer_is_evaluate_diffusion(demo: FeatureSet) -> None:
    spec = EpisodeSpec(5, 1, 15)
    result = measure(demo, spec, (0, 4), episodes=80, seed=5)
    for column, t in enumerate((0, 4)):
        ev = evaluate(demo, [("diffusion", {"layers": t, "assign": "nearest"})], spec, episodes=80, seed=5)
        same = np.mean(ev.results[0].accuracies == result.values["accuracy"][:, column])
        assert same >= 0.98 and result.summary("accuracy")[column].mean == pytest.approx(
            ev.results[0].summary.mean, abs=0.1
        )


def test_parse_layers() -> None:
    assert parse_layers("0..3") == (0, 1, 2, 3)
    assert parse_layers("6,0,2,2") == (0, 2, 6)
    assert parse_layers("0..2,8") == (0, 1, 2, 8)
    for bad in ("", "a", "3..1", "-1", "1..x"):
        with pytest.raises(DiffshotError, match=r"^layers="):
            parse_layers(bad)


def test_cli_table_json_and_figures(tmp_path: Path) -> None:
    fig, out = tmp_path / "sep.png", tmp_path / "sep.json"
    args = ["separability", str(DEMO), "--episodes", "40", "--layers", "0..8", "--plot", str(fig)]
    done = runner.invoke(app, [*args, "--show-episode", "2", "--output", str(out)])
    assert done.exit_code == 0, done.stderr
    assert "ratio" in done.stdout and "mean ratio peaks at t =" in done.stdout
    document = json.loads(out.read_text())
    assert document["kind"] == "diffshot-separability" and "true labels" in document["points"]
    assert [e["layer"] for e in document["layers"]] == list(range(9))
    assert document["params"]["n_top"] == 8 and document["protocol"]["episodes"] == 40
    assert fig.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "sep-episode2.png").read_bytes()[:4] == b"\x89PNG"
    _, drawn = render([out])
    assert drawn.data["ratio"]["mean"] == [e["ratio"]["mean"] for e in document["layers"]]
    assert drawn.data["accuracy"]["ci95"] == [e["accuracy"]["ci95"] for e in document["layers"]]
    ratios = [e["ratio"]["mean"] for e in document["layers"]]
    assert drawn.data["ratio"]["peak"] == document["peaks"]["ratio"] == int(np.argmax(ratios))
    svg = tmp_path / "sep.svg"
    done = runner.invoke(app, [*args[:-1], str(svg), "--format", "json", "--layers", "0,3"])
    assert done.exit_code == 0 and json.loads(done.stdout)["peaks"]["accuracy"] in (0, 3)
    assert b"<svg" in svg.read_bytes()[:2000]


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    cases = [
        (["--layers", "x"], "--layers"),
        (["--show-episode", "1"], "needs --plot"),
        (["--plot", str(tmp_path / "a.gif")], "use .png, .svg or .pdf"),
        (["--format", "csv"], "choose table or json"),
        (["--step-size", "-1"], "step_size"),
    ]
    for extra, message in cases:
        done = runner.invoke(app, ["separability", str(DEMO), "--episodes", "3", *extra])
        assert done.exit_code in (1, 2) and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_banking77_layer_six_matches_evaluate(banking77: FeatureSet) -> None:
    spec = EpisodeSpec(5, 1, 15)
    result = measure(banking77, spec, (0, 6), episodes=300, seed=0)
    ev = evaluate(banking77, [("diffusion", {"layers": 6, "assign": "nearest"})], spec, episodes=300, seed=0)
    assert result.summary("accuracy")[1].mean == pytest.approx(ev.results[0].summary.mean, abs=0.05)
    ratio = result.summary("ratio")
    assert ratio[0].mean > ratio[1].mean  # measured: the paper's min/max ratio falls on BANKING77 (README)


def test_layer_t_accuracy_is_evaluate_at_layers_t_even_where_the_step_is_reduced(synthetic: FeatureSet) -> None:
    """separability steps with evaluate's checked τ: where τ·λ_max > 1.9 it is reduced in both, with one notice."""
    spec = EpisodeSpec(5, 1, 5)
    with pytest.warns(UserWarning, match="was reduced in some episodes"):
        result = measure(synthetic, spec, [0, 3], episodes=40, params={"step_size": 2.0})
    with pytest.warns(UserWarning, match="was reduced in some episodes"):
        layer3 = evaluate(
            synthetic, [("diffusion", {"step_size": 2.0, "layers": 3, "assign": "nearest"})], spec, episodes=40
        )
    accuracy = result.values["accuracy"]
    assert np.allclose(accuracy[:, 1], layer3.results[0].accuracies)


def test_a_method_with_the_layerwise_hook_runs_separability(synthetic: FeatureSet) -> None:
    """The suite's ``testguess`` declares ``layerwise`` (CL2N, then contractions towards the mean): its layers keep
    every nearest-prototype decision, so each layer's accuracy is SimpleShot's; a method without it is refused."""
    spec = EpisodeSpec(5, 1, 5)
    result = measure(synthetic, spec, [0, 1, 4], episodes=30, method="testguess")
    simpleshot = evaluate(synthetic, ["simpleshot"], spec, episodes=30).results[0].accuracies
    for column in range(3):
        assert np.allclose(result.values["accuracy"][:, column], simpleshot)
    assert np.allclose(result.values["ratio"][:, 0], result.values["ratio"][:, 2], rtol=1e-4)
    assert result.params == {}
    with pytest.raises(UsageError, match="method simpleshot has no layer-by-layer view; separability runs diffusion"):
        measure(synthetic, spec, [0], episodes=2, method="simpleshot")


def test_cli_runs_a_layerwise_method_by_name(tmp_path: Path) -> None:
    """``separability -m testguess`` steps the method's own layers (contractions: every layer keeps the
    nearest-prototype decisions, so accuracy is the same at each); a method without the hook exits 2."""
    out = tmp_path / "guess.json"
    args = ["separability", str(DEMO), "-m", "testguess", "--episodes", "20", "--layers", "0..3", "-o", str(out)]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["method"] == "testguess" and document["params"] == {}
    accuracy = [e["accuracy"]["mean"] for e in document["layers"]]
    assert len(accuracy) == 4 and len(set(accuracy)) == 1
    diffusion = runner.invoke(app, [*args[:2], "--episodes", "20", "--layers", "0..3", "--format", "json"])
    assert json.loads(diffusion.stdout)["method"] == "diffusion" and "n_top" in json.loads(diffusion.stdout)["params"]
    same = runner.invoke(app, [*args[:2], "--episodes", "5", "--layers", "2", "--set", "n_top=8", "--format", "json"])
    assert same.exit_code == 0 and json.loads(same.stdout)["params"]["n_top"] == 8
    cases = [
        (["-m", "simpleshot"], "method simpleshot has no layer-by-layer view; separability runs diffusion"),
        (["-m", "testguess", "--set", "scale=5"], "separability takes only no parameters of testguess; got scale"),
        (["--set", "n_top=8", "--n-top", "5"], "--set n_top: also given as its own option"),
        (["--set", "ptmap.lam=1"], "expected PARAM=VALUE (or diffusion.PARAM=VALUE)"),
    ]
    for extra, message in cases:
        refused = runner.invoke(
            app, ["separability", str(DEMO), "--episodes", "3", "-o", str(tmp_path / "x.json"), *extra]
        )
        assert refused.exit_code == 2 and message in refused.stderr, (extra, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()
