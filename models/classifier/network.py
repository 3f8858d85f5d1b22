"""Single-label defect classifier: a ResNet on grey pictures (seed 002's design, from scratch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.encoders import STAGE_CHANNELS, build_resnet


@dataclass(frozen=True)
class ClassifierSpec:
    encoder: str = "resnet18"
    n_classes: int = 6


class ResNetClassifier(nn.Module):
    """(N,1,H,W) float → class logits (N,K)."""

    def __init__(self, spec: ClassifierSpec) -> None:
        super().__init__()
        self.encoder = build_resnet(spec.encoder)
        self.encoder.fc = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(STAGE_CHANNELS[4], spec.n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)
