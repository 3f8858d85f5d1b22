"""bench/identity_cues.py runs as its docstring says, on two small twin recordings, and
the steel around the markings identifies their sheets there with no wrong ID."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from twin.config import TwinConfig
from twin.recorder import simulate

REPO = Path(__file__).resolve().parents[2]


def test_the_bench_identifies_sheets_by_their_steel(tmp_path: Path) -> None:
    strong = TwinConfig(distortion=1.0)
    calibration = simulate(strong, 12, 101, tmp_path / "a")
    measured = simulate(strong, 12, 102, tmp_path / "b")
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "identity_cues.py"),
            "--calibrate",
            str(calibration.station),
            "--pair",
            str(measured.inspection),
            "--context",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    row = re.search(
        r"^per sheet\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)", done.stdout, re.M
    )
    assert row, done.stdout
    queries, rank1, _, identified, far, wrong = row.groups()
    assert int(queries) >= 10 and int(wrong) == 0 and float(far) == 0.0, done.stdout
    assert float(rank1) >= 0.9 and float(identified) >= 0.8, done.stdout
