"""The imprint kind's family (models.kinds): the Keras embedding that re-identifies a
sheet from its marking, and the threshold it matches at."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.data import unit_hash
from models.identity.imprint import imprint_recipe as recipe_for  # noqa: F401
from models.identity.matching import ReferenceIndex, identification_report
from models.kinds import Floor, Trained

log = logging.getLogger(__name__)
OPEN_SET_SHARE = 0.2  # of holdout sheets kept out of the gallery, to score unknowns


def fit(
    train,
    validation,
    recipe,
    device: str,
    seed: int,
    workdir: Path,
    progress: Callable[[int, int, dict], None] | None,
) -> Trained:
    """``train``, ``validation``: marking crops with their sheets and sources
    (tasks.identity.Observations); trained in a TensorFlow child process on CPU."""
    from models.identity import imprint

    n = len(train)
    result = imprint.fit(
        np.concatenate([train.crops, validation.crops]),
        [*train.sheet_ids, *validation.sheet_ids],
        [*train.sources, *validation.sources],
        {"train": np.arange(n), "validation": np.arange(n, n + len(validation))},
        recipe,
        seed,
        workdir / "imprint",
        log=log.info,
        progress=progress,
    )
    return Trained(result.model, recipe, result.history, result.seconds, result.device)


def evaluate(model, data, plots: Path | None = None) -> dict:
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


def floor(report: dict, least: float) -> Floor:
    return Floor("identified", float(report["identified"]), 0.0, least)


def params(model) -> dict:
    return {"threshold": round(model.threshold, 6)}


def headline(report: dict, title: str) -> str:
    return (
        f"{title}: identified [bold]{report['identified']:.4f}[/bold], rank-1 "
        f"{report['rank1']:.4f}, FAR {report['far']:.4f}, FRR {report['frr']:.4f} at "
        f"threshold {report['threshold']:.3f} ({report['mated_queries']} registered and "
        f"{report['non_mated_queries']} unknown queries, "
        f"{report['registered_sheets']} sheets registered)"
    )


def load(bundle: Path, device: str):
    """On the process's Keras backend (torch unless KERAS_BACKEND says otherwise)."""
    from models.identity.imprint import ImprintModel

    return ImprintModel.load(bundle)


def predict(model, frames: np.ndarray) -> np.ndarray:
    """Marking crops (N, 48, 192) uint8 → L2-normalised embeddings (N, D) float32."""
    return model.embed(frames)


def output(config: dict) -> tuple[np.dtype, tuple[int, ...]]:
    return np.dtype(np.float32), (-1, int(config["dim"]))
