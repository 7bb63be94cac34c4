"""The spectrum of the diffusion Laplacian, and a step size that keeps x ← x − τ·L·x stable.

One explicit step multiplies the component of x along an eigenvector of L (eigenvalue λ ≥ 0) by
1 − τλ. The step is stable (no component grows) only while τ·λ_max ≤ 2, and it is a monotone
smoothing (no component flips sign, high frequencies are damped the most) while τ·λ_max ≤ 1.
For L = diag(W̃·1) − W̃ with a symmetric W̃ ≥ 0, λ_max ≤ 2·max_i deg_i (Gershgorin), which is ≈ 2
on a regular kNN graph but grows with the hub points that large high-dimensional kNN graphs have.

Three estimates, in order of cost:

- :func:`laplacian_upper_bound`: max_i (d_i + Σ_j w_ij d_j / d_i) ≤ max over edges (d_i + d_j)
  ≤ 2·max_i d_i, a guaranteed upper bound from one sparse product (the Laplacian form is checked);
- :func:`power_iteration`: the Rayleigh quotient μ of a seeded power iteration, always ≤ λ_max;
  from a Gaussian start, P(μ < (1 − ε)·λ_max) ≤ 0.824·√n·(1 − ε)^(k − 1/2) after k products
  (Kuczyński & Woźniakowski, SIAM J. Matrix Anal. Appl. 13(4), 1992);
- ``torch.linalg.eigvalsh`` on dense episode Laplacians: exact (:func:`stable_step_batched`'s last resort).

:func:`stable_step_sparse` (``predict``'s graph) and :func:`stable_step_batched` (episodes) return
τ_eff = min(τ, 1.9 / U) with U ≥ λ_max guaranteed, so τ_eff·λ_max ≤ 1.9 < 2 on every graph; where
τ·U ≤ 1.9 already (all BANKING77 episodes measured) τ is unchanged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

from diffshot.errors import DiffshotError
from diffshot.lazy import torch

MatVec = Callable[["torch.Tensor"], "torch.Tensor"]

POWER_ITERATIONS = 40
POWER_TOL = 0.0
POWER_SAFETY = 1.1
STABLE_LIMIT = 1.9
LAPLACIAN_TOL = 1e-4
STEP_NOTICE = (
    "diffusion: the step τ = {tau:g} was reduced in {where}, so that τ·λ_max ≤ 1.9 "
    "(the explicit step x − τLx diverges once τ·λ_max ≥ 2)"
)


def _matvec(laplacian: torch.Tensor | MatVec) -> tuple[MatVec, int | None, torch.dtype, torch.device]:
    """A product v ↦ L·v, the size n when known, and the dtype and device to draw start vectors in."""
    if callable(laplacian) and not isinstance(laplacian, torch.Tensor):
        return laplacian, None, torch.float32, torch.device("cpu")
    lap = laplacian
    if lap.dim() != 2 or lap.shape[0] != lap.shape[1]:
        raise DiffshotError(f"the Laplacian must be a square [n, n] matrix, got shape {tuple(lap.shape)}")

    def product(v: torch.Tensor) -> torch.Tensor:
        return lap @ v

    return product, int(lap.shape[0]), lap.dtype, lap.device


def power_iteration(
    laplacian: torch.Tensor | MatVec,
    iterations: int = POWER_ITERATIONS,
    tol: float = POWER_TOL,
    seed: int = 0,
    size: int | None = None,
) -> float:
    """Rayleigh quotient μ ≤ λ_max of a seeded power iteration on a PSD L (sparse, dense or a matvec).

    Runs ``iterations`` products, or stops when μ changes by less than ``tol``·μ (0: never early, so the
    Kuczyński-Woźniakowski bound of the module docstring holds); ``size`` is n for a matvec.
    """
    product, n, dtype, device = _matvec(laplacian)
    n = n if n is not None else size
    if n is None:
        raise DiffshotError("power iteration on a matvec needs the size n")
    if n == 0:
        return 0.0
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn((n, 1), generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    v = v / v.norm()
    estimate = 0.0
    for _ in range(max(1, iterations)):
        w = product(v)
        current = float((v * w).sum())
        norm = float(w.norm())
        if norm == 0.0 or not math.isfinite(norm):
            return max(current, 0.0) if math.isfinite(current) else estimate
        converged = abs(current - estimate) <= tol * abs(current)
        estimate = current
        if converged:
            break
        v = w / norm
    return max(estimate, 0.0)


def _laplacian_parts(lap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrees d = diag(L) [n] and absolute off-diagonal row sums [n] of a dense or sparse L."""
    if lap.is_sparse or lap.layout != torch.strided:
        coo = lap.to_sparse_coo().coalesce() if lap.layout != torch.sparse_coo else lap.coalesce()
        rows, cols = coo.indices()
        values = coo.values()
        off = rows != cols
        n = lap.shape[0]
        degree = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, rows[~off], values[~off])
        off_abs = torch.zeros_like(degree).index_add_(0, rows[off], values[off].abs())
        if bool((values[off] > 0).any()):
            raise DiffshotError("not a graph Laplacian: a positive off-diagonal entry")
        return degree, off_abs
    degree = torch.diagonal(lap, dim1=-2, dim2=-1)
    off = lap - torch.diag_embed(degree)
    if bool((off > 0).any()):
        raise DiffshotError("not a graph Laplacian: a positive off-diagonal entry")
    return degree, off.abs().sum(dim=-1)


def laplacian_upper_bound(laplacian: torch.Tensor) -> torch.Tensor:
    """max_i (d_i + Σ_j w_ij·d_j / d_i) ≥ λ_max for L = D − W, W ≥ 0 symmetric; ≤ 2·max degree (Gershgorin).

    Why: |L| = D + W has the same spectral radius bound as D⁻¹(D + W)D, whose row sums these are,
    and ρ(L) ≤ ρ(|L|) (Perron-Frobenius). Rows of degree 0 are isolated points (eigenvalue 0).
    Dense input may be batched [E, n, n] (returns [E]); sparse input returns a scalar tensor.
    """
    lap = laplacian
    sparse = lap.is_sparse or lap.layout != torch.strided
    if sparse and lap.dim() != 2:
        raise DiffshotError(f"a sparse Laplacian must be [n, n], got shape {tuple(lap.shape)}")
    degree, off_abs = _laplacian_parts(lap)
    scale = degree.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(degree.dtype).tiny)
    if bool(((off_abs - degree).abs() > LAPLACIAN_TOL * scale).any()):
        raise DiffshotError("not a graph Laplacian: rows do not sum to zero")
    lap_d = (lap @ degree[:, None])[:, 0] if sparse else (lap @ degree[..., None])[..., 0]
    weighted = degree * degree - lap_d
    safe = degree.clamp_min(torch.finfo(degree.dtype).tiny)
    rows = torch.where(degree > 0, degree + weighted / safe, torch.zeros_like(degree))
    return torch.minimum(rows.amax(dim=-1), 2.0 * degree.amax(dim=-1))


def largest_eigenvalue_sparse(
    laplacian: torch.Tensor | MatVec,
    iterations: int = POWER_ITERATIONS,
    tol: float = POWER_TOL,
    seed: int = 0,
    safety: float = POWER_SAFETY,
    size: int | None = None,
) -> float:
    """λ_max of a (sparse) Laplacian for the stability condition τ·λ_max < 2: min(safety·μ, upper bound).

    μ is the power-iteration Rayleigh quotient (≤ λ_max); for a tensor L it is capped by the
    guaranteed :func:`laplacian_upper_bound`, so the result never exceeds that bound. A matvec gets
    ``safety``·μ only (give ``size``). With the default 40 products, safety 1.1 and a step limit
    τ·λ ≤ 1 in :func:`stable_step_size`, the step can only become unstable if μ < λ_max / 2.2, which
    by Kuczyński & Woźniakowski has probability ≤ 0.824·√n·0.545^39.5 (≤ 1.1e-7 for n = 10⁷).
    """
    if not safety >= 1.0:
        raise DiffshotError(f"the safety factor must be at least 1, got {safety}")
    mu = power_iteration(laplacian, iterations, tol, seed, size)
    estimate = safety * mu
    if isinstance(laplacian, torch.Tensor):
        estimate = min(estimate, float(laplacian_upper_bound(laplacian)))
    return estimate


def stable_step_size(
    step_size: float, lambda_max: float | torch.Tensor, limit: float = STABLE_LIMIT
) -> float | torch.Tensor:
    """The step τ_eff = min(τ, limit / λ_max), so that τ_eff·λ_max ≤ limit < 2 (the explicit step's stability).

    Give an upper bound on λ_max for a guarantee. The default limit 1.9 keeps every mode's factor
    |1 − τλ| ≤ 0.9; limit 1 would also keep it ≥ 0 (a monotone smoothing, and a factor-2 margin
    for a λ_max estimate from below), but measured no better (benchmarks/stability_large_graph.py).
    A tensor ``lambda_max`` [E] gives a tensor of per-episode steps.
    """
    if not (math.isfinite(step_size) and step_size >= 0.0):
        raise DiffshotError(f"the step size must be a finite number ≥ 0, got {step_size}")
    if not 0.0 < limit < 2.0:
        raise DiffshotError(f"the stability limit on τ·λ_max must lie in (0, 2), got {limit}")
    if isinstance(lambda_max, torch.Tensor):
        if not bool(torch.isfinite(lambda_max).all()):
            raise DiffshotError("λ_max holds NaN or Inf")
        ceiling = limit / lambda_max.clamp_min(torch.finfo(lambda_max.dtype).tiny)
        return torch.clamp(ceiling, max=step_size)
    if not math.isfinite(lambda_max):
        raise DiffshotError(f"λ_max must be finite, got {lambda_max}")
    if lambda_max <= 0.0:
        return step_size
    return min(step_size, limit / lambda_max)


def stable_step_sparse(
    laplacian: torch.Tensor, step_size: float, limit: float = STABLE_LIMIT, power: bool = False, seed: int = 0
) -> tuple[float, float]:
    """τ_eff and the λ_max bound it used for one sparse L, with τ_eff·λ_max ≤ ``limit`` < 2 (explicit-step stability).

    By default λ_max is the guaranteed :func:`laplacian_upper_bound` (one sparse product), so the
    inequality always holds. ``power`` uses :func:`largest_eigenvalue_sparse` (tighter, ~40 products,
    a probabilistic guarantee: pair it with limit ≤ 1) when the bound does not already certify τ.
    """
    bound = float(laplacian_upper_bound(laplacian))
    if not power or step_size * bound <= limit:
        return float(stable_step_size(step_size, bound, limit)), bound
    lam = largest_eigenvalue_sparse(laplacian, seed=seed)
    return float(stable_step_size(step_size, lam, limit)), lam


def stable_step_batched(
    laplacian: torch.Tensor, step_size: float, limit: float = STABLE_LIMIT
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-episode τ_eff [E] and λ_max bound [E] for dense Laplacians [E, n, n], with τ_eff·λ_max ≤ ``limit`` < 2.

    Gershgorin (2·max_i L_ii, free) certifies most episodes; the others get the tighter
    :func:`laplacian_upper_bound`, and those it cannot certify either the exact ``eigvalsh``.
    Every λ returned is ≥ the true λ_max (exact for the last group), so the guarantee holds.
    """
    if laplacian.dim() != 3 or laplacian.shape[-1] != laplacian.shape[-2]:
        raise DiffshotError(f"episode Laplacians must be [E, n, n], got shape {tuple(laplacian.shape)}")
    lam = 2.0 * torch.diagonal(laplacian, dim1=-2, dim2=-1).amax(dim=-1).clamp_min(0.0)
    unsure = step_size * lam > limit
    if bool(unsure.any()):
        lam = lam.clone()
        lam[unsure] = torch.minimum(lam[unsure], laplacian_upper_bound(laplacian[unsure]))
        unsure = step_size * lam > limit
    if bool(unsure.any()):
        lam[unsure] = torch.linalg.eigvalsh(laplacian[unsure])[..., -1].to(lam.dtype)
    return stable_step_size(step_size, lam, limit), lam  # type: ignore[return-value]


def checked_step(
    laplacian: torch.Tensor, step_size: float, stacklevel: int = 2
) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """The stable step of a graph and its λ_max bound, with one notice when τ had to be reduced.

    Dense episode Laplacians [E, n, n] give per-episode steps and bounds [E] (:func:`stable_step_batched`);
    one sparse [n, n] Laplacian gives floats (:func:`stable_step_sparse`). Every diffusion step of the
    package takes its τ from here, so the bound and its notice are the same everywhere.
    """
    if laplacian.layout == torch.strided:
        steps, bounds = stable_step_batched(laplacian, step_size)
        if bool((steps < step_size).any()):
            warnings.warn(STEP_NOTICE.format(tau=step_size, where="some episodes"), stacklevel=stacklevel + 1)
        return steps, bounds
    step, bound = stable_step_sparse(laplacian, step_size)
    if step < step_size and not math.isclose(step, step_size):
        where = f"this graph (λ_max ≤ {bound:.3g}): τ = {step:.3g}"
        warnings.warn(STEP_NOTICE.format(tau=step_size, where=where), stacklevel=stacklevel + 1)
    return step, bound
