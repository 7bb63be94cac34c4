"""The backbones ``extract`` knows and the smallest input each runs on (no torch needed to name them)."""

from __future__ import annotations

ARCHS = ("conv4", "resnet12", "resnet18", "wrn28_10", "torchscript")
# The smallest square input each backbone runs on: conv4 and resnet12 halve the image with 4 max-pools of 2
# (16 -> 8 -> 4 -> 2 -> 1); resnet18 and wrn28_10 downsample with padded stride-2 convolutions, which any size
# survives. A TorchScript module is not known in advance (its own error is reported).
MIN_INPUT_SIDE = {"conv4": 16, "resnet12": 16, "resnet18": 1, "wrn28_10": 1, "torchscript": 1}
