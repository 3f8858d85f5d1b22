"""Prefect tasks of the retrain flow for the identity models: the marking detector
(``marking``) and the imprint embedding (``imprint``). Same steps as the defect models:
load and split, train, score the holdout, score the champion on it, register.

Both learn from marking-station + inspection archive pairs (``tasks.identity``); the
split is by sheet, so no sheet of the holdout was seen in training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.metrics import detection_report
from core.settings import Settings
from models import registry
from models.data import digest_ids, unit_hash
from models.identity.matching import ReferenceIndex, identification_report
from tasks.identity import (
    DetectionData,
    Observations,
    find_pairs,
    load_observations,
    write_yolo_dataset,
)
from tasks.training import score_champion

log = logging.getLogger(__name__)
OPEN_SET_SHARE = 0.2  # of holdout sheets kept out of the gallery, to score unknowns


@dataclass
class IdentityPrepared:
    kind: str
    source: str
    detection: object | None = None  # tasks.identity.YoloDataset (marking)
    observations: Observations | None = None  # (imprint)
    split: dict[str, np.ndarray] | None = None

    @property
    def holdout_ids(self) -> list[str]:
        if self.kind == "marking":
            return list(self.detection.holdout.names)
        return [
            f"{self.observations.sources[i]}/{self.observations.frame_ids[i]}/"
            f"{self.observations.sheet_ids[i]}"
            for i in self.split["holdout"]
        ]

    @property
    def holdout_digest(self) -> str:
        return digest_ids(self.holdout_ids)

    def holdout(self):
        if self.kind == "marking":
            return self.detection.holdout
        return self.observations.subset(self.split["holdout"])

    def counts(self) -> dict[str, int]:
        if self.kind == "marking":
            return self.detection.counts
        return {k: len(v) for k, v in self.split.items()}


def prepare(kind: str, path: Path, workdir: Path, size: str) -> IdentityPrepared:
    if kind == "marking":
        from models.identity.detector import recipe_for

        dataset = write_yolo_dataset(
            find_pairs(path), workdir / "yolo", recipe_for(size).max_images
        )
        log.info("marking dataset %s: %s", path, dataset.counts)
        if not dataset.counts["train"] or not dataset.counts["validation"]:
            raise ValueError(f"{path} has too few pictures for a train/validation split")
        return IdentityPrepared(kind, str(path), detection=dataset)
    observations = load_observations(path)
    split = observations.splits()
    log.info("imprint crops %s: %s", path, {k: len(v) for k, v in split.items()})
    return IdentityPrepared(kind, str(path), observations=observations, split=split)


@dataclass
class IdentityTrained:
    model: object
    recipe: object
    history: list[dict]
    seconds: float
    device: str


def train(
    prepared: IdentityPrepared,
    size: str,
    device: str,
    seed: int,
    workdir: Path,
    overrides: dict | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> IdentityTrained:
    """``progress(epoch, epochs, row)`` after each epoch (the command line's bar)."""
    if prepared.kind == "marking":
        from models.identity import detector

        recipe = detector.recipe_for(size, **(overrides or {}))
        result = detector.fit(
            prepared.detection.yaml, recipe, device, seed, workdir / "runs", progress
        )
        return IdentityTrained(
            result.detector, recipe, result.history, result.seconds, result.device
        )
    from models.identity import imprint

    recipe = imprint.imprint_recipe(size, **(overrides or {}))
    o = prepared.observations
    result = imprint.fit(
        o.crops,
        o.sheet_ids,
        o.sources,
        prepared.split,
        recipe,
        seed,
        workdir / "imprint",
        log=log.info,
        progress=progress,
    )
    return IdentityTrained(result.model, recipe, result.history, result.seconds, result.device)


def evaluate_detector(detector, data: DetectionData) -> dict:
    return detection_report(detector.detect(data.images), data.boxes)


def evaluate_imprint(model, data: Observations) -> dict:
    """Station crops are the gallery (less an open-set share of sheets), inspection crops
    the queries: rank-1, FAR, FRR at the model's threshold."""
    gallery = [
        i
        for i, (s, k) in enumerate(zip(data.sources, data.sheet_ids, strict=True))
        if s == "station" and unit_hash(f"open-set/{k}") >= OPEN_SET_SHARE
    ]
    queries = [i for i, s in enumerate(data.sources) if s == "inspection"]
    if not gallery or not queries:
        raise ValueError("the imprint holdout needs station and inspection crops")
    index = ReferenceIndex([data.sheet_ids[i] for i in gallery], model.embed(data.crops[gallery]))
    matches = index.match(model.embed(data.crops[queries]), model.threshold)
    report = identification_report(
        [data.sheet_ids[i] for i in queries], set(index.sheet_ids), matches, model.threshold
    )
    return {**report, "registered_sheets": len(index)}


def evaluate(kind: str, model, holdout) -> dict:
    return (
        evaluate_detector(model, holdout) if kind == "marking" else evaluate_imprint(model, holdout)
    )


def champion_score(settings: Settings, kind: str, holdout) -> tuple[int | None, float | None]:
    return score_champion(settings, kind, lambda model: evaluate(kind, model, holdout))


def register(
    settings: Settings,
    prepared: IdentityPrepared,
    trained: IdentityTrained,
    size: str,
    report: dict,
    champion: tuple[int | None, float | None],
) -> registry.Registration:
    kind = prepared.kind
    params = {
        **trained.recipe.to_params(),
        "size": size,
        "data": prepared.source,
        "device": trained.device,
        **{f"{k}_items": v for k, v in prepared.counts().items()},
        "training_seconds": round(trained.seconds, 1),
    }
    if kind == "imprint":
        params["threshold"] = round(trained.model.threshold, 6)
    return registry.register_challenger(
        settings,
        kind,
        trained.model,
        params,
        trained.history,
        report,
        None,
        prepared.holdout_digest,
        champion,
    )
