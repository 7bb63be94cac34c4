"""The CUDA path: every method gives the CPU's predictions on the same episodes. Runs only where torch sees a GPU."""

from __future__ import annotations

import pytest
import torch

from diffshot.device import resolve_device
from diffshot.episodes import Episodes, EpisodeSpec
from diffshot.features import FeatureSet
from diffshot.methods import REGISTRY
from tests.methods.test_methods import FAST, episodes_of

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("shots", [1, 5])
def test_gpu_predictions_match_the_cpu(synthetic: FeatureSet, name: str, shots: int) -> None:
    """The one CPU/GPU agreement check: at least 99.5% of the queries get the same label (a near-tie may flip
    under the GPU's summation order; benchmarks/gpu_check.py measures agreement over 1,000 episodes)."""
    device = resolve_device("cuda")
    batch, _ = episodes_of(synthetic, EpisodeSpec(5, shots, 10), 40)
    method = REGISTRY[name]
    params = method.parse(FAST.get(name, {}))
    on_gpu = Episodes(batch.points.to(device), batch.support_labels.to(device), batch.ways, batch.centre.to(device))
    cpu = method.score(batch, params).argmax(-1)
    gpu = method.score(on_gpu, params).argmax(-1)
    assert gpu.device.type == "cuda"
    assert (cpu == gpu.cpu()).double().mean().item() >= 0.995


def test_resolving_cuda_turns_tf32_off() -> None:
    torch.backends.cudnn.allow_tf32 = True
    resolve_device("cuda")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
