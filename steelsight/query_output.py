"""Rows of a DuckDB query written for scripts: CSV, JSON lines or Parquet, streamed batch by
batch (never the whole result in memory), to a file that appears whole or to stdout."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

BATCH_ROWS = 65_536


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


def _json_lines(batch: pa.RecordBatch) -> bytes:
    rows = batch.to_pylist()
    return "".join(json.dumps(row, default=str) + "\n" for row in rows).encode()


def write_rows(relation, output_format: str, out: Path | None) -> int:
    """Write every row of a DuckDB relation as ``csv``, ``json`` or ``parquet`` (``table``
    to a file is CSV too); returns the number of rows."""
    reader = relation.to_arrow_reader(BATCH_ROWS)
    rows = 0
    with _destination(out) as f:
        if output_format == "parquet":
            with pq.ParquetWriter(f, reader.schema, compression="zstd") as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
        elif output_format == "json":
            for batch in reader:
                f.write(_json_lines(batch))
                rows += batch.num_rows
        else:
            with pacsv.CSVWriter(f, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
    return rows
