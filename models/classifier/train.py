"""Training the single-label classifier: class-weighted cross-entropy and augmentation
(flips, 90-degree turns, shifts, brightness), keeping the epoch with the best validation
accuracy."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F

from models.classifier.classifier import Classifier
from models.classifier.network import ClassifierSpec, ResNetClassifier
from models.data import ClassificationData
from models.devices import autocast, resolve_device
from models.preprocess import Preprocess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierRecipe:
    encoder: str
    input_size: int  # square input, pixels
    batch_size: int
    epochs: int
    learning_rate: float
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05

    def to_params(self) -> dict:
        return asdict(self)


SIZES = MappingProxyType(
    {
        "tiny": ClassifierRecipe("resnet10", 64, 32, 2, 3e-3),
        "demo": ClassifierRecipe("resnet10", 64, 32, 4, 3e-3),
        "default": ClassifierRecipe("resnet18", 128, 32, 24, 2e-3),
        "gpu": ClassifierRecipe("resnet34", 200, 64, 80, 1e-3),
    }
)


@dataclass
class ClassifierTraining:
    classifier: Classifier
    recipe: ClassifierRecipe
    history: list[dict]
    seconds: float
    device: str
    validation_accuracy: float


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1 (1 for a class with no examples)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 1.0)
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    x = x.clone()
    for dims, p in (((-1,), 0.5), ((-2,), 0.5)):
        flip = torch.rand(n, generator=g) < p
        x[flip] = x[flip].flip(dims)
    turn = torch.rand(n, generator=g) < 0.5
    x[turn] = x[turn].transpose(-1, -2)  # square inputs: a transpose is a turn plus a flip
    shift = torch.randint(-8, 9, (2,), generator=g).tolist()
    x = torch.roll(x, shifts=shift, dims=(-2, -1))
    gain = 1 + 0.3 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    offset = 0.3 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    return x * gain + offset


@torch.no_grad()
def _accuracy(net, x: torch.Tensor, labels: torch.Tensor, device, batch_size: int) -> float:
    net.eval()
    right = 0
    for s in range(0, len(x), batch_size):
        with autocast(device):
            logits = net(x[s : s + batch_size].to(device))
        right += int((logits.argmax(1).cpu() == labels[s : s + batch_size]).sum())
    return right / max(len(x), 1)


def fit(
    train: ClassificationData,
    validation: ClassificationData,
    recipe: ClassifierRecipe,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int, dict], None] | None = None,
) -> ClassifierTraining:
    started = time.perf_counter()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    dev = resolve_device(device)
    pre = Preprocess.fit(train.images, recipe.input_size, recipe.input_size)
    spec = ClassifierSpec(recipe.encoder, len(train.class_names))
    net = ResNetClassifier(spec).to(dev)
    x, labels = torch.from_numpy(pre(train.images)), torch.from_numpy(train.labels).long()
    vx, vlabels = (
        torch.from_numpy(pre(validation.images)),
        torch.from_numpy(validation.labels).long(),
    )
    weights = class_weights(train.labels, len(train.class_names)).to(dev)
    steps = max(recipe.epochs * math.ceil(len(x) / recipe.batch_size), 1)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, recipe.learning_rate, total_steps=steps
    )
    history, best_state, best_accuracy = [], copy.deepcopy(net.state_dict()), -1.0
    for epoch in range(recipe.epochs):
        t = time.perf_counter()
        net.train()
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for s in range(0, len(x), recipe.batch_size):
            idx = order[s : s + recipe.batch_size]
            xb = _augment(x[idx], g).to(dev)
            with autocast(dev):
                logits = net(xb)
                loss = F.cross_entropy(
                    logits.float(),
                    labels[idx].to(dev),
                    weight=weights,
                    label_smoothing=recipe.label_smoothing,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        accuracy = _accuracy(net, vx, vlabels, dev, recipe.batch_size)
        row = {
            "epoch": epoch + 1,
            "loss": total / max(len(x), 1),
            "validation_accuracy": accuracy,
            "seconds": time.perf_counter() - t,
        }
        history.append(row)
        log.info(
            "epoch %d/%d: loss %.4f, validation accuracy %.4f (%.0f s)",
            epoch + 1,
            recipe.epochs,
            row["loss"],
            accuracy,
            row["seconds"],
        )
        if accuracy > best_accuracy:
            best_accuracy, best_state = accuracy, copy.deepcopy(net.state_dict())
        if progress:
            progress(epoch + 1, recipe.epochs, row)
    net.load_state_dict(best_state)
    classifier = Classifier(net, spec, pre, train.class_names, dev)
    return ClassifierTraining(
        classifier,
        recipe,
        history,
        time.perf_counter() - started,
        str(dev),
        max(best_accuracy, 0.0),
    )


def recipe_for(size: str, **overrides) -> ClassifierRecipe:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    return replace(SIZES[size], **overrides)
