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
        index = np.arange(start, min(start + batch_size, len(data)))
        prediction = segmenter.predict(data.images[index], batch_size)
        counts.append(PairCounts.of(prediction.masks, data.masks(index)))
        gates.append(prediction.gate)
        found.append(prediction.masks.any(axis=(2, 3)))
    report = segmentation_report(PairCounts.concat(counts), data.classes)
    return SegmentationEvaluation(
        report, np.concatenate(gates), data.presence(), np.concatenate(found)
    )
