"""The steel around a marking as an imprint: what identifies a sheet when its paint does not.

Between the marking station and the inspection camera the paint is wiped, blurred and
lit differently, but the steel around it is the same steel: its rolling streaks, scale
spots and mottle sit where they sat. Two pictures of the same sheet, aligned on the
marking, correlate; pictures of two sheets do not (however alike their IDs, fonts and
paint). This module turns a picture and a marking box into

- a *descriptor*: the band-passed steel of a window around the marking, paint masked
  out, at an eighth of the resolution, L2-normalised: a cosine similarity with another
  is their correlation without shifting, cheap enough to search every registered sheet;
- a *template*: the same window at half resolution with finer detail, for verification:
  the query's window is aligned on a candidate's template by the best normalised
  correlation over small shifts and rotations, and scored by how far all of it agrees
  there (the lower quartile of its tiles' correlations), evidence a wrong sheet does not
  produce by chance, even one scratched where the right sheet is.

The station photographs a sheet at a tilt; its window is turned upright on the
marking's own text line (``text_angle``), so that both views share one frame of
reference. Pictures are grey uint8; boxes are (x_min, y_min, x_max, y_max), inclusive.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np

from core.tracking import EDGE_BLOCK, MIN_CONTRAST, frame_profile

WINDOW = (224, 560)  # rows, columns around the marking's centre, at full resolution
# pixels masked around the paint's box (rows, columns): a detector's box of a wiped or
# blurred marking is often short of the paint at the text's ends
PAINT_MARGIN = (6, 20)


class Band(NamedTuple):
    """A band-pass: the blur that takes out the camera's noise and the blur subtracted
    (light, mottle), Gaussian sigmas in full-resolution pixels; where the band-passed
    values are cut (``clip`` robust standard deviations either way; None: never); and
    the resolution it is computed at (``scale`` of the picture's: 1, 1/2, 1/4...): the
    picture is averaged over blocks first, and the windows are turned at that scale."""

    noise: float
    background: float
    clip: float | None = None
    scale: float = 1.0


# Retrieval's descriptor is band-passed at half resolution: it is kept at an eighth, and
# its 16-px background blur at full resolution took three quarters of describe's time
# on 2 cores. Against the full-resolution band-pass (3,234 descriptors of the bench's
# line, 294 boxes): cosine 0.999 (median), 0.995 (5th percentile); describe took 0.47 s
# instead of 2.03 (docs/benchmarks.md, "Identification's band-passes at half
# resolution").
DESCRIPTOR_BAND = Band(2.0, 16.0, scale=0.5)
DESCRIPTOR_SCALE = 0.125  # 1,960 values; at 0.25 (7,840) no better after verification
# Verification cuts the band-passed steel at 3 robust standard deviations: a scratch or
# a dark scale line near the marking outweighs the rest of the window's steel, and two
# sheets that each have one there correlated as much as a worn view of the right sheet
# (impostors up to 0.40, against 0.29-0.30 cut; twin ground-truth boxes, 1,000 sheets
# each of seeds 13 and 15, docs/benchmarks.md).
# Verification's band-pass is taken at half resolution too, the template's own: the
# windows are turned there and not shrunk after. The same sheets were named on
# 1,000-sheet recordings (seeds 13, 15, 17; a default detector's boxes), the right
# sheets' mean score fell by 0.005 and identification took 59 ms per marking instead
# of 71 (docs/benchmarks.md, "Identification's band-passes at half
# resolution").
TEMPLATE_BAND = Band(2.0, 6.0, clip=3.0, scale=0.5)
TEMPLATE_SCALE = 0.5
# a station's descriptor is also taken turned this much either side: the text line's
# angle is off by a few degrees now and then (wiped paint, glare)
DESCRIPTOR_TURNS = (-4.0, 0.0, 4.0)
# shifts tried in verification, full-resolution pixels each way (rows, columns), about
# the shift retrieval found: two views' boxes of one marking put its centre 6 px apart
# (median) and up to 30 along the text, a few across it (the detector's boxes of sheets
# at seed 12 against the twin's)
SEARCH_PX = (12, 32)
# the query's descriptor is also taken with its window moved this far along the text,
# so that retrieval tolerates a detector's box that is short of the text's end or long
# (the nearest at any shift counts, and verification searches about that shift): of
# the sheets whose right sheet retrieval missed at +-24 px, most had boxes 30 to 60 px
# off along the text (1,000 sheets, seed 13)
DESCRIPTOR_SHIFTS = (-48.0, -36.0, -24.0, -16.0, -8.0, 0.0, 8.0, 16.0, 24.0, 36.0, 48.0)
SEARCH_DEGREES = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)  # residual rotations tried
# the best candidate is tried again this many degrees either side of the rotation it
# scored best at, then half that either side of the better: the search's 2-degree steps
# leave the text's angle up to a degree from the nearest, and one degree cost a seed-13
# sheet (its station picture tilted 14 degrees) 0.03 of its correlation and its
# verification (0.435 -> 0.407); on the synthetic sheets of tests/unit/test_surface.py
# it costs 0.21
REFINE_DEGREES = 1.0
# what a registered surface imprint holds, as stored (warehouse sheet_references)
DESCRIPTOR_SHAPE = (
    len(DESCRIPTOR_TURNS),
    round(WINDOW[0] * DESCRIPTOR_SCALE) * round(WINDOW[1] * DESCRIPTOR_SCALE),
)
TEMPLATE_SHAPE = tuple(
    round((n + 2 * k) * TEMPLATE_SCALE) for n, k in zip(WINDOW, SEARCH_PX, strict=True)
)
FORMAT = (
    f"steel/4 band {tuple(DESCRIPTOR_BAND)} x{DESCRIPTOR_SCALE} descriptor {DESCRIPTOR_SHAPE}; "
    f"band {tuple(TEMPLATE_BAND)} x{TEMPLATE_SCALE} template {TEMPLATE_SHAPE} float16"
)
CANDIDATES = 5  # registered sheets verified per marking: the nearest by descriptor
# A candidate's verified score is not its window's correlation as a whole but the
# lower quartile of its tiles' (``_spread``), at the shift and turn the whole correlated
# best: the same sheet's steel agrees all over the window, while two sheets agree where
# each has a scratch or a scale line in the same place, and such a line outweighs the
# rest of the window. At seed 17 two sheets with long bright scratches beside their
# markings correlated at 0.452 as wholes, above the threshold; their tiles' lower
# quartile is -0.076. Twin boxes, 1,000 sheets of seed 17 (docs/benchmarks.md):
# impostors' max 0.45 -> 0.20, the genuine sheets' least 0.55 -> 0.45. Tiles of 56 x
# 28 px (at template scale: 112 x 56 on the line's camera) cross a scratch along the
# rolling direction in one or two of the ten columns.
SPREAD_TILES = (2, 10)  # rows, columns of tiles over the window
SPREAD_QUANTILE = 0.25
SPREAD_LEAST_STEEL = 0.3  # a tile with less steel than this (paint, table) does not count
SPREAD_LEAST_TILES = 4  # fewer tiles counting than this: no evidence
# The verified score (``_spread``) at which a candidate is accepted. On a twin
# recording (100 sheets, strong distortion, seed 11) with a default-size detector's
# boxes, `steelsight evaluate identity`'s calibration asks 0.173 for 0.1 % wrong IDs
# per query (impostors' max 0.135, the tail beyond their 95th percentile extrapolated);
# the whole window's correlation asked 0.322 there and was set at 0.41. It is 0.30, a
# margin both ways: with the twin's boxes on 1,000-sheet recordings (seeds 13, 15, 17)
# no impostor scored over 0.214 and only one right sheet under 0.40 (-0.01: an
# overexposed station picture, 0.40 as a whole window, lost either way). It does not
# depend on how many sheets are registered, since only the nearest few are verified.
# Settings can replace it (identity_threshold) after calibrating on a plant's own pairs.
VERIFY_THRESHOLD = 0.30


# a station's text line lies within this many degrees of level (the twin tilts its
# station pictures by 4 degrees, one standard deviation): a stroke mask whose major axis
# lies further off follows the steel's rolling streaks, not the text
MOST_TILT = 20.0
# when the strokes and the paint put the text's angle further apart than this (degrees),
# a station registers the marking at both (``text_angles``): the descriptors are taken
# 4 degrees either side and verification searches 6, so a 3-degree doubt is no doubt
ANGLE_DOUBT = 3.0


@dataclass(frozen=True)
class Surface:
    """A marking's surface imprint: where it is, and its descriptor and template."""

    angle: float  # degrees the picture was turned to make the text level
    descriptor: np.ndarray  # float32 (k, D), L2-normalised: at the angle and either side
    template: np.ndarray  # float32 (h, w): band-passed window and search margin, half scale


def text_angles(picture: np.ndarray, box: Sequence[float]) -> tuple[float, ...]:
    """The turns in degrees that may level the marking's text line (as
    ``cv2.getRotationMatrix2D`` takes them), the surer first: the major axis of its
    paint strokes (``_strokes``, bright or dark, whichever lies along a line more
    clearly, within ``MOST_TILT`` of level), and that of the paint's pixels (Otsu on the
    box's grey levels) when it lies more than ``ANGLE_DOUBT`` away. Otsu alone is led
    off by light that is uneven across the box: it splits the bright side from the dark
    one (8.6 degrees off at a seed-13 station), which the strokes, narrower than a
    letter, are not; it is off by more than 5 degrees on 12 or 13 of 1,000 station
    pictures, the strokes on 2 to 5, and one of the two on 2 (detector boxes, seeds 13
    and 15, against the twin's own tilt)."""
    inside, _, _ = _inside(picture, box)
    if inside.size == 0:
        return (0.0,)
    by_paint = _major_axis(_paint(inside))
    by_strokes = _major_axis([strokes for _, strokes in _strokes(inside)], MOST_TILT)
    if by_strokes is None:
        return (by_paint if by_paint is not None else 0.0,)
    if by_paint is None or abs(by_paint - by_strokes) <= ANGLE_DOUBT:
        return (by_strokes,)
    return by_strokes, by_paint


def text_angle(picture: np.ndarray, box: Sequence[float]) -> float:
    """The turn in degrees that most likely levels the marking's text line
    (``text_angles``)."""
    return text_angles(picture, box)[0]


def _major_axis(masks: Iterable[np.ndarray], most: float = 90.0) -> float | None:
    """The angle (degrees, as ``text_angle`` gives it) of the major axis of the mask
    whose pixels lie along a line most clearly, of those with at least 50 pixels and
    within ``most`` degrees of level; None when there is none."""
    best, angle = 0.0, None
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if len(xs) < 50:
            continue
        values, vectors = np.linalg.eigh(np.cov(np.stack([xs, ys]).astype(np.float64)))
        elongation = values[1] / max(values[0], 1e-9)
        dx, dy = vectors[:, 1]
        turn = (float(np.degrees(np.arctan2(dy, dx))) + 90.0) % 180.0 - 90.0  # y points down
        if elongation > best and abs(turn) <= most:
            best, angle = elongation, turn
    return angle


def _inside(picture: np.ndarray, box: Sequence[float]) -> tuple[np.ndarray, int, int]:
    """The part of the picture inside the box (cut to the picture), and its top-left
    corner (x, y)."""
    x0, y0, x1, y1 = (round(float(v)) for v in box[:4])
    h, w = picture.shape
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w - 1, x1), min(h - 1, y1)
    return np.ascontiguousarray(picture[y0 : y1 + 1, x0 : x1 + 1]), x0, y0


def _paint(inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bright and dark paint candidates in a box's grey levels (``inside``, not empty):
    Otsu on them."""
    level, _ = cv2.threshold(inside, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return inside > level, inside <= level


# A box whose paint mask (the box and ``PAINT_MARGIN``) would cover more than this part
# of the window leaves too little steel to verify: the detector has boxed the marking
# together with something beside it (a scale patch along the text: boxes of 747 x 211
# px around markings of 376 x 73, seed 15), and the text inside it is found instead
# (``text_box``). A whole marking's box covers 0.25 (median) and 0.39 at most (the
# twin's boxes, 1,000 sheets each of seeds 11 and 15)
OVERSIZED = 0.5
# paint strokes are narrower than this (px): a stencilled letter's stroke is 8 to 10 px
# on the line's camera, a letter 60 to 75 px tall
STROKE = 25
# a stroke stands this many robust standard deviations above the steel around it
STROKE_CONTRAST = 4.0


def oversized(box: Sequence[float]) -> bool:
    """Whether the paint mask of a box would cover more than ``OVERSIZED`` of the window."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    masked = (x1 - x0 + 1 + 2 * PAINT_MARGIN[1]) * (y1 - y0 + 1 + 2 * PAINT_MARGIN[0])
    return masked > OVERSIZED * WINDOW[0] * WINDOW[1]


def text_box(picture: np.ndarray, box: Sequence[float]) -> tuple[float, float, float, float]:
    """The box of the line of text inside an oversized ``box`` (``oversized``); ``box``
    itself when it is not oversized or no line of text is found in it. Paint strokes,
    bright or dark, are what a top-hat (or black-hat) narrower than ``STROKE`` keeps,
    ``STROKE_CONTRAST`` robust standard deviations above the box's median; strokes are
    closed along the line into words, and the words on the rows of a word join it
    (``_line``); the line's rows are those where its strokes are dense. The text is the
    line that holds the most stroke contrast, at least twice as wide as tall and as
    tall as a stroke's widest (a bright row along the sheet's edge is no text).
    Verification is the judge of it: a box on something else verifies as no registered
    sheet."""
    given = tuple(float(v) for v in box[:4])
    if not oversized(box):
        return given
    inside, x0, y0 = _inside(picture, box)
    if inside.size == 0:
        return given
    along = cv2.getStructuringElement(cv2.MORPH_RECT, (STROKE, 5))
    best, found = 0.0, None
    for contrast, strokes in _strokes(inside):
        words = cv2.morphologyEx(strokes, cv2.MORPH_CLOSE, along)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(words)
        held = np.bincount(labels.ravel(), (contrast * strokes).ravel(), n)[1:]
        boxes = stats[1:, :4].astype(np.int64)  # left, top, width, height
        for seed in np.argsort(-held)[:5]:
            joined = _line(boxes, int(seed))
            left, top, right, bottom = (
                int(boxes[joined, 0].min()),
                int(boxes[joined, 1].min()),
                int((boxes[joined, 0] + boxes[joined, 2]).max()) - 1,
                int((boxes[joined, 1] + boxes[joined, 3]).max()) - 1,
            )
            # its rows: where the strokes are dense (a scratch crossing a letter, closed
            # into its word, hangs below the text)
            dense = strokes[top : bottom + 1, left : right + 1].sum(axis=1)
            if not dense.any():
                continue
            rows = np.flatnonzero(dense >= 0.2 * dense.max())
            top, bottom = top + int(rows[0]), top + int(rows[-1])
            strength = float(held[joined].sum())
            tall = bottom - top + 1
            if tall >= STROKE and right - left + 1 >= 2 * tall and strength > best:
                best, found = strength, (x0 + left, y0 + top, x0 + right, y0 + bottom)
    return tuple(float(v) for v in found) if found else given


def _strokes(inside: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Paint strokes in a box's grey levels (``inside``), bright and then dark: the
    contrast a top-hat (black-hat) narrower than ``STROKE`` keeps (float32) and where it
    stands ``STROKE_CONTRAST`` robust standard deviations above its median (uint8 1/0)."""
    square = cv2.getStructuringElement(cv2.MORPH_RECT, (STROKE, STROKE))
    for hat in (cv2.MORPH_TOPHAT, cv2.MORPH_BLACKHAT):
        contrast = cv2.morphologyEx(inside, hat, square).astype(np.float32)
        median = float(np.median(contrast))
        spread = 1.4826 * float(np.median(np.abs(contrast - median)))
        yield contrast, (contrast > median + STROKE_CONTRAST * max(spread, 1.0)).astype(np.uint8)


def _line(boxes: np.ndarray, seed: int) -> list[int]:
    """The words (``boxes``: left, top, width, height) on the line of word ``seed``:
    joined one by one while one lies on the seed's rows (seven tenths of its own height
    within them, and at least half as tall as the seed) and at most twice the seed's
    height from the line's ends, as a wiped letter or a hyphen leaves a gap. A scale
    patch beside the text is taller than its letters or spills past their rows."""
    joined = [seed]
    left, top = int(boxes[seed, 0]), int(boxes[seed, 1])
    right, bottom = left + int(boxes[seed, 2]), top + int(boxes[seed, 3])
    height = bottom - top
    grown = True
    while grown:
        grown = False
        for k, (bl, bt, bw, bh) in enumerate(boxes.tolist()):
            if k in joined:
                continue
            shared = min(bottom, bt + bh) - max(top, bt)
            gap = max(bl - right, left - (bl + bw))
            if shared >= 0.7 * bh and bh >= 0.5 * height and gap <= 2 * height:
                joined.append(k)
                left, right = min(left, bl), max(right, bl + bw)
                grown = True
    return joined


def _band(picture: np.ndarray, band: Band, seams: Sequence[int] = ()) -> np.ndarray:
    """Band-passed grey levels at the picture's own resolution (``band.scale`` aside);
    the parts between ``seams`` (rows where frames taken under other light meet) each on
    their own, so that no seam shows as an edge."""
    edges = [0, *sorted(int(r) for r in seams), picture.shape[0]]
    parts = []
    for top, bottom in itertools.pairwise(edges):
        f = picture[top:bottom].astype(np.float32)
        if band.noise > 0:
            f = cv2.GaussianBlur(f, (0, 0), band.noise)
        parts.append(f - cv2.GaussianBlur(f, (0, 0), band.background))
    return np.concatenate(parts)


def _block(band: Band) -> int:
    """The side of the blocks (full-resolution pixels) a band's picture is averaged over."""
    block = round(1.0 / band.scale)
    if block < 1 or abs(block * band.scale - 1.0) > 1e-9:
        raise ValueError(f"band scale {band.scale}: must be 1, 1/2, 1/3...")
    return block


def _at_block(band: Band, block: int) -> Band:
    """``band``'s sigmas in pixels of a picture averaged over ``block`` x ``block``
    blocks: the averaging is itself a blur (variance (block² - 1) / 12 per axis), taken
    off the noise blur's."""
    if block == 1:
        return band
    noise = np.sqrt(max(band.noise**2 - (block * block - 1) / 12.0, 0.0))
    return band._replace(noise=float(noise) / block, background=band.background / block)


def steel_mask(frame: np.ndarray) -> np.ndarray:
    """Where an inspection frame (or frames stitched in line order) shows a sheet
    (float32 1/0): the rows whose edge profile finds a sheet (core.tracking), between
    its two edges; not the roller table. Each run of such rows is one sheet, and its
    edges are the median of its rows' (as tracking measures a sheet's): one block's
    strongest step is sometimes a scratch or the paint's edge, not the sheet's, most of
    all in a dark frame, where the sheet's own edge steps little (a seed-15 marking's
    window kept 0.3 of its steel and could not be verified; docs/benchmarks.md)."""
    contrast, edges = frame_profile(frame)
    mask = np.zeros(frame.shape, np.float32)
    blocks = np.flatnonzero(contrast >= MIN_CONTRAST)
    for run in np.split(blocks, np.flatnonzero(np.diff(blocks) > 1) + 1):
        if not len(run):
            continue
        left, right = (int(v) for v in np.median(edges[run], axis=0))
        mask[run[0] * EDGE_BLOCK : (run[-1] + 1) * EDGE_BLOCK, left + 4 : right - 3] = 1.0
    return mask


@dataclass(frozen=True)
class _Banded:
    """The part of a picture a turned window around its marking can reach, band-passed
    once for every turn taken of it, at ``scale`` of the picture's resolution, with its
    steel mask, the box and the corners of the marking's text in its coordinates (at
    that scale)."""

    picture: np.ndarray
    shown: np.ndarray  # uint8 1/0: steel, less a margin along the sheet's edges
    box: tuple[float, float, float, float]
    text: np.ndarray  # float32 (4, 2): the text's rectangle (x, y), its margin included
    scale: float = 1.0


def text_corners(box: Sequence[float], angle: float = 0.0) -> np.ndarray:
    """The corners (4, 2: x, y) of the rectangle a marking's text fills, ``PAINT_MARGIN``
    around it, when ``box`` is the upright box around that text lying at ``angle`` (the
    turn that levels it, ``text_angle``). A box around tilted text is mostly steel: at
    9 degrees a 380 x 130 box holds text 375 x 75. The text's own size follows from the
    box's: (w, h) = (W c + H s, W s + H c), c and s of the angle. Past 30 degrees (where
    that solution grows unstable), or when it is not a rectangle inside the box, the box
    itself is the text."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    c, s = abs(np.cos(np.radians(angle))), abs(np.sin(np.radians(angle)))
    text_w, text_h = (
        (width * c - height * s) / (c * c - s * s),
        (height * c - width * s) / (c * c - s * s),
    )
    if abs(angle) > 30.0 or not (0 < text_w <= width and 0 < text_h <= height):
        text_w, text_h, angle = width, height, 0.0
    margin_y, margin_x = PAINT_MARGIN
    half = np.array([text_w / 2 + margin_x, text_h / 2 + margin_y], np.float32)
    level = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32) * half
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    # the level rectangle turned back by the angle, into the picture
    back = cv2.getRotationMatrix2D((0.0, 0.0), -angle, 1.0)
    return (level @ back[:, :2].T + np.array(centre, np.float32)).astype(np.float32)


def _reach(size: tuple[int, int], most_turn: float, band: tuple[float, float]) -> tuple[int, int]:
    """How far (rows, columns) from the box's centre a window of ``size`` turned by up to
    ``most_turn`` degrees either way reaches into the picture, with what band-passing it
    and eroding the steel mask read around it: the two blurs' kernels (OpenCV's reach 4
    sigma each for float32), the pixel bilinear interpolation reads, and rounding. The
    window's values are then what a band-pass of the whole picture gives."""
    half_rows, half_cols = size[0] / 2, size[1] / 2
    theta = np.radians(min(abs(float(most_turn)), 90.0))
    c, s = np.cos(theta), np.sin(theta)

    def spread(a: float, b: float) -> float:
        """The most of a cos t + b sin t for t up to theta: it grows up to t = atan2(b,
        a), where it is hypot(a, b)."""
        return np.hypot(a, b) if theta >= np.arctan2(b, a) else a * c + b * s

    rows, cols = spread(half_rows, half_cols), spread(half_cols, half_rows)
    support = 4 * (band[0] + band[1]) + 3
    return int(np.ceil(rows + support)), int(np.ceil(cols + support))


def _banded(
    picture: np.ndarray,
    box: Sequence[float],
    band: Band,
    size: tuple[int, int],
    steel: np.ndarray | None,
    seams: Sequence[int],
    text_angle: float = 0.0,
    most_turn: float = 90.0,
) -> _Banded:
    """``most_turn``: the largest turn (degrees, either way) a window of ``size`` will be
    taken at; only the part of the picture such windows reach is band-passed."""
    cx, cy = (float(box[0]) + float(box[2])) / 2, (float(box[1]) + float(box[3])) / 2
    block = _block(band)

    def down(v: int) -> int:  # to the block grid
        return v // block * block

    def up(v: int) -> int:
        return -(-v // block) * block

    # The band-passed picture's frame: a square about the box's centre that a window
    # turned any way reaches, cut by the picture, on the grid of the blocks averaged.
    # Its origin is kept whatever part of it is band-passed: warpAffine rounds sample
    # positions in fixed point, and positions on a half pixel (a window not turned)
    # round by the last bit of the coordinates, so another origin would move a few
    # pixels of the paint mask and change scores by up to 0.01; with this one every
    # value is what band-passing all of it gave.
    frame = int(np.ceil(np.hypot(*size) / 2 + 4 * band.background))
    height, width = down(picture.shape[0]), down(picture.shape[1])
    top0, left0 = max(0, down(int(cy) - frame)), max(0, down(int(cx) - frame))
    bottom0, right0 = min(height, up(int(cy) + frame + 1)), min(width, up(int(cx) + frame + 1))
    # only the part that windows turned up to ``most_turn`` read is band-passed
    reach_rows, reach_cols = _reach(size, most_turn, band)
    top, left = max(top0, down(int(cy) - reach_rows)), max(left0, down(int(cx) - reach_cols))
    bottom = min(bottom0, up(int(cy) + reach_rows + 1))
    right = min(right0, up(int(cx) + reach_cols + 1))
    inner = (
        slice((top - top0) // block, (bottom - top0) // block),
        slice((left - left0) // block, (right - left0) // block),
    )
    part = picture[top:bottom, left:right]
    part = part if block == 1 else _averaged(part, block)
    band_passed = np.zeros(((bottom0 - top0) // block, (right0 - left0) // block), np.float32)
    seams = [(r - top) // block for r in seams if 0 < r - top < bottom - top]
    band_passed[inner] = _band(part, _at_block(band, block), seams)
    shown = np.zeros(band_passed.shape, np.uint8)
    if steel is None:
        shown[inner] = 1
    else:  # less a margin along the sheet's edges, where band-passing spreads the step
        margin = 2 * round(1.5 * band.background) + 1
        steel = (steel[top:bottom, left:right] > 0.5).astype(np.uint8)
        eroded = cv2.erode(steel, np.ones((margin, margin), np.uint8))
        # a block is steel when all of it is
        shown[inner] = eroded if block == 1 else _averaged(eroded, block) > 0.99
    if band.clip is not None:
        # the spread is taken on the steel a window not turned covers, which every reach
        # holds whole: so it is the same whatever part was band-passed
        rows, cols = size[0] // 2, size[1] // 2
        core = (
            slice(
                (max(top0, int(cy) - rows) - top0) // block,
                -(-(min(bottom0, int(cy) + rows + 1) - top0) // block),
            ),
            slice(
                (max(left0, int(cx) - cols) - left0) // block,
                -(-(min(right0, int(cx) + cols + 1) - left0) // block),
            ),
        )
        band_passed[inner] = _cut(band_passed[inner], band.clip, band_passed[core], shown[core])
    framed = tuple(float(v) - d for v, d in zip(box[:4], (left0, top0) * 2, strict=True))
    # at the blocks' scale: the window turns about the box's centre scaled, which puts
    # its blocks on the full-resolution window's pixels two by two (and so on)
    text = text_corners(framed, text_angle) / block
    scaled = tuple(v / block for v in framed)
    return _Banded(band_passed, shown, scaled, text, 1.0 / block)


def _averaged(image: np.ndarray, block: int) -> np.ndarray:
    """``image`` averaged over ``block`` x ``block`` blocks (its sides are multiples of
    ``block``), in float32."""
    size = (image.shape[1] // block, image.shape[0] // block)
    return cv2.resize(image.astype(np.float32), size, interpolation=cv2.INTER_AREA)


def _cut(values: np.ndarray, clip: float, sample: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """``values`` in robust standard deviations of ``sample`` (1.4826 times the median
    absolute value, on its ``shown`` pixels when there are enough of them), cut at
    ``clip`` either way; unchanged when the sample has no spread."""
    on_steel = sample[shown > 0]
    sample = on_steel if on_steel.size >= 1000 else sample.ravel()
    spread = 1.4826 * float(np.median(np.abs(sample))) if sample.size else 0.0
    if spread <= 0.0:
        return values
    return np.clip(values / spread, -clip, clip)


def _turned(
    banded: _Banded, angle: float, size: tuple[int, int], shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The window turned by ``angle`` about the box's centre, moved ``shift`` px along
    the turned rows, with the paint and what is not steel set to 0; and its steel mask."""
    return _turned_along(banded, angle, size, [shift])[0]


def _turned_along(
    banded: _Banded, angle: float, size: tuple[int, int], shifts: Sequence[float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``_turned`` at each of ``shifts``. When they are whole pixels apart, one window as
    wide as all of them is turned, and each is a slice of it: a shift along the turned
    rows moves the window by whole columns, so each slice holds the values and mask its
    own turn would (up to warpAffine's fixed-point rounding of the sample positions).
    ``size`` and ``shifts`` are in full-resolution pixels; the windows are at the
    banded picture's scale."""
    scale = banded.scale
    shifts = [float(d) * scale for d in shifts]
    lo = min(shifts)
    offsets = [d - lo for d in shifts]
    if any(abs(o - round(o)) > 1e-6 for o in offsets):
        return [_turned_along(banded, angle, size, [d / scale])[0] for d in shifts]
    offsets = [round(o) for o in offsets]
    rows, cols = round(size[0] * scale), round(size[1] * scale)
    wide = cols + max(offsets)
    x0, y0, x1, y1 = banded.box
    centre = ((x0 + x1) / 2, (y0 + y1) / 2)
    turn = cv2.getRotationMatrix2D(centre, angle, 1.0)
    # the centre (moved by the least shift) to the middle of the narrowest window
    turn[:, 2] += (cols / 2 - centre[0] - lo, rows / 2 - centre[1])
    out = cv2.warpAffine(banded.picture, turn, (wide, rows), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(banded.shown, turn, (wide, rows), flags=cv2.INTER_NEAREST)
    # the paint: the text's rectangle (its margin included) turned with the window
    moved = cv2.transform(banded.text[None], turn)[0]
    cv2.fillConvexPoly(inside, np.round(moved * 16).astype(np.int32), 0, cv2.LINE_8, shift=4)
    valid = inside.astype(np.float32)
    out *= valid
    return [(out[:, o : o + cols], valid[:, o : o + cols]) for o in offsets]


def window(
    picture: np.ndarray,
    box: Sequence[float],
    band: Band,
    angle: float = 0.0,
    size: tuple[int, int] = WINDOW,
    steel: np.ndarray | None = None,
    seams: Sequence[int] = (),
    text_angle: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The band-passed window of ``size`` centred on the marking, turned by ``angle``
    about its centre, with the paint (and anything outside the picture) set to 0; and
    the mask of the steel in it (float32 1/0). ``steel``: where the picture shows the
    sheet (``steel_mask``); all of it when None. ``seams``: rows where the frames of a
    picture stitched from several meet. ``text_angle``: the turn that levels the text
    in the picture (``text_corners``). Both at ``band.scale`` of the picture's
    resolution."""
    banded = _banded(picture, box, band, size, steel, seams, text_angle, angle)
    return _turned(banded, angle, size)


def _scaled(image: np.ndarray, scale: float, at: float = 1.0) -> np.ndarray:
    """``image``, at ``at`` of the picture's resolution, brought to ``scale`` of it."""
    if scale == at:
        return image
    return cv2.resize(image, None, fx=scale / at, fy=scale / at, interpolation=cv2.INTER_AREA)


def imprint(
    picture: np.ndarray, box: Sequence[float], level: bool = False, angle: float | None = None
) -> Surface:
    """The surface imprint of the marking at ``box`` as a reference; ``level``: turn the
    text level first (a station picture; the inspection camera sees the sheet square), by
    ``angle`` degrees (``text_angle``'s when None). Its template is the window widened by
    the verification search, so that a query's window can be slid over it."""
    if not level:
        angle = 0.0
    elif angle is None:
        angle = text_angle(picture, box)
    turns = [angle + d for d in DESCRIPTOR_TURNS] if level else [angle]
    most = max(abs(a) for a in turns)
    banded = _banded(picture, box, DESCRIPTOR_BAND, WINDOW, None, (), angle, most)
    described = np.stack([_normalised(_turned(banded, a, WINDOW)[0]) for a in turns])
    return Surface(angle, described, _template(picture, box, angle))


def describe(
    picture: np.ndarray,
    box: Sequence[float],
    angle: float = 0.0,
    steel: np.ndarray | None = None,
    seams: Sequence[int] = (),
    shifts: Sequence[float] = (0.0,),
) -> np.ndarray:
    """The retrieval descriptors (len(shifts), D), L2-normalised: the window moved by
    each of ``shifts`` px along the text."""
    rows, cols = WINDOW
    reach = (rows, cols + 2 * int(max(abs(d) for d in shifts)))
    banded = _banded(picture, box, DESCRIPTOR_BAND, reach, steel, seams, most_turn=angle)
    turned = _turned_along(banded, angle, WINDOW, shifts)
    return np.stack([_normalised(values) for values, _ in turned])


def _normalised(band_passed: np.ndarray) -> np.ndarray:
    described = _scaled(band_passed, DESCRIPTOR_SCALE, DESCRIPTOR_BAND.scale).ravel()
    return described / max(float(np.linalg.norm(described)), 1e-9)


def _template(picture: np.ndarray, box: Sequence[float], angle: float) -> np.ndarray:
    size = tuple(n + 2 * k for n, k in zip(WINDOW, SEARCH_PX, strict=True))
    band_passed, _ = window(picture, box, TEMPLATE_BAND, angle, size, text_angle=angle)
    return _scaled(band_passed, TEMPLATE_SCALE, TEMPLATE_BAND.scale).astype(np.float32)


def verify(
    query: np.ndarray,
    box: Sequence[float],
    templates: Sequence[np.ndarray],
    steel: np.ndarray | None = None,
    turns: Sequence[float] | None = None,
    seams: Sequence[int] = (),
    degrees: Sequence[float] = SEARCH_DEGREES,
    least_steel: float = 0.3,
    shifts: Sequence[float] | None = None,
    by_spectra: bool = True,
    refine: float = REFINE_DEGREES,
    spread: bool = True,
) -> np.ndarray:
    """For each candidate's template, the best normalised correlation of the query's
    window (``query`` a picture, ``box`` its marking) slid over it, turned by each of
    ``degrees`` about the candidate's ``turns`` (the descriptor turn it matched best at;
    0 when None); only the query's steel counts (not its paint, nor what lies outside
    its picture), so a window cut by the frame's edge scores on what it shows; with the
    query's window moved each candidate's ``shifts`` px along the text first (the shift
    retrieval matched it at; 0 when None). The best candidate is then tried ``refine``
    degrees either side of its best rotation, and half that either side of the better
    (0: not). Each candidate's score is then ``_spread``'s at its best alignment: the
    correlation three quarters of the window's tiles reach, so that a scratch two
    sheets share is no evidence (``spread=False``: the whole window's correlation).
    About 0 for another sheet, 0.45 to 0.95 for the same one; -1 when less than
    ``least_steel`` of the window is steel.
    ``by_spectra=False``: each pair by ``cv2.matchTemplate`` instead, the reference the
    spectra are tested and benchmarked against (the same scores within 2e-7; per pair 3
    times slower, the whole of verification 1.4 times)."""
    scores = np.full(len(templates), -1.0, np.float32)
    turns = [0.0] * len(templates) if turns is None else list(turns)
    shifts = [0.0] * len(templates) if shifts is None else [float(s) for s in shifts]
    shown = [i for i, template in enumerate(templates) if np.any(template)]
    # every turn a window is taken at, and the shifts it is taken at for that turn
    wanted: dict[float, set[float]] = {}
    for i in shown:
        for d in degrees:
            wanted.setdefault(round(float(d) - float(turns[i]), 3), set()).add(shifts[i])
    if not wanted:
        return scores
    reach = (WINDOW[0], WINDOW[1] + 2 * int(np.ceil(max(map(abs, shifts), default=0.0))))
    most = max(abs(turn) for turn in wanted) + 1.5 * abs(refine)
    banded = _banded(query, box, TEMPLATE_BAND, reach, steel, seams, most_turn=most)

    def taken(turn: float, along: Sequence[float]) -> list[_Window | None]:
        out = []
        for band_passed, valid in _turned_along(banded, turn, WINDOW, along):
            # too little steel at this turn (a window near the sheet's head turned past
            # the table): this turn tells nothing, the others may
            if valid.mean() < least_steel:
                out.append(None)
                continue
            at = TEMPLATE_BAND.scale
            steel_part = (_scaled(valid, TEMPLATE_SCALE, at) > 0.99).astype(np.float32)
            out.append(_Window(_scaled(band_passed, TEMPLATE_SCALE, at), steel_part))
        return out

    windows: dict[tuple[float, float], _Window | None] = {}
    for turn, along in wanted.items():
        along = sorted(along)
        windows.update(((turn, a), w) for a, w in zip(along, taken(turn, along), strict=True))

    def score(i: int, slid: _Slid | None, found: _Window) -> tuple[float, int, int]:
        return _matched(templates[i], found) if slid is None else slid.best(found)

    # per candidate: its best turn, the window taken at it, and where on the template
    # that window correlated best
    best: dict[int, tuple[float, _Window, int, int]] = {}
    slids = {}
    for i in shown:
        slid = slids[i] = _Slid.of(templates[i]) if by_spectra else None
        for d in degrees:
            turn = round(float(d) - float(turns[i]), 3)
            found = windows[turn, shifts[i]]
            if found is None:
                continue
            value, row, col = score(i, slid, found)
            if value > scores[i]:
                scores[i], best[i] = value, (turn, found, row, col)
    if refine and best:
        i = max(best, key=lambda k: scores[k])
        for step in (refine, refine / 2):
            centre = best[i][0]
            for turn in (centre - step, centre + step):
                (found,) = taken(turn, [shifts[i]])
                if found is None:
                    continue
                value, row, col = score(i, slids[i], found)
                if value > scores[i]:
                    scores[i], best[i] = value, (turn, found, row, col)
    if not spread:
        return scores
    for i, (_, found, row, col) in best.items():
        scores[i] = _spread(np.asarray(templates[i], np.float32), found, row, col)
    return scores


def _spread(template: np.ndarray, window: _Window, row: int, col: int) -> float:
    """How far the whole of ``window`` agrees with ``template`` laid at (``row``, ``col``):
    the lower quartile (``SPREAD_QUANTILE``) of the normalised correlations of its
    ``SPREAD_TILES`` tiles, on their steel; those with less than ``SPREAD_LEAST_STEEL``
    of it do not count, and with fewer than ``SPREAD_LEAST_TILES`` that do, -1: no
    evidence."""
    rows, cols = window.values.shape
    laid = template[row : row + rows, col : col + cols]
    values = window.values * window.steel
    tiles_y = np.linspace(0, rows, SPREAD_TILES[0] + 1).round().astype(int)
    tiles_x = np.linspace(0, cols, SPREAD_TILES[1] + 1).round().astype(int)
    found = []
    for top, bottom in itertools.pairwise(tiles_y):
        for left, right in itertools.pairwise(tiles_x):
            steel = window.steel[top:bottom, left:right]
            if steel.mean() < SPREAD_LEAST_STEEL:
                continue
            t, v = laid[top:bottom, left:right], values[top:bottom, left:right]
            energy = float(np.square(t * steel).sum()) * float(np.square(v).sum())
            if energy > 0:
                found.append(float((t * v).sum()) / np.sqrt(energy))
    if len(found) < SPREAD_LEAST_TILES:
        return -1.0
    return float(np.quantile(found, SPREAD_QUANTILE))


def _matched(template: np.ndarray, window: _Window) -> tuple[float, int, int]:
    """``_Slid.best`` by OpenCV's masked template matching, one pair at a time."""
    found = cv2.matchTemplate(
        np.asarray(template, np.float32), window.values, cv2.TM_CCORR_NORMED, mask=window.steel
    )
    # where the template is empty under the window's steel (a station window that left
    # its picture), the normalisation divides by 0: no evidence
    return _peak(np.nan_to_num(found, nan=-1.0, posinf=-1.0, neginf=-1.0))


def _peak(found: np.ndarray) -> tuple[float, int, int]:
    """The highest value of a correlation map and its row and column."""
    row, col = np.unravel_index(int(np.argmax(found)), found.shape)
    return float(found[row, col]), int(row), int(col)


def _spectrum(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """OpenCV's packed spectrum of ``image`` placed in zeros of ``shape``."""
    padded = np.zeros(shape, np.float32)
    padded[: image.shape[0], : image.shape[1]] = image
    return cv2.dft(padded)


@dataclass
class _Window:
    """A query's window at template scale and the steel in it (1/0), with their spectra
    at each transform size asked for (one per template size: all of an index's agree)."""

    values: np.ndarray
    steel: np.ndarray
    spectra: dict = field(default_factory=dict)

    def at(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
        """(spectrum of the values on the steel, spectrum of the steel, the values'
        energy on the steel) for transforms of ``shape``."""
        if shape not in self.spectra:
            on_steel = self.values * self.steel
            self.spectra[shape] = (
                _spectrum(on_steel, shape),
                _spectrum(self.steel, shape),
                float(np.square(on_steel, dtype=np.float64).sum()),
            )
        return self.spectra[shape]


@dataclass(frozen=True)
class _Slid:
    """A candidate's template ready to have windows slid over it: its spectrum and its
    square's, transformed once for all the turns tried."""

    shape: tuple[int, int]  # the template's
    size: tuple[int, int]  # the transforms'
    values: np.ndarray
    squares: np.ndarray
    floor: float  # below this, a window's steel covers no template (numerical zero)

    @staticmethod
    def of(template: np.ndarray) -> _Slid:
        template = np.asarray(template, np.float32)
        size = (cv2.getOptimalDFTSize(template.shape[0]), cv2.getOptimalDFTSize(template.shape[1]))
        squared = np.square(template)
        return _Slid(
            template.shape,
            size,
            _spectrum(template, size),
            _spectrum(squared, size),
            1e-5 * float(squared.sum(dtype=np.float64)),
        )

    def best(self, window: _Window) -> tuple[float, int, int]:
        """The best normalised correlation of ``window`` slid over the template, only its
        steel counting, and where (row, column) on the template: what
        ``cv2.matchTemplate(template, values, TM_CCORR_NORMED, mask=steel)`` gives
        (within 2e-7 on twin pairs), its two sums taken as products of spectra that
        every turn and candidate share. -1 where the template is empty under the
        window's steel (a station window that left its picture): no evidence."""
        on_steel, steel, energy = window.at(self.size)
        rows = self.shape[0] - window.values.shape[0] + 1
        cols = self.shape[1] - window.values.shape[1] + 1
        if rows < 1 or cols < 1 or energy <= 0:
            return -1.0, 0, 0
        flags = cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE
        products = cv2.mulSpectrums(self.values, on_steel, 0, conjB=True)
        covered = cv2.mulSpectrums(self.squares, steel, 0, conjB=True)
        products = cv2.idft(products, flags=flags)[:rows, :cols]
        covered = cv2.idft(covered, flags=flags)[:rows, :cols]
        found = np.where(
            covered > self.floor, products / np.sqrt(np.maximum(covered, self.floor) * energy), -1.0
        )
        return _peak(found)
