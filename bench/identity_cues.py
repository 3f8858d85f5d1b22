"""What identifies a sheet: the steel around its marking, measured on twin recordings.

    python bench/identity_cues.py --calibrate PAIR_A --pair PAIR_B [--top 5] [--leave-out 0.1]
        [--context] [--grown]

PAIR_A and PAIR_B are marking-station + inspection archive pairs from `steelsight
simulate` with different seeds: the verification threshold is chosen on PAIR_A (for a
false-accept rate of 0.1 % per query), the figures are measured on PAIR_B. Boxes are the
twin's ground truth (oracle), so the figures are the imprint's alone, not the detector's;
with ``--context`` a box the frame's edge cuts is made whole, as the inspection workers
join a marking's two parts across the seam (pipeline.across_seams); with ``--grown`` each
box of PAIR_B is grown as a detector's is that boxes the marking with a scale patch
along its text (``_grown``). Queries go through
the product's own path, models/identity/pipeline.identify.

Cues (models/identity/surface.py):
- surface retrieval: cosine of the band-passed steel around the marking, the station's
  turned level on its text line; the nearest registered sheet;
- + verification: the top candidates re-scored by normalised correlation over small
  shifts and turns; the answer is the best verified candidate at or above the threshold.

Per detection: every marking the twin lists in a frame is a query. Per sheet: a sheet's
best verified detection (the evidence of its whole pass).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from models.data import unit_hash
from models.identity import pipeline
from models.identity.matching import choose_threshold
from models.identity.pipeline import SurfaceIndex
from tasks.archives import read_frames
from tasks.identity import find_pairs, marking_boxes, station_pictures


def _register(pair, leave_out: float) -> tuple[SurfaceIndex, float]:
    boxes = marking_boxes(pair.station)
    started = time.perf_counter()
    refs = [
        (sheet, imprinted)
        for frame, sheet, picture in station_pictures(pair.station)
        if frame in boxes and unit_hash(f"leave-out/{sheet}") >= leave_out
        for imprinted in pipeline.references(picture, boxes[frame][0]["box"])
    ]
    seconds = (time.perf_counter() - started) / max(len({s for s, _ in refs}), 1)
    index = SurfaceIndex(
        [s for s, _ in refs],
        np.stack([r.descriptor for _, r in refs]),
        np.stack([r.template.astype(np.float16) for _, r in refs]),
    )
    return index, seconds


def _queries(pair, context: bool):
    """(sheet_id, frame, box, frame before, frame after) per ground-truth marking the
    twin lists in a frame; the neighbours only with ``context`` (a sheet's pass
    as the inspection workers see it; without, one frame as /v1/inspect gets it)."""
    boxes = marking_boxes(pair.inspection)
    frames = read_frames(pair.inspection)
    before, current = None, next(frames, None)
    while current is not None:
        after = next(frames, None)
        frame_id, frame = current
        for m in boxes.get(frame_id, []):
            if not context:
                yield m["sheet_id"], frame, m["box"], None, None
                continue
            x0, y0, x1, y1 = m["box"]
            if m["visible"] < 1:  # the whole marking, as the workers join its two parts
                height = round((y1 - y0 + 1) / m["visible"])
                if y0 == 0:
                    y0 = y1 - height + 1
                else:
                    y1 = y0 + height - 1
            neighbours = (before and before[1], after and after[1])
            yield m["sheet_id"], frame, (x0, y0, x1, y1), *neighbours
        before, current = current, after


def _grown(sheet: str, box, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """``box`` 1.6 to 2.2 times as wide and 2 to 3.2 times as tall, placed at random
    (per sheet, the same every run) so that it holds the marking, cut to the frame's
    columns and to the rows of the frames either side (a marking the seam cut is made
    whole across it): the default detector's boxes of markings beside a scale patch
    were 2 to 2.9 times their size (747 x 211 px around 376 x 73, seed 15)."""
    rng = np.random.default_rng(int(unit_hash(f"grown/{sheet}") * 2**32))
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    wide, tall = w * rng.uniform(1.6, 2.2), h * rng.uniform(2.0, 3.2)
    left, top = x0 - rng.uniform(0, wide - w), y0 - rng.uniform(0, tall - h)
    return (
        max(0.0, left),
        max(-float(shape[0]), top),
        min(shape[1] - 1.0, left + wide),
        min(2.0 * shape[0] - 1.0, top + tall),
    )


def score(pair, top: int, leave_out: float, context: bool = False, grown: bool = False) -> dict:
    """Every query identified through the product's path (models.identity.pipeline),
    with every candidate's verified correlation kept for calibration."""
    index, register_s = _register(pair, leave_out)
    registered = set(index.sheet_ids)
    rows = []
    started = time.perf_counter()
    for sheet, frame, box, before, after in _queries(pair, context):
        if grown:
            box = _grown(sheet, box, frame.shape)
        verdict = pipeline.identify(frame, box, index, 1.0, before, after, top=top, paint_top=0)
        rows.append(
            {
                "sheet": sheet,
                "registered": sheet in registered,
                "nearest": verdict.verified[0][0] if verdict.verified else "unknown",
                "in_top": sheet in {s for s, _ in verdict.verified},
                "candidate": verdict.nearest or "unknown",
                "verified": -1.0 if verdict.similarity is None else verdict.similarity,
                "genuine": [v for s, v in verdict.verified if s == sheet],
                "impostor": [v for s, v in verdict.verified if s != sheet],
            }
        )
    query_s = (time.perf_counter() - started) / max(len(rows), 1)
    return {"rows": rows, "registered": index.sheets, "register_s": register_s, "query_s": query_s}


def figures(rows: list[dict], threshold: float) -> dict:
    mated = [r for r in rows if r["registered"]]
    answered = [r["candidate"] if r["verified"] >= threshold else "unknown" for r in rows]
    wrong = sum(a != "unknown" and a != r["sheet"] for a, r in zip(answered, rows, strict=True))
    unregistered = [a for a, r in zip(answered, rows, strict=True) if not r["registered"]]
    return {
        "queries": len(rows),
        "rank1": np.mean([r["nearest"] == r["sheet"] for r in mated]) if mated else float("nan"),
        "in_top": np.mean([r["in_top"] for r in mated]) if mated else float("nan"),
        "identified": np.mean(
            [a == r["sheet"] for a, r in zip(answered, rows, strict=True) if r["registered"]]
        )
        if mated
        else float("nan"),
        "far": wrong / max(len(rows), 1),
        "unknown_right": f"{sum(a == 'unknown' for a in unregistered)}/{len(unregistered)}",
        "wrong": wrong,
    }


def per_sheet(rows: list[dict]) -> list[dict]:
    """Each sheet's best verified detection."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["sheet"] not in best or r["verified"] > best[r["sheet"]]["verified"]:
            best[r["sheet"]] = r
    return list(best.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibrate", type=Path, required=True)
    parser.add_argument("--pair", type=Path, required=True)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--leave-out", type=float, default=0.1)
    parser.add_argument("--target-far", type=float, default=0.001)
    parser.add_argument(
        "--context", action="store_true", help="queries see a frame between its neighbours"
    )
    parser.add_argument(
        "--grown", action="store_true", help="PAIR_B's boxes grown over a scale patch beside"
    )
    args = parser.parse_args()

    calibration = score(find_pairs(args.calibrate)[0], args.top, 0.0, args.context)
    genuine = np.array([g for r in calibration["rows"] for g in r["genuine"]])
    impostor = np.array([g for r in calibration["rows"] for g in r["impostor"]])
    chosen = choose_threshold(genuine, impostor, args.target_far, args.top)
    threshold = chosen["threshold"]
    measured = score(find_pairs(args.pair)[0], args.top, args.leave_out, args.context, args.grown)

    print(
        f"identity cues on {args.pair.name} ({measured['registered']} sheets registered, "
        f"{args.leave_out:.0%} left out); threshold {threshold:.3f} chosen on "
        f"{args.calibrate.name} for FAR {args.target_far:.1%} per query "
        f"(calibration: genuine median {np.median(genuine):.3f}, impostor max "
        f"{impostor.max():.3f}); oracle boxes{', grown' if args.grown else ''}; "
        f"{'frames with their neighbours' if args.context else 'single frames'}; "
        f"{platform.machine()}, 1 process"
    )
    print(
        f"{'level':<14}{'queries':>8}{'rank-1':>8}{'top-' + str(args.top):>8}"
        f"{'identified':>11}{'FAR':>8}{'wrong':>6}{'unknown ok':>11}"
    )
    for level, rows in (
        ("per detection", measured["rows"]),
        ("per sheet", per_sheet(measured["rows"])),
    ):
        f = figures(rows, threshold)
        print(
            f"{level:<14}{f['queries']:>8}{f['rank1']:>8.3f}{f['in_top']:>8.3f}"
            f"{f['identified']:>11.3f}{f['far']:>8.4f}{f['wrong']:>6}{f['unknown_right']:>11}"
        )
    print(
        f"register {measured['register_s'] * 1000:.1f} ms per station picture; "
        f"query {measured['query_s'] * 1000:.1f} ms per marking (descriptor, search, "
        f"verification of {args.top})"
    )


if __name__ == "__main__":
    main()
