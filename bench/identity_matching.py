"""Paint-embedding search time per query, at 1,000 and 100,000 registered sheets.

This is the search that proposes candidates from a marking's paint (ReferenceIndex over
the imprint network's embeddings). Identification itself now rests on the steel around
the marking (models/identity/pipeline.py: surface descriptors, then verification of the
nearest few); its time per marking is in bench/identity_cues.py, at up to 1,000 sheets.

Methods, interleaved in every round so a noisy machine hits all alike:
  loop: a Python loop comparing the query with each reference in turn (the baseline:
        what a first version written sheet by sheet does);
  index, one query: ReferenceIndex.search with one query (an MES call, a sheet at a time);
  index, batch of 64: one search call for 64 queries (the inspect flow), per query.
Embeddings are random unit vectors of the imprint model's size (128): matching time does
not depend on what they encode.

    python bench/identity_matching.py [--rounds 7] [--sizes 1000 100000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from models.identity.matching import ReferenceIndex, normalise

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
    return [
        f"{n:,}",
        f"{loop:.3f}",
        f"{one:.3f}",
        f"{batch:.4f}",
        f"{loop / one:,.0f}",
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
