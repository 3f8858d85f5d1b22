"""Pictures for people: a frame with its defects drawn, and a sheet's defect map to scale.

Colours are per class (its position in the model's classes, ``class_id - 1`` for the
Severstal classes), the same in the API's overlay, the quality page and `sheet-map` PNGs.
Text uses OpenCV's built-in Hershey font: nothing is read from disk or fetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from core.rle import rle_decode

# BGR, one per class position
PALETTE = ((0, 215, 255), (255, 200, 0), (255, 0, 200), (0, 0, 255), (0, 200, 0))
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK = (40, 40, 40)


def colour(class_position: int) -> tuple[int, int, int]:
    return PALETTE[class_position % len(PALETTE)]


def hex_colour(class_position: int) -> str:
    b, g, r = colour(class_position)
    return f"#{r:02x}{g:02x}{b:02x}"


def overlay(frame: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """The grey frame (H, W) as BGR with each class's mask (H, W bool, by class position)
    tinted and outlined in its colour."""
    picture = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    for c, mask in enumerate(masks):
        if not mask.any():
            continue
        tint = np.array(colour(c), np.float32)
        picture[mask] = (picture[mask].astype(np.float32) * 0.55 + tint * 0.45).astype(np.uint8)
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(picture, contours, -1, colour(c), 1)
    return picture


def png(picture: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", picture)
    if not ok:
        raise RuntimeError("the picture could not be encoded as PNG")
    return data.tobytes()


@dataclass(frozen=True)
class MapDefect:
    """One defect as the warehouse has it (the defects table)."""

    class_id: int
    class_name: str
    rle: str  # in its frame
    bbox: tuple[int, int, int, int]  # x_min, y_min, x_max, y_max in the frame
    x_mm: float  # its centre, from the sheet's head
    y_mm: float  # its centre, from the sheet's edge


@dataclass(frozen=True)
class SheetOutline:
    title: str
    length_mm: float
    width_mm: float
    mm_per_px: float
    frame_shape: tuple[int, int]  # (height, width) of the recording's frames


def _outline_mm(defect: MapDefect, sheet: SheetOutline) -> list[np.ndarray]:
    """The defect's mask outlines in sheet millimetres: (along, across) per point."""
    x0, y0, x1, y1 = defect.bbox
    mask = rle_decode(defect.rle, sheet.frame_shape)[y0 : y1 + 1, x0 : x1 + 1]
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    centre_row, centre_col = (y1 - y0) / 2, (x1 - x0) / 2
    out = []
    for contour in contours:
        points = contour[:, 0, :].astype(np.float64)  # (col, row) inside the box
        along = defect.x_mm + (points[:, 1] - centre_row) * sheet.mm_per_px
        across = defect.y_mm + (points[:, 0] - centre_col) * sheet.mm_per_px
        out.append(np.stack([along, across], axis=1))
    return out


def sheet_map(
    sheet: SheetOutline, defects: Sequence[MapDefect], width_px: int = 1600
) -> np.ndarray:
    """The sheet drawn to scale (head on the left, length along x), each defect's outline
    in its class's colour with a ring around it so that a pit a few pixels wide is seen
    at any scale, a millimetre grid, and a legend with each class's count. BGR."""
    if not (sheet.length_mm > 0 and sheet.width_mm > 0):
        raise ValueError(f"{sheet.title}: the sheet has no measured length and width to draw")
    margin_left, margin_top, legend_h = 70, 56, 40
    scale = (width_px - margin_left - 30) / sheet.length_mm  # px per mm
    plate_w = round(sheet.length_mm * scale)
    plate_h = max(40, round(sheet.width_mm * scale))
    height = margin_top + plate_h + 40 + legend_h
    picture = np.full((height, width_px, 3), 255, np.uint8)

    def to_px(along: np.ndarray, across: np.ndarray) -> np.ndarray:
        x = margin_left + np.clip(along, 0, sheet.length_mm) * scale
        y = margin_top + np.clip(across, 0, sheet.width_mm) * scale
        return np.stack([x, y], axis=-1).round().astype(np.int32)

    cv2.putText(picture, sheet.title, (margin_left, 24), FONT, 0.6, INK, 1, cv2.LINE_AA)
    top_left = (margin_left, margin_top)
    bottom_right = (margin_left + plate_w, margin_top + plate_h)
    cv2.rectangle(picture, top_left, bottom_right, (225, 225, 225), -1)
    step = _grid_step(sheet.length_mm)
    for mm in np.arange(0, sheet.length_mm + 1e-6, step):
        x = margin_left + round(mm * scale)
        cv2.line(picture, (x, margin_top), (x, margin_top + plate_h), (200, 200, 200), 1)
        label = f"{mm:.0f}"
        cv2.putText(
            picture, label, (x - 4 * len(label), margin_top + plate_h + 16), FONT, 0.4, INK, 1
        )
    for mm in np.arange(0, sheet.width_mm + 1e-6, step):
        y = margin_top + round(mm * scale)
        cv2.line(picture, (margin_left, y), (margin_left + plate_w, y), (200, 200, 200), 1)
        cv2.putText(picture, f"{mm:.0f}", (8, y + 4), FONT, 0.4, INK, 1)
    cv2.rectangle(picture, top_left, bottom_right, INK, 1)
    cv2.putText(
        picture,
        f"mm from the head ({sheet.length_mm:.0f} x {sheet.width_mm:.0f} mm)",
        (margin_left, margin_top + plate_h + 34),
        FONT,
        0.45,
        INK,
        1,
        cv2.LINE_AA,
    )
    counts: dict[tuple[int, str], int] = {}
    for d in defects:
        ink = colour(d.class_id - 1)
        counts[(d.class_id, d.class_name)] = counts.get((d.class_id, d.class_name), 0) + 1
        outlines = [to_px(o[:, 0], o[:, 1]) for o in _outline_mm(d, sheet)]
        cv2.polylines(picture, [o.reshape(-1, 1, 2) for o in outlines], True, ink, 2)
        centre = tuple(int(v) for v in to_px(np.array(d.x_mm), np.array(d.y_mm)))
        cv2.circle(picture, centre, 7, ink, 2, cv2.LINE_AA)
    x = margin_left
    y = height - legend_h // 2
    for (class_id, name), n in sorted(counts.items()):
        cv2.circle(picture, (x + 6, y - 4), 6, colour(class_id - 1), -1)
        text = f"{name}: {n}"
        cv2.putText(picture, text, (x + 18, y), FONT, 0.5, INK, 1, cv2.LINE_AA)
        x += 40 + 10 * len(text)
    if not counts:
        cv2.putText(picture, "no defects found", (x, y), FONT, 0.5, INK, 1, cv2.LINE_AA)
    return picture


def _grid_step(length_mm: float) -> float:
    """A round grid step giving about ten lines along the sheet."""
    for step in (10, 20, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if length_mm / step <= 12:
            return float(step)
    return 10_000.0
