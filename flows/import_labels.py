"""Prefect flow: import labelled dataset folders into the warehouse, one task per folder."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped

from core.settings import get_settings
from tasks.labels import ImportSummary, import_label_source
from warehouse.store import Warehouse


@task(name="import-label-source", task_run_name="import {path}")
def import_label_source_task(path: str, warehouse_dir: str) -> ImportSummary:
    """Import one folder into the (already prepared) warehouse at warehouse_dir."""
    return import_label_source(Path(path), Warehouse(Path(warehouse_dir)))


@flow(name="import-labels")
def import_labels(paths: list[str]) -> list[ImportSummary]:
    """Import each folder (Severstal or NEU-DET format); every folder is tried, and the
    run fails at the end when one gave nothing, naming each."""
    warehouse_dir = str(Warehouse(get_settings().warehouse_dir).ensure().root)
    futures = import_label_source_task.map(paths, unmapped(warehouse_dir))
    logger = get_run_logger()
    summaries, failed = [], []
    for path, future in zip(paths, futures, strict=True):
        try:
            s = future.result()
        except Exception as error:
            logger.error("%s: not imported: %s: %s", path, type(error).__name__, error)
            failed.append(path)
            continue
        summaries.append(s)
        logger.info(
            "%s: %s, %d images, %d labels, %d errors",
            s.path,
            s.status,
            s.n_images,
            s.n_labels,
            s.n_errors,
        )
        if s.status == "failed":
            failed.append(s.path)
    if failed:
        raise RuntimeError(f"nothing could be imported from {failed}: see ingest_errors")
    return summaries
