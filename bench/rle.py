"""RLE codec throughput on the 782 real Severstal masks, against the forms public code uses.

Baselines (the forms most Kaggle kernels copy):
  decode: a Python loop over the runs writing slices of a flat array;
  encode: the NumPy ``diff`` form (transpose, flatten, pad, compare, where).
Each round times every method once, in turn, so that a noisy machine hits all of them
alike; the table shows the median masks/s over the rounds and the ratio to the baseline.
Results are consumed as a pipeline would: single forms mask by mask, batch forms in
batches of 32 (a training batch), each result dropped before the next call.

    python bench/rle.py [--rounds 7] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from core.rle import rle_decode, rle_decode_many, rle_encode, rle_encode_many

SHAPE = (256, 1600)
BATCH = 32


def each(function: Callable[[object], object], items: list) -> None:
    """Call function on every item, dropping each result as a streaming consumer does."""
    for item in items:
        function(item)


def decode_loop(rle: str, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """The usual public decoder: parse with split, then a Python loop over the runs."""
    s = rle.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (s[0::2], s[1::2]))
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends, strict=True):
        img[lo:hi] = 1
    return img.reshape(shape, order="F")


def encode_numpy_diff(img: np.ndarray) -> str:
    """The usual public encoder: column-major flatten, pad, compare neighbours, where."""
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def load_masks(data: Path) -> list[str]:
    path = data / "severstal-rle" / "pseudo_labels_old_layout.csv"
    with path.open(newline="") as f:
        return [row["EncodedPixels"] for row in csv.DictReader(f) if row["EncodedPixels"]]


def measure(methods: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each method, interleaving the methods in every round."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()

    rles = load_masks(args.data)
    # Encoders get what a model hands them: C-ordered (H, W) uint8 masks.
    masks = [np.ascontiguousarray(m) for m in rle_decode_many(rles)]
    stack = np.stack(masks)
    for rle, mask in zip(rles[:50], masks[:50], strict=True):  # same answers before timing
        assert (decode_loop(rle) == mask).all() and encode_numpy_diff(mask) == rle

    n = len(rles)
    rle_batches = [rles[i : i + BATCH] for i in range(0, n, BATCH)]
    mask_batches = [stack[i : i + BATCH] for i in range(0, n, BATCH)]
    seconds = measure(
        {
            "decode: public loop": lambda: each(decode_loop, rles),
            "decode: rle_decode": lambda: each(rle_decode, rles),
            "decode: rle_decode_many": lambda: each(rle_decode_many, rle_batches),
            "encode: public numpy diff": lambda: each(encode_numpy_diff, masks),
            "encode: rle_encode": lambda: each(rle_encode, masks),
            "encode: rle_encode_many": lambda: each(rle_encode_many, mask_batches),
        },
        args.rounds,
    )
    table = Table(title=f"RLE codec, {n} real masks 256x1600, median of {args.rounds} rounds")
    for column in ("method", "masks/s", "µs/mask", "x baseline"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, s in seconds.items():
        baseline = seconds[
            "decode: public loop" if name.startswith("decode") else "encode: public numpy diff"
        ]
        table.add_row(name, f"{n / s:,.0f}", f"{s / n * 1e6:.1f}", f"{baseline / s:.2f}")
    console = Console()
    console.print(table)
    console.print(
        f"{platform.processor() or platform.machine()}, numpy {np.__version__}, "
        f"python {platform.python_version()}"
    )


if __name__ == "__main__":
    main()
