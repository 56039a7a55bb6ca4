"""torchvision ImageNet backbones (224 px) with the shared ``features``/``fc`` interface.

Each backbone keeps the unmodified torchvision model as ``.net``, so its state
dict is torchvision's and torchvision's (or robustness-library) checkpoints
load into it directly. ``features`` re-implements only the last steps of the
forward pass, to expose the representation and the fake ReLU.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import Bottleneck

from .base import ModelWeightsError, load_state_dict_checked, relu

# arch -> (torchvision builder, the ImageNet weights that pretrained=True loads)
TORCHVISION_MODELS = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
    "vgg16": (tvm.vgg16_bn, tvm.VGG16_BN_Weights.IMAGENET1K_V1),
}


def _last_block(block: nn.Module, x: torch.Tensor, fake_relu: bool) -> torch.Tensor:
    """torchvision's BasicBlock/Bottleneck forward, with an optional fake final relu."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    return relu(out + identity, fake_relu)


class TorchvisionResNet(nn.Module):
    """torchvision ``resnet18`` / ``resnet50`` (randomly initialised; see :func:`load_pretrained`).

    Args:
        arch: ``"resnet18"`` (representation 512) or ``"resnet50"`` (2048).
        num_classes: logits (default 1000).

    Input: normalised (N, 3, 224, 224) (other sizes work: pooling is adaptive).
    Representation: the pooled input of ``fc``. Fake ReLU: the last block's final relu.
    """

    def __init__(self, arch: str = "resnet18", num_classes: int = 1000) -> None:
        super().__init__()
        self.net = TORCHVISION_MODELS[arch][0](weights=None, num_classes=num_classes)

    @property
    def fc(self) -> nn.Linear:
        return self.net.fc

    def features(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer3(n.layer2(n.layer1(x)))
        x = _last_block(n.layer4[-1], n.layer4[:-1](x), fake_relu)
        return torch.flatten(n.avgpool(x), 1)


class TorchvisionVGG16BN(nn.Module):
    """torchvision ``vgg16_bn`` (randomly initialised; see :func:`load_pretrained`).

    Args:
        num_classes: logits (default 1000).

    Input: normalised (N, 3, 224, 224). Representation: the 4096-d input of
    ``classifier[6]`` (after classifier[4]'s ReLU and classifier[5]'s dropout,
    active in train mode only). Fake ReLU: ``classifier[4]``.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.net = tvm.vgg16_bn(weights=None, num_classes=num_classes)

    @property
    def fc(self) -> nn.Linear:
        return self.net.classifier[6]

    def features(self, x: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
        n = self.net
        x = torch.flatten(n.avgpool(n.features(x)), 1)
        x = n.classifier[:4](x)
        return n.classifier[5](relu(x, fake_relu))


def build_imagenet_backbone(arch: str, num_classes: int = 1000) -> nn.Module:
    """A randomly initialised ImageNet backbone (no download)."""
    return TorchvisionVGG16BN(num_classes) if arch == "vgg16" else TorchvisionResNet(arch, num_classes)


def weights_location(arch: str) -> tuple[str, str, str]:
    """``(url, file_name, cache_folder)`` of the torchvision weights of ``arch``.

    The cache folder is ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``).
    """
    url = TORCHVISION_MODELS[arch][1].url
    return url, os.path.basename(urlparse(url).path), os.path.join(torch.hub.get_dir(), "checkpoints")


def load_pretrained(model: nn.Module, arch: str) -> None:
    """Load torchvision's ImageNet weights of ``arch`` into ``model`` (an ImageClassifier).

    Uses the torchvision weights enum, which reads the file from the torch hub
    cache, downloading it there first if it is missing.

    Raises:
        ModelWeightsError: the download failed (e.g. no network) or the cached
            file is unreadable or does not fit; the message gives the URL, the
            file name and the folder where the file can be placed by hand.
    """
    weights = TORCHVISION_MODELS[arch][1]
    url, file_name, cache = weights_location(arch)
    cached = os.path.join(cache, file_name)
    was_cached = os.path.isfile(cached)
    how_to = (
        f"Download {url} by hand and save it as {cached} (file {file_name} in the torch hub cache "
        f"folder {cache}; set TORCH_HOME to move that folder), or pass weights_path=<file>."
    )
    try:
        state = weights.get_state_dict(model_dir=cache, progress=True, check_hash=True, weights_only=True)
    except Exception as err:  # URLError/OSError offline, RuntimeError on a bad hash, pickle errors, ...
        what = f"the cached file {cached} is unreadable" if was_cached else f"could not download the ImageNet weights of {arch}"
        raise ModelWeightsError(f"{what} ({type(err).__name__}: {err}). {how_to}") from err
    load_state_dict_checked(model.weights_module, state, cached)
