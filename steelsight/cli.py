"""The ``steelsight`` command line."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from core.runtime import configure_environment
from core.settings import get_settings
from models import kinds
from models.kinds import KINDS
from steelsight.query_output import rich_table
from twin.config import Fault

# rich_markup_mode=None: plain click output, so that a usage error ends in one line,
# "Error: Invalid value for '--size': 'huge' is not one of 'tiny', ..." (exit 2)
app = typer.Typer(
    help="steelsight: steel-sheet surface inspection, from camera archives to DuckDB tables.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)
warehouse_app = typer.Typer(
    help="Look after the warehouse (DuckDB views over Parquet).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(warehouse_app, name="warehouse")
console = Console()
err_console = Console(stderr=True)

DEFAULT_SAMPLE = Path("../shared/data/severstal-sample")


# Choices as types, so that --help lists them and a wrong one is a usage error (exit 2).
# tests/unit/test_cli_choices.py checks them against the registry's and the recipes' own.
Kind = StrEnum("Kind", {name: name for name in KINDS})  # models.kinds
# what `evaluate` scores: each kind scored alone, and the identity kinds together (the
# marking detector and the imprint model, on a station + inspection pair)
EvaluateKind = StrEnum(
    "EvaluateKind",
    {**{k.name: k.name for k in KINDS.values() if k.role != "identity"}, "identity": "identity"},
)


class Size(StrEnum):
    tiny = "tiny"
    demo = "demo"
    default = "default"
    gpu = "gpu"


class Split(StrEnum):
    all = "all"
    holdout = "holdout"


class ArchiveFormat(StrEnum):
    video = "video"
    frames = "frames"


class DefectLook(StrEnum):
    twin = "twin"
    severstal = "severstal"


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr that names the thing and what to do; exit 2 for usage errors."""
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def existing(help_text: str, **kwargs) -> dict:
    """typer options for a path that must exist (checked before anything starts)."""
    return {"help": help_text, "exists": True, **kwargs}


# What an interruption leaves, per command (see core.interrupts)
INTERRUPTED = {
    "train": "no model version was registered",
    "ingest": "archives taken in before it stay; the others wait where they were",
    "inspect": "archives committed before it stay; the one in progress is redone next run",
    "register-sheets": "no reference was committed",
    "import-labels": "folders imported before it stay; the one in progress was not committed",
}


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
):
    """Set up logging and the libraries' environment before any command runs."""
    import sys

    from core.interrupts import stop_on_signals

    command = ctx.invoked_subcommand or ""
    if command != "serve":  # uvicorn handles the server's signals itself
        args = [a for a in sys.argv[1:] if not a.startswith("-")][:2]
        stop_on_signals(" ".join(args) or command, INTERRUPTED.get(command, ""))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Prefect's API calls, one per line
    # the API runs the models beside identification and its requests
    configure_environment(get_settings(), inference=command == "serve")


def _warehouse():
    from warehouse.store import Warehouse

    return Warehouse(get_settings().warehouse_dir).ensure()


def print_table(rows, title: str | None = None) -> None:
    """Print an Arrow table as a rich table."""
    console.print(rich_table(rows, title))


@app.command("import-labels")
def import_labels(
    paths: Annotated[
        list[Path],
        typer.Argument(**existing("Severstal or NEU-DET dataset folders.", file_okay=False)),
    ],
) -> None:
    """Import labelled datasets (Severstal train.csv + train_images/, or NEU-DET images/ +
    annotations/) into the warehouse. Importing a folder again replaces its rows.

    Bad rows and files go to the ingest_errors table with the reason; the rest is taken
    in. Exits with 1 when a folder gave nothing at all.
    """
    from tasks.labels import SourceError, import_label_source

    warehouse = _warehouse()
    summary = Table(title="Import")
    for column in ("folder", "kind", "status", "images", "labels", "errors"):
        summary.add_column(column)
    failed = False
    for path in paths:
        try:
            s = import_label_source(path, warehouse)
        except SourceError as error:
            err_console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
            failed = True
            continue
        except Exception as error:  # one folder never stops the ones after it
            err_console.print(
                f"[red]error:[/red] {path} could not be imported ({type(error).__name__}: "
                f"{error}); the folders after it go on",
                highlight=False,
                soft_wrap=True,
            )
            failed = True
            continue
        failed |= s.status == "failed"
        summary.add_row(s.path, s.kind, s.status, str(s.n_images), str(s.n_labels), str(s.n_errors))
        if s.n_errors:
            from warehouse import queries

            errors = queries.first_errors(warehouse, s.archive_id)
            print_table(errors, title=f"First errors of {s.path} (all in ingest_errors)")
    console.print(summary)
    if failed:
        raise typer.Exit(1)


@app.command()
def ingest(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            **existing("Archives to take in where they are (besides the landing folder).")
        ),
    ] = None,
    landing: Annotated[
        bool, typer.Option(help="Also take in what waits in the landing folder.")
    ] = True,
) -> None:
    """Take in recorded archives (video or frame folders with manifest.json, Severstal or
    NEU-DET datasets) from the landing folder under STEELSIGHT_HOME and from PATHS.

    Each is validated and registered in the archives table with its content hash. A bad
    one from the landing folder moves to quarantine, its reason in ingest_errors; one
    named by path stays where it is. A duplicate is recognised and not taken in twice.
    Each archive is validated in a child process with a time and memory limit, so one
    that crashes or hangs a decoder is quarantined and the rest go on. Exits with 1 when
    an archive was rejected.
    """
    from flows.ingest import ingest as run_ingest
    from flows.ingest import progress_to

    settings = get_settings()
    with counting_bar("ingesting") as advance, progress_to(advance):
        try:
            results = run_ingest(paths=[str(p) for p in paths or []], landing=landing)
        except FileNotFoundError as error:
            fail(str(error), 2)
    table = Table(title=f"Ingest (landing: {settings.landing_dir})")
    for column in ("archive", "kind", "status", "frames"):
        table.add_column(column, overflow="fold")
    for r in results:
        colour = {
            "quarantined": "red",
            "failed": "red",
            "partial": "yellow",
            "skipped": "yellow",
        }.get(r["status"])
        status = f"[{colour}]{r['status']}[/{colour}]" if colour else r["status"]
        table.add_row(Path(r["source"]).name, r["kind"], status, str(r["n_frames"]))
    console.print(table)
    for r in results:
        if r["reason"]:
            console.print(
                f"{Path(r['source']).name} ({r['status']}, now at {r['path']}): {r['reason']}",
                highlight=False,
            )
    if any(r["status"] in ("failed", "quarantined") for r in results):
        raise typer.Exit(1)


@app.command()
def inspect(
    archives: Annotated[
        list[str] | None,
        typer.Argument(help="Archive ids or paths to inspect (default: every one due)."),
    ] = None,
    dask_address: Annotated[
        str | None,
        typer.Option(
            help="Scheduler of an existing Dask cluster (default: settings, else a "
            "LocalCluster sized to this machine)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Inspect again even when the champions already did.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summaries as JSON.")] = False,
) -> None:
    """Inspect every ingested recording not yet inspected by the champion models, on
    Dask: track sheets, identify them, find defects; writes the frames, defects and
    sheets tables (one import per archive: re-running replaces its rows)."""
    import json

    from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn

    from flows.inspect import InspectError, progress_to
    from flows.inspect import inspect as run_inspect

    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=as_json) as progress:
        bars: dict[str, object] = {}

        def advance(archive_id: str, done: int, total: int) -> None:
            if archive_id not in bars:
                bars[archive_id] = progress.add_task(f"inspecting {archive_id}", total=total)
            progress.update(bars[archive_id], completed=done)

        try:
            with progress_to(advance):
                summaries = run_inspect(dask_address=dask_address, archives=archives, force=force)
        except (InspectError, OSError) as error:
            fail(str(error))
    if as_json:
        print(json.dumps(summaries))
        return
    if not summaries:
        console.print("nothing to inspect: every ingested recording is inspected by the champions")
        return
    table = Table(title="Inspected")
    columns = (
        "archive_id",
        "status",
        "frames",
        "sheets",
        "identified",
        "defects",
        "errors",
        "frames_per_s",
    )
    for column in (*columns, "drift"):
        table.add_column(column.replace("_", " "), overflow="fold")
    for s in summaries:
        drift = s.get("drift")
        verdict = "—" if not drift else "drifted" if drift["drifted"] else "stable"
        table.add_row(*(str(s[c]) for c in columns), verdict)
    console.print(table)
    for s in summaries:
        if s["reason"]:
            console.print(f"{s['archive_id']} ({s['status']}): {s['reason']}", highlight=False)
        if s.get("drift") and s["drift"]["drifted"]:
            from tasks.drift import described

            console.print(
                f"{s['archive_id']} has drifted from the champion's holdout: "
                f"{described(s['drift'])} "
                "(the drift table; the quality page's /ui/drift)",
                highlight=False,
            )
    if any(s["status"] == "failed" for s in summaries):
        raise typer.Exit(1)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="A SQL query over the warehouse's views.")],
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="table: DuckDB's rendering of the first --max-rows rows, fitted to the "
            "terminal; csv, json (one object per line) or parquet: every row, streamed.",
        ),
    ] = OutputFormat.table,
    out: Annotated[
        Path | None,
        typer.Option(help="Write to this file (replaced whole) instead of stdout.", dir_okay=False),
    ] = None,
    max_rows: Annotated[int, typer.Option(min=1, help="Rows a table shows.")] = 40,
) -> None:
    """Run a SQL query over the warehouse's views (`steelsight warehouse info` lists the
    tables; docs/warehouse.md describes them)."""
    import sys

    import duckdb

    from steelsight.query_output import write_rows

    if output_format is OutputFormat.parquet and out is None:
        fail("--format parquet writes a file: add --out FILE.parquet", 2)
    with _warehouse().connect() as con:
        try:
            relation = con.sql(query)
            if relation is None:  # a statement without rows
                return
            if output_format is OutputFormat.table and out is None:
                relation.show(max_rows=max_rows, max_width=console.width)
                return
            written = write_rows(relation, output_format.value, out)
        except BrokenPipeError:  # the reader went away (`| head`): not an error
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        except duckdb.Error as error:
            first = str(error).strip().splitlines()[0]
            fail(f"{first} (tables and views: `steelsight warehouse info`)", 2)
    if out is not None:
        err_console.print(f"{written:,d} rows written to {out}", highlight=False)


@app.command("sheet-map")
def sheet_map(
    archive: Annotated[
        str, typer.Argument(help="The inspected recording: its archive_id or folder name.")
    ],
    sheet: Annotated[
        str, typer.Argument(help="The sheet: its index in the recording or its sheet ID.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            help="The PNG to write (replaced whole); default <archive_id>-sheet-<index>.png here.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Draw one sheet to scale with its defects outlined by class (PNG), for claims and QA
    reports; the quality page shows the same picture."""
    from tasks.sheet_maps import SheetMapError, resolve, write_sheet_map

    with _warehouse().reader() as con:
        cur = con.cursor()
        try:
            archive_id, index = resolve(cur, archive, sheet)
            written = write_sheet_map(
                cur, archive_id, index, out or Path(f"{archive_id}-sheet-{index}.png")
            )
        except SheetMapError as error:
            fail(str(error))
    console.print(f"sheet {index} of {archive_id} drawn to {written}", highlight=False)


@warehouse_app.command("info")
def warehouse_info() -> None:
    """Where the warehouse is, and how many rows each table holds."""
    from warehouse.schema import TABLES

    warehouse = _warehouse()
    console.print(f"catalogue: {warehouse.catalogue_path}\nparquet:   {warehouse.parquet_dir}")
    table = Table()
    for column in ("table", "rows", "what it holds"):
        table.add_column(column)
    for name, count in warehouse.row_counts().items():
        table.add_row(name, f"{count:,d}", TABLES[name].description)
    console.print(table)


@warehouse_app.command("check")
def warehouse_check() -> None:
    """Check unique keys, required values and references in every table; exit 1 on failure."""
    from warehouse.checks import run_checks

    with _warehouse().connect() as con:
        results = run_checks(con)
    for r in results:
        mark = "[green]ok[/green]" if r.ok else f"[red]{r.failing_rows} rows fail[/red]"
        console.print(f"{r.table:14s} {r.check:40s} {mark}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Folder to write the recordings into.")],
    sheets: Annotated[int, typer.Option(min=1, help="Sheets passing the line.")] = 10,
    seed: Annotated[int, typer.Option(help="Same seed and parameters, same recording.")] = 0,
    config: Annotated[
        Path | None,
        typer.Option(
            **existing("YAML/JSON file of twin parameters (twin/config.py).", dir_okay=False)
        ),
    ] = None,
    archive_format: Annotated[
        ArchiveFormat | None,
        typer.Option("--format", help="video (FFV1 .mkv) or frames (JPEG folder)."),
    ] = None,
    distortion: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Marking distortion, 0 clean .. 1 strong."),
    ] = None,
    surface_effects: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Real steel's non-defects (stains, splashes, uneven light), unlabelled: "
            "their chance, 0 (the default: the twin as before) .. 1.",
        ),
    ] = None,
    defect_look: Annotated[
        DefectLook | None,
        typer.Option(
            help="How defects are drawn and labelled: twin (the default: hard masks, "
            "labelled exactly) or severstal (outlined by hand with a margin, scratches as "
            "bands of fine streaks, as in Severstal's real data).",
        ),
    ] = None,
    fault: Annotated[
        list[Fault] | None, typer.Option(help="Recorder fault to write (repeatable).")
    ] = None,
) -> None:
    """Simulate the rolling line: an inspection-camera recording and a marking-station
    archive with ground truth (defect masks as RLE, marking boxes, sheet IDs)."""
    import yaml
    from pydantic import ValidationError
    from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn

    from twin.config import TwinConfig
    from twin.recorder import simulate as run_twin

    try:
        values = yaml.safe_load(config.read_text()) if config else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        fail(f"{config}: not a readable YAML/JSON file of twin parameters ({error})", 2)
    if not isinstance(values, dict):
        fail(f"{config}: expected a mapping of twin parameters (twin/config.py)", 2)
    overrides = {
        "archive_format": archive_format.value if archive_format else None,
        "distortion": distortion,
        "surface_effects": surface_effects,
        "defect_look": defect_look.value if defect_look else None,
        "faults": tuple(fault) if fault else None,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        twin_config = TwinConfig(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'parameters'}: {e['msg']}" for e in error.errors()
        )
        fail(f"invalid twin parameters ({config or 'command line'}): {problems}", 2)
    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("rendering frames", total=None)
        recording = run_twin(
            twin_config,
            sheets,
            seed,
            out,
            lambda done, total: progress.update(bar, completed=done, total=total),
        )
    console.print(
        f"{recording.n_sheets} sheets, {recording.n_frames} frames\n"
        f"inspection camera: {recording.inspection}\nmarking station:   {recording.station}"
    )


KIND_HELP = ", ".join(f"{k.name} ({k.summary})" for k in KINDS.values()) + "."
ModelKind = Annotated[Kind, typer.Argument(help=KIND_HELP)]


def _data_help() -> str:
    """What --data holds, per kind (kinds that learn from the same data named together)."""
    kinds_of: dict[str, list[str]] = {}
    for spec in KINDS.values():
        kinds_of.setdefault(spec.data, []).append(spec.name)
    return "; ".join(f"{data} ({', '.join(names)})" for data, names in kinds_of.items()) + "."


DATA_HELP = _data_help()


def print_metrics(kind: str, report: dict, title: str) -> None:
    """The headline metric and the per-class table of an evaluation report."""
    console.print(kinds.family(kind).headline(report, title))
    columns = kinds.kind(kind).columns
    if columns:
        table = Table()
        table.add_column("class")
        for column in columns:
            table.add_column(column, justify="right")
        for name, row in report["per_class"].items():
            cells = [
                ""
                if row[c] is None
                else f"{row[c]:.4f}"
                if isinstance(row[c], float)
                else str(row[c])
                for c in columns
            ]
            table.add_row(name, *cells)
        console.print(table)
    if "confusion" in report:
        labels = report["confusion"]["labels"]
        confusion = Table(title="confusion (rows true, columns predicted)")
        confusion.add_column("")
        for label in labels:
            confusion.add_column(label[:10], justify="right")
        for label, row in zip(labels, report["confusion"]["matrix"], strict=True):
            confusion.add_row(label, *map(str, row))
        console.print(confusion)


@contextmanager
def counting_bar(what: str, disable: bool = False):
    """A progress bar on stderr counting items done; yields update(done, total, name)."""
    from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (*Progress.get_default_columns()[:-1], MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, disable=disable, transient=True) as progress:
        bar = progress.add_task(what, total=None)

        def advance(done: int, total: int, name: str) -> None:
            label = f"{what}: {name}" if name else what
            progress.update(bar, completed=done, total=total, description=label)

        yield advance


@contextmanager
def training_bar(kind: str, disable: bool = False):
    """A progress bar on stderr: epoch, last loss, time left; yields its update function."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("training {task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, disable=disable) as progress:
        bar = progress.add_task(kind, total=None, loss="")

        def advance(epoch: int, epochs: int, row: dict) -> None:
            loss = row.get("loss", row.get("train_loss"))
            shown = f"loss {loss:.4f}" if isinstance(loss, float) else ""
            progress.update(bar, completed=epoch, total=epochs, loss=shown)

        yield advance


@app.command()
def train(
    kind: ModelKind,
    data: Annotated[
        Path,
        typer.Option(
            **existing(
                DATA_HELP,
                file_okay=False,
            )
        ),
    ],
    size: Annotated[
        Size,
        typer.Option(
            help="tiny (a minute or two: tests), demo (minutes: make demo), default (2 CPU "
            "cores, <= 25 min) or gpu."
        ),
    ] = Size.default,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda (default: settings).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and sampling.")] = 0,
    encoder_weights: Annotated[
        Path | None, typer.Option(help="Local torchvision ResNet state dict to start from.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train, score on the fixed holdout, register in MLflow; the new version becomes
    champion only if it beats the current champion on the same holdout."""
    import json

    from flows.retrain import progress_to, retrain

    with training_bar(kind.value, disable=as_json) as advance, progress_to(advance):
        result = retrain(
            kind=kind.value,
            data=str(data.resolve()),
            size=size.value,
            device=device,
            seed=seed,
            encoder_weights=str(encoder_weights) if encoder_weights else None,
        )
    if as_json:
        print(json.dumps(result))
        return
    print_metrics(kind, result["holdout"], f"version {result['version']} on the holdout")
    mark = "[green]champion[/green]" if result["promoted"] else "[yellow]not promoted[/yellow]"
    console.print(f"{mark}: {result['reason']} (trained in {result['training_seconds']:.0f} s)")
    if result["onnx"] is not None:  # exported as the champion before it was
        onnx = result["onnx"]
        console.print(
            "exported to ONNX as the champion before it was: "
            + (
                ("runs on ONNX Runtime" if onnx["faster"] else "torch is faster")
                if onnx["registered"]
                else f"not registered, its outputs differ from torch's {onnx['differences']}"
            )
        )


@app.command()
def evaluate(
    kind: Annotated[
        EvaluateKind,
        typer.Argument(
            help="segmentation, classification, or identity (the marking detector and the "
            "imprint model together, on a station + inspection pair)."
        ),
    ],
    data: Annotated[
        Path, typer.Option(**existing("Labelled folder to score on.", file_okay=False))
    ],
    model: Annotated[str, typer.Option(help="champion, another alias, or a version.")] = "champion",
    split: Annotated[
        Split, typer.Option(help="all, or holdout (the fixed holdout of DATA).")
    ] = Split.all,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout.")
    ] = False,
    leave_out: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9,
            help="identity: share of sheets kept out of the registry, to test unknowns.",
        ),
    ] = 0.0,
) -> None:
    """Score a registered model on a labelled folder: Severstal (train.csv + train_images/),
    a twin archive, NEU-DET (images/ + annotations/) or class folders; ``identity`` scores
    the marking detector and imprint model together on a station + inspection pair."""
    import json
    import tempfile

    from models.registry import RegistryError, load_model
    from tasks.datasets import WHOLE
    from tasks.labels import SourceError
    from tasks.training import evaluate as run_evaluation
    from tasks.training import prepare

    if kind is EvaluateKind.identity:
        _evaluate_identity(data, model, leave_out, as_json)
        return
    kind = kind.value
    try:
        loaded = load_model(get_settings(), kind, model)
        if split is Split.holdout:
            with tempfile.TemporaryDirectory() as workdir:
                labelled = prepare(kind, data, Path(workdir), "default").holdout
        else:
            labelled = WHOLE[kinds.kind(kind).reader](data)
        report = run_evaluation(kind, loaded, labelled)
    except (RegistryError, SourceError, ValueError) as error:
        fail(str(error))
    report = {"model": model, "data": str(data), "split": split.value, **report}
    if as_json:
        print(json.dumps(report))
    else:
        print_metrics(kind, report, f"{model} on {data} ({split})")


def _evaluate_identity(data: Path, model: str, leave_out: float, as_json: bool) -> None:
    import json

    from rich.progress import Progress

    from models.registry import RegistryError
    from tasks.identify import evaluate_identity, load_models, threshold_of
    from tasks.identity import IdentityDataError, find_pairs

    settings = get_settings()
    try:
        pairs = find_pairs(data)
        if len(pairs) != 1:
            raise IdentityDataError(
                f"{data} holds {len(pairs)} archive pairs: pass one pair's folder or archive"
            )
        models = load_models(settings, model, model)
        with Progress(console=console, transient=True, disable=as_json) as progress:
            bar = progress.add_task("identifying", total=None)
            report = evaluate_identity(
                pairs[0],
                models,
                _warehouse(),
                threshold_of(settings),
                leave_out,
                progress=lambda n: progress.update(bar, completed=n),
            )
    except (RegistryError, IdentityDataError, ValueError) as error:
        fail(str(error))
    if as_json:
        print(json.dumps(report))
        return
    s, d = report["per_sheet"], report["detection"]
    console.print(
        f"identity on {pairs[0].name}: marking {report['models']['marking']}, imprint "
        f"{report['models']['imprint']}; {report['registered_sheets']} sheets registered"
    )
    table = Table()
    for column in ("figure", "per sheet", "per detection"):
        table.add_column(column, justify="right" if column != "figure" else "left")
    p = report["per_detection"]
    for name in ("rank1", "identified", "far", "frr", "fpir"):
        table.add_row(name, f"{s[name]:.4f}", f"{p[name]:.4f}")
    table.add_row("queries", str(s["queries"]), str(p["queries"]))
    table.add_row("wrong IDs", str(s["wrong_ids"]), str(p["wrong_ids"]))
    console.print(table)
    cut = p["cut_parts"]
    console.print(
        f"per detection: the detections of a listed marking (at least half in its frame); "
        f"{p['unlisted_detections']} others, {p['unlisted_given_an_id']} of them given an "
        f"ID; {cut['detections']} of them the rest of a marking the frame's edge cut: "
        f"{cut['identified_right']} named right, {cut['identified_wrong']} wrong; "
        f"{p['another_sheet_named']} detections named a sheet other than the one they lie on"
        + (
            ""
            if p["best_for_another_sheet"] is None
            else f" (the best score any gave another sheet: {p['best_for_another_sheet']:.3f})"
        )
    )
    if report["calibration"]:
        c = report["calibration"]
        console.print(
            f"calibration on this pair: threshold {c['threshold']:.3f} for "
            f"{c['target_far']:.1%} wrong IDs per query over {c['registered']} candidates "
            f"(genuine mean {c['genuine_mean']:.3f}, impostor max {c['impostor_max']:.3f}); "
            "set it as identity_threshold after checking on another pair"
        )
    console.print(
        f"threshold {s['threshold']:.3f}; marking mAP50 {d['map50']:.4f} (precision "
        f"{d['precision']:.4f} with the {d['ignored']} cut parts left out, "
        f"{d['precision_cut_parts_counted']:.4f} counting them; recall {d['recall']:.4f}); "
        f"markings not detected: "
        f"{s['marking_not_detected']} of {s['sheets']} sheets; {report['frames_per_s']:.1f} "
        f"frames/s, {report['sheets_per_s']:.2f} sheets/s; identifying "
        f"{report['identify_ms_per_marking']:.1f} ms per marking (search and verification)"
    )
    if s["not_identified"]:
        shown = ", ".join(s["not_identified"][:20])
        more = len(s["not_identified"]) - 20
        console.print(
            f"registered sheets not identified: {shown}" + (f" and {more} more" if more > 0 else "")
        )


@app.command("register-sheets")
def register_sheets(
    station: Annotated[
        Path, typer.Argument(**existing("A marking-station archive.", file_okay=False))
    ],
    marking: Annotated[str, typer.Option(help="Detector alias or version.")] = "champion",
    imprint: Annotated[str, typer.Option(help="Imprint model alias or version.")] = "champion",
) -> None:
    """Register a marking station's sheets for identification: their imprint embeddings
    go to the warehouse's sheet_references table (re-running replaces them)."""
    from models.registry import RegistryError
    from tasks.archives import ArchiveError
    from tasks.identify import load_models, register_station
    from tasks.identity import IdentityDataError

    try:
        models = load_models(get_settings(), marking, imprint)
        with counting_bar("station pictures") as advance:
            done = register_station(
                station, models, _warehouse(), progress=lambda n, total: advance(n, total, "")
            )
    except (RegistryError, IdentityDataError, ArchiveError) as error:
        fail(str(error))
    console.print(
        f"registered {done.registered} of {done.sheets} sheets from {station} "
        f'({done.errors} without a marking found: see `steelsight sql "select * from '
        f'ingest_errors"`) in {done.seconds:.1f} s'
    )


def _registry_action(action):
    from models.registry import RegistryError, connect

    try:
        return action(connect(get_settings()))
    except RegistryError as error:
        fail(str(error))


KindOption = Annotated[Kind, typer.Option("--kind", help=KIND_HELP)]


@app.command()
def promote(
    version: Annotated[int, typer.Argument(help="The version to make champion.")],
    kind: KindOption = Kind.segmentation,
    reason: Annotated[str, typer.Option(help="Why, for the record.")] = "promoted by hand",
) -> None:
    """Make a registered version the champion (recorded in the alias's history)."""
    import getpass

    from models.registry import promote as run_promote

    _registry_action(
        lambda client: run_promote(client, kind, version, reason, by=getpass.getuser())
    )
    console.print(f"{kind} version {version} is champion")


@app.command()
def rollback(kind: KindOption = Kind.segmentation) -> None:
    """Give the champion alias back to the version that held it before."""
    import getpass

    from models.registry import rollback as run_rollback

    current, previous = _registry_action(
        lambda client: run_rollback(client, kind, by=getpass.getuser())
    )
    console.print(f"{kind} champion: version {current} -> version {previous}")


@app.command()
def export(
    kind: Annotated[
        list[Kind] | None,
        typer.Option(
            "--kind",
            help="A kind to export (repeat for several); default: every champion that "
            "inspection uses.",
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="champion, another alias, or a version (with one --kind).")
    ] = "champion",
    frames: Annotated[
        Path | None,
        typer.Option(
            **existing(
                "An inspection recording whose frames the engines are compared on; "
                "default: a few sheets the twin renders.",
                file_okay=False,
            )
        ),
    ] = None,
) -> None:
    """Export models to ONNX, beside their registered versions: compared with torch on
    the same frames (registered only when equal within the kind's tolerance) and timed;
    CPU workers and the API then run them on ONNX Runtime where faster."""
    import tempfile

    from models.kinds import NoChampion
    from models.registry import champion_set, version_of
    from tasks.export import export_version, sample_frames, twin_frames

    settings = get_settings()
    client = _registry_action(lambda client: client)
    if kind:
        chosen = [str(k) for k in kind]
    else:
        try:
            chosen = list(champion_set(client, settings))
        except NoChampion as error:
            fail(str(error))
    if model != "champion" and len(chosen) != 1:
        fail(f"--model {model} names one version: give one --kind with it")
    unfit = [k for k in chosen if not kinds.exportable(k)]
    if unfit:
        fail(f"{', '.join(unfit)} models cannot be exported to ONNX")
    if frames is None:
        with tempfile.TemporaryDirectory() as tmp:
            sample, source = twin_frames(Path(tmp))
    else:
        sample, source = sample_frames(frames), frames.name
    table = Table(title=f"ONNX export, compared on {len(sample)} frames of {source}")
    for column in (
        "kind",
        "version",
        "largest difference (tolerance)",
        "torch ms",
        "ONNX ms",
        "registered",
    ):
        table.add_column(column)
    refused = False
    for name in chosen:
        version = _registry_action(lambda client, name=name: version_of(client, name, model))
        done = export_version(settings, name, version, sample)
        refused |= not done.registered
        table.add_row(
            name,
            str(version),
            ", ".join(f"{k} {v:.2g} ({done.tolerance[k]:g})" for k, v in done.differences.items()),
            f"{done.torch_ms:.0f}",
            f"{done.onnx_ms:.0f}",
            ("yes, runs on ONNX" if done.faster else "yes, torch is faster")
            if done.registered
            else "no: outputs differ",
        )
    console.print(table)
    if refused:
        fail("an export whose outputs differ from torch's was not registered (table above)")


@app.command()
def models(kind: KindOption = Kind.segmentation) -> None:
    """The registered versions of a model, newest first, and which one is champion."""
    from models.registry import model_name, versions

    rows = _registry_action(lambda client: versions(client, kind))
    table = Table(title=f"{model_name(kind)} ({get_settings().tracking_uri})")
    for column in (
        "version",
        "champion",
        "holdout score",
        "champion's score then",
        "decision",
        "created",
    ):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["version"]),
            "champion" if r["champion"] else "",
            r["holdout_score"],
            r["champion_score_at_registration"],
            r["decision"],
            r["created"],
        )
    console.print(table)


@app.command()
def demo(
    data: Annotated[
        Path | None,
        typer.Option(help="A Severstal-format folder to ingest too (registered in place)."),
    ] = DEFAULT_SAMPLE,
    sheets: Annotated[int, typer.Option(min=2, help="Sheets in the line recording.")] = 12,
    dask_address: Annotated[
        str | None, typer.Option(help="Existing Dask scheduler (default: a LocalCluster).")
    ] = None,
) -> None:
    """The main job on embedded defaults: the twin records a line (and a damaged
    recording), ingest takes them in from the landing folder, quick models are trained
    when there is no champion, inspect runs on a local Dask cluster, and the per-sheet
    table is printed from DuckDB. A second run reuses everything that exists."""
    from steelsight.demo import run_demo

    run_demo(get_settings(), console, data, sheets, dask_address)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (serve_host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (serve_port).")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Server processes (serve_workers).")
    ] = None,
    allow_no_keys: Annotated[
        bool,
        typer.Option(
            "--allow-no-keys",
            help="Serve without API keys when none are configured: for a demo on a closed "
            "machine only.",
        ),
    ] = False,
) -> None:
    """Serve the champion models and the warehouse to the MES over HTTP: POST
    /v1/inspect, GET /v1/sheets, /v1/models, /healthz, /readyz, /metrics; OpenAPI docs
    at /docs. Options override the STEELSIGHT_* settings."""
    import os
    import shutil

    import uvicorn

    from serving.security import KeyCheck, ServeConfigError

    overrides = {
        "STEELSIGHT_SERVE_HOST": host,
        "STEELSIGHT_SERVE_PORT": port,
        "STEELSIGHT_SERVE_WORKERS": workers,
        "STEELSIGHT_ALLOW_NO_KEYS": "true" if allow_no_keys else None,
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value)  # the server processes read settings from here
    get_settings.cache_clear()
    settings = get_settings()
    try:
        KeyCheck(settings)
    except ServeConfigError as error:
        fail(str(error), 2)
    if settings.serve_workers > 1:  # every process writes its metrics; /metrics adds them
        folder = settings.home.resolve() / "serve" / "prometheus"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=settings.serve_host,
        port=settings.serve_port,
        workers=settings.serve_workers,
        access_log=False,  # serving.access_log writes one JSON line per request
        timeout_graceful_shutdown=30,
        # h11 with serving.guards' limits on a request's head (httptools has none); h11's
        # own buffer limit sits above ours so that ours answers (431) first
        http="serving.guards:GuardedH11",
        h11_max_incomplete_event_size=2 * settings.serve_max_head_bytes,
    )


if __name__ == "__main__":
    app()
