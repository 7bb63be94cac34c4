"""The field's few-shot backbones, written to accept its checkpoints' parameter names.

Each module returns the pooled penultimate feature [batch, dim]; classifier heads are not built.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from diffshot.errors import DiffshotError
from diffshot.extract.archs import ARCHS


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 (with bias, as in ProtoNet), BN, ReLU, 2x2 max-pool."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Sequential):
    """The ProtoNet encoder: 4 x [conv3x3 64, BN, ReLU, maxpool 2], output flattened (64-d at 28x28)."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__(*[_conv_block(in_channels if i == 0 else width, width) for i in range(4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened output of the four blocks."""
        return super().forward(x).flatten(1)


class ResNet12Block(nn.Module):
    """Three conv3x3-BN-LeakyReLU(0.1) layers, a 1x1 projected shortcut, then 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output, spatially halved."""
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.pool(self.act(out + self.downsample(x)))


class ResNet12(nn.Module):
    """The common few-shot ResNet-12 (MetaOptNet/FEAT/RFS naming): widths 64-160-320-640, 640-d."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (64, 160, 320, 640)) -> None:
        super().__init__()
        ins = (in_channels, *widths[:-1])
        for i, (cin, cout) in enumerate(zip(ins, widths, strict=True), start=1):
            self.add_module(f"layer{i}", nn.Sequential(ResNet12Block(cin, cout)))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled output of the four blocks."""
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.pool(x).flatten(1)


class BasicBlock(nn.Module):
    """The ResNet basic block (torchvision naming: conv1/bn1/conv2/bn2/downsample)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 as in the Diff-ResNet code: 3x3 stride-1 stem, no max-pool, 512-d after global pooling."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        cin = 64
        for i, (cout, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
            self.add_module(f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled output of the last stage."""
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.pool(x).flatten(1)


class WideBasic(nn.Module):
    """Pre-activation wide block, Diff-ResNet layout: bn1, conv1, bn2, conv2 (strided), shortcut.0."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output (not activated: the next block pre-activates)."""
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + self.shortcut(x)


class S2M2Block(nn.Module):
    """Pre-activation wide block, S2M2 layout: bn1, conv1 (strided), bn2, conv2, convShortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.convShortcut: nn.Module | None = None
        if in_channels != out_channels:
            self.convShortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output; a projected shortcut takes the pre-activated input."""
        activated = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(activated))))
        return out + (x if self.convShortcut is None else self.convShortcut(activated))


class S2M2Stage(nn.Module):
    """A stage of S2M2 blocks under the attribute ``layer`` (so keys read ``block1.layer.0.*``)."""

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's blocks in turn."""
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-28-10 (widths 160-320-640, 4 blocks a stage), 640-d after BN, ReLU and global pooling.

    ``layout="diffresnet"`` follows the Diff-ResNet code (``layer1..3``, biased convs); ``layout="s2m2"``
    follows the S2M2 checkpoints the field shares (``block1..3.layer``, bias-free convs).
    """

    def __init__(self, in_channels: int = 3, layout: str = "diffresnet", depth: int = 28, widen: int = 10) -> None:
        super().__init__()
        per_stage = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        s2m2 = layout == "s2m2"
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=not s2m2)
        self.stage_names: tuple[str, ...] = ()
        for i, stride in enumerate((1, 2, 2), start=1):
            cin, cout = widths[i - 1], widths[i]
            block = S2M2Block if s2m2 else WideBasic
            blocks = [block(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(per_stage)]
            name = f"block{i}" if s2m2 else f"layer{i}"
            self.add_module(name, S2M2Stage(blocks) if s2m2 else nn.Sequential(*blocks))
            self.stage_names += (name,)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled, activated output of the last stage."""
        x = self.conv1(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.pool(torch.relu(self.bn1(x))).flatten(1)


def wrn_layout(checkpoint_keys: Iterable[str]) -> str:
    """Which WRN layout a checkpoint's keys follow: ``s2m2`` (``block1.layer.*``) or ``diffresnet``."""
    return "s2m2" if any("block1.layer." in key for key in checkpoint_keys) else "diffresnet"


def build_backbone(arch: str, in_channels: int = 3, checkpoint_keys: Iterable[str] = ()) -> nn.Module:
    """A freshly initialised backbone for ``arch`` (not torchscript, which is loaded whole)."""
    if arch == "conv4":
        return Conv4(in_channels)
    if arch == "resnet12":
        return ResNet12(in_channels)
    if arch == "resnet18":
        return ResNet18(in_channels)
    if arch == "wrn28_10":
        return WideResNet(in_channels, layout=wrn_layout(checkpoint_keys))
    raise DiffshotError(f"unknown arch={arch!r}; choose one of {', '.join(ARCHS)}")
