"""What a twin recording holds: class statistics against Severstal, and a contact sheet.

python -m twin.report ARCHIVE [--contact-sheet docs/twin.png --real ../shared/data/severstal-sample]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from core.rle import parse_runs, rle_decode

# Severstal's training set (12,568 images): images showing each class, as published.
SEVERSTAL_IMAGES = 12568
SEVERSTAL_IMAGES_WITH_CLASS = {1: 897, 2: 247, 3: 5150, 4: 801}
SEVERSTAL_EMPTY_PAIRS = 0.856
COLOURS = {1: (60, 60, 255), 2: (0, 230, 255), 3: (255, 120, 0), 4: (60, 220, 60)}  # BGR


def _rows(archive: Path, name: str) -> list[dict]:
    with (archive / "ground_truth" / name).open(newline="") as f:
        return list(csv.DictReader(f))


def class_statistics(archive: Path, frame_height: int = 256, frame_width: int = 1600) -> dict:
    """Per class: frames showing it and mean area, over frames at least half covered by a sheet."""
    covered: dict[str, int] = {}
    for row in _rows(archive, "sheets.csv"):
        rows = int(row["last_row"]) - int(row["first_row"]) + 1
        covered[row["frame_id"]] = covered.get(row["frame_id"], 0) + rows
    on_sheet = {f for f, rows in covered.items() if rows >= frame_height / 2}
    frames: dict[int, set[str]] = {1: set(), 2: set(), 3: set(), 4: set()}
    areas: dict[int, list[int]] = {1: [], 2: [], 3: [], 4: []}
    for row in _rows(archive, "defects.csv"):
        if row["ImageId"] in on_sheet:
            class_id = int(row["ClassId"])
            frames[class_id].add(row["ImageId"])
            areas[class_id].append(
                int(parse_runs(row["EncodedPixels"], (frame_height, frame_width))[1].sum())
            )
    n = len(on_sheet)
    pairs_with_mask = sum(len(f) for f in frames.values())
    return {
        "frames": n,
        "share": {c: len(frames[c]) / n if n else 0.0 for c in frames},
        "mean_area": {c: float(np.mean(a)) if a else 0.0 for c, a in areas.items()},
        "empty_pairs": 1 - pairs_with_mask / (4 * n) if n else 1.0,
        "clean_frames": 1 - len(set().union(*frames.values())) / n if n else 1.0,
    }


def real_areas(severstal: Path) -> dict[int, float]:
    areas: dict[int, list[int]] = {1: [], 2: [], 3: [], 4: []}
    with (severstal / "train.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            areas[int(row["ClassId"])].append(int(parse_runs(row["EncodedPixels"])[1].sum()))
    return {c: float(np.mean(a)) for c, a in areas.items()}


def print_statistics(stats: dict, real: dict[int, float] | None) -> None:
    table = Table(title=f"Twin recording: {stats['frames']} frames on a sheet vs Severstal")
    for column in (
        "class",
        "twin: frames showing it",
        "Severstal: images",
        "twin: mean area px",
        "real sample: mean area px",
    ):
        table.add_column(column, justify="right")
    for c in (1, 2, 3, 4):
        table.add_row(
            str(c),
            f"{stats['share'][c]:.1%}",
            f"{SEVERSTAL_IMAGES_WITH_CLASS[c] / SEVERSTAL_IMAGES:.1%}",
            f"{stats['mean_area'][c]:,.0f}",
            f"{real[c]:,.0f}" if real else "-",
        )
    table.add_row(
        "empty image-class pairs",
        f"{stats['empty_pairs']:.1%}",
        f"{SEVERSTAL_EMPTY_PAIRS:.1%}",
        "",
        "",
    )
    Console().print(table)


def _overlay(
    image: np.ndarray, rles: list[tuple[int, str]], boxes: list[tuple[int, ...]]
) -> np.ndarray:
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    for class_id, rle in rles:
        mask = np.ascontiguousarray(rle_decode(rle, image.shape))
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, COLOURS[class_id], 2)
        x, y = contours[0][0][0]
        cv2.putText(
            out,
            f"class {class_id}",
            (int(x), max(14, int(y) - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            COLOURS[class_id],
            1,
            cv2.LINE_AA,
        )
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (x0, y0), (x1, y1), (255, 0, 255), 2)
        cv2.putText(
            out,
            "marking",
            (x0, max(14, y0 - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (255, 0, 255),
            1,
            cv2.LINE_AA,
        )
    return out


def _label(image: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(
        image, text, (8, 246), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA
    )
    return image


def contact_sheet(archive: Path, real: Path, out: Path) -> None:
    """Twin frames with their ground truth (every class and a marking) above two real frames."""
    defects = _rows(archive, "defects.csv")
    markings = _rows(archive, "markings.csv")
    by_frame: dict[str, list[tuple[int, str]]] = {}
    for row in defects:
        by_frame.setdefault(row["ImageId"], []).append((int(row["ClassId"]), row["EncodedPixels"]))
    chosen: list[str] = []
    for class_id in (1, 2, 3, 4):  # the first frame showing each class, then one with a marking
        frame = next(
            (
                f
                for f, r in sorted(by_frame.items())
                if any(c == class_id for c, _ in r) and f not in chosen
            ),
            None,
        )
        if frame:
            chosen.append(frame)
    chosen.append(next(m["frame_id"] for m in markings if m["frame_id"] not in chosen))
    frames = _read(archive, chosen)
    tiles = []
    for frame_id in chosen:
        boxes = [
            tuple(int(m[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            for m in markings
            if m["frame_id"] == frame_id
        ]
        tiles.append(
            _label(
                _overlay(frames[frame_id], by_frame.get(frame_id, []), boxes), f"twin {frame_id}"
            )
        )
    with (real / "train.csv").open(newline="") as f:
        real_rows = list(csv.DictReader(f))
    for image_id in sorted({r["ImageId"] for r in real_rows})[2:4]:
        image = cv2.imread(str(real / "train_images" / image_id), cv2.IMREAD_GRAYSCALE)
        rles = [
            (int(r["ClassId"]), r["EncodedPixels"]) for r in real_rows if r["ImageId"] == image_id
        ]
        tiles.append(_label(_overlay(image, rles, []), f"real Severstal {image_id}"))
    sheet = np.vstack([np.pad(t, ((0, 6), (0, 0), (0, 0))) for t in tiles])
    out.parent.mkdir(parents=True, exist_ok=True)
    small = cv2.resize(sheet, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(out), small, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def _read(archive: Path, frame_ids: list[str]) -> dict[str, np.ndarray]:
    if (archive / "frames").is_dir():
        return {
            f: cv2.imread(str(archive / "frames" / f"{f}.jpg"), cv2.IMREAD_GRAYSCALE)
            for f in frame_ids
        }
    with (archive / "frame_index.csv").open(newline="") as f:
        position = {r["frame_id"]: i for i, r in enumerate(csv.DictReader(f))}
    capture = cv2.VideoCapture(str(archive / "video.mkv"))
    found = {}
    for index in range(max(position[f] for f in frame_ids) + 1):
        ok, image = capture.read()
        if not ok:
            break
        for f in frame_ids:
            if position[f] == index:
                found[f] = image[:, :, 0]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="An inspection archive written by the twin.")
    parser.add_argument("--contact-sheet", type=Path, help="Write a PNG contact sheet here.")
    parser.add_argument("--real", type=Path, default=Path("../shared/data/severstal-sample"))
    args = parser.parse_args()
    real = real_areas(args.real) if (args.real / "train.csv").exists() else None
    print_statistics(class_statistics(args.archive), real)
    if args.contact_sheet:
        contact_sheet(args.archive, args.real, args.contact_sheet)


if __name__ == "__main__":
    main()
