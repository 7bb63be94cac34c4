"""The diffusion step of Diff-ResNet: x ← x − τ·L·x, applied T times (the paper's diffusion layers)."""

from __future__ import annotations

from diffshot.lazy import torch


def diffuse_(x: torch.Tensor, lap: torch.Tensor, step_size: float, layers: int) -> torch.Tensor:
    """``layers`` explicit steps x ← x − τ·L·x, in place on ``x`` ([E, n, d] with dense L, or [n, d] with sparse L)."""
    for _ in range(layers):
        x.sub_(lap @ x, alpha=step_size)
    return x


def diffuse(x: torch.Tensor, lap: torch.Tensor, step_size: float, layers: int) -> torch.Tensor:
    """``layers`` explicit diffusion steps on a copy of the features ``x``."""
    return diffuse_(x.clone(), lap, step_size, layers)


def diffusion_operator(lap: torch.Tensor, step_size: float | torch.Tensor, layers: int) -> torch.Tensor:
    """P = (I − τL)^T [E, n, n], so that diffused features are P·x, by repeated squaring.

    ``step_size`` is one τ or one per episode [E]. For an episode of n points and d ≥ n dimensions
    this is far cheaper than T products with x.
    """
    if isinstance(step_size, torch.Tensor):
        step_size = step_size.to(lap.dtype)[..., None, None]
    step = lap * -step_size
    step.diagonal(dim1=-2, dim2=-1).add_(1.0)
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
