"""α-TIM (Veilleux, Boudiaf, Piantanida, Ben Ayed, NeurIPS 2021, arXiv 2106.11806).

TIM-GD's objective with Tsallis α-entropies H_α(p) = (1 − Σ_k p_k^α) / (α − 1) for the marginal
and the conditional terms: CE(support) − (λ_m·H_α(Ŷ_Q) − λ_c·H_α(Ŷ_Q|X_Q)). The α-marginal
entropy still rewards spread-out predictions but, unlike Shannon's, no longer pulls the query
class shares to uniform, which is what the paper's Dirichlet-imbalanced protocol needs.

Defaults are those of the reference code (oveilleux/Realistic_Transductive_Few_Shot,
``config/*/methods_config/alpha_tim.yaml`` and ``src/methods/tim.py``): weights 1, 1, 1, logits
−(τ/2)·‖x − w‖² with τ = 15 (``temperature 7.5``), Adam at lr 1e-4 for 1000 steps on the class
weights, which start at the support means; Shannon cross-entropy on the support; α tuned by shot
(``alpha auto``: 2 at 1 shot, 7 at ≥ 5 shots and, between, the config's α = 5 that the reference's
tuned rule leaves in place). Where ours differs: features are CL2N, as for diffshot's ``tim`` (the
reference L2-normalises without centring); the gradients are written out by hand (no autograd
graph) and Adam's bias corrections are folded into its step and ε — the same loss and update up to
rounding, so a test finds the predictions of a per-episode autograd + torch.optim.Adam re-creation
of the reference loop up to ties; the reference's ε in (p + ε)^(α−1) is kept only for α < 1 (for
α > 1 it only changes powers of p ≲ 1e-5, whose terms are negligible). The reference's optional α-cross-entropy branch,
(1 − Σ y^α p^(1−α)) / (α − 1) = −D_α(y‖p), rises as predictions approach the labels (minimising
it pushes them away), so it is not offered.

Every episode has its own weights; Adam is element-wise, so stepping all episodes' weights
together trains each exactly as alone. Episodes are stepped in groups small enough for their
features to stay in cache (1000 steps read them 2000 times).
"""

from __future__ import annotations

import dataclasses

from diffshot.episodes import Episodes
from diffshot.errors import UsageError
from diffshot.lazy import torch
from diffshot.methods.base import AUTO, Method, param
from diffshot.methods.tim import logits
from diffshot.ops.classify import prototypes
from diffshot.ops.preprocess import cl2n

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which the reference uses
ADAM_EPS = 1e-8
LOG_EPS = 1e-12  # the reference's ε inside its powers and logarithms
GROUP_BYTES = 4 << 20  # one group's features; measured on 2 loaded cores: ~32 one-shot episodes beat 4, 8 or 16


@dataclasses.dataclass(frozen=True)
class AlphaTimParams:
    """α-TIM's defaults, from the reference code (see the module docstring)."""

    alpha: float | str = param(
        AUTO,
        "Tsallis α of the marginal and conditional entropies (reference: 2 at 1 shot, 7 at ≥ 5 shots, "
        "its config's 5 in between; auto follows that rule)",
        kind=float,
        auto=True,
        minimum=0.0,
    )
    steps: int = param(1000, "Adam steps (reference: 1000)", minimum=0, maximum=100_000)
    lr: float = param(1e-4, "Adam learning rate (reference: 1e-4)", minimum=0.0)
    temperature: float = param(7.5, "logit scale on squared distances: τ/2 with the reference's τ = 15", minimum=0.0)
    ce_weight: float = param(1.0, "weight of the support cross-entropy (reference: 1)", minimum=0.0)
    marginal_weight: float = param(1.0, "weight of the marginal α-entropy H_α(Ŷ) (reference: 1)", minimum=0.0)
    conditional_weight: float = param(1.0, "weight of the conditional α-entropy H_α(Ŷ|X) (reference: 1)", minimum=0.0)

    def check(self) -> None:
        """α = 1 is Shannon's entropy, where the Tsallis form divides by zero (that objective is ``tim``)."""
        if self.alpha == 1.0:
            raise UsageError("parameter alpha_tim.alpha: α = 1 is Shannon's entropy (method tim); give α ≠ 1")


def auto_alpha(shots: float) -> float:
    """The reference's tuned α: 2 at one shot, 7 from five shots, else its config's 5."""
    if shots <= 1:
        return 2.0
    return 7.0 if shots >= 5 else 5.0


def episode_alpha(episodes: Episodes, alpha: float | str) -> float:
    """α for these episodes: an explicit value wins, ``auto`` follows :func:`auto_alpha`."""
    return auto_alpha(episodes.num_support / episodes.ways) if alpha == AUTO else float(alpha)


def resolved_alpha(episodes: Episodes, params: AlphaTimParams) -> dict[str, object]:
    """The α the ``auto`` rule picked for these episodes."""
    return {"alpha": episode_alpha(episodes, params.alpha)}


def power(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """x ** exponent, by repeated products for small whole exponents (α − 1 = 1 or 6 by default; pow is slower)."""
    if exponent == 1.0:
        return x.clone()
    if exponent.is_integer() and 1.0 < exponent <= 8.0:
        result, square, k = None, x, int(exponent)
        while k:
            if k & 1:
                result = square.clone() if result is None else result.mul_(square)
            k >>= 1
            if k:
                square = square * square
        return result
    return x.pow(exponent)


def logit_gradient(
    probs: torch.Tensor, onehot: torch.Tensor, alpha: float, weights: tuple[float, float, float], out: torch.Tensor
) -> torch.Tensor:
    """∂loss/∂logits [E, ways, n] of CE(support) − λ_m·H_α(p̄) + λ_c·mean_i H_α(p_i), written into ``out``.

    ``probs`` [E, ways, n] (support columns first), ``onehot`` [E, ways, ns] the support labels scaled
    by λ_ce / ns. Support: λ_ce·(p − y)/ns. Queries: ∂loss/∂p_ki = α/((α − 1)·nq)·(λ_m·p̄_k^(α−1) −
    λ_c·(p_ki + ε)^(α−1)), taken through the softmax (g ↦ p ⊙ (g − ⟨p, g⟩)). The reference's ε only
    matters for α < 1 (a negative power of zero); for α > 1 it is below float precision and is left out.
    """
    ce_weight, marginal_weight, conditional_weight = weights
    ns = onehot.shape[-1]
    support, query = probs[..., :ns], probs[..., ns:]
    scale = alpha / ((alpha - 1.0) * query.shape[-1])
    torch.mul(support, ce_weight / ns, out=out[..., :ns]).sub_(onehot)
    dprobs = power(query + LOG_EPS if alpha < 1.0 else query, alpha - 1.0).mul_(-conditional_weight * scale)
    dprobs += power(query.mean(-1, keepdim=True), alpha - 1.0).mul_(marginal_weight * scale)
    dprobs -= torch.linalg.vecdot(query, dprobs, dim=-2).unsqueeze(-2)
    return torch.mul(dprobs, query, out=out[..., ns:])


def fine_tune(
    points: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, alpha: float, params: AlphaTimParams
) -> torch.Tensor:
    """The class weights [E, ways, d] after ``steps`` Adam steps on α-TIM's loss (points support first).

    Logits τ·(w·x − ‖w‖²/2), laid out [E, ways, n], drop the −τ‖x‖²/2 of −(τ/2)‖x − w‖²: it is
    constant along a point, so the softmax, the loss and its gradient are the same;
    ∂loss/∂w_k = τ·(Σ_i G_ki·x_i − (Σ_i G_ki)·w_k). Adam is torch.optim.Adam's update with the bias
    corrections folded into the step size and ε (the same values up to rounding).
    """
    tau = 2.0 * params.temperature
    ways = weights.shape[-2]
    loss_weights = (params.ce_weight, params.marginal_weight, params.conditional_weight)
    onehot = torch.nn.functional.one_hot(labels, ways).transpose(-1, -2).to(points.dtype)
    onehot *= params.ce_weight / labels.shape[-1]
    columns = points.transpose(-1, -2).contiguous()
    dlogits = points.new_empty(points.shape[0], ways, points.shape[1])
    w = weights.clone()
    first, second = torch.zeros_like(w), torch.zeros_like(w)
    beta1, beta2 = ADAM_BETAS
    for step in range(1, params.steps + 1):
        half_norms = torch.linalg.vecdot(w, w).unsqueeze(-1)
        probs = torch.baddbmm(half_norms, w, columns, beta=-0.5 * tau, alpha=tau).softmax(-2)
        logit_gradient(probs, onehot, alpha, loss_weights, dlogits)
        grad = torch.baddbmm(w * dlogits.sum(-1, keepdim=True), dlogits, points, beta=-tau, alpha=tau)
        first.lerp_(grad, 1.0 - beta1)
        second.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        correction = (1.0 - beta2**step) ** 0.5
        w.addcdiv_(
            first, second.sqrt().add_(ADAM_EPS * correction), value=-params.lr * correction / (1.0 - beta1**step)
        )
    return w


def score(episodes: Episodes, params: AlphaTimParams) -> torch.Tensor:
    """Logits of the queries against the class weights fine-tuned on α-TIM's loss."""
    points = cl2n(episodes.points, episodes.centre)
    ns = episodes.num_support
    alpha = episode_alpha(episodes, params.alpha)
    weights = prototypes(points[:, :ns], episodes.support_labels, episodes.ways)
    group = max(1, GROUP_BYTES // (points[0].numel() * points.element_size()))
    tuned = torch.cat(
        [
            fine_tune(
                points[s : s + group], episodes.support_labels[s : s + group], weights[s : s + group], alpha, params
            )
            for s in range(0, episodes.num_episodes, group)
        ]
    )
    return logits(points[:, ns:], tuned, params.temperature, True)


METHOD = Method(
    name="alpha_tim",
    summary="α-TIM (Veilleux et al., NeurIPS 2021): TIM with Tsallis α-entropies, so the marginal term no longer "
    "forces equal query classes; 1000 Adam steps at lr 1e-4, τ 15, α 2 (1 shot) / 7 (≥ 5 shots) as in its code.",
    params=AlphaTimParams,
    score=score,
    transductive=True,
    assumes_balance=False,
    resolve_auto=resolved_alpha,
)
