"""λ_max estimators of the diffusion Laplacian and the stabilised step size (issue 14, item 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffshot.errors import DiffshotError
from diffshot.ops.classify import prototypes, squared_distances
from diffshot.ops.diffusion import diffuse_ as diffuse_sparse_
from diffshot.ops.graph import episode_laplacian
from diffshot.ops.knn import knn_graph
from diffshot.ops.spectrum import (
    laplacian_upper_bound,
    largest_eigenvalue_sparse,
    power_iteration,
    stable_step_batched,
    stable_step_size,
    stable_step_sparse,
)
from tests.reference import gershgorin_bound, largest_eigenvalue_batched, sparse_laplacian


def random_points(n: int, d: int, seed: int) -> np.ndarray:
    """Unit-norm Gaussian points [n, d], float32."""
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sparse_lap(x: np.ndarray, n_top: int = 8, sigma: int = 4) -> torch.Tensor:
    """The sparse Laplacian `predict` builds for the points ``x``."""
    dist, ids = knn_graph(x, max(n_top, sigma))
    return sparse_laplacian(dist, ids, n_top, sigma)


def exact(lap: torch.Tensor) -> float:
    """λ_max by a dense float64 eigendecomposition."""
    return float(torch.linalg.eigvalsh(lap.to_dense().double())[-1])


@pytest.mark.parametrize(("n", "d", "seed"), [(60, 8, 0), (300, 32, 1), (500, 64, 2)])
def test_sparse_estimates_bracket_the_exact_eigenvalue(n: int, d: int, seed: int) -> None:
    lap = sparse_lap(random_points(n, d, seed))
    truth = exact(lap)
    mu = power_iteration(lap, iterations=300, tol=1e-7)
    assert mu <= truth * (1 + 1e-5)
    assert mu == pytest.approx(truth, rel=1e-2)
    bound = float(laplacian_upper_bound(lap))
    assert truth <= bound * (1 + 1e-5) <= float(gershgorin_bound(lap)) * (1 + 1e-5)
    estimate = largest_eigenvalue_sparse(lap)
    assert truth * (1 - 1e-2) <= estimate <= bound * (1 + 1e-6)


def test_matvec_callable_gives_the_same_power_estimate() -> None:
    lap = sparse_lap(random_points(200, 16, 3))
    from_tensor = power_iteration(lap, seed=5)
    from_matvec = power_iteration(lambda v: lap @ v, seed=5, size=200)
    assert from_matvec == pytest.approx(from_tensor, rel=1e-6)
    assert largest_eigenvalue_sparse(lambda v: lap @ v, seed=5, size=200) == pytest.approx(1.1 * from_tensor, rel=1e-6)
    with pytest.raises(DiffshotError, match="needs the size"):
        power_iteration(lambda v: lap @ v)


def test_batched_dense_estimates_match_eigvalsh() -> None:
    x = torch.from_numpy(random_points(6 * 80, 32, 4)).view(6, 80, 32)
    lap = episode_laplacian(x, 8, 4).double()
    truth = torch.linalg.eigvalsh(lap)[:, -1]
    assert torch.allclose(largest_eigenvalue_batched(lap), truth)
    power = largest_eigenvalue_batched(lap, "power", iterations=500)
    assert torch.all(power <= truth * (1 + 1e-9))
    assert torch.allclose(power, truth, rtol=1e-2)
    bound = largest_eigenvalue_batched(lap, "bound")
    assert torch.all(truth <= bound + 1e-9)
    assert torch.all(bound <= gershgorin_bound(lap) + 1e-9)
    with pytest.raises(DiffshotError, match="unknown eigenvalue method"):
        largest_eigenvalue_batched(lap, "qr")


def test_upper_bound_refuses_a_matrix_that_is_not_a_laplacian() -> None:
    with pytest.raises(DiffshotError, match="positive off-diagonal"):
        laplacian_upper_bound(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    with pytest.raises(DiffshotError, match="do not sum to zero"):
        laplacian_upper_bound(torch.tensor([[2.0, -1.0], [-1.0, 1.0]]))


def test_star_graph_eigenvalue_is_the_hub_degree_plus_one() -> None:
    leaves = 50
    w = torch.zeros(leaves + 1, leaves + 1, dtype=torch.float64)
    w[0, 1:] = w[1:, 0] = 1.0
    lap = torch.diag(w.sum(dim=1)) - w
    assert largest_eigenvalue_sparse(lap.to_sparse_csr()) == pytest.approx(leaves + 1, rel=1e-6)
    assert float(laplacian_upper_bound(lap)) == pytest.approx(leaves + 1, rel=1e-9)


def test_step_is_unchanged_when_stable_and_reduced_when_not() -> None:
    assert stable_step_size(0.5, 1.5) == 0.5
    assert stable_step_size(0.5, 3.8) == 0.5
    assert stable_step_size(0.5, 20.4) == pytest.approx(1.9 / 20.4)
    assert stable_step_size(0.5, 20.4, limit=1.0) == pytest.approx(1.0 / 20.4)
    assert stable_step_size(0.5, 2.5, limit=1.0) == pytest.approx(0.4)
    assert stable_step_size(0.5, 0.0) == 0.5
    steps = stable_step_size(0.5, torch.tensor([1.0, 4.0, 10.0]), limit=1.0)
    assert torch.allclose(steps, torch.tensor([0.5, 0.25, 0.1]))
    for bad_limit in (0.0, 2.0, 3.0):
        with pytest.raises(DiffshotError, match="stability limit"):
            stable_step_size(0.5, 3.0, limit=bad_limit)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(DiffshotError, match="step size"):
            stable_step_size(bad, 3.0)
    with pytest.raises(DiffshotError, match="finite"):
        stable_step_size(0.5, float("inf"))


def test_sparse_stable_step_keeps_tau_when_the_bound_certifies_it() -> None:
    lap = sparse_lap(random_points(300, 32, 6))
    bound = float(laplacian_upper_bound(lap))
    assert stable_step_sparse(lap, 1.8 / bound) == (pytest.approx(1.8 / bound), pytest.approx(bound))
    tau, lam = stable_step_sparse(lap, 2.0)
    assert lam == pytest.approx(bound) and tau == pytest.approx(1.9 / bound)
    assert tau * exact(lap) <= 1.9
    tau, lam = stable_step_sparse(lap, 1.0, limit=1.0, power=True)
    assert exact(lap) * (1 - 1e-3) <= lam <= bound * (1 + 1e-6)
    assert tau * exact(lap) <= 1.0 + 1e-6


def test_batched_stable_step_uses_bounds_then_eigvalsh() -> None:
    x = torch.from_numpy(random_points(8 * 60, 16, 7)).view(8, 60, 16)
    lap = episode_laplacian(x, 8, 4).double()
    truth = torch.linalg.eigvalsh(lap)[:, -1]
    gersh = gershgorin_bound(lap)
    bound = laplacian_upper_bound(lap)
    tau_small = 0.99 * 1.9 / float(gersh.max())
    steps, lam = stable_step_batched(lap, tau_small)
    assert torch.all(steps == tau_small) and torch.allclose(lam, gersh)
    for tau, limit in ((0.5, 1.0), (0.9, 1.9), (2.0, 1.9)):
        steps, lam = stable_step_batched(lap, tau, limit)
        assert torch.all(lam >= truth - 1e-9)
        assert torch.all(steps * truth <= limit + 1e-9)
        assert torch.allclose(steps, torch.clamp(limit / lam, max=tau))
    steps, lam = stable_step_batched(lap, 2.0, 1.9)
    assert torch.allclose(lam, truth)
    steps, lam = stable_step_batched(lap, 0.5, 1.0)
    middle = (0.5 * gersh > 1.0) & (0.5 * bound <= 1.0)
    assert torch.allclose(lam[middle], bound[middle])


def hub_classes(classes: int = 4, per_class: int = 100, dim: int = 64, shots: int = 5) -> tuple[np.ndarray, ...]:
    """Separable Gaussian classes around centres at radius 0.7 plus one point at the origin, every point's neighbour.

    Points lie at distance ≈ 1.2 from the origin and ≈ 1.4 from each other, so the origin is among
    the 7 nearest neighbours of nearly all of them: a hub with degree ≈ 0.04·n in W̃.
    Returns points (support first, hub last), labels (support then queries) and the support count.
    """
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((classes, dim))
    centres *= 0.7 / np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), per_class)
    points = centres[labels] + rng.standard_normal((labels.size, dim)) / np.sqrt(dim)
    support = np.concatenate([np.flatnonzero(labels == c)[:shots] for c in range(classes)])
    rest = np.setdiff1d(np.arange(labels.size), support)
    x = np.concatenate([points[support], points[rest], np.zeros((1, dim))]).astype(np.float32)
    return x, np.concatenate([labels[support], labels[rest]]), np.int64(support.size)


def test_stabilised_step_recovers_nearest_centroid_accuracy_where_the_raw_step_diverges() -> None:
    x, labels, ns = hub_classes()
    lap = sparse_lap(x)
    lam = largest_eigenvalue_sparse(lap)
    assert 0.5 * exact(lap) > 2  # the paper's τ = 0.5 is past the stability limit here

    def accuracy(points: torch.Tensor) -> float:
        protos = prototypes(points[:ns], torch.from_numpy(labels[:ns]), 4)
        predicted = squared_distances(points[ns:-1], protos).argmin(-1).numpy()
        return float(100.0 * np.mean(predicted == labels[ns:]))

    points = torch.from_numpy(x)
    centroid = accuracy(points)
    raw = diffuse_sparse_(points.clone(), lap, 0.5, 6)
    tau, bound = stable_step_sparse(lap, 0.5)
    assert bound >= exact(lap) and lam <= bound * (1 + 1e-6)
    stable = diffuse_sparse_(points.clone(), lap, tau, 6)
    assert centroid >= 99.0
    assert raw.abs().max() > 1e3 * points.abs().max()
    assert accuracy(raw) < 50.0
    assert tau * exact(lap) <= 1.9
    assert float(stable.abs().max()) <= float(points.abs().max()) + 1e-5
    assert accuracy(stable) >= centroid - 1.0


def separated_classes(queries: int, seed: int = 0):
    """Well-separated Gaussian classes (20 of them, 64-d, 100 support rows each) as support and query sets."""
    from diffshot.features import make_featureset

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, 64))
    support_labels, query_labels = np.repeat(np.arange(20), 100), rng.integers(0, 20, queries)
    names = [f"c{c:02d}" for c in range(20)]

    def rows(labels: np.ndarray) -> np.ndarray:
        return (centres[labels] + rng.standard_normal((labels.size, 64))).astype(np.float32)

    support = make_featureset(rows(support_labels), support_labels, class_names=names, source="<support>")
    return support, make_featureset(rows(query_labels), query_labels, class_names=names, source="<query>")


def test_predict_keeps_its_step_stable_where_the_raw_step_diverges(monkeypatch) -> None:
    """Where τ·λ_max > 2 (hub points of a large kNN graph), predict reduces τ once, records it, and stays accurate.

    With the raw step (the code before the fix, forced here) the same run falls 5 points or more below it.
    """
    import diffshot.ops.spectrum as spectrum
    from diffshot.run.predict import predict

    support, query = separated_classes(5_000)
    method = ("diffusion", {"layers": 60})
    centroid = predict(support, query, "simpleshot")
    assert float(np.mean(centroid.labels == query.labels)) >= 0.99
    with pytest.warns(UserWarning, match="was reduced in this graph") as caught:
        stable = predict(support, query, method)
    assert len([w for w in caught if "reduced" in str(w.message)]) == 1
    tau, bound = stable.details["step_size"], stable.details["lambda_max_bound"]
    assert 0.5 * bound > 2.0 and tau < 0.5 and tau * bound <= 1.9 + 5e-5 * tau + 1e-9  # bound is rounded to 4 places
    assert float(np.mean(stable.labels == query.labels)) >= float(np.mean(centroid.labels == query.labels)) - 0.01
    monkeypatch.setattr(spectrum, "stable_step_sparse", lambda lap, step: (step, float("nan")))
    raw = predict(support, query, method)
    assert float(np.mean(raw.labels == query.labels)) < float(np.mean(stable.labels == query.labels)) - 0.05
