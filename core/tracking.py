"""Tracking sheets along a recording from the frames themselves (pure: arrays in, sheets out).

The inspection camera looks down on the roller table across its whole width. A sheet
on the table shows two edges running along the line: a step up in brightness at its
left edge and a step down at its right. The empty table between sheets has none (its
rollers run across the width and fade out smoothly). Each frame is reduced, where it
is decoded, to one small profile per block of ``EDGE_BLOCK`` rows:

* ``edges``: the columns of the strongest rise (left half) and fall (right half), and
* ``contrast``: the weaker of those two steps, in grey levels.

On the twin's recordings table blocks stay below 5 grey levels and steel blocks above
12 (60-sheet recording, 22,600 blocks), whatever the camera's gain and glare, which a
brightness threshold does not manage: a dim sheet and a glaring roller overlap.

Tracking lays every block on the recording's scan lines (frame number x lines per
frame + row), takes blocks above the contrast threshold as steel, and each long enough
run of steel as one sheet. Lines no frame showed (frames the recorder dropped) end a
sheet: a sheet across them is reported as two incomplete ones, never two sheets as one.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

EDGE_BLOCK = 8  # rows averaged for one profile entry
STEP = 8  # columns across which an edge step is measured
MIN_CONTRAST = 8.0  # grey-level step of a sheet edge; the table stays below 5


def frame_profile(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(contrast (B,) float32, edges (B, 2) int16) of one grey frame, B = ceil(H / 8)."""
    h, w = frame.shape
    blocks = -(-h // EDGE_BLOCK)
    padded = np.zeros((blocks * EDGE_BLOCK, w), np.float32)
    padded[:h] = frame
    padded[h:] = frame[-1]
    rows = cv2.blur(padded.reshape(blocks, EDGE_BLOCK, w).mean(axis=1), (9, 1))
    step = np.zeros_like(rows)
    step[:, STEP // 2 : -STEP // 2] = rows[:, STEP:] - rows[:, :-STEP]
    half = w // 2
    left = np.argmax(step[:, :half], axis=1)
    right = half + np.argmin(step[:, half:], axis=1)
    picked = np.arange(blocks)
    contrast = np.minimum(step[picked, left], -step[picked, right]).astype(np.float32)
    return contrast, np.stack([left, right], axis=1).astype(np.int16)


@dataclass(frozen=True)
class TrackedSheet:
    index: int
    first_line: int  # recording scan lines, inclusive
    last_line: int
    complete: bool  # head and tail seen (not cut by the recording's start or end)
    x_min: int | None  # sheet edge columns (median over its rows)
    x_max: int | None

    @property
    def length_lines(self) -> int:
        return self.last_line - self.first_line + 1


def track_sheets(
    first_lines: np.ndarray,
    contrast: np.ndarray,
    edges: np.ndarray,
    min_length: int,
    min_gap: int,
    threshold: float = MIN_CONTRAST,
) -> list[TrackedSheet]:
    """Sheets from per-frame profiles.

    first_lines (F,): scan line of each frame's first row, in recording order;
    contrast (F, B) and edges (F, B, 2) from ``frame_profile``; min_length: shortest
    sheet in lines (shorter runs are noise); min_gap: shortest table run in lines that
    separates two sheets (shorter ones inside a sheet are ignored).
    """
    if len(first_lines) == 0:
        return []
    first_lines = np.asarray(first_lines, np.int64)
    lines_per_frame = contrast.shape[1] * EDGE_BLOCK
    start = int(first_lines.min())
    total = int(first_lines.max()) + lines_per_frame - start
    state = np.full(total, -1, np.int8)  # -1 unseen, 0 table, 1 steel
    edge_of = np.full((total, 2), -1, np.int32)
    for line, c, e in zip(first_lines - start, contrast, edges, strict=True):
        state[line : line + lines_per_frame] = np.repeat(c >= threshold, EDGE_BLOCK)
        edge_of[line : line + lines_per_frame] = np.repeat(e, EDGE_BLOCK, axis=0)
    seen = state >= 0
    steel = state == 1
    sheets = []
    for first, last in _merge(_runs(steel), min_gap, seen):
        if last - first + 1 < min_length:
            continue
        rows = slice(first, last + 1)
        known = seen[rows] & (state[rows] == 1)
        x_min = int(np.median(edge_of[rows, 0][known])) if known.any() else None
        x_max = int(np.median(edge_of[rows, 1][known])) if known.any() else None
        complete = first > 0 and last < total - 1 and bool(seen[first - 1] and seen[last + 1])
        sheets.append(
            TrackedSheet(len(sheets), first + start, last + start, complete, x_min, x_max)
        )
    return sheets


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    change = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(change[::2], change[1::2], strict=True)]


def _merge(runs: list[tuple[int, int]], min_gap: int, seen: np.ndarray) -> list[tuple[int, int]]:
    """Runs joined across short gaps of table; never across lines no frame showed."""
    merged: list[tuple[int, int]] = []
    for first, last in runs:
        if merged and first - merged[-1][1] - 1 < min_gap and seen[merged[-1][1] + 1 : first].all():
            merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged
