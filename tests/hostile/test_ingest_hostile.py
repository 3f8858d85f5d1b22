"""Hostile and broken inputs to ingest, as a careless or hostile neighbour of the landing
folder would make them: each is refused with its reason and quarantined, nothing outside
the landing folder is moved, read or changed, the good archive after them is still taken
in, and the next run is clean.

Every case builds its own input from a twin recording (real frames, real manifest);
ingest runs for real: validation in its child process, moves, the warehouse."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.archives import content_hash, printable
from tasks.ingest import Limits, ingest_archive
from tests.helpers import copy_severstal
from twin.config import TwinConfig
from twin.recorder import simulate
from warehouse.store import Warehouse

BIN = Path(sys.executable).parent
FIRST_FRAME = "frame_000000"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small good recording of each medium, copied by every case that needs one."""
    root = tmp_path_factory.mktemp("recordings")
    return {
        fmt: simulate(TwinConfig(archive_format=fmt), 2, seed=41, out=root / fmt).inspection
        for fmt in ("frames", "video")
    }


def _outside(root: Path, recordings: dict[str, Path]) -> Path:
    """A folder next to the landing folder that nothing may touch: an archive, a file."""
    outside = root / "outside"
    shutil.copytree(recordings["video"], outside / "elsewhere-archive")
    (outside / "frame4.jpg").write_bytes(
        (recordings["frames"] / "frames" / f"{FIRST_FRAME}.jpg").read_bytes()
    )
    (outside / "secret.txt").write_text("not steelsight's\n")
    return outside


def _fingerprint(folder: Path) -> tuple[str, list[tuple[str, int]]]:
    """Content hash and every entry's modification time: what touching would change."""
    entries = sorted((str(p.relative_to(folder)), p.lstat().st_mtime_ns) for p in folder.rglob("*"))
    return content_hash(folder), entries


def _copy(recordings: dict[str, Path], fmt: str, dest: Path) -> Path:
    shutil.copytree(recordings[fmt], dest)
    return dest


def _edit_manifest(archive: Path, **changes) -> None:
    manifest = json.loads((archive / "manifest.json").read_text())
    for key, value in changes.items():
        if key.startswith("files."):
            manifest["files"][key.split(".", 1)[1]] = value
        else:
            manifest[key] = value
    # json writes Infinity and NaN as the recorder that sent them would
    (archive / "manifest.json").write_text(json.dumps(manifest))


def _edit_index(archive: Path, row: int, column: str, value: str) -> None:
    path = archive / "frame_index.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def _frame(archive: Path, name: str = FIRST_FRAME) -> Path:
    return archive / "frames" / f"{name}.jpg"


# Each case: (id, builder(landing, outside, recordings) -> the entry it made, error kind,
# a word the reason must contain). Builders make one entry in the landing folder.
Builder = Callable[[Path, Path, dict], Path]


def deep_manifest(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "deep-manifest")
    (archive / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    return archive


def manifest_is_a_folder(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "manifest-folder")
    (archive / "manifest.json").unlink()
    (archive / "manifest.json").mkdir()
    (archive / "manifest.json" / "x").write_text("{}")
    return archive


def index_is_a_folder(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "index-folder")
    (archive / "frame_index.csv").unlink()
    (archive / "frame_index.csv").mkdir()
    return archive


def huge_manifest(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "huge-manifest")
    manifest = json.loads((archive / "manifest.json").read_text())
    manifest["padding"] = "x" * (2 << 20)
    (archive / "manifest.json").write_text(json.dumps(manifest))
    return archive


def link_to_an_archive_outside(landing, outside, recordings):
    link = landing / "linked-archive"
    link.symlink_to(outside / "elsewhere-archive", target_is_directory=True)
    return link


def dangling_link(landing, outside, recordings):
    link = landing / "dangling"
    link.symlink_to(outside / "gone")
    return link


def frame_linked_outside(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "frame-link")
    _frame(archive).unlink()
    _frame(archive).symlink_to(outside / "frame4.jpg")
    return archive


def folder_linked_outside(landing, outside, recordings):
    archive = _copy(recordings, "video", landing / "folder-link")
    (archive / "ground_truth").rename(archive / "gt")
    (archive / "ground_truth").symlink_to(outside, target_is_directory=True)
    return archive


def video_named_outside(landing, outside, recordings):
    archive = _copy(recordings, "video", landing / "video-outside")
    _edit_manifest(archive, **{"files.video": str(outside / "elsewhere-archive" / "video.mkv")})
    return archive


def frames_named_above(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "frames-above")
    _edit_manifest(archive, **{"files.frames": "../../outside"})
    return archive


def index_named_outside(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "index-outside")
    _edit_manifest(archive, **{"files.frame_index": "/etc/passwd"})
    return archive


def frame_id_climbs_out(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "frame-id-out")
    _edit_index(archive, 1, "frame_id", "../../../../outside/frame4")
    return archive


def name_not_utf8(landing, outside, recordings):
    return _copy(recordings, "frames", Path(os.fsdecode(os.fsencode(landing) + b"/rec-\xff\xfe")))


def file_name_not_utf8(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "inner-name")
    _frame(archive).rename(os.fsdecode(os.fsencode(archive / "frames") + b"/\xfe.jpg"))
    return archive


def pipe_as_archive(landing, outside, recordings):
    os.mkfifo(landing / "pipe")
    return landing / "pipe"


def pipe_as_frame(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "pipe-frame")
    _frame(archive).unlink()
    os.mkfifo(_frame(archive))
    return archive


def pipe_as_manifest(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "pipe-manifest")
    (archive / "manifest.json").unlink()
    os.mkfifo(archive / "manifest.json")
    return archive


def socket_in_archive(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "socket")
    # bound by a relative name: the absolute one can pass AF_UNIX's 108 bytes (xdist's
    # temporary folders are deeper)
    with contextlib.chdir(archive), socket.socket(socket.AF_UNIX) as s:
        s.bind("control.sock")
    return archive


def infinite_speed(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "infinite-speed")
    _edit_manifest(archive, line_speed_m_s=float("inf"))
    return archive


def vanishing_resolution(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "tiny-mm")
    _edit_manifest(archive, mm_per_px=1e-300)
    return archive


def nan_rate(landing, outside, recordings):
    archive = _copy(recordings, "video", landing / "nan-fps")
    _edit_manifest(archive, fps=float("nan"))
    return archive


def absurd_width(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "wide")
    _edit_manifest(archive, frame_width=10**12)
    return archive


def bad_timestamp(landing, outside, recordings):
    archive = _copy(recordings, "frames", landing / "bad-time")
    _edit_index(archive, 2, "timestamp", "yesterday-ish")
    return archive


def plain_file(landing, outside, recordings):
    (landing / "recording.zip").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    return landing / "recording.zip"


CASES: list[tuple[Builder, str, str]] = [
    (deep_manifest, "invalid_manifest", "nested too deep"),
    (manifest_is_a_folder, "invalid_manifest", "not a regular file"),
    (index_is_a_folder, "invalid_index", "not a regular file"),
    (huge_manifest, "invalid_manifest", "bytes"),
    (link_to_an_archive_outside, "link", "symbolic link"),
    (dangling_link, "link", "symbolic link"),
    (frame_linked_outside, "link", "frame4.jpg"),
    (folder_linked_outside, "link", "symbolic link"),
    (video_named_outside, "invalid_manifest", "files.video"),
    (frames_named_above, "invalid_manifest", "files.frames"),
    (index_named_outside, "invalid_manifest", "files.frame_index"),
    (frame_id_climbs_out, "invalid_index", "frame_id"),
    (name_not_utf8, "bad_name", "UTF-8"),
    (file_name_not_utf8, "bad_name", "UTF-8"),
    (pipe_as_archive, "special_file", "named pipe"),
    (pipe_as_frame, "special_file", "named pipe"),
    (pipe_as_manifest, "special_file", "named pipe"),
    (socket_in_archive, "special_file", "socket"),
    (infinite_speed, "invalid_manifest", "line_speed_m_s"),
    (vanishing_resolution, "invalid_manifest", "mm_per_px"),
    (nan_rate, "invalid_manifest", "fps"),
    (absurd_width, "invalid_manifest", "frame_width"),
    (bad_timestamp, "invalid_index", "timestamp"),
    (plain_file, "not_a_folder", "not a folder"),
]


@pytest.fixture
def place(tmp_path: Path, recordings: dict[str, Path]) -> dict[str, Path]:
    root = tmp_path / "plant"
    home = root / "home"
    (home / "landing").mkdir(parents=True)
    return {
        "root": root,
        "home": home,
        "landing": home / "landing",
        "library": home / "archives",
        "quarantine": home / "quarantine",
        "outside": _outside(root, recordings),
    }


def _ingest(place: dict[str, Path], entry: Path, landed: bool = True, **limits):
    return ingest_archive(
        entry,
        Warehouse(place["home"] / "warehouse").ensure(),
        place["library"],
        place["quarantine"],
        landed=landed,
        limits=Limits(**{"timeout_s": 120.0, "memory_mb": 4096, **limits}),
    )


@pytest.mark.parametrize(("build", "kind", "word"), CASES, ids=[c[0].__name__ for c in CASES])
def test_each_hostile_archive_is_quarantined_with_its_reason(
    place: dict[str, Path], recordings: dict[str, Path], build: Builder, kind: str, word: str
) -> None:
    before = _fingerprint(place["outside"])
    entry = build(place["landing"], place["outside"], recordings)
    was_link = entry.is_symlink()
    done = _ingest(place, entry)
    assert done.status == "quarantined", done
    assert word in done.reason, done.reason
    warehouse = Warehouse(place["home"] / "warehouse")
    errors = warehouse.query(
        "SELECT error_kind, reason FROM ingest_errors WHERE archive_id = ?", [done.archive_id]
    ).to_pylist()
    assert kind in [e["error_kind"] for e in errors], errors
    # moved as it is (a link as the link), the reason beside it; the landing folder empty
    quarantined = Path(done.path)
    assert quarantined.parent == place["quarantine"] and os.path.lexists(quarantined)
    assert quarantined.is_symlink() == was_link
    note = json.loads(quarantined.with_name(quarantined.name + ".reason.json").read_text())
    assert note["source"] == printable(entry) and kind in [
        p["error_kind"] for p in note["problems"]
    ]
    assert not os.listdir(place["landing"])
    assert _fingerprint(place["outside"]) == before
    # the next archive is taken in as usual
    good = _copy(recordings, "frames", place["landing"] / "good")
    assert _ingest(place, good).status == "ok"


def test_validation_that_crashes_or_hangs_ends_the_child_not_the_run(
    place: dict[str, Path], recordings: dict[str, Path]
) -> None:
    slow = _copy(recordings, "video", place["landing"] / "slow")
    done = _ingest(place, slow, timeout_s=0.05)
    assert (done.status, done.kind) == ("quarantined", "unknown")
    assert "did not end within 0.05 s (ingest_timeout_s)" in done.reason
    starved = _copy(recordings, "frames", place["landing"] / "starved")
    done = _ingest(place, starved, memory_mb=64)  # the child cannot even start in 64 MB
    assert done.status == "quarantined"
    assert "validation ended with exit code" in done.reason or "crashed" in done.reason
    good = _copy(recordings, "frames", place["landing"] / "good")
    assert _ingest(place, good).status == "ok"


def test_an_archive_that_cannot_be_moved_is_recorded_then_skipped_until_it_changes(
    place: dict[str, Path], recordings: dict[str, Path]
) -> None:
    # the library cannot be made (a file stands where it belongs): root ignores
    # permissions, this stops every user's rename alike
    place["library"].write_text("not a folder")
    archive = _copy(recordings, "frames", place["landing"] / "stuck")
    first = _ingest(place, archive)
    assert first.status == "failed" and "cannot be moved" in first.reason
    assert archive.is_dir() and not place["quarantine"].exists()  # no note without its archive
    warehouse = Warehouse(place["home"] / "warehouse")
    kinds = warehouse.query(
        "SELECT error_kind FROM ingest_errors WHERE archive_id = ?", [first.archive_id]
    )["error_kind"].to_pylist()
    assert kinds == ["cannot_move"]
    again = _ingest(place, archive)
    assert again.status == "skipped" and "touch it to retry" in again.reason
    place["library"].unlink()
    os.utime(archive)  # the operator fixed the cause and touched the archive
    last = _ingest(place, archive)
    assert last.status == "ok" and Path(last.path).parent == place["library"]
    assert warehouse.row_counts()["archives"] == 1  # the same archive, now taken in


def test_a_severstal_field_over_the_csv_limit_is_that_rows_error(
    place: dict[str, Path], shared_data: Path
) -> None:
    dataset = copy_severstal(shared_data, place["landing"] / "severstal")
    lines = (dataset / "train.csv").read_text().splitlines()
    image = lines[1].split(",")[0]
    free = min({"1", "2", "3", "4"} - {x.split(",")[1] for x in lines if x.startswith(image)})
    long_mask = " ".join(f"{start} 1" for start in range(1, 200_000, 2))  # 1.1 MB, valid
    lines.insert(2, f"{image},{free},{long_mask}")  # over csv's 128 KB default: taken
    lines.insert(3, f'{image},{free},"{"x" * (5 << 20)}"')  # 5 MB: over steelsight's limit
    (dataset / "train.csv").write_text("\n".join(lines) + "\n")
    done = _ingest(place, dataset)
    assert done.status == "partial", done
    warehouse = Warehouse(place["home"] / "warehouse")
    errors = warehouse.query(
        "SELECT source_row, error_kind, reason FROM ingest_errors WHERE archive_id = ?",
        [done.archive_id],
    ).to_pylist()
    assert [(e["source_row"], e["error_kind"]) for e in errors if e["source_row"] == 4] == [
        (4, "malformed_row")
    ]
    assert "field larger than field limit" in errors[-1]["reason"] or any(
        "field larger" in e["reason"] for e in errors
    )
    labels = warehouse.query("SELECT count(*) AS n FROM labels").to_pylist()[0]["n"]
    assert labels == len(lines) - 2  # every other row, the 1.1 MB one among them


def test_re_ingesting_changed_content_says_what_it_withdraws(
    place: dict[str, Path], recordings: dict[str, Path]
) -> None:
    archive = _copy(recordings, "frames", place["root"] / "by-path")
    first = _ingest(place, archive, landed=False)
    warehouse = Warehouse(place["home"] / "warehouse")
    (row,) = warehouse.query("SELECT * FROM archives").to_pylist()
    warehouse.commit({**row, "inspected_with": '{"segmentation": "3"}'})  # as inspect leaves it
    _frame(archive).write_bytes(_frame(archive, "frame_000001").read_bytes())
    again = _ingest(place, archive, landed=False)
    assert first.archive_id == again.archive_id and again.status == "ok"
    assert (
        "inspection of the earlier content" in again.reason and "steelsight inspect" in again.reason
    )


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STEELSIGHT_HOME": str(home)}
    return subprocess.run(
        [str(BIN / "steelsight"), *args], env=env, capture_output=True, timeout=600
    )


@pytest.mark.e2e
def test_one_ingest_command_over_every_hostile_case_then_a_clean_run(
    place: dict[str, Path], recordings: dict[str, Path]
) -> None:
    before = _fingerprint(place["outside"])
    entries = [build(place["landing"], place["outside"], recordings) for build, _, _ in CASES]
    good = _copy(recordings, "frames", place["root"] / "good")
    good.rename(place["landing"] / "zz-good")  # arrives last
    os.utime(place["landing"] / "zz-good")
    first = _cli(place["home"], "ingest")
    out = first.stdout.decode()
    assert first.returncode == 1, first.stderr.decode()[-3000:]
    warehouse = Warehouse(place["home"] / "warehouse")
    rows = warehouse.query("SELECT status, count(*) AS n FROM archives GROUP BY 1").to_pylist()
    status = {r["status"]: r["n"] for r in rows}
    assert status == {"quarantined": len(entries), "ok": 1}, out
    assert (place["library"] / "zz-good" / "manifest.json").is_file()
    assert not os.listdir(place["landing"])
    assert _fingerprint(place["outside"]) == before
    second = _cli(place["home"], "ingest")
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    assert "Traceback" not in second.stderr.decode()


@pytest.mark.e2e
def test_import_labels_goes_on_past_a_folder_with_a_10_mb_line(
    tmp_path: Path, shared_data: Path
) -> None:
    bad = copy_severstal(shared_data, tmp_path / "bad")
    with (bad / "train.csv").open("a") as f:
        f.write(f'x.jpg,1,"{"9" * (10 << 20)}"\n')
    good = copy_severstal(shared_data, tmp_path / "good")
    done = _cli(tmp_path / "home", "import-labels", str(bad), str(good))
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    warehouse = Warehouse(tmp_path / "home" / "warehouse")
    rows = warehouse.query(
        "SELECT a.path, a.status, count(l.image_id) AS labels FROM archives a "
        "LEFT JOIN labels l USING (archive_id) GROUP BY ALL ORDER BY a.path"
    ).to_pylist()
    assert [(Path(r["path"]).name, r["status"]) for r in rows] == [
        ("bad", "partial"),
        ("good", "ok"),
    ]
    assert rows[0]["labels"] == rows[1]["labels"] > 0
    (error,) = warehouse.query(
        "SELECT error_kind, reason FROM ingest_errors e JOIN archives a USING (archive_id) "
        "WHERE a.path LIKE '%/bad'"
    ).to_pylist()
    assert error["error_kind"] == "malformed_row" and "field larger" in error["reason"]
