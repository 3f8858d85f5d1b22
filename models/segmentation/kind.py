"""The segmentation kind's family (models.kinds): U-Net + per-class gate on Severstal classes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.kinds import Floor, Trained
from models.segmentation.train import recipe_for  # noqa: F401  (the family's recipes)


def fit(
    train,
    validation,
    recipe,
    device: str,
    seed: int,
    workdir: Path,
    progress: Callable[[int, int, dict], None] | None,
    encoder_weights: str | None = None,
) -> Trained:
    from models.segmentation.train import fit as fit_segmenter

    result = fit_segmenter(
        train, validation, recipe, device, seed, encoder_weights=encoder_weights, progress=progress
    )
    return Trained(result.segmenter, result.recipe, result.history, result.seconds, result.device)


def evaluate(model, data, plots: Path | None = None) -> dict:
    """Mean Dice and the per-class table on ``data``, and what the frames looked like to
    the model (``drift_reference``: inspection compares each archive with it); with
    ``plots``, the gate's PR curves and overlays of a few frames (one per class where
    possible) there."""
    from core.drift import reference_of
    from models.segmentation.evaluate import evaluate_segmenter

    result = evaluate_segmenter(model, data)
    levels = data.images.reshape(len(data.images), -1).mean(axis=1)
    result.report["drift_reference"] = reference_of(
        result.gate,
        result.predicted,
        levels,
        list(data.classes.values()),
        units=len(np.unique(data.groups)),
    )
    if plots is not None:
        from models import plots as draw

        plots.mkdir(parents=True, exist_ok=True)
        names = list(data.classes.values())
        draw.pr_curves_png(result.gate, result.presence, names, plots / "gate_pr_curves.png")
        shown = _overlay_sample(result.presence)
        predicted = model.predict(data.images[shown]).masks
        draw.overlays_png(
            data.images[shown],
            data.masks(shown),
            predicted,
            [data.ids[i] for i in shown],
            plots / "overlays.png",
        )
    return result.report


def _overlay_sample(presence: np.ndarray, n: int = 6) -> np.ndarray:
    """Up to n frames to draw: defective ones first, one per class where possible."""
    chosen: list[int] = []
    for j in range(presence.shape[1]):
        hits = np.flatnonzero(presence[:, j])
        if len(hits) and len(chosen) < n:
            chosen.append(int(hits[0]))
    rest = [i for i in range(len(presence)) if i not in chosen]
    return np.array(sorted(chosen + rest[: n - len(chosen)]), dtype=np.int64)


def floor(report: dict, least: float) -> Floor:
    """The mean over classes of Dice on the images that show the class: empty masks
    score 0 there, whatever their mean Dice."""
    found = [
        row["dice_defective"]
        for row in report["per_class"].values()
        if row["dice_defective"] is not None
    ]
    value = float(np.mean(found)) if found else float("nan")
    return Floor("Dice on defective images", value, 0.0, least)


def params(model) -> dict:
    return {"thresholds": str(model.thresholds.to_dict())}


def headline(report: dict, title: str) -> str:
    return (
        f"{title}: mean Dice [bold]{report['mean_dice']:.4f}[/bold] over {report['images']} "
        f"images (an empty prediction scores {report['empty_score']:.4f})"
    )


def load(bundle: Path, device: str):
    from models.segmentation.segmenter import Segmenter

    return Segmenter.load(bundle, device)


def predict(model, frames: np.ndarray) -> np.ndarray:
    """Grey frames (N, H, W) uint8 → defect masks (N, C, H, W) uint8."""
    return model.predict(frames).masks.astype(np.uint8)


def output(config: dict) -> tuple[np.dtype, tuple[int, ...]]:
    return np.dtype(np.uint8), (-1, len(config["classes"]), -1, -1)


# What torch and ONNX Runtime may differ by on the same frames: pixel and gate
# probabilities (float32 graphs of the same weights differ by about 1e-5)
ONNX_TOLERANCE = {"gate": 1e-3, "pixels": 1e-3}


def onnx_outputs(model, frames: np.ndarray) -> dict[str, np.ndarray]:
    """What the two engines are compared on: gate and pixel probabilities of ``frames``."""
    gate, pixels = model.probabilities(frames)
    return {"gate": gate, "pixels": pixels}
