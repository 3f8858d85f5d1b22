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


@pytest.mark.parametrize(
    ("inference", "given", "expected"),
    [(False, None, None), (True, None, "PASSIVE"), (True, "ACTIVE", "ACTIVE")],
)
def test_torch_s_threads_sleep_between_regions_where_the_models_run_beside_other_work(
    tmp_path, monkeypatch, inference, given, expected
) -> None:
    """The API, the inspection workers and the benches (``inference``) run torch's
    OpenMP threads passive; the user's own setting wins, and training keeps OpenMP's."""
    from core.runtime import configure_environment
    from core.settings import Settings

    # a copy of the environment, so that nothing it sets outlives the test
    environment = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        environment["OMP_WAIT_POLICY"] = given
    monkeypatch.setattr(os, "environ", environment)
    configure_environment(Settings(home=tmp_path / "home"), inference=inference)
    assert os.environ.get("OMP_WAIT_POLICY") == expected


def test_the_inspection_workers_start_with_torch_s_threads_passive() -> None:
    """Each worker process of the local cluster the inspect flow starts has the setting in
    its environment before it imports torch."""
    from distributed import Client

    from flows.inspect import local_cluster

    with local_cluster(0, 2) as cluster, Client(cluster) as client:
        found = client.run(lambda: os.environ.get("OMP_WAIT_POLICY"))
    assert found and set(found.values()) == {"PASSIVE"}


def test_identifying_processes_start_without_the_settings_library() -> None:
    """An identifying process (``pipeline.IdentifyingProcesses``) sets BLAS through
    ``blas_on_one_thread``: that must not need pydantic-settings, which the GPU check's
    machine lacks (bench/gpu_check.sh brings pydantic only)."""
    script = (
        "import sys\n"
        "sys.modules['pydantic_settings'] = None  # as on the H200 machine\n"
        "from models.identity import pipeline\n"
        "import os\n"
        "pipeline._hold(pipeline.SurfaceIndex.empty(), os.getppid())\n"
        "print('core.settings' in sys.modules)\n"
    )
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # as the check starts it
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
