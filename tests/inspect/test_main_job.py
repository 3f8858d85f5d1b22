"""The main job end to end on real components: the twin records a line into the landing
folder, the ingest flow takes it in, demo-size models train and register in a SQLite
MLflow store, and the inspect flow runs on a Dask LocalCluster, on a `dask scheduler`
with two `dask worker` processes on loopback (one killed half-way), and as a command
that is killed and run again. Tables are read back from the warehouse with DuckDB."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from core.settings import Settings, get_settings
from flows.ingest import ingest
from flows.inspect import champion_refs, inspect
from tasks.inspection_report import against_twin
from tests.helpers import (
    LINE_SHEETS,
    MainJob,
    deliver,
    start_dask_scheduler,
    start_dask_worker,
    start_logged,
    stop_group,
)
from twin.config import TwinConfig
from twin.recorder import simulate
from warehouse.checks import run_checks
from warehouse.store import Warehouse

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@dataclass
class World:
    root: Path
    home: Path
    line: Path  # the line's inspection archive, as it arrived in the landing folder
    ingested: list[dict]
    inspected: list[dict]
    trained: dict[str, dict]

    @property
    def warehouse(self) -> Warehouse:
        return Warehouse(self.home / "warehouse")

    def archive_id(self, name: str) -> str:
        rows = self.warehouse.query(
            "SELECT archive_id FROM archives WHERE path LIKE ?", [f"%/{name}"]
        ).to_pylist()
        assert len(rows) == 1, (name, rows)
        return rows[0]["archive_id"]


@pytest.fixture(scope="module")
def world(main_job: MainJob):
    with pytest.MonkeyPatch.context() as mp, prefect_test_harness(server_startup_timeout=120):
        mp.setenv("STEELSIGHT_HOME", str(main_job.home))
        get_settings.cache_clear()
        yield World(
            main_job.root,
            main_job.home,
            main_job.line,
            main_job.ingested,
            main_job.inspected,
            main_job.trained,
        )
        get_settings.cache_clear()


def _table(world: World, name: str, archive_id: str) -> list[dict]:
    """A table's rows of one archive without import_id, in key order."""
    from warehouse.schema import TABLES

    key = ", ".join(TABLES[name].key)
    rows = world.warehouse.query(
        f"SELECT * EXCLUDE (import_id) FROM {name} WHERE archive_id = ? ORDER BY {key}",
        [archive_id],
    )
    return rows.to_pylist()


def _assert_clean(world: World) -> None:
    with world.warehouse.connect() as con:
        failing = [(r.table, r.check) for r in run_checks(con) if not r.ok]
    assert not failing
    assert not list((world.home / "warehouse").rglob("*.tmp"))


def test_ingest_takes_the_line_in_and_quarantines_the_cut_recording(world: World) -> None:
    status = {Path(r["source"]).name: r["status"] for r in world.ingested}
    assert status == {
        "line-1-station-s2": "ok",
        "line-1-inspection-s2": "ok",
        "line-1-inspection-s3": "quarantined",
    }
    settings = get_settings()
    assert not list(settings.landing_dir.iterdir())
    assert (settings.library_dir / "line-1-inspection-s2" / "video.mkv").is_file()
    assert (settings.quarantine_dir / "line-1-inspection-s3" / "video.mkv").is_file()
    errors = world.warehouse.query(
        "SELECT e.source, e.error_kind, e.reason FROM ingest_errors e JOIN archives a "
        "USING (archive_id) WHERE a.status = 'quarantined'"
    ).to_pylist()
    assert [e["error_kind"] for e in errors] == ["truncated_video"]
    assert errors[0]["source"].endswith("video.mkv") and "truncated" in errors[0]["reason"]
    # the same recording delivered again is recognised, not taken in twice
    copy = world.root / "again" / "line-1-inspection-s2-copy"
    shutil.copytree(settings.library_dir / "line-1-inspection-s2", copy)
    again = ingest()
    assert [(Path(r["source"]).name, r["status"]) for r in again] == []  # not in landing yet
    deliver([copy], settings.landing_dir)
    again = ingest()
    assert [r["status"] for r in again] == ["quarantined"]
    assert "same content" in again[0]["reason"]
    lines = world.warehouse.query(
        "SELECT count(*) AS n FROM archives WHERE status IN ('ok', 'partial') AND kind = 'video'"
    ).to_pylist()
    assert lines == [{"n": 1}]


def test_inspect_finds_the_twins_sheets_identities_and_defects(world: World) -> None:
    archive_id = world.archive_id("line-1-inspection-s2")
    (summary,) = [s for s in world.inspected if s["archive_id"] == archive_id]
    assert summary["status"] == "ok" and summary["sheets"] == LINE_SHEETS
    report = against_twin(world.warehouse, archive_id)
    sheets = report["sheets"]
    assert sheets["tracked_sheets"] == sheets["true_sheets"] == sheets["paired"] == LINE_SHEETS
    # The station was registered with the champions: every picture gave its sheet one
    # reference or more (its best box ranked 0, the others after it) or an ingest error
    # saying no marking was found (nothing lost).
    station = world.archive_id("line-1-station-s2")
    rows = _table(world, "sheet_references", station)
    ranks = {}
    for row in rows:
        ranks.setdefault(row["sheet_id"], []).append(row["box_rank"])
    assert all(sorted(r) == list(range(len(r))) for r in ranks.values()), ranks
    references = len(ranks)
    missing = world.warehouse.query(
        "SELECT count(*) AS n FROM ingest_errors WHERE archive_id = ? "
        "AND error_kind = 'no_marking_found'",
        [station],
    ).to_pylist()[0]["n"]
    assert references + missing == LINE_SHEETS
    assert sheets["registered"] == references
    # Demo-size identity models train for a minute and find few markings, if any (a
    # useful detector takes the default size, ~25 min on 2 cores). What must hold at any
    # quality: no sheet is given another sheet's ID.
    assert sheets["identified_wrong"] == 0, sheets
    assert sheets["identified_right"] + sheets["unknown"] == LINE_SHEETS
    scratches = report["defects"]["scratches"]
    assert scratches["true"] > 0
    # A two-minute model finds about a third of the scratch regions at a third to a half
    # precision (pits, patches: rarely); a pipeline that misplaced masks would find none.
    assert scratches["recall"] >= 0.2 and scratches["precision"] >= 0.2, report["defects"]
    # every row carries the archive and the models that made it
    versions = champion_refs(get_settings()).key()
    for name in ("frames", "defects", "sheets"):
        rows = _table(world, name, archive_id)
        assert rows, name
        tags = {r.get("model_versions") or r.get("model_version") for r in rows}
        assert tags <= {versions, champion_refs(get_settings()).segmentation}, (name, tags)
    frames = _table(world, "frames", archive_id)
    manifest = (world.home / "archives" / "line-1-inspection-s2" / "manifest.json").read_text()
    assert f'"frame_count": {len(frames)}' in manifest
    _assert_clean(world)


def test_inspecting_again_is_idempotent(world: World) -> None:
    archive_id = world.archive_id("line-1-inspection-s2")
    before = {t: _table(world, t, archive_id) for t in ("frames", "defects", "sheets")}
    assert inspect() == []  # nothing is due: the champions inspected everything
    (again,) = inspect(archives=[archive_id], force=True)
    assert again["status"] == "ok"
    after = {t: _table(world, t, archive_id) for t in ("frames", "defects", "sheets")}
    assert after == before
    _assert_clean(world)


def test_a_station_registered_in_an_older_surface_layout_is_registered_again(
    world: World,
) -> None:
    """Rows of another surface layout are not searched: after an upgrade that changes
    it, the next inspect registers the station again, with nothing asked of the user."""

    from tasks.identify import registration_key

    station = world.archive_id("line-1-station-s2")
    (row,) = world.warehouse.query(
        "SELECT * FROM archives WHERE archive_id = ?", [station]
    ).to_pylist()
    key = json.loads(row["inspected_with"])
    assert row["inspected_with"] == registration_key(key["marking"], key["imprint"])
    before = _table(world, "sheet_references", station)
    world.warehouse.commit({**row, "inspected_with": json.dumps({**key, "surface": "steel/1"})})
    assert inspect() == []  # no recording is due, but the station is
    (after,) = world.warehouse.query(
        "SELECT * FROM archives WHERE archive_id = ?", [station]
    ).to_pylist()
    assert after["inspected_with"] == row["inspected_with"]
    assert after["import_id"] != row["import_id"]
    assert _table(world, "sheet_references", station) == before
    _assert_clean(world)


def test_distributed_run_gives_the_same_tables_with_a_worker_killed(world: World) -> None:
    from distributed import Client

    archive_id = world.archive_id("line-1-inspection-s2")
    before = {t: _table(world, t, archive_id) for t in ("frames", "defects", "sheets")}
    logs = world.root / "dask"
    logs.mkdir(exist_ok=True)
    scheduler, scheduler_file = start_dask_scheduler(logs)
    processes = [scheduler]
    try:
        for name in ("w1", "w2"):
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            processes.append(start_dask_worker(scheduler_file, name, env))
        with Client(scheduler_file=str(scheduler_file), timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
            killed = []

            def kill_w2_when_busy() -> None:
                end = time.monotonic() + 300
                while time.monotonic() < end:
                    workers = client.scheduler_info(n_workers=-1)["workers"]
                    busy = {w["name"]: a for a, w in workers.items()}
                    processing = client.processing()
                    if processing.get(busy.get("w2"), ()):
                        time.sleep(2)  # in the middle of a range
                        os.killpg(processes[2].pid, signal.SIGKILL)
                        killed.append(True)
                        return
                    time.sleep(0.2)

            import threading

            killer = threading.Thread(target=kill_w2_when_busy, daemon=True)
            killer.start()
            (summary,) = inspect(dask_address=address, archives=[archive_id], force=True)
            killer.join(timeout=5)
        assert killed, "worker w2 never got a range to work on"
        assert summary["status"] == "ok"
        after = {t: _table(world, t, archive_id) for t in ("frames", "defects", "sheets")}
        assert after == before
        _assert_clean(world)
    finally:
        for process in reversed(processes):
            stop_group(process)


def test_a_killed_inspect_command_resumes_without_duplicates(world: World) -> None:
    settings = get_settings()
    line = simulate(TwinConfig(), 4, seed=4, out=world.root / "fourth")
    deliver([line.station, line.inspection], settings.landing_dir)
    ingest()
    archive_id = world.archive_id("line-1-inspection-s4")
    env = {**os.environ, "STEELSIGHT_HOME": str(world.home)}
    log = world.root / "killed-inspect.log"
    run = start_logged([str(BIN / "steelsight"), "inspect"], log, env=env)
    try:
        deadline = time.monotonic() + 300
        while "ranges of" not in log.read_text() and time.monotonic() < deadline:
            assert run.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(1.0)  # the workers are loading models or inside a range
        assert run.poll() is None, "the inspect command ended before it could be killed"
    finally:
        stop_group(run)
    assert not _table(world, "sheets", archive_id)  # nothing of a half-done run is visible
    assert not list((world.home / "warehouse").rglob("*.tmp"))
    # the next run (the flow itself, as the command runs it) takes the recording up again
    (resumed,) = inspect()
    assert resumed["archive_id"] == archive_id and resumed["status"] == "ok"
    # every frame once, every sheet once: the killed run left nothing that the resumed
    # one added to (that a forced run gives equal rows: test_inspecting_again_is_idempotent)
    frames = _table(world, "frames", archive_id)
    manifest = json.loads(
        (world.home / "archives" / "line-1-inspection-s4" / "manifest.json").read_text()
    )
    assert sorted(f["frame_id"] for f in frames) == sorted({f["frame_id"] for f in frames})
    assert len(frames) == manifest["frame_count"]
    assert sorted(s["sheet_index"] for s in _table(world, "sheets", archive_id)) == [0, 1, 2, 3]
    _assert_clean(world)


def test_demo_runs_the_main_job_and_a_second_run_reuses_it(world: World, shared_data) -> None:
    """`steelsight demo` in a fresh home with the module's champions (so it trains
    nothing): records, ingests, inspects, prints; the second run finds nothing to do."""
    home = world.root / "demo-home"
    env = {
        **os.environ,
        "STEELSIGHT_HOME": str(home),
        "STEELSIGHT_MLFLOW_TRACKING_URI": get_settings().tracking_uri,
        "COLUMNS": "160",
    }
    command = [
        str(BIN / "steelsight"),
        "demo",
        "--sheets",
        "3",
        "--data",
        str(shared_data / "severstal-sample"),
    ]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    assert "ingest line-1-inspection-s3: quarantined" in out
    assert "ingest severstal-sample: ok" in out
    assert "3 sheets tracked of 3" in out and "wrong 0" in out
    assert "Sheets of line-1-inspection-s2" in out and "no champion" not in out
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ingest line-1" not in second.stdout and "inspected line-1" not in second.stdout
    assert "3 sheets tracked of 3" in second.stdout
    assert Warehouse(home / "warehouse").row_counts()["sheets"] == 3


def _close(before: list[dict], after: list[dict]) -> None:
    """The same rows, floats equal within what two engines' float32 graphs differ by."""
    assert len(after) == len(before)
    for a, b in zip(before, after, strict=True):
        assert a.keys() == b.keys()
        for column, value in a.items():
            floats = isinstance(value, list) and value and isinstance(value[0], float)
            if isinstance(value, float) or floats:
                assert b[column] == pytest.approx(value, rel=1e-4, abs=1e-5), column
            else:
                assert b[column] == value, column


def _inspected_again_alike(world: World, home: Path, segmenter_on: str) -> dict:
    """The demo's line inspected again (``--force``) into the copy ``home`` of the
    world's home, as the environment now sets the workers up (their segmenter on
    ``segmenter_on``): the same frames, defects and sheets as the world's, floats within
    ``_close``. Its summary."""
    archive_id = world.archive_id("line-1-inspection-s2")
    tables = ("frames", "defects", "sheets")
    before = {t: _table(world, t, archive_id) for t in tables}
    (again,) = inspect(archives=[archive_id], force=True)
    assert again["status"] == "ok"
    assert again["engines"] and all(
        engines.startswith(f"segmentation {segmenter_on},") for engines in again["engines"]
    ), again["engines"]
    copy = World(world.root, home, world.line, [], [], {})
    for t in tables:
        _close(before[t], _table(copy, t, archive_id))
    return again


def test_exported_models_inspect_on_onnx_runtime_with_the_same_tables(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """`steelsight export` registers each champion's ONNX graph beside it, checked
    against torch; with the engine set to onnx, workers run the graphs and the tables
    are torch's. A graph whose outputs differ is not registered. With the segmenter in
    bfloat16 on the CPU, it runs on torch."""
    from models import registry
    from models.segmentation import kind as segmentation_family
    from tasks.export import export_version, sample_frames
    from tasks.inspection import worker_models

    home = tmp_path / "home"  # the export writes beside the models: a copy
    shutil.copytree(world.home, home)
    env = {**os.environ, "STEELSIGHT_HOME": str(home)}
    done = subprocess.run(
        [str(BIN / "steelsight"), "export"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    monkeypatch.setenv("STEELSIGHT_HOME", str(home))
    monkeypatch.setenv("STEELSIGHT_INFERENCE_ENGINE", "onnx")
    get_settings.cache_clear()
    settings = get_settings()
    client = registry.connect(settings)
    refs = champion_refs(settings)
    for kind, version in refs.versions().items():
        _, check = registry.onnx_check(client, kind, version)
        assert check["registered"] and check["agrees"], (kind, check)
        assert check["differences"] and check["torch_ms"] > 0 and check["onnx_ms"] > 0
    models = worker_models(refs, "cpu", 16)
    assert {kind: model.engine for kind, model in models.items()} == dict.fromkeys(
        refs.versions(), "onnx"
    )
    # the detector's graph loads at its first prediction, without a word on stdout (where
    # `evaluate identity --json` prints its one JSON object)
    capfd.readouterr()
    frame = sample_frames(home / "archives" / "line-1-inspection-s2", most=1)[:1]
    models["marking"].detect(list(frame))
    assert capfd.readouterr().out == ""

    _inspected_again_alike(world, home, "onnx")

    # cpu_precision=bfloat16: the segmenter runs on torch in bfloat16 whatever the
    # engine, and an export still compares the engines in float32
    bf16 = settings.model_copy(update={"cpu_precision": "bfloat16"})
    version = refs.versions()["segmentation"]
    assert registry.load_model(bf16, "segmentation", version).engine == "torch-bf16"
    frames = sample_frames(home / "archives" / "line-1-inspection-s2", most=4)
    assert export_version(bf16, "segmentation", int(version), frames, rounds=1).agrees

    # outputs that differ by more than the tolerance: the graph is not registered
    monkeypatch.setattr(segmentation_family, "ONNX_TOLERANCE", {"gate": -1.0, "pixels": -1.0})
    refused = export_version(settings, "segmentation", int(version), frames, rounds=1)
    assert not refused.registered and not refused.agrees
    _, check = registry.onnx_check(client, "segmentation", version)
    assert check["registered"]  # the earlier, agreeing export stays

    # a graph that cannot run: auto keeps torch, onnx names the graph and what to do
    (graph,) = (home / "mlflow" / "artifacts").rglob(f"onnx/{Path(check['artifact']).name}")
    graph.write_bytes(b"not a graph")
    faster = json.dumps({**check, "faster": True})  # so that auto would take the graph
    client.set_model_version_tag(
        registry.model_name("segmentation"), version, registry.ONNX_TAG, faster
    )
    auto = settings.model_copy(update={"inference_engine": "auto"})
    assert registry.load_model(auto, "segmentation", version).engine == "torch"
    with pytest.raises(registry.RegistryError, match="steelsight export --kind segmentation"):
        registry.load_model(settings, "segmentation", version)


def test_workers_with_a_compiled_segmenter_give_the_same_tables(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``compile_networks`` on (auto compiles on a GPU only): each worker compiles the
    segmenter's network for its batch once, with a range's last, shorter batch padded,
    and the tables are the uncompiled network's."""
    import tasks.inspection
    from tasks.inspection import worker_models

    home = tmp_path / "home"
    shutil.copytree(world.home, home)
    monkeypatch.setenv("STEELSIGHT_HOME", str(home))
    monkeypatch.setenv("STEELSIGHT_INFERENCE_ENGINE", "torch")
    get_settings.cache_clear()
    refs = champion_refs(get_settings())
    assert worker_models(refs, "cpu", 16)["segmentation"].engine == "torch"  # auto, CPU
    monkeypatch.setenv("STEELSIGHT_COMPILE_NETWORKS", "on")
    get_settings.cache_clear()
    tasks.inspection._MODELS.clear()
    segmenter = worker_models(refs, "cpu", 16)["segmentation"]
    assert segmenter.engine == "torch-compiled" and segmenter.compiled_batch == 16

    _inspected_again_alike(world, home, "torch-compiled")


def test_workers_identifying_in_processes_and_reading_apart_give_the_same_tables(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``identify_in`` processes and three ``video_readers`` (auto takes both on a GPU
    worker only): each worker of the flow's LocalCluster, started so that it may,
    identifies its markings in processes of its own holding the registered sheets, and
    reads its video range with three readers on one FFmpeg thread each; the tables,
    sheets' identities included, are those of threads and one reader. The station is
    registered at the recorder's boxes first: the fixture's detector (one epoch) finds
    too few to register. It finds no marking on this line either, so that the verdicts
    themselves are compared where markings are identified: at ``identify_markings``
    (tests/unit/test_surface.py) and by the GPU check's processes row
    (tests/e2e/test_gpu_check.py)."""
    from tasks.identify import load_models, register_station

    home = tmp_path / "home"
    shutil.copytree(world.home, home)
    monkeypatch.setenv("STEELSIGHT_HOME", str(home))
    monkeypatch.setenv("STEELSIGHT_INFERENCE_ENGINE", "torch")
    get_settings.cache_clear()
    settings = get_settings()
    warehouse = Warehouse(settings.warehouse_dir)
    station = world.archive_id("line-1-station-s2")
    (row,) = warehouse.query("SELECT * FROM archives WHERE archive_id = ?", [station]).to_pylist()
    registered = register_station(
        Path(row["path"]), load_models(settings), warehouse, ground_truth=True, archive=row
    )
    assert registered.registered == LINE_SHEETS
    archive_id = world.archive_id("line-1-inspection-s2")
    copy = World(world.root, home, world.line, [], [], {})
    tables, summaries = {}, {}
    assert (settings.library_dir / "line-1-inspection-s2" / "video.mkv").is_file()  # a video
    for where, readers in (("threads", "1"), ("processes", "3")):
        monkeypatch.setenv("STEELSIGHT_IDENTIFY_IN", where)
        monkeypatch.setenv("STEELSIGHT_VIDEO_READERS", readers)
        get_settings.cache_clear()
        (summaries[where],) = inspect(archives=[archive_id], force=True)
        assert summaries[where]["status"] == "ok", summaries[where]
        tables[where] = {t: _table(copy, t, archive_id) for t in ("frames", "defects", "sheets")}
    for where, ran in (
        ("threads", r"on [1-9]\d* threads"),
        ("processes", r"in [1-9]\d* processes"),
    ):
        engines = summaries[where]["engines"]
        assert all(re.search(f", identification {ran}$", e) for e in engines), engines
    assert not any("video read by" in e for e in summaries["threads"]["engines"])
    assert all(", video read by 3 readers," in e for e in summaries["processes"]["engines"])
    for t in ("frames", "defects", "sheets"):
        _close(tables["threads"][t], tables["processes"][t])


def test_frames_run_between_their_neighbours_give_the_same_tables_in_any_ranges(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segmenter with ``context_rows`` (the `default` recipe's) runs each frame
    between rows of the frames beside it on the line, across batches and ranges: a
    range decodes the frames just outside it, and each batch waits for the first frame
    of the next. Inspected in ranges of 5 frames and batches of 3, the tables are those
    of ranges of 64 in batches of 16; and not those of each frame run alone."""
    from models import registry

    home = tmp_path / "home"
    shutil.copytree(world.home, home)
    monkeypatch.setenv("STEELSIGHT_HOME", str(home))
    monkeypatch.setenv("STEELSIGHT_INFERENCE_ENGINE", "torch")
    for bundle in (home / "mlflow" / "artifacts").rglob("segmenter.json"):
        config = json.loads(bundle.read_text())
        bundle.write_text(json.dumps({**config, "context_rows": 64}))
    get_settings.cache_clear()
    assert registry.load_model(get_settings(), "segmentation").context_rows == 64
    archive_id = world.archive_id("line-1-inspection-s2")
    copy = World(world.root, home, world.line, [], [], {})
    alone = _table(world, "frames", archive_id)
    tables = {}
    for chunk, batch in ((64, 16), (5, 3)):
        monkeypatch.setenv("STEELSIGHT_CHUNK_FRAMES", str(chunk))
        monkeypatch.setenv("STEELSIGHT_BATCH_FRAMES", str(batch))
        get_settings.cache_clear()
        (done,) = inspect(archives=[archive_id], force=True)
        assert done["status"] == "ok"
        tables[chunk] = {t: _table(copy, t, archive_id) for t in ("frames", "defects", "sheets")}
    for t in ("frames", "defects", "sheets"):
        _close(tables[64][t], tables[5][t])
    with pytest.raises(AssertionError):  # the frames' gates moved with what they saw
        _close(alone, tables[64]["frames"])


def test_a_model_below_its_promotion_floor_is_registered_without_the_alias(world: World) -> None:
    """Each demo-size model of the fixture was registered; it took the alias (there was
    no champion) only if it scored above what a model that learnt nothing scores."""
    from models import kinds, registry

    settings = get_settings()
    client = registry.connect(settings)
    for kind, result in world.trained.items():
        least = kinds.floor_least(settings.promotion_floors, kind)
        floor = registry.floor_of(kind, result["holdout"], least)
        assert result["promoted"] == floor.passed, (kind, result["reason"])
        if not result["promoted"]:
            assert "below the floor" in result["reason"]
            tags = client.get_model_version(registry.model_name(kind), result["version"]).tags
            assert "below the floor" in tags["decision"]
    # the demo's detector finds no marking: registered, champion only by hand (conftest)
    if world.trained["marking"]["score"] == 0:
        assert not world.trained["marking"]["promoted"]


def test_the_demo_imprint_recipe_trained_as_make_demo_trains_it(world: World) -> None:
    """The fixture trained the imprint's `demo` recipe through the retrain flow, in the
    TensorFlow process ``fit`` starts (where AVX-512 machines once crashed, see
    tests/models/test_imprint_cpu.py): every epoch's loss is in MLflow, finite and
    falling, and the registered model embeds on the torch backend."""
    import math

    import numpy as np

    from models import registry
    from models.identity.imprint import imprint_recipe

    settings = get_settings()
    run_id = world.trained["imprint"]["run_id"]
    history = registry.connect(settings).get_metric_history(run_id, "train_loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) == imprint_recipe("demo").epochs
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    model = registry.load_model(settings, "imprint", world.trained["imprint"]["version"])
    crops = np.random.default_rng(0).integers(0, 255, (4, *model.crop_size), dtype=np.uint8)
    assert np.allclose(np.linalg.norm(model.embed(crops), axis=1), 1, atol=1e-4)


def test_the_registered_detector_keeps_the_largest_marking_of_each_camera(world: World) -> None:
    """The detector trained through the retrain flow is registered with the largest
    marking its training pictures of each size showed: the line's frames and the
    station's pictures, each within its picture (the detector drops boxes far larger)."""
    from models import registry

    detector = registry.load_model(get_settings(), "marking", world.trained["marking"]["version"])
    assert set(detector.largest) == {"256x1600", "320x640"}
    for size, (width, height) in detector.largest.items():
        rows, columns = map(int, size.split("x"))
        assert 0 < width <= columns and 0 < height <= rows
    assert detector.largest["256x1600"][1] < 256 / 2  # a marking is a strip of text


def test_a_station_registered_by_hand_is_a_duplicate_when_it_lands(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`register-sheets` and ingest hash an archive with one function: registering a
    station where it lies, then delivering the same station, is a duplicate."""
    from tasks.archives import content_hash
    from tasks.identify import load_models, register_station

    station = simulate(TwinConfig(), 2, seed=21, out=tmp_path / "recorded").station
    monkeypatch.setenv("STEELSIGHT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STEELSIGHT_MLFLOW_TRACKING_URI", get_settings().tracking_uri)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        warehouse = Warehouse(settings.warehouse_dir).ensure()
        # the recorder's boxes: the demo-size detector finds no marking to register
        registered = register_station(station, load_models(settings), warehouse, ground_truth=True)
        row = warehouse.query("SELECT * FROM archives").to_pylist()[0]
        assert (row["status"], row["content_sha256"]) == ("ok", content_hash(station))
        shutil.copytree(station, settings.landing_dir / station.name)
        (result,) = ingest()
    finally:
        get_settings.cache_clear()
    assert result["status"] == "quarantined", result
    assert f"same content as archive {registered.archive_id}" in result["reason"]


def test_an_archive_changed_after_ingest_is_refused_and_the_rest_inspected(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inspect checks each archive's content hash before it reads it: one changed since
    ingest is recorded as failed with the reason, the other is inspected, and the next
    run does not try the changed one again with the same models."""
    from tests.helpers import truncate

    lines = [
        simulate(TwinConfig(), 2, seed=s, out=tmp_path / f"rec{s}").inspection for s in (31, 32)
    ]
    registry_uri = Settings(home=world.home).tracking_uri  # the main job's champions
    monkeypatch.setenv("STEELSIGHT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STEELSIGHT_MLFLOW_TRACKING_URI", registry_uri)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        deliver(lines, settings.landing_dir)
        assert [r["status"] for r in ingest()] == ["ok", "ok"]
        truncate(settings.library_dir / lines[0].name / "video.mkv", keep=0.9)
        summaries = {s["archive_id"].rsplit("-", 1)[0]: s for s in inspect()}
        again = inspect()
        warehouse = Warehouse(settings.warehouse_dir)
        errors = warehouse.query(
            "SELECT a.status, e.error_kind, e.reason FROM archives a JOIN ingest_errors e "
            "USING (archive_id, import_id)"
        ).to_pylist()
    finally:
        get_settings.cache_clear()
    changed, intact = summaries[lines[0].name], summaries[lines[1].name]
    assert changed["status"] == "failed" and "changed since it was ingested" in changed["reason"]
    assert intact["status"] == "ok" and intact["sheets"] == 2
    assert [(e["status"], e["error_kind"]) for e in errors] == [("failed", "changed_since_ingest")]
    assert "steelsight ingest" in errors[0]["reason"]
    assert again == []
