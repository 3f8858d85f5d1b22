"""Sheet maps and frame pictures from the warehouse, for `steelsight sheet-map`, claims and
QA reports, and the quality page (which shows the same pictures).

Callers pass a cursor of ``Warehouse.reader()``; frames are read from the recording
itself, where the archives table says it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core import drawing
from core.rle import rle_decode
from tasks.archives import ArchiveError, FrameError, decode_frames, frame_sources, read_manifest
from warehouse import reads


class SheetMapError(ValueError):
    """What was asked for is not in the warehouse or cannot be drawn; says what to do."""


def resolve(cur, archive: str, sheet: str) -> tuple[str, int]:
    """(archive_id, sheet_index) of an archive given by id or folder name and a sheet given
    by its index in the recording or its identified ID."""
    archive_id = reads.find_archive(cur, archive)
    if archive_id is None:
        raise SheetMapError(
            f"no inspected archive {archive!r} in the warehouse: give its archive_id or its "
            'folder\'s name (`steelsight sql "SELECT archive_id, path FROM archives"`), and '
            "inspect it first (`steelsight inspect`)"
        )
    index = reads.find_sheet(cur, archive_id, sheet)
    if index is None:
        raise SheetMapError(
            f"archive {archive_id} has no sheet {sheet!r}: give the sheet's index in the "
            "recording (0, 1, ...) or its identified sheet ID"
        )
    return archive_id, index


def _geometry(sheet: dict) -> tuple[float, tuple[int, int]]:
    """The recording's mm per pixel and frame (height, width): from the archives table, or
    from the recording's manifest for archives inspected before the table kept them."""
    if sheet["mm_per_px"] and sheet["frame_width"] and sheet["frame_height"]:
        return float(sheet["mm_per_px"]), (int(sheet["frame_height"]), int(sheet["frame_width"]))
    try:
        manifest = read_manifest(Path(sheet["path"]))
    except ArchiveError as error:
        raise SheetMapError(f"the recording's scale is not known: {error}") from None
    return manifest.mm_per_px, (manifest.frame_height, manifest.frame_width)


def sheet_map(cur, archive_id: str, sheet_index: int, width_px: int = 1600) -> np.ndarray:
    """The sheet's map (core.drawing.sheet_map), BGR."""
    sheet = reads.sheet_to_draw(cur, archive_id, sheet_index)
    if sheet is None:
        raise SheetMapError(f"archive {archive_id} has no sheet {sheet_index}")
    if not (sheet["length_mm"] and sheet["width_mm"]):
        raise SheetMapError(
            f"sheet {sheet_index} of {archive_id} was not measured (its head or its edges are "
            "outside the recording), so it cannot be drawn to scale"
        )
    mm_per_px, frame_shape = _geometry(sheet)
    found = reads.sheet_defects(cur, archive_id, sheet_index)
    defects = [
        drawing.MapDefect(
            d["class_id"], d["class_name"], d["rle"], tuple(d["bbox"]), d["x_mm"], d["y_mm"]
        )
        for d in found
        if d["x_mm"] is not None and d["y_mm"] is not None
    ]
    seen = f", seen {sheet['seen_at']:%Y-%m-%d %H:%M} UTC" if sheet["seen_at"] else ""
    unplaced = len(found) - len(defects)
    title = (
        f"sheet {sheet['sheet_id']} - {archive_id} #{sheet_index}{seen} - "
        f"grade {sheet['grade']} - {sheet['n_defects']} defects"
        + (f" ({unplaced} not drawn: the sheet's edge was not found there)" if unplaced else "")
    )
    outline = drawing.SheetOutline(
        title, sheet["length_mm"], sheet["width_mm"], mm_per_px, frame_shape
    )
    return drawing.sheet_map(outline, defects, width_px)


def write_sheet_map(cur, archive_id: str, sheet_index: int, out: Path) -> Path:
    """The map as a PNG file, written whole or not at all."""
    data = drawing.png(sheet_map(cur, archive_id, sheet_index))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_bytes(data)
    partial.replace(out)
    return out


def frame_overlay(cur, archive_id: str, frame_id: str) -> np.ndarray:
    """One frame of a recording with the defects found on it drawn, BGR."""
    path = reads.archive_location(cur, archive_id)
    if path is None:
        raise SheetMapError(f"no archive {archive_id} in the warehouse")
    try:
        ids, video, frames_dir = frame_sources(Path(path))
        position = ids.index(frame_id)
        frame = next(decode_frames(video, frames_dir, position, [frame_id]))
    except ValueError:
        raise SheetMapError(f"{path} has no frame {frame_id!r} in its index") from None
    except (ArchiveError, FrameError) as error:
        raise SheetMapError(
            f"frame {frame_id!r} of {archive_id} cannot be read: {error} (is the recording "
            "still where the archives table says?)"
        ) from None
    found = reads.frame_defects(cur, archive_id, frame_id)
    classes = max((d["class_id"] for d in found), default=0)
    masks = np.zeros((max(classes, 1), *frame.shape), bool)
    for d in found:
        masks[d["class_id"] - 1] |= rle_decode(d["rle"], frame.shape).astype(bool)
    return drawing.overlay(frame, masks)
