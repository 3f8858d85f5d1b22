"""Training the segmentation model and choosing its thresholds on validation data (and,
with ``calibrate_on_training``, on the training data too).

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
import torch.nn.functional as F

from core.fine_lines import fine_scratches
from core.metrics import best_f1_threshold
from core.postprocess import Thresholds, by_contrast, contrast_offsets
from core.rle import rle_decode, rle_encode
from core.steel_look import distract
from models.data import SegmentationData
from models.devices import autocast, resolve_device
from models.encoders import load_encoder_weights
from models.kinds import within_budget
from models.losses import bce_dice_loss, focal_loss
from models.preprocess import Preprocess
from models.segmentation.network import UNetResNet, UNetSpec
from models.segmentation.segmenter import Segmenter, context_fits, upsampled

log = logging.getLogger(__name__)


GATE_BY = ("f1", "dice")  # how calibration may choose a class's gate (``calibrate``)


def _check_gate_by(gate_by: str) -> None:
    if gate_by not in GATE_BY:
        raise ValueError(f"gate_by {gate_by!r}: choose one of {', '.join(GATE_BY)}")


@dataclass(frozen=True)
class SegmentationRecipe:
    encoder: str
    scale: float  # network input size / frame size, both axes
    batch_size: int
    epochs: int
    learning_rate: float
    crop_width: int | None = None  # train on crops this wide (input pixels); None: whole frames
    positive_share: float = 0.5  # share of crops centred on a defect
    paste_share: float = 0.0  # share of those whose defect is pasted onto another frame's crop
    randomise: float = 0.0  # chance of each photometric change of domain randomisation
    distractors: float = 0.0  # chance of each of real steel's non-defects (core.steel_look)
    gate_weight: float = 1.0  # focal gate loss weight next to the BCE + Dice mask loss
    focal_gamma: float = 2.0
    weight_decay: float = 1e-4
    detail_window: int = 0  # with a window, fine detail beside the grey (models.preprocess)
    cell_targets: bool = False  # a cell's target: 1 where any of its pixels is the class
    speckle: float = 0.0  # chance of a crop's fine detail getting real steel's specks
    shift: float = 0.0  # chance of a crop being moved up or down (``_shifted``)
    mask_evidence: bool = False  # the gate also reads the mask's strongest logit per class
    # how calibration chooses each class's gate threshold: "f1", the best image-level F1,
    # then the rest given it; "dice", together with the rest by validation mean Dice
    gate_by: str = "f1"
    # a false-alarm budget: each class's gate at least this quantile of its gate over the
    # validation frames without the class (0.99: at most about 1 % of them let through);
    # 0: no floor
    gate_floor: float = 0.0
    # Thresholds chosen on the training frames as well as the validation frames: more
    # frames of each rare class to choose on (a 100-sheet recording's validation split
    # holds one frame of fine scratches), at the price of frames the network has seen
    calibrate_on_training: bool = False
    # The most crops the network sees in training, in all: on a larger recording it trains
    # fewer epochs (models.kinds.within_budget); 0: no budget.
    pictures: int = 0
    # Rows of each neighbour a frame that tiles the line is run between when inspected
    # or scored (``Segmenter.context_rows``; thresholds are chosen on frames alone); 0:
    # each frame alone
    context_rows: int = 0
    # Frames added to training: copies of training frames with the twin's fine scratches
    # drawn in, labelled as the class named fine_scratches (``_with_drawn_lines``); 0: none
    drawn_lines: int = 0

    def __post_init__(self) -> None:
        """Options that do not go together are refused when the recipe is made, before
        any training."""
        if self.speckle and not self.detail_window:
            raise ValueError("speckle draws specks into the fine detail: set detail_window too")
        _check_gate_by(self.gate_by)
        if not 0 <= self.gate_floor < 1:
            raise ValueError(f"gate_floor {self.gate_floor}: a quantile, 0 (none) to below 1")
        if self.drawn_lines < 0:
            raise ValueError(f"drawn_lines {self.drawn_lines}: a number of frames, 0 for none")

    def to_params(self) -> dict:
        return asdict(self)


# What the quarter-scale recipes (demo, default) give the network and its gate: fine
# detail beside the grey, cell targets, and the gate reading the mask. With them a twin
# holdout rose from 0.940-0.947 to 0.953-0.957 over three seeds of `default` and fine
# scratches were found at all; real Severstal frames fell (docs/benchmarks.md, "The
# gate reads the mask").
FINE = MappingProxyType({"detail_window": 15, "cell_targets": True, "mask_evidence": True})

SIZES = MappingProxyType(
    {
        # smoke runs: a model that trains and saves, not one that has learnt much
        "tiny": SegmentationRecipe("resnet10", 0.25, 12, 4, 3e-3, crop_width=64),
        # `make demo`: about two minutes on 2 CPU cores for its 40-sheet twin line; 36
        # epochs found more patches than 12 in three seeds of three (docs/benchmarks.md,
        # "The demo's recipe, 36 epochs")
        "demo": SegmentationRecipe("resnet10", 0.25, 12, 36, 3e-3, crop_width=64, **FINE),
        # Its budget is the 100-sheet recording's 745 training frames 72 times (15-23
        # minutes on 2 cores; 24 and 48 scored lower on two twin holdouts, docs/
        # benchmarks.md, "More epochs"); a 300-sheet recording trains 23. Its thresholds
        # are chosen on the training frames too: on the same holdouts that scored better
        # than validation alone for each of three seeds (docs/benchmarks.md, "Thresholds
        # chosen on the training frames too"). Half its crops are moved up or down: fine
        # scratches were found on more of their frames on two twin holdouts in each of
        # three seeds (docs/benchmarks.md, "Crops moved past the frame's edge"). Frames
        # that tile the line are run between 64 rows of their neighbours: mean Dice rose
        # on three twin holdouts for each of three seeds (docs/benchmarks.md, "The rows
        # around each frame"). It trains on 200 more frames with fine scratches drawn in
        # (57 epochs within the same budget): fine scratches scored higher on three twin
        # holdouts in each of three seeds (seed 4242 .28-.50 -> .56, seed 7 .35-.55 ->
        # .63-.68), the mean within -0.007 to +0.006 (docs/benchmarks.md, "Fine
        # scratches drawn into training frames").
        "default": SegmentationRecipe(
            "resnet18",
            0.25,
            16,
            72,
            2e-3,
            crop_width=128,
            pictures=54_000,
            calibrate_on_training=True,
            shift=0.5,
            context_rows=64,
            drawn_lines=200,
            **FINE,
        ),
        "gpu": SegmentationRecipe("resnet34", 1.0, 32, 40, 1e-3, crop_width=512),
    }
)

PIXEL_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREA_GRID = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # full-resolution pixels
# (contrast, reach) of ``core.postprocess.by_contrast``, the first none: masks cut to the
# pixels that stand off their neighbourhood, where that scores better on validation. On
# twin frames, the best quarter-scale masks of the truth scored 0.28 -> 0.64 (fine
# scratches) and 0.80 -> 0.88 (scratches) cut so, and lost on pits and patches
# (docs/benchmarks.md, "Masks cut to the frame's own contrast")
CONTRAST_GRID = ((0, 0), (10, 3), (15, 3), (20, 3), (10, 6), (15, 6), (20, 6))


@dataclass
class TrainingResult:
    segmenter: Segmenter
    recipe: SegmentationRecipe
    history: list[dict]  # per epoch: loss, validation loss, seconds
    seconds: float
    device: str
    validation_dice: float  # the mean Dice of the frames the thresholds were chosen on


def _targets(data: SegmentationData, pre: Preprocess, cells: bool = False) -> np.ndarray:
    """Soft masks at the input size: the share of each input pixel covered by the class,
    so thin defects that a downscale would erase still pull the output up; with
    ``cells``, 1 wherever any of the cell's pixels is the class (a line one pixel wide
    fills its cells: with fine detail the network sees it, and the cut to the frame's
    contrast brings the mask back to its pixels)."""
    out = np.zeros((len(data), len(data.classes), pre.height, pre.width), dtype=np.float16)
    size = (pre.width, pre.height)
    for i in range(len(data)):
        full = data.masks([i])[0]
        for j in np.flatnonzero(full.any(axis=(1, 2))):
            share = cv2.resize(full[j].astype(np.float32), size, interpolation=cv2.INTER_AREA)
            out[i, j] = share > 0 if cells else share
    return out


def _augment(
    x: torch.Tensor, y: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips along and across the line and a brightness/contrast change, per sample (the
    fine detail, if any, is a difference of grey levels: the contrast scales it, the
    brightness leaves it)."""
    n = x.shape[0]
    flip_h = torch.rand(n, generator=g) < 0.5
    flip_v = torch.rand(n, generator=g) < 0.5
    x, y = x.clone(), y.clone()
    x[flip_h], y[flip_h] = x[flip_h].flip(-1), y[flip_h].flip(-1)
    x[flip_v], y[flip_v] = x[flip_v].flip(-2), y[flip_v].flip(-2)
    gain = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    shift = 0.2 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    x = x * gain
    x[:, :1] += shift
    return x, y


def _randomised(
    x: torch.Tensor, pre: Preprocess, chance: float, g: torch.Generator
) -> torch.Tensor:
    """Light and camera other than the training line's, each change per crop with
    ``chance``: a gamma, an uneven illumination across the crop, sensor noise, blur. Only
    the grey channel changes: fine detail, if any, is the frame's as it was."""
    n = x.shape[0]
    detail = x[:, 1:]
    x = x[:, :1]
    r = (x * pre.std + pre.mean).clamp(0, 1)

    def some() -> torch.Tensor:
        return (torch.rand(n, 1, 1, 1, generator=g) < chance).float()

    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.9 * some())
    r = r.clamp_min(1e-4) ** gamma
    field = F.interpolate(torch.randn(n, 1, 3, 5, generator=g), size=x.shape[-2:], mode="bicubic")
    r = r * (1 + 0.25 * torch.rand(n, 1, 1, 1, generator=g) * some() * field)
    r = r + torch.randn(x.shape, generator=g) * 0.03 * torch.rand(n, 1, 1, 1, generator=g) * some()
    blurred = F.avg_pool2d(F.pad(r, (1, 1, 1, 1), mode="replicate"), 3, 1)
    b = some() * 0.5
    r = r * (1 - b) + blurred * b
    return torch.cat([(r.clamp(0, 1) - pre.mean) / pre.std, detail], dim=1)


def _distracted(
    xb: torch.Tensor,
    yb: torch.Tensor,
    pre: Preprocess,
    chance: float,
    scale: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops with real steel's non-defects drawn in (stains, splashes, uneven light, the
    strip's edge; ``core.steel_look``), each with ``chance``; off the strip no defect is
    left in the soft masks. They are drawn on the grey channel only."""
    grey = ((xb[:, 0] * pre.std + pre.mean) * 255).numpy()
    xs, ys = xb.clone(), yb.clone()
    for k in range(len(xb)):
        image, off = distract(rng, grey[k], yb[k].amax(dim=0).numpy() > 0, chance, scale)
        xs[k, 0] = torch.from_numpy((image.clip(0, 255) / 255 - pre.mean) / pre.std)
        ys[k, :, torch.from_numpy(off)] = 0
        xs[k, 1:, torch.from_numpy(off)] = 0  # off the strip is no fine detail either
    return xs, ys


def _speckled(x: torch.Tensor, pre: Preprocess, chance: float, g: torch.Generator) -> torch.Tensor:
    """Crops with specks in their fine detail, each crop with ``chance``: real steel shows
    scale flakes, bright grains and dark spots a pixel or two across, far more than the
    twin's surface, and fine detail shows each at its full contrast. A speck is a cell
    of one of the two detail channels raised to 15-80 grey levels (a quarter of that,
    at most, in the grey channel, as averaging leaves it), at a density of up to 3 %
    of the crop's cells: isolated, unlike the lines and clusters the classes draw, and
    never labelled."""
    n, _, h, w = x.shape
    some = (torch.rand(n, 1, 1, generator=g) < chance).float()
    density = torch.rand(n, 1, 1, generator=g) * 0.03 * some
    where = (torch.rand(n, h, w, generator=g) < density).float()
    level = (15 + 65 * torch.rand(n, h, w, generator=g)) / (255.0 * pre.std)
    bright = torch.rand(n, h, w, generator=g) < 0.5
    out = x.clone()
    speck = where * level
    out[:, 1] = torch.maximum(out[:, 1], speck * bright)
    out[:, 2] = torch.maximum(out[:, 2], speck * ~bright)
    share = torch.rand(n, h, w, generator=g) * 0.25
    out[:, 0] += speck * share * torch.where(bright, 1.0, -1.0)
    return out


def _shifted(
    x: torch.Tensor, y: torch.Tensor, chance: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops moved up or down by up to half their height, each with ``chance``: what
    moves past the edge is lost, as where a defect crosses into the next frame of the
    recording and only its first or last rows are on this one; the rows left empty
    take the crop's own, mirrored at the edge."""
    n, h = x.shape[0], x.shape[-2]
    moves = torch.randint(1, h // 2 + 1, (n,), generator=g)
    moves = torch.where(torch.rand(n, generator=g) < 0.5, moves, -moves)
    chosen = torch.rand(n, generator=g) < chance
    xs, ys = x.clone(), y.clone()
    for k in chosen.nonzero().flatten().tolist():
        rows = torch.arange(h) + int(moves[k])
        rows = torch.where(rows < 0, -rows - 1, rows)
        rows = torch.where(rows >= h, 2 * h - 1 - rows, rows)
        xs[k], ys[k] = x[k][:, rows], y[k][:, rows]
    return xs, ys


STEEL = 60  # grey levels: a frame's 31 x 31 median at or above it is steel, not the gap


def _placed(
    mask: np.ndarray, steel: np.ndarray, rng: np.random.Generator, tries: int = 20
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Where a group of lines ``mask`` goes on a frame whose ``steel`` is known: (the
    frame's rows and columns, the part of the mask inside them), its top drawn so that up
    to a quarter of it may lie past the frame's top or bottom edge, every pixel of it on
    steel; None where ``tries`` places all miss (a frame of the gap between sheets)."""
    h, w = steel.shape
    mh, mw = mask.shape
    for _ in range(tries):
        top = int(rng.integers(-mh // 4, h - 3 * mh // 4))
        left = int(rng.integers(0, w - mw + 1))
        rows = slice(max(top, 0), min(top + mh, h))
        part = (slice(rows.start - top, rows.stop - top), slice(None))
        here = (rows, slice(left, left + mw))
        if mask[part].any() and steel[here][mask[part]].all():
            return here, part
    return None


def _with_drawn_lines(
    data: SegmentationData, count: int, rng: np.random.Generator
) -> SegmentationData:
    """``data`` and ``count`` more frames: copies of its frames, drawn at random, each
    with one or two groups of fine scratches as the twin draws them (``core.fine_lines``)
    drawn in and labelled as its class named fine_scratches, beside the labels the frame
    had. A group is placed where the frame shows steel (its local median at least
    ``STEEL`` grey levels; the twin draws them only on sheets) and may run up to a
    quarter of its square past the frame's top or bottom edge, as where a scratch
    crosses into the next frame. The change goes through what the twin's camera does to
    it: the light (0.75-1.0 of it) and, on half the frames, a blur along the line of up
    to 0.9 pixels. Data without such a class (a plant's own classes) is returned as it
    is, and the log says so."""
    # here, not at the top: core.labels brings defusedxml, which the GPU check's machine
    # lacks, and the check imports this module for its recipes
    from core.labels import SEVERSTAL_CLASSES

    fine = SEVERSTAL_CLASSES[2]  # the class drawn, by its name
    named = [c for c, name in data.classes.items() if name == fine]
    if not named:
        log.warning(
            "drawn_lines: %s has no class named %s; trained on its own frames only",
            data.source,
            fine,
        )
        return data
    class_id = named[0]
    h, w = data.images.shape[1:]
    picks = rng.integers(0, len(data), count).tolist()
    images = data.images[picks]  # a copy: indexed by a list
    rles = []
    for k, i in enumerate(picks):
        steel = cv2.medianBlur(images[k], 31) >= STEEL
        label = rle_decode(data.rles[i].get(class_id, ""), (h, w)).astype(bool)
        change = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(1, 3))):
            mask, delta = fine_scratches(rng)
            mask, delta = mask[:h, :w], delta[:h, :w]  # frames smaller than the shape
            if placed := _placed(mask, steel, rng):
                here, part = placed
                change[here] += np.where(mask[part], delta[part], 0) * rng.uniform(0.75, 1.0)
                label[here] |= mask[part]
        sigma = rng.uniform(0, 0.9) if rng.random() < 0.5 else 0.0
        if sigma > 0.3:
            change = cv2.GaussianBlur(change, (0, 0), sigmaX=0.5, sigmaY=sigma)
        images[k] = (images[k] + change).clip(0, 255).astype(np.uint8)
        rles.append({**data.rles[i], class_id: rle_encode(label)})
    drawn = SegmentationData(
        data.source,
        [f"{data.ids[i]}+lines{k}" for k, i in enumerate(picks)],
        images,
        rles,
        data.classes,
        [data.groups[i] for i in picks],
    )
    return data.joined(drawn)


class CropSampler:
    """Training batches of crops across the frame's width. A share of them (by default
    half) is centred on a defect whose class is drawn evenly among the classes the data
    has: a rare class (pits and fine scratches are on a few per cent of the twin's
    frames, scratches on a third) is seen as often as a common one, not as rarely as it
    occurs. The others are taken anywhere on frames drawn in turn. The gate's targets
    are what each crop shows, any pixel of the class in it, not what the whole frame
    shows. With ``paste_share``, that share of the centred crops has its defects pasted
    onto a crop of another frame (docs/benchmarks.md: measured, and not the default)."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, recipe: SegmentationRecipe, g: torch.Generator
    ):
        self.x, self.y, self.recipe, self.g = x, y, recipe, g
        width = x.shape[-1]
        self.crop = min(recipe.crop_width or width, width)
        covered = y.amax(dim=2) > 0  # (N, C, W): the columns each class covers
        # per class: every (frame, column) it covers
        self.places = [torch.nonzero(covered[:, j]) for j in range(y.shape[1])]
        self.classes = [j for j, p in enumerate(self.places) if len(p)]

    def _centred_left(self) -> tuple[int, int]:
        """(frame, crop's left column) of a crop centred on a defect of a class drawn
        evenly among the classes the data has."""
        g, width = self.g, self.x.shape[-1]
        j = self.classes[int(torch.randint(0, len(self.classes), (1,), generator=g))]
        i, column = self.places[j][int(torch.randint(0, len(self.places[j]), (1,), generator=g))]
        return int(i), min(max(int(column) - self.crop // 2, 0), width - self.crop)

    def batches(self):
        n, width = len(self.x), self.x.shape[-1]
        order = torch.randperm(n, generator=self.g)
        for start in range(0, n, self.recipe.batch_size):
            idx = order[start : start + self.recipe.batch_size].tolist()
            lefts = torch.randint(0, width - self.crop + 1, (len(idx),), generator=self.g)
            want = torch.rand(len(idx), generator=self.g) < self.recipe.positive_share
            pairs = [
                self._centred_left() if want[k] and self.classes else (i, int(lefts[k]))
                for k, i in enumerate(idx)
            ]
            xb, yb = self._cut(pairs)
            if self.recipe.paste_share:
                xb, yb = self._pasted(
                    xb,
                    yb,
                    want & (torch.rand(len(idx), generator=self.g) < self.recipe.paste_share),
                )
            yield xb, yb, (yb.amax(dim=(2, 3)) > 0).float()

    def _cut(self, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames and soft masks of the crops at (frame, left column) ``pairs``."""
        pairs = list(pairs)
        xb = torch.stack([self.x[i, ..., a : a + self.crop] for i, a in pairs])
        yb = torch.stack([self.y[i, ..., a : a + self.crop] for i, a in pairs]).float()
        return xb, yb

    def _pasted(self, xb, yb, chosen):
        """The defects of the chosen crops blended onto a crop of another frame taken
        anywhere: the same few rare defects seen on many backgrounds."""
        rows = chosen.nonzero().flatten()
        if not len(rows):
            return xb, yb
        n, width = len(self.x), self.x.shape[-1]
        frames = torch.randint(0, n, (len(rows),), generator=self.g)
        lefts = torch.randint(0, width - self.crop + 1, (len(rows),), generator=self.g)
        bx, by = self._cut(zip(frames.tolist(), lefts.tolist(), strict=True))
        # every defect of the crop, widened by a pixel and feathered over another
        hard = F.max_pool2d((yb[rows].amax(dim=1, keepdim=True) > 0).float(), 3, 1, 1)
        alpha = F.avg_pool2d(hard, 3, 1, 1)
        xb[rows] = bx * (1 - alpha) + xb[rows] * alpha
        yb[rows] = by * (1 - alpha) + yb[rows] * alpha
        return xb, yb


def _loss(net, xb, yb, pb, recipe, device):
    with autocast(device):
        mask_logits, gate_logits = net(xb.to(device))
        return bce_dice_loss(mask_logits, yb.to(device)) + recipe.gate_weight * focal_loss(
            gate_logits, pb.to(device), gamma=recipe.focal_gamma
        )


def _train_epoch(net, sampler, recipe, pre, device, optimizer, scheduler, g, rng) -> float:
    net.train()
    total, batches = 0.0, 0
    for xb, yb, pb in sampler.batches():
        if recipe.distractors:
            xb, yb = _distracted(xb, yb, pre, recipe.distractors, recipe.scale, rng)
        if recipe.shift:
            xb, yb = _shifted(xb, yb, recipe.shift, g)
        if recipe.distractors or recipe.shift:  # labels lost: the gate's targets follow
            pb = (yb.amax(dim=(2, 3)) > 0).float()
        if recipe.randomise:
            xb = _randomised(xb, pre, recipe.randomise, g)
        if recipe.speckle:  # the recipe refuses it without fine detail
            xb = _speckled(xb, pre, recipe.speckle, g)
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
    """Train on ``train``, choose thresholds on ``validation`` (with the recipe's
    ``calibrate_on_training``, on both); nothing touches the holdout."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    # the frames drawn into are trained on; thresholds are chosen on the recording's own
    seen = _with_drawn_lines(train, recipe.drawn_lines, rng) if recipe.drawn_lines else train
    recipe = within_budget(recipe, len(seen))
    dev = resolve_device(device)
    h, w = train.images.shape[1:]
    pre = Preprocess.fit(
        train.images,
        max(32, round(h * recipe.scale / 32) * 32),
        max(32, round(w * recipe.scale / 32) * 32),
        recipe.detail_window,
    )
    spec = UNetSpec(
        encoder=recipe.encoder,
        n_classes=len(train.classes),
        in_channels=pre.channels,
        mask_evidence=recipe.mask_evidence,
    )
    net = UNetResNet(spec)
    if encoder_weights:
        load_encoder_weights(net.encoder, Path(encoder_weights))
    net.to(dev)
    x = torch.from_numpy(pre(seen.images))
    y = torch.from_numpy(_targets(seen, pre, recipe.cell_targets))
    vx = torch.from_numpy(pre(validation.images))
    vy = torch.from_numpy(_targets(validation, pre, recipe.cell_targets))
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
        loss = _train_epoch(net, sampler, recipe, pre, dev, optimizer, scheduler, g, rng)
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
        net,
        spec,
        pre,
        dict(train.classes),
        Thresholds.neutral(spec.n_classes),
        (h, w),
        dev,
        _context_rows(recipe.context_rows, h, pre.height),
    )
    # Thresholds are chosen on frames alone (``probabilities``): chosen on frames between
    # their neighbours, they scored lower (docs/benchmarks.md, "The rows around each frame")
    chosen_on = validation.joined(train) if recipe.calibrate_on_training else validation
    thresholds, val_dice = calibrate(segmenter, chosen_on, recipe.gate_by, recipe.gate_floor)
    segmenter.thresholds = thresholds
    return TrainingResult(
        segmenter, recipe, history, time.perf_counter() - started, str(dev), val_dice
    )


def _context_rows(rows: int, height: int, model_rows: int) -> int:
    """The recipe's ``context_rows`` where they are a whole number of the model's rows
    for frames ``height`` high (64 for 256 at 1/4 scale), else none."""
    if rows and not context_fits(rows, height, model_rows):
        log.warning("frames %d rows high: each frame runs alone (context_rows %d)", height, rows)
        return 0
    return rows


def _full_resolution(segmenter: Segmenter, probabilities: np.ndarray) -> np.ndarray:
    """A class's pixel probabilities at the model's resolution brought to the frame's, as
    ``Segmenter.predict`` does it: logits upsampled bilinearly."""
    p = np.clip(probabilities, 1e-6, 1 - 1e-6)
    logits = torch.from_numpy(np.log(p) - np.log1p(-p))[None]
    return upsampled(logits, segmenter.frame_shape)[0].numpy()


def calibrate(
    segmenter: Segmenter, validation: SegmentationData, gate_by: str = "f1", gate_floor: float = 0.0
) -> tuple[Thresholds, float]:
    """Per class: the gate threshold, the pixel threshold, the frame's contrast
    (``CONTRAST_GRID``) and the minimum area, measured at the frames' full resolution as
    inspection scores them. ``gate_by`` "f1": the gate with the best image-level F1, then
    the rest with the best mean Dice given it; "dice": all four together by mean Dice
    over every validation frame, the figure the model is judged by (a gate that turns
    away a frame is right only when the frame has no such defect, and F1 does not count
    those). At the model's quarter scale a fine scratch one or two pixels wide covers at
    most half of any pixel: the truth there was empty, and calibration chose whatever
    kept such masks empty. ``gate_floor``: no gate below that quantile of the class's
    gate over the validation frames without it (``gate_floors``)."""
    _check_gate_by(gate_by)
    gate, pixels = segmenter.probabilities(validation.images)
    presence = validation.presence()
    n, n_classes = presence.shape
    floors = gate_floors(gate, presence, gate_floor)
    if gate_by == "f1":
        gates = [
            max(best_f1_threshold(gate[:, j], presence[:, j])[0], floors[j])
            for j in range(n_classes)
        ]
    else:  # every frame is scored; the gate is chosen with the rest below
        gates = [0.0] * n_classes
    dice = _dice_grid(segmenter, validation, pixels, gate >= np.array(gates)[None, :])
    empty = (~presence).T.astype(np.float64)  # (classes, frames)
    pixel_t, contrasts, reaches, min_areas, best = [], [], [], [], []
    for j in range(n_classes):
        if gate_by == "f1":
            means = dice[j].mean(axis=-1)  # (contrasts, pixel thresholds, areas)
        else:
            gates[j], means = _gate_by_dice(gate[:, j], dice[j], empty[j], floors[j])
        # the first best in grid order: no contrast, the lowest pixel threshold, then the
        # smallest area
        c, k, a = np.unravel_index(int(np.argmax(means)), means.shape)
        pixel_t.append(PIXEL_GRID[k])
        contrasts.append(CONTRAST_GRID[c][0])
        reaches.append(CONTRAST_GRID[c][1])
        min_areas.append(MIN_AREA_GRID[a])
        best.append(float(means[c, k, a]))
    thresholds = Thresholds(
        tuple(float(g) for g in gates),
        tuple(pixel_t),
        tuple(min_areas),
        tuple(contrasts),
        tuple(reaches),
    )
    log.info("thresholds chosen on %d validation images: %s", n, thresholds.to_dict())
    return thresholds, float(np.mean(best))


def _dice_grid(
    segmenter: Segmenter, validation: SegmentationData, pixels: np.ndarray, passed: np.ndarray
) -> np.ndarray:
    """Dice per (class, contrast, pixel threshold, minimum area, frame) of the masks of the
    ``passed`` (frame, class) pairs; a pair not passed scores as the empty mask: 1 where
    the frame has no such defect, else 0."""
    presence = validation.presence()
    n, n_classes = presence.shape
    shape = (n_classes, len(CONTRAST_GRID), len(PIXEL_GRID), len(MIN_AREA_GRID), n)
    dice = np.broadcast_to((~presence).T[:, None, None, None, :], shape).astype(np.float64)
    areas_grid = np.array(MIN_AREA_GRID)
    for i in np.flatnonzero(passed.any(axis=1)):
        truth = validation.masks([i])[0].astype(bool)
        offsets = contrast_offsets(validation.images[i])
        for j in np.flatnonzero(passed[i]):
            full = _full_resolution(segmenter, pixels[i, j])
            truth_area = int(truth[j].sum())
            for k, p in enumerate(PIXEL_GRID):
                above = full >= p
                for c, (contrast, reach) in enumerate(CONTRAST_GRID):
                    mask = by_contrast(validation.images[i], above, contrast, reach, offsets)
                    count, labels, stats, _ = cv2.connectedComponentsWithStats(
                        mask.view(np.uint8), connectivity=8
                    )
                    area = stats[:, cv2.CC_STAT_AREA]
                    hits = np.bincount(labels[truth[j]], minlength=count)
                    keep = area[None, :] >= areas_grid[:, None]  # (areas, components)
                    keep[:, 0] = False  # the background
                    predicted, inter = keep @ area, keep @ hits
                    total = predicted + truth_area
                    dice[j, c, k, :, i] = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1)
    return dice


def gate_floors(gate: np.ndarray, presence: np.ndarray, quantile: float) -> list[float]:
    """Per class, the ``quantile`` of the gate over the frames without the class: a gate
    at or above it lets through at most about 1 - ``quantile`` of such frames. 0 where
    ``quantile`` is 0 or no frame lacks the class."""
    if not quantile:
        return [0.0] * presence.shape[1]
    cleans = (gate[~presence[:, j], j] for j in range(presence.shape[1]))
    return [float(np.quantile(c, quantile, method="higher")) if c.size else 0.0 for c in cleans]


def _gate_by_dice(
    gate: np.ndarray, dice: np.ndarray, empty: np.ndarray, floor: float = 0.0
) -> tuple[float, np.ndarray]:
    """The gate threshold of one class at which its best mean Dice over the frames is
    highest, and the means (contrasts, pixel thresholds, areas) there. ``gate``: (n,) the
    frames' gate probabilities; ``dice``: (..., n) each frame's Dice when let through;
    ``empty``: (n,) 1 where the frame has no such defect. Each candidate lets through the
    frames gated at or above one of their own values, or none; on a tie the higher
    threshold (fewer frames let through). No threshold under ``floor``: only frames
    gated at or above it may pass."""
    order = np.argsort(-gate, kind="stable")
    ranked = gate[order]
    n = len(ranked)
    # through[..., m]: the summed Dice when the m highest-gated frames pass and the rest
    # score as empty masks
    passed_dice = np.concatenate(
        [np.zeros((*dice.shape[:-1], 1)), np.cumsum(dice[..., order], -1)], -1
    )
    passed_empty = np.concatenate([[0.0], np.cumsum(empty[order])])
    through = passed_dice + (empty.sum() - passed_empty)
    # m frames can pass alone only where the m-th and the next are gated differently
    ends = np.flatnonzero(np.append(ranked[:-1] > ranked[1:], True)) + 1
    candidates = np.concatenate([[0], ends[ranked[ends - 1] >= floor]])
    best = through[..., candidates].reshape(-1, len(candidates)).max(axis=0)
    m = int(candidates[int(np.argmax(best))])
    threshold = float(np.nextafter(ranked[0], np.inf)) if m == 0 else float(ranked[m - 1])
    return threshold, through[..., m] / n


def recipe_for(size: str, **overrides) -> SegmentationRecipe:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    return replace(SIZES[size], **overrides)
