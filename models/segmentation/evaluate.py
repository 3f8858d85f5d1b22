"""Scoring a segmenter on labelled frames, in batches, with the field's metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.metrics import PairCounts, segmentation_report
from models.data import SegmentationData
from models.segmentation.segmenter import Segmenter


@dataclass
class SegmentationEvaluation:
    report: dict  # mean_dice, empty_score, per_class ...
    gate: np.ndarray  # (N, C) gate probabilities, for PR curves
    presence: np.ndarray  # (N, C) truth: class present
    predicted: np.ndarray  # (N, C) a defect of the class found on the frame


def evaluate_segmenter(
    segmenter: Segmenter, data: SegmentationData, batch_size: int = 16
) -> SegmentationEvaluation:
    if list(data.classes) != list(segmenter.classes):
        raise ValueError(
            f"the model's classes {segmenter.classes} differ from the data's {dict(data.classes)}"
        )
    if data.images.shape[1:] != segmenter.frame_shape:
        raise ValueError(
            f"frames are {data.images.shape[1:]}, the model was trained on {segmenter.frame_shape}"
        )
    counts, gates, found = [], [], []
    for start in range(0, len(data), batch_size):
        end = min(start + batch_size, len(data))
        index = np.arange(start, end)
        # frames that tile the line, each with the frames beside it (``context_rows``)
        prediction = segmenter.predict(
            data.images[index],
            batch_size,
            follows=data.follows[start:end],
            before=data.images[start - 1] if start else None,
            after=data.images[end] if end < len(data) and data.follows[end] else None,
        )
        counts.append(PairCounts.of(prediction.masks, data.masks(index)))
        gates.append(prediction.gate)
        found.append(prediction.masks.any(axis=(2, 3)))
    report = segmentation_report(PairCounts.concat(counts), data.classes)
    return SegmentationEvaluation(
        report, np.concatenate(gates), data.presence(), np.concatenate(found)
    )
