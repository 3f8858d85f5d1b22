"""PNG plots logged with each training run: confusion matrix, PR curves, sample overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from core.metrics import pr_curve

CLASS_COLOURS = (
    (230, 60, 60),
    (250, 210, 40),
    (40, 120, 250),
    (60, 200, 90),
    (200, 80, 220),
    (0, 200, 200),
)


def confusion_png(matrix: np.ndarray, names: Sequence[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.0 * len(names) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            color="white" if v > matrix.max() / 2 else "black",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pr_curves_png(
    scores: np.ndarray, positive: np.ndarray, names: Sequence[str], path: Path
) -> Path:
    """One precision-recall curve per class (scores and truth (N, K))."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, name in enumerate(names):
        if positive[:, k].any():
            precision, recall, _ = pr_curve(scores[:, k], positive[:, k])
            ax.plot(recall, precision, label=f"{name} ({int(positive[:, k].sum())})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def overlays_png(
    images: np.ndarray, truth: np.ndarray, predicted: np.ndarray, titles: Sequence[str], path: Path
) -> Path:
    """Frames with true masks filled faintly and predicted masks outlined, class-coloured."""
    import cv2

    rows = []
    for image, t, p in zip(images, truth, predicted, strict=True):
        rgb = np.repeat(image[:, :, None], 3, axis=2).astype(np.float32)
        for j in range(t.shape[0]):
            colour = np.array(CLASS_COLOURS[j % len(CLASS_COLOURS)], np.float32)
            rgb[t[j] > 0] = 0.6 * rgb[t[j] > 0] + 0.4 * colour
        rgb = rgb.astype(np.uint8)
        for j in range(p.shape[0]):
            contours, _ = cv2.findContours(
                p[j].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            cv2.drawContours(rgb, contours, -1, CLASS_COLOURS[j % len(CLASS_COLOURS)], 2)
        rows.append(rgb)
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.9 * len(rows)), squeeze=False)
    for ax, rgb, title in zip(axes[:, 0], rows, titles, strict=True):
        ax.imshow(rgb)
        ax.set_title(title, fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
