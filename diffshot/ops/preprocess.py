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


def transductive_gram(points: torch.Tensor, mean: torch.Tensor, num_support: int, shift: bool) -> torch.Tensor:
    """The Gram matrix [..., n, n] of :func:`transductive_points`, with L2N and the shift done in Gram space.

    Only the centred copy of the d-dimensional points is made (centring before the product keeps
    float32 precision when the base mean is as long as the features); normalising is
    G_ij / (‖x_i‖·‖x_j‖), and the shift x_q ← x_q + δ, δ = mean(support) − mean(query), adds
    u_j = x_j·δ to query rows and columns and δ·δ to the query block.
    """
    centred = centre(points, mean)
    g = centred @ centred.transpose(-1, -2)
    inv_norm = torch.diagonal(g, dim1=-2, dim2=-1).clamp_min(_EPS * _EPS).rsqrt()
    g.mul_(inv_norm[..., :, None]).mul_(inv_norm[..., None, :])
    if not shift:
        return g
    n = g.shape[-1]
    weights = torch.full((n,), -1.0 / (n - num_support), dtype=g.dtype, device=g.device)
    weights[:num_support] = 1.0 / num_support
    along_shift = g @ weights
    shift_norm = along_shift @ weights
    g[..., num_support:, :] += along_shift[..., None, :]
    g[..., :, num_support:] += along_shift[..., :, None]
    g[..., num_support:, num_support:] += shift_norm[..., None, None]
    return g


def power_transform(x: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Element-wise x ↦ (x + ε)^β on non-negative features (PT-MAP, Hu et al. 2021)."""
    return (x.clamp_min(0) + 1e-6).pow(beta)
