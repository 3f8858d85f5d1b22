"""The cluster `inspect` starts on its own machine: with GPUs, one worker per GPU that
sees only its own; without, one worker per two cores. Started for real (on this CPU
machine the GPU layout is asked for by count; the workers never touch CUDA here)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from distributed import Client

from flows.inspect import local_cluster
from tests.helpers import start_dask_scheduler, start_dask_worker, stop_group

pytestmark = pytest.mark.slow


def _env(name: str) -> str | None:
    return os.environ.get(name)


def test_each_gpu_worker_sees_only_its_own_gpu_and_holds_the_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # the GPUs this machine gives us
    with local_cluster(2, 4) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        seen = client.run(_env, "CUDA_VISIBLE_DEVICES")
        threads = client.run(_env, "OMP_NUM_THREADS")
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
    assert sorted(seen.values()) == ["2", "5"]
    assert set(threads.values()) == {"2"}
    assert [w["resources"] for w in workers] == [{"GPU": 1}, {"GPU": 1}]
    assert sorted(w["name"] for w in workers) == ["gpu-2", "gpu-5"]


def test_without_gpus_one_worker_per_two_cores() -> None:
    with local_cluster(0, 4) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        threads = client.run(_env, "OMP_NUM_THREADS")
    assert len(workers) == 2 and all(not w["resources"] for w in workers)
    assert set(threads.values()) == {"2"}


def _identifying_processes(setting: str, on_gpu: bool) -> int:
    """On a worker: how many processes it identifies markings in (0: threads)."""
    from models.identity.pipeline import SurfaceIndex
    from tasks.inspection import identifying_processes

    held = identifying_processes(SurfaceIndex.empty(), setting, on_gpu)
    return 0 if held is None else held.processes


def test_the_workers_may_identify_in_processes_and_daemonic_ones_use_threads() -> None:
    """``identify_in``: the flow's workers are started so that they may start processes
    of their own (auto: on a GPU worker); a daemonic worker (`dask worker`'s default)
    may not, and identifies on threads."""
    import dask
    from distributed import LocalCluster

    with local_cluster(0, 2) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=60)
        assert set(client.run(_identifying_processes, "processes", False).values()) == {
            len(os.sched_getaffinity(0))
        }
        assert set(client.run(_identifying_processes, "auto", False).values()) == {0}
        assert set(client.run(_identifying_processes, "threads", True).values()) == {0}
    with (
        dask.config.set({"distributed.worker.daemon": True}),
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        assert set(client.run(_identifying_processes, "auto", True).values()) == {0}


def test_a_dask_worker_started_by_hand_may_identify_in_processes_when_told(
    tmp_path: Path,
) -> None:
    """The distributed path as the README starts it: a `dask worker` is daemonic unless
    started with DASK_DISTRIBUTED__WORKER__DAEMON=False, and only then may it identify
    in processes of its own (the other identifies on threads)."""
    import cloudpickle

    # sent by value: a worker started by hand cannot import this test's module
    module = sys.modules[_identifying_processes.__module__]
    cloudpickle.register_pickle_by_value(module)
    scheduler, scheduler_file = start_dask_scheduler(tmp_path)
    started = [scheduler]
    try:
        for name, daemon in (("told", "False"), ("untold", None)):
            env = {k: v for k, v in os.environ.items() if "WORKER__DAEMON" not in k}
            if daemon:
                env["DASK_DISTRIBUTED__WORKER__DAEMON"] = daemon
            started.append(start_dask_worker(scheduler_file, name, env))
        with Client(scheduler_file=str(scheduler_file), timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            names = {
                address: worker["name"]
                for address, worker in client.scheduler_info(n_workers=-1)["workers"].items()
            }
            found = client.run(_identifying_processes, "processes", True)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        for process in reversed(started):
            stop_group(process)
    by_name = {names[address]: n for address, n in found.items()}
    assert by_name == {"told": len(os.sched_getaffinity(0)), "untold": 0}
