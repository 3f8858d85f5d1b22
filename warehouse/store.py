"""The one door to the warehouse: Parquet files, the DuckDB catalogue, atomic commits.

Layout under the warehouse directory::

    parquet/<table>/<archive_id>~<import_id>.parquet   rows of one import of one archive
    parquet/archives/<archive_id>.parquet              the archive's row: the commit marker
    parquet/<table>/_schema.parquet                    no rows; keeps every table readable
    steelsight.duckdb                                  views for analysts (no data inside)

An import writes its files for every table under a new import_id, then replaces the
archive's row (one atomic rename): that is the commit. The views show, per archive,
only the rows of the import its archive row names, so readers see the old import or
the new one whole, never a mix, and a crash before the commit leaves the previous
state readable. Files of superseded imports are removed after the commit.

The pipeline never needs the DuckDB file to write data, so an analyst who keeps it
open blocks nothing; readers inside steelsight use an in-memory connection with the
same views.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.schema import SCHEMA_VERSION, TABLES, TableSpec

log = logging.getLogger(__name__)

CATALOGUE_NAME = "steelsight.duckdb"
PLACEHOLDER_NAME = "_schema.parquet"


class WarehouseError(RuntimeError):
    """Rows that do not fit a table's schema, or a warehouse that cannot be written."""


def new_import_id() -> str:
    return uuid.uuid4().hex[:16]


def _sql_string(value: str) -> str:
    """A SQL string literal. Only for our own paths in view DDL, which takes no parameters."""
    return "'" + value.replace("'", "''") + "'"


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file under a temporary name, flush it to disk, then rename it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def conform(spec: TableSpec, rows: pa.Table) -> pa.Table:
    """The rows in the table's column order and types; WarehouseError names what does not fit.
    A nullable column the rows lack is filled with nulls; a required one is an error."""
    for f in spec.schema:
        if f.nullable and f.name not in rows.column_names:
            rows = rows.append_column(f.name, pa.nulls(rows.num_rows, f.type))
    missing = [name for name in spec.schema.names if name not in rows.column_names]
    extra = [name for name in rows.column_names if name not in spec.schema.names]
    if missing or extra:
        raise WarehouseError(f"{spec.name}: missing columns {missing}, unknown columns {extra}")
    for name in spec.not_null:
        if rows.column(name).null_count:
            raise WarehouseError(f"{spec.name}.{name} must not be null")
    try:
        return rows.select(spec.schema.names).cast(spec.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as error:
        raise WarehouseError(f"{spec.name}: rows do not fit the schema: {error}") from error


def view_statements(parquet_dir: Path, home: Path) -> list[str]:
    """DDL for one view per table (committed imports only) and the views in views.sql.
    Paths stored relative to the home are shown absolute, in ``home``."""

    def files(table: str) -> str:
        return _sql_string(str(parquet_dir / table / "*.parquet"))

    def columns(table: str) -> str:
        paths = TABLES[table].home_paths
        if not paths:
            return "t.*"
        base = _sql_string(str(home) + "/")
        shown = ", ".join(
            f"CASE WHEN t.{c} IS NULL OR starts_with(t.{c}, '/') THEN t.{c} "
            f"ELSE {base} || t.{c} END AS {c}"
            for c in paths
        )
        return f"t.* REPLACE ({shown})"

    statements = [
        f"CREATE OR REPLACE VIEW archives AS SELECT {columns('archives')} "
        f"FROM read_parquet({files('archives')}, union_by_name = true) AS t"
    ]
    for name in TABLES:
        if name == "archives":
            continue
        statements.append(
            f"CREATE OR REPLACE VIEW {name} AS SELECT {columns(name)} "
            f"FROM read_parquet({files(name)}, union_by_name = true) AS t "
            "SEMI JOIN archives AS a ON t.archive_id = a.archive_id AND t.import_id = a.import_id"
        )
    return statements + list(_analyst_views())


def relative_to_home(spec: TableSpec, rows: pa.Table, home: Path) -> pa.Table:
    """The table's path columns with paths inside ``home`` made relative to it."""
    for name in spec.home_paths:
        stored = []
        for value in rows.column(name).to_pylist():
            path = Path(value) if value is not None else None
            inside = path is not None and path.is_absolute() and path.is_relative_to(home)
            stored.append(path.relative_to(home).as_posix() if inside else value)
        index = rows.schema.get_field_index(name)
        rows = rows.set_column(index, rows.schema.field(name), pa.array(stored, pa.string()))
    return rows


@lru_cache
def _analyst_views() -> tuple[str, ...]:
    """The statements of views.sql, read once per process."""
    sql = resources.files("warehouse").joinpath("views.sql").read_text()
    return tuple(s.strip() for s in sql.split(";") if s.strip())


class Warehouse:
    """Parquet tables and their DuckDB catalogue under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        # STEELSIGHT_HOME: paths inside it are stored relative to it (TableSpec.home_paths)
        self.home = self.root.parent
        self.parquet_dir = self.root / "parquet"
        self.catalogue_path = self.root / CATALOGUE_NAME
        self._views: duckdb.DuckDBPyConnection | None = None  # made by the first query
        self._views_lock = threading.Lock()

    def __getstate__(self) -> dict:  # sent to Prefect tasks and Dask workers: no connection
        return {k: v for k, v in self.__dict__.items() if k not in ("_views", "_views_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _views=None, _views_lock=threading.Lock())

    # -- set-up ---------------------------------------------------------------------------
    def ensure(self) -> Warehouse:
        """Create the folders, the empty placeholders and the catalogue's views if missing."""
        for spec in TABLES.values():
            folder = self.parquet_dir / spec.name
            folder.mkdir(parents=True, exist_ok=True)
            placeholder = folder / PLACEHOLDER_NAME
            if not placeholder.exists() or pq.read_schema(placeholder) != spec.schema:
                _write_atomic(spec.empty(), placeholder)
        self._ensure_catalogue()
        return self

    def _catalogue_meta(self) -> list[tuple[str, str]]:
        """What the catalogue must have been built for: schema, folder and view text."""
        views = hashlib.sha256(
            "\n".join(view_statements(self.parquet_dir, self.home)).encode()
        ).hexdigest()
        return [
            ("schema_version", str(SCHEMA_VERSION)),
            ("parquet_dir", str(self.parquet_dir)),
            ("views_digest", views[:16]),
        ]

    def _catalogue_is_current(self) -> bool:
        try:
            with duckdb.connect(str(self.catalogue_path), read_only=True) as con:
                found = con.sql("SELECT key, value FROM steelsight_meta ORDER BY key").fetchall()
                return found == sorted(self._catalogue_meta())
        except duckdb.Error:
            return False  # no catalogue yet, an older one, or one held open elsewhere

    def _ensure_catalogue(self) -> None:
        if self._catalogue_is_current():
            return
        try:
            with duckdb.connect(str(self.catalogue_path)) as con:
                con.execute("BEGIN")
                for statement in view_statements(self.parquet_dir, self.home):
                    con.execute(statement)
                con.execute("CREATE OR REPLACE TABLE steelsight_meta (key VARCHAR, value VARCHAR)")
                con.executemany("INSERT INTO steelsight_meta VALUES (?, ?)", self._catalogue_meta())
                con.execute("COMMIT")
        except duckdb.TransactionException:
            # Another writer in this process got there first; fine if it wrote the same.
            if not self._catalogue_is_current():
                raise
        except duckdb.IOException as error:
            log.warning(
                "catalogue %s is held by another process, its views were not refreshed (%s); "
                "data is written all the same: close the other session and run again",
                self.catalogue_path,
                error,
            )

    # -- writing --------------------------------------------------------------------------
    def write_import(self, archive_id: str, import_id: str, tables: Mapping[str, pa.Table]) -> None:
        """Write one import's rows for the given tables (not yet visible: see commit)."""
        for name, rows in tables.items():
            if name == "archives":
                raise WarehouseError("the archives row is written by commit(), not write_import()")
            spec = TABLES[name]
            rows = relative_to_home(spec, conform(spec, rows), self.home)
            ours = pc.and_(
                pc.equal(rows["archive_id"], archive_id), pc.equal(rows["import_id"], import_id)
            )
            if rows.num_rows and not pc.all(ours).as_py():
                raise WarehouseError(f"{name}: rows of another archive or import")
            _write_atomic(rows, self.parquet_dir / name / f"{archive_id}~{import_id}.parquet")

    def commit(self, archive_row: Mapping[str, object]) -> None:
        """Make an import visible: replace the archive's row, then drop superseded files."""
        spec = TABLES["archives"]
        row = relative_to_home(
            spec, conform(spec, pa.Table.from_pylist([dict(archive_row)])), self.home
        )
        archive_id = row["archive_id"][0].as_py()
        import_id = row["import_id"][0].as_py()
        _write_atomic(row, self.parquet_dir / "archives" / f"{archive_id}.parquet")
        self._remove_other_imports(archive_id, keep=import_id)

    def import_archive(
        self, archive_row: Mapping[str, object], tables: Mapping[str, pa.Table]
    ) -> None:
        """Write every table of one import and commit it: the whole import, or none of it.

        A table without rows in this import gets no file; the views then show it empty
        for this archive, since they only show rows of the committed import.
        """
        archive_id, import_id = str(archive_row["archive_id"]), str(archive_row["import_id"])
        self.write_import(archive_id, import_id, {n: t for n, t in tables.items() if t.num_rows})
        self.commit(archive_row)

    def forget(self, archive_id: str) -> None:
        """Remove an archive's row and every import of it (the row first: the views stop
        showing the archive at once)."""
        (self.parquet_dir / "archives" / f"{archive_id}.parquet").unlink(missing_ok=True)
        self._remove_other_imports(archive_id, keep="")

    def _remove_other_imports(self, archive_id: str, keep: str) -> None:
        for spec in TABLES.values():
            folder = self.parquet_dir / spec.name
            for path in folder.glob(f"{archive_id}~*.parquet"):
                if path.stem.split("~", 1)[1] != keep:
                    path.unlink(missing_ok=True)
            for path in folder.glob(f".{archive_id}~*.tmp"):
                path.unlink(missing_ok=True)

    # -- reading --------------------------------------------------------------------------
    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with the warehouse's views (takes no file lock)."""
        con = duckdb.connect()
        for statement in view_statements(self.parquet_dir, self.home):
            con.execute(statement)
        return con

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A connection for a long-lived reader (the serving API): the views, and no file
        access beyond the warehouse's Parquet folder: no other file, no ATTACH, and its
        settings locked. Use one ``cursor()`` per thread."""
        con = duckdb.connect()
        con.execute(f"SET allowed_directories = [{_sql_string(str(self.parquet_dir) + '/')}]")
        for statement in view_statements(self.parquet_dir, self.home):
            con.execute(statement)
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor on this object's connection with the views, which is made once: a view
        lists its Parquet files again at each query, so every query sees the latest
        commits. One cursor per call, so threads may query at once."""
        with self._views_lock:
            if self._views is None:
                self._views = self.connect()
            return self._views.cursor()

    def row_counts(self) -> dict[str, int]:
        """Committed rows per table."""
        with self._cursor() as con:
            return {
                name: con.sql(f'SELECT count(*) FROM "{name}"').fetchall()[0][0] for name in TABLES
            }

    def query(self, sql: str, params: list | None = None) -> pa.Table:
        """Run one parameterised query over the views and return its rows."""
        with self._cursor() as con:
            return con.sql(sql, params=params or None).to_arrow_table()
