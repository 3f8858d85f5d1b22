"""Kaggle Severstal run-length encoding of binary masks.

The encoding lists ``start length`` pairs over the mask flattened in column-major
(Fortran) order, with 1-indexed starts: ``"1 3"`` sets the first three pixels of the
first column. The default shape is the Severstal frame, 256 rows x 1600 columns.

Decoding is one ``np.repeat`` of an alternating 0/1 pattern by the gap and run
lengths (SIMD in NumPy, no Python loop per run). Encoding finds the changes in the
column-major byte stream and only expands the 64-bit words that contain a change,
so its cost follows the mask's outline rather than its size.

Decoded masks are ``uint8`` arrays of shape (H, W) in Fortran order (a view of the
column-major buffer, which is what the encoding describes); call
``np.ascontiguousarray`` where a C-ordered buffer is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

DEFAULT_SHAPE: tuple[int, int] = (256, 1600)

# Bytes an RLE string may contain: digits and ASCII whitespace between tokens.
_RLE_BYTES = b"0123456789 \t\r\n"


class RLEError(ValueError):
    """An RLE string or mask that cannot be encoded or decoded; the message says why."""


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) <= 0 for s in shape):
        raise RLEError(f"mask shape must be two positive sizes (height, width), got {shape!r}")
    return int(shape[0]), int(shape[1])


def _bad_token(text: str) -> RLEError:
    """Name the first token that is not a positive integer (error path only)."""
    for position, token in enumerate(text.split(), start=1):
        try:
            value = int(token)
        except ValueError:
            return RLEError(
                f"token {position} ({token[:20]!r}) is not an integer: an RLE string holds "
                "space-separated 'start length' integer pairs"
            )
        if value <= 0:
            what = "start" if position % 2 else "length"
            return RLEError(
                f"token {position} ({token!r}) is a {what} <= 0: starts are 1-indexed "
                "and lengths at least 1"
            )
    return RLEError("RLE string holds characters other than digits and spaces")


def _tokens(rle: str) -> np.ndarray:
    """All integers of an RLE string, as int64, after checking each token is one."""
    if not isinstance(rle, str):
        raise RLEError(f"an RLE mask must be a string, got {type(rle).__name__}")
    try:
        raw = rle.encode("ascii")
    except UnicodeEncodeError:
        raise _bad_token(rle) from None
    if raw.translate(None, _RLE_BYTES):
        raise _bad_token(rle)
    if not raw.strip():
        return np.empty(0, np.int64)
    # Only digits and whitespace remain, so fromstring reads every token. A token too
    # large for int64 saturates; _validate_runs bounds every value by the mask size.
    return np.fromstring(raw, dtype=np.int64, sep=" ")


def _validate_runs(
    starts: np.ndarray, lengths: np.ndarray, n_pixels: int, first_run: np.ndarray | None = None
) -> None:
    """Raise RLEError unless the runs are positive, ascending, disjoint and inside the mask.

    ``starts`` are 1-indexed. ``first_run`` marks runs that begin a new mask in a batch:
    ordering is only checked between runs of the same mask.
    """
    if starts.size == 0:
        return
    ends = starts + lengths  # one past the last pixel, 1-indexed; trusted once bounded
    follows = starts[1:] < ends[:-1]
    if first_run is not None:
        follows &= ~first_run[1:]
    if (
        lengths.min() >= 1
        and lengths.max() <= n_pixels
        and starts.max() <= n_pixels
        and not follows.any()  # with the bounds above: ascending, disjoint, no overflow
        and starts.min() >= 1
        and ends.max() <= n_pixels + 1
    ):
        return
    # Error path: name the first offending run.
    for checks, message in (
        (starts < 1, "run {i} starts at {s}: starts are 1-indexed, so at least 1"),
        (lengths < 1, "run {i} (start {s}) has length {l}: lengths are at least 1"),
        (
            (starts > n_pixels) | (lengths > n_pixels),
            f"run {{i}} (start {{s}}, length {{l}}) lies past the mask's last pixel {n_pixels}: "
            "is the shape right?",
        ),
    ):
        bad = np.flatnonzero(checks)
        if bad.size:
            i = int(bad[0])
            raise RLEError(message.format(i=i + 1, s=starts[i], l=lengths[i]))
    bad = np.flatnonzero(follows)
    if bad.size:
        i = int(bad[0]) + 1
        if starts[i] <= starts[i - 1]:
            raise RLEError(
                f"run {i + 1} starts at {starts[i]}, not after run {i} at {starts[i - 1]}: "
                "starts must be strictly ascending"
            )
        raise RLEError(
            f"run {i + 1} (start {starts[i]}) overlaps run {i}, which covers pixels "
            f"{starts[i - 1]}..{ends[i - 1] - 1}"
        )
    i = int(np.flatnonzero(ends > n_pixels + 1)[0])
    raise RLEError(
        f"run {i + 1} (start {starts[i]}, length {lengths[i]}) ends at pixel {ends[i] - 1}, "
        f"past the mask's last pixel {n_pixels}: is the shape right?"
    )


def parse_runs(rle: str, shape: Sequence[int] = DEFAULT_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """The validated runs of an RLE string: 0-indexed column-major starts and lengths."""
    height, width = _check_shape(shape)
    values = _tokens(rle)
    if values.size % 2:
        raise RLEError(
            f"odd number of values ({values.size}): an RLE string holds 'start length' pairs"
        )
    starts, lengths = values[0::2], values[1::2]
    _validate_runs(starts, lengths, height * width)
    return starts - 1, lengths


def _paint(starts0: np.ndarray, lengths: np.ndarray, n_pixels: int) -> np.ndarray:
    """A flat uint8 buffer of n_pixels with the given (valid, ascending) runs set to 1."""
    if starts0.size == 0:
        return np.zeros(n_pixels, np.uint8)
    ends = starts0 + lengths
    counts = np.empty(2 * starts0.size + 1, np.int64)
    counts[0] = starts0[0]
    counts[2:-1:2] = starts0[1:] - ends[:-1]
    counts[1::2] = lengths
    counts[-1] = n_pixels - ends[-1]
    pattern = np.zeros(counts.size, np.uint8)
    pattern[1::2] = 1
    return np.repeat(pattern, counts)


def runs_mask(starts0: np.ndarray, lengths: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The (height, width) bool mask of valid, ascending column-major runs (0-based
    starts), as ``rle_decode`` paints them."""
    height, width = shape
    return _paint(starts0, lengths, height * width).view(bool).reshape(width, height).T


def rle_decode(rle: str, shape: Sequence[int] = DEFAULT_SHAPE) -> np.ndarray:
    """Decode one RLE string into a (height, width) uint8 mask of 0 and 1.

    An empty string is an empty mask. Raises RLEError (a ValueError) naming what is
    wrong for an odd number of values, a non-integer token, a start or length <= 0,
    starts not strictly ascending, overlapping runs, or a run past the mask's end.
    """
    starts0, lengths = parse_runs(rle, shape)
    height, width = shape
    return _paint(starts0, lengths, height * width).reshape(width, height).T


def rle_decode_many(rles: Sequence[str], shape: Sequence[int] = DEFAULT_SHAPE) -> np.ndarray:
    """Decode many RLE strings of one shape into an (N, height, width) uint8 array.

    Parses, validates and paints all masks at once; each mask is Fortran-ordered, as
    rle_decode's. On bad input raises RLEError whose message starts with the index of
    the offending string.
    """
    height, width = _check_shape(shape)
    n_pixels = height * width
    texts = [r.strip() if isinstance(r, str) else r for r in rles]
    values, tokens_per_mask = _tokens_many(texts, (height, width))
    if tokens_per_mask.size == 0:
        return np.zeros((0, height, width), np.uint8)
    runs_per_mask = tokens_per_mask // 2
    starts, lengths = values[0::2], values[1::2]
    first_run = np.zeros(starts.size, bool)
    boundaries = np.cumsum(runs_per_mask)[:-1]
    first_run[boundaries[boundaries < starts.size]] = True
    try:
        _validate_runs(starts, lengths, n_pixels, first_run)
    except RLEError:
        _raise_first_invalid(texts, (height, width))
        raise
    mask_of_run = np.repeat(np.arange(tokens_per_mask.size, dtype=np.int64), runs_per_mask)
    flat = _paint(starts - 1 + mask_of_run * n_pixels, lengths, n_pixels * tokens_per_mask.size)
    return flat.reshape(tokens_per_mask.size, width, height).transpose(0, 2, 1)


def _tokens_many(texts: list, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """All integers of many stripped RLE strings, and how many each string holds."""
    if not all(isinstance(t, str) for t in texts):
        _raise_first_invalid(texts, shape)
    joined = " ".join(t for t in texts if t)
    # Canonical strings have one space between tokens, so spaces + 1 counts them exactly.
    canonical = "  " not in joined and not any(c in joined for c in "\t\r\n")
    tokens_per_mask = np.array([t.count(" ") + 1 if t else 0 for t in texts], np.int64)
    if canonical and not (tokens_per_mask % 2).any():
        try:
            return _tokens(joined), tokens_per_mask
        except RLEError:
            _raise_first_invalid(texts, shape)
            raise
    # Other whitespace than single spaces, or an odd count: parse one by one.
    parts = []
    for index, text in enumerate(texts):
        try:
            parts.append(_tokens(text))
        except RLEError as error:
            raise RLEError(f"mask {index}: {error}") from None
        if parts[-1].size % 2:
            raise RLEError(
                f"mask {index}: odd number of values ({parts[-1].size}): an RLE string "
                "holds 'start length' pairs"
            )
    values = np.concatenate(parts) if parts else np.empty(0, np.int64)
    return values, np.array([p.size for p in parts], np.int64)


def _raise_first_invalid(texts: list, shape: tuple[int, int]) -> None:
    for index, text in enumerate(texts):
        try:
            parse_runs(text, shape)
        except RLEError as error:
            raise RLEError(f"mask {index}: {error}") from None


def _column_major_bytes(mask: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The mask as a flat uint8 array in column-major order (written into ``out`` if given).

    Values are not checked here: _change_positions checks every segment's value.
    """
    if mask.ndim != 2:
        raise RLEError(f"a mask must be 2-D (height, width), got shape {mask.shape}")
    if mask.dtype == np.bool_:
        mask = mask.view(np.uint8)
    elif mask.dtype.kind not in "iu":
        raise RLEError(
            f"a mask must hold booleans or integers 0/1, got dtype {mask.dtype}: "
            "threshold it first (mask > 0.5)"
        )
    elif mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise RLEError(
                f"mask values must be 0 or 1, found {mask.min()}..{mask.max()}: threshold it first"
            )
        mask = mask.astype(np.uint8)
    if mask.flags.f_contiguous:
        return mask.ravel(order="F")
    if not mask.flags.c_contiguous:
        mask = np.ascontiguousarray(mask)
    if out is None:
        return cv2.transpose(mask).ravel()
    return cv2.transpose(mask, dst=out.reshape(mask.shape[1], mask.shape[0])).ravel()


def _change_positions(flat: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """Sorted positions where a run opens or closes in a column-major mask.

    The mask reads as if padded with a zero before and after, so every run opens and
    closes inside it (a run reaching the last pixel closes at ``flat.size``). The
    neighbour comparison runs over the whole buffer (SIMD); only the 64-bit words of
    the result that hold a change are expanded to positions.
    """
    n = flat.size
    if n == 0:
        return np.empty(0, np.int64)
    size = (n // 8 + 1) * 8  # whole words, with room for position n
    changed = np.empty(size, np.bool_) if scratch is None else scratch[:size]
    changed[0] = flat[0] != 0
    np.not_equal(flat[1:], flat[:-1], out=changed[1:n])
    changed[n] = flat[-1] != 0
    changed[n + 1 :] = False
    words = np.flatnonzero(changed.view(np.uint64) != 0)
    candidates = (words[:, None] * 8 + np.arange(8)).ravel()
    positions = candidates[changed[candidates]]
    segment_values = flat[positions[positions < n]]  # every constant segment starts at one
    if segment_values.size and segment_values.max() > 1:
        raise RLEError(
            f"mask values must be 0 or 1, found {segment_values.max()}: threshold it first"
        )
    return positions


def _format_runs(changes: np.ndarray) -> str:
    runs = np.empty(changes.size, np.int64)
    runs[0::2] = changes[0::2] + 1
    runs[1::2] = changes[1::2] - changes[0::2]
    # str() of a list of ints is one C call, faster than joining per-number strings.
    return str(runs.tolist())[1:-1].replace(",", "")


def runs_encode(starts0: np.ndarray, lengths: np.ndarray) -> str:
    """The RLE string of ascending column-major runs (0-based starts), as ``rle_encode``
    writes it."""
    changes = np.empty(2 * len(starts0), np.int64)
    changes[0::2], changes[1::2] = starts0, starts0 + lengths
    return _format_runs(changes)


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask of 0/1 (or booleans) as an RLE string; "" for an empty mask."""
    return _format_runs(_change_positions(_column_major_bytes(np.asarray(mask))))


def rle_encode_many(masks: np.ndarray | Sequence[np.ndarray]) -> list[str]:
    """Encode N masks, an (N, H, W) array or a sequence of (H, W) masks.

    Reuses one transposition buffer and one comparison buffer for the whole batch.
    On bad input raises RLEError whose message starts with the index of the mask.
    """
    encoded: list[str] = []
    transposed = np.empty(0, np.uint8)
    scratch = np.empty(0, np.bool_)
    for index, mask in enumerate(masks):
        mask = np.asarray(mask)
        if transposed.size < mask.size:
            transposed = np.empty(mask.size, np.uint8)
            scratch = np.empty((mask.size // 8 + 1) * 8, np.bool_)
        try:
            flat = _column_major_bytes(mask, out=transposed[: mask.size])
            encoded.append(_format_runs(_change_positions(flat, scratch)))
        except RLEError as error:
            raise RLEError(f"mask {index}: {error}") from None
    return encoded


def runs_area_bbox(
    starts0: np.ndarray, lengths: np.ndarray, shape: Sequence[int] = DEFAULT_SHAPE
) -> tuple[int, tuple[int, int, int, int] | None]:
    """Pixel area and bounding box (x_min, y_min, x_max, y_max, inclusive) of parsed runs.

    Computed from the runs alone, without painting the mask; None box for no runs.
    """
    height, _ = _check_shape(shape)
    if starts0.size == 0:
        return 0, None
    last = starts0 + lengths - 1
    first_col, last_col = starts0 // height, last // height
    spans_columns = last_col > first_col
    rows_top = np.where(spans_columns, 0, starts0 % height)
    rows_bottom = np.where(spans_columns, height - 1, last % height)
    box = (int(first_col.min()), int(rows_top.min()), int(last_col.max()), int(rows_bottom.max()))
    return int(lengths.sum()), box
