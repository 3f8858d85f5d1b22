"""Running a model's network as an ONNX graph on ONNX Runtime (CPU), the same everywhere.

`steelsight export` writes each champion's network as an ONNX graph beside the
registered model (``tasks/export.py``); inspection workers and the API run it instead of
torch when the export measured it faster and equal within the kind's tolerance
(``settings.inference_engine``). Only the network moves: preprocessing, thresholds,
regions and RLE stay the family's own code, so both engines share every step around it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from models.devices import cpu_threads

# The input of every exported graph; its first axis (the batch) is free.
INPUT = "frames"


def session(path: Path, threads: int | None = None):
    """An ONNX Runtime session on the CPU for the graph at ``path``, with the process's
    CPUs as its threads (ONNX Runtime's own default counts the machine's, not the
    container's)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1
    # threads that spin between calls take the core from the worker's other threads
    # (decoding ahead, identification)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxNetwork:
    """A network as an ONNX Runtime session: float32 arrays in, the graph's outputs out
    (a tuple when it has several)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = session(self.path, threads)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)}))


@contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """The exporters' own step-by-step logs held back to warnings while they work."""
    named = [logging.getLogger(name) for name in loggers]
    levels = [logger.level for logger in named]
    for logger in named:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(named, levels, strict=True):
            logger.setLevel(level)


def export_torch(
    network, example, path: Path, outputs: list[str], row_step: int | None = None
) -> Path:
    """A torch module as an ONNX graph (torch's exporter from ``torch.export``), its
    batch axis free: ``example`` is a float32 tensor of two or more items. With
    ``row_step``, its rows are free too, in multiples of it."""
    import torch
    from torch.export import Dim

    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = {0: Dim("batch", min=1, max=4096)}
    if row_step:
        shapes[2] = row_step * Dim("row_steps", min=1, max=4096 // row_step)
    with torch.inference_mode(False), quiet("onnxscript", "onnx_ir"):
        program = torch.onnx.export(
            network.eval(),
            (example,),
            input_names=[INPUT],
            output_names=outputs,
            dynamic_shapes=(shapes,),
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    program.save(str(path))
    return path
