"""The marking kind's family (models.kinds): the YOLO detector of the sheet's marking."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.metrics import detection_report
from models.identity.detector import recipe_for  # noqa: F401  (the family's recipes)
from models.kinds import Floor, Trained


def fit(
    train,
    validation,
    recipe,
    device: str,
    seed: int,
    workdir: Path,
    progress: Callable[[int, int, dict], None] | None,
) -> Trained:
    """``train`` and ``validation``: the one YOLO dataset folder that holds both
    (tasks.identity.write_yolo_dataset), with the largest marking of each picture size."""
    from models.identity.detector import fit as fit_detector

    runs = workdir / "runs"
    result = fit_detector(train.yaml, recipe, device, seed, runs, progress, train.largest)
    return Trained(result.detector, recipe, result.history, result.seconds, result.device)


def evaluate(model, data, plots: Path | None = None) -> dict:
    """mAP50, precision and recall at the model's confidence on pictures with boxes."""
    return detection_report(model.detect(data.images), data.boxes)


def floor(report: dict, least: float) -> Floor:
    return Floor("map50", float(report["map50"]), 0.0, least)


def params(model) -> dict:
    return {}


def headline(report: dict, title: str) -> str:
    return (
        f"{title}: marking mAP50 [bold]{report['map50']:.4f}[/bold] over "
        f"{report['pictures']} pictures ({report['markings']} markings), precision "
        f"{report['precision']:.4f}, recall {report['recall']:.4f}"
    )


def load(bundle: Path, device: str):
    from models.identity.detector import MarkingDetector

    return MarkingDetector.load(bundle, device)


def predict(model, frames: np.ndarray) -> np.ndarray:
    """Grey pictures (N, H, W) uint8 → markings (M, 6) float32: picture index, x_min,
    y_min, x_max, y_max, score."""
    found = model.detect(list(frames))
    rows = [np.c_[np.full(len(f), i, np.float32), f] for i, f in enumerate(found)]
    return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 6), np.float32)


def output(config: dict) -> tuple[np.dtype, tuple[int, ...]]:
    return np.dtype(np.float32), (-1, 6)


# Box corners in pixels and scores; a box found by one engine only is a difference
ONNX_TOLERANCE = {"boxes": 0.5, "scores": 1e-3}


def onnx_outputs(model, frames: np.ndarray) -> dict[str, np.ndarray]:
    """What the two engines are compared on: every box of ``frames`` down to the weak
    detections identification verifies (models.identity.pipeline.WEAK_CONF)."""
    from models.identity.pipeline import WEAK_CONF

    found = model.detect(list(frames), conf=WEAK_CONF)
    rows = np.concatenate(found) if found else np.zeros((0, 5), np.float32)
    return {"boxes": rows[:, :4], "scores": rows[:, 4]}
