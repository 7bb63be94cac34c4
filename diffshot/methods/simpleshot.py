"""SimpleShot (Wang et al. 2019, "CL2N"): centre by the base mean, L2-normalise, nearest class mean."""

from __future__ import annotations

from collections.abc import Mapping

from diffshot.episodes import Episodes
from diffshot.methods.base import Method, ParamValue, Scores
from diffshot.ops.classify import prototypes, squared_distances
from diffshot.ops.preprocess import cl2n


def score(episodes: Episodes, params: Mapping[str, ParamValue]) -> Scores:
    """Negative squared distance of each CL2N query to each CL2N class mean of the support."""
    points = cl2n(episodes.points, episodes.centre)
    support, query = points[:, : episodes.num_support], points[:, episodes.num_support :]
    return -squared_distances(query, prototypes(support, episodes.support_labels, episodes.ways))


METHOD = Method(
    name="simpleshot",
    summary="SimpleShot CL2N (Wang et al. 2019): base-mean centring, L2 norm, nearest class mean. Inductive.",
    params=(),
    score=score,
)
