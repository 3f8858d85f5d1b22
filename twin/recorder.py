"""Writing the twin's recordings as a line's recorder does, with the ground truth beside.

One run writes two archives under the output folder:

    <line>-inspection-s<seed>/   manifest.json, video.mkv (FFV1) or frames/*.jpg,
                                 frame_index.csv (frame number, time), ground_truth/
    <line>-station-s<seed>/      manifest.json, frames/*.jpg, sheets.csv (the L2 system's
                                 sheet ID per picture), ground_truth/

ground_truth/ holds defects.csv (Severstal layout ImageId,ClassId,EncodedPixels),
sheets.csv (which rows of a frame show which sheet), markings.csv and markings/<frame>.txt
(the marking's box, YOLO format, class 0), and faults.json (faults written on request).
Each archive is built under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import csv
import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np

from twin.config import TWIN_VERSION, Fault, TwinConfig
from twin.line import Frame, frames, plan_line, rng_for, station_picture

FAULTS = 5  # purpose of the fault stream
STATION_LEAD_S = 2.0  # the marking station photographs a sheet this long before inspection


def frame_id(number: int) -> str:
    return f"frame_{number:06d}"


@dataclass(frozen=True)
class Recording:
    inspection: Path
    station: Path
    n_sheets: int
    n_frames: int  # frames recorded (after any dropped-frames fault)


class _Archive:
    """One archive being written: its temporary folder and ground-truth writers."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.root = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        (self.root / "ground_truth" / "markings").mkdir(parents=True)
        self.csv_files: list = []

    def csv(self, relative: str, header: list[str]) -> csv.writer:
        f = (self.root / relative).open("w", newline="")
        self.csv_files.append(f)
        writer = csv.writer(f)
        writer.writerow(header)
        return writer

    def yolo(
        self, number: int, boxes: list[tuple[int, int, int, int]], size: tuple[int, int]
    ) -> None:
        w, h = size
        lines = [
            f"0 {(x0 + x1 + 1) / 2 / w:.6f} {(y0 + y1 + 1) / 2 / h:.6f} "
            f"{(x1 - x0 + 1) / w:.6f} {(y1 - y0 + 1) / h:.6f}"
            for x0, y0, x1, y1 in boxes
        ]
        path = self.root / "ground_truth" / "markings" / f"{frame_id(number)}.txt"
        path.write_text("".join(line + "\n" for line in lines))

    def finish(self, manifest: dict | None, manifest_text: str | None = None) -> None:
        for f in self.csv_files:
            f.close()
        if manifest is not None:
            text = manifest_text or json.dumps(manifest, indent=2) + "\n"
            (self.root / "manifest.json").write_text(text)
        if self.final.exists():
            shutil.rmtree(self.final)
        self.root.rename(self.final)

    def abandon(self) -> None:
        for f in self.csv_files:
            f.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _timestamp(config: TwinConfig, seconds: float) -> str:
    return (datetime.fromisoformat(config.start_time) + timedelta(seconds=seconds)).isoformat()


def _manifest(config: TwinConfig, seed: int, n_sheets: int, role: str, **fields) -> dict:
    return {
        "format_version": 1,
        "camera_id": f"{config.line_id}-{role}",
        "camera_role": role,
        "line_id": config.line_id,
        "start_time": config.start_time,
        "line_speed_m_s": config.line_speed_m_s,
        **fields,
        "twin": {
            "version": TWIN_VERSION,
            "seed": seed,
            "sheets": n_sheets,
            "parameters": config.model_dump(mode="json"),
        },
    }


def simulate(
    config: TwinConfig,
    n_sheets: int,
    seed: int,
    out: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Recording:
    """Render n_sheets passing the line and write the two archives under ``out``."""
    faults = set(config.faults)
    if Fault.truncated_video in faults and config.archive_format != "video":
        raise ValueError("the truncated-video fault needs archive_format 'video'")
    out.mkdir(parents=True, exist_ok=True)
    plans, total_lines = plan_line(config, n_sheets, seed)
    n_frames = int(np.ceil(total_lines / config.frame_step_px))
    fault_rng = rng_for(seed, FAULTS)
    dropped: set[int] = set()
    if Fault.dropped_frames in faults:
        first = int(fault_rng.integers(n_frames // 4, max(n_frames // 4 + 1, n_frames // 2)))
        dropped = set(range(first, min(n_frames, first + max(2, n_frames // 20))))

    inspection = _Archive(out / f"{config.line_id}-inspection-s{seed}")
    station = _Archive(out / f"{config.line_id}-station-s{seed}")
    try:
        recorded = _record(
            config, plans, total_lines, seed, n_frames, dropped, inspection, station, progress
        )
        applied = _apply_faults(config, faults, fault_rng, inspection, recorded, dropped)
        (inspection.root / "ground_truth" / "faults.json").write_text(
            json.dumps(applied, indent=2) + "\n"
        )
        (station.root / "ground_truth" / "faults.json").write_text("[]\n")
        size = {"frame_width": config.frame_width, "frame_height": config.frame_height}
        media = {"video": "video.mkv"} if config.archive_format == "video" else {"frames": "frames"}
        manifest = _manifest(
            config,
            seed,
            n_sheets,
            "inspection",
            kind=config.archive_format,
            fps=round(config.fps, 6),
            mm_per_px=config.mm_per_px,
            **size,
            frame_count=recorded,
            files={**media, "frame_index": "frame_index.csv"},
        )
        text = None
        if Fault.missing_manifest in faults:
            manifest = None
        elif Fault.invalid_manifest in faults:
            full = json.dumps(manifest, indent=2)
            text = full[: len(full) // 2]  # cut off mid-way, as a crashed writer leaves it
        inspection.finish(manifest, text)
        station.finish(
            _manifest(
                config,
                seed,
                n_sheets,
                "marking-station",
                kind="frames",
                mm_per_px=config.station_mm_per_px,
                frame_width=config.station_width,
                frame_height=config.station_height,
                frame_count=len(plans),
                files={"frames": "frames", "sheets": "sheets.csv"},
            )
        )
    except BaseException:
        inspection.abandon()
        station.abandon()
        raise
    return Recording(inspection.final, station.final, n_sheets, recorded)


def _record(
    config, plans, total_lines, seed, n_frames, dropped, inspection, station, progress
) -> int:
    """Write the inspection frames (and station pictures as sheets appear); frames written."""
    size = (config.frame_width, config.frame_height)
    writer = None
    if config.archive_format == "video":
        writer = cv2.VideoWriter(
            str(inspection.root / "video.mkv"),
            cv2.VideoWriter_fourcc(*"FFV1"),
            config.fps,
            size,
            isColor=False,
        )
        if not writer.isOpened():
            raise RuntimeError("OpenCV cannot write FFV1 video here: use archive_format 'frames'")
    else:
        (inspection.root / "frames").mkdir()
    (station.root / "frames").mkdir()
    index = inspection.csv("frame_index.csv", ["frame_number", "frame_id", "timestamp"])
    defects = inspection.csv("ground_truth/defects.csv", ["ImageId", "ClassId", "EncodedPixels"])
    sheets = inspection.csv(
        "ground_truth/sheets.csv",
        ["frame_id", "sheet_id", "first_row", "last_row", "x_min", "x_max"],
    )
    markings = inspection.csv(
        "ground_truth/markings.csv",
        ["frame_id", "sheet_id", "x_min", "y_min", "x_max", "y_max", "visible"],
    )
    station_sheets = station.csv("sheets.csv", ["frame_id", "sheet_id", "timestamp"])
    station_markings = station.csv(
        "ground_truth/markings.csv", ["frame_id", "sheet_id", "x_min", "y_min", "x_max", "y_max"]
    )
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
    recorded = 0
    try:
        for frame in frames(config, plans, total_lines, seed):
            for sheet in frame.new_sheets:
                picture, box = station_picture(config, sheet, seed)
                number = sheet.plan.index
                cv2.imwrite(str(station.root / "frames" / f"{frame_id(number)}.jpg"), picture, jpeg)
                station_sheets.writerow(
                    [
                        frame_id(number),
                        sheet.plan.sheet_id,
                        _timestamp(config, frame.index / config.fps - STATION_LEAD_S),
                    ]
                )
                station_markings.writerow([frame_id(number), sheet.plan.sheet_id, *box])
                station.yolo(number, [box], (config.station_width, config.station_height))
            if frame.index in dropped:
                continue
            _write_frame(frame, writer, inspection, jpeg)
            name = frame_id(frame.index)
            index.writerow([frame.index, name, _timestamp(config, frame.index / config.fps)])
            for class_id, rle in frame.rles.items():
                if rle:
                    defects.writerow([name, class_id, rle])
            for s in frame.sheets:
                sheets.writerow(
                    [name, s["sheet_id"], s["first_row"], s["last_row"], s["x_min"], s["x_max"]]
                )
            for m in frame.markings:
                markings.writerow(
                    [
                        name,
                        m["sheet_id"],
                        m["x_min"],
                        m["y_min"],
                        m["x_max"],
                        m["y_max"],
                        m["visible"],
                    ]
                )
            inspection.yolo(
                frame.index,
                [(m["x_min"], m["y_min"], m["x_max"], m["y_max"]) for m in frame.markings],
                size,
            )
            recorded += 1
            if progress:
                progress(frame.index + 1, n_frames)
    finally:
        if writer is not None:
            writer.release()
    return recorded


def _write_frame(frame: Frame, writer, archive: _Archive, jpeg: list[int]) -> None:
    if writer is not None:
        writer.write(frame.image)
    else:
        cv2.imwrite(
            str(archive.root / "frames" / f"{frame_id(frame.index)}.jpg"), frame.image, jpeg
        )


def _apply_faults(
    config, faults, rng, archive: _Archive, recorded: int, dropped: set[int]
) -> list[dict]:
    """Damage the recording as asked; returns what was done, for the tests and the record."""
    applied = []
    if dropped:
        applied.append({"fault": Fault.dropped_frames, "frames": sorted(dropped)})
    if Fault.truncated_video in faults:
        video = archive.root / "video.mkv"
        data = video.read_bytes()
        keep = int(len(data) * 0.6)
        video.write_bytes(data[:keep])
        applied.append({"fault": Fault.truncated_video, "bytes_kept": keep, "bytes": len(data)})
    if Fault.corrupt_frame in faults:
        if config.archive_format == "frames":
            paths = sorted((archive.root / "frames").glob("*.jpg"))
            path = paths[len(paths) // 2]
            data = bytearray(path.read_bytes())
            data[2 : len(data) // 3] = rng.integers(0, 256, len(data) // 3 - 2, np.uint8).tobytes()
            path.write_bytes(bytes(data))
            applied.append({"fault": Fault.corrupt_frame, "file": f"frames/{path.name}"})
        else:
            video = archive.root / "video.mkv"
            data = bytearray(video.read_bytes())
            start, length = len(data) // 2, max(4096, len(data) // 20)
            data[start : start + length] = rng.integers(0, 256, length, np.uint8).tobytes()
            video.write_bytes(bytes(data))
            applied.append(
                {
                    "fault": Fault.corrupt_frame,
                    "file": "video.mkv",
                    "byte_offset": start,
                    "bytes": length,
                }
            )
    if Fault.missing_manifest in faults:
        applied.append({"fault": Fault.missing_manifest})
    if Fault.invalid_manifest in faults:
        applied.append({"fault": Fault.invalid_manifest})
    return applied
