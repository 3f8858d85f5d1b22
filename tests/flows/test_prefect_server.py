"""prefect.yaml deployed to a real Prefect server and run by a real process worker: the
ingest deployment takes a twin recording from the landing folder into DuckDB."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from twin.config import TwinConfig
from twin.recorder import simulate
from warehouse.store import Warehouse

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def server(tmp_path: Path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STEELSIGHT_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=api,
        STEELSIGHT_HOME=str(tmp_path / "home"),
        STEELSIGHT_SHARED_DATA=os.environ.get("STEELSIGHT_SHARED_DATA", ""),
    )
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the Prefect server did not start in 180 s"
            time.sleep(0.5)
        yield env
    finally:
        os.killpg(process.pid, 9)
        process.wait(timeout=30)


def test_ingest_deployment_runs_from_prefect_yaml_on_a_process_worker(
    server: dict, tmp_path: Path
) -> None:
    home = Path(server["STEELSIGHT_HOME"])
    line = simulate(TwinConfig(), 2, seed=21, out=tmp_path / "recorder")
    landing = home / "landing"
    landing.mkdir(parents=True)
    line.inspection.rename(landing / line.inspection.name)

    _prefect(["work-pool", "create", "steelsight-process", "--type", "process"], server)
    _prefect(["--no-prompt", "deploy", "--all"], server)
    listed = _prefect(["deployment", "ls"], server).stdout
    for name in ("ingest/ingest", "inspect/inspect", "retrain/retrain-segmentation"):
        assert name in listed, listed
    url = f"{server['PREFECT_API_URL']}/deployments/name/inspect/inspect"
    with urllib.request.urlopen(url, timeout=10) as response:
        inspect_deployment = json.load(response)
    intervals = [s["schedule"].get("interval") for s in inspect_deployment["schedules"]]
    assert intervals == [900.0], inspect_deployment["schedules"]

    _prefect(["deployment", "run", "ingest/ingest"], server)
    _prefect(["worker", "start", "--pool", "steelsight-process", "--run-once"], server, 600)

    archives = (
        Warehouse(home / "warehouse")
        .query("SELECT kind, status, n_images, path FROM archives")
        .to_pylist()
    )
    assert [(a["kind"], a["status"]) for a in archives] == [("video", "ok")], archives
    assert archives[0]["n_images"] == line.n_frames
    assert Path(archives[0]["path"]) == home / "archives" / line.inspection.name
    assert not list(landing.iterdir())
