"""Open-set decisions without query labels: a two-cluster (Otsu) split of each episode's unknown scores."""

from __future__ import annotations

from diffshot.lazy import torch


def otsu_threshold(values: torch.Tensor) -> torch.Tensor:
    """The threshold [...] splitting each row of ``values`` [..., n] into two groups of largest between-group variance.

    Otsu's criterion (1979) on the sorted values: for every cut k, w₀·w₁·(m₀ − m₁)², w the group
    shares and m their means; the threshold is the midpoint of the two values around the best cut.
    """
    ordered, _ = values.double().sort(dim=-1)
    n = ordered.shape[-1]
    k = torch.arange(1, n, dtype=ordered.dtype, device=ordered.device)
    prefix = ordered.cumsum(dim=-1)[..., :-1]
    total = ordered.sum(dim=-1, keepdim=True)
    low_mean, high_mean = prefix / k, (total - prefix) / (n - k)
    between = k * (n - k) * (low_mean - high_mean) ** 2
    cut = between.argmax(dim=-1, keepdim=True)
    midpoint = 0.5 * (ordered.gather(-1, cut) + ordered.gather(-1, cut + 1))
    return midpoint[..., 0].to(values.dtype)


def otsu_rejection(unknown: torch.Tensor) -> torch.Tensor:
    """Reject [E, nq] the queries above their episode's Otsu threshold of the unknown score (higher = more unknown)."""
    return unknown > otsu_threshold(unknown)[..., None]
