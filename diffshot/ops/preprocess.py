"""Feature preprocessing of the field, batched over episodes ([E, n, d] tensors)."""

from __future__ import annotations

import torch

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


def cross_domain_shift(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Shift the queries so that their mean equals the support mean (BD-CSPN's shift, Diff-ResNet step 1)."""
    return query + (support.mean(dim=-2, keepdim=True) - query.mean(dim=-2, keepdim=True))


def shift_queries_(points: torch.Tensor, num_support: int) -> torch.Tensor:
    """Cross-domain shift, in place, on stacked points [E, ns + nq, d] (support first); returns ``points``."""
    support, query = points[:, :num_support], points[:, num_support:]
    query += support.mean(dim=-2, keepdim=True) - query.mean(dim=-2, keepdim=True)
    return points


def power_transform(x: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Element-wise x ↦ (x + ε)^β on non-negative features (PT-MAP, Hu et al. 2021)."""
    return (x.clamp_min(0) + 1e-6).pow(beta)
