"""The segmentation network, its save/load, the dataset loaders and the fixed split."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from core.postprocess import Thresholds
from core.rle import rle_encode
from models.data import SegmentationData, split_by_group
from models.encoders import build_resnet, load_encoder_weights
from models.kinds import within_budget
from models.preprocess import Preprocess
from models.segmentation.network import UNetResNet, UNetSpec
from models.segmentation.segmenter import Segmenter
from models.segmentation.train import (
    CropSampler,
    _distracted,
    _randomised,
    _shifted,
    _speckled,
    _targets,
    recipe_for,
)
from tasks.datasets import load_segmentation
from tasks.labels import SourceError


def small_segmenter(
    seed: int = 0, detail_window: int = 0, mask_evidence: bool = False, context_rows: int = 0
) -> Segmenter:
    torch.manual_seed(seed)
    pre = Preprocess(64, 128, 0.4, 0.2, detail_window)
    spec = UNetSpec(
        encoder="resnet10", n_classes=4, in_channels=pre.channels, mask_evidence=mask_evidence
    )
    thresholds = Thresholds((0.3,) * 4, (0.5,) * 4, (0, 16, 0, 64))
    net = UNetResNet(spec)
    if mask_evidence:  # as a trained one: each class's gate leans on its mask
        with torch.no_grad():
            net.evidence.copy_(torch.tensor([0.5, 1.0, 0.0, 2.0]))
    return Segmenter(
        net,
        spec,
        pre,
        {1: "a", 2: "b", 3: "c", 4: "d"},
        thresholds,
        (128, 256),
        context_rows=context_rows,
    )


def test_network_gives_full_size_masks_and_one_gate_per_class() -> None:
    net = UNetResNet(UNetSpec(encoder="resnet10", n_classes=3)).eval()
    masks, gate = net(torch.zeros(2, 1, 64, 96))
    assert masks.shape == (2, 3, 64, 96) and gate.shape == (2, 3)


def test_the_gate_with_mask_evidence_adds_each_class_strongest_mask_logit() -> None:
    """The gate reads the mask where the encoder's last stage (1/32) has lost a thin line:
    per class, its learnt weight times the mask's strongest logit, on top of the pooled
    gate; a network without it keeps the pooled gate alone."""
    torch.manual_seed(0)
    plain = UNetResNet(UNetSpec(encoder="resnet10", n_classes=3)).eval()
    seeing = UNetResNet(UNetSpec(encoder="resnet10", n_classes=3, mask_evidence=True)).eval()
    missing, unexpected = seeing.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["evidence"] and not unexpected
    x = torch.randn(2, 1, 64, 96)
    masks, gate = plain(x)
    assert torch.equal(seeing(x)[1], gate), "the evidence starts at zero: the gate as before"
    with torch.no_grad():
        seeing.evidence.copy_(torch.tensor([0.0, 1.0, -2.0]))
    seen_masks, seen_gate = seeing(x)
    assert torch.equal(seen_masks, masks)
    expected = gate + torch.tensor([0.0, 1.0, -2.0]) * masks.amax(dim=(2, 3))
    assert torch.allclose(seen_gate, expected, atol=1e-6)
    assert not torch.allclose(seen_gate, gate)


def test_unknown_encoder_is_named() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'resnet99'"):
        build_resnet("resnet99")


def test_local_rgb_weights_are_folded_into_the_grey_channel(tmp_path: Path) -> None:
    reference = resnet18(weights=None)  # a local file, as a plant would bring one
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    grey = build_resnet("resnet18")
    load_encoder_weights(grey, path)
    folded = reference.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.equal(grey.conv1.weight, folded)
    assert torch.equal(grey.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    detailed = build_resnet("resnet18", in_channels=3)  # grey and its fine detail
    load_encoder_weights(detailed, path)
    assert torch.equal(detailed.conv1.weight[:, :1], folded)
    assert not detailed.conv1.weight[:, 1:].any(), "the detail starts from zero weights"
    with pytest.raises(ValueError, match="not a matching ResNet"):
        load_encoder_weights(build_resnet("resnet34"), path)


@pytest.mark.parametrize(
    ("detail_window", "mask_evidence"), [(0, False), (15, False), (0, True), (15, True)]
)
def test_saved_segmenter_predicts_identically_after_loading(
    tmp_path: Path, detail_window: int, mask_evidence: bool
) -> None:
    segmenter = small_segmenter(detail_window=detail_window, mask_evidence=mask_evidence)
    frames = np.random.default_rng(1).integers(0, 256, (3, 128, 256), dtype=np.uint8)
    before = segmenter.predict(frames)
    loaded = Segmenter.load(segmenter.save(tmp_path / "bundle"))
    after = loaded.predict(frames)
    assert np.array_equal(before.masks, after.masks)
    assert np.array_equal(before.gate, after.gate)
    assert loaded.thresholds == segmenter.thresholds and loaded.classes == segmenter.classes
    assert before.masks.shape == (3, 4, 128, 256)
    assert loaded.preprocess == segmenter.preprocess and loaded.spec == segmenter.spec


@pytest.mark.parametrize("mask_evidence", [False, True])
def test_a_segmenter_with_fine_detail_runs_as_onnx_with_the_same_probabilities(
    tmp_path: Path, mask_evidence: bool
) -> None:
    segmenter = small_segmenter(detail_window=15, mask_evidence=mask_evidence)
    frames = np.random.default_rng(2).integers(0, 256, (3, 128, 256), dtype=np.uint8)
    gate, pixels = segmenter.probabilities(frames)
    segmenter.run_onnx(segmenter.export_onnx(tmp_path / "segmenter.onnx"))
    onnx_gate, onnx_pixels = segmenter.probabilities(frames)
    assert np.abs(onnx_gate - gate).max() < 1e-3
    assert np.abs(onnx_pixels - pixels).max() < 1e-3


def test_a_segmenter_in_bfloat16_on_the_cpu_gives_the_float32_probabilities_closely(
    tmp_path: Path,
) -> None:
    """``cpu_precision=bfloat16``: the network on torch in bfloat16, channels-last, its
    ONNX graph left; probabilities within what bfloat16's 8 bits of mantissa allow, and
    the same frames' masks (emulated where the CPU has no AMX: slower, the same sums)."""
    segmenter = small_segmenter(detail_window=15, mask_evidence=True)  # as the recipes
    frames = np.random.default_rng(2).integers(0, 256, (3, 128, 256), dtype=np.uint8)
    gate, pixels = segmenter.probabilities(frames)
    segmenter.run_onnx(segmenter.export_onnx(tmp_path / "segmenter.onnx"))
    assert segmenter.in_bfloat16() is segmenter and segmenter.engine == "torch-bf16"
    assert segmenter.onnx is None
    assert segmenter.net.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    half_gate, half_pixels = segmenter.probabilities(frames)
    assert 0 < np.abs(half_pixels - pixels).max() < 0.03
    assert np.abs(half_gate - gate).max() < 0.03


def test_a_compiled_segmenter_gives_the_same_masks_for_whole_short_and_long_batches() -> None:
    """``compile_networks``: the network compiled for batches of 4 frames (weights frozen
    in), at once; 4 frames run the compiled graph, 3 are padded to its 4 and give only
    their own outputs, 6 run the network as it was. The same probabilities and masks
    within float32's rounding either way, and the same frames whatever their batch."""
    segmenter = small_segmenter(detail_window=15, mask_evidence=True)  # as the recipes
    frames = np.random.default_rng(2).integers(0, 256, (6, 128, 256), dtype=np.uint8)
    gate, pixels = segmenter.probabilities(frames, batch_size=6)
    masks = segmenter.predict(frames, batch_size=6).masks
    assert segmenter.compiled(4) is segmenter and segmenter.engine == "torch-compiled"
    calls = []
    compiled = segmenter._compiled
    segmenter._compiled = lambda x: calls.append(len(x)) or compiled(x)
    for batch_size in (4, 3, 6):
        compiled_gate, compiled_pixels = segmenter.probabilities(frames, batch_size)
        assert np.abs(compiled_gate - gate).max() < 1e-4, batch_size
        assert np.abs(compiled_pixels - pixels).max() < 1e-4, batch_size
    assert calls == [4, 4, 4, 4]  # 4 + 2 padded to 4; 3 + 3 padded; 6: not compiled
    again = segmenter.predict(frames, batch_size=3).masks
    assert (again == masks).all()
    with pytest.raises(ValueError, match="at least one frame"):
        segmenter.compiled(0)


def test_a_segmenter_that_cannot_be_compiled_runs_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A compile that fails (no C++ compiler on a CPU box, a backend torch lacks) leaves
    the network as it was. A worker with ``compile_networks`` on stops with what to set;
    on the CPU auto does not compile."""
    from tasks.inspection import _compile

    segmenter = small_segmenter()
    frames = np.random.default_rng(2).integers(0, 256, (3, 128, 256), dtype=np.uint8)
    gate, _ = segmenter.probabilities(frames)

    def no_compiler(net, **options):
        def run(x):
            raise OSError("no such compiler: c++")

        return run

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.raises(OSError, match="no such compiler"):
        segmenter.compiled(4)
    assert segmenter.engine == "torch" and segmenter.compiled_batch == 0
    assert (segmenter.probabilities(frames)[0] == gate).all()
    with pytest.raises(RuntimeError, match="STEELSIGHT_COMPILE_NETWORKS=auto or off"):
        _compile(segmenter, "on", 4)
    _compile(segmenter, "auto", 4)  # on the CPU: not compiled, nothing tried
    assert segmenter.engine == "torch"


def test_fine_detail_keeps_a_thin_line_that_a_downscale_averages_away() -> None:
    """A bright line one pixel wide, 40 grey levels over a noisy frame: averaged to a
    quarter scale it stands about 10 levels out, in the fine detail the full 40."""
    rng = np.random.default_rng(0)
    frames = (100 + rng.normal(0, 3, (2, 128, 256))).round().clip(0, 255)
    frames[:, 61, 20:200] += 40  # a line across the frame, on row 61
    frames = frames.astype(np.uint8)
    pre = Preprocess(32, 64, 0.4, 0.1, detail_window=15)
    x = pre(frames)
    assert x.shape == (2, 3, 32, 64)
    grey = (pre.resize(frames).astype(np.float32))[:, 15, 10:45]  # the line's cells
    assert abs(float(grey.mean()) - 110) < 4, "averaged away to a quarter"
    bright = x[:, 1] * 255 * pre.std  # back to grey levels
    assert float(bright[:, 15, 10:45].min()) > 30, "the line keeps its contrast"
    assert float(np.delete(bright, 15, axis=1)[:, :, 10:45].max()) < 15, "noise stays low"
    assert float(x[:, 2, 15, 10:45].max()) * 255 * pre.std < 15, "the line is not dark"
    # cells that do not tile the frame: the most over the cell from each sampled pixel
    odd = Preprocess(30, 60, 0.4, 0.1, detail_window=15)(frames)
    assert odd.shape == (2, 3, 30, 60)
    assert float((odd[:, 1] * 255 * 0.1).max(axis=1)[:, 10:45].min()) > 30


@pytest.mark.parametrize(
    ("frame", "size", "window"),
    [
        ((256, 1600), (64, 400), 0),  # the CPU recipes' quarter scale: a block mean
        ((256, 1600), (64, 400), 15),  # with fine detail
        ((256, 1600), (256, 1600), 15),  # the GPU recipe's full scale
        ((128, 256), (30, 60), 15),  # neither divides: weighted cells, cells past the edge
        ((100, 150), (37, 52), 7),
        ((64, 64), (128, 128), 0),  # an enlargement
    ],
)
def test_preprocessing_on_the_device_equals_opencvs(frame, size, window) -> None:
    """``Preprocess.on_device`` (what a GPU worker runs on frames it holds) gives the
    network the input ``Preprocess`` gives on the host, to the last bit: OpenCV's area
    resize, rounded half to even (averages of 4x4 blocks fall on a half often), its
    reflected blur and the cells' most and least, redone in torch."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, *frame), dtype=np.uint8)
    frames[0] = 100  # a flat frame: no detail at all
    frames[1, 10:12] = 255  # a bright line two rows wide
    pre = Preprocess(*size, 0.4, 0.2, window)
    on_host = pre(frames)
    on_device = pre.on_device(torch.from_numpy(frames))
    assert on_device.dtype == torch.float32 and on_device.shape == on_host.shape
    assert np.array_equal(on_device.numpy(), on_host)


def _strip(n: int, seed: int = 4) -> np.ndarray:
    """``n`` frames of one strip: a bright line crossing every seam between them."""
    strip = np.random.default_rng(seed).integers(60, 120, (n * 128, 256), dtype=np.uint8)
    for row in range(n * 128):
        strip[row, 40 + row // 8 : 43 + row // 8] = 230
    return strip.reshape(n, 128, 256)


def test_frames_that_tile_the_line_are_run_between_their_neighbours() -> None:
    """``context_rows``: a frame whose neighbours above and below are known is run
    between that many rows of each, its masks cut back to its own rows and its gate's
    evidence taken from them; a frame missing either neighbour, or frames given without
    ``follows``, run alone as before. A frame gets the same masks and gate whatever its
    batch, and given alone with its two neighbours."""
    plain = small_segmenter(seed=1, detail_window=15, mask_evidence=True)
    lined = small_segmenter(seed=1, detail_window=15, mask_evidence=True, context_rows=32)
    for s in (plain, lined):
        s.thresholds = Thresholds((0.0,) * 4, (0.5,) * 4, (0,) * 4)
    frames = _strip(5)
    follows = [False, True, True, True, True]
    alone = plain.predict(frames)
    no_follows = lined.predict(frames)
    assert np.array_equal(no_follows.gate, alone.gate)
    assert np.array_equal(no_follows.masks, alone.masks)
    between = lined.predict(frames, follows=follows)
    for edge in (0, 4):  # a neighbour missing: run alone
        assert np.array_equal(between.gate[edge], alone.gate[edge])
        assert np.array_equal(between.masks[edge], alone.masks[edge])
    assert not np.allclose(between.gate[1:4], alone.gate[1:4], atol=1e-4)
    # the same whatever the batch: a frame alone with the frames beside it
    in_twos = lined.predict(frames, batch_size=2, follows=follows)
    one = lined.predict(frames[2:3], follows=[True], before=frames[1], after=frames[3])
    assert np.allclose(in_twos.gate, between.gate, atol=1e-5)
    assert np.allclose(one.gate[0], between.gate[2], atol=1e-5)
    assert np.array_equal(one.masks[0], between.masks[2])
    without_after = lined.predict(frames[2:3], follows=[True], before=frames[1])
    assert np.allclose(without_after.gate, alone.gate[2:3], atol=1e-5), "alone without the after"
    # the masks are the window's own rows: 32 rows of each neighbour, at half scale 16
    window = np.concatenate([frames[1][-32:], frames[2], frames[3][:32]])
    with torch.inference_mode():
        x = torch.from_numpy(lined.window_preprocess(window[None]))
        masks, gate = lined.net(x)
        own = masks[:, :, 16 : 16 + 64]
        evidence = lined.net.evidence * (own.amax(dim=(2, 3)) - masks.amax(dim=(2, 3)))
        logits, gate_logits = lined._logits(frames[2:3], [(frames[1], frames[3])])
    assert torch.allclose(logits, own, atol=1e-5)
    assert torch.allclose(gate_logits, gate + evidence, atol=1e-5)


def test_frames_between_their_neighbours_run_as_onnx_and_are_saved_so(tmp_path: Path) -> None:
    """A segmenter with ``context_rows`` keeps them through saving, and its ONNX graph
    takes frames of either height: the same probabilities as torch's."""
    segmenter = small_segmenter(detail_window=15, mask_evidence=True, context_rows=32)
    segmenter.thresholds = Thresholds((0.0,) * 4, (0.5,) * 4, (0,) * 4)
    loaded = Segmenter.load(segmenter.save(tmp_path / "bundle"))
    assert loaded.context_rows == 32 and loaded.window_preprocess.height == 96
    frames, follows = _strip(4), [False, True, True, True]
    on_torch = segmenter.predict(frames, follows=follows)
    segmenter.run_onnx(segmenter.export_onnx(tmp_path / "segmenter.onnx"))
    on_onnx = segmenter.predict(frames, follows=follows)
    assert np.abs(on_onnx.gate - on_torch.gate).max() < 1e-3
    assert (on_onnx.masks != on_torch.masks).mean() < 1e-3
    with pytest.raises(ValueError, match="context_rows -1"):
        small_segmenter(context_rows=-1)


def test_a_recordings_frames_keep_which_follow_which_when_split_and_joined() -> None:
    frames = np.zeros((6, 8, 8), np.uint8)
    data = SegmentationData(
        "line",
        [f"f{i}" for i in range(6)],
        frames,
        [{}] * 6,
        {1: "a"},
        follows=[False] + [True] * 5,
    )
    assert data.subset([1, 2, 4, 5]).follows == [False, True, False, True]
    assert data.subset([2, 1]).follows == [False, False]
    assert data.subset([0, 1]).joined(data.subset([2, 3])).follows == [False, True, False, True]
    assert SegmentationData("pictures", ["a"], frames[:1], [{}], {1: "a"}).follows == [False]


def lined_frames(segmenter: Segmenter, n: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """``n`` flat frames with a dark and a bright line for a contrast cut to find, and
    per class the pixel threshold a fifth of the segmenter's pixels reach on them."""
    rng = np.random.default_rng(2)
    frames = (100 + rng.normal(0, 3, (n, 128, 256))).astype(np.uint8)
    frames[:, 20:90, 40:43] = 50
    frames[:, 30:100, 150:152] = 160
    with torch.inference_mode():
        logits, _ = segmenter._forward(frames)
    probabilities = torch.sigmoid(logits.float()).transpose(0, 1).flatten(1)
    return frames, tuple(float(v) for v in torch.quantile(probabilities, 0.8, dim=1))


def test_a_segmenter_predicts_the_same_from_frames_held_as_a_tensor() -> None:
    """Frames a worker decoded into a tensor (nvJPEG on a GPU) give the masks, gates,
    scores and regions the same frames give from the host; float frames are refused
    as they are from the host."""
    segmenter = small_segmenter(seed=3, detail_window=15)
    segmenter.thresholds = Thresholds((0.0,) * 4, (0.5,) * 4, (0, 16, 0, 64))
    frames = np.random.default_rng(2).integers(0, 256, (4, 128, 256), dtype=np.uint8)
    from_host = segmenter.predict(frames, batch_size=3, regions=True)
    from_tensor = segmenter.predict(torch.from_numpy(frames), batch_size=3, regions=True)
    assert from_host.defects, "regions were found, so the comparison covers them"
    assert from_tensor.defects == from_host.defects
    for field in ("masks", "gate", "scores"):
        assert np.array_equal(getattr(from_tensor, field), getattr(from_host, field))
    # one frame's masks (the API's overlay) without the whole batch's
    assert all(np.array_equal(from_host.frame_masks(n), from_host.masks[n]) for n in range(4))
    with pytest.raises(ValueError, match="uint8"):
        segmenter.predict(torch.zeros(1, 128, 256))


def test_regions_are_the_masks_components_after_the_minimum_area() -> None:
    """With regions, one labelling serves the minimum area and the regions: the masks
    are those of the plain path, and the regions' RLEs cover exactly them."""
    from core.rle import rle_decode

    segmenter = small_segmenter(seed=3)
    segmenter.thresholds = Thresholds((0.0,) * 4, (0.5,) * 4, (0, 16, 0, 64))
    frames = np.random.default_rng(2).integers(0, 256, (4, 128, 256), dtype=np.uint8)
    plain = segmenter.predict(frames, batch_size=3)
    with_regions = segmenter.predict(frames, batch_size=3, regions=True)
    assert np.array_equal(plain.masks, with_regions.masks)
    assert np.array_equal(plain.scores, with_regions.scores)
    drawn = np.zeros_like(plain.masks)
    for d in with_regions.defects:
        region = rle_decode(d.rle, (128, 256)).astype(bool)
        assert region.sum() == d.area >= segmenter.thresholds.min_area[d.class_index]
        assert not (drawn[d.frame, d.class_index] & region).any()
        drawn[d.frame, d.class_index] |= region
    assert np.array_equal(drawn, plain.masks)
    # the minimum areas removed components here, so the test covers that path
    unfiltered = segmenter.thresholds
    segmenter.thresholds = Thresholds((0.0,) * 4, (0.5,) * 4, (0,) * 4)
    assert segmenter.predict(frames).masks.sum() > plain.masks.sum()
    segmenter.thresholds = unfiltered


def test_regions_labelled_inside_their_box_are_the_whole_frames() -> None:
    """Each mask's components are labelled only inside the box around its pixels: the
    regions (order, RLE, area, box, score) and the kept mask are what labelling the
    whole frame gave, for components at odd rows and columns, touching the frame's
    edges, under the minimum area, and for an empty mask."""
    import cv2

    from core.rle import rle_encode
    from models.segmentation.segmenter import _components, _described, _kept

    def whole_frame(above, min_area, p):  # the labelling as it was, for comparison
        _, labels, stats, _ = cv2.connectedComponentsWithStats(above.view(np.uint8), connectivity=8)
        keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area) + 1
        kept = above & np.isin(labels, keep)
        regions = []
        for k in keep:
            x, y, w, h, area = (int(v) for v in stats[k])
            score = float(p[labels == k].sum(dtype=np.float64) / area)
            regions.append((rle_encode(labels == k), area, (x, y, x + w - 1, y + h - 1), score))
        return kept, regions

    rng = np.random.default_rng(5)
    masks = [np.zeros((64, 96), bool)]
    for _ in range(12):
        mask = np.zeros((64, 96), bool)
        for _ in range(int(rng.integers(1, 6))):
            y, x = rng.integers(0, 64), rng.integers(0, 96)
            mask[y : y + rng.integers(1, 12), x : x + rng.integers(1, 20)] = True
        masks.append(mask)
    masks[1][0, :] = masks[1][:, -1] = True  # on the top and right edges
    for mask in masks:
        p = rng.random(mask.shape)
        kept, regions = whole_frame(mask, 6, p)
        found = _components(mask, 6)
        assert np.array_equal(_kept(mask, found), kept)
        described = _described(0, 1, found, p)
        got = [(d.rle, d.area, d.bbox, d.score) for d in described]
        assert [g[:3] for g in got] == [r[:3] for r in regions]
        assert np.allclose([g[3] for g in got], [r[3] for r in regions], rtol=1e-12)
    assert any(len(_components(m, 6).stats) > 2 for m in masks)  # several regions
    assert any(_kept(m, _components(m, 6)).sum() != m.sum() for m in masks)  # some cut


def test_masks_that_cannot_reach_the_pixel_threshold_are_not_upsampled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gated mask whose largest low-resolution logit stays under its pixel threshold
    is left empty without being brought to full resolution: masks, scores and regions
    are what upsampling every gated mask gave, and some masks were skipped."""
    from models.segmentation import segmenter as module

    segmenter = small_segmenter(seed=3)
    frames = np.random.default_rng(2).integers(0, 256, (4, 128, 256), dtype=np.uint8)
    with torch.inference_mode():
        logits, _ = segmenter._forward(frames)
    largest = torch.sigmoid(logits.flatten(2).amax(dim=2))  # (frame, class)
    # thresholds between the masks' largest probabilities: some masks reach theirs
    pixel = tuple(float(v) for v in largest.median(dim=0).values)
    segmenter.thresholds = Thresholds((0.0,) * 4, pixel, (0, 4, 0, 4))
    asked, shown = [], []

    def counted(kept, mask_logits, thresholds):
        out = skipping(kept, mask_logits, thresholds)
        asked.append(len(kept))
        shown.append(len(out))
        return out

    skipping = module._may_show
    monkeypatch.setattr(module, "_may_show", counted)
    pruned = segmenter.predict(frames, batch_size=3, regions=True)
    monkeypatch.setattr(module, "_may_show", lambda kept, *_: kept)
    every = segmenter.predict(frames, batch_size=3, regions=True)
    assert np.array_equal(pruned.masks, every.masks) and pruned.masks.any()
    assert np.array_equal(pruned.scores, every.scores)
    assert pruned.defects == every.defects
    assert sum(shown) < sum(asked) == 16


def test_masks_are_cut_to_the_frames_contrast_where_the_class_has_one() -> None:
    """A class with a contrast is the mask of the pixel threshold cut by
    ``by_contrast``, then the minimum area; the others are as without it; with regions
    or not."""
    from core.postprocess import by_contrast, remove_small_components

    segmenter = small_segmenter(seed=3)
    frames, pixel = lined_frames(segmenter, 4)
    segmenter.thresholds = Thresholds((0.0,) * 4, pixel, (0,) * 4)
    uncut = segmenter.predict(frames).masks
    contrast, reach, least = (0, 15, 0, 10), (0, 3, 0, 6), (0, 16, 0, 8)
    segmenter.thresholds = Thresholds((0.0,) * 4, pixel, least, contrast, reach)
    cut = segmenter.predict(frames, batch_size=3)
    with_regions = segmenter.predict(frames, batch_size=3, regions=True)
    assert np.array_equal(cut.masks, with_regions.masks)
    for i, frame in enumerate(frames):
        for j in range(4):
            expected = uncut[i, j]
            if contrast[j]:
                expected = by_contrast(frame, expected, contrast[j], reach[j])
            expected = remove_small_components(expected, least[j])
            assert np.array_equal(cut.masks[i, j], expected), (i, j)
    assert cut.masks[:, 1].sum() < uncut[:, 1].sum()  # the cut removed pixels


def test_calibration_cuts_a_class_to_the_frames_contrast_only_where_that_scores() -> None:
    """Calibration chooses a contrast for a class whose truth is the thin line inside
    the model's wider band, and none for one whose truth is the band's whole block."""
    from core.rle import rle_encode
    from models.data import SegmentationData
    from models.segmentation.train import calibrate

    frames = np.full((6, 64, 128), 100, np.uint8)
    frames += np.random.default_rng(0).integers(0, 4, frames.shape, dtype=np.uint8)
    line = np.zeros((64, 128), bool)
    line[:, 41:43] = True  # two pixels wide, inside a band of eight
    block = np.zeros((64, 128), bool)
    block[:, 80:96] = True  # a uniform block, the band's own size
    frames[:3, line] = 50  # three frames show both, three neither
    frames[:3, block] = 60
    rles = [{1: rle_encode(line), 2: rle_encode(block)}] * 3 + [{}] * 3

    class Banded:  # a model that sees both, at a quarter of the frame's scale
        frame_shape = (64, 128)

        def probabilities(self, images, batch_size=16):
            n = len(images)
            gate = np.zeros((n, 2), np.float32)
            gate[:3] = 0.9
            pixels = np.full((n, 2, 16, 32), 0.01, np.float32)
            pixels[:3, 0, :, 9:12] = 0.95  # the line's band: full-resolution 36-48
            pixels[:3, 1, :, 20:24] = 0.95  # the block
            return gate, pixels

    data = SegmentationData("banded", [f"f{i}" for i in range(6)], frames, rles, {1: "a", 2: "b"})
    thresholds, _ = calibrate(Banded(), data)
    assert thresholds.contrast[0] > 0 and thresholds.reach[0] > 0
    assert thresholds.contrast[1] == 0


def test_a_gate_chosen_by_dice_lets_through_frames_whose_masks_are_right() -> None:
    """A gate that ranks a defect's frame under four clean ones: F1 sets its threshold
    above that frame and loses it; chosen by mean Dice over every frame, the threshold
    lets all through, since the masks alone are right on each."""
    from core.rle import rle_encode
    from models.data import SegmentationData
    from models.segmentation.train import calibrate, fit

    frames = np.full((6, 64, 128), 100, np.uint8)
    block = np.zeros((64, 128), bool)
    block[16:48, 40:72] = True
    frames[:2, block] = 60
    rles = [{1: rle_encode(block)}] * 2 + [{}] * 4

    class Sure:
        frame_shape = (64, 128)

        def probabilities(self, images, batch_size=16):
            gate = np.array([[0.9], [0.1], [0.3], [0.4], [0.5], [0.6]], np.float32)
            pixels = np.full((len(images), 1, 16, 32), 0.01, np.float32)
            pixels[:2, 0, 4:12, 10:18] = 0.95  # the block, at a quarter of the scale
            return gate, pixels

    data = SegmentationData("sure", [f"f{i}" for i in range(6)], frames, rles, {1: "a"})
    by_f1, _ = calibrate(Sure(), data)
    by_dice, score = calibrate(Sure(), data, gate_by="dice")
    assert by_f1.gate[0] == pytest.approx(0.9)
    assert by_dice.gate[0] == pytest.approx(0.1)
    assert score > 0.99  # the block's edges, upsampled from a quarter of the scale
    # a false-alarm budget: the clean frames are gated 0.3-0.6, so no gate under 0.597
    floored, _ = calibrate(Sure(), data, gate_by="dice", gate_floor=0.99)
    assert floored.gate[0] == pytest.approx(0.9)
    with pytest.raises(ValueError, match=r"gate_floor 1\.0"):
        recipe_for("tiny", gate_floor=1.0)
    with pytest.raises(ValueError, match="gate_by 'best'"):
        calibrate(Sure(), data, gate_by="best")
    with pytest.raises(ValueError, match="gate_by 'best'"):  # before any training
        fit(None, None, recipe_for("tiny", gate_by="best"))


def test_a_recipe_may_choose_its_thresholds_on_the_training_frames_too() -> None:
    """A class that the validation frames never show is never reported when thresholds
    are chosen on them alone; with ``calibrate_on_training`` (the ``default`` recipe) they
    are chosen on the validation and the training frames together, and it is."""
    from models.segmentation.train import calibrate, fit

    rng = np.random.default_rng(0)
    frames = np.full((12, 64, 128), 100, np.uint8) + rng.integers(0, 4, (12, 64, 128), np.uint8)
    block = np.zeros((64, 128), bool)
    block[16:48, 40:72] = True
    line = np.zeros((64, 128), bool)
    line[8:56, 100:102] = True
    frames[:, block] = 40
    frames[:3, line] = 180  # the second class is on three frames, all of them in training
    rles = [{1: rle_encode(block), 2: rle_encode(line)}] * 3 + [{1: rle_encode(block)}] * 9
    data = SegmentationData("lined", [f"f{i}" for i in range(12)], frames, rles, {1: "a", 2: "b"})
    train, validation = data.subset(range(8)), data.subset(range(8, 12))
    assert validation.joined(train).ids == validation.ids + train.ids
    with pytest.raises(ValueError, match="other classes"):
        validation.joined(SegmentationData("x", ["y"], frames[:1], [{}], {1: "a"}))

    assert recipe_for("default").calibrate_on_training
    recipe = recipe_for("tiny", epochs=2, calibrate_on_training=True)
    segmenter = fit(train, validation, recipe, "cpu").segmenter
    on_both, _ = calibrate(segmenter, validation.joined(train))
    on_validation, _ = calibrate(segmenter, validation)
    assert segmenter.thresholds == on_both != on_validation
    gate, _ = segmenter.probabilities(data.images)
    assert on_validation.gate[1] > gate[8:, 1].max()  # above every frame it was chosen on
    assert on_both.gate[1] <= gate[:3, 1].max()  # lets through a frame that shows it


def test_the_gate_chosen_by_dice_is_the_best_of_every_threshold() -> None:
    """``_gate_by_dice`` against trying each threshold in turn, with tied gates and
    floors."""
    from models.segmentation.train import _gate_by_dice

    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        gate = rng.choice([0.1, 0.2, 0.5, 0.7, 0.9, 1.0], n).astype(np.float32)
        empty = (rng.random(n) < 0.6).astype(float)
        dice = rng.random((2, 3, n))
        floor = float(rng.choice([0.0, 0.5]))
        threshold, means = _gate_by_dice(gate, dice, empty, floor)
        best = max(
            np.where(gate >= t, dice, empty).mean(-1).max()
            for t in [*np.unique(gate[gate >= floor]), np.nextafter(gate.max(), np.inf)]
        )
        assert threshold >= floor
        assert means.max() == pytest.approx(best)
        assert np.allclose(means, np.where(gate >= threshold, dice, empty).mean(-1))


def test_gate_floors_let_through_at_most_their_share_of_clean_frames() -> None:
    from models.segmentation.train import gate_floors

    rng = np.random.default_rng(5)
    gate = rng.random((400, 3)).astype(np.float32)
    presence = rng.random((400, 3)) < 0.3
    presence[:, 2] = True  # no frame without class 3
    floors = gate_floors(gate, presence, 0.99)
    for j in range(2):
        clean = gate[~presence[:, j], j]
        assert (clean > floors[j]).mean() <= 0.01 + 1e-9
        assert (clean >= floors[j]).sum() >= 2
    assert floors[2] == 0.0
    assert gate_floors(gate, presence, 0.0) == [0.0, 0.0, 0.0]


def test_predict_rejects_colour_or_float_frames() -> None:
    with pytest.raises(ValueError, match="grey uint8 frames"):
        small_segmenter().predict(np.zeros((1, 128, 256, 3), np.uint8))


def test_split_is_fixed_and_keeps_groups_together() -> None:
    groups = [f"g{i // 4}" for i in range(400)]
    first, second = split_by_group(groups), split_by_group(list(groups))
    assert all(np.array_equal(first[k], second[k]) for k in first)
    where = {i: name for name, index in first.items() for i in index}
    assert len(where) == 400
    for g in range(100):
        assert len({where[i] for i in range(4 * g, 4 * g + 4)}) == 1
    assert 0.1 < len(first["holdout"]) / 400 < 0.3


def test_loads_the_real_severstal_sample(shared_data: Path) -> None:
    data = load_segmentation(shared_data / "severstal-sample")
    assert data.images.shape == (20, 256, 1600)
    assert data.presence().sum(axis=0).tolist() == [5, 3, 9, 2]
    assert not any(data.follows)  # single pictures: none beside another on a line
    # masks decode to the labelled area: the sum over classes equals the RLE run lengths
    runs = sum(sum(map(int, rle.split()[1::2])) for r in data.rles for rle in r.values())
    assert int(data.masks(range(20)).sum()) == runs


def test_a_folder_of_nothing_known_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a dataset steelsight knows"):
        load_segmentation(tmp_path)


def test_crops_show_a_rare_class_as_often_as_a_common_one() -> None:
    """Half the crops are centred on a defect of a class drawn evenly: a class on 2 of
    100 frames is in about half of those crops, not in 2 %; and a crop that holds a
    quarter of one input pixel of it (a fine scratch at quarter scale) is labelled as
    showing it."""
    n, width = 100, 256
    x = torch.zeros(n, 1, 16, width)
    y = torch.zeros(n, 2, 16, width, dtype=torch.float16)
    y[:90, 0, 4:8, 10:200] = 1.0  # common: 90 frames
    y[[13, 77], 1, 6, 230] = 0.25  # rare: 2 frames, a quarter of one pixel
    recipe = recipe_for("tiny", crop_width=32, batch_size=10, positive_share=0.5)
    sampler = CropSampler(x, y, recipe, torch.Generator().manual_seed(0))
    shown = torch.cat([p for _ in range(20) for _, _, p in sampler.batches()])
    assert shown.shape == (20 * n, 2)
    rare = float(shown[:, 1].mean())
    assert 0.15 <= rare <= 0.35, rare  # a quarter of the crops: half of the centred ones


def test_a_pasted_defect_is_shown_on_other_frames_with_its_label() -> None:
    """With every crop centred on a defect and pasted, the one frame's defect is seen
    on the backgrounds of many other frames, its label with it, and the rest of each
    crop is the other frame's, label included."""
    n, width = 40, 128
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 16, width).clone()
    y = torch.zeros(n, 2, 16, width, dtype=torch.float16)
    x[3, 0, 6:9, 60:64] = -7.0  # the only defect of class 1
    y[3, 0, 6:9, 60:64] = 1.0
    y[:, 1, 0, :] = 1.0  # every frame shows class 2 along its top row
    recipe = recipe_for("tiny", crop_width=32, batch_size=8, positive_share=1.0, paste_share=1.0)
    sampler = CropSampler(x, y, recipe, torch.Generator().manual_seed(0))
    xb, yb, shown = (torch.cat(parts) for parts in zip(*sampler.batches(), strict=True))
    assert 0.3 <= float(shown[:, 0].mean()) <= 0.7  # centred on one of the two classes
    with_defect = shown[:, 0] == 1
    backgrounds = xb[with_defect, 0, 12, :].mode(dim=1).values  # a row far from the defect
    assert len(set(backgrounds.tolist())) > 5, "pasted onto many frames"
    assert bool((xb[with_defect].amin(dim=(1, 2, 3)) == -7.0).all()), "the defect's pixels"
    inside = yb[:, 0] == 1
    assert bool((xb[:, 0][inside] == -7.0).all()), "the label sits on the pasted pixels"
    assert bool((yb[:, 1, 0] == 1).all()), "the background's own label stays"


def test_randomised_light_keeps_the_frames_range_and_changes_only_with_its_chance() -> None:
    pre = Preprocess(16, 32, 0.4, 0.2)
    x = torch.from_numpy(pre(np.random.default_rng(0).integers(0, 256, (64, 16, 32), np.uint8)))
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(_randomised(x, pre, 0.0, g), x, atol=1e-3)
    changed = _randomised(x, pre, 1.0, g)
    raw = changed * pre.std + pre.mean
    assert float(raw.min()) >= -1e-6 and float(raw.max()) <= 1 + 1e-6
    assert bool(((changed - x).abs().amax(dim=(1, 2, 3)) > 0.05).all())


def test_distracted_crops_lose_their_labels_only_off_the_strip() -> None:
    """Stains, splashes and light change a crop and keep its labels; past the strip's
    edge the crop is dark and holds no defect."""
    pre = Preprocess(16, 32, 0.4, 0.2)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(pre(rng.integers(80, 160, (64, 16, 32), np.uint8)))
    y = torch.zeros(64, 2, 16, 32)
    y[:, 0, 4:12, 8:24] = 1.0
    xd, yd = _distracted(x, y, pre, 1.0, 0.25, np.random.default_rng(1))
    raw = xd[:, 0] * pre.std + pre.mean
    dark = raw < 12 / 255  # only past the edge: a stain darkens by 55 % at most
    assert bool(dark.any()) and bool((yd[:, 0][dark] == 0).all())
    kept = yd[:, 0].sum(dim=(1, 2))
    assert bool((kept <= 128).all()) and bool((kept == 128).any())
    assert bool((kept < 128).any()), "some crop's edge fell over its defect"
    assert bool(((xd - x).abs().amax(dim=(1, 2, 3)) > 0.05).all())
    assert torch.equal(_distracted(x, y, pre, 0.0, 0.25, np.random.default_rng(1))[1], y)


def test_cell_targets_fill_every_cell_a_thin_line_touches() -> None:
    """Averaged, a line one pixel wide is a quarter of each cell it crosses: the
    network learns to answer a quarter there, under any pixel threshold. As cells, it
    fills them."""
    mask = np.zeros((64, 128), bool)
    mask[21, 8:100] = True
    data = SegmentationData(
        "line", ["a"], np.zeros((1, 64, 128), np.uint8), [{1: rle_encode(mask)}], {1: "x"}
    )
    pre = Preprocess(16, 32, 0.4, 0.2, 15)
    share, cells = _targets(data, pre), _targets(data, pre, cells=True)
    assert float(share.max()) == 0.25
    assert set(np.unique(cells).tolist()) == {0.0, 1.0}
    assert np.array_equal(cells[0, 0] > 0, share[0, 0] > 0)
    assert int(cells.sum()) == 23  # columns 8-99: cells 2-24, on row 5


def test_specks_need_fine_detail_to_be_drawn_in() -> None:
    from models.segmentation.train import fit

    with pytest.raises(ValueError, match="set detail_window"):
        fit(None, None, recipe_for("tiny", speckle=0.5))


def test_specks_are_isolated_unlabelled_cells_of_the_fine_detail() -> None:
    pre = Preprocess(64, 128, 0.4, 0.2, 15)
    x = torch.zeros(64, 3, 64, 128)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(_speckled(x, pre, 0.0, g), x)
    specked = _speckled(x, pre, 1.0, g)
    levels = specked[:, 1:] * 255 * pre.std
    raised = levels > 0
    assert 0 < float(raised.float().mean()) < 0.03
    assert float(levels[raised].min()) >= 15 - 1e-3 and float(levels.max()) <= 80 + 1e-3
    assert not bool((raised[:, 0] & raised[:, 1]).any()), "bright or dark, not both"
    grey = specked[:, 0].abs() * 255 * pre.std
    assert float(grey.max()) <= 0.25 * 80 + 1e-3


def test_shifted_crops_lose_rows_past_their_edge_with_their_labels() -> None:
    """Rows numbered 0-15: a crop moved up starts at a later row and ends in its own
    last rows mirrored; its labels move with it, so a defect on the rows that left is
    gone from both."""
    x = torch.arange(16.0).view(1, 1, 16, 1).repeat(64, 3, 1, 4)
    y = (x[:, :2] < 3).float()  # a defect on the first three rows
    g = torch.Generator().manual_seed(0)
    assert torch.equal(_shifted(x, y, 0.0, g)[0], x)
    xs, ys = _shifted(x, y, 1.0, g)
    assert torch.equal(ys, (xs[:, :2] < 3).float()), "labels move with their rows"
    assert bool((xs != x).flatten(1).any(dim=1).all()), "every crop moved"
    first = xs[:, 0, 0, 0]
    assert float(first.max()) <= 8 and bool((first >= 3).any()), "the defect left some"
    rows = xs[:, 0, :, 0]
    steps = (rows[:, 1:] - rows[:, :-1]).abs()
    assert bool((steps <= 1).all()), "mirrored at the edge, no seam"


def test_a_recipe_with_shifted_crops_trains() -> None:
    """The `default` recipe moves half its crops; one that moves every crop, a
    defect near the top among them, trains through `fit`."""
    from models.segmentation.train import fit

    assert recipe_for("default").shift == 0.5
    block = np.zeros((64, 128), bool)
    block[2:10, 20:60] = True  # near the top: a move up takes it out of the crop
    frames = np.random.default_rng(0).integers(90, 110, (6, 64, 128), np.uint8)
    frames[:, block] = 200
    data = SegmentationData(
        "top", [f"f{i}" for i in range(6)], frames, [{1: rle_encode(block)}] * 6, {1: "a"}
    )
    result = fit(
        data.subset(range(4)),
        data.subset(range(4, 6)),
        recipe_for("tiny", epochs=2, shift=1.0),
        "cpu",
    )
    assert len(result.history) == 2
    assert all(np.isfinite(row["loss"]) for row in result.history)


def test_a_longer_recording_trains_fewer_epochs_within_the_recipes_budget() -> None:
    """The `default` recipe is sized on a 100-sheet recording (745 training frames, 72
    epochs): a 300-sheet one (2,336) trains 23, and `demo` has no budget."""
    assert within_budget(recipe_for("default"), 745).epochs == 72
    assert within_budget(recipe_for("default"), 2336).epochs == 23
    assert within_budget(recipe_for("demo"), 10**5).epochs == 36


def _strip_with_a_gap(n: int, shape: tuple[int, int], gap: int) -> np.ndarray:
    """Frames of steel (95-104 grey levels) with the dark gap beside the strip on their
    first ``gap`` columns."""
    frames = np.random.default_rng(0).integers(95, 105, (n, *shape), np.uint8)
    frames[:, :, :gap] = 20
    return frames


def test_drawn_lines_are_fine_scratches_labelled_where_the_steel_changed() -> None:
    """``drawn_lines`` adds copies of training frames with the twin's fine scratches drawn
    in: labelled as class 2 exactly where the picture brightened (a blur's pixel or two
    beside), never on the gap beside the strip, some running past the frame's edge;
    the frames and labels they were copied from are kept as they were."""
    from models.segmentation.train import _with_drawn_lines

    frames = _strip_with_a_gap(4, (256, 800), 200)
    before = frames.copy()
    block = np.zeros((256, 800), bool)
    block[100:140, 400:460] = True
    data = SegmentationData(
        "strip",
        [f"f{i}" for i in range(4)],
        frames,
        [{1: rle_encode(block)}] * 4,
        {1: "pits", 2: "fine_scratches"},
    )
    out = _with_drawn_lines(data, 30, np.random.default_rng(1))
    assert len(out) == 34 and out.ids[:4] == data.ids
    assert np.array_equal(out.images[:4], before) and np.array_equal(data.images, before)
    masks = out.masks(range(4, 34)).astype(bool)
    lines = masks[:, 1]
    assert int(lines.any(axis=(1, 2)).sum()) == 30
    assert not lines[:, :, :200].any(), "drawn on the gap"
    assert (masks[:, 0] == block).all(), "the frame's other labels kept"
    assert any(lines[k, 0].any() or lines[k, -1].any() for k in range(30)), "none at an edge"
    for k in range(30):
        source = before[data.ids.index(out.ids[4 + k].split("+")[0])]
        change = out.images[4 + k].astype(int) - source
        beside = cv2.dilate(lines[k].astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        assert not change[~beside].any(), f"frame {k} changed away from its label"
        assert np.median(change[lines[k]]) >= 10, f"frame {k}: its label is not brighter"


def test_drawn_lines_train_through_fit_and_skip_data_without_fine_scratches(caplog) -> None:
    """A recipe with ``drawn_lines`` trains through ``fit`` on frames smaller than the
    twin's shapes; data whose classes have no fine scratches (a plant's own) is trained
    on as it is, and the log says why."""
    from models.segmentation.train import _with_drawn_lines, fit

    with pytest.raises(ValueError, match="drawn_lines"):
        recipe_for("tiny", drawn_lines=-1)
    assert recipe_for("default").drawn_lines == 200 and not recipe_for("demo").drawn_lines
    frames = _strip_with_a_gap(6, (64, 128), 16)
    ids = [f"f{i}" for i in range(6)]
    own = SegmentationData("plant classes", ids, frames, [{}] * 6, {1: "rust", 2: "dent"})
    with caplog.at_level("WARNING"):
        assert _with_drawn_lines(own, 3, np.random.default_rng(0)) is own
    assert "plant classes has no class named fine_scratches" in caplog.text
    data = SegmentationData("small", ids, frames, [{}] * 6, {1: "pits", 2: "fine_scratches"})
    assert len(_with_drawn_lines(data, 8, np.random.default_rng(0))) == 14
    result = fit(
        data.subset(range(4)), data.subset(range(4, 6)), recipe_for("tiny", epochs=1, drawn_lines=8)
    )
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
