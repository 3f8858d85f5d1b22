"""Builders of small datasets on disk for tests, from the real data in shared/, and
`steelsight serve` started on a home for the HTTP tests."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent


def copy_severstal(shared_data: Path, dest: Path) -> Path:
    """A writable copy of the real Severstal sample."""
    shutil.copytree(shared_data / "severstal-sample", dest)
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    dest.chmod(0o755)
    return dest


def severstal_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "train.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def to_old_layout(folder: Path) -> None:
    """Rewrite train.csv in the competition's first layout: four rows per image."""
    masks = {(r["ImageId"], r["ClassId"]): r["EncodedPixels"] for r in severstal_rows(folder)}
    images = sorted(p.name for p in (folder / "train_images").iterdir())
    rows = [
        [f"{image}_{c}", masks.get((image, str(c)), "")] for image in images for c in range(1, 5)
    ]
    write_csv(folder / "train.csv", ["ImageId_ClassId", "EncodedPixels"], rows)


def copy_neu_subset(shared_data: Path, dest: Path, per_class: int = 5) -> Path:
    """A small NEU-DET folder: the first images of each class with their annotations."""
    (dest / "images").mkdir(parents=True)
    (dest / "annotations").mkdir()
    source = shared_data / "neu-det"
    prefixes = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
    for prefix in prefixes:
        for n in range(1, per_class + 1):
            stem = f"{prefix}_{n}"
            shutil.copyfile(source / "images" / f"{stem}.jpg", dest / "images" / f"{stem}.jpg")
            shutil.copyfile(
                source / "annotations" / f"{stem}.xml", dest / "annotations" / f"{stem}.xml"
            )
    return dest


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def deliver(archives: list[Path], landing: Path) -> None:
    """As a recorder does: each archive appears in the landing folder whole (a rename)."""
    landing.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        archive.rename(landing / archive.name)


LINE_SHEETS = 6


@dataclass(frozen=True)
class MainJob:
    """A home where the main job ran: demo-size champions trained on a 30-sheet twin
    line, then a 6-sheet line (and a cut recording) ingested from the landing folder and
    inspected on a LocalCluster."""

    root: Path
    home: Path
    line: Path  # the line's inspection archive, as it arrived in the landing folder
    ingested: list[dict]
    inspected: list[dict]
    trained: dict[str, dict]  # kind -> what its retrain run returned


@dataclass
class Server:
    url: str
    home: Path
    log: Path
    process: subprocess.Popen
    key: str | None = None  # the key clients send unless told otherwise

    def client(self, key: str | None = "") -> httpx.Client:
        """An HTTP client sending ``key`` (default: the server's ``key``; None: no key)."""
        key = self.key if key == "" else key
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    home: Path, log: Path, extra_env: dict[str, str], args: list[str], key: str | None = None
) -> Server:
    """`steelsight serve` on a free loopback port with the home's models and warehouse,
    once /readyz says ready."""
    port = free_port()
    env = {
        **os.environ,
        "STEELSIGHT_HOME": str(home),
        "STEELSIGHT_DEVICE": "cpu",
        "STEELSIGHT_SERVE_POLL_S": "1",
        **extra_env,
    }
    env.pop("STEELSIGHT_MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        [str(BIN / "steelsight"), "serve", "--port", str(port), *args],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(f"http://127.0.0.1:{port}", home, log, process, key)
    deadline = time.monotonic() + 240
    with server.client(key=None) as http:
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-4000:]
            try:
                if http.get("/readyz").status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.5)
    stop_server(server)
    pytest.fail(f"the server did not become ready: {log.read_text()[-4000:]}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=30)


def start_logged(args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """A command in a session of its own (``stop_group`` ends it and its children), its
    output in ``log``."""
    return subprocess.Popen(
        args, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, **kwargs
    )


def stop_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def start_dask_scheduler(folder: Path) -> tuple[subprocess.Popen, Path]:
    """`dask scheduler` on loopback, its log in ``folder``: the process and its
    scheduler file, once written (within a minute)."""
    scheduler_file = folder / "scheduler.json"
    process = start_logged(
        [
            str(BIN / "dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        folder / "scheduler.log",
    )
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return process, scheduler_file


def start_dask_worker(
    scheduler_file: Path, name: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`dask worker` ``name`` (one process under its nanny, one thread) for the scheduler
    of ``scheduler_file``, its log beside that file."""
    return start_logged(
        [
            str(BIN / "dask"),
            "worker",
            "--scheduler-file",
            str(scheduler_file),
            "--nthreads",
            "1",
            "--nworkers",
            "1",
            "--no-dashboard",
            "--name",
            name,
        ],
        scheduler_file.parent / f"{name}.log",
        env=env,
    )
