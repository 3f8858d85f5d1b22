"""Defect regions cut from a segmenter's masks where its network ran: on a GPU worker the
pixel thresholds, the contrast cut (``core.postprocess.by_contrast``), the connected
components and each region's area, box, score and RLE runs are taken on the device, so
that only the regions cross to the host, not a 1.6 MB float mask per frame and class
the gate lets through. On the demo's line that host work took 1.3 ms of a core per
frame (docs/benchmarks.md, "Defect regions on the GPU"): one worker thread could not
keep up with 3,200 frames a second.

The same regions as the host's OpenCV path (``segmenter._components``), in the same
order, within float rounding of the scores. Written in torch, so it runs, and is tested
against the host's, on the CPU too; there the host's path is faster and stays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.postprocess import CONTRAST_WINDOW, Thresholds
from core.rle import runs_encode, runs_mask

# pixels whose 31x31 squares are gathered at once for their medians (31 MB of int16)
_MEDIAN_CHUNK = 16_384


def components(mask: torch.Tensor) -> torch.Tensor:
    """The 8-connected components of masks (k, H, W) bool: each pixel of a component
    labelled 1 + the flat index, in the stack, of the component's first pixel in raster
    order; 0 off the masks. Worked on the masks' pixels alone, as a graph of each pixel
    and its neighbours to the left and above: each round every pair of neighbours, and
    the pixels their labels name, take the lesser label, then every label is replaced by
    the label of the pixel it names until none changes (pointer jumping), so that a
    region settles in a few rounds, not one per pixel of its length."""
    k, h, w = mask.shape
    flat = mask.reshape(-1)
    pixels = flat.nonzero()[:, 0]  # in raster order: the least of a region is its first
    out = torch.zeros(flat.shape, dtype=torch.int64, device=mask.device)
    if not len(pixels):
        return out.view(k, h, w)
    y, x = (pixels % (h * w)) // w, pixels % w
    ends = []
    for dy, dx in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):  # each pair of neighbours once
        neighbour = pixels + dy * w + dx
        at = torch.searchsorted(pixels, neighbour).clamp(max=len(pixels) - 1)
        paired = (pixels[at] == neighbour) & (y + dy >= 0) & (x + dx >= 0) & (x + dx < w)
        ends.append((paired.nonzero()[:, 0], at[paired]))
    a, b = torch.cat([e[0] for e in ends]), torch.cat([e[1] for e in ends])
    label = torch.arange(len(pixels), device=mask.device)
    while True:
        before = label
        la, lb = label[a], label[b]
        least = torch.minimum(la, lb)
        label = label.clone()
        for ends_ in (a, b, la, lb):  # the pair, and the pixels their labels name
            label.scatter_reduce_(0, ends_, least, "amin")
        while True:
            jumped = label[label]
            if torch.equal(jumped, label):
                break
            label = jumped
        if torch.equal(label, before):
            break
    out[pixels] = pixels[label] + 1
    return out.view(k, h, w)


def median_offsets(frames: torch.Tensor, at: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """At the pixels ``at`` (frame, row, column) of grey uint8 ``frames`` (m, H, W), each
    one's grey level less the median of the ``CONTRAST_WINDOW`` square around it, the
    frame's edge repeated outward (OpenCV's ``medianBlur``):
    ``core.postprocess.contrast_offsets`` at those pixels only, int32."""
    half = CONTRAST_WINDOW // 2
    padded = F.pad(frames[:, None].float(), (half,) * 4, mode="replicate")[:, 0]
    _, rows, cols = padded.shape
    padded = padded.to(torch.int16).reshape(-1)
    steps = torch.arange(CONTRAST_WINDOW, device=frames.device)
    square = (steps[:, None] * cols + steps[None, :]).reshape(-1)
    middle = CONTRAST_WINDOW * CONTRAST_WINDOW // 2 + 1
    corners = (at[0] * rows + at[1]) * cols + at[2]
    medians = [
        padded[corner[:, None] + square[None, :]].kthvalue(middle, dim=1).values
        for corner in corners.split(_MEDIAN_CHUNK)
    ]
    median = torch.cat(medians) if medians else corners.new_zeros(0, dtype=torch.int16)
    return frames[at].int() - median.int()


def by_contrast(
    frames: torch.Tensor, masks: torch.Tensor, contrast: int, reach: int
) -> torch.Tensor:
    """``core.postprocess.by_contrast`` on the device, for masks (m, H, W) bool of one
    class on their grey uint8 ``frames`` (m, H, W) at once: the pixels within ``reach``
    of each mask that stand ``contrast`` grey levels or more off their square's median,
    on the side of it where the mask's own pixels of their region mostly lie."""
    if contrast <= 0 or not bool(masks.any()):
        return masks
    side = 2 * reach + 1
    near = F.max_pool2d(masks[:, None].float(), side, stride=1, padding=reach)[:, 0] > 0
    at = near.nonzero(as_tuple=True)
    off = median_offsets(frames, at)
    _, region = torch.unique(components(near)[at], return_inverse=True)
    own = torch.where(masks[at], off, 0).long()
    sums = torch.zeros(int(region.max()) + 1, dtype=torch.int64, device=masks.device)
    sign = torch.sign(sums.index_add_(0, region, own))
    sign[sign == 0] = 1
    kept = sign[region] * off >= contrast
    out = torch.zeros_like(masks)
    out[tuple(v[kept] for v in at)] = True
    return out


@dataclass(frozen=True)
class Region:
    """One region as it comes to the host: its mask (k of the stack), area, box
    (x_min, y_min, x_max, y_max, inclusive), summed pixel probability and RLE."""

    mask: int
    area: int
    bbox: tuple[int, int, int, int]
    total: float
    rle: str


class RunMasks(Mapping):
    """Masks (H, W) bool rebuilt on the host from their column-major runs, each when first
    asked for: a worker reads only the regions, the API's overlay one frame's masks.
    ``built``: masks there already (those cut on the host)."""

    def __init__(self, shape: tuple[int, int], runs: dict, built: dict | None = None) -> None:
        self.shape = shape
        self._runs = runs  # key -> (starts, lengths), 0-based, column-major
        self._built: dict = dict(built or {})
        self._keys = list(dict.fromkeys([*self._runs, *self._built]))

    def __getitem__(self, key) -> np.ndarray:
        if key not in self._built:
            self._built[key] = runs_mask(*self._runs[key], self.shape)
        return self._built[key]

    def __contains__(self, key) -> bool:
        return key in self._runs or key in self._built

    def __iter__(self) -> Iterator:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True)
class Cut:
    """The regions of a stack of masks, in the host path's order (by mask, then as
    OpenCV numbers them: by the first 2x2 block of the frame they reach), and per mask
    its kept pixels' area and summed probability, and its runs (for ``RunMasks``)."""

    regions: list[Region]
    areas: np.ndarray  # (k,) int64
    totals: np.ndarray  # (k,) float64
    runs: dict[int, tuple[np.ndarray, np.ndarray]]  # mask -> (starts, lengths)


def cut(
    probabilities: torch.Tensor,
    classes: Sequence[int],
    thresholds: Thresholds,
    frames: Sequence[torch.Tensor | None],
) -> Cut:
    """The regions of masks (k, H, W) of pixel ``probabilities``, mask n of class
    ``classes[n]``: its pixel threshold, the contrast cut on ``frames[n]`` (the grey
    uint8 frame it is on, on the same device; None where its class has no contrast
    cut), its connected components of the class's minimum area or more."""
    t = thresholds
    k, h, w = probabilities.shape
    device = probabilities.device
    pixel = torch.tensor([t.pixel[j] for j in classes], dtype=probabilities.dtype, device=device)
    above = probabilities >= pixel[:, None, None]
    for j in sorted(set(classes)):  # each class's masks cut together
        if t.contrast[j] > 0:
            of = [n for n, c in enumerate(classes) if c == j]
            on = torch.stack([frames[n] for n in of])
            above[of] = by_contrast(on, above[of], t.contrast[j], t.reach[j])
    labels = components(above).reshape(-1)
    pixels = labels.nonzero()[:, 0]
    if not len(pixels):
        return Cut([], np.zeros(k, np.int64), np.zeros(k, np.float64), {})
    roots, region = torch.unique(labels[pixels], return_inverse=True)
    count = len(roots)
    mask_of = (roots - 1) // (h * w)
    at = pixels % (h * w)
    y, x = at // w, at % w

    def reduce(values: torch.Tensor, how: str) -> torch.Tensor:
        return values.new_zeros(count).scatter_reduce(0, region, values, how, include_self=False)

    area = torch.bincount(region, minlength=count)
    total = torch.zeros(count, dtype=torch.float64, device=device)
    total.index_add_(0, region, probabilities.reshape(-1)[pixels].double())
    box = torch.stack([reduce(x, "amin"), reduce(y, "amin"), reduce(x, "amax"), reduce(y, "amax")])
    first_block = reduce((y // 2) * ((w + 1) // 2) + x // 2, "amin")
    least = torch.tensor([t.min_area[j] for j in classes], dtype=torch.int64, device=device)
    keep = area >= least[mask_of]
    # numbered as the host numbers them: by mask, then by the first block they reach
    order = torch.argsort(mask_of * (h * w) + first_block)
    order = order[keep[order]]
    number = torch.zeros(count, dtype=torch.int64, device=device)
    number[order] = torch.arange(1, len(order) + 1, device=device)
    # the kept regions' runs, column-major per mask (Severstal's order)
    kept_pixels = keep[region]
    numbered = torch.zeros(k * h * w, dtype=torch.int64, device=device)
    numbered[pixels[kept_pixels]] = number[region[kept_pixels]]
    by_column = numbered.view(k, h, w).transpose(1, 2).reshape(k, w * h)
    padded = F.pad(by_column, (1, 1))
    opens = (by_column != 0) & (by_column != padded[:, :-2])
    closes = (by_column != 0) & (by_column != padded[:, 2:])
    run_mask, run_start = opens.nonzero(as_tuple=True)
    run_end = closes.nonzero(as_tuple=True)[1] + 1
    run_region = by_column[run_mask, run_start]
    # to the host, once: the regions' figures and their runs
    kept = order.cpu().numpy()
    area_, total_ = area.cpu().numpy(), total.cpu().numpy()
    box_, mask_ = box.cpu().numpy(), mask_of.cpu().numpy()
    run_mask_, run_start_ = run_mask.cpu().numpy(), run_start.cpu().numpy()
    run_length = run_end.cpu().numpy() - run_start_
    run_region_ = run_region.cpu().numpy()
    areas = np.bincount(mask_[kept], weights=area_[kept], minlength=k).astype(np.int64)
    totals = np.bincount(mask_[kept], weights=total_[kept], minlength=k)
    by_region = np.argsort(run_region_, kind="stable")  # each region's runs in column order
    bounds = np.searchsorted(run_region_[by_region], np.arange(1, len(kept) + 2))
    regions = []
    for r, i in enumerate(kept):
        mine = by_region[bounds[r] : bounds[r + 1]]
        regions.append(
            Region(
                int(mask_[i]),
                int(area_[i]),
                tuple(int(v) for v in box_[:, i]),
                float(total_[i]),
                runs_encode(run_start_[mine], run_length[mine]),
            )
        )
    runs = {}
    for n in np.flatnonzero(areas):
        mine = run_mask_ == n
        runs[int(n)] = (run_start_[mine], run_length[mine])
    return Cut(regions, areas, totals, runs)
