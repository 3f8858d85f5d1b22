"""Losses: BCE + soft Dice for masks (seed 003), focal loss for multilabel gates (seed 004)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - Dice per class over the batch, averaged over classes; soft targets allowed."""
    p = torch.sigmoid(logits.float())
    dims = (0, 2, 3)
    intersection = (p * target).sum(dims)
    total = p.sum(dims) + target.sum(dims)
    return (1 - (2 * intersection + smooth) / (total + smooth)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target) + soft_dice_loss(
        logits, target
    )


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_t)^gamma, so that
    the many easy negatives of a rare class stop dominating the gradient."""
    logits = logits.float()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    loss = (1 - p_t) ** gamma * ce
    if alpha is not None:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()
