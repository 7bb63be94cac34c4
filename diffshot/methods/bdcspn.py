"""BD-CSPN (Liu, Song, Qin, ECCV 2020, arXiv 1911.10713): prototype rectification plus the feature shift.

CL2N features; the queries are shifted so that their mean is the support mean (the paper's
cross-class bias reduction); each prototype becomes the softmax(ε·cos)-weighted mean of its support
points and of the queries pseudo-labelled with it (intra-class bias, ε = 10 as in the paper's
code and in Diff-ResNet's); each query is scored by cosine similarity to the rectified prototypes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from diffshot.episodes import Episodes
from diffshot.methods.base import Method, Param, ParamValue, Scores
from diffshot.ops.classify import rectified_mix
from diffshot.ops.graph import gram
from diffshot.ops.preprocess import cl2n, shift_queries_


def gram_cosine(g: torch.Tensor, mix: torch.Tensor, rows: slice) -> torch.Tensor:
    """Cosine similarity [E, |rows|, ways] of points ``rows`` to prototypes ``mix``·x, from G = x xᵀ."""
    dots = g @ mix.transpose(-1, -2)
    proto_norms = torch.diagonal(mix @ dots, dim1=-2, dim2=-1).clamp_min(1e-24).sqrt()
    norms = torch.diagonal(g, dim1=-2, dim2=-1)[..., rows].clamp_min(1e-24).sqrt()
    return dots[..., rows, :] / (norms[..., None] * proto_norms[..., None, :])


def score(episodes: Episodes, params: Mapping[str, ParamValue]) -> Scores:
    """Cosine similarity of each (shifted) CL2N query to each rectified prototype."""
    points = cl2n(episodes.points, episodes.centre)
    if params["shift"]:
        shift_queries_(points, episodes.num_support)
    inner = gram(points)
    mix = rectified_mix(inner, episodes.support_labels, episodes.ways)
    return gram_cosine(inner, mix, slice(episodes.num_support, None))


METHOD = Method(
    name="bdcspn",
    summary="BD-CSPN (Liu et al., ECCV 2020): shift the queries, rectify prototypes with pseudo-labelled "
    "queries (softmax(10·cos) weights), cosine to prototypes. Transductive.",
    params=(Param("shift", True, "cross-class bias reduction: move the query mean onto the support mean"),),
    score=score,
    transductive=True,
)
