"""Shared fixtures: the real data beside the repo, and a private STEELSIGHT_HOME per test."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers import LINE_SHEETS, MainJob

# As the command line sets them (core.runtime), before any test imports Keras or
# ultralytics: Keras on torch in this process, ultralytics' settings in a private folder.
os.environ.setdefault("KERAS_BACKEND", "torch")
if "YOLO_CONFIG_DIR" not in os.environ:  # xdist's workers inherit the controller's
    _yolo_config = tempfile.mkdtemp(prefix="steelsight-yolo-")
    atexit.register(shutil.rmtree, _yolo_config, ignore_errors=True)
    os.environ["YOLO_CONFIG_DIR"] = _yolo_config
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")


def _a_share_of_the_cores() -> None:
    """Under pytest-xdist, each worker (and what it starts) runs on its own share of this
    process's cores, as a machine of that size would: the code sizes torch's threads and
    the Dask cluster from the affinity (`models.devices.cpu_threads`). Two workers that
    each trained on every core ran their fixtures 2.3 times slower side by side."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker is None or workers < 2:
        return
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // workers)
    first = int(worker.removeprefix("gw")) * share
    os.sched_setaffinity(0, {cores[(first + i) % len(cores)] for i in range(share)})


_a_share_of_the_cores()

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STEELSIGHT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs one pytest-xdist worker per CPU with ``--dist loadgroup``. Tests
    that share a fixture wider than one test run on one worker, so that it is built once:
    every user of the session's main job in one group, the tests of a module with a
    module-scoped fixture in the module's group. Other tests go wherever a worker is free."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        definitions = info.name2fixturedefs.values() if info else ()
        scopes = {d.scope for defs in definitions for d in defs}
        if "main_job" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("main-job"))
        elif scopes & {"module", "package", "class"}:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}: set STEELSIGHT_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh STEELSIGHT_HOME for one test, with the settings cache cleared around it."""
    from core.settings import get_settings

    path = tmp_path / "home"
    monkeypatch.setenv("STEELSIGHT_HOME", str(path))
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def _built_once(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Fails a second xdist worker that builds the session's `name`: the grouping above
    is not in effect (as with pytest 9.2 and xdist 3.8, xdist#1386) and the fixture's
    minutes would be spent once per worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return
    claim = tmp_path_factory.getbasetemp().parent / f"{name}.built-by"
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pytest.fail(
            f"{name} was already built by {claim.read_text()}: tests that share it were "
            "sent to several xdist workers (see pytest_collection_modifyitems)"
        )
    with os.fdopen(fd, "w") as out:
        out.write(worker)


@pytest.fixture(scope="session")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> MainJob:
    """Built once per session (about four minutes on 2 cores) for the inspect and
    serving tests; a test that changes it works on a copy or restores it."""
    from prefect.testing.utilities import prefect_test_harness

    from core.settings import get_settings
    from flows.ingest import ingest
    from flows.inspect import inspect
    from flows.retrain import retrain
    from models import registry
    from tests.helpers import deliver
    from twin.config import TwinConfig
    from twin.recorder import simulate

    _built_once("main-job", tmp_path_factory)
    root = tmp_path_factory.mktemp("main-job")
    train = root / "train"
    simulate(TwinConfig(), 30, seed=1, out=train)
    with pytest.MonkeyPatch.context() as mp, prefect_test_harness(server_startup_timeout=120):
        mp.setenv("STEELSIGHT_HOME", str(root / "home"))
        get_settings.cache_clear()
        trained = {}
        for kind in ("segmentation", "marking", "imprint"):
            data = train / "line-1-inspection-s1" if kind == "segmentation" else train
            # the detector for 1 epoch, not the demo's 600 steps (minutes): it finds nothing
            quick = {"epochs": 1, "steps": 0} if kind == "marking" else None
            trained[kind] = retrain(
                kind=kind, data=str(data), size="demo", device="cpu", overrides=quick
            )
            if not trained[kind]["promoted"] and kind != "segmentation":
                # A detector trained this briefly finds no marking (mAP50 0), below the
                # promotion floor. Promoted by hand, as `steelsight promote` would, so
                # that the identity path (registration, detection and identification on
                # the workers) still runs here.
                registry.promote(
                    registry.connect(get_settings()),
                    kind,
                    trained[kind]["version"],
                    "tests: run the identity path",
                )
        line = simulate(TwinConfig(), LINE_SHEETS, seed=2, out=root / "staging")
        cut = simulate(TwinConfig(faults=("truncated-video",)), 3, seed=3, out=root / "cut")
        deliver([line.station, line.inspection, cut.inspection], get_settings().landing_dir)
        ingested = ingest()
        inspected = inspect()
    get_settings.cache_clear()
    return MainJob(root, root / "home", line.inspection, ingested, inspected, trained)
