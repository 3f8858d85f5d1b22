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
    identified: bool | None = None,
    line_id: str | None = None,
) -> list[dict]:
    """Sheets seen in [since, until), of one grade, identified or not, of one line if
    given; newest first."""
    where, params = [], []
    if identified is not None:
        where.append("(sheet_id <> 'unknown') = ?")
        params.append(identified)
    if line_id is not None:
        where.append("line_id = ?")
        params.append(line_id)
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


# -- sheet maps and the quality page ---------------------------------------------------------
def line_ids(cur) -> list[str]:
    """The lines recordings came from."""
    rows = cur.execute(
        "SELECT DISTINCT line_id FROM archives WHERE line_id IS NOT NULL ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def find_archive(cur, name: str) -> str | None:
    """The inspected archive with this id, or whose folder has this name (the newest)."""
    rows = cur.execute(
        "SELECT archive_id FROM archives WHERE inspected_with IS NOT NULL "
        "AND (archive_id = ? OR parse_filename(path) = ?) ORDER BY imported_at DESC LIMIT 1",
        [name, name],
    ).fetchall()
    return rows[0][0] if rows else None


def find_sheet(cur, archive_id: str, sheet: str) -> int | None:
    """The sheet of the archive by its index (a number) or its identified ID."""
    index = int(sheet) if sheet.isdigit() else -1
    rows = cur.execute(
        "SELECT sheet_index FROM sheets WHERE archive_id = ? AND (sheet_index = ? OR "
        "(sheet_id = ? AND sheet_id <> 'unknown')) ORDER BY sheet_index <> ?, sheet_index",
        [archive_id, index, sheet, index],
    ).fetchall()
    return int(rows[0][0]) if rows else None


def sheet_to_draw(cur, archive_id: str, sheet_index: int) -> dict | None:
    """A sheet with what drawing it needs: its size, frames and the recording's scale."""
    rows = (
        cur.sql(
            "SELECT p.sheet_id, p.sheet_index, p.archive_id, p.grade, p.length_mm, p.width_mm, "
            "p.first_frame, p.last_frame, p.first_line, p.last_line, p.n_defects, "
            "p.defect_counts, p.similarity, p.complete, p.archive_path AS path, p.line_id, "
            "p.camera_id, p.seen_at, a.mm_per_px, a.frame_width, a.frame_height "
            "FROM sheet_passes AS p JOIN archives AS a USING (archive_id) "
            "WHERE p.archive_id = ? AND p.sheet_index = ?",
            params=[archive_id, sheet_index],
        )
        .to_arrow_table()
        .to_pylist()
    )
    if not rows:
        return None
    row = rows[0]
    row["defect_counts"] = dict(row["defect_counts"] or [])
    return row


def sheet_frames(cur, archive_id: str, first: int, last: int) -> list[dict]:
    """The frames numbered first..last of an archive, in order, with their defect counts."""
    return (
        cur.sql(
            "SELECT frame_id, frame_number, captured_at, n_defects, n_markings FROM frames "
            "WHERE archive_id = ? AND frame_number BETWEEN ? AND ? ORDER BY frame_number",
            params=[archive_id, first, last],
        )
        .to_arrow_table()
        .to_pylist()
    )


def frame_defects(cur, archive_id: str, frame_id: str) -> list[dict]:
    """The defects found on one frame: class and mask."""
    return (
        cur.sql(
            "SELECT class_id, class_name, rle, area, score FROM defects "
            "WHERE archive_id = ? AND frame_id = ? ORDER BY defect_index",
            params=[archive_id, frame_id],
        )
        .to_arrow_table()
        .to_pylist()
    )


def archive_location(cur, archive_id: str) -> str | None:
    rows = cur.execute("SELECT path FROM archives WHERE archive_id = ?", [archive_id]).fetchall()
    return rows[0][0] if rows else None


# -- drift ------------------------------------------------------------------------------------
def drift_overview(cur, limit: int = 50) -> list[dict]:
    """The newest inspected recordings with their drift: flagged or not, the worst class's
    gate PSI and the share of unknown sheets."""
    return (
        cur.sql(
            "SELECT a.archive_id, parse_filename(a.path) AS recording, a.line_id, "
            "a.imported_at AS inspected_at, bool_or(d.drifted) AS drifted, "
            "max(d.value) FILTER (WHERE d.measure = 'gate_psi') AS worst_gate_psi, "
            "arg_max(d.subject, d.value) FILTER (WHERE d.measure = 'gate_psi') AS worst_class, "
            "max(d.value) FILTER (WHERE d.measure = 'unknown_share') AS unknown_share, "
            "max(d.value) FILTER (WHERE d.measure = 'identified_similarity') "
            "AS identified_similarity, max(d.samples) FILTER (WHERE d.measure = 'gate_psi') "
            "AS frames, any_value(d.model_version) AS model_version "
            "FROM drift AS d JOIN archives AS a USING (archive_id) "
            "GROUP BY ALL ORDER BY inspected_at DESC, archive_id LIMIT ?",
            params=[limit],
        )
        .to_arrow_table()
        .to_pylist()
    )


def drift_measures(cur, archive_id: str) -> list[dict]:
    """Every drift row of one recording."""
    return (
        cur.sql(
            "SELECT measure, subject, value, reference, threshold, drifted, samples "
            "FROM drift WHERE archive_id = ? ORDER BY measure, subject",
            params=[archive_id],
        )
        .to_arrow_table()
        .to_pylist()
    )


def latest_drift(cur) -> tuple[str, list[dict]] | None:
    """The newest inspected recording that has drift rows, and its rows."""
    rows = cur.execute(
        "SELECT archive_id FROM archives WHERE archive_id IN (SELECT archive_id FROM drift) "
        "ORDER BY imported_at DESC LIMIT 1"
    ).fetchall()
    if not rows:
        return None
    return rows[0][0], drift_measures(cur, rows[0][0])
