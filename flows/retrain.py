"""The retrain flow: train a model, score it on a fixed holdout, register it, and make it
the champion only if it beats the current champion on that same holdout."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.interrupts import cleaned_up
from core.settings import get_settings
from flows.progress import ProgressHook
from models import kinds, registry
from tasks import export, training

# The steps as Prefect tasks (the work itself is in tasks.training, which knows nothing
# of Prefect, and in each kind's family, models.kinds).
prepare_task = task(training.prepare, name="load-and-split", cache_policy=NO_CACHE)
train_task = task(training.train, name="train", cache_policy=NO_CACHE)
evaluate_task = task(training.evaluate, name="evaluate-holdout", cache_policy=NO_CACHE)
champion_score_task = task(training.champion_score, name="score-champion", cache_policy=NO_CACHE)
register_task = task(training.register, name="register", cache_policy=NO_CACHE)
export_task = task(export.export_as_before, name="export-onnx", cache_policy=NO_CACHE)

# (epoch, epochs, row) after each training epoch: the command line shows it
progress = ProgressHook()
progress_to = progress.to


@flow(name="retrain", log_prints=False)
def retrain(
    kind: str = "segmentation",
    data: str = ".steelsight/twin/line-1-inspection-s0",
    size: str = "default",
    device: str | None = None,
    seed: int = 0,
    encoder_weights: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """kind: segmentation, classification, marking or imprint (models.kinds); data: a
    Severstal folder or twin archive (segmentation), a NEU-DET or class-folder dataset
    (classification), a marking-station + inspection archive pair or a folder of pairs
    (marking, imprint); size: tiny, demo, default or gpu; device: auto, cpu or cuda
    (default from settings); encoder_weights: a local ResNet state dict (segmentation)."""
    logger = get_run_logger()
    settings = get_settings()
    spec = kinds.kind(kind)
    workdir = training.workspace(settings)
    with cleaned_up(partial(shutil.rmtree, workdir, ignore_errors=True)):
        prepared = prepare_task(kind, Path(data), workdir, size, settings)
        trained = train_task(
            prepared,
            size,
            device or settings.device,
            seed,
            workdir,
            overrides,
            {"encoder_weights": encoder_weights},
            progress=progress,
        )
        plots = workdir / "plots"
        report = evaluate_task(kind, trained.model, prepared.holdout, plots)
        champion = champion_score_task(settings, kind, prepared.holdout)
        registration = register_task(settings, prepared, trained, size, report, plots, champion)
    logger.info(
        "%s version %d: holdout %s %.4f; %s",
        kind,
        registration.version,
        spec.score_label,
        registration.score,
        registration.reason,
    )
    exported = None
    if registration.promoted:
        try:
            exported = export_task(
                settings, kind, registration.version, registration.champion_before
            )
        except Exception as error:  # the new champion stands; it runs on torch meanwhile
            logger.warning(
                "%s version %d is champion but its ONNX export failed (%s): it runs on "
                "torch until `steelsight export --kind %s` succeeds",
                kind,
                registration.version,
                error,
                kind,
            )
        if exported is not None and not exported.registered:
            logger.warning(
                "%s version %d: its ONNX graph differs from torch (%s), not registered; "
                "it runs on torch",
                kind,
                registration.version,
                exported.differences,
            )
    summary = _summary(registration, trained.seconds, report)
    summary["onnx"] = exported.check() if exported is not None else None
    return summary


def _summary(registration: registry.Registration, seconds: float, holdout: dict) -> dict:
    """What a retrain run returns (and `steelsight train --json` prints)."""
    return {
        "kind": registration.kind,
        "version": registration.version,
        "run_id": registration.run_id,
        "score": registration.score,
        "champion_before": registration.champion_before,
        "champion_score": registration.champion_score,
        "promoted": registration.promoted,
        "reason": registration.reason,
        "training_seconds": round(seconds, 1),
        "holdout": holdout,
    }
