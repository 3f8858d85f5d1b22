"""Recorded archives: recognise, validate, hash (taking them in: tasks.ingest).

An archive is a folder. Three kinds are recognised by their layout:

  recording   ``manifest.json`` (camera role inspection or marking-station) with a video
              or a frame folder, ``frame_index.csv`` or ``sheets.csv``
  severstal   ``train.csv`` + ``train_images/``
  neu-det     ``images/`` + ``annotations/``

This module validates (pure: it reads, never writes): ``scan`` lists an archive's files
without following a link or opening a special file, ``check_archive`` validates its
manifest, indexes and frames, ``content_hash`` identifies it, ``probe`` does all three as
ingest needs them (``tasks.probe`` runs it in a process of its own). ``tasks.ingest``
moves and registers.

Everything an archive uses lies inside it: links, special files, names that are not
UTF-8 and manifest names that point outside are refused with a reason, and manifest
values are checked for range, so that what passes here cannot make inspect fail.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.images import ImageError, open_video
from tasks.labels import SourceError, detect_kind
from warehouse.schema import TABLES

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 1 << 20  # a recorder's manifest is a few hundred bytes
MAX_DEPTH = 16  # folders within an archive
MAX_ENTRIES = 2_000_000  # files and folders within an archive
# frame ids name files (<frame_id>.jpg); sheet ids come from the plant's L2 system
FRAME_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHEET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/#+-]{0,127}")


def printable(path: Path | str) -> str:
    """A path as text that can be stored and logged: a name that is not valid UTF-8
    (the bytes Python keeps as surrogates) is shown with those bytes escaped."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_printable(path: Path | str) -> bool:
    return printable(path) == str(path)


# -- the recorder's manifest -------------------------------------------------------------
class RecordingFiles(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    video: str | None = None
    frames: str | None = None
    frame_index: str | None = None
    sheets: str | None = None

    @field_validator("video", "frames", "frame_index", "sheets")
    @classmethod
    def _inside(cls, name: str | None) -> str | None:
        """Every file an archive uses lies inside it: a relative name without '..'."""
        if name is None:
            return None
        parts = name.replace("\\", "/").split("/")
        if not name or name.startswith(("/", "~")) or ":" in parts[0] or ".." in parts:
            raise ValueError(
                f"{name!r} is not a name inside the archive: name its files relative to the "
                "archive folder, without '..'"
            )
        if any(ord(c) < 32 for c in name) or len(name) > 255:
            raise ValueError(f"{name!r} has control characters or is too long")
        return name

    @model_validator(mode="after")
    def _one_medium(self) -> RecordingFiles:
        if (self.video is None) == (self.frames is None):
            raise ValueError("name exactly one of files.video and files.frames")
        return self


class RecordingManifest(BaseModel):
    """``manifest.json`` of a recorded archive: the fields steelsight relies on."""

    # ranges: what a rolling line and its cameras can be, so that a value that parses but
    # makes no sense (Infinity, 1e-300) is refused here, not found by inspect's arithmetic
    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)
    format_version: Literal[1]
    camera_id: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")
    camera_role: Literal["inspection", "marking-station"]
    line_id: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")
    start_time: datetime
    line_speed_m_s: float = Field(gt=0, le=100, description="m/s; the fastest lines run ~25")
    kind: Literal["video", "frames"]
    fps: float | None = Field(None, ge=0.01, le=100_000)
    mm_per_px: float = Field(ge=0.001, le=100)
    frame_width: int = Field(gt=0, le=65_536)
    frame_height: int = Field(gt=0, le=65_536)
    frame_count: int = Field(ge=0, le=100_000_000)
    files: RecordingFiles

    @model_validator(mode="after")
    def _role_files(self) -> RecordingManifest:
        if self.camera_role == "inspection" and (self.fps is None or not self.files.frame_index):
            raise ValueError("an inspection recording needs fps and files.frame_index")
        if self.camera_role == "inspection" and not 0 < self.frame_step_lines <= 1e6:
            raise ValueError(
                f"line_speed_m_s, fps and mm_per_px give a frame step of "
                f"{self.frame_step_lines:.3g} scan lines: check the three values"
            )
        if self.camera_role == "marking-station" and not (self.files.sheets and self.files.frames):
            raise ValueError("a marking-station archive needs files.frames and files.sheets")
        return self

    @property
    def archive_kind(self) -> str:
        return "marking-station" if self.camera_role == "marking-station" else self.kind

    @property
    def frame_step_lines(self) -> float:
        """Scan lines the line moves between two frames."""
        return self.line_speed_m_s * 1000 / self.fps / self.mm_per_px


@dataclass(frozen=True)
class Problem:
    """Something wrong with an archive: where, what, and whether the archive is unusable."""

    source: str
    error_kind: str
    reason: str
    fatal: bool = True
    source_row: int | None = None
    field: str | None = None


@dataclass
class Checked:
    """What validation found: the archive's kind, its manifest (recordings) and problems."""

    path: Path
    kind: str  # video, frames, marking-station, severstal, neu-det, unknown
    manifest: RecordingManifest | None = None
    frames: list[dict] = field(default_factory=list)  # frame_index.csv / sheets.csv rows
    problems: list[Problem] = field(default_factory=list)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    @property
    def ok(self) -> bool:
        return not self.fatal


class ArchiveError(ValueError):
    """An archive that cannot be used as its manifest says."""


@dataclass(frozen=True)
class Contents:
    """An archive's regular files (path order) and what is wrong with the rest: links,
    special files, names that are not UTF-8, nesting too deep. Found without following a
    link or opening anything but folders, so a hostile archive cannot make it read
    outside or wait on a pipe."""

    files: list[Path]
    problems: list[Problem]


def scan(folder: Path) -> Contents:
    files: list[Path] = []
    problems: list[Problem] = []
    seen = 0
    stack = [(Path(folder), 0)]
    while stack:
        current, depth = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as error:
            problems.append(
                _p(current, "unreadable_folder", f"cannot be listed ({error.strerror})")
            )
            continue
        for entry in entries:
            seen += 1
            path = Path(entry.path)
            if seen > MAX_ENTRIES:
                problems.append(_p(folder, "too_many_files", f"has more than {MAX_ENTRIES} files"))
                return Contents(files, problems)
            if not is_printable(entry.name):
                problems.append(
                    _p(path, "bad_name", "has a name that is not valid UTF-8: rename it")
                )
            elif entry.is_symlink():
                problems.append(
                    _p(
                        path,
                        "link",
                        f"is a symbolic link (to {printable(os.readlink(path))}): an archive "
                        "holds its own files; copy the file in instead of linking it",
                    )
                )
            elif entry.is_dir(follow_symlinks=False):
                if depth + 1 >= MAX_DEPTH:
                    problems.append(_p(path, "too_deep", f"is nested more than {MAX_DEPTH} deep"))
                else:
                    stack.append((path, depth + 1))
            elif entry.is_file(follow_symlinks=False):
                files.append(path)
            else:
                problems.append(
                    _p(
                        path,
                        "special_file",
                        f"is a {_file_type(path)}, not a regular file: an archive holds "
                        "files and folders only",
                    )
                )
    return Contents(sorted(files), problems)


def _file_type(path: Path) -> str:
    mode = path.lstat().st_mode
    for test, name in (
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return name
    return "special file"


def content_hash(folder: Path, files: list[Path] | None = None) -> str:
    """SHA-256 over every regular file's relative path and bytes, in path order: the
    archive's identity for recognising a duplicate wherever it is. Links and special
    files are never followed or opened (``scan`` reports them); a single regular file
    is hashed as itself."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        if folder.is_symlink() or not folder.is_file():
            return hashlib.sha256(f"not a file: {printable(folder.name)}".encode()).hexdigest()
        files, folder = [folder], folder.parent
    digest = hashlib.sha256()
    for path in scan(folder).files if files is None else files:
        file_digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                file_digest.update(chunk)
        name = printable(path.relative_to(folder).as_posix())
        digest.update(f"{name} {file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def read_manifest(folder: Path) -> RecordingManifest:
    """The validated manifest; ArchiveError names the file and the fields at fault."""
    path = folder / "manifest.json"
    if not path.exists() and not path.is_symlink():
        raise ArchiveError(f"{path} is missing")
    if path.is_symlink() or not path.is_file():
        raise ArchiveError(f"{path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArchiveError(f"{path} has {size} bytes, more than a manifest's {MAX_MANIFEST_BYTES}")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArchiveError(f"{path} is not valid JSON ({error})") from None
    except RecursionError:
        raise ArchiveError(f"{path} is nested too deep to be a manifest") from None
    except OSError as error:
        raise ArchiveError(f"{path} cannot be read ({error.strerror})") from None
    try:
        return RecordingManifest.model_validate(data)
    except ValidationError as error:
        fields = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in error.errors()
        )
        raise ArchiveError(f"{path} does not fit the recorder manifest schema: {fields}") from None
    except RecursionError:
        raise ArchiveError(f"{path} is nested too deep to be a manifest") from None


def _csv(path: Path, columns: tuple[str, ...]) -> list[dict]:
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ArchiveError(f"{path} is not a regular file")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ArchiveError(f"{path} lacks the columns {missing}")
        return list(reader)


def _bad_rows(
    index: Path, rows: list[dict], columns: dict[str, re.Pattern], time_required: bool
) -> list[Problem]:
    """Index rows whose ids are not plain names (a frame id names a file in the archive:
    ``../x`` would read outside it) or whose timestamp is not a time."""
    for row_number, row in enumerate(rows, start=2):
        for name, pattern in columns.items():
            value = row.get(name)
            if value is None or not pattern.fullmatch(value):
                return [
                    Problem(
                        str(index),
                        "invalid_index",
                        f"{index} row {row_number}: {name} {printable(str(value))[:80]!r} is not "
                        "a plain id (at most 128 letters, digits and . _ -)",
                        source_row=row_number,
                        field=name,
                    )
                ]
        moment = row.get("timestamp") or ""
        if moment or time_required:
            try:
                datetime.fromisoformat(moment)
            except ValueError:
                return [
                    Problem(
                        str(index),
                        "invalid_index",
                        f"{index} row {row_number}: timestamp {moment[:40]!r} is not an ISO "
                        "8601 time",
                        source_row=row_number,
                        field="timestamp",
                    )
                ]
    return []


def _looks_like_recording(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("video.mkv", "frames", "frame_index.csv"))


def check_archive(folder: Path, decode: bool = True) -> Checked:
    """Validate one archive folder. ``decode`` reads every frame (ingest does); without it
    only the manifest and indexes are checked (cheap, for re-deriving warnings)."""
    folder = Path(folder)
    if folder.is_symlink():
        target = printable(os.readlink(folder))
        return _refused(
            folder,
            "link",
            f"is a symbolic link (to {target}): steelsight takes in only what lies in the "
            "landing folder; move or copy the archive itself there",
        )
    if not is_printable(folder.name):
        return _refused(folder, "bad_name", "has a name that is not valid UTF-8: rename it")
    if not folder.is_dir():
        if folder.is_file():
            return _refused(
                folder,
                "not_a_folder",
                "is not a folder: an archive is a folder; unpack it into the landing folder",
            )
        return _refused(folder, "special_file", f"is a {_file_type(folder)}, not an archive folder")
    contents = scan(folder)
    if contents.problems:
        return Checked(folder, "unknown", problems=contents.problems)
    if (folder / "manifest.json").exists():
        return _check_recording(folder, decode)
    try:
        kind = detect_kind(folder)
    except SourceError as error:
        if _looks_like_recording(folder):
            return _refused(
                folder / "manifest.json",
                "missing_manifest",
                "is missing: without it the frames' size, rate and resolution are "
                "unknown; restore it from the recorder and drop the archive into the "
                "landing folder again",
            )
        return Checked(folder, "unknown", problems=[_p(folder, "unknown_archive", str(error))])
    return Checked(folder, kind)


def _refused(path: Path, kind: str, reason: str) -> Checked:
    return Checked(path, "unknown", problems=[_p(path, kind, reason)])


def _p(path: Path, kind: str, reason: str, fatal: bool = True, **where) -> Problem:
    name = printable(path.name)
    return Problem(printable(path), kind, f"{name} {reason}" if name else reason, fatal, **where)


def _check_recording(folder: Path, decode: bool) -> Checked:
    try:
        manifest = read_manifest(folder)
    except ArchiveError as error:
        return Checked(
            folder,
            "unknown",
            problems=[
                Problem(
                    str(folder / "manifest.json"),
                    "invalid_manifest",
                    f"{error}; fix or restore the manifest and drop the archive into the landing "
                    "folder again",
                )
            ],
        )
    checked = Checked(folder, manifest.archive_kind, manifest)
    index_name = manifest.files.frame_index or manifest.files.sheets
    index = folder / index_name
    columns = (
        ("frame_number", "frame_id")
        if manifest.files.frame_index
        else ("frame_id", "sheet_id", "timestamp")
    )
    try:
        checked.frames = _csv(index, columns)
    except FileNotFoundError:
        checked.problems.append(
            _p(
                index,
                "missing_index",
                "is missing: the frames cannot be placed in time; restore it from the recorder",
            )
        )
        return checked
    except (ArchiveError, csv.Error, UnicodeDecodeError, OSError) as error:
        checked.problems.append(Problem(str(index), "invalid_index", str(error)))
        return checked
    ids = {"frame_id": FRAME_ID}
    if not manifest.files.frame_index:
        ids["sheet_id"] = SHEET_ID
    checked.problems += _bad_rows(index, checked.frames, ids, not manifest.files.frame_index)
    if checked.problems:
        return checked
    if len(checked.frames) != manifest.frame_count:
        checked.problems.append(
            _p(
                index,
                "frame_count_mismatch",
                f"lists {len(checked.frames)} frames, the manifest says {manifest.frame_count}",
            )
        )
        return checked
    if manifest.files.frame_index:
        checked.problems += _gaps(index, checked.frames)
    if decode and not checked.problems:
        checked.problems += _decode_all(folder, manifest, [r["frame_id"] for r in checked.frames])
    return checked


def _gaps(index: Path, rows: list[dict]) -> list[Problem]:
    """Runs of frame numbers missing from the index (frames the recorder dropped): the
    archive is usable; sheets across a gap are seen in part."""
    problems = []
    try:
        numbers = [int(r["frame_number"]) for r in rows]
    except ValueError as error:
        return [Problem(str(index), "invalid_index", f"{index}: frame_number {error}")]
    for row, (a, b) in enumerate(itertools.pairwise(numbers), start=3):
        if b <= a:
            return [
                Problem(
                    str(index),
                    "invalid_index",
                    f"{index} row {row}: frame number {b} "
                    f"after {a}; frames must be in recording order",
                    source_row=row,
                    field="frame_number",
                )
            ]
        if b > a + 1:
            problems.append(
                Problem(
                    str(index),
                    "dropped_frames",
                    f"frames {a + 1}..{b - 1} are missing ({b - a - 1} dropped by the recorder): "
                    "what passed then was not inspected; the sheets across the gap are measured "
                    "in part",
                    fatal=False,
                    source_row=row,
                    field="frame_number",
                )
            )
    return problems


def _decode_all(folder: Path, manifest: RecordingManifest, frame_ids: list[str]) -> list[Problem]:
    shape = (manifest.frame_height, manifest.frame_width)
    if manifest.files.video:
        video = folder / manifest.files.video
        if not video.is_file():
            return [_p(video, "missing_video", "is missing")]
        n = 0
        try:
            for n, frame in enumerate(decode_frames(str(video), None, 0, frame_ids)):
                if frame.shape != shape:
                    return [
                        _p(
                            video,
                            "wrong_frame_size",
                            f"frame {n} is {frame.shape[1]}x"
                            f"{frame.shape[0]}, the manifest says {shape[1]}x{shape[0]}",
                        )
                    ]
        except FrameError as error:
            return [
                _p(
                    video,
                    "truncated_video",
                    f"ends or breaks at frame {error.position} ({error.frame_id}) of "
                    f"{len(frame_ids)}: the file is truncated or corrupt; copy it again from the "
                    "recorder",
                    source_row=error.position,
                )
            ]
        return []
    bad = []
    for frame_id in frame_ids:
        path = folder / manifest.files.frames / f"{frame_id}.jpg"
        image = _read_image(path)
        if image is None:
            bad.append(_p(path, "unreadable_frame", "cannot be read as an image"))
        elif image.shape != shape:
            bad.append(
                _p(
                    path,
                    "wrong_frame_size",
                    f"is {image.shape[1]}x{image.shape[0]}, the "
                    f"manifest says {shape[1]}x{shape[0]}",
                )
            )
    return bad


# -- reading frames ------------------------------------------------------------------------
class FrameError(ArchiveError):
    """A frame that cannot be decoded: where in the recording, and which."""

    def __init__(self, message: str, position: int, frame_id: str) -> None:
        super().__init__(message)
        self.position = position
        self.frame_id = frame_id


def _read_image(path: Path) -> np.ndarray | None:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None


def decode_frames(
    video: str | None,
    frames_dir: str | None,
    start: int,
    frame_ids: list[str] | tuple[str, ...],
    threads: int | None = None,
) -> Iterator[np.ndarray]:
    """Grey frames (H, W) uint8 of a recording, in order: from the video (starting at
    position ``start``; FFmpeg on ``threads`` threads, None: its choice) or from
    ``<frames_dir>/<frame_id>.jpg``. FrameError names the frame that cannot be read. The
    one frame reader: ingest's validation, training data, identification and the
    inspection workers all read through it."""
    if video:
        capture = open_video(video, threads)
        try:
            if start:
                capture.set(cv2.CAP_PROP_POS_FRAMES, start)
                if int(capture.get(cv2.CAP_PROP_POS_FRAMES)) != start:
                    raise FrameError(f"{video}: cannot seek to frame {start}", start, "")
            for n, frame_id in enumerate(frame_ids):
                ok, frame = capture.read()
                if not ok:
                    raise FrameError(
                        f"{video}: frame {start + n} ({frame_id}) cannot be decoded; the index "
                        f"lists {start + len(frame_ids)} frames",
                        start + n,
                        frame_id,
                    )
                yield frame[:, :, 0] if frame.ndim == 3 else frame
        finally:
            capture.release()
        return
    for n, frame_id in enumerate(frame_ids):
        path = Path(frames_dir or ".") / f"{frame_id}.jpg"
        frame = _read_image(path)
        if frame is None:
            raise FrameError(f"{path} cannot be read as an image", start + n, frame_id)
        yield frame


_READ = object()  # a reader's part is read to its end


def decode_frames_apart(
    video: str, start: int, frame_ids: list[str] | tuple[str, ...], readers: int
) -> Iterator[np.ndarray]:
    """``decode_frames`` of a video's range by ``readers`` threads at once, each reading
    its own part of the range with a capture of its own on one FFmpeg thread, the frames
    given in order (FFV1 frames decode each alone). FFmpeg's own threads decoded one
    stream at about 500 frames/s on 16 cores, twice what 2 cores give
    (docs/benchmarks.md, "Video read by several readers"). A FrameError comes where its
    frame is, after every frame before it; the readers stop when the frames are no
    longer wanted."""
    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, len(frame_ids), max(1, min(readers, len(frame_ids))) + 1)
    parts = [(int(a), int(b)) for a, b in itertools.pairwise(bounds.astype(int)) if b > a]
    queues: list[queue.Queue] = [queue.Queue(maxsize=16) for _ in parts]
    stop = threading.Event()

    def put(k: int, item: object) -> bool:
        while not stop.is_set():
            try:
                queues[k].put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read(k: int) -> None:
        first, end = parts[k]
        try:
            for frame in decode_frames(video, None, start + first, frame_ids[first:end], 1):
                if not put(k, frame):
                    return
        except Exception as error:  # raised where its frame is, by the caller
            put(k, error)
            return
        put(k, _READ)

    with ThreadPoolExecutor(len(parts), thread_name_prefix="read") as pool:
        try:
            for k in range(len(parts)):
                pool.submit(read, k)
            for part in queues:
                while (item := part.get()) is not _READ:
                    if isinstance(item, Exception):
                        raise item
                    yield item
        finally:
            stop.set()


def decode_frames_on(
    device, frames_dir: str, start: int, frame_ids: list[str] | tuple[str, ...]
) -> torch.Tensor:
    """Frames ``frame_ids`` of a frame folder as one batch (N, H, W) uint8 on ``device``,
    decoded together there (nvJPEG on a GPU: ``models.decoding.decode_jpegs``). Where they
    do not decode together, ``decode_frames`` reads them one by one: FrameError names
    the frame that cannot be read, and frames only nvJPEG refuses are decoded by OpenCV
    and sent to the device."""
    import torch  # here: ingest reads frames without loading torch

    from models.decoding import decode_jpegs

    try:
        data = [(Path(frames_dir) / f"{frame_id}.jpg").read_bytes() for frame_id in frame_ids]
        return decode_jpegs(data, device)
    except (OSError, ImageError) as error:
        log.info(
            "%s: frames %d-%d read one by one (%s)",
            frames_dir,
            start,
            start + len(frame_ids) - 1,
            error,
        )
    frames = np.stack(list(decode_frames(None, frames_dir, start, frame_ids)))
    return torch.from_numpy(frames).to(device)


def read_frames(archive: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(frame_id, grey frame) of a recording in order, as its manifest and index say.
    ArchiveError when the manifest or index cannot be read, FrameError at a bad frame."""
    ids, video, frames_dir = frame_sources(archive)
    yield from zip(ids, decode_frames(video, frames_dir, 0, ids), strict=False)


def follow_on(numbers: Sequence[int], step_lines: float, height: int) -> list[bool]:
    """Per frame, whether it directly follows the frame before it on the line: the frames
    tile the line (the line moves a frame's height between two) and none was dropped
    between them."""
    tiles = abs(step_lines - height) < 0.5
    return [False] + [tiles and b - a == 1 for a, b in itertools.pairwise(numbers)]


def frames_following(archive: Path) -> dict[str, bool]:
    """``follow_on`` for a recording's frames by id, as its manifest and frame index say
    (empty where the index has no frame numbers or cannot be read)."""
    try:
        manifest = read_manifest(archive)
        if not manifest.files.frame_index:
            return {}
        rows = _csv(archive / manifest.files.frame_index, ("frame_id", "frame_number"))
        numbers = [int(row["frame_number"]) for row in rows]
        follows = follow_on(numbers, manifest.frame_step_lines, manifest.frame_height)
    except (ArchiveError, OSError, csv.Error, UnicodeDecodeError, ValueError, TypeError):
        return {}
    return {row["frame_id"]: f for row, f in zip(rows, follows, strict=True)}


def frame_sources(archive: Path) -> tuple[list[str], str | None, str | None]:
    """A recording's frame ids in order, its video and its frames folder, as its
    manifest and index say (for decode_frames); ArchiveError when they cannot be read."""
    manifest = read_manifest(archive)
    files = manifest.files
    index = archive / (files.frame_index or files.sheets)
    try:
        ids = [row["frame_id"] for row in _csv(index, ("frame_id",))]
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        raise ArchiveError(f"{index} cannot be read ({error})") from None
    video = str(archive / files.video) if files.video else None
    frames_dir = str(archive / files.frames) if files.frames else None
    return ids, video, frames_dir


# -- registering ---------------------------------------------------------------------------
ORIGIN = ("line_id", "camera_id", "mm_per_px", "frame_width", "frame_height")


def origin(manifest: RecordingManifest) -> dict:
    """What the archives table keeps of a recording's manifest: where and how it was seen."""
    return {
        "line_id": manifest.line_id,
        "camera_id": manifest.camera_id,
        "mm_per_px": manifest.mm_per_px,
        "frame_width": manifest.frame_width,
        "frame_height": manifest.frame_height,
    }


def archive_row(
    archive_id: str,
    import_id: str,
    kind: str,
    path: Path,
    content: str,
    status: str,
    n_images: int,
    n_labels: int,
    n_errors: int,
    **extra,
) -> dict:
    return {
        "archive_id": archive_id,
        "import_id": import_id,
        "kind": kind,
        "path": str(path),
        "content_sha256": content,
        "status": status,
        "n_images": n_images,
        "n_labels": n_labels,
        "n_errors": n_errors,
        "imported_at": datetime.now(UTC),
        "steelsight_version": version("steelsight"),
        **extra,
    }


def error_rows(problems: list[Problem], archive_id: str, import_id: str) -> pa.Table:
    rows = [
        {
            "archive_id": archive_id,
            "import_id": import_id,
            "error_index": n,
            "source": p.source,
            "source_row": p.source_row,
            "field": p.field,
            "error_kind": p.error_kind,
            "reason": p.reason,
        }
        for n, p in enumerate(problems)
    ]
    return pa.Table.from_pylist(rows, TABLES["ingest_errors"].schema)


def changed_since_ingest(path: Path, recorded: str) -> Problem | None:
    """Why an ingested archive cannot be read now (gone, changed since its content hash
    was recorded), or None: inspect checks this before it reads an archive."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return _p(
            path,
            "missing_archive",
            "is gone: restore it, or ingest it again from where it is now",
        )
    contents = scan(path)
    if contents.problems or content_hash(path, contents.files) != recorded:
        found = "; ".join(p.reason for p in contents.problems[:3])
        return _p(
            path,
            "changed_since_ingest",
            "changed since it was ingested (its content hash differs"
            f"{': ' + found if found else ''}): it is not inspected; restore it from the "
            "recorder, or take the new content in with `steelsight ingest PATH`",
        )
    return None


# -- validating in a process of its own ----------------------------------------------------
@dataclass(frozen=True)
class Probed:
    """What validating an archive found, as ingest needs it: its kind, problems, frames or
    images, and content hash."""

    kind: str
    problems: list[Problem]
    n_frames: int
    content: str

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]


def probe(path: Path) -> Probed:
    """Validate an archive as ingest will take it in: a recording's manifest, index and
    every frame; a dataset read as its import will read it. Reads nothing outside it."""
    from tasks.labels import READERS

    checked = check_archive(path)
    n_frames = len(checked.frames)
    if checked.ok and checked.kind in READERS:
        n_frames = len(READERS[checked.kind](path)[0])
    return Probed(checked.kind, checked.problems, n_frames, content_hash(path))
