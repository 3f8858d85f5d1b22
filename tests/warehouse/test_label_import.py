"""Importing the real datasets into a real warehouse: counts, idempotency, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core.rle import rle_decode
from tasks.labels import SourceError, import_label_source
from tests.helpers import (
    copy_neu_subset,
    copy_severstal,
    severstal_rows,
    to_old_layout,
    truncate,
    write_csv,
)
from warehouse.checks import run_checks
from warehouse.store import Warehouse


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse").ensure()


def counts(warehouse: Warehouse) -> dict[str, int]:
    return warehouse.row_counts()


def assert_checks_pass(warehouse: Warehouse) -> None:
    with warehouse.connect() as con:
        failing = [r for r in run_checks(con) if not r.ok]
    assert failing == []


def test_severstal_sample_imports_every_image_and_mask(
    shared_data: Path, warehouse: Warehouse
) -> None:
    summary = import_label_source(shared_data / "severstal-sample", warehouse)
    assert (summary.status, summary.n_images, summary.n_labels, summary.n_errors) == (
        "ok",
        20,
        19,
        0,
    )
    per_class = warehouse.query(
        "SELECT class_id, count(*) AS n FROM labels GROUP BY class_id ORDER BY class_id"
    ).to_pylist()
    assert per_class == [
        {"class_id": 1, "n": 5},
        {"class_id": 2, "n": 3},
        {"class_id": 3, "n": 9},
        {"class_id": 4, "n": 2},
    ]
    clean = warehouse.query("SELECT count(*) AS n FROM image_labels WHERE n_labels = 0")
    assert clean.to_pylist() == [{"n": 5}]
    # area and box agree with the painted mask
    row = warehouse.query(
        "SELECT rle, area, x_min, y_min, x_max, y_max FROM labels LIMIT 1"
    ).to_pylist()[0]
    ys, xs = np.nonzero(rle_decode(row["rle"]))
    assert row["area"] == len(xs)
    assert (row["x_min"], row["y_min"], row["x_max"], row["y_max"]) == (
        xs.min(),
        ys.min(),
        xs.max(),
        ys.max(),
    )
    assert_checks_pass(warehouse)


def test_neu_det_imports_every_box(shared_data: Path, warehouse: Warehouse) -> None:
    summary = import_label_source(shared_data / "neu-det", warehouse)
    assert (summary.status, summary.n_images, summary.n_labels) == ("ok", 1500, 3482)
    rows = warehouse.query("SELECT class_name, count(*) AS n FROM labels GROUP BY ALL").to_pylist()
    per_class = {r["class_name"]: r["n"] for r in rows}
    assert per_class == {
        "inclusion": 875,
        "patches": 725,
        "crazing": 558,
        "rolled-in_scale": 517,
        "scratches": 448,
        "pitted_surface": 359,
    }
    assert_checks_pass(warehouse)


def test_old_layout_gives_the_same_labels(
    shared_data: Path, tmp_path: Path, warehouse: Warehouse
) -> None:
    folder = copy_severstal(shared_data, tmp_path / "old")
    to_old_layout(folder)
    assert import_label_source(folder, warehouse).n_labels == 19
    new = import_label_source(shared_data / "severstal-sample", warehouse)
    query = (
        "SELECT image_id, class_id, rle, area FROM labels WHERE archive_id = ? "
        "ORDER BY image_id, class_id"
    )
    old_id = next(
        r["archive_id"]
        for r in warehouse.query("SELECT archive_id FROM archives").to_pylist()
        if r["archive_id"] != new.archive_id
    )
    assert warehouse.query(query, [old_id]) == warehouse.query(query, [new.archive_id])


def test_importing_twice_changes_nothing(shared_data: Path, warehouse: Warehouse) -> None:
    import_label_source(shared_data / "severstal-sample", warehouse)
    first = counts(warehouse)
    labels = warehouse.query("SELECT * EXCLUDE (import_id) FROM labels ORDER BY ALL")
    import_label_source(shared_data / "severstal-sample", warehouse)
    assert counts(warehouse) == first
    assert warehouse.query("SELECT * EXCLUDE (import_id) FROM labels ORDER BY ALL") == labels
    # superseded files are gone: one file per table with rows, plus the placeholder
    assert len(list((warehouse.parquet_dir / "labels").glob("*.parquet"))) == 2


def test_corrupted_copy_lands_errors_and_keeps_the_good_rows(
    shared_data: Path, tmp_path: Path, warehouse: Warehouse
) -> None:
    folder = copy_severstal(shared_data, tmp_path / "corrupt")
    rows = severstal_rows(folder)
    images_with_labels = sorted({r["ImageId"] for r in rows})
    truncated = images_with_labels[0]
    truncate(folder / "train_images" / truncated)
    labels_of_truncated = sum(r["ImageId"] == truncated for r in rows)
    bad_row = next(i for i, r in enumerate(rows) if r["ImageId"] != truncated)
    rows[bad_row]["EncodedPixels"] = "10 5 3 2"  # not ascending
    write_csv(
        folder / "train.csv",
        ["ImageId", "ClassId", "EncodedPixels"],
        [[r["ImageId"], r["ClassId"], r["EncodedPixels"]] for r in rows],
    )

    summary = import_label_source(folder, warehouse)
    assert summary.status == "partial"
    assert summary.n_images == 19
    assert summary.n_labels == 19 - labels_of_truncated - 1
    errors = warehouse.query(
        "SELECT source, source_row, field, error_kind, reason FROM ingest_errors "
        "ORDER BY error_index"
    ).to_pylist()
    kinds = sorted(e["error_kind"] for e in errors)
    assert kinds == sorted(
        ["unreadable_image", "invalid_rle", *["missing_image"] * labels_of_truncated]
    )
    image_error = errors[0]  # image errors come first
    assert image_error["source"].endswith(truncated) and "truncated" in image_error["reason"]
    rle_error = next(e for e in errors if e["error_kind"] == "invalid_rle")
    assert (rle_error["source_row"], rle_error["field"]) == (bad_row + 2, "EncodedPixels")
    # nothing lost: every mask row is a label or an error
    assert summary.n_labels + len(errors) - 1 == len(rows)
    assert_checks_pass(warehouse)


def test_wrong_header_imports_the_images_and_names_the_file(
    shared_data: Path, tmp_path: Path, warehouse: Warehouse
) -> None:
    folder = copy_severstal(shared_data, tmp_path / "header")
    text = (folder / "train.csv").read_text().replace("ImageId,ClassId", "image,class", 1)
    (folder / "train.csv").write_text(text)
    summary = import_label_source(folder, warehouse)
    assert (summary.status, summary.n_images, summary.n_labels, summary.n_errors) == (
        "partial",
        20,
        0,
        1,
    )
    (error,) = warehouse.query("SELECT source, error_kind, reason FROM ingest_errors").to_pylist()
    assert (
        error["source"].endswith("train.csv")
        and "expected ['ImageId', 'ClassId'" in error["reason"]
    )


def test_malformed_xml_and_missing_image_in_neu(
    shared_data: Path, tmp_path: Path, warehouse: Warehouse
) -> None:
    folder = copy_neu_subset(shared_data, tmp_path / "neu", per_class=3)
    (folder / "annotations" / "crazing_1.xml").write_text("<annotation><object>")
    (folder / "images" / "patches_2.jpg").unlink()
    truncate(folder / "images" / "scratches_3.jpg")
    summary = import_label_source(folder, warehouse)
    assert summary.status == "partial" and summary.n_images == 16
    errors = {
        (Path(e["source"]).name, e["error_kind"])
        for e in warehouse.query("SELECT source, error_kind FROM ingest_errors").to_pylist()
    }
    assert errors == {
        ("crazing_1.xml", "unreadable_labels"),
        ("patches_2.xml", "missing_image"),
        ("scratches_3.jpg", "unreadable_image"),
        ("scratches_3.xml", "missing_image"),
    }
    total_boxes = sum(
        (shared_data / "neu-det" / "annotations" / f"{c}_{n}.xml").read_text().count("<object>")
        for c in (
            "crazing",
            "inclusion",
            "patches",
            "pitted_surface",
            "rolled-in_scale",
            "scratches",
        )
        for n in (1, 2, 3)
    )
    lost = sum(
        (shared_data / "neu-det" / "annotations" / f"{s}.xml").read_text().count("<object>")
        for s in ("crazing_1", "patches_2", "scratches_3")
    )
    assert summary.n_labels == total_boxes - lost


def test_a_folder_with_nothing_usable_fails(tmp_path: Path, warehouse: Warehouse) -> None:
    folder = tmp_path / "empty"
    (folder / "train_images").mkdir(parents=True)
    (folder / "train.csv").write_text("ImageId,ClassId,EncodedPixels\nx.jpg,1,1 2\n")
    summary = import_label_source(folder, warehouse)
    assert (summary.status, summary.n_errors) == ("failed", 1)
    with pytest.raises(SourceError, match="not a dataset steelsight knows"):
        import_label_source(tmp_path, warehouse)


def test_reimport_after_fixing_replaces_errors(
    shared_data: Path, tmp_path: Path, warehouse: Warehouse
) -> None:
    folder = copy_severstal(shared_data, tmp_path / "fixme")
    original = (folder / "train.csv").read_bytes()
    (folder / "train.csv").write_text(original.decode().replace("ImageId", "Image", 1))
    assert import_label_source(folder, warehouse).n_errors == 1
    (folder / "train.csv").write_bytes(original)
    assert import_label_source(folder, warehouse).status == "ok"
    assert counts(warehouse)["ingest_errors"] == 0 and counts(warehouse)["labels"] == 19
    shutil.rmtree(folder)
