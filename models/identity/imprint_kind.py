"""The imprint kind's family (models.kinds): the Keras embedding of a marking's paint.

Identification rests on the steel around the marking (models.identity.pipeline); the
paint embedding proposes candidates beside the steel's own. So a version is scored by
what it is used for: the share of holdout queries whose sheet is among its
``PAINT_CANDIDATES`` nearest registered sheets (chance: that many over the registry),
with its own identification at its threshold reported beside it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.data import unit_hash
from models.identity.imprint import imprint_recipe as recipe_for  # noqa: F401
from models.identity.matching import ReferenceIndex, identification_report, normalise
from models.identity.pipeline import PAINT_CANDIDATES
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
    embedded = model.embed(data.crops[queries])
    truth = [data.sheet_ids[i] for i in queries]
    matches = index.match(embedded, model.threshold)
    report = identification_report(truth, set(index.sheet_ids), matches, model.threshold)
    # the share of registered sheets' queries with their sheet among the nearest few
    k = min(PAINT_CANDIDATES, len(index))
    nearest = np.argsort(-(normalise(embedded) @ index.embeddings.T), axis=1)[:, :k]
    ids = np.asarray(index.sheet_ids)
    mated = [n for n, t in enumerate(truth) if t in set(index.sheet_ids)]
    found = [truth[n] in set(ids[nearest[n]]) for n in mated]
    return {
        **report,
        "registered_sheets": len(index),
        "candidates": k,
        "candidate_recall": float(np.mean(found)) if found else float("nan"),
        "candidate_chance": k / len(index),
    }


def floor(report: dict, least: float) -> Floor:
    """Above what random embeddings give: their sheet among k of n by chance, k / n."""
    return Floor(
        "candidate_recall", float(report["candidate_recall"]), report["candidate_chance"], least
    )


def params(model) -> dict:
    return {"threshold": round(model.threshold, 6)}


def headline(report: dict, title: str) -> str:
    return (
        f"{title}: sheet among the paint's {report['candidates']} nearest "
        f"[bold]{report['candidate_recall']:.4f}[/bold] (chance "
        f"{report['candidate_chance']:.4f}); on the paint alone: identified "
        f"{report['identified']:.4f}, rank-1 "
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


# Components of unit embeddings
ONNX_TOLERANCE = {"embeddings": 1e-3}


def onnx_outputs(model, frames: np.ndarray) -> dict[str, np.ndarray]:
    """What the two engines are compared on: the embeddings of ``frames`` each shrunk to
    a crop (steel, and the marking where a frame shows one)."""
    import cv2

    rows, cols = model.crop_size
    crops = np.stack([cv2.resize(f, (cols, rows), interpolation=cv2.INTER_AREA) for f in frames])
    return {"embeddings": model.embed(crops)}
