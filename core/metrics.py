"""Metrics as the field reports them (pure: arrays in, numbers out).

Segmentation follows the Severstal competition: Dice per (image, class) pair, where an
empty prediction on an empty truth scores 1, averaged over all pairs. Statistics are
accumulated as per-pair counts so that a holdout of any size is scored in one pass
without keeping its masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairCounts:
    """Per (image, class) pixel counts: intersection, predicted and true pixels; (N, C)."""

    intersection: np.ndarray
    predicted: np.ndarray
    truth: np.ndarray

    @staticmethod
    def of(predicted: np.ndarray, truth: np.ndarray) -> PairCounts:
        """Counts of boolean masks shaped (N, C, H, W)."""
        if predicted.shape != truth.shape:
            raise ValueError(f"prediction shape {predicted.shape} != truth shape {truth.shape}")
        p = predicted.astype(bool, copy=False)
        t = truth.astype(bool, copy=False)
        return PairCounts(
            intersection=np.logical_and(p, t).sum(axis=(2, 3), dtype=np.int64),
            predicted=p.sum(axis=(2, 3), dtype=np.int64),
            truth=t.sum(axis=(2, 3), dtype=np.int64),
        )

    @staticmethod
    def concat(parts: Sequence[PairCounts]) -> PairCounts:
        return PairCounts(
            *(
                np.concatenate([getattr(p, f) for p in parts])
                for f in ("intersection", "predicted", "truth")
            )
        )


def pair_dice(c: PairCounts) -> np.ndarray:
    """Dice per pair, (N, C); 1 where both prediction and truth are empty."""
    total = c.predicted + c.truth
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total == 0, 1.0, 2.0 * c.intersection / total)
    return dice


def pair_iou(c: PairCounts) -> np.ndarray:
    """IoU per pair, (N, C); 1 where both are empty."""
    union = c.predicted + c.truth - c.intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union == 0, 1.0, c.intersection / union)


def kaggle_mean_dice(c: PairCounts) -> float:
    """The competition's score: mean Dice over all (image, class) pairs."""
    return float(pair_dice(c).mean()) if c.truth.size else float("nan")


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def segmentation_report(c: PairCounts, classes: Mapping[int, str]) -> dict:
    """mean_dice, empty_score, and per class: Dice, IoU, Dice on defective images, and
    image-level precision/recall/F1 (a class 'found' in an image = a non-empty mask)."""
    dice, iou = pair_dice(c), pair_iou(c)
    per_class = {}
    for j, (class_id, name) in enumerate(classes.items()):
        has_truth, has_pred = c.truth[:, j] > 0, c.predicted[:, j] > 0
        tp = int((has_truth & has_pred).sum())
        fp = int((~has_truth & has_pred).sum())
        fn = int((has_truth & ~has_pred).sum())
        precision, recall, f1 = precision_recall_f1(tp, fp, fn)
        per_class[name] = {
            "class_id": class_id,
            "dice": float(dice[:, j].mean()),
            "iou": float(iou[:, j].mean()),
            "dice_defective": float(dice[has_truth, j].mean()) if has_truth.any() else None,
            "images_with_class": int(has_truth.sum()),
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
    return {
        "mean_dice": kaggle_mean_dice(c),
        "empty_score": float((c.truth == 0).mean()) if c.truth.size else float("nan"),
        "images": int(c.truth.shape[0]),
        "per_class": per_class,
    }


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class index, columns = predicted class index."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(truth), np.asarray(predicted)), 1)
    return m


def classification_report(truth: np.ndarray, predicted: np.ndarray, names: Sequence[str]) -> dict:
    """accuracy, macro F1, per-class precision/recall/F1 and the confusion matrix."""
    m = confusion_matrix(truth, predicted, len(names))
    per_class = {}
    for k, name in enumerate(names):
        tp = int(m[k, k])
        precision, recall, f1 = precision_recall_f1(
            tp, int(m[:, k].sum()) - tp, int(m[k].sum()) - tp
        )
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(m[k].sum()),
        }
    return {
        "accuracy": float(np.trace(m) / m.sum()) if m.sum() else float("nan"),
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])),
        "images": int(m.sum()),
        "per_class": per_class,
        "confusion": {"labels": list(names), "matrix": m.tolist()},
    }


def pr_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold at each distinct score (highest first)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order].astype(bool)
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], dtype=int)
    n_pos = max(int(y.sum()), 1)
    return tp[last] / (tp[last] + fp[last]), tp[last] / n_pos, s[last]


def best_f1_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The score threshold (inclusive) with the highest F1, and that F1. With no positive
    example the threshold is set above every score, so the class is never reported."""
    if not positive.any():
        return float(np.nextafter(np.float32(scores.max(initial=0.0)), np.float32(2.0))), 0.0
    precision, recall, thresholds = pr_curve(scores, positive)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def _box_overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels every box of a (n, 4) shares with every box of b (m, 4), (n, m); the areas
    of a (n,); of b (m,)); boxes are inclusive pixel corners."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0 + 1, 0, None) * np.clip(y1 - y0 + 1, 0, None)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter, area_a, area_b


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (n, 4) with every box in b (m, 4); boxes are inclusive pixel
    corners (x_min, y_min, x_max, y_max)."""
    inter, area_a, area_b = _box_overlaps(a, b)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def box_cover(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What every box in a (n, 4) shares with every box in b (m, 4), as a share of the
    smaller of the two: 1 when one lies inside the other (inclusive pixel corners)."""
    inter, area_a, area_b = _box_overlaps(a, b)
    return inter / np.maximum(np.minimum(area_a[:, None], area_b[None, :]), 1.0)


def match_detections(
    predicted: np.ndarray, truth: np.ndarray, iou: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching, highest score first: per prediction the truth index it hits (-1
    for a false detection), and per truth whether it was found."""
    predicted = np.asarray(predicted, np.float64).reshape(-1, 5)
    truth = np.asarray(truth, np.float64).reshape(-1, 4)
    hit = np.full(len(predicted), -1, dtype=np.int64)
    found = np.zeros(len(truth), dtype=bool)
    if not len(predicted) or not len(truth):
        return hit, found
    overlaps = box_iou(predicted[:, :4], truth)
    for i in np.argsort(-predicted[:, 4], kind="stable"):
        candidates = np.where(~found & (overlaps[i] >= iou), overlaps[i], -1.0)
        j = int(candidates.argmax())
        if candidates[j] >= iou:
            hit[i], found[j] = j, True
    return hit, found


def detection_report(
    predicted: Sequence[np.ndarray],
    truth: Sequence[np.ndarray],
    iou: float = 0.5,
    ignore: Sequence[np.ndarray] | None = None,
) -> dict:
    """Single-class detection figures over a set of pictures: AP at the IoU (area under
    the all-point interpolated precision-recall curve, as VOC 2010+ and COCO's AP50),
    and precision/recall of the detections as given. ``ignore``: per picture, boxes
    neither to be found nor held against a detection (COCO's ignore regions): a
    detection that matches no truth but one of them is left out, and counted apart."""
    scores, correct = [], []
    n_truth = ignored = 0
    for k, (p, t) in enumerate(zip(predicted, truth, strict=True)):
        p = np.asarray(p, np.float64).reshape(-1, 5)
        hit, _ = match_detections(p, t, iou)
        if ignore is not None and len(p) and len(ignore[k]):
            spared = (hit < 0) & (box_iou(p[:, :4], np.reshape(ignore[k], (-1, 4))) >= iou).any(1)
            p, hit, ignored = p[~spared], hit[~spared], ignored + int(spared.sum())
        scores.append(p[:, 4])
        correct.append(hit >= 0)
        n_truth += len(np.asarray(t).reshape(-1, 4))
    s = np.concatenate(scores) if scores else np.zeros(0)
    c = np.concatenate(correct) if correct else np.zeros(0, bool)
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(c[order])
    fp = np.cumsum(~c[order])
    recall = tp / max(n_truth, 1)
    precision = tp / np.maximum(tp + fp, 1)
    # all-point interpolation: precision made monotone, integrated over recall steps
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1])
    ap = float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1])) if n_truth else float("nan")
    n_tp = int(c.sum())
    return {
        "map50" if iou == 0.5 else f"ap{int(iou * 100)}": ap,
        "pictures": len(truth),
        "markings": n_truth,
        "detections": len(s),
        "precision": n_tp / len(s) if len(s) else float("nan"),
        "recall": n_tp / n_truth if n_truth else float("nan"),
        **({"ignored": ignored} if ignore is not None else {}),
    }
