"""ResNet encoders from torchvision, by name: an explicit registry of frozen specs.

Weights are never downloaded: every network starts from scratch unless a local weights
file is given (``load_encoder_weights``). Inputs are single-channel (grey steel), so the
first convolution takes one channel; a three-channel weights file is folded into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


@dataclass(frozen=True)
class EncoderSpec:
    blocks: tuple[int, int, int, int]
    description: str


ENCODERS = MappingProxyType(
    {
        "resnet10": EncoderSpec((1, 1, 1, 1), "ResNet with one block per stage: tests, CPU"),
        "resnet18": EncoderSpec((2, 2, 2, 2), "ResNet18 (seed 003)"),
        "resnet34": EncoderSpec((3, 4, 6, 3), "ResNet34 (seed 001's best)"),
    }
)
STAGE_CHANNELS = (64, 64, 128, 256, 512)  # stem, layer1..layer4 of a BasicBlock ResNet


def build_resnet(name: str, in_channels: int = 1) -> ResNet:
    """A torchvision ResNet with ``in_channels`` inputs and no classifier weights loaded."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}: choose one of {', '.join(ENCODERS)}")
    net = ResNet(BasicBlock, list(ENCODERS[name].blocks))
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def load_encoder_weights(net: ResNet, path: Path) -> None:
    """Initialise from a local torchvision-layout state dict (e.g. ImageNet ResNet18).

    The fully connected layer is skipped and RGB first-layer filters are summed into the
    grey channel, the network's first; its other input channels, if any (the fine detail
    of ``models.preprocess``), start from zero weights. Any other mismatch is an error
    naming the file.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    conv1 = state.get("conv1.weight")
    if conv1 is not None:
        weight = torch.zeros_like(net.conv1.weight)
        weight[:, :1] = conv1.sum(dim=1, keepdim=True)  # a grey file's filters as they are
        state["conv1.weight"] = weight
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a matching ResNet state dict (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); pass a torchvision ResNet of the same depth"
        )
