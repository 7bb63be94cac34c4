"""BD-CSPN (Liu, Song, Qin, ECCV 2020, arXiv 1911.10713): prototype rectification plus the feature shift.

CL2N features; the queries are shifted so that their mean is the support mean (the paper's
cross-class bias reduction); each prototype becomes the softmax(ε·cos)-weighted mean of its support
points and of the queries pseudo-labelled with it (intra-class bias, ε = 10 as in the paper's
code and in Diff-ResNet's); each query is scored by cosine similarity to the rectified prototypes.
"""

from __future__ import annotations

import dataclasses

from diffshot.episodes import Episodes
from diffshot.lazy import torch
from diffshot.methods.base import Method, param
from diffshot.ops.classify import gram_cosine, rectified_mix
from diffshot.ops.preprocess import transductive_gram


@dataclasses.dataclass(frozen=True)
class BdcspnParams:
    """BD-CSPN's one switch."""

    shift: bool = param(True, "cross-class bias reduction: move the query mean onto the support mean")


def score(episodes: Episodes, params: BdcspnParams) -> torch.Tensor:
    """Cosine similarity of each (shifted) CL2N query to each rectified prototype."""
    inner = transductive_gram(episodes.points, episodes.centre, episodes.num_support, params.shift)
    mix = rectified_mix(inner, episodes.support_labels, episodes.ways)
    return gram_cosine(inner, mix, slice(episodes.num_support, None))


METHOD = Method(
    name="bdcspn",
    summary="BD-CSPN (Liu et al., ECCV 2020): shift the queries, rectify prototypes with pseudo-labelled "
    "queries (softmax(10·cos) weights), cosine to prototypes.",
    params=BdcspnParams,
    score=score,
    transductive=True,
)
