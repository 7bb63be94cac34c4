"""Feature preprocessing of the field, over stacked points [..., n, d] (episodes [E, n, d] or one task [n, d])."""

from __future__ import annotations

from diffshot.lazy import torch

_EPS = 1e-12


def centre(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Subtract the base-class mean (SimpleShot's "C" step)."""
    return x - mean


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Scale every row to unit length (SimpleShot's "L2N" step)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def cl2n(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Centre by the base mean, then L2-normalise: SimpleShot's CL2N (Wang et al. 2019)."""
    return l2_normalise(centre(x, mean))


def shift_queries_(points: torch.Tensor, num_support: int) -> torch.Tensor:
    """Cross-domain shift in place on stacked points [..., ns + nq, d] (support first): query mean := support mean.

    BD-CSPN's cross-class bias reduction (Liu et al., ECCV 2020), step 1 of Diff-ResNet's recipe.
    """
    support, query = points[..., :num_support, :], points[..., num_support:, :]
    query += support.mean(dim=-2, keepdim=True) - query.mean(dim=-2, keepdim=True)
    return points


def transductive_points(points: torch.Tensor, mean: torch.Tensor, num_support: int, shift: bool) -> torch.Tensor:
    """CL2N points, with the queries shifted onto the support mean when ``shift``: the graph methods' input."""
    prepared = cl2n(points, mean)
    return shift_queries_(prepared, num_support) if shift else prepared


def power_transform(x: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Element-wise x ↦ (x + ε)^β on non-negative features (PT-MAP, Hu et al. 2021)."""
    return (x.clamp_min(0) + 1e-6).pow(beta)
