"""The classification kind's family (models.kinds): a ResNet classifier of whole pictures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.classifier.train import recipe_for  # noqa: F401  (the family's recipes)
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
    from models.classifier.train import fit as fit_classifier

    result = fit_classifier(train, validation, recipe, device, seed, progress=progress)
    return Trained(result.classifier, result.recipe, result.history, result.seconds, result.device)


def evaluate(model, data, plots: Path | None = None) -> dict:
    """Accuracy, per-class precision/recall and the confusion matrix on ``data``; with
    ``plots``, the confusion matrix and PR curves there."""
    from models.classifier.evaluate import evaluate_classifier

    result = evaluate_classifier(model, data)
    if plots is not None:
        from models import plots as draw

        plots.mkdir(parents=True, exist_ok=True)
        names = model.class_names
        draw.confusion_png(
            np.array(result.report["confusion"]["matrix"]), names, plots / "confusion.png"
        )
        positive = np.eye(len(names), dtype=bool)[result.labels]
        draw.pr_curves_png(result.probabilities, positive, names, plots / "pr_curves.png")
    return result.report


def floor(report: dict, least: float) -> Floor:
    """Accuracy against always answering the commonest class of the holdout."""
    support = [row["support"] for row in report["per_class"].values()]
    null = max(support) / sum(support) if sum(support) else 0.0
    return Floor("accuracy", float(report["accuracy"]), null, least)


def params(model) -> dict:
    return {}


def headline(report: dict, title: str) -> str:
    return (
        f"{title}: accuracy [bold]{report['accuracy']:.4f}[/bold] over {report['images']} "
        f"images, macro F1 {report['macro_f1']:.4f}"
    )


def load(bundle: Path, device: str):
    from models.classifier.classifier import Classifier

    return Classifier.load(bundle, device)


def inputs(config: dict) -> tuple[int, ...]:
    """Grey pictures (N, H, W), or RGB (N, H, W, 3) for a classifier trained in colour."""
    return (-1, -1, -1, 3) if config["network"].get("channels", 1) == 3 else (-1, -1, -1)


def predict(model, frames: np.ndarray) -> np.ndarray:
    """Pictures (N, H, W) grey or (N, H, W, 3) RGB, uint8 → class probabilities (N, K)
    float32."""
    return model.predict_proba(frames).astype(np.float32)


def output(config: dict) -> tuple[np.dtype, tuple[int, ...]]:
    return np.dtype(np.float32), (-1, len(config["class_names"]))
