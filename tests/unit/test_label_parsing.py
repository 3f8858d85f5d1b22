"""Parsing Severstal CSVs and VOC annotations: rows become labels or named errors."""

from __future__ import annotations

import pytest

from core.labels import (
    LabelFileError,
    parse_severstal_csv,
    parse_voc_boxes,
    read_csv_rows,
)

SHAPES = {"a.jpg": (4, 3), "b.jpg": (4, 3)}


def test_new_layout_rows_become_labels_with_area_and_box() -> None:
    rows = [
        ["ImageId", "ClassId", "EncodedPixels"],
        ["a.jpg", "3", "1 3 6 2"],
        ["b.jpg", "1", "12 1"],
    ]
    parsed = parse_severstal_csv(rows, SHAPES, "train.csv")
    assert parsed.errors == []
    first, second = parsed.labels
    assert (first["image_id"], first["class_id"], first["class_name"]) == ("a.jpg", 3, "scratches")
    assert first["area"] == 5
    assert (first["x_min"], first["y_min"], first["x_max"], first["y_max"]) == (0, 0, 1, 2)
    assert (second["x_min"], second["y_min"], second["area"]) == (2, 3, 1)
    assert first["source_row"] == 2


def test_old_layout_skips_empty_rows_and_reads_the_class_from_the_id() -> None:
    rows = [
        ["ImageId_ClassId", "EncodedPixels"],
        ["a.jpg_1", ""],
        ["a.jpg_2", "1 2"],
        ["a.jpg_3", ""],
    ]
    parsed = parse_severstal_csv(rows, SHAPES, "train.csv")
    assert [(label["class_id"], label["rle"]) for label in parsed.labels] == [(2, "1 2")]


def test_bad_rows_become_errors_and_good_rows_still_count() -> None:
    rows = [
        ["ImageId", "ClassId", "EncodedPixels"],
        ["a.jpg", "1", "1 2"],
        ["a.jpg", "1", "5 1"],  # duplicate of row 2
        ["a.jpg", "7", "1 2"],  # class out of range
        ["a.jpg", "2", "5 2 3 1"],  # invalid RLE
        ["missing.jpg", "1", "1 2"],  # no such image
        ["a.jpg", "3"],  # too few fields
        ["b.jpg", "4", "1 1"],
    ]
    parsed = parse_severstal_csv(rows, SHAPES, "train.csv")
    assert len(parsed.labels) == 2
    kinds = [(e["source_row"], e["field"], e["error_kind"]) for e in parsed.errors]
    assert kinds == [
        (3, "ClassId", "duplicate_label"),
        (4, "ClassId", "unknown_class"),
        (5, "EncodedPixels", "invalid_rle"),
        (6, "ImageId", "missing_image"),
        (7, None, "malformed_row"),
    ]
    assert "strictly ascending" in parsed.errors[2]["reason"]
    assert "row 2" in parsed.errors[0]["reason"]


@pytest.mark.parametrize("header", [["image", "class", "rle"], ["ImageId", "EncodedPixels"], []])
def test_wrong_header_rejects_the_file(header: list[str]) -> None:
    with pytest.raises(LabelFileError, match=r"header|empty"):
        parse_severstal_csv([header] if header else [], SHAPES, "train.csv")


def test_non_utf8_csv_is_rejected_with_the_file_name() -> None:
    with pytest.raises(LabelFileError, match=r"x\.csv is not UTF-8"):
        read_csv_rows(b"\xff\xfe\x00bad", "x.csv")


VOC = b"""<annotation><filename>crazing_1</filename><size><width>200</width>
<height>200</height><depth>1</depth></size>
<object><name>crazing</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax>
</bndbox></object>
<object><name>rust</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax>
</bndbox></object>
<object><name>scratches</name><bndbox><xmin>5</xmin><ymin>2</ymin><xmax>300</xmax><ymax>20</ymax>
</bndbox></object>
<object><name>scratches</name><bndbox><xmin>a</xmin><ymin>2</ymin><xmax>3</xmax><ymax>20</ymax>
</bndbox></object>
</annotation>"""


def test_voc_boxes_are_stored_zero_based_and_bad_objects_become_errors() -> None:
    parsed = parse_voc_boxes(VOC, "crazing_1.jpg", (200, 200), "crazing_1.xml")
    (label,) = parsed.labels
    assert (label["class_id"], label["class_name"], label["geometry"]) == (1, "crazing", "box")
    assert (label["x_min"], label["y_min"], label["x_max"], label["y_max"]) == (0, 1, 9, 19)
    assert label["area"] == 10 * 19 and label["rle"] is None
    assert [(e["source_row"], e["error_kind"]) for e in parsed.errors] == [
        (1, "unknown_class"),
        (2, "invalid_box"),
        (3, "invalid_box"),
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"<annotation><object>",
        b"not xml at all",
        b"<html></html>",
        # entity expansion ("billion laughs") is refused, not expanded
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx">'
        b'<!ENTITY y "&x;&x;&x;&x;">]><annotation>&y;</annotation>',
    ],
)
def test_malformed_xml_rejects_the_file(data: bytes) -> None:
    with pytest.raises(LabelFileError, match=r"bad\.xml"):
        parse_voc_boxes(data, "x.jpg", (200, 200), "bad.xml")
