"""The paper's trained Diff-ResNet head (Wang, Dou, Bao, Shi, TPAMI 2024; official ``fewshot/train.py``).

Per episode: CL2N, cross-domain shift, the kNN graph and Laplacian L of the diffusion method; the network
x ↦ classifier(diffuse_T(x + fc2(relu(fc1(x))))) with T layers x ← x − τ·L·x, trained from scratch
on the support labels: full-batch SGD, lr 0.1, momentum 0.9, weight decay 1e-4, 100 epochs, lr ×0.1
at epochs 50 and 75, nn.Linear's initialisation; loss CE(support) + α·prototype loss with
BD-CSPN-rectified prototypes (α = 0 as default); prediction = argmax on the queries.

A whole chunk trains as one batched model, its gradients written out by hand (no autograd graph).
Exact rewrites make it cheap, none changes the trajectory of SGD: (1) the T layers are one operator
P = (I − τL)ᵀ and only the support rows P_s of the output enter the loss, so the residual input
reaches it as P_s·x (ns rows, not n) and fc2 and the classifier act through ways columns; (2) fc1's
weight and bias only act through the pre-activation Z = x·W1ᵀ + 1·b1ᵀ [n, d], and an SGD step on
[W1, b1] moves Z by −lr·(G·δ + wd·Z) with G = x·xᵀ + 1; momentum is linear too, so Z is trained
directly with gradients G·∂L/∂Z (n²·d per step instead of n·d²); (3) fc2's weight W2 [d, d] is never
materialised: with v = P_s·relu(Z), its gradient (δ·Wc)ᵀ·v = Wcᵀ·(δᵀ·v) has rank ≤ ways, and SGD
with momentum and weight decay is linear, so after t steps W2 = β_t·W2₀ + Σ_s w_ts·U_sᵀ·M_s with
U_s = Wc and M_s = δᵀ·v of step s and scalars β_t, w_ts fixed by the lr schedule, μ and wd; only
Wc·W2 and M·W2ᵀ are ever needed, one shared W2₀ for all episodes.
"""

from __future__ import annotations

import dataclasses
import math

from diffshot.episodes import Episodes
from diffshot.errors import DiffshotError
from diffshot.lazy import functional as F
from diffshot.lazy import torch
from diffshot.methods._graph import knn_param, layers_param, step_size_param
from diffshot.methods.base import Method, param
from diffshot.ops.classify import cosine, rectification_weights
from diffshot.ops.diffusion import diffusion_operator
from diffshot.ops.graph import episode_laplacian
from diffshot.ops.knn import gram
from diffshot.ops.preprocess import transductive_points

LR_MILESTONES = (0.5, 0.75)
GROUP = 24  # episodes trained together (8 to 48 measured within 25% of each other; 16 to 32 within 10%)
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4


@dataclasses.dataclass(frozen=True)
class DiffResNetParams:
    """The official few-shot code's settings."""

    step_size: float = step_size_param()
    layers: int = layers_param()
    n_top: int = param(8, "graph: keep entries below the n_top-th smallest distance (official: 8)", minimum=2)
    sigma: int = param(4, "graph: Gaussian width = sigma-th smallest distance (official: 4)", minimum=1)
    epochs: int = param(
        100, "full-batch SGD epochs (official: 100; lr ×0.1 at 50% and 75%)", minimum=1, maximum=100_000
    )
    lr: float = param(0.1, "SGD learning rate (official: 0.1, momentum 0.9, weight decay 1e-4)", minimum=0.0)
    alpha: float = param(0.0, "weight of the prototype loss, rectified prototypes (official default: 0)", minimum=0.0)
    seed: int = param(0, "seed of the heads' shared nn.Linear initialisation", minimum=0, maximum=2**63 - 1)
    knn: str = knn_param()


@dataclasses.dataclass
class Head:
    """Batched trainable parameters of E residual heads; fc1 is stored as its pre-activation Z = x·W1ᵀ + b1."""

    z: torch.Tensor  # [E, n, d]
    b2: torch.Tensor  # [E, 1, d]
    wc: torch.Tensor  # [E, ways, d]
    bc: torch.Tensor  # [E, 1, ways]


@dataclasses.dataclass
class ImplicitWeight:
    """fc2's weights of E heads as β·W2₀ + Σ_s w_s·U_sᵀ·M_s: a shared start plus a rank-ways term per SGD step."""

    start: torch.Tensor  # [d, d], W2₀ shared by every episode
    left: torch.Tensor  # [E, steps·ways, d], U_s = Wc at step s
    right: torch.Tensor  # [E, steps·ways, d], M_s = ∂L/∂(Wc·W2) at step s
    coefficients: torch.Tensor  # [steps + 1, steps·ways], sgd_coefficients' terms, each repeated ways times
    scales: list[float]  # sgd_coefficients' column 0: β after each step
    scale: float = 1.0  # β, the coefficient of W2₀ now
    weights: torch.Tensor | None = None  # [rank] coefficients of the stored rows now (w_s repeated ways times)

    def left_product(self, rows: torch.Tensor) -> torch.Tensor:
        """rows·W2 [E, k, d] for rows [E, k, d]: the classifier's Wc·W2 costs ways rows, not n."""
        if self.weights is None:
            return (rows @ self.start) * self.scale
        rank = self.weights.shape[0]
        history = (rows @ self.left[:, :rank].mT) * self.weights
        return torch.baddbmm(rows @ self.start, history, self.right[:, :rank], beta=self.scale)

    def right_product(self, rows: torch.Tensor) -> torch.Tensor:
        """rows·W2ᵀ [E, k, d]: the gradient of Wc through Wc·W2."""
        if self.weights is None:
            return (rows @ self.start.mT) * self.scale
        rank = self.weights.shape[0]
        history = (rows @ self.right[:, :rank].mT) * self.weights
        return torch.baddbmm(rows @ self.start.mT, history, self.left[:, :rank], beta=self.scale)

    def record(self, step: int, left: torch.Tensor, right: torch.Tensor) -> None:
        """Store step ``step``'s rank-ways gradient Uᵀ·M and move to the coefficients after that step."""
        rows = slice(step * left.shape[-2], (step + 1) * left.shape[-2])
        self.left[:, rows] = left
        self.right[:, rows] = right
        self.scale = self.scales[step + 1]
        self.weights = self.coefficients[step + 1, : rows.stop]


def linear_init(shape: tuple[int, ...], fan_in: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """U(−1/√fan_in, 1/√fan_in): nn.Linear's default for weights (kaiming_uniform, a = √5) and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=generator, dtype=dtype) * 2.0 - 1.0) * bound


def init_head(points: torch.Tensor, ways: int, seed: int, coefficients: torch.Tensor) -> tuple[Head, ImplicitWeight]:
    """Heads for E episodes, all starting from one seeded nn.Linear initialisation; fc1 as Z = x·W1ᵀ + b1.

    One shared start (rather than one per episode) makes an episode's result independent of the
    chunk it is evaluated in; each episode still trains its own copy.
    """
    e, _, d = points.shape
    generator = torch.Generator().manual_seed(seed)
    shapes = {"w1": (d, d), "b1": (1, d), "w2": (d, d), "b2": (1, d), "wc": (ways, d), "bc": (1, ways)}
    start = {name: linear_init(shape, d, generator, points.dtype).to(points.device) for name, shape in shapes.items()}
    z = torch.baddbmm(start["b1"], points, start["w1"].mT.expand(e, d, d))
    head = Head(z, *(start[name].expand(e, *start[name].shape).clone() for name in ("b2", "wc", "bc")))
    history = points.new_empty(e, (coefficients.shape[0] - 1) * ways, d)
    weights = coefficients[:, 1:].repeat_interleave(ways, -1).to(points.device, points.dtype)
    return head, ImplicitWeight(start["w2"], history, torch.empty_like(history), weights, coefficients[:, 0].tolist())


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


def official_rectified_prototypes(points: torch.Tensor, support_labels: torch.Tensor, ways: int) -> torch.Tensor:
    """The official code's rectified prototypes [E, ways, d]: BD-CSPN's membership over every point, by member count.

    Unlike BD-CSPN, the support points take their argmax class too, and a prototype divides its
    weighted sum by the number of its members, not by the sum of their weights.
    """
    ns = support_labels.shape[-1]
    onehot = F.one_hot(support_labels, ways).to(points.dtype).transpose(-1, -2)
    protos = (onehot @ points[:, :ns]) / onehot.sum(-1, keepdim=True)
    weights, member = rectification_weights(cosine(points, protos), ways)
    return (weights.transpose(-1, -2) @ points) / member.sum(-2)[..., None].clamp_min(1.0)


@dataclasses.dataclass
class TrainingBatch:
    """What one chunk of episodes trains on: the rows of P that enter the loss, their targets, and fc1's Gram."""

    rows: torch.Tensor  # [E, m, n], rows of P = (I − τL)ᵀ: the support's, and the queries' when alpha > 0
    mixed_points: torch.Tensor  # [E, m, d], rows·x: the residual input x reaches the loss only through P
    row_sums: torch.Tensor  # [E, m, 1], rows·1: how fc2's bias b2 reaches the loss
    gram: torch.Tensor  # [E, n, n], x·xᵀ + 1: fc1's Gram matrix, its bias being a weight on a constant input
    targets: torch.Tensor  # [E, ns, ways], one-hot support labels
    alpha: float = 0.0
    distance: torch.Tensor | None = None  # [E, nq, ways], query distances to the rectified prototypes


def training_batch(
    points: torch.Tensor,
    rows: torch.Tensor,
    gram_with_bias: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.0,
    distance: torch.Tensor | None = None,
) -> TrainingBatch:
    """The fixed tensors of training for the rows ``rows`` of P, computed once per chunk."""
    return TrainingBatch(rows, rows @ points, rows.sum(-1, keepdim=True), gram_with_bias, targets, alpha, distance)


def logits_of(
    batch: TrainingBatch, head: Head, composed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [E, m, ways] = rows·(x + relu(Z)·W2ᵀ + 1·b2)·Wcᵀ + bc, with composed = Wc·W2.

    Also returns the residual part rows·(x + 1·b2) and relu(Z), which the gradients reuse.
    """
    hidden = torch.relu(head.z)
    residual = torch.baddbmm(batch.mixed_points, batch.row_sums, head.b2)
    logits = torch.baddbmm(head.bc, residual, head.wc.mT)
    return logits.baddbmm_(batch.rows, hidden @ composed.mT), residual, hidden


def logits_gradient(batch: TrainingBatch, logits: torch.Tensor) -> torch.Tensor:
    """∂loss/∂logits: mean cross-entropy on the support, plus alpha·Σ softmax·distance on the queries."""
    ns = batch.targets.shape[-2]
    grad = logits.softmax(-1)
    if batch.alpha:
        query = grad[:, ns:]
        query.mul_(batch.distance - (query * batch.distance).sum(-1, keepdim=True)).mul_(batch.alpha)
    grad[:, :ns].sub_(batch.targets).div_(ns)
    return grad


def sgd_step(parameters: list[torch.Tensor], grads: list[torch.Tensor], buffers: list[torch.Tensor], lr: float) -> None:
    """torch.optim.SGD's update (momentum 0.9, dampening 0, weight decay 1e-4), in place and batched."""
    torch._foreach_add_(grads, parameters, alpha=WEIGHT_DECAY)
    torch._foreach_mul_(buffers, MOMENTUM)
    torch._foreach_add_(buffers, grads)
    torch._foreach_add_(parameters, buffers, alpha=-lr)


def train_step(batch: TrainingBatch, head: Head, velocity: Head, fc2: ImplicitWeight, step: int, lr: float) -> None:
    """One full-batch SGD step of every head, its gradients written out by hand (no autograd graph)."""
    composed = fc2.left_product(head.wc)
    logits, residual, hidden = logits_of(batch, head, composed)
    dlogits = logits_gradient(batch, logits)
    dcolumns = batch.rows.mT @ dlogits
    dcomposed = dcolumns.mT @ hidden
    dwc = torch.baddbmm(fc2.right_product(dcomposed), dlogits.mT, residual)
    db2 = (batch.row_sums.mT @ dlogits) @ head.wc
    dz = torch.ops.aten.threshold_backward(dcolumns @ composed, head.z, 0.0)
    fc2.record(step, head.wc, dcomposed)
    velocity.z.baddbmm_(batch.gram, dz, beta=MOMENTUM).add_(head.z, alpha=WEIGHT_DECAY)
    head.z.add_(velocity.z, alpha=-lr)
    small = [head.b2, head.wc, head.bc]
    sgd_step(small, [db2, dwc, dlogits.sum(-2, keepdim=True)], [velocity.b2, velocity.wc, velocity.bc], lr)


def train(episodes: Episodes, params: DiffResNetParams) -> torch.Tensor:
    """Train the batched heads; return the query logits [E, nq, ways]."""
    points = transductive_points(episodes.points, episodes.centre, episodes.num_support, True)
    ns, ways = episodes.num_support, episodes.ways
    inner = gram(points)
    lap = episode_laplacian(points, params.n_top, params.sigma, params.knn, inner)
    operator = diffusion_operator(lap, params.step_size, params.layers)
    epochs, alpha = params.epochs, params.alpha
    targets = F.one_hot(episodes.support_labels, ways).to(points.dtype)
    gram_with_bias = inner + 1.0
    if alpha:
        distance = torch.cdist(points[:, ns:], official_rectified_prototypes(points, episodes.support_labels, ways))
        batch = training_batch(points, operator, gram_with_bias, targets, alpha, distance)
    else:
        batch = training_batch(points, operator[:, :ns], gram_with_bias, targets)
    milestones = [int(fraction * epochs) for fraction in LR_MILESTONES]
    lrs = [params.lr * 0.1 ** sum(epoch >= m for m in milestones) for epoch in range(epochs)]
    head, fc2 = init_head(points, ways, params.seed, sgd_coefficients(lrs))
    velocity = Head(*(torch.zeros_like(getattr(head, field.name)) for field in dataclasses.fields(head)))
    for step, lr in enumerate(lrs):
        train_step(batch, head, velocity, fc2, step, lr)
    queries = training_batch(points, operator[:, ns:], gram_with_bias, targets)
    return logits_of(queries, head, fc2.left_product(head.wc))[0]


def score(episodes: Episodes, params: DiffResNetParams) -> torch.Tensor:
    """Query logits of the trained Diff-ResNet heads (argmax = prediction)."""
    n = episodes.points.shape[1]
    if params.n_top > n or params.sigma > n:
        raise DiffshotError(f"diffresnet: n_top and sigma must be at most the {n} points of an episode")
    groups = [
        Episodes(episodes.points[i : i + GROUP], episodes.support_labels[i : i + GROUP], episodes.ways, episodes.centre)
        for i in range(0, episodes.num_episodes, GROUP)
    ]
    return torch.cat([train(group, params) for group in groups])


METHOD = Method(
    name="diffresnet",
    summary="Diff-ResNet's trained head (Wang et al., TPAMI 2024, official few-shot code): residual block, "
    "T diffusion layers, linear classifier, 100 epochs of SGD per episode, batched.",
    params=DiffResNetParams,
    score=score,
    transductive=True,
)
