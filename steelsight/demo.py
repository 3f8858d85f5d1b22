"""``steelsight demo``: the main job end to end on embedded defaults.

1. the twin records, into the landing folder, the line to inspect plus a recording
   whose video was cut short (and, when a model must be trained, a training line);
2. the ingest flow takes the landing folder in (the cut recording goes to quarantine);
3. every model without a champion is trained at the ``demo`` size and registered;
4. the inspect flow runs on a local Dask cluster;
5. the per-sheet table, the row counts and the comparison with the twin's ground
   truth are printed.

Each step is skipped when its result exists, so a second run only prints.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from core.settings import Settings
from models.kinds import KINDS

TRAIN_SHEETS = 40
TRAIN_SEED, LINE_SEED, CUT_SEED = 1, 2, 3


def _progress(console: Console) -> Progress:
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console)


def _record(console: Console, what: str, sheets: int, seed: int, out: Path, **config):
    from twin.config import TwinConfig
    from twin.recorder import simulate

    with _progress(console) as progress:
        bar = progress.add_task(f"twin: {what}", total=None)
        return simulate(
            TwinConfig(**config),
            sheets,
            seed,
            out,
            lambda done, total: progress.update(bar, completed=done, total=total),
        )


def training_line(settings: Settings, console: Console) -> Path:
    """The twin's recording the demo's models learn from, made once, when a model needs it."""
    train = settings.home.resolve() / "twin" / "train"
    if not (train / f"line-1-inspection-s{TRAIN_SEED}").is_dir():
        _record(console, "training line", TRAIN_SHEETS, TRAIN_SEED, train)
    return train


def record_demo_line(settings: Settings, console: Console, sheets: int) -> None:
    """The twin's recordings that land for ingest, made once."""
    twin = settings.home.resolve() / "twin"
    marker = twin / "landed.json"
    if not marker.exists():
        landing = settings.landing_dir
        landing.mkdir(parents=True, exist_ok=True)
        line = _record(console, "line to inspect", sheets, LINE_SEED, twin / "staging")
        cut = _record(
            console,
            "recording cut short",
            3,
            CUT_SEED,
            twin / "staging",
            faults=("truncated-video",),
        )
        # as a recorder delivers: the station first, then the inspection recordings
        for archive in (line.station, line.inspection, cut.inspection):
            archive.rename(landing / archive.name)
        shutil.rmtree(twin / "staging", ignore_errors=True)
        marker.write_text(json.dumps({"landed": [line.inspection.name, cut.inspection.name]}))


def train_missing(settings: Settings, console: Console) -> None:
    from flows.retrain import retrain
    from models import registry

    client = registry.connect(settings)

    def data_for(reader: str) -> Path:
        """What the demo's recordings teach each kind (models.kinds: a kind's reader)."""
        train = training_line(settings, console)
        if reader == "defect-masks":
            return train / f"line-1-inspection-s{TRAIN_SEED}"  # the twin's masks
        return train  # station + inspection pairs

    served = [k for k in KINDS.values() if k.role != "offline"]  # what inspect uses
    for spec in served:
        kind = spec.name
        champion = registry.champion_version(client, kind)
        if champion is not None:
            console.print(f"{kind}: champion version {champion}")
            continue
        if registry.versions(client, kind):  # trained before, and stayed below its floor
            console.print(
                f"{kind}: no champion (the demo's version is below the promotion floor; "
                f"train one with `steelsight train {kind} --size default`)"
            )
            continue
        data = data_for(spec.reader)
        console.print(f"{kind}: no champion, training a quick model on {data.name} ...")
        started = time.perf_counter()
        result = retrain(kind=kind, data=str(data), size="demo")
        console.print(
            f"{kind}: version {result['version']}, holdout {spec.score} "
            f"{result['score']:.3f} ({time.perf_counter() - started:.0f} s): {result['reason']}",
            highlight=False,
        )


def run_demo(
    settings: Settings, console: Console, data: Path | None, sheets: int, dask_address: str | None
) -> None:
    from flows.ingest import ingest
    from flows.inspect import inspect, progress_to
    from steelsight.query_output import rich_table
    from tasks.inspection_report import against_twin
    from warehouse import queries, reads
    from warehouse.store import Warehouse

    started = time.perf_counter()
    record_demo_line(settings, console, sheets)
    extra = [str(data.resolve())] if data is not None and data.is_dir() else []
    ingested = ingest(paths=extra)
    for r in ingested:
        console.print(
            f"ingest {Path(r['source']).name}: {r['status']}"
            + (f" ({r['reason']})" if r["reason"] else ""),
            highlight=False,
        )
    train_missing(settings, console)
    with _progress(console) as progress:
        bars: dict[str, int] = {}

        def advance(archive_id: str, done: int, total: int) -> None:
            if archive_id not in bars:
                bars[archive_id] = progress.add_task(f"inspect {archive_id}", total=total)
            progress.update(bars[archive_id], completed=done)

        with progress_to(advance):
            inspected = inspect(dask_address=dask_address)
    for s in inspected:
        drift = s.get("drift")
        console.print(
            f"inspected {s['archive_id']}: {s['frames']} frames at {s['frames_per_s']} frames/s, "
            f"{s['sheets']} sheets ({s['identified']} identified), {s['defects']} defects"
            + (f"; drift: {'DRIFTED' if drift['drifted'] else 'stable'}" if drift else "")
        )

    warehouse = Warehouse(settings.warehouse_dir).ensure()
    with warehouse.connect() as con:
        archive_id = reads.find_archive(con, f"line-1-inspection-s{LINE_SEED}")
    if archive_id is None:
        console.print("[red]the demo line was not inspected: see the messages above[/red]")
        return
    rows = queries.sheet_summary(warehouse, archive_id)
    console.print(rich_table(rows, f"Sheets of {archive_id}"))
    counts = Table(title="Warehouse rows")
    counts.add_column("table")
    counts.add_column("rows", justify="right")
    for name, n in warehouse.row_counts().items():
        counts.add_row(name, f"{n:,d}")
    console.print(counts)
    report = against_twin(warehouse, archive_id)
    s = report["sheets"]
    console.print(
        f"against the twin's ground truth: {s['tracked_sheets']} sheets tracked of "
        f"{s['true_sheets']}; identified right {s['identified_right']}, wrong "
        f"{s['identified_wrong']}, unknown {s['unknown']} (accuracy "
        f"{s['identification_accuracy']:.3f})"
    )
    defects = Table(title="Defects against the twin's ground truth (regions per frame)")
    for column in ("class", "true", "found", "recall", "predicted", "right", "precision"):
        defects.add_column(column, justify="right")
    for name, d in report["defects"].items():
        defects.add_row(
            name,
            *(
                "-" if d[c] is None else f"{d[c]:.3f}" if isinstance(d[c], float) else str(d[c])
                for c in ("true", "found", "recall", "predicted", "right", "precision")
            ),
        )
    console.print(defects)
    console.print(
        f"warehouse: {warehouse.catalogue_path} (duckdb {warehouse.catalogue_path} -c "
        f"'select * from sheets'); demo took {time.perf_counter() - started:.0f} s"
    )
    console.print(
        "next: `make serve`, then the quality page at http://127.0.0.1:8000/ui (sheets, "
        "sheet maps, upload a frame, drift) and the API at /docs; a sheet's map as a file: "
        f"`.venv/bin/steelsight sheet-map {archive_id} 0`"
    )
