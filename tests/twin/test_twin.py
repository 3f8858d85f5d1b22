"""The digital twin: deterministic, its ground truth matches its pictures, faults happen."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from core.images import ImageError, image_info
from core.rle import rle_decode
from twin.config import Fault, TwinConfig
from twin.recorder import simulate
from twin.surface import LOOKS

SMALL = {"sheet_length_mm": {"low": 900, "high": 1200}, "gap_mm": {"low": 200, "high": 300}}


def read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame[:, :, 0])


def read_frames(archive: Path) -> dict[str, np.ndarray]:
    """Frames by frame id, from either kind of archive."""
    index = [r["frame_id"] for r in csv.DictReader((archive / "frame_index.csv").open())]
    if (archive / "video.mkv").exists():
        return dict(zip(index, read_video(archive / "video.mkv"), strict=True))
    return {
        i: cv2.imread(str(archive / "frames" / f"{i}.jpg"), cv2.IMREAD_GRAYSCALE) for i in index
    }


def ground_truth(archive: Path, name: str) -> list[dict]:
    return list(csv.DictReader((archive / "ground_truth" / name).open()))


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    """Six sheets with plenty of defects, as a lossless video."""
    config = TwinConfig(**SMALL, class_rates={1: 0.5, 2: 0.4, 3: 0.6, 4: 0.4})
    return simulate(config, 6, seed=11, out=tmp_path_factory.mktemp("twin")).inspection


def test_same_seed_same_recording_other_seed_another(tmp_path: Path) -> None:
    config = TwinConfig(**SMALL)
    first = simulate(config, 2, seed=5, out=tmp_path / "a")
    second = simulate(config, 2, seed=5, out=tmp_path / "b")
    other = simulate(config, 2, seed=6, out=tmp_path / "c")
    gt = [digest(r.inspection / "ground_truth") for r in (first, second, other)]
    assert gt[0] == gt[1] and gt[0] != gt[2]
    frames = [read_frames(r.inspection) for r in (first, second, other)]
    assert frames[0].keys() == frames[1].keys()
    assert all(np.array_equal(frames[0][k], frames[1][k]) for k in frames[0])
    assert not all(
        np.array_equal(a, b) for a, b in zip(frames[0].values(), frames[2].values(), strict=False)
    )
    assert digest(first.station) == digest(second.station)  # JPEG bytes too


def test_defect_masks_mark_pixels_that_differ_from_the_surface_around(recording: Path) -> None:
    frames = read_frames(recording)
    contrast: dict[int, list[float]] = {1: [], 2: [], 3: [], 4: []}
    for row in ground_truth(recording, "defects.csv"):
        mask = np.ascontiguousarray(rle_decode(row["EncodedPixels"], (256, 1600)))
        assert mask.any()
        image = frames[row["ImageId"]].astype(np.float32)
        ring = cv2.dilate(mask, np.ones((9, 9), np.uint8)).astype(bool) & ~mask.astype(bool)
        contrast[int(row["ClassId"])].append(abs(image[mask > 0].mean() - image[ring].mean()))
    for class_id, values in contrast.items():
        assert len(values) >= 3, f"class {class_id}: too few masks to judge"
        assert np.median(values) > 12, f"class {class_id}: median contrast {np.median(values):.1f}"


def test_marking_boxes_hold_the_paint(recording: Path) -> None:
    frames = read_frames(recording)
    boxes = ground_truth(recording, "markings.csv")
    assert boxes
    for box in boxes:
        image = frames[box["frame_id"]].astype(np.float32)
        x0, y0, x1, y1 = (int(box[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        inside = image[y0 : y1 + 1, x0 : x1 + 1]
        beside = image[y0 : y1 + 1, x1 + 20 : x1 + 20 + (x1 - x0)]  # same rows, further along
        surface = np.median(beside)
        spread = max(25.0, 4 * np.median(np.abs(beside - surface)))  # 4 MADs of the surface
        painted = np.mean(np.abs(inside - surface) > spread)
        untouched = np.mean(np.abs(beside - surface) > spread)
        assert painted > untouched + 0.04, (box, painted, untouched)
    # YOLO labels say the same, normalised
    first = boxes[0]
    label = (
        (recording / "ground_truth" / "markings" / f"{first['frame_id']}.txt").read_text().split()
    )
    cls, cx, cy, w, h = label[0], *map(float, label[1:5])
    x0, y0, x1, y1 = (int(first[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
    assert cls == "0"
    assert abs(cx * 1600 - (x0 + x1 + 1) / 2) < 1 and abs(cy * 256 - (y0 + y1 + 1) / 2) < 1
    assert abs(w * 1600 - (x1 - x0 + 1)) < 1 and abs(h * 256 - (y1 - y0 + 1)) < 1


def test_the_rest_of_a_cut_marking_is_where_its_paint_is(recording: Path) -> None:
    """The truth lists a marking in a frame when half of it is inside; the rest, in the
    frame before or after, is derived (tasks.identity.cut_parts): at the frame's edge,
    of the sheet not listed there, and together the parts hold paint (one part may be
    mostly the stencil's blank margin, or wiped)."""
    from tasks.identity import cut_parts, marking_boxes

    frames = read_frames(recording)
    truth = marking_boxes(recording)
    parts = cut_parts(recording, truth)
    assert parts, "the recording has no marking cut by a frame's edge"
    painted, untouched = [], []
    for frame_id, found in parts.items():
        listed = {m["sheet_id"] for m in truth.get(frame_id, [])}
        for part in found:
            assert part["sheet_id"] not in listed  # the part is the smaller one
            x0, y0, x1, y1 = part["box"]
            assert y0 == 0 or y1 == 255
            image = frames[frame_id].astype(np.float32)
            inside = image[y0 : y1 + 1, x0 : x1 + 1]
            beside = image[y0 : y1 + 1, x1 + 20 : x1 + 20 + (x1 - x0)]
            surface = np.median(beside)
            spread = max(25.0, 4 * np.median(np.abs(beside - surface)))
            painted.append(np.mean(np.abs(inside - surface) > spread))
            untouched.append(np.mean(np.abs(beside - surface) > spread))
    assert np.mean(painted) > np.mean(untouched) + 0.04, (painted, untouched)


def test_every_frame_is_accounted_for_and_sheets_agree_with_the_station(recording: Path) -> None:
    manifest = json.loads((recording / "manifest.json").read_text())
    frames = read_frames(recording)
    assert manifest["frame_count"] == len(frames) and manifest["twin"]["seed"] == 11
    assert all(f.shape == (256, 1600) for f in frames.values())
    station = recording.with_name(recording.name.replace("inspection", "station"))
    known = {r["sheet_id"] for r in csv.DictReader((station / "sheets.csv").open())}
    seen = {r["sheet_id"] for r in ground_truth(recording, "sheets.csv")}
    assert len(known) == 6 and seen == known
    for picture in (station / "frames").iterdir():
        assert image_info(picture.read_bytes()).width == 640


@pytest.mark.parametrize("archive_format", ["video", "frames"])
def test_each_fault_produces_what_it_names(tmp_path: Path, archive_format: str) -> None:
    faults = [Fault.dropped_frames, Fault.corrupt_frame]
    if archive_format == "video":
        faults.append(Fault.truncated_video)
    config = TwinConfig(**SMALL, archive_format=archive_format, faults=tuple(faults))
    archive = simulate(config, 3, seed=2, out=tmp_path).inspection
    applied = {
        f["fault"]: f for f in json.loads((archive / "ground_truth/faults.json").read_text())
    }
    manifest = json.loads((archive / "manifest.json").read_text())

    numbers = [int(r["frame_number"]) for r in csv.DictReader((archive / "frame_index.csv").open())]
    gap = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    assert gap == applied["dropped-frames"]["frames"] and len(gap) >= 2
    assert manifest["frame_count"] == len(numbers)
    if archive_format == "video":
        assert len(read_video(archive / "video.mkv")) < manifest["frame_count"]
        assert applied["truncated-video"]["bytes_kept"] < applied["truncated-video"]["bytes"]
    else:
        with pytest.raises(ImageError):
            image_info((archive / applied["corrupt-frame"]["file"]).read_bytes())


def test_corrupt_video_loses_frames(tmp_path: Path) -> None:
    clean = simulate(TwinConfig(**SMALL), 3, seed=4, out=tmp_path / "clean").inspection
    broken = simulate(
        TwinConfig(**SMALL, faults=(Fault.corrupt_frame,)), 3, seed=4, out=tmp_path / "broken"
    ).inspection
    good, bad = read_video(clean / "video.mkv"), read_video(broken / "video.mkv")
    assert len(bad) < len(good) or any(
        not np.array_equal(a, b) for a, b in zip(good, bad, strict=False)
    )


@pytest.mark.parametrize("fault", [Fault.missing_manifest, Fault.invalid_manifest])
def test_manifest_faults(tmp_path: Path, fault: Fault) -> None:
    archive = simulate(TwinConfig(**SMALL, faults=(fault,)), 1, seed=1, out=tmp_path).inspection
    path = archive / "manifest.json"
    if fault == Fault.missing_manifest:
        assert not path.exists()
    else:
        with pytest.raises(json.JSONDecodeError):
            json.loads(path.read_text())


def test_configuration_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="sheet_lenght"):
        TwinConfig(sheet_lenght=3)
    with pytest.raises(ValidationError, match=r"class_rates keys must be 1\.\.4"):
        TwinConfig(class_rates={5: 0.1})
    with pytest.raises(ValueError, match="truncated-video fault needs archive_format 'video'"):
        simulate(
            TwinConfig(archive_format="frames", faults=(Fault.truncated_video,)),
            1,
            0,
            tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()


def test_surface_effects_change_the_pictures_and_not_the_truth(tmp_path: Path) -> None:
    """Stains, splashes and uneven light are no defects: the same seed renders the same
    sheets, defects, markings and labels with them as without; only the pixels differ,
    the steel's grey levels spread wider, and 0 is the twin as it was."""
    plain = simulate(TwinConfig(**SMALL), 3, seed=8, out=tmp_path / "plain")
    zero = simulate(TwinConfig(**SMALL, surface_effects=0), 3, seed=8, out=tmp_path / "zero")
    real = simulate(TwinConfig(**SMALL, surface_effects=1), 3, seed=8, out=tmp_path / "real")
    assert digest(plain.inspection / "ground_truth") == digest(zero.inspection / "ground_truth")
    assert digest(plain.inspection / "ground_truth") == digest(real.inspection / "ground_truth")
    a, z, b = (read_frames(r.inspection) for r in (plain, zero, real))
    assert a.keys() == z.keys() == b.keys()
    assert all(np.array_equal(a[k], z[k]) for k in a)
    changed = [k for k in a if not np.array_equal(a[k], b[k])]
    assert len(changed) > len(a) // 2
    spread = [(float(np.std(a[k])), float(np.std(b[k]))) for k in changed]
    assert np.median([s for _, s in spread]) > np.median([s for s, _ in spread])


@pytest.mark.parametrize("class_id", [1, 2, 3, 4])
def test_the_severstal_look_outlines_each_defect_with_a_margin(class_id: int) -> None:
    """Severstal's labels are outlines drawn by hand around a defect: the picture
    changes only inside the label, not on its outline, and over less than all of it;
    its scratches are bands (10-80 px wide in real labels), not the twin's lines."""
    shapes, _ = LOOKS["severstal"]
    twin_shapes, _ = LOOKS["twin"]
    widths, twin_widths = [], []
    for seed in range(12):
        label, delta = shapes[class_id](np.random.default_rng(seed))
        assert label.any() and label.shape == delta.shape
        assert not delta[~label].any()  # nothing drawn outside the outline
        outline = label & ~cv2.erode(label.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert np.abs(delta[outline]).max() < 2, "the outline leaves a margin of steel"
        changed = np.abs(delta) >= 2
        assert 0.02 < changed.sum() / label.sum() < 0.97
        assert np.percentile(np.abs(delta[changed]), 97) >= 15, "a defect one can see"
        widths.append(_widest_run(label))
        twin_widths.append(_widest_run(twin_shapes[class_id](np.random.default_rng(seed))[0]))
    if class_id == 3:
        assert np.median(widths) >= 10 and np.median(widths) > 2 * np.median(twin_widths)


def _widest_run(label: np.ndarray) -> float:
    """The median over a label's rows of the widest run of labelled pixels across it."""
    widest = []
    for row in label[label.any(1)]:
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(np.int8), 0]))
        widest.append(np.diff(edges.reshape(-1, 2), axis=1).max())
    return float(np.median(widest))


def test_the_severstal_look_is_a_setting_and_the_twin_stays_as_it_was(tmp_path: Path) -> None:
    """The default renders the twin's own look, the same frames and labels; "severstal"
    draws and labels every class its own way; anything else is refused."""
    plain = simulate(TwinConfig(**SMALL), 2, seed=5, out=tmp_path / "plain")
    twin = simulate(TwinConfig(**SMALL, defect_look="twin"), 2, seed=5, out=tmp_path / "twin")
    look = TwinConfig(
        **SMALL, defect_look="severstal", class_rates={1: 0.5, 2: 0.4, 3: 0.6, 4: 0.4}
    )
    severstal = simulate(look, 2, seed=5, out=tmp_path / "severstal")
    assert digest(plain.inspection / "ground_truth") == digest(twin.inspection / "ground_truth")
    a, b = read_frames(plain.inspection), read_frames(twin.inspection)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    rows = ground_truth(severstal.inspection, "defects.csv")
    assert {int(r["ClassId"]) for r in rows} == {1, 2, 3, 4}
    exact = ground_truth(plain.inspection, "defects.csv")
    assert {r["EncodedPixels"] for r in rows}.isdisjoint(r["EncodedPixels"] for r in exact)
    with pytest.raises(ValidationError, match="defect_look"):
        TwinConfig(defect_look="kaggle")
