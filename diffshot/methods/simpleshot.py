"""SimpleShot (Wang et al. 2019, "CL2N"): centre by the base mean, L2-normalise, nearest class mean."""

from __future__ import annotations

from diffshot.episodes import Episodes
from diffshot.lazy import torch
from diffshot.methods.base import Method, NoParams, OpenSetScores, TaskScores
from diffshot.ops.classify import cosine, prototypes, squared_distances
from diffshot.ops.openset import otsu_rejection
from diffshot.ops.preprocess import cl2n
from diffshot.ops.reject import max_cosine_unknown
from diffshot.task import Task


def score(episodes: Episodes, params: NoParams) -> torch.Tensor:
    """Negative squared distance of each CL2N query to each CL2N class mean of the support."""
    points = cl2n(episodes.points, episodes.centre)
    support, query = points[:, : episodes.num_support], points[:, episodes.num_support :]
    return -squared_distances(query, prototypes(support, episodes.support_labels, episodes.ways))


def open_set(episodes: Episodes, params: NoParams) -> OpenSetScores:
    """The same scores; unknown = −max cosine of the CL2N query to the class means; reject above the Otsu split."""
    points = cl2n(episodes.points, episodes.centre)
    support, query = points[:, : episodes.num_support], points[:, episodes.num_support :]
    protos = prototypes(support, episodes.support_labels, episodes.ways)
    unknown = -cosine(query, protos).max(dim=-1).values
    return OpenSetScores(-squared_distances(query, protos), unknown, otsu_rejection(unknown))


def large_task(task: Task, params: NoParams) -> TaskScores:
    """Nearest CL2N class mean for every query row of one large task; unknown = −max cosine to those means."""
    support = cl2n(task.support, task.centre)
    protos = prototypes(support, task.support_labels, task.ways)

    def rows(start: int, stop: int) -> torch.Tensor:
        return cl2n(task.queries.read(start, stop).to(protos.device), task.centre)

    return TaskScores(
        block=lambda start, stop: -squared_distances(rows(start, stop), protos),
        details={},
        unknown=lambda start, stop: max_cosine_unknown(rows(start, stop), protos),
        support=lambda: support,
    )


METHOD = Method(
    name="simpleshot",
    summary="SimpleShot CL2N (Wang et al. 2019): base-mean centring, L2 norm, nearest class mean.",
    params=NoParams,
    score=score,
    transductive=False,
    large_task=large_task,
    open_set=open_set,
)
