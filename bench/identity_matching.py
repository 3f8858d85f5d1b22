"""Matching time per query against the reference registry, at 1,000 and 100,000 sheets.

Methods, interleaved in every round so a noisy machine hits all alike:
  loop: a Python loop comparing the query with each reference in turn (the baseline:
        what a first version written sheet by sheet does);
  index, one query: ReferenceIndex.search with one query (an MES call, a sheet at a time);
  index, batch of 64: one search call for 64 queries (the inspect flow), per query.
Also the time to load the registry from the warehouse (DuckDB over Parquet) into an index.
Embeddings are random unit vectors of the imprint model's size (128): matching time does
not depend on what they encode.

    python bench/identity_matching.py [--rounds 7] [--sizes 1000 100000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from models.identity.matching import ReferenceIndex, normalise
from tasks.identify import reference_index
from warehouse.schema import TABLES
from warehouse.store import Warehouse

DIM = 128


def loop_search(query: np.ndarray, ids: list[str], refs: np.ndarray) -> tuple[str, float]:
    best, score = "", -2.0
    for sheet, ref in zip(ids, refs, strict=True):
        s = float(np.dot(query, ref))
        if s > score:
            best, score = sheet, s
    return best, score


def median_ms(run, rounds: int, per: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) / per * 1000)
    return statistics.median(times)


def warehouse_with(root: Path, ids: list[str], refs: np.ndarray) -> Warehouse:
    warehouse = Warehouse(root).ensure()
    rows = pa.table(
        {
            "archive_id": ["bench"] * len(ids),
            "import_id": ["i1"] * len(ids),
            "sheet_id": ids,
            "frame_id": ids,
            "captured_at": pa.array([0] * len(ids), pa.timestamp("us", tz="UTC")),
            "detection_score": pa.array(np.ones(len(ids), np.float32)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(refs.ravel()), DIM).cast(
                pa.list_(pa.float32())
            ),
            "model_version": ["1"] * len(ids),
            "detector_version": ["1"] * len(ids),
        }
    )
    for name in ("x_min", "y_min", "x_max", "y_max"):
        rows = rows.append_column(name, pa.array([0] * len(ids), pa.int32()))
    rows = rows.select(TABLES["sheet_references"].schema.names).cast(
        TABLES["sheet_references"].schema
    )
    warehouse.import_archive(
        {
            "archive_id": "bench",
            "import_id": "i1",
            "kind": "marking-station",
            "path": "bench",
            "content_sha256": "",
            "status": "ok",
            "n_images": len(ids),
            "n_labels": len(ids),
            "n_errors": 0,
            "imported_at": pa.scalar(0, pa.timestamp("us", tz="UTC")).as_py(),
            "steelsight_version": "bench",
        },
        {"sheet_references": rows},
    )
    return warehouse


def measure_size(n: int, rounds: int, rng: np.random.Generator) -> list[str]:
    ids = [f"S{i:07d}" for i in range(n)]
    refs = normalise(rng.normal(size=(n, DIM)))
    queries = normalise(rng.normal(size=(64, DIM)))
    index = ReferenceIndex(ids, refs)
    best, _ = index.search(queries[:3])  # same answers before timing
    assert [ids[b] for b in best] == [loop_search(q, ids, refs)[0] for q in queries[:3]]
    n_loop = 3 if n > 10000 else 20
    loop = median_ms(lambda: [loop_search(q, ids, refs) for q in queries[:n_loop]], rounds, n_loop)
    one = median_ms(lambda: [index.search(q[None]) for q in queries], rounds, 64)
    batch = median_ms(lambda: index.search(queries), rounds, 64)
    with tempfile.TemporaryDirectory() as tmp:
        warehouse = warehouse_with(Path(tmp), ids, refs)
        load = median_ms(lambda: reference_index(warehouse, "1"), min(rounds, 3), 1)
    return [
        f"{n:,}",
        f"{loop:.3f}",
        f"{one:.3f}",
        f"{batch:.4f}",
        f"{loop / one:,.0f}",
        f"{load:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    table = Table(title=f"Matching one query, median of {args.rounds} rounds (ms per query)")
    for column in (
        "registered",
        "loop (baseline)",
        "index, one query",
        "index, batch of 64",
        "x baseline (one)",
        "load from warehouse (ms)",
    ):
        table.add_column(column, justify="right")
    for n in args.sizes:
        table.add_row(*measure_size(n, args.rounds, rng))
    console = Console()
    console.print(table)
    console.print(
        f"{platform.processor() or platform.machine()}, numpy {np.__version__}, "
        f"python {platform.python_version()}, embedding {DIM} float32"
    )


if __name__ == "__main__":
    main()
