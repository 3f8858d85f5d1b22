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
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.settings import Settings, get_settings
from flows.progress import ProgressHook
from tasks.archives import Problem, archive_row, changed_since_ingest, error_rows
from tasks.inspection import ModelRefs, assemble, inspect_chunk, recording
from warehouse import queries
from warehouse.store import Warehouse, new_import_id

# (archive_id, frames done, frames): the command line shows it
progress = ProgressHook()
progress_to = progress.to


class InspectError(RuntimeError):
    """Inspection cannot start: no model to inspect with, no cluster to run on."""


def champion_refs(settings: Settings) -> ModelRefs:
    """The champion versions; identity models are optional, segmentation is not."""
    from models import registry

    client = registry.connect(settings)
    versions = {kind: registry.champion_version(client, kind) for kind in registry.MODEL_NAMES}
    if versions["segmentation"] is None:
        raise InspectError(
            "no segmentation champion in the registry "
            f"({settings.tracking_uri}): train one with `steelsight train segmentation`"
        )
    identity = versions["marking"] is not None and versions["imprint"] is not None
    return ModelRefs(
        settings.tracking_uri,
        str(versions["segmentation"]),
        str(versions["marking"]) if identity else None,
        str(versions["imprint"]) if identity else None,
    )


@contextlib.contextmanager
def dask_client(address: str | None) -> Iterator:
    """A client of the cluster at ``address``, or of a LocalCluster sized to this
    machine: one worker per GPU (resource GPU=1), else one per two CPU cores."""
    from distributed import Client, LocalCluster

    if address:
        with Client(address, timeout="30s") as client:
            yield client
        return
    import torch

    gpus = torch.cuda.device_count()
    cores = os.cpu_count() or 1
    workers = gpus or max(1, cores // 2)
    threads = max(1, cores // workers)
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            resources={"GPU": 1} if gpus else None,
            env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def gpu_resources(client) -> dict | None:
    """Ask for a GPU per task when the cluster has GPU workers; CPU workers otherwise."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None


def _pending(warehouse: Warehouse, kinds: tuple[str, ...], key: str, only: list[str] | None):
    # usable archives; and those a previous inspection failed on (models may do better
    # now), but never one ingest rejected (its reason stays in ingest_errors)
    rows = queries.inspectable_archives(warehouse, list(kinds))
    if only:
        wanted = {str(Path(p).resolve()) if os.sep in p else p for p in only}
        rows = [r for r in rows if r["archive_id"] in wanted or r["path"] in wanted]
    return [r for r in rows if r["inspected_with"] != key]


def _not_inspected(row: dict, key: str, problem: Problem, warehouse: Warehouse) -> dict:
    """Record that an archive could not be inspected (or registered), and why: its row
    says failed, with the models tried, so the next run does not try the same again."""
    import_id = new_import_id()
    warehouse.import_archive(
        archive_row(
            row["archive_id"],
            import_id,
            row["kind"],
            Path(row["path"]),
            row["content_sha256"],
            "failed",
            n_images=0,
            n_labels=0,
            n_errors=1,
            received_from=row["received_from"],
            inspected_with=key,
        ),
        {"ingest_errors": error_rows([problem], row["archive_id"], import_id)},
    )
    get_run_logger().warning("archive %s: %s", row["archive_id"], problem.reason)
    return {
        "archive_id": row["archive_id"],
        "status": "failed",
        "frames": 0,
        "sheets": 0,
        "identified": 0,
        "defects": 0,
        "errors": 1,
        "frames_per_s": None,
        "reason": problem.reason,
    }


def _failure(row: dict, error: Exception) -> Problem:
    return Problem(
        row["path"],
        "inspection_failed",
        f"{Path(row['path']).name} could not be inspected: {type(error).__name__}: {error}; "
        "the other archives went on; report it with this archive",
    )


@task(name="register-station", task_run_name="register {row[archive_id]}", cache_policy=NO_CACHE)
def register_station_task(row: dict, models, warehouse: Warehouse, key: str) -> int:
    """Register a station's sheets; ``key``: the identity models' versions, recorded with
    a station that fails so that the next run does not try the same models again."""
    from tasks.identify import register_station

    problem = changed_since_ingest(Path(row["path"]), row["content_sha256"])
    try:
        if problem is None:
            done = register_station(Path(row["path"]), models, warehouse, archive=row)
    except Exception as error:  # one station never stops the others
        get_run_logger().exception("station %s", row["archive_id"])
        problem = _failure(row, error)
    if problem is not None:
        _not_inspected(row, key, problem, warehouse)
        return 0
    get_run_logger().info(
        "station %s: %d of %d sheets registered (%d without a marking) in %.1f s",
        row["archive_id"],
        done.references,
        done.sheets,
        done.errors,
        done.seconds,
    )
    return done.references


@task(name="inspect-archive", task_run_name="inspect {row[archive_id]}", cache_policy=NO_CACHE)
def inspect_archive_task(
    row: dict,
    refs: ModelRefs,
    client,
    index,
    threshold: float,
    settings: Settings,
    warehouse: Warehouse,
) -> dict:
    """Inspect one recording on the cluster and commit its tables as one import; one that
    changed since ingest, or that fails, is recorded as failed with the reason."""
    problem = changed_since_ingest(Path(row["path"]), row["content_sha256"])
    if problem is not None:
        return _not_inspected(row, refs.key(), problem, warehouse)
    try:
        return _inspect_archive(row, refs, client, index, threshold, settings, warehouse)
    except Exception as error:  # one archive never stops the others
        get_run_logger().exception("archive %s", row["archive_id"])
        return _not_inspected(row, refs.key(), _failure(row, error), warehouse)


def _inspect_archive(
    row: dict,
    refs: ModelRefs,
    client,
    index,
    threshold: float,
    settings: Settings,
    warehouse: Warehouse,
) -> dict:
    from distributed import as_completed

    logger = get_run_logger()
    started = time.perf_counter()
    rec = recording(row["archive_id"], Path(row["path"]))
    chunks = rec.chunks(settings.chunk_frames, refs, settings.batch_frames, settings.device)
    logger.info(
        "archive %s: %d frames in %d ranges of %d on %d workers",
        rec.archive_id,
        len(rec.frame_ids),
        len(chunks),
        settings.chunk_frames,
        len(client.scheduler_info(n_workers=-1)["workers"]),
    )
    resources = gpu_resources(client)
    futures = {
        client.submit(
            inspect_chunk,
            chunk,
            resources=resources,
            pure=False,
            key=f"inspect-{rec.archive_id}-{chunk.start}-{time.time_ns()}",
        ): chunk
        for chunk in chunks
    }
    results, problems, frames_done = [], [], 0
    next_log = 0.1
    for future in as_completed(futures):
        chunk = futures.pop(future)
        try:
            result = future.result()
        except Exception as error:  # a range that cannot be read: the rest goes on
            problems.append(_range_problem(rec, chunk, error))
            logger.warning("archive %s: %s", rec.archive_id, problems[-1].reason)
            continue
        finally:
            future.release()
        results.append(result)
        frames_done += result.n_frames
        progress(rec.archive_id, frames_done, len(rec.frame_ids))
        if frames_done >= next_log * len(rec.frame_ids):
            seconds = time.perf_counter() - started
            logger.info(
                "archive %s: %d of %d frames, %.1f frames/s",
                rec.archive_id,
                frames_done,
                len(rec.frame_ids),
                frames_done / seconds,
            )
            next_log += 0.1
    import_id = new_import_id()
    inspected = assemble(rec, results, refs, index, threshold, settings.grades, import_id)
    problems = list(rec.warnings) + problems
    status = "partial" if problems else "ok"
    if not results:
        status = "failed"
    warehouse.import_archive(
        archive_row(
            rec.archive_id,
            import_id,
            row["kind"],
            rec.path,
            row["content_sha256"],
            status,
            n_images=inspected.n_frames,
            n_labels=0,
            n_errors=len(problems),
            received_from=row["received_from"],
            inspected_with=refs.key(),
        ),
        {
            "frames": inspected.frames,
            "defects": inspected.defects,
            "sheets": inspected.sheets,
            "ingest_errors": error_rows(problems, rec.archive_id, import_id),
        },
    )
    seconds = time.perf_counter() - started
    summary = {
        "archive_id": rec.archive_id,
        "status": status,
        "frames": inspected.n_frames,
        "sheets": inspected.sheets.num_rows,
        "identified": sum(s != "unknown" for s in inspected.sheets["sheet_id"].to_pylist()),
        "defects": inspected.defects.num_rows,
        "errors": len(problems),
        "seconds": round(seconds, 2),
        "frames_per_s": round(inspected.n_frames / seconds, 2) if seconds else None,
        "decode_s": round(inspected.decode_s, 2),
        "model_s": round(inspected.model_s, 2),
        "workers": len(inspected.workers),
        "reason": "; ".join(p.reason for p in problems),
    }
    logger.info(
        "archive %s: %d frames in %.1f s (%.1f frames/s), %d sheets (%d identified), "
        "%d defects, status %s",
        rec.archive_id,
        summary["frames"],
        seconds,
        summary["frames_per_s"] or 0,
        summary["sheets"],
        summary["identified"],
        summary["defects"],
        status,
    )
    return summary


def _range_problem(rec, chunk, error: Exception) -> Problem:
    first, last = chunk.frame_ids[0], chunk.frame_ids[-1]
    return Problem(
        chunk.video or chunk.frames_dir,
        "frames_not_inspected",
        f"frames {first}..{last} were not inspected: {type(error).__name__}: {error}; "
        "check the archive and run `steelsight inspect` again",
        fatal=False,
        source_row=chunk.start,
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
    identity_key = json.dumps({"imprint": refs.imprint, "marking": refs.marking}, sort_keys=True)
    stations = _pending(warehouse, ("marking-station",), identity_key, archives)
    todo = _pending(warehouse, ("video", "frames"), refs.key(), archives)
    if force:
        todo = _pending(warehouse, ("video", "frames"), "", archives)
    index, threshold = None, 1.0
    if refs.identifies:
        from tasks.identify import load_models, reference_index

        if stations:
            models = load_models(settings, refs.marking, refs.imprint)
            for row in stations:
                register_station_task(row, models, warehouse, identity_key)
        index = reference_index(warehouse, refs.imprint)
        threshold = _imprint_threshold(settings, refs.imprint)
        logger.info("%d registered sheets to identify against", len(index))
    else:
        logger.warning("no marking and imprint champions: sheets will not be identified")
    if not todo:
        logger.info("nothing to inspect: every recording is inspected by %s", refs.key())
        return []
    address = dask_address or settings.dask_address
    summaries = []
    with dask_client(address) as client:
        logger.info("Dask cluster: %s", address or "LocalCluster")
        for row in todo:
            summaries.append(
                inspect_archive_task(row, refs, client, index, threshold, settings, warehouse)
            )
    return summaries


def _imprint_threshold(settings: Settings, version: str) -> float:
    """The imprint model's operating threshold, from its registered configuration."""
    import mlflow

    from models import registry

    registry.connect(settings)
    info = mlflow.models.get_model_info(registry.model_uri("imprint", version))
    return float(info.metadata["steelsight"]["threshold"]["threshold"])
