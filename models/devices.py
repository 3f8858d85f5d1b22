"""Choosing the device a model runs on, the same way everywhere (CPU and GPU alike)."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` takes the GPU when there is one; ``cpu``, ``cuda``, ``cuda:1`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU: use cpu or auto")
    return device


def autocast(device: torch.device):
    """Mixed precision (bfloat16) on a GPU; full precision on CPU."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
    )
