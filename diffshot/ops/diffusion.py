"""The diffusion step of Diff-ResNet: x ← x − τ·L·x, applied T times (the paper's diffusion layers)."""

from __future__ import annotations

from diffshot.lazy import torch


def diffuse_(x: torch.Tensor, lap: torch.Tensor, step_size: float | torch.Tensor, layers: int) -> torch.Tensor:
    """``layers`` explicit steps x ← x − τ·L·x, in place on ``x`` ([E, n, d] with dense L, or [n, d] with sparse L).

    ``step_size`` is one τ, or one per episode [E] for dense L.
    """
    if isinstance(step_size, torch.Tensor):
        per_episode = step_size.to(x.dtype)[..., None, None]
        for _ in range(layers):
            x.sub_(per_episode * (lap @ x))
        return x
    for _ in range(layers):
        x.sub_(lap @ x, alpha=step_size)
    return x


def diffuse(x: torch.Tensor, lap: torch.Tensor, step_size: float | torch.Tensor, layers: int) -> torch.Tensor:
    """``layers`` explicit diffusion steps on a copy of the features ``x``."""
    return diffuse_(x.clone(), lap, step_size, layers)


def step_matrix(lap: torch.Tensor, step_size: float | torch.Tensor) -> torch.Tensor:
    """S = I − τL [E, n, n], one explicit diffusion step; ``step_size`` is one τ or one per episode [E]."""
    if isinstance(step_size, torch.Tensor):
        step_size = step_size.to(lap.dtype)[..., None, None]
    step = lap * -step_size
    step.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return step


def diffusion_operator(lap: torch.Tensor, step_size: float | torch.Tensor, layers: int) -> torch.Tensor:
    """P = (I − τL)^T [E, n, n], so that diffused features are P·x, by repeated squaring.

    ``step_size`` is one τ or one per episode [E]. For an episode of n points and d ≥ n dimensions
    this is far cheaper than T products with x.
    """
    step = step_matrix(lap, step_size)
    result: torch.Tensor | None = None
    power = layers
    while power:
        if power & 1:
            result = step if result is None else result @ step
        power >>= 1
        if power:
            step = step @ step
    if result is None:
        result = torch.zeros_like(lap)
        result.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return result


def diffuse_gram(g: torch.Tensor, operator: torch.Tensor) -> torch.Tensor:
    """Inner products of the diffused points, P G Pᵀ, without forming the diffused features."""
    return operator @ g @ operator.transpose(-1, -2)


def diffused_prototype_scores(
    g: torch.Tensor, lap: torch.Tensor, step_size: float | torch.Tensor, layers: int, mix: torch.Tensor, rows: slice
) -> torch.Tensor:
    """2·x̃_i·p̃_c − ‖p̃_c‖² [E, |rows|, ways] for the diffused points x̃ = P·x and prototypes p̃ = mix·P·x.

    This is −‖x̃_i − p̃_c‖² plus ‖x̃_i‖², a constant per point that neither the nearest prototype nor
    the softmax confidence sees. With S = I − τL symmetric (L is), P = S^T and only [ways, n] blocks
    are stepped: V ← V·S gives mix·P, then Uᵀ ← Uᵀ·S gives (P·G·Vᵀ)ᵀ; 2T products of ways·n² instead
    of the n³ ones that P and P G Pᵀ cost.
    """
    step = step_matrix(lap, step_size)
    towards = mix
    for _ in range(layers):
        towards = towards @ step
    along = towards @ g
    proto_sq = (towards * along).sum(dim=-1)
    for _ in range(layers):
        along = along @ step
    return along[..., rows].transpose(-1, -2).mul(2.0).sub_(proto_sq[..., None, :])
