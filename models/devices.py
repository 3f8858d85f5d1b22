"""Choosing the device a model runs on, the same way everywhere (CPU and GPU alike)."""

from __future__ import annotations

import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` takes the GPU when there is one; ``cpu``, ``cuda``, ``cuda:1`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU: use cpu or auto")
    return device


def autocast(device: torch.device, cpu: bool = False):
    """Mixed precision (bfloat16) on a GPU; on the CPU too when ``cpu`` (full precision
    otherwise)."""
    return torch.autocast(
        device_type=device.type,
        dtype=torch.bfloat16,
        enabled=device.type == "cuda" or (cpu and device.type == "cpu"),
    )


def cpu_threads() -> int:
    """The CPUs this process may run on (its affinity, which containers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_cpu_threads(threads: int | None = None) -> None:
    """Give torch's CPU work ``threads`` threads in the calling thread.

    OpenMP keeps the team size per calling thread, and ultralytics sets
    OMP_NUM_THREADS=1 when it is imported: a thread that first runs torch after that
    gets one thread. Long-lived inference threads call this before their work."""
    torch.set_num_threads(threads or cpu_threads())
