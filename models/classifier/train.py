"""Training the single-label classifier: class-weighted cross-entropy and augmentation
(flips, 90-degree turns unless the recipe leaves them out, shifts, brightness), keeping the
epoch with the best validation accuracy; a recipe with several members trains that many
networks apart and averages their probabilities."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F

from models.classifier.classifier import Classifier
from models.classifier.network import ClassifierSpec, ResNetClassifier
from models.data import ClassificationData
from models.devices import autocast, resolve_device
from models.kinds import within_budget
from models.preprocess import Preprocess, with_channels

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
    # Quarter turns in training: off where the rolling direction is a cue (it is fixed
    # by the line's camera, and defects stretch along it).
    turns: bool = True
    # Networks trained one after another from their own random start, on their own
    # shuffles, whose probabilities are averaged.
    members: int = 1
    # Square crops of this many pixels, cut at random from the input-size picture, are
    # what training sees (0: the whole picture, shifted): the picture keeps its scale,
    # the step costs what a picture of the crop's size costs, and validation and
    # inference see the whole picture at the input size.
    crop: int = 0
    # The most pictures (crops) one member sees in training, in all: on a larger data set
    # it trains fewer epochs (models.kinds.within_budget); 0: no budget.
    pictures: int = 0

    def to_params(self) -> dict:
        return asdict(self)


SIZES = MappingProxyType(
    {
        "tiny": ClassifierRecipe("resnet10", 64, 32, 2, 3e-3),
        "demo": ClassifierRecipe("resnet10", 64, 32, 4, 3e-3),
        # Three ResNet10s without quarter turns, each trained on 160-pixel crops of the
        # picture at 200 (NEU's own size) and run on the whole of it: NEU validation 0.987
        # against 0.978 at 128 without crops, holdout 0.990 against 0.973-0.980 (pitted
        # surface 48 of 50 against 44-45; docs/benchmarks.md, 2026-12-02). Its budget is
        # NEU's 972 training pictures 24 times, about 6 minutes a member on 2 cores.
        "default": ClassifierRecipe(
            "resnet10", 200, 32, 24, 2e-3, turns=False, members=3, crop=160, pictures=24_000
        ),
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


def _augment(x: torch.Tensor, g: torch.Generator, turns: bool, crop: int = 0) -> torch.Tensor:
    n = x.shape[0]
    x = _crops(x, crop, g) if crop else x.clone()
    for dims, p in (((-1,), 0.5), ((-2,), 0.5)):
        flip = torch.rand(n, generator=g) < p
        x[flip] = x[flip].flip(dims)
    if turns:
        turn = torch.rand(n, generator=g) < 0.5
        x[turn] = x[turn].transpose(-1, -2)  # square inputs: a transpose is a turn plus a flip
    if not crop:
        shift = torch.randint(-8, 9, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=shift, dims=(-2, -1))
    gain = 1 + 0.3 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    offset = 0.3 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    return x * gain + offset


def _crops(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A ``size``-pixel square cut from each picture of ``x`` at its own random place."""
    height, width = x.shape[-2:]
    if size >= min(height, width):
        return x.clone()
    tops = torch.randint(0, height - size + 1, (len(x),), generator=g).tolist()
    lefts = torch.randint(0, width - size + 1, (len(x),), generator=g).tolist()
    return torch.stack(
        [p[..., t : t + size, s : s + size] for p, t, s in zip(x, tops, lefts, strict=True)]
    )


@torch.no_grad()
def _accuracy(net, x: torch.Tensor, labels: torch.Tensor, device, batch_size: int) -> float:
    net.eval()
    right = 0
    for s in range(0, len(x), batch_size):
        with autocast(device):
            logits = net(x[s : s + batch_size].to(device))
        right += int((logits.argmax(1).cpu() == labels[s : s + batch_size]).sum())
    return right / max(len(x), 1)


def _fit_member(
    x: torch.Tensor,
    labels: torch.Tensor,
    validation: tuple[torch.Tensor, torch.Tensor],
    weights: torch.Tensor,
    recipe: ClassifierRecipe,
    spec: ClassifierSpec,
    dev: torch.device,
    g: torch.Generator,
    report: Callable[[dict], None],
) -> ResNetClassifier:
    """One network trained from random weights; its epoch with the best validation accuracy."""
    net = ResNetClassifier(replace(spec, members=1)).to(dev)
    steps = max(recipe.epochs * math.ceil(len(x) / recipe.batch_size), 1)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, recipe.learning_rate, total_steps=steps
    )
    best_state, best_accuracy = copy.deepcopy(net.state_dict()), -1.0
    for epoch in range(recipe.epochs):
        t = time.perf_counter()
        net.train()
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for s in range(0, len(x), recipe.batch_size):
            idx = order[s : s + recipe.batch_size]
            xb = _augment(x[idx], g, recipe.turns, recipe.crop).to(dev)
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
        accuracy = _accuracy(net, *validation, dev, recipe.batch_size)
        report(
            {
                "epoch": epoch + 1,
                "loss": total / max(len(x), 1),
                "validation_accuracy": accuracy,
                "seconds": time.perf_counter() - t,
            }
        )
        if accuracy > best_accuracy:
            best_accuracy, best_state = accuracy, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    return net


def fit(
    train: ClassificationData,
    validation: ClassificationData,
    recipe: ClassifierRecipe,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int, dict], None] | None = None,
) -> ClassifierTraining:
    started = time.perf_counter()
    recipe = within_budget(recipe, len(train))
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    dev = resolve_device(device)
    pre = Preprocess.fit(train.images, recipe.input_size, recipe.input_size)
    channels = 3 if train.images.ndim == 4 else 1  # colour where the data set has it
    spec = ClassifierSpec(recipe.encoder, len(train.class_names), recipe.members, channels)
    x, labels = torch.from_numpy(pre(train.images)), torch.from_numpy(train.labels).long()
    vx, vlabels = (
        torch.from_numpy(pre(with_channels(validation.images, channels))),
        torch.from_numpy(validation.labels).long(),
    )
    weights = class_weights(train.labels, len(train.class_names)).to(dev)
    history: list[dict] = []
    epochs = recipe.members * recipe.epochs

    def report(member: int, row: dict) -> None:
        row = {"member": member + 1, **row, "epoch": len(history) + 1}
        history.append(row)
        log.info(
            "member %d/%d, epoch %d/%d: loss %.4f, validation accuracy %.4f (%.0f s)",
            member + 1,
            recipe.members,
            row["epoch"],
            epochs,
            row["loss"],
            row["validation_accuracy"],
            row["seconds"],
        )
        if progress:
            progress(row["epoch"], epochs, row)

    net = ResNetClassifier(spec).to(dev)
    for member, module in enumerate(net.members):
        trained = _fit_member(
            x, labels, (vx, vlabels), weights, recipe, spec, dev, g, partial(report, member)
        )
        module.load_state_dict(trained.encoder.state_dict())
    accuracy = _accuracy(net, vx, vlabels, dev, recipe.batch_size)
    classifier = Classifier(net, spec, pre, train.class_names, dev)
    return ClassifierTraining(
        classifier, recipe, history, time.perf_counter() - started, str(dev), accuracy
    )


def recipe_for(size: str, **overrides) -> ClassifierRecipe:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    return replace(SIZES[size], **overrides)
