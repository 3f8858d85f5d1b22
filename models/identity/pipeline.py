"""From pictures to who a sheet is, the one way every caller goes: detect the markings,
cut each one's paint crop and embed it (``find_markings``, ``embed``); take the surface
imprint of a station picture's marking (``reference``); and identify a marking seen by
the line's camera (``identify``): the registered sheets nearest by the steel around it
(and by its paint) are verified by aligned correlation, and the best verified one is
the answer when it reaches the threshold. Used by register-sheets and evaluate identity
(tasks/identify.py), the inspection workers (tasks/inspection.py) and /v1/inspect
(serving/inference.py), so that batch inspection and the API cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from core.metrics import box_cover, box_iou
from models.identity import surface
from models.identity.crops import marking_crop
from models.identity.matching import UNKNOWN, normalise


@dataclass(frozen=True)
class Markings:
    """The markings found in a list of pictures, one row per marking kept."""

    owners: np.ndarray  # (m,) int64: index of the picture each marking is on
    boxes: np.ndarray  # (m, 5) float32: x_min, y_min, x_max, y_max, score
    crops: np.ndarray  # (m, H, W) uint8: what the imprint network reads
    per_picture: list[np.ndarray]  # every detection of each picture, best first
    # (m,) bool: found below the detector's operating score (``weak=True``): kept only
    # when it names a sheet, which it does at ``WEAK_THRESHOLD`` (``identify_markings``);
    # None: none is
    weak: np.ndarray | None = None
    # (m,) bool: a second guess at where a marking lies, a weak box over the box
    # before it (``_rescues_only``): identified only when that one names no sheet
    # (``identify_markings``); None: none is
    second: np.ndarray | None = None
    # (m,) bool: a weak marking scored under ``NEAR_SURE``: verified only where a
    # registered sheet's steel descriptor matches at ``WEAK_MATCH``
    # (``identify_markings``); None: every weak one is
    faint: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.owners)


# A station picture shows one sheet, just marked: its best detection is taken whatever
# its score, down to this floor (the detector is less sure of the station's tilted and
# sometimes dark view than of the line's). A wrong box costs only that sheet's
# identification: the steel around it verifies against no inspection view. The default
# detector's best box was the right one on 996 of 1,000 station pictures, two of them
# scored 0.010 and 0.020 (dark pictures, seed 13); a floor of 0.05 lost those sheets.
# Each reference keeps its ``detection_score``: a weak registration can be looked up.
STATION_CONF = 0.005
# Below this score the station's best box is not trusted alone: the detector's next
# boxes of the picture (down to ``STATION_OTHER_CONF``, up to ``STATION_OTHERS`` of
# them) are registered beside it, each a reference of the same sheet, and whichever
# the line's view verifies against counts. Every best box that was off the marking
# (IoU < 0.6 with the twin's) scored under 0.7, 9 of 1,273 (seeds 13 and 14): boxes
# over a scale patch beside the text, or reaching over it to the picture's edge; in 5 of
# them the next box fitted the marking (IoU 0.65 to 0.91, scores 0.10 to 0.54)
STATION_SURE = 0.7
STATION_OTHERS = 2
STATION_OTHER_CONF = 0.05
# On the line, detections down to this score are identified as well: a weak detection
# is kept only when it verifies as a registered sheet (``kept``), which no false one
# does. The detector's own operating score (0.25) missed 28 of 1,000 sheets' markings,
# 11 of which it had boxed (IoU >= 0.5) at 0.1 to 0.25 (strong distortion, seed 13); at
# 0.1, two more whole markings boxed at 0.053 and 0.073 were lost, which verified at
# 0.84 and 0.79 (docs/benchmarks.md, "Every detection on a sheet")
WEAK_CONF = 0.05
# A weak detection is no evidence that a marking is there, and most are none (scale
# patches, the sheet's edge): it names a sheet only at this correlation or above, not at
# the threshold of the detector's sure boxes. With whole windows' correlations, at weak
# boxes that were markings the right sheet scored 0.61 or more (116 boxes, seeds 13 and
# 14), and at one that was none, near the sheet's edge, another sheet scored 0.47, over
# that threshold (0.41): the weak threshold was 0.55. Verified scores are now the
# lower quartile of a window's tiles (``surface._spread``): the right sheets' median
# and least fell by 2 and 18 % (0.892 -> 0.870, 0.549 -> 0.448), the impostors' highest
# by 28 to 56 % (twin boxes, seeds 13, 15, 17); 0.40 keeps the weak threshold as far
# above the threshold (0.30) as 0.55 was above 0.41
WEAK_THRESHOLD = 0.40
# Nor is a weak detection verified (150 ms on 2 cores) when no registered sheet's steel
# descriptor matches the steel around it at this cosine. Of the weak boxes verified,
# 994 of 1,081 (seed 13) and 423 of 454 (seed 14) named no sheet, and 887 and 390 of
# those matched below 0.25; the 118 that named one matched at 0.276 or more
# (docs/benchmarks.md, "Every detection on a sheet")
WEAK_MATCH = 0.25
# A weak detection the detector scored at this or more is nearly sure: it is verified
# whatever its steel descriptor matches. Two whole markings boxed at 0.47 and 0.56, whose
# right sheet matched at 0.20 and 0.23 and verified at 0.66 and 0.75, were lost to
# ``WEAK_MATCH``; of the 3,080 weak boxes of 1,000 sheets (seed 17, strong distortion),
# 110 scored so and matched under 0.25, against 2,419 of all scores. It is a score, not
# a share of the operating one: at three quarters of a `demo` detector's 0.25 it cost 14
# to 16 % more time per marking and named no more sheets, on two recordings
# (docs/benchmarks.md, "Weak boxes nearly sure, and markings on a seam")
NEAR_SURE = 0.45

Neighbour = tuple  # (frame or None, its detections or None)
NO_NEIGHBOUR: Neighbour = (None, None)


def find_markings(
    detector,
    imprint,
    pictures: list[np.ndarray],
    batch: int = 32,
    station: bool = False,
    weak: bool = False,
    follows: Sequence[bool] | None = None,
    previous: Neighbour | None = None,
) -> Markings:
    """Detect the markings of ``pictures`` and cut each one's crop. ``station``: each is a
    station picture, showing one sheet: keep its highest-scoring marking, down to
    ``STATION_CONF``, and when the detector is unsure of it its next boxes as well
    (``station_boxes``); ``weak``: down to ``WEAK_CONF``, for identification (see ``kept``);
    ``follows`` (with ``weak``): per picture, whether it directly follows the one before
    it on the line (the first: ``previous``, that frame and its detections), so that the
    seams between them are looked at too (``seam_markings``). A box that leaves no crop
    (flat on the picture's border) is dropped."""
    if station:
        per_picture = detector.detect(pictures, batch=batch, conf=STATION_CONF) if pictures else []
    else:
        per_picture = line_detections(detector, pictures, batch, weak, follows, previous)
    size = tuple(imprint.crop_size)
    owners, boxes, crops, weakly, second, faint = [], [], [], [], [], []
    for i, rows in enumerate(per_picture):
        guesses = _second_guesses(rows, detector.conf) if weak else np.zeros(len(rows), bool)
        chosen = station_boxes(rows) if station else rows
        for row, guess in zip(chosen, guesses, strict=False):
            picture, box = pictures[i], row[:4]
            if row[1] < 0:  # found across the seam above: its crop is cut across it too
                above = pictures[i - 1] if i else previous[0] if previous else None
                if above is not None and above.shape == picture.shape:
                    picture = np.concatenate([above, picture])
                    box = box + np.array([0, above.shape[0], 0, above.shape[0]], np.float32)
            try:
                crops.append(marking_crop(picture, box, size, imprint.margin))
            except ValueError:
                continue
            owners.append(i)
            boxes.append(np.asarray(row[:5], np.float32))
            weakly.append(weak and not kept(row[None, :5], [NOTHING], detector.conf)[0])
            second.append(bool(guess))
            faint.append(weakly[-1] and bool(row[4] < NEAR_SURE))
    return Markings(
        np.asarray(owners, np.int64),
        np.stack(boxes) if boxes else np.zeros((0, 5), np.float32),
        np.stack(crops) if crops else np.zeros((0, *size), np.uint8),
        per_picture,
        np.asarray(weakly, bool),
        np.asarray(second, bool),
        np.asarray(faint, bool),
    )


def station_boxes(rows: np.ndarray) -> np.ndarray:
    """The boxes a station picture registers, of its detections (best first): the best,
    and when it scored under ``STATION_SURE`` the next ones down to
    ``STATION_OTHER_CONF`` (``STATION_OTHERS`` at most)."""
    if not len(rows) or rows[0, 4] >= STATION_SURE:
        return rows[:1]
    others = rows[1:][rows[1:, 4] >= STATION_OTHER_CONF][:STATION_OTHERS]
    return np.concatenate([rows[:1], others])


def line_detections(
    detector,
    pictures: list[np.ndarray],
    batch: int = 32,
    weak: bool = False,
    follows: Sequence[bool] | None = None,
    previous: Neighbour | None = None,
) -> list[np.ndarray]:
    """Per picture of the line, its detections, best first; ``weak``: down to
    ``WEAK_CONF``, less weak second boxes of a marking already found, and (``follows``
    given) the markings found across the seam above each picture that follows the one
    before it (``seam_markings``; the first picture's: ``previous``). The one rule for a
    batch's frames and for a range's neighbours (``across_seams`` partners)."""
    if not pictures:
        return []
    if not weak:
        return detector.detect(pictures, batch=batch)
    found = detector.detect(pictures, batch=batch, conf=min(WEAK_CONF, detector.conf))
    found = [_rescues_only(rows, detector.conf) for rows in found]
    if follows is None:
        return found
    return seam_markings(detector, pictures, found, follows, previous, batch)


# A box found across a seam counts when it reaches this many rows into both frames; a
# box of either frame holds it when it shares this much of the smaller of the two with
# it (a part of the marking the detector found, which ``across_seams`` joins with the
# other part). A part found only in the frame below (the marking cut by its top seam,
# 0.58 of it visible) verified at 0.07 against another sheet; the marking whole, at
# 0.72 against its own (seed 19, 200 sheets): it is tried as a second guess
SEAM_REACH = 4
SEAM_COVERED = 0.5


def seam_markings(
    detector,
    pictures: list[np.ndarray],
    found: list[np.ndarray],
    follows: Sequence[bool],
    previous: Neighbour | None = None,
    batch: int = 32,
) -> list[np.ndarray]:
    """``found`` (per picture, its weak detections) with the markings that the seam above
    each picture cuts, when the picture directly follows the one above (``follows``; for
    the first picture, ``previous``: that frame and its detections) and the frame
    above holds no part of them, nor the frame below all of them (a part of one on its
    top edge: the whole is added as a second guess at it).

    The detector sees such a marking only in two parts, each lit as its own frame, and
    often finds neither: 6 of the 19 registered sheets lost at 400 and 1,000 sheets
    (strong distortion) were markings cut by a seam (docs/benchmarks.md). A picture of
    the seam itself (the lower half of the frame above, the upper half of the frame
    below) shows the marking whole. It is added to the frame below, its box reaching
    above that frame's top edge, as ``across_seams`` joins two parts; a worker or an API
    call that has a frame and the one before it looks at the same seam."""
    uppers = [
        (previous or NO_NEIGHBOUR) if i == 0 else (pictures[i - 1], found[i - 1])
        for i in range(len(pictures))
    ]
    pairs = [
        i
        for i, (upper, _) in enumerate(uppers)
        if follows[i] and upper is not None and upper.shape == pictures[i].shape
    ]
    if not pairs:
        return found
    seams = []
    for i in pairs:
        upper = uppers[i][0]
        half = upper.shape[0] // 2
        seams.append(np.concatenate([upper[half:], pictures[i][:half]]))
    conf = min(WEAK_CONF, detector.conf)
    out = list(found)
    for i, rows in zip(pairs, detector.detect(seams, batch=batch, conf=conf), strict=True):
        upper, upper_rows = uppers[i]
        height = upper.shape[0]
        # the seam's picture shows the marking whole: a box on its top or bottom edge
        # is no such marking (mostly a scale patch boxed weakly across the seam)
        top, bottom = _reaches(rows[:, 1], rows[:, 3], height)
        rows = rows[~top & ~bottom].copy()
        rows[:, [1, 3]] -= height - height // 2  # into the lower picture's rows
        crossing = (rows[:, 1] <= -SEAM_REACH) & (rows[:, 3] >= SEAM_REACH - 1)
        above = np.zeros((0, 5), np.float32) if upper_rows is None else upper_rows[:, :5].copy()
        above[:, [1, 3]] -= height
        new = rows[crossing]
        # a box of the frame above holds it (a part ``across_seams`` joins with the rest,
        # or the whole): it is not added, nor when a box of this frame holds it whole (off
        # the seam). When this frame holds only a part of it, on the seam, the whole is a
        # second guess at that marking: scored just under the part and the detector's
        # operating score, it is identified only when the part names no sheet
        # (``_second_guesses``): the part alone may leave too little of the marking and
        # its steel to name the sheet
        lower = found[i][:, :5]
        in_upper = (box_cover(new[:, :4], above[:, :4]) >= SEAM_COVERED).any(axis=1)
        in_lower = box_cover(new[:, :4], lower[:, :4]) >= SEAM_COVERED
        on_seam = _reaches(lower[:, 1], lower[:, 3], height)[0]
        added = ~in_upper & ~(in_lower & ~on_seam[None]).any(axis=1)
        new, in_lower = new[added].copy(), in_lower[added]
        for k in np.flatnonzero(in_lower.any(axis=1)):
            part = np.float32(min(lower[in_lower[k], 4].max(), detector.conf))
            new[k, 4] = min(new[k, 4], np.nextafter(part, np.float32(0)))
        if len(new):
            merged = np.concatenate([found[i], _rescues_only(new, np.inf)])
            out[i] = merged[np.argsort(-merged[:, 4], kind="stable")]
    return out


def _rescues_only(rows: np.ndarray, conf: float, overlap: float = 0.3) -> np.ndarray:
    """A picture's detections (best first) less each weak one (below ``conf``) that
    overlaps one kept before it: another box of a marking already found, not a marking
    the detector missed. One weak box over a box before it is kept, as a second guess at
    where that marking lies (``_second_guesses``), verified only when the box before it
    names no sheet: the detector's best box of a marking is sometimes off. A weak one
    reached over a scale patch beside the text and did not verify, while a box over the
    text alone, scored 0.40 beside its 0.43, did (docs/benchmarks.md, "Every detection on
    a sheet"); a sure one (0.80, seed 15) took in 180 px of steel beside the text, and
    a box over the text alone, scored 0.054, verified at 0.96."""
    chosen: list[int] = []
    settled: set[int] = set()  # a box with its second guess, or a second guess
    for i, row in enumerate(rows):
        near = [j for j in chosen if box_iou(row[None, :4], rows[j, None, :4])[0, 0] >= overlap]
        if row[4] >= conf or not near:
            chosen.append(i)
        elif all(j not in settled for j in near):
            chosen.append(i)
            settled.update(near, [i])
    return rows[chosen]


def _second_guesses(rows: np.ndarray, conf: float, overlap: float = 0.3) -> np.ndarray:
    """Which of a picture's detections (``_rescues_only``'s) are second guesses: weak
    boxes over a box before them (bool per row)."""
    out = np.zeros(len(rows), bool)
    for i in range(1, len(rows)):
        out[i] = rows[i, 4] < conf and box_iou(rows[i, None, :4], rows[:i, :4]).max() >= overlap
    return out


def kept(boxes: np.ndarray, verdicts: Sequence[Verdict], conf: float) -> np.ndarray:
    """Which markings found with ``weak=True`` are markings (``boxes``: (m, 5) x_min,
    y_min, x_max, y_max, score): those the detector scored at its operating ``conf`` or
    above, and the weaker ones and those found across a seam (reaching above their
    frame: ``seam_markings``) that verified as a registered sheet (bool per marking)."""
    named = np.array([v.sheet_id != UNKNOWN for v in verdicts], bool).reshape(-1)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
    return ((boxes[:, 4] >= conf) & (boxes[:, 1] >= 0)) | named


def embed(imprint, crops: np.ndarray) -> np.ndarray:
    """L2-normalised embeddings (m, D) of the crops; (0, D) for none."""
    if not len(crops):
        return np.zeros((0, int(imprint.config()["dim"])), np.float32)
    return imprint.embed(crops)


def references(picture: np.ndarray, box) -> list[surface.Surface]:
    """A station picture's surface imprints of the marking at ``box``: its text levelled,
    descriptors and template; one per angle that may level the text
    (``surface.text_angles``: a second where its estimates disagree)."""
    return [
        surface.imprint(picture, box, level=True, angle=angle)
        for angle in surface.text_angles(picture, box)
    ]


@dataclass(frozen=True)
class SurfaceIndex:
    """The registered sheets as identification searches them: per reference (a sheet has
    one per box its station picture registered) its surface descriptors (one per turn),
    its verification template, and the embedding of its paint (optional: candidates from
    the paint as well)."""

    sheet_ids: list[str]
    descriptors: np.ndarray  # float32 (n, turns, D), L2-normalised
    templates: np.ndarray  # float16 (n, h, w)
    paint: np.ndarray | None = None  # float32 (n, d), L2-normalised

    def __len__(self) -> int:
        return len(self.sheet_ids)

    @property
    def sheets(self) -> int:
        """How many sheets it holds: a sheet the station was unsure of has several rows."""
        return len(set(self.sheet_ids))

    @staticmethod
    def empty() -> SurfaceIndex:
        return SurfaceIndex([], np.zeros((0, 1, 1), np.float32), np.zeros((0, 1, 1), np.float16))

    def candidates(
        self,
        descriptor: np.ndarray,
        shifts: Sequence[float],
        paint: np.ndarray | None,
        top: int,
        paint_top: int,
    ) -> list[tuple[int, float, float, float]]:
        """(registered row, the turn and the query's shift its descriptor matched best
        at, that match's cosine), nearest first: the ``top`` nearest by the steel
        (``descriptor``: the query's, (len(shifts), D), its window moved by each of
        ``shifts`` along the text; the best of every turn and shift counts), then the
        ``paint_top`` nearest by the paint that are not among them."""
        query = np.atleast_2d(descriptor).astype(np.float32, copy=False)
        n, turns_, dim = self.descriptors.shape
        # one BLAS product: einsum's own loop took 2.4 to 4 times as long (1,000 to
        # 100,000 sheets, bench/identity_surface.py)
        similar = (self.descriptors.reshape(n * turns_, dim) @ query.T).reshape(n, turns_, -1)
        flat = similar.reshape(n, -1)
        order = list(np.argsort(-flat.max(axis=1))[:top])
        if paint is not None and self.paint is not None and paint_top:
            by_paint = np.argsort(-(self.paint @ normalise(paint[None])[0]))[:paint_top]
            order += [i for i in by_paint if i not in order]
        turns = surface.DESCRIPTOR_TURNS
        out = []
        for i in order:
            turn, shift = np.unravel_index(int(np.argmax(flat[i])), similar.shape[1:])
            out.append((int(i), turns[turn], float(shifts[shift]), float(flat[i].max())))
        return out


@dataclass(frozen=True)
class Verdict:
    """Who a marking's sheet is: ``sheet_id`` (``unknown`` below the threshold), the best
    verified candidate and its verified correlation (None: nothing to verify)."""

    sheet_id: str
    nearest: str | None
    similarity: float | None
    verified: tuple[tuple[str, float], ...] = ()  # every candidate and its correlation


NOTHING = Verdict(UNKNOWN, None, None)
PAINT_CANDIDATES = 2  # registered sheets nearest by the paint, verified beside the steel's


@dataclass(frozen=True)
class Stitched:
    """A frame of the line stitched with the frames just before and after it (those of
    its shape given): the picture, the row the frame starts at in it, the rows where two
    frames meet, and where it shows the sheet (``surface.steel_mask``). Every marking of
    the frame is identified on the same one."""

    picture: np.ndarray
    top_row: int
    seams: tuple[int, ...]
    steel: np.ndarray


def stitched(
    frame: np.ndarray, before: np.ndarray | None = None, after: np.ndarray | None = None
) -> Stitched:
    """``frame`` with ``before`` and ``after`` (None, or of another shape: left out)."""
    parts = [p for p in (before, frame, after) if p is not None and p.shape == frame.shape]
    top_row = frame.shape[0] if before is not None and before.shape == frame.shape else 0
    picture = np.concatenate(parts) if len(parts) > 1 else frame
    seams = tuple(frame.shape[0] * k for k in range(1, len(parts)))
    return Stitched(picture, top_row, seams, surface.steel_mask(picture))


def identify(
    frame: np.ndarray,
    box,
    index: SurfaceIndex,
    threshold: float,
    before: np.ndarray | None = None,
    after: np.ndarray | None = None,
    paint: np.ndarray | None = None,
    top: int = surface.CANDIDATES,
    paint_top: int = PAINT_CANDIDATES,
    least_match: float = -1.0,
    view: Stitched | None = None,
) -> Verdict:
    """Identify the marking at ``box`` of an inspection ``frame``, seen with the frames
    just before and after it on the line when given (a marking near the frame's edge
    leaves too little steel in one frame); ``paint``: its paint crop's embedding. The
    box is in the frame's coordinates and may reach past its edges into a neighbour
    (a marking the seam cut, joined with its other part: ``across_seams``). When no
    registered sheet's descriptor matches the steel around it at ``least_match`` or
    more (cosine), nothing is verified: ``NOTHING``. ``view``: the three frames
    stitched already (``stitched``), for a frame with several markings."""
    if not len(index):
        return NOTHING
    view = stitched(frame, before, after) if view is None else view
    picture, seams, steel = view.picture, view.seams, view.steel
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    # a box that holds the marking and something beside it: the text inside it
    box = surface.text_box(picture, (x0, y0 + view.top_row, x1, y1 + view.top_row))
    shifts = surface.DESCRIPTOR_SHIFTS
    described = surface.describe(picture, box, steel=steel, seams=seams, shifts=shifts)
    chosen = index.candidates(described, shifts, paint, top, paint_top)
    if max(match for *_, match in chosen) < least_match:
        return NOTHING
    verified = surface.verify(
        picture,
        box,
        [index.templates[i].astype(np.float32) for i, *_ in chosen],
        steel,
        [turn for _, turn, *_ in chosen],
        seams,
        shifts=[shift for _, _, shift, _ in chosen],
    )
    best = int(np.argmax(verified))
    similarity = float(verified[best])
    if similarity < -0.5:  # too little steel around the marking to verify anything
        return NOTHING
    nearest = index.sheet_ids[chosen[best][0]]
    scores = tuple(
        (index.sheet_ids[i], float(v)) for (i, *_), v in zip(chosen, verified, strict=True)
    )
    return Verdict(nearest if similarity >= threshold else UNKNOWN, nearest, similarity, scores)


def _reaches(y_min, y_max, height: int):
    """(whether it reaches the frame's top, whether its bottom) of a box's y_min and
    y_max, or elementwise of arrays of them."""
    return y_min <= 1, y_max >= height - 2


def on_seam(box, height: int) -> bool:
    """Whether a box reaches the frame's top or bottom edge: a marking the seam may have
    cut, whose other part ``across_seams`` looks for in the frame beside it."""
    top, bottom = _reaches(float(box[1]), float(box[3]), height)
    return top or bottom


# A marking is a line of stencilled text: its box, tilted text too, is at least this
# many times as wide as it is tall (a line of ten letters is about six times as wide as
# tall, three times when tilted by 10 degrees; the twin's whole markings: 4.9 to 5.3
# times at strong distortion, seed 13). A whole marking that touched the frame's top,
# joined with a weak box over the frame above, made a box 2.1 times as wide as tall,
# and its sheet was lost (too little steel around it)
MARKING_ASPECT = 3.0


def across_seams(
    box: np.ndarray, height: int, above: np.ndarray | None, below: np.ndarray | None
) -> np.ndarray:
    """A box the frame's edge cut joined with the other part of its marking, found in
    the neighbouring frame (its detections ``above`` and ``below``, (k, >=4), the box on
    the edge that shares most of its columns, at least half of the wider one's, and
    that with it makes a box shaped like a line of text), in the frame's coordinates
    (it may reach outside the frame). The window around a marking is centred on the
    whole of it. A box from the frame's top to its bottom is no part of a marking (a
    marking is far shorter than a frame; such a box is a scale patch boxed weakly):
    neither joined nor joined to."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])

    def partner(rows: np.ndarray | None, edge: str) -> np.ndarray | None:
        if rows is None or not len(rows):
            return None
        top, bottom = _reaches(rows[:, 1], rows[:, 3], height)
        # the part a seam cut touches that seam only: a box from edge to edge is not one
        on_edge = (bottom if edge == "bottom" else top) & ~(top & bottom)
        shared = np.minimum(rows[:, 2], x1) - np.maximum(rows[:, 0], x0)
        # the two parts of a cut marking span much the same columns, at least half of
        # the wider one's: a scale patch's box beside the marking, far wider, does not
        fits = on_edge & (shared >= 0.5 * np.maximum(rows[:, 2] - rows[:, 0], x1 - x0))
        # and together they are shaped like a line of text (``MARKING_ASPECT``): a box
        # that merely reaches the frame's edge, joined with a weak box far up the frame
        # beside it, is not
        tall = y1 + height - rows[:, 1] if edge == "bottom" else rows[:, 3] + height - y0
        wide = np.maximum(rows[:, 2], x1) - np.minimum(rows[:, 0], x0)
        fits &= tall * MARKING_ASPECT <= wide
        return rows[np.argmax(np.where(fits, shared, -np.inf))] if fits.any() else None

    out = np.asarray(box, np.float32).copy()
    on_top, on_bottom = _reaches(y0, y1, height)
    if on_top and on_bottom:  # from edge to edge: no marking the seam cut
        return out
    if on_top and (other := partner(above, "bottom")) is not None:
        out[1] = float(other[1]) - height
        out[0], out[2] = min(x0, float(other[0])), max(x1, float(other[2]))
    if on_bottom and (other := partner(below, "top")) is not None:
        out[3] = float(other[3]) + height
        out[0], out[2] = min(out[0], float(other[0])), max(out[2], float(other[2]))
    return out


@dataclass(frozen=True)
class PictureMarkings:
    """One picture's markings and what identifying them needs: the picture, the frames
    beside it and their detections (None where not known or not joined), and per
    marking its box (k, 5), whether it is a second guess, weak or faint
    (``identify_markings``) and its paint embedding. What a thread or a process takes
    (``picture_verdicts``)."""

    frame: np.ndarray
    above: np.ndarray | None
    above_rows: np.ndarray | None
    below: np.ndarray | None
    below_rows: np.ndarray | None
    boxes: np.ndarray
    second: np.ndarray
    weak: np.ndarray
    faint: np.ndarray
    paint: np.ndarray | None


def picture_verdicts(
    picture: PictureMarkings, index: SurfaceIndex, threshold: float
) -> list[Verdict]:
    """A verdict per marking of one picture, in order (``identify_markings``): a second
    guess waits for the boxes before it."""
    frame, above, below = picture.frame, picture.above, picture.below
    view = stitched(frame, above, below) if len(index) else None
    out: list[Verdict] = []
    for k, box in enumerate(picture.boxes):
        if picture.second[k] and _guessed_right(picture.boxes[:k], out, box):
            out.append(NOTHING)
            continue
        whole = across_seams(box, frame.shape[0], picture.above_rows, picture.below_rows)
        embedded = None if picture.paint is None else picture.paint[k]
        needed = max(threshold, WEAK_THRESHOLD) if picture.weak[k] else threshold  # stronger
        # evidence, and none looked for, for the faintest, where the steel matches no sheet
        least = WEAK_MATCH if picture.faint[k] else -1.0
        verdict = identify(
            frame, whole, index, needed, above, below, embedded, least_match=least, view=view
        )
        if verdict.sheet_id == UNKNOWN and not np.array_equal(whole[:4], box[:4]):
            # the box joined to it across the seam may be no part of its marking (a weak
            # box over a scale patch or beside the text, under a marking that merely
            # reaches the frame's edge): the box alone is identified then
            alone = identify(
                frame, box, index, needed, above, below, embedded, least_match=least, view=view
            )
            verdict = alone if alone.sheet_id != UNKNOWN else verdict
        out.append(verdict)
    return out


def identify_markings(
    marks: Markings,
    frames: list[np.ndarray],
    index: SurfaceIndex,
    threshold: float,
    before: np.ndarray | None = None,
    after: np.ndarray | None = None,
    paint: np.ndarray | None = None,
    follows: list[bool] | None = None,
    edge_markings: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
    workers: int = 1,
    processes: IdentifyingProcesses | None = None,
) -> list[Verdict]:
    """A verdict per marking of ``marks`` (found in ``frames``, consecutive frames of the
    line), each seen with its frame's neighbours: ``before`` the frame preceding the
    first, ``after`` the one following the last (None: not known); ``follows[i]``:
    whether frame i directly follows frame i - 1 on the line (all do when None; a
    dropped frame breaks it); ``edge_markings``: the detections of ``before`` and
    ``after``, for markings the seam cut. ``paint``: the markings' paint embeddings. A
    second guess (``Markings.second``) whose weak box before it named a sheet is not
    identified again: its verdict is ``NOTHING``. A weak marking (``Markings.weak``)
    names a sheet at ``WEAK_THRESHOLD``, if that is above ``threshold``, and a faint one
    (``Markings.faint``) is verified only where a registered sheet's steel descriptor
    matches at ``WEAK_MATCH``. A box joined across a seam (``across_seams``) that names
    no sheet is identified alone as well. Each picture's markings are identified in
    turn (``picture_verdicts``); the pictures on ``workers`` threads, or in
    ``processes`` (which hold ``index``). The verdicts are the same either way."""
    last = len(frames) - 1
    joined = [True] * len(frames) if follows is None else list(follows)
    found = marks.per_picture
    second = np.zeros(len(marks), bool) if marks.second is None else marks.second
    weak = np.zeros(len(marks), bool) if marks.weak is None else marks.weak
    faint = weak if marks.faint is None else marks.faint
    has_paint = paint is not None and len(paint)

    def picture(i: int, mine: np.ndarray) -> PictureMarkings:
        if i > 0:
            above = (frames[i - 1], found[i - 1]) if joined[i] else (None, None)
        else:
            above = (before, edge_markings[0]) if before is not None else (None, None)
        if i < last:
            below = (frames[i + 1], found[i + 1]) if joined[i + 1] else (None, None)
        else:
            below = (after, edge_markings[1]) if after is not None else (None, None)
        return PictureMarkings(
            frames[i],
            *above,
            *below,
            marks.boxes[mine],
            second[mine],
            weak[mine],
            faint[mine],
            paint[mine] if has_paint else None,
        )

    owned = [(i, np.flatnonzero(marks.owners == i)) for i in sorted(set(marks.owners.tolist()))]
    pictures = [picture(i, mine) for i, mine in owned]
    if processes is not None and pictures:  # one picture too: the caller's GIL stays free
        verdicts = processes.verdicts(pictures, index, threshold)
    elif workers > 1 and len(pictures) > 1:
        with ThreadPoolExecutor(min(workers, len(pictures)), "identify-picture") as pool:
            verdicts = list(pool.map(picture_verdicts, pictures, repeat(index), repeat(threshold)))
    else:
        verdicts = [picture_verdicts(p, index, threshold) for p in pictures]
    out: list[Verdict | None] = [None] * len(marks)
    for (_, mine), theirs in zip(owned, verdicts, strict=True):
        for n, verdict in zip(mine.tolist(), theirs, strict=True):
            out[n] = verdict
    return out


def _guessed_right(
    before: np.ndarray, verdicts: list[Verdict], box: np.ndarray, overlap: float = 0.3
) -> bool:
    """Whether a box before ``box`` on its picture that it overlaps (the weak box it is a
    second guess of) named a sheet (``before``: the picture's boxes before it,
    ``verdicts``: theirs)."""
    named = [k for k, v in enumerate(verdicts) if v.sheet_id != UNKNOWN]
    if not named:
        return False
    return bool(box_iou(box[None, :4], before[named, :4]).max() >= overlap)


# The pictures' markings a process identifies, against the index it was started with
# (``IdentifyingProcesses``)
_HELD: dict[str, SurfaceIndex] = {}


def _hold(index: SurfaceIndex, parent: int) -> None:
    """In a new identifying process: the index kept, and numpy's BLAS and OpenCV on one
    thread (the processes are the parallelism). The process ends when the one that
    started it does, however that ends: a worker killed (by its nanny, or out of memory)
    leaves no process holding a copy of the index behind. ``parent``: its process id,
    given, since it may be gone by the time this runs."""
    import os
    import threading
    import time

    import cv2

    from core.runtime import blas_on_one_thread

    blas_on_one_thread()
    cv2.setNumThreads(1)
    _HELD["index"] = index

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphaned, name="parent-watch", daemon=True).start()


def _held_verdicts(picture: PictureMarkings, threshold: float) -> list[Verdict]:
    return picture_verdicts(picture, _HELD["index"], threshold)


class IdentifyingProcesses:
    """Processes that identify pictures' markings against one ``index``, sent to each
    once when it starts. Identification is Python between OpenCV's and numpy's calls:
    on threads it holds the GIL, and 16 cores identified about 45 markings a second on
    threads against 175 in 16 processes (docs/benchmarks.md, "The GPU check on one
    H200"). Started by spawning (the caller may hold torch's and Dask's threads, which a
    fork would copy mid-work); each process holds its own copy of the index."""

    def __init__(self, index: SurfaceIndex, processes: int) -> None:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        self.index, self.processes = index, processes
        self.broken = False  # a process died (killed, out of memory): start new ones
        self._pool = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_hold,
            initargs=(index, os.getpid()),
        )

    def verdicts(
        self, pictures: list[PictureMarkings], index: SurfaceIndex, threshold: float
    ) -> list[list[Verdict]]:
        from concurrent.futures.process import BrokenProcessPool

        if index is not self.index:
            raise ValueError("these identifying processes hold another index: start new ones")
        try:
            return list(self._pool.map(_held_verdicts, pictures, repeat(threshold)))
        except BrokenProcessPool as error:
            self.broken = True
            raise RuntimeError(
                f"an identifying process died ({error}): out of memory, or killed? The "
                "worker starts new ones for its next range, and the next inspect run "
                "redoes this archive; STEELSIGHT_IDENTIFY_IN=threads identifies without them"
            ) from error

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class PassIdentifier:
    """Verdicts on the markings of a recording's consecutive batches of frames, each
    marking seen with its frame's neighbours. A batch is identified once the frame after
    it is known, so ``add`` returns the verdicts of the batch before; ``finish`` those
    of the last. The one loop of the inspection workers and of evaluate identity.

    ``before``: the frame before the first batch and its detections, asked for only when
    a marking sits on the first frame. ``follows`` (per batch, per frame): whether the
    frame directly follows the one before it on the line; all do when None.
    ``workers``: threads a batch's markings are identified on, or ``processes``
    (``identify_markings``)."""

    def __init__(
        self,
        imprint,
        index: SurfaceIndex,
        threshold: float,
        before: Callable[[], Neighbour] = lambda: NO_NEIGHBOUR,
        workers: int = 1,
        processes: IdentifyingProcesses | None = None,
    ) -> None:
        self.imprint, self.index, self.threshold = imprint, index, threshold
        self.workers, self.processes = workers, processes
        self._before = before
        self._previous: Neighbour | None = None  # the last frame identified, its detections
        self._pending: tuple | None = None  # (frames, markings, follows)

    def add(
        self, frames: list[np.ndarray], marks: Markings, follows: list[bool] | None = None
    ) -> list[Verdict]:
        out = []
        if self._pending is not None:
            joined = follows is None or follows[0]
            out = self._identified((frames[0], marks.per_picture[0]) if joined else NO_NEIGHBOUR)
        self._pending = (list(frames), marks, follows)
        return out

    def finish(self, after: Callable[[], Neighbour] = lambda: NO_NEIGHBOUR) -> list[Verdict]:
        """The last batch's verdicts; ``after``: the frame after it and its detections,
        asked for only when a marking sits on its last frame."""
        if self._pending is None:
            return []
        frames, marks, _ = self._pending
        on_last = np.any(marks.owners == len(frames) - 1)
        out = self._identified(after() if on_last else NO_NEIGHBOUR)
        self._pending = None
        return out

    def _identified(self, after: Neighbour) -> list[Verdict]:
        frames, marks, follows = self._pending
        joined = [True] * len(frames) if follows is None else list(follows)
        out = []
        if len(marks):
            if not joined[0]:
                before = NO_NEIGHBOUR
            elif self._previous is not None:
                before = self._previous
            else:
                before = self._before() if np.any(marks.owners == 0) else NO_NEIGHBOUR
            out = identify_markings(
                marks,
                frames,
                self.index,
                self.threshold,
                before[0],
                after[0],
                embed(self.imprint, marks.crops),
                [True, *joined[1:]],
                (before[1], after[1]),
                self.workers,
                self.processes,
            )
        self._previous = (frames[-1], marks.per_picture[-1])
        return out
