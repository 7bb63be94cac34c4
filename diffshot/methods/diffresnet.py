"""The paper's trained Diff-ResNet head (Wang, Dou, Bao, Shi, TPAMI 2024; official ``fewshot/train.py``).

Per episode: CL2N, cross-domain shift, the kNN graph and Laplacian L of DESIGN.md; the network
x ↦ classifier(diffuse_T(x + fc2(relu(fc1(x))))) with T layers x ← x − τ·L·x, trained from scratch
on the support labels: full-batch SGD, lr 0.1, momentum 0.9, weight decay 1e-4, 100 epochs, lr ×0.1
at epochs 50 and 75, nn.Linear's initialisation; loss CE(support) + α·prototype loss with
BD-CSPN-rectified prototypes (α = 0 as default); prediction = argmax on the queries.

A whole chunk trains as one batched model. Two exact rewrites make it cheap, neither changes
the trajectory of SGD: (1) the T layers are one operator P = (I − τL)^T; only the support rows
P_s of the output enter the loss, so fc2 and the classifier act on P_s·h (ns rows, not n);
(2) fc1's weight W1 only acts through Z = x·W1ᵀ [n, d], and an SGD step W1 −= lr·(δᵀx + wd·W1)
moves Z by −lr·(G·δ + wd·Z) with G = x·xᵀ; momentum is linear too, so Z is trained directly with
gradients G·∂L/∂Z (n²·d per step instead of n·d²).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from diffshot.diffusion import diffusion_operator
from diffshot.episodes import Episodes
from diffshot.errors import DiffshotError
from diffshot.graph import KNN_BACKENDS, episode_laplacian, gram
from diffshot.methods.base import Method, Param, ParamValue, Scores
from diffshot.preprocess import cl2n, shift_queries_

LR_MILESTONES = (0.5, 0.75)
GROUP = 16  # episodes trained together: their d × d weights stay cache-sized (measured 68 → 50 ms/episode)
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
RECTIFY_TEMPERATURE = 10.0


@dataclasses.dataclass
class Head:
    """Batched parameters of E residual heads; fc1's weight is stored projected on each episode's span."""

    z1: torch.Tensor  # [E, n, d] = x W1ᵀ, fc1's weight seen through the episode's points
    b1: torch.Tensor  # [E, 1, d]
    w2: torch.Tensor  # [E, d, d]
    b2: torch.Tensor  # [E, 1, d]
    wc: torch.Tensor  # [E, ways, d]
    bc: torch.Tensor  # [E, 1, ways]

    def tensors(self) -> list[torch.Tensor]:
        return [self.z1, self.b1, self.w2, self.b2, self.wc, self.bc]


def linear_init(shape: tuple[int, ...], fan_in: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """U(−1/√fan_in, 1/√fan_in): nn.Linear's default for weights (kaiming_uniform, a = √5) and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2.0 - 1.0) * bound


def init_head(points: torch.Tensor, ways: int, seed: int) -> Head:
    """Heads for E episodes, all starting from one seeded nn.Linear initialisation; fc1 as Z = x W1ᵀ.

    One shared start (rather than one per episode) makes an episode's result independent of the
    chunk it is evaluated in; each episode still trains its own copy.
    """
    e, _, d = points.shape
    generator = torch.Generator().manual_seed(seed)
    shapes = {"w1": (d, d), "b1": (1, d), "w2": (d, d), "b2": (1, d), "wc": (ways, d), "bc": (1, ways)}
    start = {name: linear_init(shape, d, generator, points.dtype).to(points.device) for name, shape in shapes.items()}
    z1 = points @ start["w1"].transpose(-1, -2)
    return Head(z1, *(start[name].expand(e, *start[name].shape).clone() for name in ("b1", "w2", "b2", "wc", "bc")))


def outputs(x: torch.Tensor, mixing: torch.Tensor, head: Head) -> torch.Tensor:
    """Logits [E, m, ways] of rows ``mixing`` [E, m, n] of P: classifier(P·(x + fc2(h)))."""
    diffused_hidden = mixing @ torch.relu(head.z1 + head.b1)
    residual = mixing @ x + diffused_hidden @ head.w2.transpose(-1, -2) + mixing.sum(-1, keepdim=True) * head.b2
    return residual @ head.wc.transpose(-1, -2) + head.bc


def rectified_prototypes(points: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
    """The official code's rectified prototypes [E, ways, d]: mean over pseudo-class members of softmax(10·cos)·x."""
    ns = support_labels.shape[-1]
    onehot = F.one_hot(support_labels, ways).to(points.dtype).transpose(-1, -2)
    protos = (onehot @ points[:, :ns]) / onehot.sum(-1, keepdim=True)
    cos = F.cosine_similarity(points[:, :, None, :], protos[:, None, :, :], dim=-1) * RECTIFY_TEMPERATURE
    member = F.one_hot(cos.argmax(-1), ways).to(points.dtype)
    weights = (member * cos.softmax(-1)).transpose(-1, -2)
    return (weights @ points) / member.sum(-2)[..., None].clamp_min(1.0)


def sgd_step(parameters: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor], lr: float) -> None:
    """torch.optim.SGD's update (momentum 0.9, dampening 0, weight decay 1e-4), in place and batched."""
    with torch.no_grad():
        torch._foreach_add_(grads, parameters, alpha=WEIGHT_DECAY)
        if buffers:
            torch._foreach_mul_(buffers, MOMENTUM)
            torch._foreach_add_(buffers, grads)
        else:
            buffers.extend(grads)
        torch._foreach_add_(parameters, buffers, alpha=-lr)


def train(episodes: Episodes, params: Mapping[str, ParamValue]) -> torch.Tensor:
    """Train the batched heads; return the query logits [E, nq, ways]."""
    points = cl2n(episodes.points, episodes.centre)
    shift_queries_(points, episodes.num_support)
    ns, ways = episodes.num_support, episodes.ways
    inner = gram(points)
    lap = episode_laplacian(points, int(params["n_top"]), int(params["sigma"]), str(params["knn"]), inner)
    operator = diffusion_operator(lap, float(params["step_size"]), int(params["layers"]))
    head = init_head(points, ways, int(params["seed"]))
    parameters = [t.requires_grad_(True) for t in head.tensors()]
    epochs, alpha = int(params["epochs"]), float(params["alpha"])
    milestones = [int(fraction * epochs) for fraction in LR_MILESTONES]
    buffers: list[torch.Tensor] = []
    rows = operator if alpha else operator[:, :ns]
    if alpha:
        protos = rectified_prototypes(points, episodes.support_labels, ways)
        distance = torch.cdist(points[:, ns:], protos)
    with torch.enable_grad():
        for epoch in range(epochs):
            logits = outputs(points, rows, head)
            loss = F.cross_entropy(logits[:, :ns].transpose(-1, -2), episodes.support_labels, reduction="none")
            total = loss.mean(-1).sum()
            if alpha:
                total = total + alpha * (logits[:, ns:].softmax(-1) * distance).sum()
            grads = list(torch.autograd.grad(total, parameters))
            grads[0] = inner @ grads[0]
            lr = float(params["lr"]) * 0.1 ** sum(epoch >= m for m in milestones)
            sgd_step(parameters, grads, buffers, lr)
    with torch.no_grad():
        return outputs(points, operator[:, ns:], head)


def score(episodes: Episodes, params: Mapping[str, ParamValue]) -> Scores:
    """Query logits of the trained Diff-ResNet heads (argmax = prediction)."""
    n = episodes.points.shape[1]
    if int(params["n_top"]) > n or int(params["sigma"]) > n:
        raise DiffshotError(f"diffresnet: n_top and sigma must be at most the {n} points of an episode")
    groups = [
        Episodes(episodes.points[i : i + GROUP], episodes.support_labels[i : i + GROUP], episodes.ways, episodes.centre)
        for i in range(0, episodes.num_episodes, GROUP)
    ]
    return torch.cat([train(group, params) for group in groups])


METHOD = Method(
    name="diffresnet",
    summary="Diff-ResNet's trained head (Wang et al., TPAMI 2024, official few-shot code): residual block, "
    "T diffusion layers, linear classifier, 100 epochs of SGD per episode, batched. Transductive.",
    params=(
        Param("step_size", 0.5, "τ of each diffusion layer (paper: 0.5)", minimum=0.0),
        Param("layers", 6, "T, diffusion layers (paper's example: 6)", minimum=0),
        Param("n_top", 8, "graph: keep entries below the n_top-th smallest distance (official: 8)", minimum=2),
        Param("sigma", 4, "graph: Gaussian width = sigma-th smallest distance (official: 4)", minimum=1),
        Param("epochs", 100, "full-batch SGD epochs (official: 100; lr ×0.1 at 50% and 75%)", minimum=1),
        Param("lr", 0.1, "SGD learning rate (official: 0.1, momentum 0.9, weight decay 1e-4)", minimum=0.0),
        Param("alpha", 0.0, "weight of the prototype loss, rectified prototypes (official default: 0)", minimum=0.0),
        Param("seed", 0, "seed of the heads' shared nn.Linear initialisation", minimum=0),
        Param("knn", "torch", "neighbour search: batched dense torch, or FAISS", choices=KNN_BACKENDS),
    ),
    score=score,
    transductive=True,
)
