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
gradients G·∂L/∂Z (n²·d per step instead of n·d²); (3) fc2's weight W2 [d, d] is never
materialised: with v = P_s·relu(Z + b1), its gradient (δ·Wc)ᵀ·v = Wcᵀ·(δᵀ·v) has rank ≤ ways, and
SGD with momentum and weight decay is linear, so after t steps W2 = β_t·W2₀ + Σ_s w_ts·U_sᵀ·M_s
with U_s = Wc and M_s = δᵀ·v of step s and scalars β_t, w_ts fixed by the lr schedule, μ and wd;
v·W2ᵀ·Wcᵀ = v·(Wc·W2)ᵀ with Wc·W2 = β_t·Wc·W2₀ + ((Wc·Uᵀ)·diag(w_t))·M, one shared W2₀ for all episodes.
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
from diffshot.graph import episode_laplacian, gram
from diffshot.methods.base import Method, Param, ParamValue, Scores
from diffshot.methods.diffusion import KNN, LAYERS, STEP_SIZE
from diffshot.preprocess import cl2n, shift_queries_

LR_MILESTONES = (0.5, 0.75)
GROUP = 16  # episodes trained together (16 to 128 measured within 10% of each other once W2 became implicit)
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
RECTIFY_TEMPERATURE = 10.0


@dataclasses.dataclass
class Head:
    """Batched trainable parameters of E residual heads; fc1's weight is stored projected on each episode's span."""

    z1: torch.Tensor  # [E, n, d] = x W1ᵀ, fc1's weight seen through the episode's points
    b1: torch.Tensor  # [E, 1, d]
    b2: torch.Tensor  # [E, 1, d]
    wc: torch.Tensor  # [E, ways, d]
    bc: torch.Tensor  # [E, 1, ways]

    def tensors(self) -> list[torch.Tensor]:
        return [self.z1, self.b1, self.b2, self.wc, self.bc]


@dataclasses.dataclass
class ImplicitWeight:
    """fc2's weights of E heads as β·W2₀ + Σ_s w_s·U_sᵀ·M_s: a shared start plus a rank-ways term per SGD step."""

    start: torch.Tensor  # [d, d], W2₀ shared by every episode
    left: torch.Tensor  # [E, steps·ways, d], U_s = Wc at step s
    right: torch.Tensor  # [E, steps·ways, d], M_s = δ_logitsᵀ·v at step s
    scale: float = 1.0  # β, the coefficient of W2₀
    weights: torch.Tensor | None = None  # [rank] coefficients of the stored columns (w_s repeated ways times)

    def compose(self, wc: torch.Tensor) -> torch.Tensor:
        """Wc·W2 [E, ways, d] for the classifier's weight wc [E, ways, d]: v·W2ᵀ·Wcᵀ costs ways rows, not m."""
        out = (wc @ self.start) * self.scale
        if self.weights is None:
            return out
        rank = self.weights.shape[0]
        return out + ((wc @ self.left[:, :rank].transpose(-1, -2)) * self.weights) @ self.right[:, :rank]


def linear_init(shape: tuple[int, ...], fan_in: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """U(−1/√fan_in, 1/√fan_in): nn.Linear's default for weights (kaiming_uniform, a = √5) and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2.0 - 1.0) * bound


def init_head(points: torch.Tensor, ways: int, seed: int, steps: int) -> tuple[Head, ImplicitWeight]:
    """Heads for E episodes, all starting from one seeded nn.Linear initialisation; fc1 as Z = x W1ᵀ.

    One shared start (rather than one per episode) makes an episode's result independent of the
    chunk it is evaluated in; each episode still trains its own copy.
    """
    e, _, d = points.shape
    generator = torch.Generator().manual_seed(seed)
    shapes = {"w1": (d, d), "b1": (1, d), "w2": (d, d), "b2": (1, d), "wc": (ways, d), "bc": (1, ways)}
    start = {name: linear_init(shape, d, generator, points.dtype).to(points.device) for name, shape in shapes.items()}
    z1 = points @ start["w1"].transpose(-1, -2)
    head = Head(z1, *(start[name].expand(e, *start[name].shape).clone() for name in ("b1", "b2", "wc", "bc")))
    history = points.new_empty(e, steps * ways, d)
    return head, ImplicitWeight(start["w2"], history, torch.empty_like(history))


def sgd_coefficients(lrs: list[float]) -> torch.Tensor:
    """Row t: coefficients of W2 after t SGD steps on [W2₀, term 0, term 1, …] (torch.optim.SGD's recursion)."""
    steps = len(lrs)
    weight = torch.zeros(steps + 1, dtype=torch.float64)
    weight[0] = 1.0
    buffer = torch.zeros_like(weight)
    rows = [weight.clone()]
    for t, lr in enumerate(lrs):
        grad = WEIGHT_DECAY * weight
        grad[t + 1] = 1.0
        buffer = grad if t == 0 else MOMENTUM * buffer + grad
        weight = weight - lr * buffer
        rows.append(weight.clone())
    return torch.stack(rows)


def outputs(x: torch.Tensor, mixing: torch.Tensor, head: Head, w2: ImplicitWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [E, m, ways] of rows ``mixing`` [E, m, n] of P, classifier(P·(x + fc2(h))), and A = Wc·W2.

    Everything is first mapped to ``ways`` columns (x·Wcᵀ, h·Aᵀ), then mixed: the gradient of A is
    δᵀ·(P·h), the factor M of fc2's rank-ways update.
    """
    wc = head.wc.transpose(-1, -2)
    composed = w2.compose(head.wc)
    columns = x @ wc + torch.relu(head.z1 + head.b1) @ composed.transpose(-1, -2)
    return mixing @ columns + mixing.sum(-1, keepdim=True) * (head.b2 @ wc) + head.bc, composed


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
    epochs, alpha = int(params["epochs"]), float(params["alpha"])
    head, w2 = init_head(points, ways, int(params["seed"]), epochs)
    parameters = [t.requires_grad_(True) for t in head.tensors()]
    milestones = [int(fraction * epochs) for fraction in LR_MILESTONES]
    lrs = [float(params["lr"]) * 0.1 ** sum(epoch >= m for m in milestones) for epoch in range(epochs)]
    coefficients = sgd_coefficients(lrs).to(points.dtype).repeat_interleave(ways, -1)
    buffers: list[torch.Tensor] = []
    rows = operator if alpha else operator[:, :ns]
    if alpha:
        protos = rectified_prototypes(points, episodes.support_labels, ways)
        distance = torch.cdist(points[:, ns:], protos)
    with torch.enable_grad():
        for epoch, lr in enumerate(lrs):
            logits, composed = outputs(points, rows, head, w2)
            loss = F.cross_entropy(logits[:, :ns].transpose(-1, -2), episodes.support_labels, reduction="none")
            total = loss.mean(-1).sum()
            if alpha:
                total = total + alpha * (logits[:, ns:].softmax(-1) * distance).sum()
            *grads, dcomposed = torch.autograd.grad(total, [*parameters, composed])
            with torch.no_grad():
                columns = slice(epoch * ways, (epoch + 1) * ways)
                w2.left[:, columns] = head.wc
                w2.right[:, columns] = dcomposed
            grads[0] = inner @ grads[0]
            sgd_step(parameters, grads, buffers, lr)
            w2.scale, w2.weights = float(coefficients[epoch + 1, 0]), coefficients[epoch + 1, ways : (epoch + 2) * ways]
    with torch.no_grad():
        return outputs(points, operator[:, ns:], head, w2)[0]


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
        STEP_SIZE,
        LAYERS,
        Param("n_top", 8, "graph: keep entries below the n_top-th smallest distance (official: 8)", minimum=2),
        Param("sigma", 4, "graph: Gaussian width = sigma-th smallest distance (official: 4)", minimum=1),
        Param("epochs", 100, "full-batch SGD epochs (official: 100; lr ×0.1 at 50% and 75%)", minimum=1),
        Param("lr", 0.1, "SGD learning rate (official: 0.1, momentum 0.9, weight decay 1e-4)", minimum=0.0),
        Param("alpha", 0.0, "weight of the prototype loss, rectified prototypes (official default: 0)", minimum=0.0),
        Param("seed", 0, "seed of the heads' shared nn.Linear initialisation", minimum=0),
        KNN,
    ),
    score=score,
    transductive=True,
)
