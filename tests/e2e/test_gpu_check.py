"""The GPU check runs on the CPU too (small sizes), so it cannot rot between the times a
GPU is lent: one call, its tables printed and written into the folder it is given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_check_runs_on_the_cpu_and_writes_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "check"
    small = ["--size", "tiny", "--sheets", "2", "--rounds", "1", "--batch", "8", "--requests", "16"]
    # 64 context rows as `default` runs; 2 processes whatever the machine's cores
    small += ["--threads", "2", "--processes", "2", "--compile", "--context-rows", "64"]
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), str(out), "--device", "cpu", *small],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tables = json.loads((out / "gpu_check.json").read_text())
    paths = [row["path"] for row in tables["segmenter"]]
    assert paths == [
        "model-only, torch on cpu",
        "end to end, torch on cpu (video decoded 2 ways)",
        "end to end, torch on cpu (JPEG frames by libjpeg)",
        "model-only, torch on cpu, network compiled",
        "model-only, ONNX Runtime on cpu",
        "end to end, ONNX Runtime on cpu",
    ]
    assert all(row["frames/s"] > 0 for row in tables["segmenter"] + tables["decode"])
    (compiled,) = [row for row in tables["segmenter"] if "compiled" in row["path"]]
    assert compiled["seconds to compile"] > 0  # as a worker compiles it
    decoded = [row["path"] for row in tables["decode"] if row["path"].startswith("FFV1 video")]
    assert decoded[:2] == ["FFV1 video, 1 reader(s)", "FFV1 video, 2 reader(s)"]
    assert "FFV1 video, 1 reader(s), one FFmpeg thread each" in decoded[2:]
    assert "each frame run between 64 rows of its neighbours" in tables["header"]
    assert [row["concurrency"] for row in tables["serving"]] == [8, 1, 8]
    assert all(0 < row["p50 ms"] <= row["p99 ms"] for row in tables["serving"])
    # the twin's defects cut into regions on the host and in torch, a GPU worker's way
    regions = tables["regions"]
    assert [row["path"] for row in regions] == [
        "regions cut on the host (OpenCV)",
        "regions cut on cpu (torch)",
    ]
    assert all(row["regions"] > 0 and row["same regions as the host's"] for row in regions)
    identification = tables["identification"]
    assert identification[0]["path"] == "register 2 station pictures, 1 thread"
    # the twin's own boxes: every whole marking named as its sheet, on one thread or more
    # and in processes (a GPU worker's way)
    identified = identification[1:]
    assert [row["path"].split(" (")[0] for row in identified] == [
        "identify whole markings, 1 thread(s)",
        "identify whole markings, 2 thread(s)",
        "identify whole markings, 2 processes",
    ]
    assert all(0 < row["right"] == row["items"] for row in identified)
    limits = tables["limits"]
    assert limits[0]["GFLOP per frame"] > 0 and limits[0]["MB moved per frame"] > 0
    assert 0 < limits[0]["of that limit"] < 1
    written = (out / "gpu_check.md").read_text()
    assert all(
        f"### {name}" in written for name in ("segmenter", "regions", "identification", "limits")
    )
    assert written.splitlines()[0] in done.stdout


def test_the_checks_recipes_import_without_what_the_gpu_machine_lacks() -> None:
    """The H200 machine has torch, torchvision, numpy and OpenCV, and the check brings
    pydantic: the segmentation recipes it imports must not need DuckDB or defusedxml
    (core.labels), which a lazy import of the latter keeps true."""
    blocked = "import sys; sys.modules.update(duckdb=None, defusedxml=None); "
    done = subprocess.run(
        [sys.executable, "-c", blocked + "import models.segmentation.train"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
