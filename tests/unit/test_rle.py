"""The Severstal RLE codec against real strings, random masks and every invalid form."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from core.rle import (
    RLEError,
    parse_runs,
    rle_decode,
    rle_decode_many,
    rle_encode,
    rle_encode_many,
    runs_area_bbox,
)


def real_rles(shared_data: Path) -> list[str]:
    rows: list[str] = []
    with (shared_data / "severstal-rle" / "pseudo_labels_old_layout.csv").open() as f:
        rows += [r["EncodedPixels"] for r in csv.DictReader(f) if r["EncodedPixels"]]
    with (shared_data / "severstal-sample" / "train.csv").open() as f:
        rows += [r["EncodedPixels"] for r in csv.DictReader(f) if r["EncodedPixels"]]
    return rows


def test_real_strings_round_trip(shared_data: Path) -> None:
    rles = real_rles(shared_data)
    assert len(rles) == 782 + 19
    for rle in rles:
        mask = rle_decode(rle)
        assert mask.shape == (256, 1600) and mask.dtype == np.uint8
        assert rle_encode(mask) == rle
        assert rle_encode(np.ascontiguousarray(mask)) == rle  # a model hands C order


def test_real_strings_round_trip_in_batches(shared_data: Path) -> None:
    rles = real_rles(shared_data)
    masks = rle_decode_many(rles)
    assert masks.shape == (len(rles), 256, 1600)
    assert rle_encode_many(masks) == rles
    for index in (0, 100, len(rles) - 1):
        assert np.array_equal(masks[index], rle_decode(rles[index]))


def test_decode_follows_column_major_one_indexed_order() -> None:
    mask = rle_decode("1 3 6 2", shape=(4, 3))
    expected = np.zeros((4, 3), np.uint8)
    expected[0:3, 0] = 1  # pixels 1..3 run down the first column
    expected[1:3, 1] = 1  # pixels 6..7 are rows 1..2 of the second column
    assert np.array_equal(mask, expected)
    assert rle_decode("", shape=(4, 3)).sum() == 0
    assert rle_encode(np.zeros((4, 3), np.uint8)) == ""


def test_runs_that_touch_the_first_and_last_pixel() -> None:
    assert rle_encode(np.ones((4, 3), np.uint8)) == "1 12"
    assert rle_decode("1 12", shape=(4, 3)).all()
    corner = np.zeros((4, 3), bool)
    corner[-1, -1] = True
    assert rle_encode(corner) == "12 1"
    assert rle_encode_many([np.ones((4, 3), np.uint8)] * 2 + [corner]) == ["1 12", "1 12", "12 1"]


masks_2d = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda hw: arrays(np.uint8, hw, elements=st.integers(0, 1))
)


@given(masks_2d)
@settings(max_examples=300, deadline=None)
def test_decode_inverts_encode_on_random_masks(mask: np.ndarray) -> None:
    rle = rle_encode(mask)
    assert np.array_equal(rle_decode(rle, shape=mask.shape), mask)
    assert rle_encode(mask.astype(bool)) == rle
    assert rle_encode(np.asfortranarray(mask)) == rle


@given(
    st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(0, 6)).flatmap(
        lambda s: arrays(np.uint8, (s[2], s[0], s[1]), elements=st.integers(0, 1))
    )
)
@settings(max_examples=200, deadline=None)
def test_batch_forms_agree_with_single_forms(batch: np.ndarray) -> None:
    rles = rle_encode_many(batch)
    assert rles == [rle_encode(m) for m in batch]
    decoded = rle_decode_many(rles, shape=batch.shape[1:])
    assert decoded.shape == batch.shape
    assert np.array_equal(decoded, batch)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number of values"),
        ("1 a", "token 2 ('a') is not an integer"),
        ("1 2.5", "is not an integer"),
        ("0 3", "run 1 starts at 0"),
        ("-3 4", "is a start <= 0"),
        ("3 0", "run 1 (start 3) has length 0"),
        ("5 -2", "is a length <= 0"),
        ("5 2 3 1", "starts must be strictly ascending"),
        ("5 2 5 1", "starts must be strictly ascending"),
        ("1 5 3 2", "overlaps run 1, which covers pixels 1..5"),
        ("409600 2", "past the mask's last pixel 409600"),
        ("99999999999999999999 5", "past the mask's last pixel"),
        ("1 999999", "past the mask's last pixel"),
    ],
)
def test_invalid_strings_raise_with_a_useful_message(rle: str, message: str) -> None:
    with pytest.raises(RLEError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rle_decode(rle)
    with pytest.raises(ValueError):  # RLEError is a ValueError for callers that catch that
        rle_decode(rle)


def test_batch_errors_name_the_mask() -> None:
    with pytest.raises(RLEError, match=r"^mask 2: run 2 \(start 7\) overlaps"):
        rle_decode_many(["1 2", "", "5 4 7 1"], shape=(4, 3))
    with pytest.raises(RLEError, match=r"^mask 1: odd number"):
        rle_decode_many(["1 2", "1  2 3"], shape=(4, 3))
    with pytest.raises(RLEError, match=r"^mask 1: mask values must be 0 or 1, found 3"):
        rle_encode_many([np.ones((2, 2), np.uint8), np.full((2, 2), 3, np.uint8)])


def test_other_whitespace_is_read_the_same() -> None:
    assert np.array_equal(rle_decode(" 1 3\t6  2\n", (4, 3)), rle_decode("1 3 6 2", (4, 3)))
    many = rle_decode_many(["1 3\t6 2", "2  1"], shape=(4, 3))
    assert rle_encode_many(many) == ["1 3 6 2", "2 1"]


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.full((3, 3), 2, np.uint8), "must be 0 or 1, found 2"),
        (np.array([[0, 1, 2, 1]], np.int32), "must be 0 or 1, found 0..2"),
        (np.zeros((3, 3), np.float32), "threshold it first"),
        (np.zeros((2, 3, 3), np.uint8), "must be 2-D"),
    ],
)
def test_invalid_masks_raise(mask: np.ndarray, message: str) -> None:
    with pytest.raises(RLEError, match=message):
        rle_encode(mask)


def test_area_and_box_from_runs_match_the_painted_mask(shared_data: Path) -> None:
    for rle in [*real_rles(shared_data)[:200], "1 12", "3 4 10 1"]:
        shape = (4, 3) if rle in ("1 12", "3 4 10 1") else (256, 1600)
        area, box = runs_area_bbox(*parse_runs(rle, shape), shape)
        mask = rle_decode(rle, shape)
        ys, xs = np.nonzero(mask)
        assert area == mask.sum()
        assert box == (xs.min(), ys.min(), xs.max(), ys.max())
    assert runs_area_bbox(*parse_runs(""), (256, 1600)) == (0, None)
