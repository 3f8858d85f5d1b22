"""Inspecting a recording: the work a Dask worker does on a range of frames, and how the
flow turns every range's results into the frames, defects and sheets tables.

Data flows one way:

    Chunk (archive path, frame range, model versions)          sent to a worker
      → decode → profiles, defect regions, marking boxes + verdicts   (ChunkResult)
    all ChunkResults of an archive                             back in the flow
      → track sheets → each sheet's identity from its markings' verdicts
      → place defects on sheets → grade → frames / defects / sheets rows (Tables)

Workers get paths and frame ranges, never pixels; each loads the models once and
keeps them for the next chunk; frames are decoded a batch ahead of the models. The
registered sheets (``Registry``) are sent to each worker once per run; a worker
identifies each marking it finds, seen with its frame's neighbours on the line.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import cv2
import numpy as np
import pyarrow as pa

from core.settings import Settings
from core.tracking import EDGE_BLOCK, MIN_CONTRAST, TrackedSheet, frame_profile, track_sheets
from tasks.archives import (
    ORIGIN,
    FrameError,
    Problem,
    archive_row,
    changed_since_ingest,
    check_archive,
    decode_frames,
    decode_frames_apart,
    decode_frames_on,
    error_rows,
    follow_on,
    origin,
)
from warehouse.schema import TABLES
from warehouse.store import Warehouse

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_SHEET_MM = 500.0  # a shorter run of steel is not a sheet
MIN_GAP_MM = 50.0  # a shorter run of table inside a sheet does not split it


@dataclass(frozen=True)
class ModelRefs:
    """Which registered models inspect: their store and versions (marking and imprint
    are None when no identity model is registered)."""

    tracking_uri: str
    segmentation: str
    marking: str | None = None
    imprint: str | None = None

    @classmethod
    def of(cls, tracking_uri: str, versions: dict[str, int]) -> ModelRefs:
        """From a champion set (models.registry.champion_set)."""
        named = {k: str(v) for k, v in versions.items()}
        return cls(tracking_uri, named["segmentation"], named.get("marking"), named.get("imprint"))

    def versions(self) -> dict[str, str]:
        named = {
            "segmentation": self.segmentation,
            "marking": self.marking,
            "imprint": self.imprint,
        }
        return {k: v for k, v in named.items() if v is not None}

    def key(self) -> str:
        """What the archives table records as ``inspected_with``."""
        return json.dumps(self.versions(), sort_keys=True)

    @property
    def identifies(self) -> bool:
        return self.marking is not None and self.imprint is not None


@dataclass(frozen=True)
class Chunk:
    """A range of one recording's frames, as a worker is sent it."""

    archive: str
    video: str | None  # the video file, or
    frames_dir: str | None  # the folder of <frame_id>.jpg
    start: int  # position of the first frame in the frame index (= in the video)
    frame_ids: tuple[str, ...]
    models: ModelRefs
    batch: int = 16
    device: str = "auto"
    # the neighbours of the range on the line (None: none, or a frame was dropped there),
    # and per frame of the range whether it directly follows the one before it
    before_id: str | None = None
    after_id: str | None = None
    follows: tuple[bool, ...] = ()

    def neighbour(self, frame_id: str | None) -> np.ndarray | None:
        """A frame just outside the range, decoded on its own (None when there is none)."""
        if frame_id is None:
            return None
        position = (
            self.start - 1 if frame_id == self.before_id else self.start + len(self.frame_ids)
        )
        try:
            return next(iter(decode_frames(self.video, self.frames_dir, position, (frame_id,))))
        except (FrameError, StopIteration):  # identification goes on without it
            return None


@dataclass(frozen=True)
class Registry:
    """What identification needs on a worker: the registered sheets and the threshold."""

    index: object  # models.identity.pipeline.SurfaceIndex
    threshold: float


class Registries:
    """The registered sheets each recording is identified against: those the marking
    station pictured in its time window (``tasks.identify.registration_span``), sent to
    every worker once per distinct set of sheets. Called with a recording: a Dask
    future of its Registry, or None when no sheet is registered in its window."""

    def __init__(
        self,
        client,
        warehouse,
        imprint_version: str,
        threshold: float,
        hours: float,
        logger: logging.Logger,
    ) -> None:
        self.client, self.warehouse, self.logger = client, warehouse, logger
        self.imprint_version, self.threshold, self.hours = imprint_version, threshold, hours
        self._sent: tuple[tuple[str, ...], object] | None = None

    def __call__(self, rec: Recording):
        from tasks.identify import reference_index, reference_sheets, registration_span

        span = registration_span(rec.captured_at, self.hours)
        sheets = tuple(reference_sheets(self.warehouse, self.imprint_version, span))
        within = "" if span is None else f" (pictured {span[0]:%Y-%m-%d %H:%M} to {span[1]:%H:%M})"
        self.logger.info(
            "archive %s: %d registered sheets to identify against%s",
            rec.archive_id,
            len(sheets),
            within,
        )
        if not sheets:
            return None
        if self._sent is None or self._sent[0] != sheets:
            self._sent = None  # the last set's future released before the next is sent
            index = reference_index(self.warehouse, self.imprint_version, span=span)
            registry = Registry(index, self.threshold)
            self._sent = (tuple(index.sheet_ids), self.client.scatter(registry, broadcast=True))
        return self._sent[1]


@dataclass
class ChunkResult:
    start: int
    n_frames: int
    classes: list[str]
    contrast: np.ndarray  # (n, B) float32: edge contrast per block of rows
    edges: np.ndarray  # (n, B, 2) int16: sheet edge columns per block
    gate: np.ndarray  # (n, C) float32
    defects: list  # models.segmentation.segmenter.Defect, frame relative to the chunk
    boxes: np.ndarray  # (m, 6) float32: frame (relative), x_min, y_min, x_max, y_max, score
    verdicts: list  # models.identity.pipeline.Verdict per box (empty: not identified)
    decode_s: float = 0.0
    model_s: float = 0.0
    worker: str = ""
    level: np.ndarray | None = None  # (n,) float32: mean grey level of each frame
    # what ran each network on the worker, and where it identified markings, e.g.
    # "segmentation torch-compiled, marking onnx, imprint onnx, identification on 2 threads"
    engines: str = ""


# -- on the worker ---------------------------------------------------------------------------
_MODELS: dict[tuple, dict] = {}
_LOCK = threading.Lock()


def _worker_environment() -> None:
    """What steelsight's own processes set (core.runtime), for workers started
    by `dask worker` on another machine: Keras on torch, ultralytics offline, numpy's
    BLAS on one thread, torch's OpenMP threads asleep between regions (which acts only
    when torch is not loaded yet: set it in such a worker's environment)."""
    from core.runtime import INFERENCE_ENVIRONMENT

    for name, value in {
        **INFERENCE_ENVIRONMENT,
        "KERAS_BACKEND": "torch",
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }.items():
        os.environ.setdefault(name, value)
    from core.runtime import blas_on_one_thread

    blas_on_one_thread()


def worker_models(refs: ModelRefs, device: str, batch: int) -> dict:
    """The models of ``refs``, loaded once per worker process and kept for later chunks;
    the segmenter's network compiled for ``batch`` frames where ``compile_networks``
    says so."""
    key = (refs, device, batch)
    with _LOCK:
        if key not in _MODELS:
            _worker_environment()
            from core.settings import get_settings
            from models import registry

            settings = get_settings().model_copy(
                update={"mlflow_tracking_uri": refs.tracking_uri, "device": device}
            )
            started = time.perf_counter()
            loaded = {
                kind: registry.load_model(settings, kind, version)
                for kind, version in refs.versions().items()
            }
            log.info("loaded models %s in %.1f s", refs.key(), time.perf_counter() - started)
            _compile(loaded["segmentation"], settings.compile_networks, batch)
            _MODELS.clear()  # one set of models per worker: a new champion replaces the old
            _MODELS[key] = loaded
        return _MODELS[key]


def networks_on(models: dict) -> str:
    """What runs each of a worker's networks, e.g. "segmentation torch-compiled, marking
    onnx, imprint onnx"."""
    return ", ".join(f"{kind} {model.engine}" for kind, model in models.items())


def _compile(segmenter, setting: str, batch: int) -> None:
    """The segmenter's network compiled for ``batch`` frames, as ``compile_networks``
    says: auto on a GPU, on wherever it runs on torch (on the CPU, ONNX Runtime's graph
    is kept: as fast there, and already built). Where it cannot be compiled, auto runs
    it as it is and says why; on stops the worker's chunks with what to do."""
    on_gpu = segmenter.device.type == "cuda"
    if setting == "off" or (setting == "auto" and not on_gpu):
        return
    if segmenter.onnx is not None:
        log.info("segmenter on ONNX Runtime: not compiled (compile_networks %s)", setting)
        return
    started = time.perf_counter()
    try:
        segmenter.compiled(batch)
    except Exception as error:  # no C++ compiler on the CPU, a backend torch lacks
        problem = f"the segmenter's network cannot be compiled: {type(error).__name__}: {error}"
        if setting == "on":
            raise RuntimeError(
                f"{problem}; set STEELSIGHT_COMPILE_NETWORKS=auto or off for this worker"
            ) from None
        log.warning("%s; it runs uncompiled", problem)
        return
    log.info("segmenter compiled for %d frames in %.1f s", batch, time.perf_counter() - started)


# the worker's identifying processes (one set, for one index), and whether it was told
# it may not start them
_IDENTIFYING: dict[str, object] = {"processes": None, "daemonic": False}


def identifying_processes(index, setting: str, on_gpu: bool):
    """The worker's processes that identify markings against ``index``
    (``pipeline.IdentifyingProcesses``), where ``identify_in`` says so (auto: on a GPU
    worker), started once per index: a new set of registered sheets replaces them, and
    so do new ones where one of them died. None: the markings are identified on
    threads, also where this worker may not start processes (a daemonic Dask worker),
    which is logged once."""
    if setting == "threads" or (setting == "auto" and not on_gpu):
        return None
    import multiprocessing

    from models.devices import cpu_threads
    from models.identity.pipeline import IdentifyingProcesses

    with _LOCK:
        held = _IDENTIFYING["processes"]
        if held is not None and held.index is index and not held.broken:
            return held
        if multiprocessing.current_process().daemon:
            if not _IDENTIFYING["daemonic"]:
                log.warning(
                    "this worker is a daemonic process and cannot start identifying "
                    "processes: markings are identified on threads (start `dask worker` "
                    "with DASK_DISTRIBUTED__WORKER__DAEMON=False, or set "
                    "STEELSIGHT_IDENTIFY_IN=threads)"
                )
                _IDENTIFYING["daemonic"] = True
            return None
        if held is not None:
            held.close()
        held = _IDENTIFYING["processes"] = IdentifyingProcesses(index, cpu_threads())
        log.info("identifying in %d processes, %d sheets each", held.processes, index.sheets)
        return held


def decode_range(chunk: Chunk, readers: int = 1) -> Iterator[np.ndarray]:
    """The chunk's grey frames in order; FrameError names the frame that fails. A video's
    frames by ``readers`` readers at once, each on one FFmpeg thread (1: one reader,
    FFmpeg's threads)."""
    if chunk.video and readers > 1:
        return decode_frames_apart(chunk.video, chunk.start, chunk.frame_ids, readers)
    return decode_frames(chunk.video, chunk.frames_dir, chunk.start, chunk.frame_ids)


def video_readers(setting: int, device) -> int:
    """How many readers decode a video's range (``video_readers``): the setting, or for
    0 (auto) as many as the worker's cores on a GPU worker, one on the CPU, where the
    models already take the cores (and there one reader's FFmpeg threads decode as fast,
    docs/benchmarks.md, "Video read by several readers")."""
    from models.devices import cpu_threads

    if setting:
        return setting
    return cpu_threads() if device.type == "cuda" else 1


def _batches(
    chunk: Chunk, device, readers: int = 1
) -> Iterator[tuple[np.ndarray, torch.Tensor | None]]:
    """The chunk's frames in batches: the frames on the host, and the same frames on the
    segmenter's GPU or None. A JPEG frame folder inspected on a GPU is decoded there
    (nvJPEG), on a CUDA stream of its own, and copied back for the work done on the
    host (profiles, the detector's input, identification); the segmenter takes the
    frames already there. Anything else is decoded on the host, a video by ``readers``
    readers at once."""
    if device.type != "cuda" or chunk.video or not chunk.frames_dir:
        frames = decode_range(chunk, readers)
        while batch := list(itertools.islice(frames, chunk.batch)):
            yield np.stack(batch), None
        return
    import torch

    stream = torch.cuda.Stream(device)
    for first in range(0, len(chunk.frame_ids), chunk.batch):
        ids = chunk.frame_ids[first : first + chunk.batch]
        with torch.cuda.stream(stream):
            on_device = decode_frames_on(device, chunk.frames_dir, chunk.start + first, ids)
            host = on_device.cpu().numpy()  # waits for the stream: the batch is whole
        yield host, on_device


def _ahead(batches: Iterator[T]) -> Iterator[T]:
    """The batches, the next one decoded in a thread while the caller works on the
    current one (OpenCV and nvJPEG decode without holding the GIL)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield batch


def inspect_chunk(chunk: Chunk, registry: Registry | None = None) -> ChunkResult:
    """Everything the models and the tracker need from a range of frames; with a
    ``registry``, the verdict on each marking found."""
    from models.devices import cpu_threads
    from models.identity.pipeline import (
        NO_NEIGHBOUR,
        PassIdentifier,
        find_markings,
        kept,
        line_detections,
    )

    models = worker_models(chunk.models, chunk.device, chunk.batch)
    segmenter = models["segmentation"]
    classes = [segmenter.classes[k] for k in sorted(segmenter.classes)]
    contrast, edges, gates, defects, boxes, levels = [], [], [], [], [], []
    decode_s = model_s = 0.0
    done = 0
    follows = list(chunk.follows) or [True] * len(chunk.frame_ids)

    @functools.cache
    def frame_outside(frame_id: str | None) -> np.ndarray | None:
        return chunk.neighbour(frame_id)  # decoded once, for the segmenter and identification

    def outside(frame_id: str | None) -> Callable[[], tuple]:
        """A neighbour of the range and its markings (detected here: no range has them)."""

        def neighbour() -> tuple:
            frame = frame_outside(frame_id)
            if frame is None:
                return None, None
            return frame, line_detections(models["marking"], [frame], weak=True)[0]

        return neighbour

    from core.settings import get_settings

    engines = networks_on(models)
    readers = video_readers(get_settings().video_readers, segmenter.device) if chunk.video else 1
    if readers > 1:
        engines += f", video read by {readers} readers"
    identifier = None
    # The frame before the range and its markings, found here (the detector stays on
    # this thread) when markings are identified; ``above``: the last frame of the batch
    # before and its markings (the seam above each batch is looked at with them).
    edge: dict[str, tuple] = {"before": NO_NEIGHBOUR}
    above: tuple = NO_NEIGHBOUR
    if registry is not None and "marking" in models:
        # a batch's pictures identified on as many threads as the worker has cores, or in
        # as many processes (``identify_in``): the last batch of the range is identified
        # while nothing else runs
        on_gpu = segmenter.device.type == "cuda"
        processes = identifying_processes(registry.index, get_settings().identify_in, on_gpu)
        identifier = PassIdentifier(
            models["imprint"],
            registry.index,
            registry.threshold,
            lambda: edge["before"],
            workers=cpu_threads(),
            processes=processes,
        )
        engines += (
            f", identification in {processes.processes} processes"
            if processes is not None
            else f", identification on {cpu_threads()} threads"
        )
    pending: list[Future] = []  # each batch's verdicts, identified on their own thread
    clock = time.perf_counter()
    # Identification (describing and verifying each marking: OpenCV) runs on its own
    # thread, batch after batch in order, while this thread runs the models on the next
    # batch (docs/benchmarks.md, "Inspection throughput").
    # The segmenter runs each frame between the frames beside it where it has
    # ``context_rows``: the batch after is decoded before a batch is inspected.
    lined = bool(segmenter.context_rows)
    before = frame_outside(chunk.before_id) if lined and follows[0] else None
    batches = _ahead(_batches(chunk, segmenter.device, readers))
    following = next(batches, None)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="identify") as identifying:
        while following is not None:
            (batch, on_device), following = following, next(batches, None)
            now = time.perf_counter()
            decode_s += now - clock
            for frame in batch:
                c, e = frame_profile(frame)
                contrast.append(c)
                edges.append(e)
                levels.append(cv2.mean(frame)[0])
            after = None
            if lined and following is not None:
                after = following[0][0] if follows[done + len(batch)] else None
            elif lined:
                after = frame_outside(chunk.after_id)
            prediction = segmenter.predict(
                batch if on_device is None else on_device,
                batch_size=chunk.batch,
                regions=True,
                follows=follows[done : done + len(batch)] if lined else None,
                before=before,
                after=after,
            )
            before = batch[-1]
            gates.append(prediction.gate)
            defects += [_shift(d, done) for d in prediction.defects]
            if "marking" in models:
                frames_follow = follows[done : done + len(batch)]
                if identifier is not None and done == 0:
                    # the frame before the range: the seam above the first frame, and
                    # the other part of a marking that seam cuts
                    edge["before"] = outside(chunk.before_id)()
                marks = find_markings(
                    models["marking"],
                    models["imprint"],
                    list(batch),
                    chunk.batch,
                    weak=identifier is not None,
                    follows=frames_follow if identifier is not None else None,
                    previous=above if done else edge["before"],
                )
                above = (batch[-1], marks.per_picture[-1])
                boxes += [
                    [done + i, *box] for i, box in zip(marks.owners, marks.boxes, strict=True)
                ]
                if identifier is not None:
                    pending.append(
                        identifying.submit(identifier.add, list(batch), marks, frames_follow)
                    )
            done += len(batch)
            clock = time.perf_counter()
            model_s += clock - now
        verdicts = [v for verdicts_of in pending for v in verdicts_of.result()]
    if identifier is not None:
        verdicts += identifier.finish(outside(chunk.after_id))
        keep = kept([b[1:6] for b in boxes], verdicts, models["marking"].conf)
        boxes, verdicts = (
            [b for b, k in zip(boxes, keep, strict=True) if k],
            [v for v, k in zip(verdicts, keep, strict=True) if k],
        )
    model_s += time.perf_counter() - clock
    n_classes = len(classes)
    return ChunkResult(
        start=chunk.start,
        n_frames=done,
        classes=classes,
        contrast=np.stack(contrast) if contrast else np.zeros((0, 0), np.float32),
        edges=np.stack(edges) if edges else np.zeros((0, 0, 2), np.int16),
        gate=np.concatenate(gates) if gates else np.zeros((0, n_classes), np.float32),
        defects=defects,
        boxes=np.array(boxes, np.float32).reshape(-1, 6),
        verdicts=verdicts,
        level=np.array(levels, np.float32),
        decode_s=decode_s,
        model_s=model_s,
        worker=os.environ.get("DASK_WORKER_NAME", str(os.getpid())),
        engines=engines,
    )


def _shift(defect, offset: int):
    return replace(defect, frame=defect.frame + offset)


# -- in the flow ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recording:
    """What the flow knows of an ingested recording before inspecting it."""

    archive_id: str
    path: Path
    frame_ids: list[str]
    frame_numbers: list[int]
    captured_at: list[datetime | None]
    frame_step_lines: float
    mm_per_px: float
    frame_height: int
    frame_width: int
    video: str | None
    frames_dir: str | None
    warnings: tuple = ()  # tasks.archives.Problem: usable, but worth a row (dropped frames)
    origin: dict = field(default_factory=dict)  # line, camera and scale (archives table)

    def follows(self) -> list[bool]:
        """Per frame, whether it directly follows the frame before it on the line (the
        frames tile the line and none was dropped between them)."""
        return follow_on(self.frame_numbers, self.frame_step_lines, self.frame_height)

    def chunks(self, size: int, refs: ModelRefs, batch: int, device: str) -> list[Chunk]:
        follows, ids = self.follows(), self.frame_ids
        out = []
        for start in range(0, len(ids), size):
            end = min(start + size, len(ids))
            out.append(
                Chunk(
                    str(self.path),
                    self.video,
                    self.frames_dir,
                    start,
                    tuple(ids[start:end]),
                    refs,
                    batch,
                    device,
                    before_id=ids[start - 1] if follows[start] else None,
                    after_id=ids[end] if end < len(ids) and follows[end] else None,
                    follows=tuple(follows[start:end]),
                )
            )
        return out


def recording(archive_id: str, path: Path) -> Recording:
    """The recording's frame index and geometry, from its validated manifest."""
    checked = check_archive(path, decode=False)
    if not checked.ok or checked.manifest is None:
        raise ValueError(f"{path}: {'; '.join(p.reason for p in checked.fatal)}")
    m = checked.manifest
    return Recording(
        archive_id,
        path,
        [r["frame_id"] for r in checked.frames],
        [int(r["frame_number"]) for r in checked.frames],
        [
            datetime.fromisoformat(r["timestamp"]) if r.get("timestamp") else None
            for r in checked.frames
        ],
        m.frame_step_lines,
        m.mm_per_px,
        m.frame_height,
        m.frame_width,
        str(path / m.files.video) if m.files.video else None,
        str(path / m.files.frames) if m.files.frames else None,
        tuple(checked.problems),
        origin(m),
    )


@dataclass
class Identity:
    sheet_id: str
    nearest: str | None
    similarity: float | None
    agreeing: int | None = None  # markings verified as sheet_id (None: nothing identified)


@dataclass
class Inspected:
    """The three tables of one inspection, plus what the flow reports about it."""

    frames: pa.Table
    defects: pa.Table
    sheets: pa.Table
    n_frames: int
    decode_s: float
    model_s: float
    workers: set[str] = field(default_factory=set)
    engines: set[str] = field(default_factory=set)  # ``ChunkResult.engines`` of its ranges


def assemble(
    rec: Recording,
    results: list[ChunkResult],
    refs: ModelRefs,
    grades: list,
    import_id: str,
) -> Inspected:
    """Track sheets, identify them, place defects on them and grade them: the steps
    below, each a pure function of what the one before returns."""
    line = stitch(rec, results)
    sheets = track_sheets(
        line.first_lines,
        line.contrast,
        line.edges,
        min_length=round(MIN_SHEET_MM / rec.mm_per_px),
        min_gap=round(MIN_GAP_MM / rec.mm_per_px),
    )
    on_line = _SheetsByLine(sheets)
    marks = identify_sheets(sheets, on_line, line, results)
    ids = {"archive_id": rec.archive_id, "import_id": import_id}
    defects = place_defects(rec, line, results, on_line, marks.identities, refs.segmentation)
    frames, frames_of = frame_rows(rec, line, on_line, defects, marks, refs.key())
    sheet_table = sheet_rows(rec, sheets, defects, marks, frames_of, grades, refs.key())
    return Inspected(
        frames=pa.Table.from_pylist(_with(ids, frames), TABLES["frames"].schema),
        defects=pa.Table.from_pylist(_with(ids, defects.rows), TABLES["defects"].schema),
        sheets=pa.Table.from_pylist(_with(ids, sheet_table), TABLES["sheets"].schema),
        n_frames=len(line.positions),
        decode_s=sum(r.decode_s for r in results),
        model_s=sum(r.model_s for r in results),
        workers={r.worker for r in results},
        engines={r.engines for r in results},
    )


def _with(ids: dict, rows: list[dict]) -> list[dict]:
    return [{**ids, **row} for row in rows]


@dataclass
class Stitched:
    """Every range's results laid end to end in recording order."""

    positions: list[int]  # index in the recording of each inspected frame
    first_lines: np.ndarray  # (n,) the recording line of each frame's first row
    contrast: np.ndarray  # (n, B)
    edges: np.ndarray  # (n, B, 2)
    gate: np.ndarray  # (n, C)
    classes: list[str]
    level: np.ndarray  # (n,) mean grey level; NaN where a range did not say

    @property
    def line_of(self) -> dict[int, int]:
        return dict(zip(self.positions, self.first_lines.tolist(), strict=True))


def stitch(rec: Recording, results: list[ChunkResult]) -> Stitched:
    results = sorted(results, key=lambda r: r.start)
    positions = [i for r in results for i in range(r.start, r.start + r.n_frames)]
    return Stitched(
        positions,
        np.array([round(rec.frame_numbers[i] * rec.frame_step_lines) for i in positions]),
        np.concatenate([r.contrast for r in results]) if results else np.zeros((0, 1)),
        np.concatenate([r.edges for r in results]) if results else np.zeros((0, 1, 2)),
        np.concatenate([r.gate for r in results]) if results else np.zeros((0, 0)),
        results[0].classes if results else [],
        np.concatenate([_levels(r) for r in results]) if results else np.zeros(0),
    )


def _levels(result: ChunkResult) -> np.ndarray:
    if result.level is None or len(result.level) != result.n_frames:
        return np.full(result.n_frames, np.nan, np.float32)
    return result.level


@dataclass
class Markings:
    """What the markings say: each sheet's identity, markings per sheet and per frame."""

    identities: dict[int, Identity]  # sheet index → identity
    on_sheet: dict[int, int]  # sheet index → markings found on it
    per_frame: dict[int, int]  # frame position → markings found in it


def identify_sheets(
    sheets: list[TrackedSheet],
    on_line: _SheetsByLine,
    line: Stitched,
    results: list[ChunkResult],
) -> Markings:
    """One identity per sheet from the verdicts on all the markings found on it (its
    whole pass): the best verified one's, with how many of them agree (``unknown``
    below the threshold, or when nothing was identified)."""
    line_of = line.line_of
    marks = Markings({s.index: Identity("unknown", None, None) for s in sheets}, {}, {})
    marks.on_sheet = dict.fromkeys(marks.identities, 0)
    verdicts: dict[int, list] = {s.index: [] for s in sheets}
    for r in results:
        if not len(r.boxes):
            continue
        frames = r.start + r.boxes[:, 0].astype(int)
        for f in frames:
            marks.per_frame[int(f)] = marks.per_frame.get(int(f), 0) + 1
        centres = np.array([line_of[int(f)] for f in frames]) + (r.boxes[:, 2] + r.boxes[:, 4]) / 2
        for n, centre in enumerate(centres):
            sheet = on_line.at(centre)
            if sheet is None:
                continue
            marks.on_sheet[sheet.index] += 1
            if r.verdicts:
                verdicts[sheet.index].append(r.verdicts[n])
    for index, found in verdicts.items():
        scored = [v for v in found if v.similarity is not None]
        if not scored:
            continue
        best = max(scored, key=lambda v: v.similarity)
        agreeing = (
            sum(v.sheet_id == best.sheet_id for v in scored) if best.sheet_id != "unknown" else 0
        )
        marks.identities[index] = Identity(best.sheet_id, best.nearest, best.similarity, agreeing)
    return marks


@dataclass
class Placed:
    rows: list[dict]  # defects rows without archive_id and import_id
    per_frame: dict[int, list]  # frame position → its Defects


def place_defects(
    rec: Recording,
    line: Stitched,
    results: list[ChunkResult],
    on_line: _SheetsByLine,
    identities: dict[int, Identity],
    model_version: str,
) -> Placed:
    """Each defect on the sheet under its centre, in mm from the sheet's head (x) and
    its left edge (y); a defect on the table between sheets has no sheet."""
    line_of = line.line_of
    per_frame: dict[int, list] = {}
    for r in results:
        for d in r.defects:
            per_frame.setdefault(r.start + d.frame, []).append(d)
    area_px = rec.mm_per_px**2
    rows = []
    for i, found in sorted(per_frame.items()):
        for n, d in enumerate(found):
            x0, y0, x1, y1 = d.bbox
            centre = line_of[i] + (y0 + y1) / 2
            sheet = on_line.at(centre)
            rows.append(
                {
                    "frame_id": rec.frame_ids[i],
                    "defect_index": n,
                    "sheet_index": sheet.index if sheet else None,
                    "sheet_id": identities[sheet.index].sheet_id if sheet else None,
                    "class_id": d.class_index + 1,
                    "class_name": line.classes[d.class_index],
                    "rle": d.rle,
                    "area": d.area,
                    "area_mm2": d.area * area_px,
                    "x_min": x0,
                    "y_min": y0,
                    "x_max": x1,
                    "y_max": y1,
                    "x_mm": (centre - sheet.first_line) * rec.mm_per_px if sheet else None,
                    "y_mm": ((x0 + x1) / 2 - sheet.x_min) * rec.mm_per_px
                    if sheet and sheet.x_min is not None
                    else None,
                    "score": d.score,
                    "model_version": model_version,
                }
            )
    return Placed(rows, per_frame)


def frame_rows(
    rec: Recording,
    line: Stitched,
    on_line: _SheetsByLine,
    defects: Placed,
    marks: Markings,
    versions: str,
) -> tuple[list[dict], dict[int, list[int]]]:
    """One row per inspected frame; and the frame positions that show each sheet."""
    line_of = line.line_of
    frames_of: dict[int, list[int]] = {s.index: [] for s in on_line.sheets}
    rows = []
    for k, i in enumerate(line.positions):
        found = defects.per_frame.get(i, [])
        steel_rows = int((line.contrast[k] >= MIN_CONTRAST).sum()) * EDGE_BLOCK
        shown = on_line.overlapping(line_of[i], line_of[i] + rec.frame_height - 1)
        for sheet, _ in shown:
            frames_of[sheet.index].append(i)
        rows.append(
            {
                "frame_id": rec.frame_ids[i],
                "frame_number": rec.frame_numbers[i],
                "captured_at": rec.captured_at[i],
                "first_line": line_of[i],
                "sheet_index": max(shown, key=lambda o: o[1])[0].index if shown else None,
                "steel_rows": min(steel_rows, rec.frame_height),
                "n_markings": marks.per_frame.get(i, 0),
                "n_defects": len(found),
                "defect_pixels": sum(d.area for d in found),
                "gate": line.gate[k].tolist(),
                "mean_level": None if np.isnan(line.level[k]) else round(float(line.level[k]), 3),
                "model_versions": versions,
            }
        )
    return rows, frames_of


def sheet_rows(
    rec: Recording,
    sheets: list[TrackedSheet],
    defects: Placed,
    marks: Markings,
    frames_of: dict[int, list[int]],
    grades: list,
    versions: str,
) -> list[dict]:
    """One row per sheet: identity, extent, defects by class, defect area and grade."""
    from core.grading import grade as grade_of

    defects_on: dict[int, list[dict]] = {}
    for d in defects.rows:
        if d["sheet_index"] is not None:
            defects_on.setdefault(d["sheet_index"], []).append(d)
    rows = []
    for s in sheets:
        on = defects_on.get(s.index, [])
        counts: dict[str, int] = {}
        areas: dict[str, float] = {}
        for d in on:
            counts[d["class_name"]] = counts.get(d["class_name"], 0) + 1
            areas[d["class_name"]] = areas.get(d["class_name"], 0.0) + d["area_mm2"]
        width_px = (s.x_max - s.x_min + 1) if s.x_min is not None else None
        sheet_px = s.length_lines * (width_px or rec.frame_width)
        ratio = sum(d["area"] for d in on) / sheet_px if sheet_px else 0.0
        identity = marks.identities[s.index]
        rows.append(
            {
                "sheet_index": s.index,
                "sheet_id": identity.sheet_id,
                "similarity": identity.similarity,
                "nearest_sheet_id": identity.nearest,
                "markings_agreeing": identity.agreeing,
                "first_frame": rec.frame_numbers[frames_of[s.index][0]],
                "last_frame": rec.frame_numbers[frames_of[s.index][-1]],
                "first_line": s.first_line,
                "last_line": s.last_line,
                "complete": s.complete,
                "length_mm": s.length_lines * rec.mm_per_px,
                "width_mm": width_px * rec.mm_per_px if width_px else None,
                "n_markings": marks.on_sheet[s.index],
                "n_defects": len(on),
                "defect_counts": list(counts.items()),
                "defect_areas_mm2": list(areas.items()),
                "defect_area_ratio": ratio,
                "grade": grade_of(grades, ratio, counts),
                "model_versions": versions,
            }
        )
    return rows


class _SheetsByLine:
    """Tracked sheets (in line order, disjoint) looked up by recording line."""

    def __init__(self, sheets: list[TrackedSheet]) -> None:
        self.sheets = sheets
        self.starts = [s.first_line for s in sheets]

    def at(self, line: float) -> TrackedSheet | None:
        i = bisect.bisect_right(self.starts, line) - 1
        return self.sheets[i] if i >= 0 and line <= self.sheets[i].last_line else None

    def overlapping(self, first: int, last: int) -> list[tuple[TrackedSheet, int]]:
        """(sheet, rows shared) for every sheet the lines first..last show."""
        found = []
        for i in range(bisect.bisect_right(self.starts, last) - 1, -1, -1):
            sheet = self.sheets[i]
            if sheet.last_line < first:
                break
            found.append((sheet, min(sheet.last_line, last) - max(sheet.first_line, first) + 1))
        return found[::-1]


# -- one archive on the cluster ------------------------------------------------------------
def gpu_resources(client) -> dict | None:
    """Ask for a GPU per task when the cluster has GPU workers; CPU workers otherwise."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None


def inspect_archive(
    row: dict,
    refs: ModelRefs,
    client,
    registries: Callable[[Recording], object] | None,  # Registries; None: no identity
    settings: Settings,
    warehouse: Warehouse,
    logger: logging.Logger,
    progress: Callable[[str, int, int], None],
    drift_reference: dict | None = None,
) -> dict:
    """Inspect one recording on the Dask cluster of ``client`` and commit its frames,
    defects, sheets and drift (against ``drift_reference``, tasks.drift) as one import; a
    range that cannot be read is a warning row, the rest goes on. Returns what the flow
    reports. ``progress(archive_id, done, frames)``."""
    from tasks import drift
    from warehouse.store import new_import_id

    started = time.perf_counter()
    rec = recording(row["archive_id"], Path(row["path"]))
    registry = registries(rec) if registries is not None else None
    chunks = rec.chunks(settings.chunk_frames, refs, settings.batch_frames, settings.device)
    logger.info(
        "archive %s: %d frames in %d ranges of %d on %d workers",
        rec.archive_id,
        len(rec.frame_ids),
        len(chunks),
        settings.chunk_frames,
        len(client.scheduler_info(n_workers=-1)["workers"]),
    )
    results, problems = run_chunks(client, rec, chunks, registry, logger, progress, started)
    import_id = new_import_id()
    inspected = assemble(rec, results, refs, settings.grades, import_id)
    problems = list(rec.warnings) + problems
    status = "partial" if problems else "ok"
    if not results:
        status = "failed"
    measures = []
    if drift_reference is not None and results:
        try:
            measures = drift.measure(
                drift_reference, inspected.frames, inspected.defects, inspected.sheets, settings
            )
        except ValueError as error:  # a reference of other classes than the model's
            logger.warning("archive %s: drift not measured (%s)", rec.archive_id, error)
    warehouse.import_archive(
        archive_row(
            rec.archive_id,
            import_id,
            row["kind"],
            rec.path,
            row["content_sha256"],
            status,
            n_images=inspected.n_frames,
            n_labels=0,
            n_errors=len(problems),
            received_from=row["received_from"],
            inspected_with=refs.key(),
            **rec.origin,
        ),
        {
            "frames": inspected.frames,
            "defects": inspected.defects,
            "sheets": inspected.sheets,
            "ingest_errors": error_rows(problems, rec.archive_id, import_id),
            "drift": drift.drift_rows(measures, rec.archive_id, import_id, refs.segmentation),
        },
    )
    summary = report(rec, inspected, status, problems, time.perf_counter() - started, logger)
    summary["drift"] = drift.summary(measures) if measures else None
    return summary


def run_chunks(
    client,
    rec: Recording,
    chunks: list[Chunk],
    registry,
    logger: logging.Logger,
    progress: Callable[[str, int, int], None],
    started: float,
) -> tuple[list[ChunkResult], list[Problem]]:
    """Every range of ``rec`` on the cluster; a range that cannot be read is a problem,
    the rest goes on. Results in the order they come back (assemble sorts them)."""
    from distributed import as_completed

    resources = gpu_resources(client)
    futures = {
        client.submit(
            inspect_chunk,
            chunk,
            registry,
            resources=resources,
            pure=False,
            key=f"inspect-{rec.archive_id}-{chunk.start}-{time.time_ns()}",
        ): chunk
        for chunk in chunks
    }
    results, problems, frames_done = [], [], 0
    next_log = 0.1
    for future in as_completed(futures):
        chunk = futures.pop(future)
        try:
            result = future.result()
        except Exception as error:  # a range that cannot be read: the rest goes on
            problems.append(range_problem(chunk, error))
            logger.warning("archive %s: %s", rec.archive_id, problems[-1].reason)
            continue
        finally:
            future.release()
        results.append(result)
        frames_done += result.n_frames
        progress(rec.archive_id, frames_done, len(rec.frame_ids))
        if frames_done >= next_log * len(rec.frame_ids):
            seconds = time.perf_counter() - started
            logger.info(
                "archive %s: %d of %d frames, %.1f frames/s",
                rec.archive_id,
                frames_done,
                len(rec.frame_ids),
                frames_done / seconds,
            )
            next_log += 0.1
    return results, problems


def report(
    rec: Recording,
    inspected: Inspected,
    status: str,
    problems: list[Problem],
    seconds: float,
    logger: logging.Logger,
) -> dict:
    """What the flow reports of one archive, also logged."""
    summary = {
        "archive_id": rec.archive_id,
        "status": status,
        "frames": inspected.n_frames,
        "sheets": inspected.sheets.num_rows,
        "identified": sum(s != "unknown" for s in inspected.sheets["sheet_id"].to_pylist()),
        "defects": inspected.defects.num_rows,
        "errors": len(problems),
        "seconds": round(seconds, 2),
        "frames_per_s": round(inspected.n_frames / seconds, 2) if seconds else None,
        "decode_s": round(inspected.decode_s, 2),
        "model_s": round(inspected.model_s, 2),
        "workers": len(inspected.workers),
        "engines": sorted(inspected.engines),
        "reason": "; ".join(p.reason for p in problems),
    }
    logger.info(
        "archive %s: %d frames in %.1f s (%.1f frames/s), %d sheets (%d identified), "
        "%d defects, status %s; engines: %s",
        rec.archive_id,
        summary["frames"],
        seconds,
        summary["frames_per_s"] or 0,
        summary["sheets"],
        summary["identified"],
        summary["defects"],
        status,
        " / ".join(summary["engines"]) or "-",
    )
    return summary


def range_problem(chunk: Chunk, error: Exception) -> Problem:
    first, last = chunk.frame_ids[0], chunk.frame_ids[-1]
    return Problem(
        chunk.video or chunk.frames_dir,
        "frames_not_inspected",
        f"frames {first}..{last} were not inspected: {type(error).__name__}: {error}; "
        "check the archive and run `steelsight inspect` again",
        fatal=False,
        source_row=chunk.start,
    )


def not_inspected(
    row: dict, key: str, problem: Problem, warehouse: Warehouse, logger: logging.Logger
) -> dict:
    """Record that an archive could not be inspected (or registered), and why: its row
    says failed, with the models tried, so the next run does not try the same again."""
    from warehouse.store import new_import_id

    import_id = new_import_id()
    warehouse.import_archive(
        archive_row(
            row["archive_id"],
            import_id,
            row["kind"],
            Path(row["path"]),
            row["content_sha256"],
            "failed",
            n_images=0,
            n_labels=0,
            n_errors=1,
            received_from=row["received_from"],
            inspected_with=key,
            **{k: row.get(k) for k in ORIGIN},
        ),
        {"ingest_errors": error_rows([problem], row["archive_id"], import_id)},
    )
    logger.warning("archive %s: %s", row["archive_id"], problem.reason)
    return {
        "archive_id": row["archive_id"],
        "status": "failed",
        "frames": 0,
        "sheets": 0,
        "identified": 0,
        "defects": 0,
        "errors": 1,
        "frames_per_s": None,
        "reason": problem.reason,
    }


def attempt(
    row: dict, logger: logging.Logger, work: Callable[[], T]
) -> tuple[T | None, Problem | None]:
    """``work`` on an ingested archive, unless it changed since ingest: its result, or why
    there is none (changed, or failed: one archive never stops the others)."""
    problem = changed_since_ingest(Path(row["path"]), row["content_sha256"])
    if problem is not None:
        return None, problem
    try:
        return work(), None
    except Exception as error:
        logger.exception("archive %s", row["archive_id"])
        return None, failure(row, error)


def failure(row: dict, error: Exception) -> Problem:
    return Problem(
        row["path"],
        "inspection_failed",
        f"{Path(row['path']).name} could not be inspected: {type(error).__name__}: {error}; "
        "the other archives went on; report it with this archive",
    )
