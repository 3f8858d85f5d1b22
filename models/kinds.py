"""The kinds of model steelsight trains, registers and serves: one frozen spec each.

A kind's spec says everything the rest of the code needs to handle it without naming
it: its registered name, what its ``--data`` must hold, the holdout metric a challenger
must beat, the floor a model that learnt something must clear, its part in the champion
set, the packages its registered model needs, and the module (its *family*) that loads,
trains, scores and describes it. The registry, training, the command line, inspection
and serving all read ``KINDS``; a new kind of model is a new entry here and a new
family module.

Families are imported when used (they bring torch, ultralytics or Keras), so this module
stays cheap to import (the command line's choices come from it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib import import_module
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Literal, Protocol

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_FLOOR = 0.05

Role = Literal["defects", "identity", "offline"]


class UnknownKind(ValueError):
    """A model kind that is not in ``KINDS``."""


class NoChampion(LookupError):
    """Nothing to inspect or serve with: a kind the champion set needs has no champion."""


@dataclass(frozen=True)
class Floor:
    """Whether a version learnt anything: its holdout ``value`` of ``metric`` against what
    a model that learnt nothing scores there (``null``), which it must beat by ``least``."""

    metric: str
    value: float
    null: float
    least: float

    @property
    def passed(self) -> bool:
        return bool(self.value >= self.null + self.least)  # NaN never passes

    def reason(self) -> str:
        return (
            f"holdout {self.metric} {self.value:.4f} is below the floor "
            f"{self.null + self.least:.4f} (a model that learnt nothing scores "
            f"{self.null:.4f}; promotion_floors asks {self.least:+.4f}): not champion"
        )


class Family(Protocol):
    """What a family module provides (``models/*/kind.py``). ``parts`` are what the kind's
    reader in ``tasks.datasets.READERS`` prepared: the train and validation parts."""

    def recipe_for(self, size: str, **overrides) -> Any: ...

    def fit(
        self,
        train: Any,
        validation: Any,
        recipe: Any,
        device: str,
        seed: int,
        workdir: Path,
        progress: Callable[[int, int, dict], None] | None,
        **options,
    ) -> Trained: ...

    def evaluate(self, model: Any, data: Any, plots: Path | None = None) -> dict: ...

    def floor(self, report: dict, least: float) -> Floor: ...

    def params(self, model: Any) -> dict: ...

    def headline(self, report: dict, title: str) -> str: ...

    def load(self, bundle: Path, device: str) -> Any: ...

    def predict(self, model: Any, frames: np.ndarray) -> np.ndarray: ...

    def output(self, config: dict) -> tuple[np.dtype, tuple[int, ...]]: ...


class Exportable(Family, Protocol):
    """A family whose models `steelsight export` writes as ONNX graphs (models.onnx): the
    model's ``export_onnx(path)`` and ``run_onnx(path)``, and what the two engines are
    compared on, each output with the most the engines may differ by."""

    ONNX_TOLERANCE: Mapping[str, float]

    def onnx_outputs(self, model: Any, frames: np.ndarray) -> dict[str, np.ndarray]: ...


def within_budget(recipe: Any, pictures: int) -> Any:
    """``recipe`` with its epochs lowered so that one network sees at most
    ``recipe.pictures`` training pictures (crops) in all, for a training set of
    ``pictures``: a recipe's time budget holds on a larger data set than the one it was
    sized on (more pictures seen fewer times each). Unchanged without a budget (0) or
    within it."""
    if not recipe.pictures or recipe.epochs * pictures <= recipe.pictures:
        return recipe
    epochs = max(1, recipe.pictures // max(pictures, 1))
    log.info(
        "%d training pictures: %d epochs instead of %d, to see %d pictures at most "
        '(the recipe\'s budget; overrides {"pictures": 0} lifts it)',
        pictures,
        epochs,
        recipe.epochs,
        recipe.pictures,
    )
    return replace(recipe, epochs=epochs)


@dataclass
class Trained:
    """A family's ``fit``: the model, its recipe and how training went."""

    model: Any
    recipe: Any
    history: list[dict]
    seconds: float
    device: str


@dataclass(frozen=True)
class ModelKind:
    name: str
    registered_name: str  # in the MLflow registry
    summary: str  # one line: what it is (the command line's help)
    data: str  # what ``--data`` holds for it (help and errors)
    reader: str  # key of tasks.datasets.READERS: how its data is loaded and split
    score: str  # the holdout metric a challenger must beat the champion on
    score_label: str
    # in the champion set: "defects" are needed to inspect at all; "identity" kinds are
    # used together or not at all; "offline" kinds are trained and scored, not served
    role: Role
    family: str  # module implementing ``Family``
    requirements: tuple[str, ...]  # pip requirements of the registered model
    floor: float = DEFAULT_FLOOR  # default of settings.promotion_floors[name]
    columns: tuple[str, ...] = ()  # per-class table of its reports

    @property
    def implementation(self) -> ModuleType:
        return import_module(self.family)


_BASE = ("numpy==2.4.6", "opencv-python-headless==5.0.0.93")
KINDS: Mapping[str, ModelKind] = MappingProxyType(
    {
        k.name: k
        for k in (
            ModelKind(
                name="segmentation",
                registered_name="steelsight-segmentation",
                summary="U-Net + gate, Severstal classes",
                data="a Severstal folder (train.csv + train_images/) or a twin inspection archive",
                reader="defect-masks",
                score="mean_dice",
                score_label="mean Dice",
                role="defects",
                family="models.segmentation.kind",
                requirements=("torch==2.15.0", *_BASE),
                columns=(
                    "dice",
                    "iou",
                    "dice_defective",
                    "images_with_class",
                    "precision",
                    "recall",
                    "f1",
                ),
            ),
            ModelKind(
                name="classification",
                registered_name="steelsight-classifier",
                summary="ResNet defect classes of whole pictures, grey or colour",
                data="a NEU-DET folder (images/ + annotations/) or one folder of images per class",
                reader="class-images",
                score="accuracy",
                score_label="accuracy",
                role="offline",
                family="models.classifier.kind",
                requirements=("torch==2.15.0", *_BASE),
                columns=("precision", "recall", "f1", "support"),
            ),
            ModelKind(
                name="marking",
                registered_name="steelsight-marking",
                summary="YOLO marking detector",
                data="a marking-station + inspection archive pair or a folder of pairs",
                reader="marking-boxes",
                score="map50",
                score_label="mAP50",
                role="identity",
                family="models.identity.marking_kind",
                requirements=("torch==2.15.0", "ultralytics==8.4.190", *_BASE),
            ),
            ModelKind(
                name="imprint",
                registered_name="steelsight-imprint",
                summary="Keras embedding of the marking's paint",
                data="a marking-station + inspection archive pair or a folder of pairs",
                reader="imprint-crops",
                # its sheet among the paint's nearest registered sheets (its role: it
                # proposes candidates; the steel around the marking decides)
                score="candidate_recall",
                score_label="sheet among the paint's candidates",
                role="identity",
                family="models.identity.imprint_kind",
                requirements=("keras==3.15.1", "torch==2.15.0", *_BASE),
            ),
        )
    }
)


def kind(name: str) -> ModelKind:
    if name not in KINDS:
        raise UnknownKind(f"unknown model kind {name!r}: choose one of {', '.join(KINDS)}")
    return KINDS[name]


def family(name: str) -> Family:
    return kind(name).implementation  # type: ignore[return-value]


GREY_FRAMES = (-1, -1, -1)  # (N, H, W) uint8: what every family's pyfunc takes unless it says


def input_shape(name: str, config: dict) -> tuple[int, ...]:
    """The shape of the uint8 pictures ``name``'s registered model takes: its family's
    ``inputs(config)`` where it has one (a colour classifier: (N, H, W, 3)), else grey."""
    inputs = getattr(family(name), "inputs", None)
    return tuple(inputs(config)) if inputs is not None else GREY_FRAMES


def exportable(name: str) -> bool:
    """Whether ``name``'s family can be exported to ONNX (``Exportable``)."""
    return hasattr(family(name), "onnx_outputs")


def floor_least(floors: Mapping[str, float], name: str) -> float:
    """How far above a model that learnt nothing ``name`` must score: the setting
    ``promotion_floors`` (which may name some kinds only), else the kind's default."""
    unknown = sorted(set(floors) - set(KINDS))
    if unknown:
        raise UnknownKind(
            f"promotion_floors names unknown kinds {', '.join(unknown)}: the kinds are "
            f"{', '.join(KINDS)} (STEELSIGHT_PROMOTION_FLOORS)"
        )
    return float(floors.get(name, kind(name).floor))


def in_role(role: Role) -> tuple[str, ...]:
    return tuple(k.name for k in KINDS.values() if k.role == role)


def champion_set(champions: Mapping[str, int | None]) -> dict[str, int] | None:
    """The versions inspection and serving use, from each kind's champion version (None:
    none): every ``defects`` kind, and the ``identity`` kinds when all of them have one.
    None when a ``defects`` kind has no champion (nothing can be inspected)."""
    if any(champions.get(k) is None for k in in_role("defects")):
        return None
    chosen = {k: int(champions[k]) for k in in_role("defects")}  # type: ignore[arg-type]
    identity = in_role("identity")
    if identity and all(champions.get(k) is not None for k in identity):
        chosen |= {k: int(champions[k]) for k in identity}  # type: ignore[arg-type]
    return chosen
