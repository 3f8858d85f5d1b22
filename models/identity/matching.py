"""Open-set matching of imprint embeddings against the registered sheets.

Embeddings are L2-normalised, so cosine similarity is a dot product and a search over
the whole registry is one matrix product (float32, chunked so that memory stays
bounded): about 50 MB and a few milliseconds per batch of queries at 100,000 sheets.

The answer is the nearest registered sheet when its similarity reaches the threshold,
``unknown`` otherwise. The threshold is chosen for a target false-accept rate at the
registry's size: each query is compared with every registered sheet, so the chance of
some wrong sheet passing grows with their number (see ``choose_threshold``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

UNKNOWN = "unknown"


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Matches:
    """Per query: the answer (a sheet ID or ``unknown``), the nearest sheet and the
    similarity to it."""

    sheet_ids: list[str]
    nearest: list[str]
    similarity: np.ndarray  # float32 (N,)


class ReferenceIndex:
    """The registered sheets' embeddings, searchable by nearest neighbour."""

    def __init__(self, sheet_ids: list[str], embeddings: np.ndarray) -> None:
        if len(sheet_ids) != len(embeddings):
            raise ValueError(f"{len(sheet_ids)} sheet ids for {len(embeddings)} embeddings")
        self.sheet_ids = list(sheet_ids)
        self.embeddings = np.ascontiguousarray(normalise(embeddings))

    def __len__(self) -> int:
        return len(self.sheet_ids)

    def search(self, queries: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(index of the nearest reference, its similarity) per query; -1 when empty."""
        queries = normalise(np.atleast_2d(queries))
        best = np.full(len(queries), -1, dtype=np.int64)
        score = np.full(len(queries), -np.inf, dtype=np.float32)
        if not len(self):
            return best, score
        for start in range(0, len(queries), chunk):
            sims = queries[start : start + chunk] @ self.embeddings.T
            best[start : start + chunk] = sims.argmax(axis=1)
            score[start : start + chunk] = sims[np.arange(len(sims)), best[start : start + chunk]]
        return best, score

    def match(self, queries: np.ndarray, threshold: float) -> Matches:
        best, score = self.search(queries)
        nearest = [self.sheet_ids[i] if i >= 0 else UNKNOWN for i in best]
        answers = [
            s if sim >= threshold else UNKNOWN for s, sim in zip(nearest, score, strict=True)
        ]
        return Matches(answers, nearest, score)


def pair_scores(
    queries: np.ndarray, query_ids: list[str], refs: np.ndarray, ref_ids: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of every (query, reference) pair: (genuine, impostor)."""
    sims = normalise(queries) @ normalise(refs).T
    same = np.asarray(query_ids)[:, None] == np.asarray(ref_ids)[None, :]
    return sims[same], sims[~same]


def choose_threshold(
    genuine: np.ndarray, impostor: np.ndarray, target_far: float, registered: int
) -> dict:
    """The similarity threshold that keeps wrong confident IDs at ``target_far`` per query
    when ``registered`` sheets are in the registry.

    A query of an unregistered sheet is falsely accepted when any of the ``registered``
    impostors reaches the threshold, so each single pair may pass with probability at
    most p = 1 - (1 - target_far) ** (1 / registered). Validation has too few impostor
    pairs to see events that rare, so the tail beyond the impostors' 95th percentile u is
    extrapolated as exponential (peaks over threshold): P(s > t) = 0.05 exp(-(t - u) / b),
    b the mean excess over u. The threshold is the larger of that estimate and the highest
    impostor seen, so it never accepts a pair validation has already seen go wrong.
    """
    if not len(impostor) or not len(genuine):
        raise ValueError("choosing a threshold needs genuine and impostor pairs")
    per_pair = 1 - (1 - target_far) ** (1 / max(1, registered))
    tail_share = 0.05
    u = float(np.quantile(impostor, 1 - tail_share))
    excess = impostor[impostor > u] - u
    b = float(excess.mean()) if len(excess) else 0.0
    tail = u + b * np.log(tail_share / per_pair) if per_pair < tail_share else u
    threshold = min(1.0, max(float(tail), float(np.max(impostor))))
    return {
        "threshold": threshold,
        "target_far": target_far,
        "registered": registered,
        "per_pair_false_match": per_pair,
        "impostor_p95": u,
        "impostor_mean_excess": b,
        "impostor_mean": float(np.mean(impostor)),
        "impostor_max": float(np.max(impostor)),
        "genuine_mean": float(np.mean(genuine)),
        "genuine_below_threshold": float(np.mean(genuine < threshold)),
    }


def identification_report(
    true_ids: list[str], registered: set[str], matches: Matches, threshold: float
) -> dict:
    """Open-set identification figures for queries with known truth.

    rank1: share of queries of registered sheets whose nearest reference is right.
    far: wrong confident IDs (a registered sheet's query given another ID, or an
    unregistered sheet's query given any ID) per query. frr: share of registered sheets'
    queries answered ``unknown``. fpir: share of unregistered sheets' queries given an ID.
    identified: share of registered sheets' queries given their right ID.
    """
    truth = np.asarray(true_ids)
    answer = np.asarray(matches.sheet_ids)
    nearest = np.asarray(matches.nearest)
    mated = np.array([t in registered for t in true_ids], dtype=bool)
    accepted = answer != UNKNOWN
    wrong = accepted & (answer != truth)
    n_mated, n_non = int(mated.sum()), int((~mated).sum())

    def share(num, den) -> float:
        return float(num) / den if den else math.nan

    return {
        "queries": len(truth),
        "mated_queries": n_mated,
        "non_mated_queries": n_non,
        "threshold": float(threshold),
        "rank1": share((nearest[mated] == truth[mated]).sum(), n_mated),
        "identified": share((answer[mated] == truth[mated]).sum(), n_mated),
        "far": share(wrong.sum(), len(truth)),
        "frr": share((~accepted[mated]).sum(), n_mated),
        "fpir": share(accepted[~mated].sum(), n_non),
        "wrong_ids": int(wrong.sum()),
    }
