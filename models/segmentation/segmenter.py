"""A trained segmentation model with everything needed to use it: network, preprocessing,
class list and post-processing thresholds; saved as a folder of JSON + weights.

Loading never unpickles code: the weights are a plain state dict read with
``weights_only=True`` and the network is rebuilt from the JSON spec.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from core.postprocess import Thresholds, by_contrast, remove_small_components
from core.rle import rle_encode
from models.devices import autocast, resolve_device
from models.onnx import OnnxNetwork, export_torch
from models.preprocess import Preprocess
from models.segmentation.network import UNetResNet, UNetSpec
from models.segmentation.regions import RunMasks
from models.segmentation.regions import cut as regions_cut

FORMAT = "steelsight-segmenter/1"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Defect:
    """One connected region of one class on one frame."""

    frame: int  # index in the batch given to ``defects``
    class_index: int  # position in the model's class list
    rle: str  # Severstal RLE of the region's mask in its frame
    area: int
    bbox: tuple[int, int, int, int]  # x_min, y_min, x_max, y_max (inclusive)
    score: float  # mean pixel probability inside the region


@dataclass(frozen=True)
class Prediction:
    gate: np.ndarray  # (N, C) float32 gate probabilities
    scores: np.ndarray  # (N, C) float32 mean pixel probability inside each kept mask (0 if none)
    shape: tuple[int, int, int, int]  # (N, C, H, W) of the masks
    # the masks with pixels, after gate, thresholds and minimum areas: (frame, class) →
    # (H, W) bool; most frames have none, and a worker needs only the regions (cut on a
    # GPU: built from their runs when asked for, ``regions.RunMasks``)
    shown: Mapping[tuple[int, int], np.ndarray]
    defects: list[Defect] | None = None  # with ``predict(..., regions=True)``

    @cached_property
    def masks(self) -> np.ndarray:
        """(N, C, H, W) bool: every mask, built on first use (1.6 MB a 1600x256 frame)."""
        out = np.zeros(self.shape, bool)
        for (i, j), mask in self.shown.items():
            out[i, j] = mask
        return out

    def frame_masks(self, n: int) -> np.ndarray:
        """(C, H, W) bool: frame ``n``'s masks alone."""
        out = np.zeros(self.shape[1:], bool)
        for j in range(self.shape[1]):
            if (n, j) in self.shown:
                out[j] = self.shown[n, j]
        return out


class Segmenter:
    def __init__(
        self,
        net: UNetResNet,
        spec: UNetSpec,
        preprocess: Preprocess,
        classes: dict[int, str],
        thresholds: Thresholds,
        frame_shape: tuple[int, int],
        device: torch.device | str = "cpu",
        context_rows: int = 0,
    ) -> None:
        self.device = resolve_device(str(device))
        self.net = net.to(self.device).eval()
        self.spec = spec
        self.preprocess = preprocess
        self.classes = dict(classes)
        self.thresholds = thresholds
        self.frame_shape = tuple(frame_shape)
        # A frame whose neighbours on the line are known (``predict``'s ``follows``) is
        # run between this many rows of each, and its masks cut back to its own rows: a
        # defect that crosses into the next frame is seen whole (0: each frame alone).
        self.context_rows = int(context_rows)
        self.window_preprocess = _window_preprocess(preprocess, self.frame_shape, self.context_rows)
        self.onnx: OnnxNetwork | None = None  # the network as an ONNX graph (``run_onnx``)
        self.bfloat16 = False  # on the CPU too (``in_bfloat16``); always on a GPU
        self._staging: _Staging | None = None  # a GPU's pinned buffer for frames on the host
        # ``predict``'s regions cut where the network ran (``regions.cut``), so that only
        # they come to the host: on a GPU; on the CPU OpenCV's host path is faster
        self.regions_on_device = self.device.type == "cuda"
        # the network compiled for batches of ``compiled_batch`` frames (``compiled``)
        self._compiled: Callable | None = None
        self.compiled_batch = 0
        if self.device.type == "cuda":  # cuDNN's bfloat16 convolutions run channels-last
            self.net = self.net.to(memory_format=torch.channels_last)

    @property
    def engine(self) -> str:
        if self.onnx is not None:
            return "onnx"
        torch_ = "torch-bf16" if self.bfloat16 and self.device.type == "cpu" else "torch"
        return f"{torch_}-compiled" if self._compiled is not None else torch_

    def compiled(self, batch_size: int) -> Segmenter:
        """The network compiled by ``torch.compile`` for batches of ``batch_size`` frames,
        compiled now, on empty frames; on the CPU with its weights frozen in. Its shapes
        are fixed: a shorter batch is padded with empty frames and only its own outputs
        are kept; a longer one runs the network as it was. A graph on ONNX Runtime is
        left for torch. On one H200 the `default` segmenter ran 2.3 times as fast end to
        end compiled (docs/benchmarks.md, "The inference thread warmed"). If compiling
        fails, the network stays as it was and the error is raised."""
        import torch._inductor.config as inductor

        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: at least one frame")
        self.onnx = None
        self._compiled = torch.compile(self.net, dynamic=False)
        self.compiled_batch = batch_size
        # On the CPU freezing folds the batch norms into the convolutions and lays the
        # weights out for oneDNN (1.5 times as fast on 2 cores); it acts only while a
        # graph is compiled, which the first call does. Not measured on a GPU: left off.
        try:
            with inductor.patch(freezing=self.device.type == "cpu"), torch.inference_mode():
                h, w = self.frame_shape
                self._forward(np.zeros((batch_size, h, w), np.uint8))
                if self.context_rows:  # the frames run between their neighbours: taller
                    rows = h + 2 * self.context_rows
                    self._forward(np.zeros((batch_size, rows, w), np.uint8), self.window_preprocess)
        except Exception:
            self._compiled, self.compiled_batch = None, 0
            raise
        return self

    def in_bfloat16(self) -> Segmenter:
        """The network on torch in bfloat16 on the CPU as well, channels-last (oneDNN's
        bfloat16 kernels; AMX where the CPU has it), its ONNX graph left."""
        self.onnx = None
        self._compiled, self.compiled_batch = None, 0  # its weights were frozen in: again
        self.bfloat16 = True
        self.net = self.net.to(memory_format=torch.channels_last)
        return self

    @property
    def area_scale(self) -> float:
        """Full-resolution pixels per model-resolution pixel."""
        h, w = self.frame_shape
        return (h * w) / (self.preprocess.height * self.preprocess.width)

    def _forward(
        self, batch: np.ndarray | torch.Tensor, preprocess: Preprocess | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask and gate logits for a batch of uint8 frames: on a GPU prepared there from
        the frames (``Preprocess.on_device``), on the CPU by ``Preprocess`` (OpenCV);
        ``preprocess``: another than the frames' own (the windows of ``_logits``)."""
        preprocess = preprocess or self.preprocess
        if self.device.type == "cuda":
            if isinstance(batch, np.ndarray):
                if self._staging is None:
                    self._staging = _Staging(self.device)
                batch = self._staging.upload(batch)
            x = preprocess.on_device(batch.to(self.device))
        else:
            x = preprocess(_on_host(batch))
            if self.onnx is not None:
                masks, gates = self.onnx(x)
                return torch.from_numpy(masks), torch.from_numpy(gates)
            x = torch.from_numpy(x)
        if self.bfloat16 or self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, cpu=self.bfloat16):
            if self._compiled is None or len(x) > self.compiled_batch:
                return self.net(x)
            n = len(x)
            if n < self.compiled_batch:  # the compiled shapes: padded with empty frames
                x = torch.cat([x, x.new_zeros((self.compiled_batch - n, *x.shape[1:]))])
            masks, gates = self._compiled(x)
            return masks[:n], gates[:n]

    def _logits(
        self, batch: np.ndarray | torch.Tensor, neighbours: list[tuple | None]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``_forward``'s logits, each frame with ``neighbours`` (the frames above and
        below it on the line) run between ``context_rows`` rows of each: its masks cut
        back to its own rows, and the gate's evidence (the mask's strongest logit) taken
        from those rows alone. The others run alone."""
        between = [k for k, pair in enumerate(neighbours) if pair is not None]
        if not between:
            return self._forward(batch)
        r, on_device = self.context_rows, isinstance(batch, torch.Tensor)

        def rows(frame, part: slice):
            if on_device:
                return torch.as_tensor(frame, device=batch.device)[part]
            return _on_host(frame)[part]

        windows = []
        for k in between:
            above, below = neighbours[k]
            windows.append((rows(above, slice(-r, None)), batch[k], rows(below, slice(None, r))))
        if on_device:
            stacked = torch.stack([torch.cat(w) for w in windows])
        else:
            stacked = np.stack([np.concatenate(w) for w in windows])
        masks, gates = self._forward(stacked, self.window_preprocess)
        top = r * self.preprocess.height // self.frame_shape[0]
        own = masks[:, :, top : top + self.preprocess.height]
        evidence = self.net.evidence
        if evidence is not None:
            evidence = evidence.detach().to(gates.device, torch.float32)
            whole, part = masks.float().amax(dim=(2, 3)), own.float().amax(dim=(2, 3))
            gates = (gates.float() + evidence * (part - whole)).to(gates.dtype)
        if len(between) == len(neighbours):
            return own, gates
        alone = [k for k, pair in enumerate(neighbours) if pair is None]
        masks_alone, gates_alone = self._forward(batch[alone])
        mask_logits = own.new_empty((len(neighbours), *own.shape[1:]))
        gate_logits = gates.new_empty((len(neighbours), gates.shape[1]))
        mask_logits[between], gate_logits[between] = own, gates
        mask_logits[alone] = masks_alone.to(own.dtype)
        gate_logits[alone] = gates_alone.to(gates.dtype)
        return mask_logits, gate_logits

    def _neighbours(
        self,
        images: np.ndarray | torch.Tensor,
        start: int,
        n: int,
        follows: Sequence[bool] | None,
        before: np.ndarray | torch.Tensor | None,
        after: np.ndarray | torch.Tensor | None,
    ) -> list[tuple | None]:
        """Per frame of ``images[start : start + n]``, the frames directly above and below
        it on the line, or None where either is unknown (or ``context_rows`` is 0)."""
        if not self.context_rows or follows is None:
            return [None] * n
        if len(follows) != len(images):
            raise ValueError(f"follows has {len(follows)} entries for {len(images)} frames")
        out: list[tuple | None] = []
        last = len(images) - 1
        for i in range(start, start + n):
            above = (images[i - 1] if i else before) if follows[i] else None
            below = after if i == last else (images[i + 1] if follows[i + 1] else None)
            out.append(None if above is None or below is None else (above, below))
        return out

    @torch.inference_mode()
    def probabilities(
        self, images: np.ndarray, batch_size: int = 16
    ) -> tuple[np.ndarray, np.ndarray]:
        """Gate (N, C) and pixel probabilities (N, C, h, w) at the model's resolution."""
        gates, pixels = [], []
        for start in range(0, len(images), batch_size):
            mask_logits, gate_logits = self._forward(images[start : start + batch_size])
            gates.append(torch.sigmoid(gate_logits.float()).cpu().numpy())
            pixels.append(torch.sigmoid(mask_logits.float()).cpu().numpy())
        return np.concatenate(gates), np.concatenate(pixels)

    @torch.inference_mode()
    def predict(
        self,
        images: np.ndarray | torch.Tensor,
        batch_size: int = 16,
        regions: bool = False,
        follows: Sequence[bool] | None = None,
        before: np.ndarray | torch.Tensor | None = None,
        after: np.ndarray | torch.Tensor | None = None,
    ) -> Prediction:
        """Defect masks at the frames' full resolution, for (N, H, W) uint8 frames, on the
        host or (a GPU worker's, e.g. decoded there) a torch tensor on the model's device;
        ``regions`` also splits them into connected regions with their RLE and score.
        Only the frames of masks the gate lets through come back to the host.

        Where the frames tile the line, ``follows`` says per frame whether it directly
        follows the one before it (the first: ``before``, the frame just before them),
        and ``after`` is the frame just after them (None: not known). With
        ``context_rows``, each frame with both neighbours is run between rows of them."""
        uint8 = images.dtype in (np.uint8, torch.uint8)
        if images.ndim != 3 or not uint8:
            raise ValueError(
                f"expected grey uint8 frames (N, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        t = self.thresholds
        gate_thresholds = torch.tensor(t.gate, device=self.device)
        gates, scores = [], []
        shown: dict[tuple[int, int], np.ndarray] = {}  # the masks with pixels
        runs: dict[tuple[int, int], tuple] = {}  # or their runs, cut on the device
        found: list[Defect] = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            neighbours = self._neighbours(images, start, len(batch), follows, before, after)
            mask_logits, gate_logits = self._logits(batch, neighbours)
            gate = torch.sigmoid(gate_logits.float())
            # Only masks the gate lets through, and that can reach their pixel threshold,
            # are brought to full resolution: the others are empty anyway, and most
            # frames have one class or none.
            kept = _may_show((gate >= gate_thresholds).nonzero().tolist(), mask_logits, t.pixel)
            score = np.zeros((len(batch), len(t.gate)), np.float32)
            if kept:
                rows = torch.tensor([i for i, _ in kept], device=self.device)
                cols = torch.tensor([j for _, j in kept], device=self.device)
                full = upsampled(mask_logits[rows, cols], batch.shape[1:])
                cut = regions and self.regions_on_device
                if not (cut and self._cut_on_device(batch, start, kept, full, found, runs, score)):
                    self._cut_on_host(batch, start, kept, full, regions, found, shown, score)
            scores.append(score)
            gates.append(gate.cpu().numpy())
        n_classes = len(t.gate)
        return Prediction(
            np.concatenate(gates) if gates else np.zeros((0, n_classes), np.float32),
            np.concatenate(scores) if scores else np.zeros((0, n_classes), np.float32),
            (len(images), n_classes, *images.shape[1:]),
            RunMasks(tuple(images.shape[1:]), runs, shown) if runs else shown,
            found if regions else None,
        )

    def _cut_on_host(
        self,
        batch: np.ndarray | torch.Tensor,
        start: int,
        kept: list[list[int]],
        full: torch.Tensor,
        regions: bool,
        found: list[Defect],
        shown: dict,
        score: np.ndarray,
    ) -> None:
        """The ``kept`` masks' pixel probabilities ``full`` (k, H, W) cut on the host
        (OpenCV): ``shown`` and ``score`` filled in, and with ``regions`` each mask's
        regions added to ``found``."""
        t = self.thresholds
        full_np = full.cpu().numpy()  # one transfer serves masks, scores and regions
        on_host = {i: _on_host(batch[i]) for i in dict.fromkeys(i for i, _ in kept)}
        for n, (i, j) in enumerate(kept):
            p = full_np[n]
            above = by_contrast(on_host[i], p >= t.pixel[j], t.contrast[j], t.reach[j])
            if regions:  # one labelling serves the minimum area and the regions
                components = _components(above, t.min_area[j])
                mask = _kept(above, components)
                found += _described(start + i, j, components, p)
            else:
                mask = remove_small_components(above, t.min_area[j])
            area = int(mask.sum())
            if area:
                shown[start + i, j] = mask
                score[i, j] = float(p[mask].sum(dtype=np.float64)) / area

    def _cut_on_device(
        self,
        batch: np.ndarray | torch.Tensor,
        start: int,
        kept: list[list[int]],
        full: torch.Tensor,
        found: list[Defect],
        runs: dict,
        score: np.ndarray,
    ) -> bool:
        """``_cut_on_host``'s regions cut where ``full`` is (``regions.cut``): only the
        regions and each mask's runs come to the host. Where that fails (an operation
        the device lacks: it has not run on every GPU), nothing is added, the regions are
        cut on the host from now on, said once in the log, and False comes back."""
        t = self.thresholds

        def frame(i: int) -> torch.Tensor:
            if isinstance(batch, torch.Tensor):
                return batch[i].to(full.device)
            return torch.from_numpy(np.ascontiguousarray(batch[i])).to(full.device)

        frames: dict[int, torch.Tensor] = {}
        for i, j in kept:
            if t.contrast[j] > 0 and i not in frames:
                frames[i] = frame(i)
        try:
            cut = regions_cut(full, [j for _, j in kept], t, [frames.get(i) for i, _ in kept])
        except RuntimeError as error:
            self.regions_on_device = False
            log.warning(
                "defect regions cut on the host from now on: cutting them on %s failed (%s)",
                self.device,
                error,
            )
            return False
        for region in cut.regions:
            i, j = kept[region.mask]
            score_ = region.total / region.area
            found.append(Defect(start + i, j, region.rle, region.area, region.bbox, score_))
        for n, mine in cut.runs.items():
            i, j = kept[n]
            runs[start + i, j] = mine
            score[i, j] = cut.totals[n] / cut.areas[n]
        return True

    def export_onnx(self, path: Path) -> Path:
        """The network as an ONNX graph at ``path``: preprocessed frames (N, channels, h,
        w) float32 → mask logits (N, C, h, w) and gate logits (N, C); with
        ``context_rows``, h free (the frames between their neighbours are taller)."""
        pre = self.preprocess
        example = torch.zeros(2, pre.channels, pre.height, pre.width)
        network = copy.deepcopy(self.net).float().cpu()
        # a frame between its neighbours has more rows: in steps of the encoder's stride
        rows = math.gcd(pre.height, self.window_preprocess.height) if self.context_rows else None
        return export_torch(network, example, path, ["mask_logits", "gate_logits"], rows)

    def run_onnx(self, path: Path) -> Segmenter:
        """From now on the network runs as the ONNX graph at ``path`` on ONNX Runtime
        (CPU); everything around it stays as it is."""
        if self.device.type != "cpu":
            raise ValueError(f"ONNX Runtime runs here on the CPU, not on {self.device}")
        self.onnx = OnnxNetwork(path)
        return self

    def config(self) -> dict:
        return {
            "format": FORMAT,
            "network": {**asdict(self.spec), "decoder_channels": list(self.spec.decoder_channels)},
            "preprocess": self.preprocess.to_dict(),
            "classes": {str(k): v for k, v in self.classes.items()},
            "thresholds": self.thresholds.to_dict(),
            "frame_shape": list(self.frame_shape),
            "context_rows": self.context_rows,
        }

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "segmenter.json").write_text(json.dumps(self.config(), indent=2) + "\n")
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, folder / "weights.pt")
        return folder

    @staticmethod
    def load(folder: Path, device: torch.device | str = "cpu") -> Segmenter:
        config = json.loads((folder / "segmenter.json").read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{folder}: format {config.get('format')!r}, expected {FORMAT!r}")
        net_config = config["network"]
        spec = UNetSpec(**{**net_config, "decoder_channels": tuple(net_config["decoder_channels"])})
        net = UNetResNet(spec)
        net.load_state_dict(
            torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        )
        return Segmenter(
            net,
            spec,
            Preprocess(**config["preprocess"]),
            {int(k): v for k, v in config["classes"].items()},
            Thresholds.from_dict(config["thresholds"]),
            tuple(config["frame_shape"]),
            device,
            config.get("context_rows", 0),  # none before 2026-12-05
        )


def context_fits(context_rows: int, height: int, model_rows: int) -> bool:
    """Whether a frame ``height`` rows high, run at ``model_rows``, and ``context_rows``
    of each neighbour make a whole number of the model's rows."""
    return context_rows >= 0 and (height + 2 * context_rows) * model_rows % height == 0


def _window_preprocess(
    preprocess: Preprocess, frame_shape: tuple[int, ...], context_rows: int
) -> Preprocess | None:
    """The preprocessing of a frame between ``context_rows`` rows of each neighbour:
    the same scale, so many more rows."""
    if not context_rows:
        return None
    height = frame_shape[0]
    if not context_fits(context_rows, height, preprocess.height):
        raise ValueError(
            f"context_rows {context_rows}: a positive whole number of the model's rows "
            f"({height / preprocess.height:g} of the frame's rows each)"
        )
    return replace(preprocess, height=(height + 2 * context_rows) * preprocess.height // height)


def _on_host(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    return frames.cpu().numpy() if isinstance(frames, torch.Tensor) else frames


class _Staging:
    """Frames on the host to a GPU as uint8, through one pinned buffer reused batch after
    batch (pinning memory each time costs more than the copy): the copy is queued
    without waiting, and the buffer is written again only once the copy before is
    done."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffer = torch.empty(0, dtype=torch.uint8).pin_memory()
        self.copied: torch.cuda.Event | None = None

    def upload(self, frames: np.ndarray) -> torch.Tensor:
        if self.copied is not None:
            self.copied.synchronize()
        if self.buffer.numel() < frames.size:
            self.buffer = torch.empty(frames.size, dtype=torch.uint8).pin_memory()
        staged = self.buffer[: frames.size].view(frames.shape)
        staged.numpy()[...] = frames
        on_device = staged.to(self.device, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()
        return on_device


def _may_show(
    kept: list[list[int]], mask_logits: torch.Tensor, pixel: Sequence[float]
) -> list[list[int]]:
    """Of the (frame, class) masks the gates let through, those that can hold a pixel at
    its class's threshold. Upsampling is bilinear, so every full-resolution logit is a
    weighted mean of the model's, at most their largest: a mask whose largest logit's
    probability is under the threshold (with a margin for rounding) is empty at full
    resolution, and is not brought there. On the demo's line most gated masks were."""
    if not kept:
        return kept
    largest = mask_logits.flatten(2).amax(dim=2).double().cpu().numpy()  # (frame, class)
    margin = largest + 1e-3 * (1.0 + np.abs(largest))
    reach = 1.0 / (1.0 + np.exp(-np.clip(margin, -80.0, 80.0)))
    return [[i, j] for i, j in kept if pixel[j] >= 1.0 or reach[i, j] >= pixel[j]]


def upsampled(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel probabilities at a frame's ``size`` of masks' logits (k, h, w) at the model's:
    the logits upsampled bilinearly, then the sigmoid. The one rule of inspection and of
    the thresholds' calibration."""
    full = F.interpolate(mask_logits[:, None].float(), size=tuple(size), mode="bilinear")
    return full.sigmoid_()[:, 0]  # in place: the full-resolution copy is new already


@dataclass(frozen=True)
class _Components:
    """The 8-connected components of a mask, labelled only inside the box around its
    pixels (most masks a gate lets through hold few pixels or none, and labelling a
    whole 1600x256 frame cost 4 ms): ``labels`` inside the box at ``origin`` (row,
    column), ``stats`` OpenCV's in the frame's coordinates (row 0, the background, as
    the box's), and ``keep``: the labels of those of the minimum area or more, in
    OpenCV's order (the scan of its 2x2 blocks)."""

    labels: np.ndarray
    stats: np.ndarray
    keep: np.ndarray
    origin: tuple[int, int]

    def inside(self, k: int) -> tuple[int, int, int, int, np.ndarray]:
        """(x, y, w, h) of component ``k`` in the frame, and where it is in its box."""
        x, y, w, h = (int(v) for v in self.stats[k, :4])
        top, left = y - self.origin[0], x - self.origin[1]
        return x, y, w, h, self.labels[top : top + h, left : left + w] == k


def _components(above: np.ndarray, min_area: int) -> _Components:
    """``_Components`` of the mask ``above`` (bool), of ``min_area`` pixels or more kept."""
    rows, cols = np.flatnonzero(above.any(axis=1)), np.flatnonzero(above.any(axis=0))
    if not len(rows):
        background = np.zeros((1, 5), np.int32)  # no component but the background
        return _Components(np.zeros((0, 0), np.int32), background, np.zeros(0, np.int64), (0, 0))
    # the box starts on an even row and column: OpenCV labels 2x2 blocks at a time,
    # and its labels' order (the regions' order) then stays the whole frame's
    top, left = int(rows[0]) & ~1, int(cols[0]) & ~1
    box = np.ascontiguousarray(above[top : rows[-1] + 1, left : cols[-1] + 1])
    _, labels, stats, _ = cv2.connectedComponentsWithStats(box.view(np.uint8), connectivity=8)
    stats[:, cv2.CC_STAT_LEFT] += left
    stats[:, cv2.CC_STAT_TOP] += top
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area) + 1
    return _Components(labels, stats, keep, (top, left))


def _kept(above: np.ndarray, found: _Components) -> np.ndarray:
    """``above`` without the components left out of ``keep``, each cleared inside its
    own box (they are the small ones: cheaper than relabelling the whole frame)."""
    if len(found.keep) == len(found.stats) - 1:
        return above
    kept = above.copy()
    for k in np.setdiff1d(np.arange(1, len(found.stats)), found.keep):
        x, y, w, h, part = found.inside(int(k))
        kept[y : y + h, x : x + w] &= ~part
    return kept


def _described(frame: int, class_index: int, found: _Components, p: np.ndarray) -> list[Defect]:
    """A Defect per kept component, with its RLE and its mean pixel probability."""
    if not len(found.keep):
        return []
    top, left = found.origin
    height, width = found.labels.shape
    sums = np.bincount(
        found.labels.ravel(),
        weights=p[top : top + height, left : left + width].ravel(),
        minlength=int(found.keep[-1]) + 1,
    )
    out = []
    for k in found.keep:
        x, y, w, h, part = found.inside(int(k))
        area = int(found.stats[k, cv2.CC_STAT_AREA])
        mask = np.zeros(p.shape, bool)
        mask[y : y + h, x : x + w] = part
        out.append(
            Defect(
                frame,
                class_index,
                rle_encode(mask),
                area,
                (x, y, x + w - 1, y + h - 1),
                float(sums[k] / area),
            )
        )
    return out
