"""Labelled datasets held in memory, and their fixed train/validation/holdout split.

The containers are plain arrays; reading them from disk is ``tasks.datasets``' job.
Splits are derived from a stable hash of each item's group key, never from a random
generator, so the holdout of a dataset is the same in every run and on every machine:
the champion and a challenger are always scored on the same images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.rle import rle_decode

SPLITS = ("train", "validation", "holdout")


def unit_hash(key: str) -> float:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_group(
    groups: Sequence[str], holdout: float = 0.2, validation: float = 0.15
) -> dict[str, np.ndarray]:
    """Indices per split; all items of a group land in the same split."""
    u = np.array([unit_hash(g) for g in groups])
    return {
        "holdout": np.flatnonzero(u < holdout),
        "validation": np.flatnonzero((u >= holdout) & (u < holdout + validation)),
        "train": np.flatnonzero(u >= holdout + validation),
    }


def split_stratified(
    labels: np.ndarray, keys: Sequence[str], holdout: float = 0.2, validation: float = 0.15
) -> dict[str, np.ndarray]:
    """Indices per split with each class's share kept: per class, items ordered by the
    hash of their key, the first ``holdout`` share held out, the next ``validation``."""
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort([unit_hash(keys[i]) for i in members], kind="stable")]
        n_hold = round(len(members) * holdout)
        n_val = round(len(members) * validation)
        out["holdout"] += members[:n_hold].tolist()
        out["validation"] += members[n_hold : n_hold + n_val].tolist()
        out["train"] += members[n_hold + n_val :].tolist()
    return {s: np.array(sorted(v), dtype=np.int64) for s, v in out.items()}


def digest_ids(ids: Sequence[str]) -> str:
    """A short fingerprint of a set of item ids: which images a score was measured on."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


@dataclass
class SegmentationData:
    """Grey images (N, H, W) uint8 with RLE masks per class, each image's split group,
    and, where they are frames that tile a line, per image whether it directly follows
    the image before it (a recording's frames in order; all False for single images)."""

    source: str
    ids: list[str]
    images: np.ndarray
    rles: list[dict[int, str]]
    classes: Mapping[int, str]
    groups: list[str] = field(default_factory=list)
    follows: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.groups:
            self.groups = list(self.ids)
        if not self.follows:
            self.follows = [False] * len(self.ids)
        n = len(self.ids)
        if not n == len(self.images) == len(self.rles) == len(self.groups) == len(self.follows):
            raise ValueError("ids, images, rles, groups and follows need one entry per image")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def class_ids(self) -> list[int]:
        return list(self.classes)

    def masks(self, index: Sequence[int] | np.ndarray) -> np.ndarray:
        """Full-resolution masks (len(index), C, H, W) uint8."""
        h, w = self.images.shape[1:]
        out = np.zeros((len(index), len(self.classes), h, w), dtype=np.uint8)
        for k, i in enumerate(index):
            for j, class_id in enumerate(self.classes):
                rle = self.rles[i].get(class_id)
                if rle:
                    out[k, j] = rle_decode(rle, (h, w))
        return out

    def presence(self) -> np.ndarray:
        """(N, C) bool: which classes each image shows."""
        return np.array(
            [[bool(r.get(c)) for c in self.classes] for r in self.rles], dtype=bool
        ).reshape(len(self), len(self.classes))

    def subset(self, index: Sequence[int] | np.ndarray) -> SegmentationData:
        """The images at ``index``, in that order: an image still follows the one before
        it where both were next to each other here."""
        index = list(map(int, index))
        return SegmentationData(
            self.source,
            [self.ids[i] for i in index],
            self.images[index],
            [self.rles[i] for i in index],
            self.classes,
            [self.groups[i] for i in index],
            [k > 0 and i == index[k - 1] + 1 and self.follows[i] for k, i in enumerate(index)],
        )

    def joined(self, other: SegmentationData) -> SegmentationData:
        """This data's images, then ``other``'s (the same classes and frame size)."""
        if dict(other.classes) != dict(self.classes):
            raise ValueError(f"{other.source} has other classes than {self.source}")
        return SegmentationData(
            self.source,
            self.ids + other.ids,
            np.concatenate([self.images, other.images]),
            self.rles + other.rles,
            self.classes,
            self.groups + other.groups,
            self.follows + [k > 0 and f for k, f in enumerate(other.follows)],
        )

    def splits(self) -> dict[str, np.ndarray]:
        return split_by_group(self.groups)


@dataclass
class ClassificationData:
    """Images (N, H, W) grey or (N, H, W, 3) RGB, uint8, one class index each into
    ``class_names``."""

    source: str
    ids: list[str]
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> ClassificationData:
        index = np.asarray(index, dtype=np.int64)
        return ClassificationData(
            self.source,
            [self.ids[i] for i in index],
            self.images[index],
            self.labels[index],
            self.class_names,
        )

    def splits(self) -> dict[str, np.ndarray]:
        return split_stratified(self.labels, self.ids)
