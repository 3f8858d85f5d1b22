"""The GPU check: what the data path of one inspection worker reaches on this machine.

    bash bench/gpu_check.sh OUT [--device auto|cpu|cuda] [--size gpu] [--sheets 40]
        [--segmenter BUNDLE] [--rounds 3] [--batch 64] [--threads N] [--processes N]
        [--compile]

Needs only numpy, OpenCV, torch, torchvision and pydantic (what the H200 machine has,
`bench/gpu_check.sh` installs the rest from wheels it brings): no MLflow, Dask, DuckDB or
Prefect. It renders a twin recording (FFV1 video of 1600x256 frames) and prints, and
writes into OUT (``gpu_check.md``, ``gpu_check.json``):

* decode rates: the FFV1 video by 1 and by ``--threads`` readers (each a thread with
  its own range of the video; FFmpeg's decoder adds threads of its own), then by 1,
  ``--threads`` and as many readers as the machine has cores with one FFmpeg thread
  each, JPEG frames
  with OpenCV on one CPU thread and, on CUDA, with nvJPEG
  (``torchvision.io.decode_jpeg(..., device="cuda")``) in batches;
* the segmenter (the worker's ``Segmenter.predict`` with regions and RLE): model-only
  on frames already in memory (on a GPU also on frames already there, as uint8, with
  the gates of both inputs compared), and end to end, the video decoded ``--threads``
  ways a batch ahead, or JPEG frames decoded as a worker decodes a frame folder (on a
  GPU by nvJPEG, on a stream of its own, copied back for the host's work); their ratio
  to model-only; on CPU also the network as an ONNX graph on ONNX Runtime; with
  ``--compile`` also the network compiled as a worker with ``compile_networks`` on
  compiles it (``Segmenter.compiled``: fixed batches, a shorter last one padded), with
  the seconds it took to compile; each frame run between rows of the frames beside it
  as a worker runs them, where the segmenter has ``context_rows`` (the `default`
  recipe's 64; ``--context-rows`` sets them);
* the serving core's latency: single frames from 1 and 8 concurrent callers through
  the API's micro-batcher (``serving.batching``) into the segmenter, without HTTP and
  JPEG (FastAPI and MLflow are not on the H200 machine; `bench/serve_load.py` measures
  the whole API where they are);
* defect regions cut from masks (the twin's defects, blurred) on the host, as a CPU
  worker cuts them, and on the device, as a GPU worker does (``regions.cut``): what each
  mask the gate lets through costs after the network;
* identification, which is CPU work on any machine (OpenCV and numpy): the station's
  sheets registered, then the line's whole markings identified at the twin's own boxes
  (the H200 machine has no ultralytics to detect them), on 1 and ``--threads`` threads
  and in ``--processes`` processes (by default as many as the machine's cores, as a GPU
  worker starts them, ``identify_in``): how many cores a GPU worker's markings need;
* GPU utilisation during the end-to-end runs (``nvidia-smi``), and the network's FLOPs
  per frame against the H200's bf16 peak.

The segmenter is ``--segmenter`` (a folder ``Segmenter.save`` wrote, e.g. a registered
bundle) or, by default, the ``--size`` recipe's network with random weights and a gate
no frame passes: then the segmenter's rows time the network and the gate, not the
regions (the ``regions`` table times those).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

H200_BF16_FLOPS = 790e12  # dense bf16, the machine's datasheet figure
H200_BYTES_PER_S = 4.3e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", default="gpu", help="segmentation recipe: tiny, demo, ...")
    parser.add_argument("--segmenter", type=Path, help="a Segmenter.save folder")
    parser.add_argument("--sheets", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument(
        "--processes",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="identifying processes (default: this machine's cores, as a GPU worker starts)",
    )
    parser.add_argument("--requests", type=int, default=400, help="per serving row")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also the network compiled, as a worker with compile_networks on compiles it",
    )
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="cuDNN times its kernels per shape"
    )
    parser.add_argument(
        "--context-rows",
        type=int,
        help="rows of each neighbour a frame is run between (default: the recipe's)",
    )
    args = parser.parse_args()

    import cv2
    import numpy as np
    import torch

    from models.devices import resolve_device

    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    args.out.mkdir(parents=True, exist_ok=True)
    segmenter = _segmenter(args.segmenter, args.size, device, args.context_rows)
    tables: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        line = _recording(Path(tmp), args.sheets)
        video = next(line.inspection.glob("*.mkv"))
        n_frames = int(json.loads((line.inspection / "manifest.json").read_text())["frame_count"])
        frames = np.stack(list(_decode(video, 0, n_frames)))
        # the frames as a JPEG frame folder's files hold them
        jpegs = [
            cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for f in frames
        ]
        tables["decode"] = _decode_rates(video, frames, jpegs, device, args)
        tables["segmenter"] = _segmenter_rates(segmenter, video, frames, jpegs, args)
        warm = ("one frame, loading thread", "sizes 1-16, inference thread")
        tables["serving"] = [
            _serving_latency(segmenter, frames, concurrency, args.requests, how)
            for concurrency, how in ((8, warm[0]), (1, warm[1]), (8, warm[1]))
        ]
        tables["regions"] = _region_rates(segmenter, line, frames, args)
        tables["identification"] = _identification_rates(line, frames, args)
    tables["limits"] = _limits(segmenter, tables["segmenter"])

    header = (
        f"GPU check, {time.strftime('%Y-%m-%d %H:%M')}: device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f"; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch "
        f"{torch.__version__}; {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]} "
        f"({args.sheets} twin sheets); segmenter {segmenter.spec.encoder} at "
        f"{segmenter.preprocess.height}x{segmenter.preprocess.width} "
        f"({'trained: ' + str(args.segmenter) if args.segmenter else 'random weights'}); "
        f"batch {args.batch}; median of {args.rounds} rounds"
        + (
            f"; each frame run between {segmenter.context_rows} rows of its neighbours"
            if segmenter.context_rows
            else ""
        )
        + ("; cuDNN benchmark mode" if args.cudnn_benchmark else "")
    )
    text = "\n\n".join([header, *(_markdown(name, rows) for name, rows in tables.items())])
    print(text)
    (args.out / "gpu_check.md").write_text(text + "\n")
    (args.out / "gpu_check.json").write_text(
        json.dumps({"header": header, **tables}, indent=2) + "\n"
    )


def _segmenter(bundle: Path | None, size: str, device, context_rows: int | None):
    from core.postprocess import Thresholds
    from models.preprocess import Preprocess
    from models.segmentation.network import UNetResNet, UNetSpec
    from models.segmentation.segmenter import Segmenter
    from models.segmentation.train import recipe_for

    if bundle is not None:
        return Segmenter.load(bundle, device)
    recipe = recipe_for(size)
    context_rows = recipe.context_rows if context_rows is None else context_rows
    height, width = round(256 * recipe.scale), round(1600 * recipe.scale)
    # the recipe's network: its fine detail (two more input channels) and gate
    pre = Preprocess(height, width, 0.3, 0.2, recipe.detail_window)
    spec = UNetSpec(recipe.encoder, 4, in_channels=pre.channels, mask_evidence=recipe.mask_evidence)
    closed = Thresholds((1.01,) * 4, (0.5,) * 4, (0,) * 4)  # no frame passes the gate
    return Segmenter(
        UNetResNet(spec),
        spec,
        pre,
        dict(enumerate("1234")),
        closed,
        (256, 1600),
        device,
        context_rows,
    )


def _along(batches: Iterator) -> Iterator[tuple[object, dict]]:
    """Each batch of a recording's frames with what a worker gives the segmenter beside
    it (``Segmenter.predict``'s ``follows``, ``before``, ``after``): the last frame of the
    batch before and the first of the next, taken before the batch is run."""
    batches = iter(batches)
    before, following = None, next(batches, None)
    while following is not None:
        batch, following = following, next(batches, None)
        lined = {
            "follows": [before is not None] + [True] * (len(batch) - 1),
            "before": before,
            "after": None if following is None else following[0],
        }
        yield batch, lined
        before = batch[-1]


def _recording(folder: Path, sheets: int):
    from twin.config import TwinConfig
    from twin.recorder import simulate

    return simulate(TwinConfig(), sheets, seed=7, out=folder)


def _decode(video: Path, start: int, stop: int, threads: int | None = None) -> Iterator:
    """Grey frames ``start`` to ``stop`` of the video, FFmpeg on ``threads`` threads (None:
    its choice). Not ``tasks.archives.decode_frames``: that module brings DuckDB
    (warehouse.schema), which the H200 machine lacks."""
    import cv2

    from core.images import open_video

    capture = open_video(video, threads)
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    try:
        for _ in range(start, stop):
            ok, frame = capture.read()
            if not ok:
                return
            yield frame[:, :, 0] if frame.ndim == 3 else frame
    finally:
        capture.release()


def _decoded_ahead(
    video: Path, n: int, threads: int, batch: int, each: int | None = None
) -> Iterator:
    """Batches of the video in order, decoded by ``threads`` threads (each its own range,
    FFV1 frames are independent; FFmpeg on ``each`` threads within each, None: its
    choice) into a queue ahead of the caller."""
    import numpy as np

    bounds = np.linspace(0, n, threads + 1).astype(int)
    parts: list[queue.Queue] = [queue.Queue(maxsize=2 * batch) for _ in range(threads)]

    def work(i: int) -> None:
        for frame in _decode(video, int(bounds[i]), int(bounds[i + 1]), each):
            parts[i].put(frame)
        parts[i].put(None)

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    pending = []
    for part in parts:
        while (frame := part.get()) is not None:
            pending.append(frame)
            if len(pending) == batch:
                yield np.stack(pending)
                pending = []
    if pending:
        yield np.stack(pending)


def _median(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _decode_rates(video: Path, frames, jpegs: list[bytes], device, args) -> list[dict]:
    import cv2
    import numpy as np

    n = len(frames)
    rows = []
    for threads in sorted({1, args.threads}):
        seconds = _median(lambda t=threads: sum(1 for _ in _decoded_ahead(video, n, t, 64)), 2)
        rows.append(_rate(f"FFV1 video, {threads} reader(s)", n, seconds, threads))
    # FFmpeg's own threads stopped near 500 frames/s on 16 cores, more readers too (each
    # with FFmpeg's threads): readers of one thread each, as many as the cores
    for threads in sorted({1, args.threads, os.cpu_count() or 1}):
        seconds = _median(
            lambda t=threads: sum(1 for _ in _decoded_ahead(video, n, t, 64, each=1)), 2
        )
        what = f"FFV1 video, {threads} reader(s), one FFmpeg thread each"
        rows.append(_rate(what, n, seconds, threads))
    buffers = [np.frombuffer(j, np.uint8) for j in jpegs]
    seconds = _median(lambda: [cv2.imdecode(b, cv2.IMREAD_GRAYSCALE) for b in buffers], 2)
    rows.append(_rate("JPEG q95, OpenCV, 1 CPU thread", n, seconds, 1))
    if device.type == "cuda":
        import torch

        from models.decoding import decode_jpegs

        def nvjpeg() -> None:
            for start in range(0, n, args.batch):
                decode_jpegs(jpegs[start : start + args.batch], device)
            torch.cuda.synchronize(device)

        what = "JPEG q95, nvJPEG on the GPU, grey (models.decoding.decode_jpegs)"
        rows.append(_guarded(what, lambda: (nvjpeg(), _rate(what, n, _median(nvjpeg, 3), None))[1]))
    return rows


def _guarded(what: str, row: Callable[[], dict]) -> dict:
    """The row ``row()`` measures, or one saying why it could not be measured: one path
    failing on a lent GPU leaves the check's other tables standing."""
    try:
        return row()
    except Exception as error:  # reported in the table; the check goes on
        print(f"gpu_check: {what} failed: {error!r}", file=sys.stderr)
        return {"path": what, "error": f"{type(error).__name__}: {error}"[:300]}


def _rate(what: str, n: int, seconds: float, threads: int | None) -> dict:
    row = {"path": what, "frames": n, "seconds": round(seconds, 3), "frames/s": n / seconds}
    if threads:
        row["frames/s per reader"] = n / seconds / threads
    return row


def _jpeg_batches_ahead(
    jpegs: list[bytes], batch: int, device, ahead: bool = True
) -> Iterator[tuple]:
    """Batches of JPEG frames as an inspection worker reads a frame folder
    (``tasks.inspection._batches``): decoded together where the segmenter runs (nvJPEG
    on a GPU, on a CUDA stream of its own), copied back for the host's work, one batch
    ahead in a thread (``ahead``; else in the caller's thread, for comparison). Yields
    (host frames, frames on the device)."""
    import torch

    from models.decoding import decode_jpegs

    def batches() -> Iterator[tuple]:
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        for start in range(0, len(jpegs), batch):
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                on_device = decode_jpegs(jpegs[start : start + batch], device)
                host = on_device.cpu().numpy()
            yield host, on_device

    if not ahead:
        yield from batches()
        return
    pending: queue.Queue = queue.Queue(maxsize=1)

    def work() -> None:
        for item in batches():
            pending.put(item)
        pending.put(None)

    threading.Thread(target=work, daemon=True).start()
    while (item := pending.get()) is not None:
        yield item


def _segmenter_rates(segmenter, video: Path, frames, jpegs: list[bytes], args) -> list[dict]:
    import torch

    n = len(frames)
    on_gpu = segmenter.device.type == "cuda"

    def synced(run: Callable[[], object]) -> Callable[[], None]:
        def call() -> None:
            run()
            if on_gpu:
                torch.cuda.synchronize(segmenter.device)

        return call

    def model_only(seg=segmenter) -> None:
        batches = (frames[start : start + args.batch] for start in range(0, n, args.batch))
        for batch, lined in _along(batches):
            seg.predict(batch, args.batch, regions=True, **lined)

    def end_to_end() -> None:
        for batch, lined in _along(_decoded_ahead(video, n, args.threads, args.batch)):
            segmenter.predict(batch, args.batch, regions=True, **lined)

    def end_to_end_jpeg(ahead: bool = True, stream=None, seg=segmenter) -> None:
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            batches = _jpeg_batches_ahead(jpegs, args.batch, seg.device, ahead)
            for on_device, lined in _along(on_device for _host, on_device in batches):
                seg.predict(on_device, args.batch, regions=True, **lined)

    rows = []
    synced(model_only)()  # first calls allocate and pick kernels
    seconds = _median(synced(model_only), args.rounds)
    rows.append(_rate(f"model-only, torch on {segmenter.device}", n, seconds, None))
    if on_gpu:  # the network and its preprocessing alone: frames already there, as uint8
        rows.append(
            _guarded(
                "model-only, frames already on the GPU", lambda: _resident(segmenter, frames, args)
            )
        )
    decoder = "nvJPEG" if on_gpu else "libjpeg"
    for what, run in (
        (
            f"end to end, torch on {segmenter.device} (video decoded {args.threads} ways)",
            end_to_end,
        ),
        (f"end to end, torch on {segmenter.device} (JPEG frames by {decoder})", end_to_end_jpeg),
        *(
            [
                (
                    "end to end, JPEG frames by nvJPEG in the same thread (no overlap)",
                    lambda: end_to_end_jpeg(ahead=False),
                ),
                (
                    "end to end, JPEG frames by nvJPEG, the network on a stream of its own",
                    lambda: end_to_end_jpeg(stream=torch.cuda.Stream(segmenter.device)),
                ),
            ]
            if on_gpu
            else []
        ),
    ):

        def measured(what: str = what, run: Callable[[], None] = run) -> dict:
            with _gpu_utilisation(segmenter.device) as samples:
                seconds = _median(synced(run), args.rounds)
            row = _rate(what, n, seconds, None)
            row["of model-only"] = row["frames/s"] / rows[0]["frames/s"]
            if samples:
                row["GPU busy %"] = statistics.mean(samples)
            return row

        rows.append(_guarded(what, measured))
    if args.compile:  # as a worker with `compile_networks` on: a shorter last batch padded
        compiled: dict = {}

        def compiled_model_only(what: str) -> dict:
            started = time.perf_counter()
            compiled["seg"] = copy.copy(segmenter).compiled(args.batch)
            compile_s = time.perf_counter() - started
            run = synced(lambda: model_only(compiled["seg"]))
            row = _rate(what, n, _median(run, args.rounds), None)
            row["seconds to compile"] = round(compile_s, 1)
            return row

        what = f"model-only, torch on {segmenter.device}, network compiled"
        rows.append(_guarded(what, lambda: compiled_model_only(what)))
        if on_gpu and compiled:
            what = "model-only, frames already on the GPU, network compiled"
            rows.append(
                _guarded(what, lambda: {**_resident(compiled["seg"], frames, args), "path": what})
            )

            def compiled_end_to_end(what: str) -> dict:
                run = synced(lambda: end_to_end_jpeg(seg=compiled["seg"]))
                row = _rate(what, n, _median(run, args.rounds), None)
                row["of model-only"] = row["frames/s"] / rows[0]["frames/s"]
                return row

            what = "end to end, JPEG frames by nvJPEG, network compiled"
            rows.append(_guarded(what, lambda: compiled_end_to_end(what)))
    if segmenter.device.type == "cpu" and _has("onnxruntime"):
        with tempfile.TemporaryDirectory() as tmp:
            segmenter.run_onnx(segmenter.export_onnx(Path(tmp) / "segmenter.onnx"))
            model_only()
            seconds = _median(model_only, args.rounds)
            rows.append(_rate("model-only, ONNX Runtime on cpu", n, seconds, None))
            seconds = _median(end_to_end, args.rounds)
            rows.append(_rate("end to end, ONNX Runtime on cpu", n, seconds, None))
            rows[-1]["of model-only"] = rows[-1]["frames/s"] / rows[-2]["frames/s"]
            segmenter.onnx = None
    return rows


def _resident(segmenter, frames, args) -> dict:
    """Model-only on frames already on the GPU as uint8 (as nvJPEG leaves them), and the
    gates the same frames give from the host: the same network input either way."""
    import torch

    n = len(frames)
    resident = torch.from_numpy(frames).to(segmenter.device)

    def run() -> None:
        batches = (resident[start : start + args.batch] for start in range(0, n, args.batch))
        for batch, lined in _along(batches):
            segmenter.predict(batch, args.batch, regions=True, **lined)
        torch.cuda.synchronize(segmenter.device)

    run()
    row = _rate("model-only, frames already on the GPU", n, _median(run, args.rounds), None)
    first = slice(0, min(n, args.batch))
    from_host = segmenter.predict(frames[first], args.batch).gate
    from_device = segmenter.predict(resident[first], args.batch).gate
    row["gate max diff, host vs device frames"] = float(abs(from_host - from_device).max())
    return row


def _serving_latency(segmenter, frames, concurrency: int, requests: int, warm: str) -> dict:
    """Latency of one frame from ``concurrency`` callers at once, through the API's
    micro-batcher (batches of up to 16, 2 ms to gather) into ``Segmenter.predict``, each
    row with a batcher (and inference thread) of its own, warmed up as ``warm`` says:
    "one frame, loading thread" (the API before 2026-12-04: its inference thread cold)
    or "sizes 1-16, inference thread" (``serving.inference.warm_up_batches`` on a GPU)."""
    import asyncio

    import numpy as np

    from serving.batching import MicroBatcher

    def run(batch: list) -> list:
        found = segmenter.predict(np.stack(batch), len(batch), regions=True).defects
        return [[d for d in found if d.frame == i] for i in range(len(batch))]

    def warm_every_size() -> None:
        for n in range(1, 17):
            run([frames[0]] * n)

    async def load() -> tuple[list[float], float]:
        batcher = MicroBatcher(run, max_batch=16, max_wait_s=0.002, capacity=1024)
        await batcher.start()
        latencies: list[float] = []
        per_caller = max(1, requests // concurrency)

        async def caller(k: int) -> None:
            for r in range(per_caller):
                started = time.perf_counter()
                await batcher.submit([frames[(k * per_caller + r) % len(frames)]])
                latencies.append(time.perf_counter() - started)

        if warm.endswith("inference thread"):
            await batcher.on_inference_thread(warm_every_size)
        else:
            run([frames[0]])
        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        seconds = time.perf_counter() - started
        await batcher.stop()
        return latencies, seconds

    latencies, seconds = asyncio.run(load())
    ms = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    slowest = np.argsort(latencies)[-3:][::-1]
    return {
        "concurrency": concurrency,
        "warmed": warm,
        "requests": len(latencies),
        "p50 ms": float(ms[0]),
        "p95 ms": float(ms[1]),
        "p99 ms": float(ms[2]),
        "requests/s": len(latencies) / seconds,
        "slowest (ms, answered as n-th)": ", ".join(
            f"{latencies[i] * 1000:.0f} ({i + 1})" for i in slowest
        ),
    }


class _gpu_utilisation:
    """``nvidia-smi``'s GPU utilisation (%) every 0.2 s while the block runs; no
    samples on a CPU or without nvidia-smi."""

    def __init__(self, device) -> None:
        self.on = device.type == "cuda" and shutil.which("nvidia-smi") is not None
        self.samples: list[float] = []
        self.stop = threading.Event()

    def __enter__(self) -> list[float]:
        if self.on:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self.samples

    def _sample(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self.stop.wait(0.2):
            out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
            if out.strip():
                self.samples.append(float(out.split()[0]))

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.on:
            self.thread.join(timeout=10)


def _region_rates(segmenter, line, frames, args) -> list[dict]:
    """Defect regions cut from full-resolution masks, what ``Segmenter.predict`` does
    after the network for each mask the gate lets through: on the host (the masks
    brought there, OpenCV: a CPU worker's path) and where the masks are (torch,
    ``models.segmentation.regions``: a GPU worker's path, only the regions brought
    back), with the frames there as nvJPEG leaves them. The masks are the twin's own
    defects blurred into probabilities (random weights draw none); the thresholds stand
    in for a trained model's, with the `default` recipe's contrast cut on scratches. The
    device's regions are checked against the host's."""
    import csv

    import cv2
    import numpy as np
    import torch

    from core.postprocess import Thresholds
    from core.rle import rle_decode

    shape = frames.shape[1:]
    masks = {}
    with (line.inspection / "ground_truth" / "defects.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            at = (int(row["ImageId"].rsplit("_", 1)[1]), int(row["ClassId"]) - 1)
            truth = rle_decode(row["EncodedPixels"], shape).astype(np.float32)
            masks[at] = cv2.GaussianBlur(truth, (0, 0), 2.0)
    cutting = copy.copy(segmenter)
    cutting.thresholds = Thresholds(
        (0.0,) * 4, (0.5,) * 4, (16, 16, 128, 512), (0, 0, 20, 0), (0, 0, 6, 0)
    )
    device = segmenter.device
    held = torch.from_numpy(frames).to(device)
    batches = []
    for start in range(0, len(frames), args.batch):
        kept = [[i - start, j] for i, j in sorted(masks) if start <= i < start + args.batch]
        if kept:
            full = torch.from_numpy(np.stack([masks[start + i, j] for i, j in kept])).to(device)
            batches.append((start, kept, full))

    def cut(on_device: bool) -> list:
        found: list = []
        for start, kept, full in batches:
            score = np.zeros((args.batch, 4), np.float32)
            if on_device:
                batch = held[start : start + args.batch]
                cutting.regions_on_device = True
                if not cutting._cut_on_device(batch, start, kept, full, found, {}, score):
                    return found
            else:
                batch = frames[start : start + args.batch]
                cutting._cut_on_host(batch, start, kept, full, True, found, {}, score)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return found

    n, count = len(frames), sum(len(kept) for _, kept, _ in batches)
    host: list = []

    def measured(what: str, on_device: bool) -> dict:
        found = cut(on_device)  # warm, and the regions to compare
        if not on_device:
            host[:] = [(d.frame, d.class_index, d.rle) for d in found]
        if on_device and not cutting.regions_on_device:
            raise RuntimeError("the cut on the device failed: its warning above says why")
        row = _rate(what, n, _median(lambda: cut(on_device), args.rounds), None)
        row["masks"], row["regions"] = count, len(found)
        row["same regions as the host's"] = [(d.frame, d.class_index, d.rle) for d in found] == host
        return row

    rows = []
    for where, on_device in (("on the host (OpenCV)", False), (f"on {device} (torch)", True)):
        what = f"regions cut {where}"
        rows.append(_guarded(what, lambda w=what, d=on_device: measured(w, d)))
    return rows


def _identification_rates(line, frames, args) -> list[dict]:
    """Identification, which runs on the CPU whatever the device (OpenCV and numpy): the
    station's sheets registered from their pictures, then every whole marking of the
    line's frames identified, each seen with the frames beside it, on 1 and on
    ``--threads`` threads. The twin's own boxes stand in for the detector's (the H200
    machine has no ultralytics); right: named as the twin's sheet. The twin's files are
    read here, not by ``tasks.identity``'s readers: those bring DuckDB, which the H200
    machine lacks (as ``_decode`` says of ``tasks.archives``)."""
    import csv
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    import numpy as np

    from models.identity import pipeline, surface

    def rows_of(path: Path) -> list[dict]:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    def box(row: dict) -> list[float]:
        return [float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max")]

    station = rows_of(line.station / "ground_truth" / "markings.csv")
    pictures = [
        cv2.imread(str(line.station / "frames" / f"{r['frame_id']}.jpg"), cv2.IMREAD_GRAYSCALE)
        for r in station
    ]
    started = time.perf_counter()
    surfaces = [pipeline.references(p, box(r)) for p, r in zip(pictures, station, strict=True)]
    register_s = time.perf_counter() - started
    ids = [r["sheet_id"] for r, found in zip(station, surfaces, strict=True) for _ in found]
    flat = [s for found in surfaces for s in found]
    index = pipeline.SurfaceIndex(
        ids,
        np.stack([s.descriptor for s in flat]),
        np.stack([s.template for s in flat]).astype(np.float16),
    )
    numbers = {
        r["frame_id"]: int(r["frame_number"]) for r in rows_of(line.inspection / "frame_index.csv")
    }
    marks = [
        (numbers[r["frame_id"]], box(r), r["sheet_id"])
        for r in rows_of(line.inspection / "ground_truth" / "markings.csv")
        if float(r["visible"]) >= 1.0 and numbers.get(r["frame_id"], len(frames)) < len(frames)
    ]

    def identify(mark: tuple) -> bool:
        i, where, sheet = mark
        before = frames[i - 1] if i > 0 else None
        after = frames[i + 1] if i + 1 < len(frames) else None
        verdict = pipeline.identify(
            frames[i], where, index, surface.VERIFY_THRESHOLD, before, after
        )
        return verdict.sheet_id == sheet

    rows = [
        {
            "path": f"register {len(station)} station pictures, 1 thread",
            "items": len(station),
            "seconds": round(register_s, 3),
            "items/s": len(station) / register_s,
        }
    ]
    right: dict[int, int] = {}

    def run(threads: int) -> None:
        with ThreadPoolExecutor(threads) as pool:
            right[threads] = sum(pool.map(identify, marks))

    for threads in sorted({1, args.threads}):
        seconds = _median(lambda t=threads: run(t), args.rounds)
        rows.append(
            {
                "path": f"identify whole markings, {threads} thread(s)",
                "items": len(marks),
                "seconds": round(seconds, 3),
                "items/s": len(marks) / seconds,
                "right": right[threads],
            }
        )
    # the same markings in ``--processes`` processes, as a GPU worker identifies them
    # (``identify_in``: ``pipeline.IdentifyingProcesses``), each marking its own picture
    none = np.zeros(1, bool)
    pictures = [
        pipeline.PictureMarkings(
            frames[i],
            frames[i - 1] if i > 0 else None,
            None,
            frames[i + 1] if i + 1 < len(frames) else None,
            None,
            np.array([[*where, 1.0]], np.float32),
            none,
            none,
            none,
            None,
        )
        for i, where, _ in marks
    ]
    started = time.perf_counter()
    processes = pipeline.IdentifyingProcesses(index, args.processes)
    try:
        processes.verdicts(pictures[: args.processes], index, surface.VERIFY_THRESHOLD)  # started
        start_s = time.perf_counter() - started
        named: list[str] = []

        def apart() -> None:
            found = processes.verdicts(pictures, index, surface.VERIFY_THRESHOLD)
            named[:] = [v.sheet_id for (v,) in found]

        seconds = _median(apart, args.rounds)
    finally:
        processes.close()
    rows.append(
        {
            "path": f"identify whole markings, {args.processes} processes "
            f"(started in {start_s:.1f} s)",
            "items": len(marks),
            "seconds": round(seconds, 3),
            "items/s": len(marks) / seconds,
            "right": sum(n == sheet for n, (*_, sheet) in zip(named, marks, strict=True)),
        }
    )
    return rows


def _limits(segmenter, rows: list[dict]) -> list[dict]:
    """The network's work per frame and what the measured rates reach of the H200's
    limits: FLOPs (torch's counter: 2 per multiply-add of convolutions and matrix
    products) against 790 TFLOP/s bf16, and the bytes its layers write and read again
    (every leaf layer's output once each way, bf16; weights and caches left out) against
    4.3 TB/s. The lower of the two rates is the frame rate no implementation passes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    pre = segmenter.preprocess
    x = torch.zeros(1, pre.channels, pre.height, pre.width)
    net = segmenter.net.float().cpu()
    written = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: written.append(out.numel()))
        for m in net.modules()
        if not list(m.children())
    ]
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(x)
    for hook in hooks:
        hook.remove()
    segmenter.net.to(segmenter.device)
    flops = counter.get_total_flops()
    moved = 2 * 2 * sum(written)  # bf16, written once and read once
    at_peak = min(H200_BF16_FLOPS / flops, H200_BYTES_PER_S / moved)
    out = []
    for row in (r for r in rows if "frames/s" in r):  # not the rows that failed
        out.append(
            {
                "path": row["path"],
                "GFLOP per frame": flops / 1e9,
                "MB moved per frame": moved / 1e6,
                "achieved TFLOP/s": flops * row["frames/s"] / 1e12,
                "H200 limit, frames/s": at_peak,
                "of that limit": row["frames/s"] / at_peak,
                "GPU busy %": row.get("GPU busy %"),
            }
        )
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _markdown(name: str, rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = [f"### {name}", "", "| " + " | ".join(columns) + " |"]
    lines.append("| " + " | ".join("---" for _ in columns) + " |")
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
