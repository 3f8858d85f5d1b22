"""Rows of a DuckDB query written out: for scripts as CSV, JSON lines or Parquet, streamed
batch by batch (never the whole result in memory), to a file that appears whole or to
stdout; for a person as a rich table."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

BATCH_ROWS = 65_536


def rich_table(rows: pa.Table, title: str | None = None):
    """An Arrow table as a rich table, for a person at a terminal."""
    from rich.table import Table

    table = Table(title=title)
    for name in rows.column_names:
        table.add_column(name, overflow="fold")
    for row in rows.to_pylist():
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    return table


@contextmanager
def _destination(out: Path | None) -> Iterator[BinaryIO]:
    """stdout, or a temporary file beside ``out`` renamed over it once complete."""
    if out is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as f:
            yield f
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _batch_writer(
    output_format: str, f: BinaryIO, schema: pa.Schema
) -> Iterator[Callable[[pa.RecordBatch], None]]:
    if output_format == "parquet":
        with pq.ParquetWriter(f, schema, compression="zstd") as writer:
            yield writer.write_batch
    elif output_format == "json":  # one object per line
        yield lambda batch: f.write(
            "".join(json.dumps(row, default=str) + "\n" for row in batch.to_pylist()).encode()
        )
    else:
        with pacsv.CSVWriter(f, schema) as writer:
            yield writer.write_batch


def _flat_for_csv(relation):
    """The relation with its nested columns (maps, lists, structs: CSV has none) as JSON
    text, e.g. ``{"scratches": 3}``."""
    nested = {
        f.name
        for f in relation.to_arrow_reader(1).schema
        if pa.types.is_nested(f.type) or pa.types.is_map(f.type)
    }
    if not nested:
        return relation

    def quoted(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    return relation.project(
        ", ".join(
            f"to_json({quoted(c)})::VARCHAR AS {quoted(c)}" if c in nested else quoted(c)
            for c in relation.columns
        )
    )


def write_rows(relation, output_format: str, out: Path | None) -> int:
    """Write every row of a DuckDB relation as ``csv``, ``json`` or ``parquet`` (``table``
    to a file is CSV too; nested values as JSON text there); returns the number of rows."""
    if output_format not in ("json", "parquet"):
        relation = _flat_for_csv(relation)
    reader = relation.to_arrow_reader(BATCH_ROWS)
    rows = 0
    with _destination(out) as f, _batch_writer(output_format, f, reader.schema) as write:
        for batch in reader:
            write(batch)
            rows += batch.num_rows
    return rows
