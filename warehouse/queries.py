"""Every question the pipeline asks the warehouse, by name. SQL lives in warehouse/ only:
here, in the views (views.sql), in the API's reads (reads.py) and in the checks;
tests/unit/test_layers.py fails on SQL anywhere else. Every query takes parameters."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from warehouse.store import Warehouse


def _one(table: pa.Table) -> dict | None:
    rows = table.to_pylist()
    return rows[0] if rows else None


# -- ingest ---------------------------------------------------------------------------------
def usable_archive_with_content(warehouse: Warehouse, content: str) -> dict | None:
    """The first committed, usable archive with this content hash (archive_id, path)."""
    return _one(
        warehouse.query(
            "SELECT archive_id, path FROM archives WHERE content_sha256 = ? "
            "AND status IN ('ok', 'partial') ORDER BY imported_at LIMIT 1",
            [content],
        )
    )


def unmovable_record(warehouse: Warehouse, path: str) -> dict | None:
    """The record of a landing-folder entry an earlier run could not move."""
    return _one(
        warehouse.query(
            "SELECT archive_id, kind, landed_signature FROM archives "
            "WHERE path = ? AND landed_signature IS NOT NULL",
            [path],
        )
    )


def archive_state(warehouse: Warehouse, archive_id: str) -> dict | None:
    """An archive's content hash and the models of its committed inspection."""
    return _one(
        warehouse.query(
            "SELECT content_sha256, inspected_with FROM archives WHERE archive_id = ?",
            [archive_id],
        )
    )


def archive_paths(warehouse: Warehouse) -> set[str]:
    """Where every registered archive lies."""
    return set(warehouse.query("SELECT path FROM archives")["path"].to_pylist())


def first_errors(warehouse: Warehouse, archive_id: str, limit: int = 10) -> pa.Table:
    return warehouse.query(
        "SELECT source, source_row, field, reason FROM ingest_errors "
        "WHERE archive_id = ? ORDER BY error_index LIMIT ?",
        [archive_id, limit],
    )


# -- inspection -----------------------------------------------------------------------------
def inspectable_archives(warehouse: Warehouse, kinds: list[str]) -> list[dict]:
    """Archives of these kinds inspect may take: usable ones, and those a previous
    inspection failed on (models may do better now), never one ingest rejected (its
    reason stays in ingest_errors); oldest first."""
    return warehouse.query(
        "SELECT * FROM archives WHERE kind IN (SELECT unnest(?)) AND (status IN "
        "('ok', 'partial') OR (status = 'failed' AND inspected_with IS NOT NULL)) "
        "ORDER BY imported_at, archive_id",
        [kinds],
    ).to_pylist()


def sheet_references(
    warehouse: Warehouse,
    imprint_version: str,
    surface_format: str,
    archive_id: str | None = None,
    span: tuple[datetime, datetime] | None = None,
    ids_only: bool = False,
) -> pa.Table:
    """sheet_id, paint embedding and surface imprint (only sheet_id with ``ids_only``)
    of every sheet registered with this imprint version and surface layout (of one
    station archive when given; pictured within ``span``, first and last time, when
    given: a picture without a time always counts), in a stable order."""
    columns = (
        "sheet_id" if ids_only else "sheet_id, embedding, surface_descriptor, surface_template"
    )
    query = f"SELECT {columns} FROM sheet_references WHERE model_version = ? AND surface_format = ?"
    params: list = [imprint_version, surface_format]
    if archive_id is not None:
        query += " AND archive_id = ?"
        params.append(archive_id)
    if span is not None:
        query += " AND (captured_at IS NULL OR captured_at BETWEEN ? AND ?)"
        params.extend(span)
    return warehouse.query(query + " ORDER BY archive_id, sheet_id", params)


def newest_registration(
    warehouse: Warehouse, imprint_version: str, surface_format: str
) -> datetime | None:
    """When the marking station took its newest picture of a registered sheet."""
    found = _one(
        warehouse.query(
            "SELECT max(captured_at) AS newest FROM sheet_references "
            "WHERE model_version = ? AND surface_format = ?",
            [imprint_version, surface_format],
        )
    )
    return found["newest"] if found else None


# -- reports --------------------------------------------------------------------------------
def archive_path(warehouse: Warehouse, archive_id: str) -> str | None:
    found = _one(warehouse.query("SELECT path FROM archives WHERE archive_id = ?", [archive_id]))
    return found["path"] if found else None


def sheet_spans(warehouse: Warehouse, archive_id: str) -> list[dict]:
    """sheet_id, first_line, last_line of an archive's sheets, in line order."""
    return warehouse.query(
        "SELECT sheet_id, first_line, last_line FROM sheets WHERE archive_id = ? "
        "ORDER BY sheet_index",
        [archive_id],
    ).to_pylist()


def registered_sheet_ids(warehouse: Warehouse) -> set[str]:
    return set(warehouse.query("SELECT sheet_id FROM sheet_references")["sheet_id"].to_pylist())


def archive_defects(warehouse: Warehouse, archive_id: str) -> list[dict]:
    """frame_id, class_id, class_name, rle of every defect an archive's inspection found."""
    return warehouse.query(
        "SELECT frame_id, class_id, class_name, rle FROM defects WHERE archive_id = ?",
        [archive_id],
    ).to_pylist()


def sheet_summary(warehouse: Warehouse, archive_id: str) -> pa.Table:
    """One line per sheet of an archive, for a person: id, size, defects, grade."""
    return warehouse.query(
        "SELECT sheet_index AS sheet, sheet_id, round(similarity::DOUBLE, 2) AS sim, "
        "round(length_mm)::INT AS length_mm, round(width_mm)::INT AS width_mm, "
        "array_to_string(list_transform(map_entries(defect_counts), "
        "lambda e: e.key || ' ' || e.value::VARCHAR), ', ') AS defects, "
        "round(defect_area_ratio * 100, 3) AS area_pct, grade "
        "FROM sheets WHERE archive_id = ? ORDER BY sheet_index",
        [archive_id],
    )
