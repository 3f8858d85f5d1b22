"""Reading a recorded archive's frames: FFV1 video or a folder of frame images.

The one place that knows how a recorder lays out an archive (``manifest.json`` with
``files.video`` or ``files.frames``, and ``frame_index.csv``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np


class RecordingError(ValueError):
    """An archive whose frames cannot be read as its manifest says."""


def read_manifest(archive: Path) -> dict:
    path = archive / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordingError(f"{path} is missing: not a recorded archive") from None
    except json.JSONDecodeError as error:
        raise RecordingError(f"{path} is not valid JSON ({error})") from None


def frame_ids(archive: Path, manifest: dict | None = None) -> list[str]:
    """Frame ids in recording order, from frame_index.csv."""
    manifest = read_manifest(archive) if manifest is None else manifest
    path = archive / manifest.get("files", {}).get("frame_index", "frame_index.csv")
    with path.open(newline="") as f:
        return [row["frame_id"] for row in csv.DictReader(f)]


def read_frames(archive: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(frame_id, grey frame (H, W) uint8) in recording order."""
    manifest = read_manifest(archive)
    files = manifest.get("files", {})
    ids = frame_ids(archive, manifest)
    if "video" in files:
        video = archive / files["video"]
        capture = cv2.VideoCapture(str(video))
        try:
            for n, frame_id in enumerate(ids):
                ok, frame = capture.read()
                if not ok:
                    raise RecordingError(
                        f"{video}: frame {n} ({frame_id}) cannot be decoded; "
                        f"the index lists {len(ids)} frames"
                    )
                yield frame_id, frame[:, :, 0] if frame.ndim == 3 else frame
        finally:
            capture.release()
    elif "frames" in files:
        folder = archive / files["frames"]
        for frame_id in ids:
            path = folder / f"{frame_id}.jpg"
            frame = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if frame is None:
                raise RecordingError(f"{path} cannot be read as an image")
            yield frame_id, frame
    else:
        raise RecordingError(f"{archive}/manifest.json names neither files.video nor files.frames")
