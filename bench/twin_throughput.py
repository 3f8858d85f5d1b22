"""Digital twin generation throughput: frames/s rendering alone and writing each archive kind.

Rendering alone (frames computed, nothing written) is the floor the recorder adds to.
Each round runs every method once, in turn; the table shows the median over rounds.

    python bench/twin_throughput.py [--sheets 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from twin.config import TwinConfig
from twin.line import frames, plan_line
from twin.recorder import simulate


def render_only(config: TwinConfig, sheets: int, seed: int) -> int:
    plans, total = plan_line(config, sheets, seed)
    return sum(1 for _ in frames(config, plans, total, seed))


def record(config: TwinConfig, sheets: int, seed: int) -> int:
    out = Path(tempfile.mkdtemp(prefix="twin-bench-"))
    try:
        return simulate(config, sheets, seed, out).n_frames
    finally:
        shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheets", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    methods = {
        "render only (no writing)": lambda: render_only(TwinConfig(), args.sheets, 1),
        "record: FFV1 video + ground truth": lambda: record(TwinConfig(), args.sheets, 1),
        "record: JPEG frames + ground truth": lambda: record(
            TwinConfig(archive_format="frames"), args.sheets, 1
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in methods}
    counts: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, run in methods.items():
            start = time.perf_counter()
            counts[name] = run()
            rates[name].append(counts[name] / (time.perf_counter() - start))
    table = Table(title=f"Twin throughput, {args.sheets} sheets, median of {args.rounds} rounds")
    for column in ("method", "frames", "frames/s", "vs render only"):
        table.add_column(column, justify="left" if column == "method" else "right")
    floor = statistics.median(rates["render only (no writing)"])
    for name, values in rates.items():
        rate = statistics.median(values)
        table.add_row(name, str(counts[name]), f"{rate:.1f}", f"{rate / floor:.2f}")
    console = Console()
    console.print(table)
    console.print(f"{platform.machine()}, {os.cpu_count()} cores, one process")


if __name__ == "__main__":
    main()
