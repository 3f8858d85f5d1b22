"""Single-label defect classifier: a ResNet on grey or colour pictures (seed 002's design,
from scratch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.encoders import STAGE_CHANNELS, build_resnet


@dataclass(frozen=True)
class ClassifierSpec:
    encoder: str = "resnet18"
    n_classes: int = 6
    members: int = 1  # networks trained apart, their probabilities averaged
    channels: int = 1  # 1: grey pictures; 3: colour (RGB), where the data set has colour


def _member(spec: ClassifierSpec) -> nn.Module:
    net = build_resnet(spec.encoder, spec.channels)
    net.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(STAGE_CHANNELS[4], spec.n_classes))
    return net


class ResNetClassifier(nn.Module):
    """(N,C,H,W) float → class logits (N,K). With several members, the logits are the log
    of the members' mean probabilities, so that their softmax is that mean."""

    def __init__(self, spec: ClassifierSpec) -> None:
        super().__init__()
        self.encoder = _member(spec)
        self.others = nn.ModuleList(_member(spec) for _ in range(spec.members - 1))

    @property
    def members(self) -> list[nn.Module]:
        return [self.encoder, *self.others]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.others:
            return self.encoder(x)
        mean = torch.stack([m(x).float().softmax(dim=1) for m in self.members]).mean(dim=0)
        return mean.clamp_min(1e-12).log()
