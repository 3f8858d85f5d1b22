"""`steelsight export`: a registered model's network as an ONNX graph beside it, checked
against torch on the same frames before it is registered.

For each version: the graph is written (``export_onnx`` of the model), both engines run
the family's comparison (``onnx_outputs``: probabilities, boxes or embeddings) on the
same frames, the largest difference of each output is held against the family's
``ONNX_TOLERANCE``, and each engine's time is taken (median of ``rounds``). A graph
that agrees is logged beside the version (``registry.register_onnx``) with the check;
workers and the API take it on the CPU when it was faster (``settings.inference_engine``).
A graph that does not agree is not registered, and the check says by how much.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from core.settings import Settings
from models import kinds, registry
from tasks.archives import read_frames, read_manifest


@dataclass(frozen=True)
class Exported:
    kind: str
    version: int
    frames: int  # compared and timed on
    differences: dict[str, float]  # per output: the largest absolute difference
    tolerance: dict[str, float]
    torch_ms: float  # the family's comparison on all ``frames``, median
    onnx_ms: float
    registered: bool

    @property
    def agrees(self) -> bool:
        return all(self.differences[k] <= self.tolerance[k] for k in self.differences)

    @property
    def faster(self) -> bool:
        return self.onnx_ms < self.torch_ms

    def check(self) -> dict:
        """What the version's ``onnx`` tag records."""
        return {
            **asdict(self),
            "agrees": self.agrees,
            "faster": self.faster,
            "exported": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def twin_frames(folder: Path, most: int = 32) -> tuple[np.ndarray, str]:
    """Frames to compare the engines on when none are given: a 3-sheet recording the
    twin renders into ``folder``, and its name."""
    from twin.config import TwinConfig
    from twin.recorder import simulate

    archive = simulate(TwinConfig(), 3, seed=0, out=folder).inspection
    return sample_frames(archive, most), archive.name


def sample_frames(archive: Path, most: int = 32) -> np.ndarray:
    """Up to ``most`` frames of an inspection recording, spread over it (only those are
    kept in memory)."""
    step = max(1, read_manifest(archive).frame_count // most)
    frames = [frame for i, (_, frame) in enumerate(read_frames(archive)) if i % step == 0]
    if not frames:
        raise ValueError(f"{archive} holds no frames to compare the engines on")
    return np.stack(frames[:most])


def export_version(
    settings: Settings, kind: str, version: int, frames: np.ndarray, rounds: int = 3
) -> Exported:
    """Export version ``version`` of ``kind``, compare and time both engines on
    ``frames``, and register the graph beside the version when it agrees."""
    family = kinds.family(kind)
    if not kinds.exportable(kind):
        raise ValueError(f"{kind} models cannot be exported to ONNX")
    # compared and timed in float32, as the graph computes
    on_torch = settings.model_copy(
        update={"inference_engine": "torch", "device": "cpu", "cpu_precision": "float32"}
    )
    model = registry.load_model(on_torch, kind, version)
    with tempfile.TemporaryDirectory() as tmp:
        graph = model.export_onnx(Path(tmp) / f"{registry.model_name(kind)}-v{version}.onnx")
        expected, torch_ms = _timed(lambda: family.onnx_outputs(model, frames), rounds)
        model.run_onnx(graph)
        got, onnx_ms = _timed(lambda: family.onnx_outputs(model, frames), rounds)
        differences = {name: _difference(expected[name], got[name]) for name in expected}
        result = Exported(
            kind,
            version,
            len(frames),
            differences,
            dict(family.ONNX_TOLERANCE),
            torch_ms,
            onnx_ms,
            registered=False,
        )
        if result.agrees:
            result = Exported(**{**asdict(result), "registered": True})
            registry.register_onnx(registry.connect(settings), kind, version, graph, result.check())
    return result


def export_as_before(
    settings: Settings, kind: str, version: int, champion_before: int | None
) -> Exported | None:
    """After ``version`` took the champion alias from ``champion_before``: export it too
    when the champion before it was exported (a plant that runs its champions on ONNX
    Runtime keeps doing so after a retrain). None when there was nothing to follow."""
    if champion_before is None or not kinds.exportable(kind):
        return None
    if registry.onnx_check(registry.connect(settings), kind, champion_before) is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        frames, _ = twin_frames(Path(tmp))
    return export_version(settings, kind, version, frames)


def _timed(run: Callable[[], dict], rounds: int) -> tuple[dict, float]:
    """``run``'s outputs and its median time in ms over ``rounds`` (after a first call
    that allocates and picks kernels)."""
    outputs = run()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return outputs, statistics.median(times)


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference; infinite when the shapes differ (a box one
    engine found and the other did not)."""
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0))
