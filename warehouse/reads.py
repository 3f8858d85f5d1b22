"""The reads the serving API makes: sheets as the line saw them, with their defects.

Every query takes parameters; callers pass a cursor of ``Warehouse.reader()``.
"""

from __future__ import annotations

import json
from datetime import datetime

_SHEET_COLUMNS = (
    "sheet_id, archive_id, sheet_index, seen_at, line_id, camera_id, grade, similarity, "
    "nearest_sheet_id, "
    "complete, length_mm, width_mm, n_defects, defect_counts, defect_areas_mm2, "
    "defect_area_ratio, model_versions"
)


def _sheet(row: dict) -> dict:
    row = dict(row)
    for name in ("defect_counts", "defect_areas_mm2"):
        row[name] = dict(row[name] or [])
    row["model_versions"] = json.loads(row["model_versions"] or "{}")
    return row


def sheet_passes(
    cur,
    since: datetime | None = None,
    until: datetime | None = None,
    grade: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict]:
    """Sheets seen in [since, until), of one grade if given, newest first."""
    where, params = [], []
    if since is not None:
        where.append("seen_at >= ?")
        params.append(since)
    if until is not None:
        where.append("seen_at < ?")
        params.append(until)
    if grade is not None:
        where.append("grade = ?")
        params.append(grade)
    sql = f"SELECT {_SHEET_COLUMNS} FROM sheet_passes"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seen_at DESC NULLS LAST, archive_id, sheet_index LIMIT ? OFFSET ?"
    rows = cur.sql(sql, params=[*params, limit, offset]).to_arrow_table().to_pylist()
    return [_sheet(r) for r in rows]


def latest_pass(cur, sheet_id: str) -> tuple[dict, int] | None:
    """The latest time an identified sheet was seen, and how many times it was."""
    rows = (
        cur.sql(
            f"SELECT {_SHEET_COLUMNS}, passes FROM sheet_latest_pass WHERE sheet_id = ?",
            params=[sheet_id],
        )
        .to_arrow_table()
        .to_pylist()
    )
    if not rows:
        return None
    row = rows[0]
    passes = int(row.pop("passes"))
    return _sheet(row), passes


def sheet_defects(cur, archive_id: str, sheet_index: int) -> list[dict]:
    rows = (
        cur.sql(
            "SELECT frame_id, defect_index, class_id, class_name, rle, area, area_mm2, "
            "x_min, y_min, x_max, y_max, x_mm, y_mm, score FROM defects "
            "WHERE archive_id = ? AND sheet_index = ? ORDER BY x_mm NULLS LAST, frame_id, "
            "defect_index",
            params=[archive_id, sheet_index],
        )
        .to_arrow_table()
        .to_pylist()
    )
    for r in rows:
        r["bbox"] = [r.pop("x_min"), r.pop("y_min"), r.pop("x_max"), r.pop("y_max")]
    return rows


def readable(cur) -> int:
    """The number of committed archives: raises when the warehouse cannot be read."""
    return int(cur.execute("SELECT count(*) FROM archives").fetchall()[0][0])


def references_key(cur, imprint_version: str) -> tuple:
    """What identifies the sheets registered with an imprint version right now: their
    number, newest import and a checksum of who they are (changes when any does)."""
    return tuple(
        cur.execute(
            "SELECT count(*), coalesce(max(import_id), ''), "
            "coalesce(sum(hash(archive_id, sheet_id)), 0) "
            "FROM sheet_references WHERE model_version = ?",
            [imprint_version],
        ).fetchall()[0]
    )
