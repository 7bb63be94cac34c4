"""Nearest-prototype decisions, in feature space or from a Gram matrix, batched over episodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

RECTIFY_TEMPERATURE = 10.0


def support_averaging(support_labels: torch.Tensor, ways: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """A [E, ways, n]: row c averages the support points of class c (queries, at columns ≥ ns, get 0)."""
    onehot = F.one_hot(support_labels, ways).to(dtype).transpose(-1, -2)
    onehot = onehot / onehot.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return F.pad(onehot, (0, n - support_labels.shape[-1]))


def prototypes(support: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means of the support [E, ways, d] (ProtoNet / SimpleShot prototypes)."""
    return support_averaging(support_labels, ways, support.shape[-2], support.dtype) @ support


def squared_distances(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [E, nq, ways] between queries and prototypes."""
    return (
        (query * query).sum(-1, keepdim=True)
        - 2.0 * query @ protos.transpose(-1, -2)
        + (protos * protos).sum(-1)[..., None, :]
    ).clamp_min(0.0)


def gram_squared_distances(g: torch.Tensor, mix: torch.Tensor, rows: slice) -> torch.Tensor:
    """Squared distances [E, |rows|, ways] between points ``rows`` and prototypes ``mix``·x, from G = x xᵀ."""
    g_mix = g @ mix.transpose(-1, -2)  # [E, n, ways]
    proto_sq = torch.diagonal(mix @ g_mix, dim1=-2, dim2=-1)
    point_proto = g_mix[..., rows, :]
    point_sq = torch.diagonal(g, dim1=-2, dim2=-1)[..., rows]
    return (point_sq[..., None] - 2.0 * point_proto + proto_sq[..., None, :]).clamp_min(0.0)


def rectified_mix(g: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
    """BD-CSPN prototype rectification (Liu et al., ECCV 2020) as a mixing matrix [E, ways, n], from G.

    Each point gets softmax(10·cos(x, p_c)) weights over the initial prototypes; a prototype
    becomes the weighted mean of its support points and of the queries pseudo-labelled with it.
    """
    ns = support_labels.shape[-1]
    mix = support_averaging(support_labels, ways, g.shape[-1], g.dtype)
    dots = g @ mix.transpose(-1, -2)  # [E, n, ways]
    norms = torch.diagonal(g, dim1=-2, dim2=-1).clamp_min(1e-12).sqrt()
    proto_norms = torch.diagonal(mix @ dots, dim1=-2, dim2=-1).clamp_min(1e-12).sqrt()
    cos = dots / (norms[..., :, None] * proto_norms[..., None, :])
    weights = torch.softmax(RECTIFY_TEMPERATURE * cos, dim=-1)
    pseudo = cos.argmax(dim=-1)
    pseudo[..., :ns] = support_labels
    member = F.one_hot(pseudo, ways).to(g.dtype) * weights
    member = member.transpose(-1, -2)
    return member / member.sum(dim=-1, keepdim=True).clamp_min(1e-12)
