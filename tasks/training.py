"""Prefect tasks of the retrain flow: load, train, evaluate, compare, register.

Each task is a thin wrapper: the work is in ``models`` (training, evaluation, registry).
Datasets and models pass between tasks in memory (the flow runs in one process), so no
task caches or persists its inputs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.settings import Settings
from models import registry
from models.data import ClassificationData, SegmentationData, digest_ids
from tasks.datasets import load

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A dataset and its fixed split."""

    kind: str
    data: SegmentationData | ClassificationData
    split: dict[str, np.ndarray]

    def part(self, name: str):
        return self.data.subset(self.split[name])

    @property
    def holdout_digest(self) -> str:
        return digest_ids([self.data.ids[i] for i in self.split["holdout"]])


@dataclass
class Evaluation:
    report: dict
    plots: Path | None


def prepare(kind: str, path: Path) -> Prepared:
    data = load(kind, path)
    split = data.splits()
    empty = [name for name, index in split.items() if len(index) == 0]
    if empty:
        raise ValueError(
            f"{path} has {len(data)} images, too few for a train/validation/holdout split "
            f"({', '.join(empty)} would be empty): record or label more"
        )
    log.info("%s split: %s", path, {k: len(v) for k, v in split.items()})
    return Prepared(kind, data, split)


def train(
    kind: str,
    prepared: Prepared,
    size: str,
    device: str,
    seed: int,
    overrides: dict | None = None,
    encoder_weights: str | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
):
    """``progress(epoch, epochs, row)`` after each epoch (the command line's bar)."""
    if kind == "segmentation":
        from models.segmentation import train as trainer

        extra = {"encoder_weights": encoder_weights}
    else:
        from models.classifier import train as trainer

        extra = {}
    recipe = trainer.recipe_for(size, **(overrides or {}))
    train_part, validation_part = prepared.part("train"), prepared.part("validation")
    return trainer.fit(
        train_part, validation_part, recipe, device, seed, progress=progress, **extra
    )


def evaluate(kind: str, model, data, plots_dir: Path | None = None) -> Evaluation:
    """Metrics of ``model`` on ``data``; with ``plots_dir``, the PNGs beside them."""
    from models import plots

    if kind == "segmentation":
        from models.segmentation.evaluate import evaluate_segmenter

        result = evaluate_segmenter(model, data)
        if plots_dir is not None:
            plots_dir.mkdir(parents=True, exist_ok=True)
            names = list(data.classes.values())
            plots.pr_curves_png(
                result.gate, result.presence, names, plots_dir / "gate_pr_curves.png"
            )
            shown = _overlay_sample(result.presence)
            predicted = model.predict(data.images[shown]).masks
            plots.overlays_png(
                data.images[shown],
                data.masks(shown),
                predicted,
                [data.ids[i] for i in shown],
                plots_dir / "overlays.png",
            )
        return Evaluation(result.report, plots_dir)
    from models.classifier.evaluate import evaluate_classifier

    result = evaluate_classifier(model, data)
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        names = model.class_names
        plots.confusion_png(
            np.array(result.report["confusion"]["matrix"]), names, plots_dir / "confusion.png"
        )
        positive = np.eye(len(names), dtype=bool)[result.labels]
        plots.pr_curves_png(result.probabilities, positive, names, plots_dir / "pr_curves.png")
    return Evaluation(result.report, plots_dir)


def _overlay_sample(presence: np.ndarray, n: int = 6) -> np.ndarray:
    """Up to n frames to draw: defective ones first, one per class where possible."""
    chosen: list[int] = []
    for j in range(presence.shape[1]):
        hits = np.flatnonzero(presence[:, j])
        if len(hits) and len(chosen) < n:
            chosen.append(int(hits[0]))
    rest = [i for i in range(len(presence)) if i not in chosen]
    return np.array(sorted(chosen + rest[: n - len(chosen)]), dtype=np.int64)


def score_champion(
    settings: Settings, kind: str, report_of: Callable[[object], dict]
) -> tuple[int | None, float | None]:
    """The current champion's version and its score in ``report_of(champion)``, a report
    on the challenger's holdout. A champion that cannot be scored there (other classes,
    frame size) scores infinity: it stays champion."""
    client = registry.connect(settings)
    version = registry.champion_version(client, kind)
    if version is None:
        return None, None
    model = registry.load_model(settings, kind, version)
    try:
        report = report_of(model)
    except ValueError as error:
        log.warning(
            "champion version %d cannot be scored on this holdout (%s); it stays champion",
            version,
            error,
        )
        return version, float("inf")
    return version, float(report[registry.SCORES[kind]])


def champion_score(settings: Settings, kind: str, holdout) -> tuple[int | None, float | None]:
    """The current champion's version and its score on this same holdout."""
    return score_champion(settings, kind, lambda model: evaluate(kind, model, holdout).report)


def register(
    settings: Settings,
    prepared: Prepared,
    result,
    size: str,
    evaluation: Evaluation,
    champion: tuple[int | None, float | None],
) -> registry.Registration:
    kind = prepared.kind
    recipe = result.recipe
    params = {
        **recipe.to_params(),
        "size": size,
        "data": prepared.data.source,
        "device": result.device,
        "train_images": len(prepared.split["train"]),
        "validation_images": len(prepared.split["validation"]),
        "holdout_images": len(prepared.split["holdout"]),
        "training_seconds": round(result.seconds, 1),
    }
    if kind == "segmentation":
        params["thresholds"] = str(result.segmenter.thresholds.to_dict())
    model = result.segmenter if kind == "segmentation" else result.classifier
    return registry.register_challenger(
        settings,
        kind,
        model,
        params,
        result.history,
        evaluation.report,
        evaluation.plots,
        prepared.holdout_digest,
        champion,
    )


def plots_folder(settings: Settings) -> Path:
    settings.home.resolve().mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="plots-", dir=settings.home.resolve()))
