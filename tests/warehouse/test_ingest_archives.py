"""Validation and registration of recorded archives: every recorder fault the twin can
write is recognised with a reason that names the file; nothing is changed or lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.archives import check_archive, content_hash
from tasks.ingest import ingest_archive
from twin.config import TwinConfig
from twin.recorder import simulate
from warehouse.store import Warehouse


def _record(tmp_path: Path, *faults: str, fmt: str = "frames") -> Path:
    config = TwinConfig(faults=faults, archive_format=fmt)
    return simulate(config, 2, seed=41, out=tmp_path / "rec").inspection


@pytest.mark.parametrize(
    ("fault", "fmt", "kind", "named"),
    [
        ("missing-manifest", "video", "missing_manifest", "manifest.json"),
        ("invalid-manifest", "frames", "invalid_manifest", "manifest.json"),
        ("corrupt-frame", "frames", "unreadable_frame", ".jpg"),
        ("truncated-video", "video", "truncated_video", "video.mkv"),
    ],
)
def test_each_recorder_fault_is_rejected_with_its_reason(tmp_path, fault, fmt, kind, named):
    checked = check_archive(_record(tmp_path, fault, fmt=fmt))
    assert not checked.ok
    assert [p.error_kind for p in checked.fatal] == [kind]
    assert checked.fatal[0].source.endswith(named)


def test_dropped_frames_are_a_warning_and_a_good_archive_passes(tmp_path: Path) -> None:
    good = check_archive(_record(tmp_path / "a"))
    assert good.ok and not good.problems and good.kind == "frames"
    assert len(good.frames) == good.manifest.frame_count
    dropped = check_archive(_record(tmp_path / "b", "dropped-frames"))
    assert dropped.ok
    assert [p.error_kind for p in dropped.problems] == ["dropped_frames"]
    assert "missing" in dropped.problems[0].reason


def test_a_bad_archive_named_by_path_is_recorded_and_left_untouched(tmp_path: Path) -> None:
    archive = _record(tmp_path, "invalid-manifest")
    before = content_hash(archive)
    warehouse = Warehouse(tmp_path / "warehouse").ensure()
    done = ingest_archive(archive, warehouse, tmp_path / "lib", tmp_path / "q", landed=False)
    assert done.status == "failed" and done.path == str(archive.resolve())
    assert content_hash(archive) == before and not (tmp_path / "q").exists()
    rows = warehouse.query("SELECT source, error_kind FROM ingest_errors").to_pylist()
    assert rows == [
        {"source": str(archive.resolve() / "manifest.json"), "error_kind": "invalid_manifest"}
    ]
    # ingesting again replaces the record, it does not add one
    ingest_archive(archive, warehouse, tmp_path / "lib", tmp_path / "q", landed=False)
    assert warehouse.row_counts()["ingest_errors"] == 1
    assert warehouse.row_counts()["archives"] == 1


def test_a_good_archive_named_by_path_is_registered_once(tmp_path: Path) -> None:
    archive = _record(tmp_path)
    warehouse = Warehouse(tmp_path / "warehouse").ensure()
    first = ingest_archive(archive, warehouse, tmp_path / "lib", tmp_path / "q", landed=False)
    again = ingest_archive(archive, warehouse, tmp_path / "lib", tmp_path / "q", landed=False)
    assert (first.status, again.status) == ("ok", "unchanged")
    assert first.archive_id == again.archive_id
    (row,) = warehouse.query("SELECT * FROM archives").to_pylist()
    assert row["content_sha256"] == content_hash(archive) and row["path"] == str(archive)


def test_a_batch_of_a_frame_folder_decodes_together_and_a_bad_frame_is_named(
    tmp_path: Path,
) -> None:
    """``decode_frames_on`` (a GPU worker's reader of frame folders): the batch is the
    frames OpenCV reads one by one; a missing or unreadable frame is named by FrameError,
    with its position in the recording, as the host's reader names it."""
    import cv2
    import numpy as np
    import torch

    from tasks.archives import FrameError, decode_frames, decode_frames_on

    rng = np.random.default_rng(0)
    ids = [f"f{i}" for i in range(4)]
    for frame_id in ids:
        frame = rng.normal(100, 20, (32, 160)).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / f"{frame_id}.jpg"), frame)
    batch = decode_frames_on(torch.device("cpu"), str(tmp_path), 10, ids)
    assert np.array_equal(
        batch.numpy(), np.stack(list(decode_frames(None, str(tmp_path), 10, ids)))
    )
    # a truncated JPEG: nvJPEG and libjpeg refuse the batch, OpenCV decodes it (the
    # missing part grey, as the host's reader does; ingest refuses such frames)
    whole = (tmp_path / "f2.jpg").read_bytes()
    (tmp_path / "f2.jpg").write_bytes(whole[: len(whole) // 2])
    batch = decode_frames_on(torch.device("cpu"), str(tmp_path), 10, ids)
    assert np.array_equal(
        batch.numpy(), np.stack(list(decode_frames(None, str(tmp_path), 10, ids)))
    )
    (tmp_path / "f2.jpg").write_bytes(b"not a picture")
    with pytest.raises(FrameError, match=r"f2\.jpg cannot be read") as raised:
        decode_frames_on(torch.device("cpu"), str(tmp_path), 10, ids)
    assert (raised.value.position, raised.value.frame_id) == (12, "f2")
    (tmp_path / "f2.jpg").unlink()
    with pytest.raises(FrameError, match=r"f2\.jpg"):
        decode_frames_on(torch.device("cpu"), str(tmp_path), 10, ids)
