"""Identification per marking at 1,000, 10,000 and 100,000 registered sheets.

Identification rests on the steel around the marking (models/identity/pipeline.identify):
describe the query's steel (fixed cost), search every registered sheet's descriptors for
the nearest few (grows with the registry), verify those few by correlation (fixed
cost). This bench times each part on a real query and says what the registry holds.

The registry: the surface imprints of a twin line's station pictures (ground-truth
boxes), then random unit descriptors for every further sheet, up to the size measured.
The impostors' verification templates are the real ones turned upside down
(verification time does not depend on what a template shows); their memory is counted
as stored, float16, not allocated. Queries: the twin's inspection markings with their
frames around them. Random descriptors are farther from a query than real steel of
other sheets is, so "right / asked" checks that the path holds at every size; how well
sheets are told apart among real impostors is `steelsight evaluate identity`'s.

Methods, interleaved in every round so a noisy machine hits all alike:
  search, einsum (baseline): the descriptor search as first written, np.einsum;
  search, matmul: the same products as one BLAS call (what SurfaceIndex.candidates does);
  verify, matchTemplate (baseline): the nearest candidates verified by cv2.matchTemplate,
    once per candidate and turn (surface.verify(by_spectra=False));
  verify, spectra: the same scores as products of spectra (what identify does);
  identify: the whole of pipeline.identify for one marking (describe, search, verify).

    python bench/identity_surface.py [--rounds 5] [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from models.identity import pipeline, surface
from models.identity.matching import UNKNOWN, normalise
from models.identity.pipeline import SurfaceIndex
from tasks.archives import read_frames
from tasks.identity import marking_boxes, station_pictures
from twin.config import TwinConfig
from twin.recorder import simulate


class _Impostors:
    """Templates as SurfaceIndex reads them (``templates[i]``): the real ones for the
    twin's sheets, and for every further sheet one of them turned upside down (another
    texture to the correlation, at the same cost)."""

    def __init__(self, real: np.ndarray, n: int) -> None:
        self.real, self.n = real, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        if i < len(self.real):
            return self.real[i]
        return self.real[i % len(self.real)][::-1, ::-1]


def line(root: Path, sheets: int, seed: int):
    recording = simulate(TwinConfig(distortion=1.0), sheets, seed, root)
    boxes = marking_boxes(recording.station)
    refs = [
        (sheet, imprinted)
        for frame, sheet, picture in station_pictures(recording.station)
        if frame in boxes
        for imprinted in pipeline.references(picture, boxes[frame][0]["box"])
    ]
    frames = list(read_frames(recording.inspection))
    truth = marking_boxes(recording.inspection)
    queries = []
    for k, (frame_id, frame) in enumerate(frames):
        for m in truth.get(frame_id, []):
            before = frames[k - 1][1] if k else None
            after = frames[k + 1][1] if k + 1 < len(frames) else None
            queries.append((m["sheet_id"], frame, m["box"], before, after))
    return refs, queries


def registry(refs: list, n: int, rng: np.random.Generator) -> SurfaceIndex:
    ids = [sheet for sheet, _ in refs]
    real = np.stack([r.descriptor for _, r in refs])
    turns, dim = real.shape[1:]
    fill = normalise(rng.standard_normal(((n - len(ids)) * turns, dim), dtype=np.float32))
    descriptors = np.concatenate([real, fill.reshape(-1, turns, dim)])
    templates = np.stack([r.template.astype(np.float16) for _, r in refs])
    ids += [f"S{i:07d}" for i in range(len(ids), n)]
    return SurfaceIndex(ids, descriptors, _Impostors(templates, n))  # type: ignore[arg-type]


def einsum_search(index: SurfaceIndex, query: np.ndarray) -> np.ndarray:
    """SurfaceIndex.candidates as first written (steel only), einsum's own loop."""
    similar = np.einsum("ntd,sd->nts", index.descriptors, query)
    flat = similar.reshape(len(index), -1)
    order = np.argsort(-flat.max(axis=1))[: surface.CANDIDATES]
    for i in order:
        np.unravel_index(int(np.argmax(flat[i])), similar.shape[1:])
    return order


def matmul_search(index: SurfaceIndex, query: np.ndarray) -> np.ndarray:
    chosen = index.candidates(query, surface.DESCRIPTOR_SHIFTS, None, surface.CANDIDATES, 0)
    return np.array([row for row, *_ in chosen])


def median_ms(run, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(index: SurfaceIndex, queries: list, rounds: int) -> list[str]:
    _, frame, box, before, after = queries[0]
    query = surface.describe(frame, box, shifts=surface.DESCRIPTOR_SHIFTS)
    assert np.array_equal(einsum_search(index, query), matmul_search(index, query))
    threshold = surface.VERIFY_THRESHOLD
    answers = [pipeline.identify(f, b, index, threshold, bf, af) for _, f, b, bf, af in queries]
    right = sum(a.sheet_id == s for (s, *_), a in zip(queries, answers, strict=True))
    wrong = sum(a.sheet_id not in (s, UNKNOWN) for (s, *_), a in zip(queries, answers, strict=True))
    einsum = median_ms(lambda: einsum_search(index, query), rounds)
    matmul = median_ms(lambda: matmul_search(index, query), rounds)
    steel = surface.steel_mask(frame)
    chosen = index.candidates(query, surface.DESCRIPTOR_SHIFTS, None, surface.CANDIDATES, 0)
    templates = [index.templates[i].astype(np.float32) for i, *_ in chosen]
    turns, shifts = [t for _, t, *_ in chosen], [d for _, _, d, _ in chosen]

    def verified(by_spectra: bool) -> np.ndarray:
        return surface.verify(
            frame, box, templates, steel, turns, shifts=shifts, by_spectra=by_spectra
        )

    assert np.allclose(verified(True), verified(False), atol=1e-5)
    by_matching = median_ms(lambda: verified(False), rounds)
    by_spectra = median_ms(lambda: verified(True), rounds)
    whole = median_ms(
        lambda: pipeline.identify(frame, box, index, threshold, before, after), rounds
    )
    d_bytes = index.descriptors[0].nbytes
    t_bytes = index.templates[0].nbytes
    gb = len(index) * (d_bytes + t_bytes) / 1e9
    return [
        f"{len(index):,}",
        f"{einsum:.1f}",
        f"{matmul:.1f}",
        f"{einsum / matmul:.1f}",
        f"{by_matching:.1f}",
        f"{by_spectra:.1f}",
        f"{by_matching / by_spectra:.1f}",
        f"{whole:.1f}",
        f"{right}/{len(queries)}, {wrong} wrong",
        f"{len(index) * d_bytes / 1e9:.2f} + {len(index) * t_bytes / 1e9:.2f} = {gb:.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--sheets", type=int, default=8, help="twin sheets (real rows)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        refs, queries = line(Path(folder), args.sheets, seed=21)
    rng = np.random.default_rng(0)
    table = Table(
        title=f"Identification of one marking, median of {args.rounds} rounds (ms); "
        f"{len(queries)} twin markings (distortion 1.0, seed 21) against each registry"
    )
    for column in (
        "registered",
        "search, einsum (baseline)",
        "search, matmul",
        "x baseline",
        "verify, matchTemplate (baseline)",
        "verify, spectra",
        "verify x baseline",
        "identify, whole",
        "right / asked",
        "registry GB (descriptors + templates)",
    ):
        table.add_column(column, justify="right")
    for n in args.sizes:
        table.add_row(*measure(registry(refs, n, rng), queries, args.rounds))
    console = Console()
    console.print(table)
    d = surface.DESCRIPTOR_SHAPE
    console.print(
        f"{platform.processor() or platform.machine()}, numpy {np.__version__}, python "
        f"{platform.python_version()}; descriptor {d[0]} turns x {d[1]} float32 per sheet, "
        f"{len(surface.DESCRIPTOR_SHIFTS)} shifts per query, {surface.CANDIDATES} candidates "
        f"verified (template {surface.TEMPLATE_SHAPE} float16)"
    )


if __name__ == "__main__":
    main()
