"""Process-wide defaults (core.runtime): numpy's BLAS on one thread unless the user says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import json
from threadpoolctl import threadpool_info
from core.runtime import configure_environment
from core.settings import get_settings
before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
configure_environment(get_settings())
after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
print(json.dumps([before, after]))
"""


def _blas_threads(tmp_path: Path, **env: str) -> tuple[list[int], list[int]]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS")}
    environment.update(STEELSIGHT_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="2", **env)
    done = subprocess.run(
        [sys.executable, "-c", "import numpy\n" + SCRIPT],
        # every core: OpenBLAS takes no more threads than the process has cores, and the
        # test's own process may have one (tests/conftest.py shares them among workers)
        preexec_fn=lambda: os.sched_setaffinity(0, range(os.cpu_count() or 1)),
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    return before, after


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS takes one thread on one core")
@pytest.mark.parametrize("given", [None, "2"])
def test_numpy_s_blas_runs_on_one_thread_unless_the_user_says(tmp_path, given) -> None:
    env = {} if given is None else {"OPENBLAS_NUM_THREADS": given}
    before, after = _blas_threads(tmp_path, **env)
    assert before and set(before) == {2}  # OpenBLAS took OMP_NUM_THREADS, or the user's 2
    assert set(after) == ({1} if given is None else {2})
