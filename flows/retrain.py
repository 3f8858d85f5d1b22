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
from models import registry
from tasks import identity_training as identity
from tasks import training
from tasks.training import plots_folder

# The steps as Prefect tasks (the work itself is in tasks.training and
# tasks.identity_training, which know nothing of Prefect).
prepare_task = task(training.prepare, name="load-and-split", cache_policy=NO_CACHE)
train_task = task(training.train, name="train", cache_policy=NO_CACHE)
evaluate_task = task(training.evaluate, name="evaluate-holdout", cache_policy=NO_CACHE)
champion_score_task = task(training.champion_score, name="score-champion", cache_policy=NO_CACHE)
register_task = task(training.register, name="register", cache_policy=NO_CACHE)
identity_prepare_task = task(identity.prepare, name="load-and-split", cache_policy=NO_CACHE)
identity_train_task = task(identity.train, name="train", cache_policy=NO_CACHE)
identity_evaluate_task = task(identity.evaluate, name="evaluate-holdout", cache_policy=NO_CACHE)
identity_champion_score_task = task(
    identity.champion_score, name="score-champion", cache_policy=NO_CACHE
)
identity_register_task = task(identity.register, name="register", cache_policy=NO_CACHE)

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
    """kind: segmentation, classification, marking or imprint; data: a Severstal folder or
    twin archive (segmentation), a NEU-DET or class-folder dataset (classification), a
    marking-station + inspection archive pair or a folder of pairs (marking, imprint);
    size: tiny, demo, default or gpu; device: auto, cpu or cuda (default from settings)."""
    logger = get_run_logger()
    settings = get_settings()
    device = device or settings.device
    if kind in ("marking", "imprint"):
        return _retrain_identity(kind, data, size, device, seed, overrides)
    prepared = prepare_task(kind, Path(data))
    result = train_task(
        kind, prepared, size, device, seed, overrides, encoder_weights, progress=progress
    )
    model = result.segmenter if kind == "segmentation" else result.classifier
    holdout = prepared.part("holdout")
    plots = plots_folder(settings)
    with cleaned_up(partial(shutil.rmtree, plots, ignore_errors=True)):
        evaluation = evaluate_task(kind, model, holdout, plots)
        champion = champion_score_task(settings, kind, holdout)
        registration = register_task(settings, prepared, result, size, evaluation, champion)
    logger.info(
        "%s version %d: holdout %s %.4f; %s",
        kind,
        registration.version,
        "mean Dice" if kind == "segmentation" else "accuracy",
        registration.score,
        registration.reason,
    )
    return _summary(registration, result.seconds, evaluation.report)


def _retrain_identity(
    kind: str, data: str, size: str, device: str, seed: int, overrides: dict | None
) -> dict:
    logger = get_run_logger()
    settings = get_settings()
    workdir = plots_folder(settings)
    with cleaned_up(partial(shutil.rmtree, workdir, ignore_errors=True)):
        prepared = identity_prepare_task(kind, Path(data), workdir, size)
        trained = identity_train_task(
            prepared, size, device, seed, workdir, overrides, progress=progress
        )
        holdout = prepared.holdout()
        report = identity_evaluate_task(kind, trained.model, holdout)
        champion = identity_champion_score_task(settings, kind, holdout)
        registration = identity_register_task(settings, prepared, trained, size, report, champion)
    logger.info(
        "%s version %d: holdout %s %.4f; %s",
        kind,
        registration.version,
        registry.SCORES[kind],
        registration.score,
        registration.reason,
    )
    return _summary(registration, trained.seconds, report)


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
