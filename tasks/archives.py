"""Taking recorded archives in: recognise, validate, hash, register, quarantine.

An archive is a folder. Three kinds are recognised by their layout:

  recording   ``manifest.json`` (camera role inspection or marking-station) with a video
              or a frame folder, ``frame_index.csv`` or ``sheets.csv``
  severstal   ``train.csv`` + ``train_images/``
  neu-det     ``images/`` + ``annotations/``

The landing folder under ``STEELSIGHT_HOME`` is the inbox: a good archive found there is
moved (renamed, never copied or changed) into the library folder, a bad one into the
quarantine folder with the reason in ``ingest_errors`` and in a ``.reason.json`` file
beside it. Recorders write under a dot-name and rename when complete; dot-names are
ignored. Archives named by path outside the landing folder are registered where they
are and never moved: one that fails validation is recorded as ``failed`` with its reason.

Data flows one way: folder → ``Checked`` (pure validation) → an archives row and its
ingest_errors rows → one warehouse import.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import cv2
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.labels import SourceError, archive_id_for, detect_kind, import_label_source
from warehouse.schema import TABLES
from warehouse.store import Warehouse, new_import_id

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20


# -- the recorder's manifest -------------------------------------------------------------
class RecordingFiles(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    video: str | None = None
    frames: str | None = None
    frame_index: str | None = None
    sheets: str | None = None

    @model_validator(mode="after")
    def _one_medium(self) -> RecordingFiles:
        if (self.video is None) == (self.frames is None):
            raise ValueError("name exactly one of files.video and files.frames")
        return self


class RecordingManifest(BaseModel):
    """``manifest.json`` of a recorded archive: the fields steelsight relies on."""

    model_config = ConfigDict(extra="allow", frozen=True)
    format_version: Literal[1]
    camera_id: str
    camera_role: Literal["inspection", "marking-station"]
    line_id: str
    start_time: datetime
    line_speed_m_s: float = Field(gt=0)
    kind: Literal["video", "frames"]
    fps: float | None = Field(None, gt=0)
    mm_per_px: float = Field(gt=0)
    frame_width: int = Field(gt=0)
    frame_height: int = Field(gt=0)
    frame_count: int = Field(ge=0)
    files: RecordingFiles

    @model_validator(mode="after")
    def _role_files(self) -> RecordingManifest:
        if self.camera_role == "inspection" and (self.fps is None or not self.files.frame_index):
            raise ValueError("an inspection recording needs fps and files.frame_index")
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


def content_hash(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes, in path order: the archive's
    identity for recognising a duplicate wherever it is."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        file_digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                file_digest.update(chunk)
        digest.update(f"{path.relative_to(folder).as_posix()} {file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def read_manifest(folder: Path) -> RecordingManifest:
    """The validated manifest; ArchiveError names the file and the fields at fault."""
    path = folder / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArchiveError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArchiveError(f"{path} is not valid JSON ({error})") from None
    try:
        return RecordingManifest.model_validate(data)
    except ValidationError as error:
        fields = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in error.errors()
        )
        raise ArchiveError(f"{path} does not fit the recorder manifest schema: {fields}") from None


def _csv(path: Path, columns: tuple[str, ...]) -> list[dict]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ArchiveError(f"{path} lacks the columns {missing}")
        return list(reader)


def _looks_like_recording(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("video.mkv", "frames", "frame_index.csv"))


def check_archive(folder: Path, decode: bool = True) -> Checked:
    """Validate one archive folder. ``decode`` reads every frame (ingest does); without it
    only the manifest and indexes are checked (cheap, for re-deriving warnings)."""
    folder = Path(folder)
    if not folder.is_dir():
        return Checked(
            folder,
            "unknown",
            problems=[
                _p(
                    folder,
                    "not_a_folder",
                    "is not a folder: an archive is a folder; unpack it into the landing folder",
                )
            ],
        )
    if (folder / "manifest.json").exists():
        return _check_recording(folder, decode)
    try:
        kind = detect_kind(folder)
    except SourceError as error:
        if _looks_like_recording(folder):
            return Checked(
                folder,
                "unknown",
                problems=[
                    _p(
                        folder / "manifest.json",
                        "missing_manifest",
                        "is missing: without it the frames' size, rate and resolution are "
                        "unknown; restore it from the recorder and drop the archive into the "
                        "landing folder again",
                    )
                ],
            )
        return Checked(folder, "unknown", problems=[_p(folder, "unknown_archive", str(error))])
    return Checked(folder, kind)


def _p(path: Path, kind: str, reason: str, fatal: bool = True, **where) -> Problem:
    return Problem(
        str(path), kind, f"{path.name} {reason}" if path.name else reason, fatal, **where
    )


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
        ("frame_number", "frame_id") if manifest.files.frame_index else ("frame_id", "sheet_id")
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
    except (ArchiveError, csv.Error, UnicodeDecodeError) as error:
        checked.problems.append(Problem(str(index), "invalid_index", str(error)))
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
        capture = cv2.VideoCapture(str(video))
        try:
            for n, frame_id in enumerate(frame_ids):
                ok, frame = capture.read()
                if not ok:
                    return [
                        _p(
                            video,
                            "truncated_video",
                            f"ends or breaks at frame {n} "
                            f"({frame_id}) of {len(frame_ids)}: the file is truncated or "
                            "corrupt; copy it again from the recorder",
                            source_row=n,
                        )
                    ]
                if frame.shape[:2] != shape:
                    return [
                        _p(
                            video,
                            "wrong_frame_size",
                            f"frame {n} is {frame.shape[1]}x"
                            f"{frame.shape[0]}, the manifest says {shape[1]}x{shape[0]}",
                        )
                    ]
        finally:
            capture.release()
        return []
    bad = []
    for frame_id in frame_ids:
        path = folder / manifest.files.frames / f"{frame_id}.jpg"
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
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


# -- registering ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Ingested:
    """What happened to one archive."""

    source: str  # where it was found
    path: str  # where it is now
    archive_id: str
    kind: str
    status: str  # ok, partial, failed, quarantined, unchanged
    reason: str = ""
    n_frames: int = 0


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


def _existing(warehouse: Warehouse, content: str) -> dict | None:
    """The committed, usable archive with this content, if any."""
    rows = warehouse.query(
        "SELECT archive_id, path FROM archives WHERE content_sha256 = ? "
        "AND status IN ('ok', 'partial') ORDER BY imported_at LIMIT 1",
        [content],
    ).to_pylist()
    return rows[0] if rows else None


def _free_name(folder: Path, name: str) -> Path:
    target, n = folder / name, 1
    while target.exists() or target.with_name(target.name + ".reason.json").exists():
        n += 1
        target = folder / f"{name}-{n}"
    return target


def ingest_archive(
    source: Path, warehouse: Warehouse, library: Path, quarantine: Path, landed: bool
) -> Ingested:
    """Validate one archive and register it. ``landed``: it lies in the landing folder
    and is moved (into ``library`` when good, ``quarantine`` when not)."""
    source = Path(source).resolve()
    checked = check_archive(source)
    content = (
        content_hash(source) if source.is_dir() else hashlib.sha256(source.read_bytes()).hexdigest()
    )
    existing = _existing(warehouse, content) if checked.ok else None
    if existing and existing["path"] == str(source):
        return Ingested(
            str(source),
            str(source),
            existing["archive_id"],
            checked.kind,
            "unchanged",
            "already ingested with the same content",
        )
    if existing:
        checked.problems.append(
            _p(
                source,
                "duplicate_content",
                f"has the same content as archive {existing['archive_id']} ({existing['path']}), "
                "which is already ingested: nothing new to take in",
            )
        )
    if not checked.ok:
        return _reject(source, checked, content, warehouse, quarantine if landed else None)
    target = _free_name(library, source.name) if landed else source
    if landed:
        library.mkdir(parents=True, exist_ok=True)
        source.rename(target)
    archive_id = archive_id_for(target)
    received = {"received_from": str(source)} if landed else {}
    if checked.kind in ("severstal", "neu-det"):
        summary = import_label_source(target, warehouse, content_sha256=content, extra=received)
        log.info("ingested %s as %s (%s, %s)", source, archive_id, checked.kind, summary.status)
        return Ingested(
            str(source),
            str(target),
            archive_id,
            checked.kind,
            summary.status,
            n_frames=summary.n_images,
        )
    import_id = new_import_id()
    warnings = checked.problems  # none fatal here
    status = "partial" if warnings else "ok"
    warehouse.import_archive(
        archive_row(
            archive_id,
            import_id,
            checked.kind,
            target,
            content,
            status,
            len(checked.frames),
            0,
            len(warnings),
            **received,
        ),
        {"ingest_errors": error_rows(warnings, archive_id, import_id)},
    )
    log.info(
        "ingested %s as %s: %s, %d frames, %d warnings",
        source,
        archive_id,
        checked.kind,
        len(checked.frames),
        len(warnings),
    )
    return Ingested(
        str(source),
        str(target),
        archive_id,
        checked.kind,
        status,
        "; ".join(p.reason for p in warnings),
        len(checked.frames),
    )


def _reject(
    source: Path, checked: Checked, content: str, warehouse: Warehouse, quarantine: Path | None
) -> Ingested:
    """Record why an archive is not taken in; move it to quarantine when it was landed."""
    target = source
    if quarantine is not None:
        quarantine.mkdir(parents=True, exist_ok=True)
        target = _free_name(quarantine, source.name)
        reasons = [p.__dict__ for p in checked.fatal]
        note = target.with_name(target.name + ".reason.json")
        note.write_text(json.dumps({"source": str(source), "problems": reasons}, indent=2) + "\n")
        source.rename(target)
    archive_id, import_id = archive_id_for(target), new_import_id()
    status = "quarantined" if quarantine is not None else "failed"
    warehouse.import_archive(
        archive_row(
            archive_id,
            import_id,
            checked.kind,
            target,
            content,
            status,
            0,
            0,
            len(checked.problems),
            **({"received_from": str(source)} if quarantine is not None else {}),
        ),
        {"ingest_errors": error_rows(checked.problems, archive_id, import_id)},
    )
    reason = "; ".join(p.reason for p in checked.fatal)
    log.warning("%s %s: %s", status, source, reason)
    return Ingested(str(source), str(target), archive_id, checked.kind, status, reason)


def landed_archives(landing: Path) -> list[Path]:
    """What waits in the landing folder, oldest first; dot-names are still being written."""
    if not landing.is_dir():
        return []
    entries = [p for p in landing.iterdir() if not p.name.startswith(".")]
    return sorted(entries, key=lambda p: (p.stat().st_mtime, p.name))


def unregistered(library: Path, warehouse: Warehouse) -> list[Path]:
    """Library folders without an archives row: moved there by an ingest that stopped
    before its commit. They are ingested in place."""
    if not library.is_dir():
        return []
    known = set(warehouse.query("SELECT path FROM archives")["path"].to_pylist())
    return sorted(
        p for p in library.iterdir() if not p.name.startswith(".") and str(p.resolve()) not in known
    )


def is_within(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True
