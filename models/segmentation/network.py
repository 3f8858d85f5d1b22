"""U-Net with a ResNet encoder and a per-class classification gate on the same encoder.

One forward pass gives both outputs the inspection needs: mask logits per class (seeds 001
and 003) and image-level logits per class (seed 004's multilabel classifier). Sharing the
encoder halves the compute of the two-network design the Severstal winners used, which
matters at line speed. The module knows nothing of files, MLflow or Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.encoders import STAGE_CHANNELS, build_resnet


@dataclass(frozen=True)
class UNetSpec:
    encoder: str = "resnet18"
    n_classes: int = 4
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32)
    in_channels: int = 1  # the grey frame, and with fine detail (models.preprocess) 3
    # the gate also reads each class's strongest mask logit (UNetResNet.forward)
    mask_evidence: bool = False


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(cin + skip, cout), _conv(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.body(torch.cat([x, skip], dim=1))


class UNetResNet(nn.Module):
    """(N,in_channels,H,W) float → mask logits (N,C,H,W) and gate logits (N,C)."""

    def __init__(self, spec: UNetSpec) -> None:
        super().__init__()
        resnet = build_resnet(spec.encoder, spec.in_channels)
        self.encoder = resnet
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        skips = (STAGE_CHANNELS[3], STAGE_CHANNELS[2], STAGE_CHANNELS[1], STAGE_CHANNELS[0])
        blocks, cin = [], STAGE_CHANNELS[4]
        for skip, cout in zip(skips, spec.decoder_channels, strict=True):
            blocks.append(DecoderBlock(cin, skip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.mask_head = nn.Conv2d(cin, spec.n_classes, 3, padding=1)
        self.gate_head = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(2 * STAGE_CHANNELS[4], spec.n_classes)
        )
        # per class, how much the mask's strongest logit adds to the gate's logit; 0 at
        # first, learnt with the gate
        self.evidence = nn.Parameter(torch.zeros(spec.n_classes)) if spec.mask_evidence else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.encoder
        s0 = self.stem(x)  # 1/2
        s1 = r.layer1(r.maxpool(s0))  # 1/4
        s2 = r.layer2(s1)  # 1/8
        s3 = r.layer3(s2)  # 1/16
        s4 = r.layer4(s3)  # 1/32
        pooled = torch.cat([s4.mean(dim=(2, 3)), s4.amax(dim=(2, 3))], dim=1)
        gate = self.gate_head(pooled)
        y = s4
        for block, skip in zip(self.decoder, (s3, s2, s1, s0), strict=True):
            y = block(y, skip)
        # The decoder stops at half resolution; logits are upsampled, not features (4x cheaper).
        masks = F.interpolate(self.mask_head(y), size=x.shape[-2:], mode="bilinear")
        if self.evidence is not None:
            # The gate pools the encoder's last stage, 1/32 of the input: a line a pixel
            # wide is lost there, but not in the mask, which the decoder brings back to
            # half the input. Its strongest logit per class tells the gate what the mask
            # saw; detached, so the mask learns from its own loss alone.
            gate = gate + self.evidence * masks.detach().amax(dim=(2, 3))
        return masks, gate
