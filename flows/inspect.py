"""Prefect flow: inspect every ingested recording not yet inspected by the champion models.

Prefect orchestrates archives; Dask computes frames. The flow registers marking-station
archives for identification, cuts each recording into frame ranges, sends the ranges
(paths and numbers, never pixels) to the Dask workers, and commits each archive's
frames, defects and sheets as one warehouse import when all its ranges are back. A
run that stops half-way leaves the previous import of every archive in place; the
next run does the unfinished archives again, so re-running gives the same tables.

Workers only import steelsight and the model libraries, not Prefect: a plant's Dask
cluster needs no access to the Prefect server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from core.settings import Settings, get_settings
from flows.progress import ProgressHook
from tasks.drift import described, reference_for
from tasks.identify import registration_key
from tasks.inspection import ModelRefs, Registries, attempt, inspect_archive, not_inspected
from warehouse import queries
from warehouse.store import Warehouse

# (archive_id, frames done, frames): the command line shows it
progress = ProgressHook()
progress_to = progress.to


class InspectError(RuntimeError):
    """Inspection cannot start: no model to inspect with, no cluster to run on."""


def champion_refs(settings: Settings) -> ModelRefs:
    """The champion set (models.registry.champion_set): identity models are optional,
    segmentation is not."""
    from models import registry

    try:
        chosen = registry.champion_set(registry.connect(settings), settings)
    except registry.NoChampion as error:
        raise InspectError(str(error)) from None
    return ModelRefs.of(settings.tracking_uri, chosen)


@contextlib.contextmanager
def dask_client(address: str | None) -> Iterator:
    """A client of the cluster at ``address``, or of a cluster on this machine
    (``local_cluster``)."""
    from distributed import Client

    if address:
        with Client(address, timeout="30s") as client:
            yield client
        return
    import torch

    from models.devices import cpu_threads

    with (
        local_cluster(torch.cuda.device_count(), cpu_threads()) as cluster,
        Client(cluster) as client,
    ):
        yield client


def local_cluster(gpus: int, cores: int):
    """A Dask cluster on this machine, sized to it: one worker process per GPU, which
    sees only its own GPU (``CUDA_VISIBLE_DEVICES``, so its ``cuda`` is that one) and
    holds the resource ``GPU=1``; without GPUs, one worker per two CPU cores. The cores
    are shared among the workers (torch's and OpenCV's threads). The workers may start
    processes of their own (identification's, ``identify_in``): Dask starts them as
    daemons otherwise, which may not."""
    import dask
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    # read by the nannies whenever they start a worker, restarts too: set for good
    dask.config.set({"distributed.worker.daemon": False})

    workers = gpus or max(1, cores // 2)
    threads = str(max(1, cores // workers))
    from core.runtime import INFERENCE_ENVIRONMENT

    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **INFERENCE_ENVIRONMENT}
    if not gpus:
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env=env,
        )
    # the GPUs this process may use, in its own numbering
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
    return SpecCluster(
        scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
        workers={
            f"gpu-{ids[i]}": {
                "cls": Nanny,
                "options": {
                    "nthreads": 1,
                    "resources": {"GPU": 1},
                    "env": {**env, "CUDA_VISIBLE_DEVICES": ids[i]},
                },
            }
            for i in range(gpus)
        },
    )


def _pending(warehouse: Warehouse, kinds: tuple[str, ...], key: str, only: list[str] | None):
    # usable archives; and those a previous inspection failed on (models may do better
    # now), but never one ingest rejected (its reason stays in ingest_errors)
    rows = queries.inspectable_archives(warehouse, list(kinds))
    if only:
        wanted = {str(Path(p).resolve()) if os.sep in p else p for p in only}
        rows = [r for r in rows if r["archive_id"] in wanted or r["path"] in wanted]
    return [r for r in rows if r["inspected_with"] != key]


@task(name="register-station", task_run_name="register {row[archive_id]}", cache_policy=NO_CACHE)
def register_station_task(row: dict, models, warehouse: Warehouse, key: str) -> int:
    """Register a station's sheets; ``key``: the identity models' versions, recorded with
    a station that fails so that the next run does not try the same models again."""
    from tasks.identify import register_station

    logger = get_run_logger()
    path = Path(row["path"])
    done, problem = attempt(
        row, logger, lambda: register_station(path, models, warehouse, archive=row)
    )
    if problem is not None:
        not_inspected(row, key, problem, warehouse, logger)
        return 0
    logger.info(
        "station %s: %d of %d sheets registered (%d without a marking) in %.1f s",
        row["archive_id"],
        done.registered,
        done.sheets,
        done.errors,
        done.seconds,
    )
    return done.registered


@task(name="inspect-archive", task_run_name="inspect {row[archive_id]}", cache_policy=NO_CACHE)
def inspect_archive_task(
    row: dict,
    refs: ModelRefs,
    client,
    registries,
    settings: Settings,
    warehouse: Warehouse,
    drift_reference: dict | None,
) -> dict:
    """Inspect one recording on the cluster and commit its tables as one import; one that
    changed since ingest, or that fails, is recorded as failed with the reason. A
    drifted recording is announced as the Prefect event ``steelsight.archive.drifted``
    (automations can react to it)."""
    logger = get_run_logger()
    summary, problem = attempt(
        row,
        logger,
        lambda: inspect_archive(
            row, refs, client, registries, settings, warehouse, logger, progress, drift_reference
        ),
    )
    if problem is not None:
        return not_inspected(row, refs.key(), problem, warehouse, logger)
    if summary.get("drift") and summary["drift"]["drifted"]:
        announce_drift(row, refs, summary["drift"], logger)
    return summary


def announce_drift(row: dict, refs: ModelRefs, drift: dict, logger) -> None:
    logger.warning(
        "archive %s has drifted from what the models were validated on: %s",
        row["archive_id"],
        described(drift),
    )
    emit_event(
        event="steelsight.archive.drifted",
        resource={
            "prefect.resource.id": f"steelsight.archive.{row['archive_id']}",
            "prefect.resource.name": Path(row["path"]).name,
        },
        payload={"flagged": drift["flagged"], "models": refs.versions()},
    )


@flow(name="inspect")
def inspect(
    dask_address: str | None = None,
    archives: list[str] | None = None,
    force: bool = False,
) -> list[dict]:
    """Inspect ingested recordings with the champion models on Dask.

    dask_address: an existing scheduler (default: the setting, else a LocalCluster);
    archives: archive ids or paths to limit the run to; force: inspect again even when
    the champions already did. Marking-station archives are registered first.
    """
    logger = get_run_logger()
    settings = get_settings()
    warehouse = Warehouse(settings.warehouse_dir).ensure()
    refs = champion_refs(settings)
    logger.info("models: %s", refs.key())
    identity_key = registration_key(refs.marking, refs.imprint)
    stations = _pending(warehouse, ("marking-station",), identity_key, archives)
    todo = _pending(warehouse, ("video", "frames"), refs.key(), archives)
    if force:
        todo = _pending(warehouse, ("video", "frames"), "", archives)
    if refs.identifies:
        from tasks.identify import load_models

        if stations:
            models = load_models(settings, refs.marking, refs.imprint)
            for row in stations:
                register_station_task(row, models, warehouse, identity_key)
    else:
        logger.warning("no marking and imprint champions: sheets will not be identified")
    if not todo:
        logger.info("nothing to inspect: every recording is inspected by %s", refs.key())
        return []
    address = dask_address or settings.dask_address
    summaries = []
    with dask_client(address) as client:
        logger.info("Dask cluster: %s", address or "LocalCluster")
        registries = None
        if refs.identifies:
            from tasks.identify import threshold_of

            registries = Registries(
                client,
                warehouse,
                refs.imprint,
                threshold_of(settings),
                settings.identity_window_hours,
                logger,
            )
        reference = reference_for(settings, refs.segmentation)
        for row in todo:
            summaries.append(
                inspect_archive_task(row, refs, client, registries, settings, warehouse, reference)
            )
    return summaries
