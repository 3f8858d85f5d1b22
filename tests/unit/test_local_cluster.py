"""The cluster `inspect` starts on its own machine: with GPUs, one worker per GPU that
sees only its own; without, one worker per two cores. Started for real (on this CPU
machine the GPU layout is asked for by count; the workers never touch CUDA here)."""

from __future__ import annotations

import os

import pytest
from distributed import Client

from flows.inspect import local_cluster

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
