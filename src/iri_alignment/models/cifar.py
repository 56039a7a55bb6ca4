"""CIFAR-style backbones for 32x32 inputs, each with a channel-width multiplier.

The architectures follow the CIFAR models of MadryLab's ``robustness`` library
(which Nanda et al. used): Kuang Liu's ResNet18, VGG16 with batch norm and DenseNet121,
and the library's CIFAR InceptionV3. ``width`` scales every channel count
(rounded, at least 1); at ``width=1`` the representation sizes are 512 (ResNet18),
512 (VGG16), 1024 (DenseNet121) and 2048 (InceptionV3).

Every backbone takes an already *normalised* NCHW batch (wrap it in
:class:`~iri_alignment.models.base.ImageClassifier` to feed [0, 1] images) and
implements ``features(x, fake_relu) -> rep`` and a final linear layer ``fc``.
Global average pooling is adaptive, so other input sizes work as well.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import global_pool, relu


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded to an int, at least 1."""
    return max(1, int(round(channels * width)))


# ---------------------------------------------------------------------------
# ResNet18 (Kuang Liu / robustness library): 3x3 stem, BasicBlocks [2, 2, 2, 2].


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a (projection) shortcut; relu after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return relu(out, fake_relu)


class ResNet18(nn.Module):
    """CIFAR ResNet18: 3x3 stride-1 stem (64), stages 64-128-256-512 of two BasicBlocks.

    Args:
        num_classes: logits (default 10).
        width: channel multiplier (default 1.0, representation 512).

    Input: normalised (N, 3, 32, 32). Fake ReLU: the last block's final relu.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        planes = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, planes[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        stages, in_planes = [], planes[0]
        for i, p in enumerate(planes):
            stages.append(nn.Sequential(BasicBlock(in_planes, p, 1 if i == 0 else 2), BasicBlock(p, p)))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.layer4[1](self.layer4[0](x), fake_relu=fake_relu)
        return global_pool(x)


# ---------------------------------------------------------------------------
# VGG16 with batch norm, CIFAR variant: conv features, pool to 1x1, one linear layer.

VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """CIFAR VGG16-BN: 13 conv-BN-ReLU layers and 5 max-pools, then ``fc`` (512 -> classes).

    Args:
        num_classes: logits (default 10).
        width: channel multiplier (default 1.0, representation 512).

    Input: normalised (N, 3, 32, 32). Fake ReLU: the last ReLU of the conv
    features (before the final max-pool).
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in VGG16_CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                c = scaled(v, width)
                layers += [nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                in_channels = c
        self.body = nn.Sequential(*layers)
        self.last_relu = max(i for i, m in enumerate(layers) if isinstance(m, nn.ReLU))
        self.fc = nn.Linear(in_channels, num_classes)

    def features(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        for i, layer in enumerate(self.body):
            x = relu(x, fake=True) if fake_relu and i == self.last_relu else layer(x)
        return global_pool(x)


# ---------------------------------------------------------------------------
# DenseNet121 (Kuang Liu / robustness library): pre-activation dense layers.


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (4*growth) then BN-ReLU-conv3x3 (growth); output concatenated to input."""

    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 (compression) then 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet121(nn.Module):
    """CIFAR DenseNet121: growth 32, dense blocks 6-12-24-16, compression 0.5, 3x3 stem (2*growth).

    Args:
        num_classes: logits (default 10).
        width: multiplier of the growth rate (default 1.0, representation 1024).

    Input: normalised (N, 3, 32, 32). Fake ReLU: the final BN-ReLU before pooling.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        growth = scaled(32, width)
        planes = 2 * growth
        self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
        for i, n_layers in enumerate((6, 12, 24, 16), start=1):
            layers = []
            for _ in range(n_layers):
                layers.append(DenseLayer(planes, growth))
                planes += growth
            setattr(self, f"dense{i}", nn.Sequential(*layers))
            if i < 4:
                out_planes = int(math.floor(planes * 0.5))
                setattr(self, f"trans{i}", Transition(planes, out_planes))
                planes = out_planes
        self.bn = nn.BatchNorm2d(planes)
        self.fc = nn.Linear(planes, num_classes)

    def features(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        x = self.conv1(x)
        x = self.trans1(self.dense1(x))
        x = self.trans2(self.dense2(x))
        x = self.trans3(self.dense3(x))
        x = self.dense4(x)
        return global_pool(relu(self.bn(x), fake_relu))


# ---------------------------------------------------------------------------
# InceptionV3, CIFAR variant of the robustness library: torchvision's Mixed
# blocks A-E, stride-1 stem without max-pools (32 -> 30 -> 14 -> 6), no aux logits.


class BasicConv2d(nn.Module):
    """Conv (no bias) - BN - ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        return relu(self.bn(self.conv(x)), fake_relu)


def _avgpool_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), BasicConv2d(in_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2))


class InceptionA(nn.Module):
    """1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-3x3 (as in the robustness library), same size."""

    def __init__(self, in_channels: int, pool_features: int, width: float) -> None:
        super().__init__()
        c64, c48, c96, cp = (scaled(c, width) for c in (64, 48, 96, pool_features))
        self.branch1x1 = BasicConv2d(in_channels, c64, kernel_size=1)
        self.branch5x5 = nn.Sequential(BasicConv2d(in_channels, c48, kernel_size=1), BasicConv2d(c48, c64, kernel_size=5, padding=2))
        self.branch3x3 = nn.Sequential(
            BasicConv2d(in_channels, c64, kernel_size=1),
            BasicConv2d(c64, c96, kernel_size=3, padding=1),
            BasicConv2d(c96, c96, kernel_size=3, padding=1),
        )
        self.branch_pool = _avgpool_conv(in_channels, cp, 3)
        self.out_channels = 2 * c64 + c96 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5(x), self.branch3x3(x), self.branch_pool(x)], 1)


class InceptionB(nn.Module):
    """Grid reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        c384, c64, c96 = (scaled(c, width) for c in (384, 64, 96))
        self.branch3x3 = BasicConv2d(in_channels, c384, kernel_size=3, stride=2)
        self.branch3x3stack = nn.Sequential(
            BasicConv2d(in_channels, c64, kernel_size=1),
            BasicConv2d(c64, c96, kernel_size=3, padding=1),
            BasicConv2d(c96, c96, kernel_size=3, stride=2),
        )
        self.out_channels = c384 + c96 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3stack(x), F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """Factorised 7x7: 1x1 | 1x1-1x7-7x1 | 1x1-(7x1-1x7)x2 | avgpool-1x1, same size."""

    def __init__(self, in_channels: int, channels_7x7: int, width: float) -> None:
        super().__init__()
        c7, c192 = scaled(channels_7x7, width), scaled(192, width)

        def conv(i: int, o: int, k: tuple[int, int]) -> BasicConv2d:
            return BasicConv2d(i, o, kernel_size=k, padding=(k[0] // 2, k[1] // 2))

        self.branch1x1 = BasicConv2d(in_channels, c192, kernel_size=1)
        self.branch7x7 = nn.Sequential(conv(in_channels, c7, (1, 1)), conv(c7, c7, (7, 1)), conv(c7, c192, (1, 7)))
        self.branch7x7stack = nn.Sequential(
            conv(in_channels, c7, (1, 1)),
            conv(c7, c7, (7, 1)),
            conv(c7, c7, (1, 7)),
            conv(c7, c7, (7, 1)),
            conv(c7, c192, (1, 7)),
        )
        self.branch_pool = _avgpool_conv(in_channels, c192, 1)
        self.out_channels = 4 * c192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch7x7(x), self.branch7x7stack(x), self.branch_pool(x)], 1)


class InceptionD(nn.Module):
    """Grid reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | avgpool/2 (as in the robustness library)."""

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        c192, c320 = scaled(192, width), scaled(320, width)
        self.branch3x3 = nn.Sequential(BasicConv2d(in_channels, c192, kernel_size=1), BasicConv2d(c192, c320, kernel_size=3, stride=2))
        self.branch7x7 = nn.Sequential(
            BasicConv2d(in_channels, c192, kernel_size=1),
            BasicConv2d(c192, c192, kernel_size=(1, 7), padding=(0, 3)),
            BasicConv2d(c192, c192, kernel_size=(7, 1), padding=(3, 0)),
            BasicConv2d(c192, c192, kernel_size=3, stride=2),
        )
        self.out_channels = c320 + c192 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch7x7(x), F.avg_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """Expanded filter bank: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | avgpool-1x1, same size.

    ``forward(x, fake_relu=True)`` uses :class:`FakeReLU` for the last ReLU of every branch.
    """

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        c320, c384, c448, c192 = (scaled(c, width) for c in (320, 384, 448, 192))
        self.branch1x1 = BasicConv2d(in_channels, c320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, c384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(c384, c384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c384, c384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3stack_1 = BasicConv2d(in_channels, c448, kernel_size=1)
        self.branch3x3stack_2 = BasicConv2d(c448, c384, kernel_size=3, padding=1)
        self.branch3x3stack_3a = BasicConv2d(c384, c384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3stack_3b = BasicConv2d(c384, c384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, c192, kernel_size=1)
        self.out_channels = c320 + 4 * c384 + c192

    def forward(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        s3 = self.branch3x3stack_2(self.branch3x3stack_1(x))
        pooled = F.avg_pool2d(x, 3, stride=1, padding=1)
        return torch.cat(
            [
                self.branch1x1(x, fake_relu),
                self.branch3x3_2a(b3, fake_relu),
                self.branch3x3_2b(b3, fake_relu),
                self.branch3x3stack_3a(s3, fake_relu),
                self.branch3x3stack_3b(s3, fake_relu),
                self.branch_pool(pooled, fake_relu),
            ],
            1,
        )


class InceptionV3(nn.Module):
    """CIFAR InceptionV3 (robustness library variant), no auxiliary logits.

    Stem: 3x3 convs 32-32-64 (stride 1, padding 1), 1x1 conv 80, 3x3 conv 192
    (no padding, 32 -> 30); then Mixed_5b-5d (A), 6a (B, 30 -> 14), 6b-6e (C),
    7a (D, 14 -> 6), 7b-7c (E); global average pool, dropout 0.5 (active in
    train mode only, as in the robustness library), ``fc``.

    Args:
        num_classes: logits (default 10).
        width: channel multiplier (default 1.0, representation 2048).

    Input: normalised (N, 3, 32, 32). Fake ReLU: the last ReLU of every branch of Mixed_7c.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c32, c64, c80, c192 = (scaled(c, width) for c in (32, 64, 80, 192))
        self.Conv2d_1a_3x3 = BasicConv2d(3, c32, kernel_size=3, padding=1)
        self.Conv2d_2a_3x3 = BasicConv2d(c32, c32, kernel_size=3, padding=1)
        self.Conv2d_2b_3x3 = BasicConv2d(c32, c64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(c64, c80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(c80, c192, kernel_size=3)
        self.Mixed_5b = InceptionA(c192, 32, width)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, width)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, width)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, width)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, 128, width)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, width)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, width)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, width)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, width)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, width)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, width)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(self.Mixed_7c.out_channels, num_classes)

    def features(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"):
            x = getattr(self, name)(x)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b"):
            x = getattr(self, f"Mixed_{name}")(x)
        x = self.Mixed_7c(x, fake_relu)
        return self.dropout(global_pool(x))


CIFAR_BACKBONES: dict[str, type[nn.Module]] = {
    "resnet18": ResNet18,
    "vgg16": VGG16,
    "densenet121": DenseNet121,
    "inceptionv3": InceptionV3,
}
