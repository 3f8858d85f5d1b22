"""The steps of retraining any model kind: load and split, train, score the holdout,
score the champion on the same holdout, register.

What differs between kinds is in their spec and family (models.kinds): how the data is
read and split (``tasks.datasets.READERS``), the recipe, fitting, scoring. The steps
here are the same for all; flows/retrain.py wraps them as Prefect tasks. Datasets and
models pass between steps in memory (the flow runs in one process).
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.settings import Settings
from models import kinds, registry
from models.kinds import Trained
from tasks.datasets import READERS, Prepared

log = logging.getLogger(__name__)


def prepare(
    kind: str, path: Path, workdir: Path, size: str, settings: Settings | None = None
) -> Prepared:
    """The kind's data at ``path``, split by its reader (which may write a training
    folder under ``workdir``). With ``settings``, the promotion floors are checked first,
    so a typo there fails now rather than after training."""
    spec = kinds.kind(kind)
    if settings is not None:
        kinds.floor_least(settings.promotion_floors, kind)
    recipe = spec.implementation.recipe_for(size)
    return READERS[spec.reader](kind, path, workdir, recipe)


def train(
    prepared: Prepared,
    size: str,
    device: str,
    seed: int,
    workdir: Path,
    overrides: dict | None = None,
    options: dict | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> Trained:
    """``options``: the family's own (segmentation: ``encoder_weights``);
    ``progress(epoch, epochs, row)`` after each epoch (the command line's bar)."""
    family = kinds.family(prepared.kind)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    accepted = inspect.signature(family.fit).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{', '.join(unknown)} does not apply to a {prepared.kind} model")
    recipe = family.recipe_for(size, **(overrides or {}))
    return family.fit(
        prepared.train,
        prepared.validation,
        recipe,
        device,
        seed,
        workdir,
        progress,
        **options,
    )


def evaluate(kind: str, model, data, plots: Path | None = None) -> dict:
    """The report of ``model`` on ``data``; with ``plots``, the kind's PNGs there."""
    return kinds.family(kind).evaluate(model, data, plots)


def champion_score(settings: Settings, kind: str, holdout) -> tuple[int | None, float | None]:
    """The current champion's version and its score on the challenger's holdout. A
    champion that cannot be scored there (other classes, frame size) scores infinity: it
    stays champion."""
    client = registry.connect(settings)
    version = registry.champion_version(client, kind)
    if version is None:
        return None, None
    model = registry.load_model(settings, kind, version)
    try:
        report = evaluate(kind, model, holdout)
    except ValueError as error:
        log.warning(
            "champion version %d cannot be scored on this holdout (%s); it stays champion",
            version,
            error,
        )
        return version, float("inf")
    return version, float(report[kinds.kind(kind).score])


def register(
    settings: Settings,
    prepared: Prepared,
    trained: Trained,
    size: str,
    report: dict,
    plots: Path | None,
    champion: tuple[int | None, float | None],
) -> registry.Registration:
    kind = prepared.kind
    params = {
        **trained.recipe.to_params(),
        "size": size,
        "data": prepared.source,
        "device": trained.device,
        **{f"{part}_items": n for part, n in prepared.counts.items()},
        "training_seconds": round(trained.seconds, 1),
        **kinds.family(kind).params(trained.model),
    }
    return registry.register_challenger(
        settings,
        kind,
        trained.model,
        params,
        trained.history,
        report,
        plots,
        prepared.holdout_digest,
        champion,
    )


def workspace(settings: Settings) -> Path:
    """A scratch folder under home for one retrain (plots, a YOLO dataset, training runs)."""
    settings.home.resolve().mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="retrain-", dir=settings.home.resolve()))
