"""The warehouse's guarantees: atomic imports, a catalogue analysts can hold open, checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from tasks.labels import import_label_source
from warehouse.checks import run_checks
from warehouse.schema import TABLES
from warehouse.store import Warehouse, WarehouseError


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse").ensure()


def test_a_crash_before_the_commit_leaves_the_previous_import_whole(
    shared_data: Path, warehouse: Warehouse
) -> None:
    summary = import_label_source(shared_data / "severstal-sample", warehouse)
    before = {t: warehouse.query(f"SELECT * FROM {t} ORDER BY ALL") for t in ("images", "labels")}
    # A real process writes a new import of the same archive, table by table, and is
    # killed (SIGKILL) after the files but before the commit.
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        import pyarrow as pa
        from warehouse.store import Warehouse
        w = Warehouse(Path({str(warehouse.root)!r}))
        rows = w.query("SELECT * FROM labels")
        rows = rows.set_column(rows.schema.get_field_index("import_id"), "import_id",
                               pa.array(["crashed"] * rows.num_rows))
        w.write_import({summary.archive_id!r}, "crashed", {{"labels": rows.slice(0, 3)}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    assert result.returncode == -9
    assert any("crashed" in p.name for p in (warehouse.parquet_dir / "labels").iterdir())
    for table, rows in before.items():
        assert warehouse.query(f"SELECT * FROM {table} ORDER BY ALL") == rows
    # the next import of the archive commits and clears the crashed files away
    import_label_source(shared_data / "severstal-sample", warehouse)
    assert not any("crashed" in p.name for p in (warehouse.parquet_dir / "labels").iterdir())
    assert warehouse.row_counts()["labels"] == 19


def test_analysts_open_the_catalogue_with_plain_duckdb_while_imports_go_on(
    shared_data: Path, warehouse: Warehouse
) -> None:
    analyst = duckdb.connect(str(warehouse.catalogue_path))  # read-write: holds the file lock
    try:
        assert analyst.sql("SELECT count(*) FROM labels").fetchall() == [(0,)]
        import_label_source(shared_data / "severstal-sample", warehouse)  # must not need the lock
        assert analyst.sql("SELECT count(*) FROM labels").fetchall() == [(19,)]
        Warehouse(warehouse.root).ensure()  # up to date: no write wanted, no error
    finally:
        analyst.close()
    with duckdb.connect(str(warehouse.catalogue_path), read_only=True) as con:
        assert con.sql("SELECT n_labels FROM label_summary WHERE class_id = 3").fetchall() == [(9,)]


def test_catalogue_follows_a_moved_warehouse(
    shared_data: Path, tmp_path: Path, warehouse: Warehouse
) -> None:
    import_label_source(shared_data / "severstal-sample", warehouse)
    moved = warehouse.root.rename(tmp_path / "moved")
    Warehouse(moved).ensure()
    with duckdb.connect(str(moved / "steelsight.duckdb"), read_only=True) as con:
        assert con.sql("SELECT count(*) FROM images").fetchall() == [(20,)]


def test_checks_find_duplicate_keys_and_dangling_references(warehouse: Warehouse) -> None:
    ids = {"archive_id": "a1", "import_id": "i1"}
    image = {
        **ids,
        "image_id": "x.jpg",
        "path": "/x.jpg",
        "width": 3,
        "height": 4,
        "channels": 1,
        "sha256": "0",
    }
    label = {
        **ids,
        "image_id": "y.jpg",
        "label_index": 0,
        "class_id": 1,
        "class_name": "pits",
        "geometry": "mask",
        "rle": "1 1",
        "area": 1,
        "x_min": 0,
        "y_min": 0,
        "x_max": 0,
        "y_max": 0,
        "source_row": 2,
    }
    warehouse.import_archive(
        {
            **ids,
            "kind": "severstal",
            "path": "/a",
            "content_sha256": "0",
            "status": "ok",
            "n_images": 2,
            "n_labels": 1,
            "n_errors": 0,
            "imported_at": pa.scalar(0, pa.timestamp("us", "UTC")).as_py(),
            "steelsight_version": "test",
        },
        {
            "images": pa.Table.from_pylist([image, image], TABLES["images"].schema),
            "labels": pa.Table.from_pylist([label], TABLES["labels"].schema),
        },
    )
    with warehouse.connect() as con:
        failing = {(r.table, r.check): r.failing_rows for r in run_checks(con) if not r.ok}
    assert failing == {
        ("images", "unique (archive_id, image_id)"): 2,
        ("labels", "(archive_id, image_id) in images"): 1,
    }


def test_rows_that_do_not_fit_are_refused_with_the_table_and_column(warehouse: Warehouse) -> None:
    rows = pa.table({"archive_id": ["a"], "import_id": ["i"]})
    with pytest.raises(WarehouseError, match="images: missing columns"):
        warehouse.write_import("a", "i", {"images": rows})
    nulls = pa.Table.from_pylist(
        [{"archive_id": "a", "import_id": "i", "image_id": None}], TABLES["labels"].schema
    )
    with pytest.raises(WarehouseError, match=r"labels\.image_id must not be null"):
        warehouse.write_import("a", "i", {"labels": nulls})
    assert not list((warehouse.parquet_dir / "labels").glob("a~*"))


def test_references_registered_before_box_ranks_are_still_searched(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    """A station registered before ``box_rank`` existed left Parquet files without the
    column: its sheets are still in the index (rank null) and the key checks pass."""
    from datetime import UTC, datetime

    import numpy as np
    import pyarrow.parquet as pq

    from models.identity import surface
    from tasks.identify import reference_index

    def reference(sheet_id: str, rank: int) -> dict:
        return {
            "archive_id": "station-1",
            "import_id": "i1",
            "sheet_id": sheet_id,
            "frame_id": f"frame_{sheet_id}",
            "captured_at": datetime(2026, 12, 1, tzinfo=UTC),
            "x_min": 10,
            "y_min": 10,
            "x_max": 310,
            "y_max": 70,
            "detection_score": 0.9,
            "box_rank": rank,
            "embedding": [1.0, 0.0],
            "surface_format": surface.FORMAT,
            "surface_angle": 0.0,
            "surface_descriptor": [0.0] * int(np.prod(surface.DESCRIPTOR_SHAPE)),
            "surface_template": np.zeros(surface.TEMPLATE_SHAPE, np.float16).tobytes(),
            "model_version": "1",
            "detector_version": "1",
        }

    rows = [reference("H1", 0), reference("H2", 0), reference("H2", 1)]
    warehouse.import_archive(
        {
            "archive_id": "station-1",
            "import_id": "i1",
            "kind": "marking-station",
            "path": str(tmp_path / "station"),
            "content_sha256": "0" * 64,
            "status": "ok",
            "n_images": 2,
            "n_labels": 3,
            "n_errors": 0,
            "imported_at": datetime.now(UTC),
            "steelsight_version": "test",
        },
        {"sheet_references": pa.Table.from_pylist(rows, TABLES["sheet_references"].schema)},
    )
    index = reference_index(warehouse, "1")
    assert index.sheet_ids == ["H1", "H2", "H2"] and index.sheets == 2
    # the same station as an older steelsight wrote it: one row per sheet, no box_rank
    (written,) = [
        p for p in (warehouse.parquet_dir / "sheet_references").iterdir() if "station-1" in p.name
    ]
    old = pq.read_table(written).drop_columns(["box_rank"]).slice(0, 2)
    pq.write_table(old, written)
    reopened = Warehouse(warehouse.root).ensure()
    index = reference_index(reopened, "1")
    assert index.sheet_ids == ["H1", "H2"] and index.sheets == 2
    ranks = reopened.query("SELECT box_rank FROM sheet_references")["box_rank"].to_pylist()
    assert ranks == [None, None]
    with reopened.connect() as con:
        failing = [r for r in run_checks(con) if not r.ok]
    assert not failing, failing
