"""Severstal RLE codec, as the tasks and tests import it (pure code lives in tasks.core.rle)."""

from tasks.core.rle import (
    DEFAULT_SHAPE,
    RLEError,
    parse_runs,
    rle_decode,
    rle_decode_many,
    rle_encode,
    rle_encode_many,
    runs_area_bbox,
)

__all__ = [
    "DEFAULT_SHAPE",
    "RLEError",
    "parse_runs",
    "rle_decode",
    "rle_decode_many",
    "rle_encode",
    "rle_encode_many",
    "runs_area_bbox",
]
