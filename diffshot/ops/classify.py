"""Prototypes, rectification, distances and the softmax confidence: the decisions every method shares.

Everything works over stacked points [..., n, d] (episodes [E, n, d], or one task as [1, n, d]),
or from a Gram matrix G = x·xᵀ, where a prototype is a mixing row over the points (``mix @ x``).
"""

from __future__ import annotations

from diffshot.lazy import functional as F
from diffshot.lazy import torch

RECTIFY_TEMPERATURE = 10.0  # BD-CSPN's ε and Diff-ResNet's softmax(10·cos) weights


def support_averaging(support_labels: torch.Tensor, ways: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """A [E, ways, n]: row c averages the support points of class c (queries, at columns ≥ ns, get 0)."""
    onehot = F.one_hot(support_labels, ways).to(dtype).transpose(-1, -2)
    onehot = onehot / onehot.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return F.pad(onehot, (0, n - support_labels.shape[-1]))


def prototypes(support: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means of the support [E, ways, d] (ProtoNet / SimpleShot prototypes; unequal shots allowed)."""
    return support_averaging(support_labels, ways, support.shape[-2], support.dtype) @ support


def squared_distances(points: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [..., n, ways] between points [..., n, d] and prototypes [..., ways, d]."""
    return (
        (points * points).sum(-1, keepdim=True)
        - 2.0 * points @ protos.transpose(-1, -2)
        + (protos * protos).sum(-1)[..., None, :]
    ).clamp_min(0.0)


def gram_squared_distances(g: torch.Tensor, mix: torch.Tensor, rows: slice) -> torch.Tensor:
    """Squared distances [E, |rows|, ways] between points ``rows`` and prototypes ``mix``·x, from G = x xᵀ."""
    g_mix = g @ mix.transpose(-1, -2)  # [E, n, ways]
    proto_sq = torch.diagonal(mix @ g_mix, dim1=-2, dim2=-1)
    point_proto = g_mix[..., rows, :]
    point_sq = torch.diagonal(g, dim1=-2, dim2=-1)[..., rows]
    return (point_sq[..., None] - 2.0 * point_proto + proto_sq[..., None, :]).clamp_min(0.0)


def gram_cosine(g: torch.Tensor, mix: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
    """Cosine similarity [E, |rows|, ways] of points ``rows`` to prototypes ``mix``·x, from G = x xᵀ."""
    dots = g @ mix.transpose(-1, -2)
    proto_norms = torch.diagonal(mix @ dots, dim1=-2, dim2=-1).clamp_min(1e-24).sqrt()
    norms = torch.diagonal(g, dim1=-2, dim2=-1)[..., rows].clamp_min(1e-24).sqrt()
    return dots[..., rows, :] / (norms[..., None] * proto_norms[..., None, :])


def cosine(points: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [..., n, ways] of points [..., n, d] to prototypes [..., ways, d]."""
    unit = points / points.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    unit_protos = protos / protos.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit @ unit_protos.transpose(-1, -2)


def rectification_weights(
    cos: torch.Tensor, ways: int, support_labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-CSPN's membership (Liu et al., ECCV 2020): each point joins its nearest prototype, weight softmax(10·cos).

    Returns the weights [..., n, ways] (non-zero only at the point's pseudo-class) and the one-hot
    membership. With ``support_labels`` the first ns points keep their true class (BD-CSPN), without
    them every point takes its argmax (Diff-ResNet's official code).
    """
    pseudo = cos.argmax(dim=-1)
    if support_labels is not None:
        pseudo[..., : support_labels.shape[-1]] = support_labels
    member = F.one_hot(pseudo, ways).to(cos.dtype)
    return member * torch.softmax(RECTIFY_TEMPERATURE * cos, dim=-1), member


def rectified_mix(g: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
    """BD-CSPN rectified prototypes as a mixing matrix [E, ways, n], from G: weighted means of the class members."""
    cos = gram_cosine(g, support_averaging(support_labels, ways, g.shape[-1], g.dtype))
    weights = rectification_weights(cos, ways, support_labels)[0].transpose(-1, -2)
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def confidence(scores: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and its probability softmax(scores / temperature) [..., n] (scores: higher = more likely)."""
    best, which = torch.softmax(scores / temperature, dim=-1).max(dim=-1)
    return which, best


def rectified_prototypes(
    points: torch.Tensor, protos: torch.Tensor, support_labels: torch.Tensor, ways: int, block: int = 65_536
) -> torch.Tensor:
    """BD-CSPN rectified prototypes [ways, d] of one large task [n, d] (support first), in row blocks.

    The same membership as :func:`rectified_mix` (:func:`rectification_weights`), in feature space.
    """
    ns = support_labels.shape[0]
    sums = torch.zeros_like(protos)
    total = torch.zeros(ways, dtype=points.dtype, device=points.device)
    for start in range(0, points.shape[0], block):
        rows = points[start : start + block]
        weights, _ = rectification_weights(cosine(rows, protos), ways, support_labels[start : min(ns, start + block)])
        sums += weights.T @ rows
        total += weights.sum(dim=0)
    return sums / total.clamp_min(1e-12)[:, None]
