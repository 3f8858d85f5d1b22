"""Training the segmentation model and choosing its thresholds on validation data.

Sizes are named, frozen recipes: ``tiny`` trains in seconds on CPU (tests), ``default``
in at most 20 minutes on 2 CPU cores, ``gpu`` is for a data-centre GPU (mixed precision).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np
import torch

from core.metrics import PairCounts, best_f1_threshold, pair_dice
from core.postprocess import Thresholds, apply_thresholds
from models.data import SegmentationData
from models.devices import autocast, resolve_device
from models.encoders import load_encoder_weights
from models.losses import bce_dice_loss, focal_loss
from models.preprocess import Preprocess
from models.segmentation.network import UNetResNet, UNetSpec
from models.segmentation.segmenter import Segmenter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentationRecipe:
    encoder: str
    scale: float  # network input size / frame size, both axes
    batch_size: int
    epochs: int
    learning_rate: float
    crop_width: int | None = None  # train on crops this wide (input pixels); None: whole frames
    positive_share: float = 0.5  # share of crops centred on a defect
    gate_weight: float = 1.0  # focal gate loss weight next to the BCE + Dice mask loss
    focal_gamma: float = 2.0
    weight_decay: float = 1e-4

    def to_params(self) -> dict:
        return asdict(self)


SIZES = MappingProxyType(
    {
        # smoke runs: a model that trains and saves, not one that has learnt much
        "tiny": SegmentationRecipe("resnet10", 0.25, 12, 4, 3e-3, crop_width=64),
        # `make demo`: about two minutes on 2 CPU cores for a 30-40 sheet twin line
        "demo": SegmentationRecipe("resnet10", 0.25, 12, 12, 3e-3, crop_width=64),
        "default": SegmentationRecipe("resnet18", 0.25, 16, 24, 2e-3, crop_width=128),
        "gpu": SegmentationRecipe("resnet34", 1.0, 32, 40, 1e-3, crop_width=512),
    }
)

PIXEL_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREA_GRID = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # full-resolution pixels


@dataclass
class TrainingResult:
    segmenter: Segmenter
    recipe: SegmentationRecipe
    history: list[dict]  # per epoch: loss, validation loss, seconds
    seconds: float
    device: str
    validation_dice: float


def _targets(data: SegmentationData, pre: Preprocess) -> np.ndarray:
    """Soft masks at the input size: the share of each input pixel covered by the class,
    so thin defects that a downscale would erase still pull the output up."""
    out = np.zeros((len(data), len(data.classes), pre.height, pre.width), dtype=np.float16)
    size = (pre.width, pre.height)
    for i in range(len(data)):
        full = data.masks([i])[0]
        for j in np.flatnonzero(full.any(axis=(1, 2))):
            out[i, j] = cv2.resize(full[j].astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return out


def _augment(
    x: torch.Tensor, y: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips along and across the line and a brightness/contrast change, per sample."""
    n = x.shape[0]
    flip_h = torch.rand(n, generator=g) < 0.5
    flip_v = torch.rand(n, generator=g) < 0.5
    x, y = x.clone(), y.clone()
    x[flip_h], y[flip_h] = x[flip_h].flip(-1), y[flip_h].flip(-1)
    x[flip_v], y[flip_v] = x[flip_v].flip(-2), y[flip_v].flip(-2)
    gain = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    shift = 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    return x * gain + shift, y


class CropSampler:
    """Training batches of crops across the frame's width, half of them (by default)
    centred on a defect pixel so that rare classes are seen often enough to be learnt.
    The gate's targets are what each crop shows, not what the whole frame shows."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, recipe: SegmentationRecipe, g: torch.Generator
    ):
        self.x, self.y, self.recipe, self.g = x, y, recipe, g
        width = x.shape[-1]
        self.crop = min(recipe.crop_width or width, width)
        columns = y.float().amax(dim=(1, 2))  # (N, W): columns with any defect
        self.positives = [torch.nonzero(c > 0).flatten() for c in columns]
        self.defective = torch.tensor([len(p) > 0 for p in self.positives])

    def batches(self):
        n, width = len(self.x), self.x.shape[-1]
        order = torch.randperm(n, generator=self.g)
        for start in range(0, n, self.recipe.batch_size):
            idx = order[start : start + self.recipe.batch_size]
            lefts = torch.randint(0, width - self.crop + 1, (len(idx),), generator=self.g)
            want = torch.rand(len(idx), generator=self.g) < self.recipe.positive_share
            for k, i in enumerate(idx.tolist()):
                if want[k] and self.defective[i]:
                    cols = self.positives[i]
                    centre = int(cols[torch.randint(0, len(cols), (1,), generator=self.g)])
                    lefts[k] = min(max(centre - self.crop // 2, 0), width - self.crop)
            pairs = list(zip(idx.tolist(), lefts.tolist(), strict=True))
            xb = torch.stack([self.x[i, ..., a : a + self.crop] for i, a in pairs])
            yb = torch.stack([self.y[i, ..., a : a + self.crop] for i, a in pairs]).float()
            yield xb, yb, (yb.amax(dim=(2, 3)) >= 0.5).float()


def _loss(net, xb, yb, pb, recipe, device):
    with autocast(device):
        mask_logits, gate_logits = net(xb.to(device))
        return bce_dice_loss(mask_logits, yb.to(device)) + recipe.gate_weight * focal_loss(
            gate_logits, pb.to(device), gamma=recipe.focal_gamma
        )


def _train_epoch(net, sampler, recipe, device, optimizer, scheduler, g) -> float:
    net.train()
    total, batches = 0.0, 0
    for xb, yb, pb in sampler.batches():
        xb, yb = _augment(xb, yb, g)
        loss = _loss(net, xb, yb, pb, recipe, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += float(loss.detach())
        batches += 1
    return total / max(batches, 1)


@torch.no_grad()
def _validation_loss(net, x, y, presence, recipe, device) -> float:
    net.eval()
    losses = [
        float(
            _loss(
                net,
                x[s : s + recipe.batch_size],
                y[s : s + recipe.batch_size].float(),
                presence[s : s + recipe.batch_size],
                recipe,
                device,
            )
        )
        for s in range(0, len(x), recipe.batch_size)
    ]
    return float(np.mean(losses)) if losses else float("nan")


def fit(
    train: SegmentationData,
    validation: SegmentationData,
    recipe: SegmentationRecipe,
    device: str = "auto",
    seed: int = 0,
    encoder_weights: str | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> TrainingResult:
    """Train on ``train``, choose thresholds on ``validation``; nothing touches the holdout."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    dev = resolve_device(device)
    h, w = train.images.shape[1:]
    pre = Preprocess.fit(
        train.images,
        max(32, round(h * recipe.scale / 32) * 32),
        max(32, round(w * recipe.scale / 32) * 32),
    )
    spec = UNetSpec(encoder=recipe.encoder, n_classes=len(train.classes))
    net = UNetResNet(spec)
    if encoder_weights:
        load_encoder_weights(net.encoder, Path(encoder_weights))
    net.to(dev)
    x = torch.from_numpy(pre(train.images))
    y = torch.from_numpy(_targets(train, pre))
    vx = torch.from_numpy(pre(validation.images))
    vy = torch.from_numpy(_targets(validation, pre))
    vp = torch.from_numpy(validation.presence().astype(np.float32))
    sampler = CropSampler(x, y, recipe, g)
    steps = recipe.epochs * math.ceil(len(x) / recipe.batch_size)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, recipe.learning_rate, total_steps=max(steps, 1)
    )
    history = []
    for epoch in range(recipe.epochs):
        t = time.perf_counter()
        loss = _train_epoch(net, sampler, recipe, dev, optimizer, scheduler, g)
        val_loss = _validation_loss(net, vx, vy, vp, recipe, dev)
        row = {
            "epoch": epoch + 1,
            "loss": loss,
            "validation_loss": val_loss,
            "seconds": time.perf_counter() - t,
        }
        history.append(row)
        log.info(
            "epoch %d/%d: loss %.4f, validation loss %.4f (%.0f s)",
            epoch + 1,
            recipe.epochs,
            loss,
            val_loss,
            row["seconds"],
        )
        if progress:
            progress(epoch + 1, recipe.epochs, row)
    segmenter = Segmenter(
        net, spec, pre, dict(train.classes), Thresholds.neutral(spec.n_classes), (h, w), dev
    )
    thresholds, val_dice = calibrate(segmenter, validation, vy.numpy())
    segmenter.thresholds = thresholds
    return TrainingResult(
        segmenter, recipe, history, time.perf_counter() - started, str(dev), val_dice
    )


def calibrate(
    segmenter: Segmenter, validation: SegmentationData, soft_targets: np.ndarray
) -> tuple[Thresholds, float]:
    """Per class: the gate threshold with the best image-level F1, then the pixel threshold
    and minimum area with the best mean Dice (at the model's resolution) given that gate.
    ``soft_targets`` are the validation masks at the model's input size (``_targets``)."""
    gate, pixels = segmenter.probabilities(validation.images)
    truth = soft_targets >= 0.5
    presence = validation.presence()
    n_classes = len(segmenter.classes)
    gates, pixel_t, areas, dice = [], [], [], []
    for j in range(n_classes):
        gate_t, _ = best_f1_threshold(gate[:, j], presence[:, j])
        best = (-1.0, 0.5, 0)
        for p in PIXEL_GRID:
            for a in MIN_AREA_GRID:
                t = Thresholds((gate_t,), (p,), (a,))
                masks = apply_thresholds(
                    gate[:, j : j + 1], pixels[:, j : j + 1], t, segmenter.area_scale
                )
                score = float(pair_dice(PairCounts.of(masks, truth[:, j : j + 1])).mean())
                if score > best[0] + 1e-9:
                    best = (score, p, a)
        gates.append(gate_t)
        pixel_t.append(best[1])
        areas.append(best[2])
        dice.append(best[0])
    thresholds = Thresholds(tuple(gates), tuple(pixel_t), tuple(areas))
    log.info("thresholds chosen on %d validation images: %s", len(validation), thresholds.to_dict())
    return thresholds, float(np.mean(dice))


def recipe_for(size: str, **overrides) -> SegmentationRecipe:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    return replace(SIZES[size], **overrides)
