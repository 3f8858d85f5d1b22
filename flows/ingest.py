"""Prefect flow: take in recorded archives from the landing folder (and named paths).

One archive at a time, so that two copies of the same recording arriving together are
recognised as duplicates; every archive is a task run, and a bad one never stops the rest
(``tasks.ingest`` validates each in a child process and records whatever goes wrong).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task

from core.settings import get_settings
from flows.progress import ProgressHook
from tasks.archives import is_printable, printable
from tasks.ingest import (
    Ingested,
    Limits,
    absolute,
    ingest_archive,
    is_within,
    landed_archives,
    unregistered,
)
from warehouse.store import Warehouse

# (archives done, archives, the one just done): the command line shows it
progress = ProgressHook()
progress_to = progress.to


@task(name="ingest-archive", task_run_name="ingest {source}", retries=0)
def ingest_archive_task(source: str, warehouse_dir: str, landed: bool) -> Ingested:
    settings = get_settings()
    return ingest_archive(
        Path(source),
        Warehouse(Path(warehouse_dir)),
        settings.library_dir,
        settings.quarantine_dir,
        landed,
        Limits.from_settings(settings),
    )


@flow(name="ingest")
def ingest(paths: list[str] | None = None, landing: bool = True) -> list[dict]:
    """Ingest archives: those waiting in the landing folder (``landing``), library
    folders an interrupted run moved but did not register, and ``paths`` (registered
    where they are, unless they lie in the landing folder)."""
    logger = get_run_logger()
    settings = get_settings()
    warehouse = Warehouse(settings.warehouse_dir).ensure()
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    sources: dict[Path, bool] = {}
    for path in [absolute(p) for p in paths or []]:
        if not path.exists() and not path.is_symlink():
            raise FileNotFoundError(f"{printable(path)} does not exist: nothing to ingest")
        sources[path] = is_within(path, settings.landing_dir)
    if landing:
        sources.update(dict.fromkeys(landed_archives(settings.landing_dir), True))
    sources.update(dict.fromkeys(unregistered(settings.library_dir, warehouse), False))
    if not sources:
        logger.info("nothing to ingest in %s", settings.landing_dir)
    results = []
    for source, landed in sources.items():
        # Prefect keeps task parameters as JSON text: a name that is not UTF-8 cannot be
        # one, so that archive is taken in (refused, with its reason) without a task run
        run = ingest_archive_task if is_printable(source) else ingest_archive_task.fn
        done = run(str(source), str(warehouse.root), landed)
        level = (
            logger.warning if done.status in ("failed", "quarantined", "skipped") else logger.info
        )
        level(
            "%s: %s (%s, %d frames)%s",
            done.source,
            done.status,
            done.kind,
            done.n_frames,
            f": {done.reason}" if done.reason else "",
        )
        results.append(asdict(done))
        progress(len(results), len(sources), printable(source.name))
    return results
