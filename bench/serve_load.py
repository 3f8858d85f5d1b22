"""Serving latency under load: p50/p95/p99 and requests/s at several concurrencies.

    python bench/serve_load.py --home .steelsight [--requests 120] [--rounds 3]
                               [--concurrency 1 8 32] [--device auto]

Starts `steelsight serve` on loopback in its own process (the champions of ``--home``,
no API keys), and from this process sends a fixed number of requests, each one
1600x256 JPEG frame of a twin recording to POST /v1/inspect, keeping ``concurrency``
requests in flight. Each configuration is measured ``--rounds`` times; the table shows
the median round.

Two servers are compared in the same run:

* micro-batched: concurrent frames share model calls (serve_batch_frames 16), as served;
* one frame per call: serve_batch_frames 1, the baseline micro-batching must beat.

A third line, model only, is the in-process time of one frame through the models with
no HTTP, queue or decoding: what a request cannot go below.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _frame(home: Path) -> np.ndarray:
    """A frame of the line with a drawn defect (rendered by the twin when the home has
    no recording)."""
    import cv2

    videos = sorted((home / "archives").glob("*/video.mkv"))
    if not videos:
        from twin.config import TwinConfig
        from twin.recorder import simulate

        line = simulate(TwinConfig(), 2, seed=5, out=Path(tempfile.mkdtemp()))
        videos = [line.inspection / "video.mkv"]
    capture = cv2.VideoCapture(str(videos[0]))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 6)
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise SystemExit(f"cannot read a frame from {videos[0]}")
    return frame[:, :, 0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(home: Path, batch: int, device: str, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    env = {
        **os.environ,
        "STEELSIGHT_HOME": str(home),
        "STEELSIGHT_DEVICE": device,
        "STEELSIGHT_SERVE_BATCH_FRAMES": str(batch),
        "STEELSIGHT_SERVE_QUEUE_FRAMES": "256",
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "steelsight"), "serve", "--allow-no-keys",
         "--port", str(port)],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server stopped: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit(f"the server did not become ready: {log.read_text()[-3000:]}")


async def _load(url: str, body: bytes, requests: int, concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def worker() -> None:
            nonlocal failures
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                response = await http.post(
                    "/v1/inspect", content=body, headers={"Content-Type": "image/jpeg"}
                )
                latencies.append(time.perf_counter() - started)
                failures += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "rps": requests / seconds,
        "failed": failures,
    }


def _model_only(home: Path, frame: np.ndarray, device: str, rounds: int) -> float:
    """Median ms of one frame through the served models in this process."""
    os.environ["STEELSIGHT_HOME"] = str(home)
    os.environ["STEELSIGHT_DEVICE"] = device
    from core.runtime import configure_environment
    from core.settings import get_settings

    settings = get_settings()
    configure_environment(settings, inference=True)
    from serving.champions import Champions
    from serving.inference import FrameJob, inspect_frames
    from serving.reader import WarehouseReader
    from warehouse.store import Warehouse

    warehouse = Warehouse(settings.warehouse_dir)
    reader = WarehouseReader(warehouse)
    champions = Champions(settings, warehouse, reader.cursor)
    if not champions.refresh():
        raise SystemExit(f"no models to serve: {champions.problem}")
    served = champions.current
    times = []
    for _ in range(rounds * 10):
        started = time.perf_counter()
        inspect_frames(served, [FrameJob(frame)])
        times.append(time.perf_counter() - started)
    reader.close()
    return statistics.median(times[5:]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path(".steelsight"))
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    home = args.home.resolve()

    import cv2

    frame = _frame(home)
    body = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    model_ms = _model_only(home, frame, args.device, args.rounds)

    rows = []
    logs = Path(tempfile.mkdtemp(prefix="serve-load-"))
    for label, batch in (("micro-batched (16)", 16), ("one frame per call", 1)):
        process, url = _serve(home, batch, args.device, logs / f"serve-{batch}.log")
        try:
            asyncio.run(_load(url, body, 10, 1))  # warm the connection and the models
            for concurrency in args.concurrency:
                runs = [
                    asyncio.run(_load(url, body, args.requests, concurrency))
                    for _ in range(args.rounds)
                ]
                median = sorted(runs, key=lambda r: r["p50"])[len(runs) // 2]
                median["failed"] = sum(r["failed"] for r in runs)
                rows.append((label, concurrency, median))
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"\n{platform.node()}: {os.cpu_count()} CPUs, GPU {gpu}, device {args.device}; "
        f"{len(body)} B JPEG of {frame.shape[1]}x{frame.shape[0]}; {args.requests} requests "
        f"per round, median of {args.rounds} rounds\n"
    )
    print("| server | concurrency | p50 ms | p95 ms | p99 ms | requests/s | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, concurrency, r in rows:
        print(
            f"| {label} | {concurrency} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} "
            f"| {r['rps']:.1f} | {r['failed']} |"
        )
    print(f"| model only, in process | 1 | {model_ms:.1f} | | | {1000 / model_ms:.1f} | |")


if __name__ == "__main__":
    main()
