"""Prefect flow: import labelled dataset folders into the warehouse, one task per folder."""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from steelsight.settings import get_settings
from tasks.labels import ImportSummary, import_label_source_task
from warehouse.store import Warehouse


@flow(name="import-labels")
def import_labels(paths: list[str]) -> list[ImportSummary]:
    """Import each folder (Severstal or NEU-DET format); a failed folder fails the run."""
    warehouse_dir = str(Warehouse(get_settings().warehouse_dir).ensure().root)
    summaries = [s.result() for s in import_label_source_task.map(paths, unmapped(warehouse_dir))]
    logger = get_run_logger()
    for s in summaries:
        logger.info(
            "%s: %s, %d images, %d labels, %d errors",
            s.path,
            s.status,
            s.n_images,
            s.n_labels,
            s.n_errors,
        )
    failed = [s.path for s in summaries if s.status == "failed"]
    if failed:
        raise RuntimeError(f"nothing could be imported from {failed}: see ingest_errors")
    return summaries
