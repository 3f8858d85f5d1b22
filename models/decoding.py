"""Decoding frames where the models use them: a batch of JPEG frames decoded on the
device its network runs on."""

from __future__ import annotations

import torch

from core.images import ImageError


def decode_jpegs(jpegs: list[bytes], device) -> torch.Tensor:
    """JPEG frames of one size as grey (N, H, W) uint8 on ``device``, decoded together
    where they are to be used: on a GPU by nvJPEG (torchvision), which decodes 15-25 times
    faster than a CPU core (docs/benchmarks.md, "The GPU check on one H200"), so the
    frames reach the network without crossing to the device as pixels; elsewhere by
    torchvision's libjpeg. ImageError when any of them does not decode or the sizes
    differ: the batch does not say which frame, so callers decode such a batch one
    frame at a time (OpenCV) to name it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    try:
        decoded = decode_jpeg(data, mode=ImageReadMode.GRAY, device=device)
        return torch.stack([image[0] for image in decoded])
    except RuntimeError as error:
        raise ImageError(f"{len(jpegs)} JPEG frames did not decode together: {error}") from error
